"""Measurements and the run record as a fold over its journal."""

from __future__ import annotations

import json

import pytest

from rig.clock import LabClock
from rig.evidence.measurement import TestEvidence, make_measurement
from rig.evidence.record import RecordError, RecordWriter, load_run


# ----------------------------------------------------------------------------- measurements
@pytest.mark.parametrize("value, limits, outcome", [
    (184.2, {"low": 180, "high": 190}, "pass"),
    (180, {"low": 180, "high": 190}, "pass"),            # limits are inclusive
    (179.9, {"low": 180, "high": 190}, "fail"),
    (190.1, {"high": 190}, "fail"),
    (-95, {"low": -100}, "pass"),
    ("refused", {"equals": "refused"}, "pass"),
    ("executed", {"equals": "refused"}, "fail"),
    (float("nan"), {"low": 0}, "fail"),
    ("fast", {"high": 5}, "fail"),                        # not a number against numeric limits
    (12.5, {}, "info"),
])
def test_framework_judges_measurements(value, limits, outcome):
    m = make_measurement("x", value, "s", **limits)
    assert m.outcome == outcome
    assert m.passed is (outcome != "fail")


@pytest.mark.parametrize("limits, message", [
    ({"low": 190, "high": 180}, "measurement alert_latency: low limit 190 is above high limit 180"),
    ({"low": "180"}, "measurement alert_latency: low limit must be a finite number"),
    ({"equals": 1, "high": 2}, "measurement alert_latency: give either equals or low/high limits"),
])
def test_bad_limits_are_refused_naming_the_measurement(limits, message):
    with pytest.raises(ValueError, match=message):
        make_measurement("alert_latency", 1.0, **limits)


def test_describe_reads_like_a_lab_note():
    m = make_measurement("outage.alert_latency", 195.0, "s", low=180, high=190, requirement="OUT-2")
    assert m.describe() == "outage.alert_latency = 195 s, above the high limit 190 [180, 190] s (OUT-2)"


def test_test_evidence_uses_lab_time_and_reports_each_failure_once():
    clock = LabClock(scale=60)
    seen = []
    ev = TestEvidence("t::a", clock, lambda kind, payload: seen.append(kind))
    with ev.step("mains off") as s:
        pass
    ev.measure("a", 1, high=0)
    assert s.end_lab is not None and s.end_lab >= s.lab
    assert abs(s.lab - clock.now()) < 60  # lab time, not wall time
    assert [m.name for m in ev.unreported_failures()] == ["a"]
    assert ev.unreported_failures() == []
    ev.measure("b", 2, high=0)
    assert [m.name for m in ev.unreported_failures()] == ["b"]
    assert seen == ["step", "step", "measurement", "measurement"]


# ----------------------------------------------------------------------------- record
def _events(w: RecordWriter) -> None:
    w.emit({"ev": "run.start", "run": {"id": w.run_dir.name, "started": {"lab": 1.0, "wall": 1.0}}})
    w.emit({"ev": "test.start", "test": {"nodeid": "t::a", "requirements": ["OUT-2"], "started": {"lab": 2, "wall": 2}}})
    w.emit({"ev": "measurement", "nodeid": "t::a", "measurement": {"name": "m", "value": float("inf"), "outcome": "fail"}})
    w.emit({"ev": "test.end", "test": {"nodeid": "t::a", "verdict": "failed", "measurements": [
        {"name": "m", "value": 1, "outcome": "fail"}]}})
    w.emit({"ev": "test.start", "test": {"nodeid": "t::b", "started": {"lab": 3, "wall": 3}}})
    w.emit({"ev": "step", "nodeid": "t::b", "step": {"name": "arm", "lab": 3.5, "wall": 3.5}})


def test_record_is_valid_json_at_every_test_boundary(tmp_path):
    w = RecordWriter(tmp_path / "run", snapshot_interval=0)
    _events(w)
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["complete"] is False and rec["status"] == "running"
    assert rec["tests"][0]["verdict"] == "failed"
    assert rec["tests"][0]["measurements"] == [{"name": "m", "value": 1, "outcome": "fail"}]  # the final list wins
    assert rec["summary"]["failed"] == 1 and rec["summary"]["running"] == 1
    w.close("failed", 1)
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["complete"] is True and rec["status"] == "failed"


def test_non_finite_values_never_make_invalid_json(tmp_path):
    w = RecordWriter(tmp_path / "run", snapshot_interval=0)
    _events(w)
    for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_load_run_refolds_the_journal_of_a_run_that_died(tmp_path):
    run = tmp_path / "run"
    w = RecordWriter(run, snapshot_interval=3600)  # run.json lags behind the journal
    _events(w)
    w._journal.write('{"ev": "step", "nodeid": "t::b", "st')  # torn by the kill
    w._journal.flush()
    on_disk = json.loads((run / "run.json").read_text())
    assert len(on_disk["tests"]) < 2
    rec = load_run(run)
    assert rec["recovered"] and not rec["complete"]
    assert [t["nodeid"] for t in rec["tests"]] == ["t::a", "t::b"]
    assert rec["tests"][1]["steps"][0]["name"] == "arm"


def test_interrupted_run_is_closed_but_incomplete(tmp_path):
    w = RecordWriter(tmp_path / "run")
    _events(w)
    w.close("interrupted", 2, complete=False)
    rec = load_run(tmp_path / "run")
    assert rec["status"] == "interrupted" and rec["complete"] is False


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(RecordError, match="no such run folder"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match=r"empty: no run\.json and no journal\.jsonl"):
        load_run(tmp_path / "empty")


def test_a_run_folder_holds_one_run(tmp_path):
    from rig.evidence.recorder import RunRecorder

    RunRecorder(tmp_path / "run", store_url=f"sqlite:///{tmp_path / 'h.sqlite'}").start().finish("passed", 0)
    with pytest.raises(RecordError, match="run: already holds a run record; every run needs a new run folder"):
        RunRecorder(tmp_path / "run").start()
