"""What the evidence says a check rests on: the faults it was shown to
detect (from a self-test run, found for a nightly run that has none of its
own), the trials observed, the instruments that observed them, and the lab's
deviations from the requirement values, in the report and the safety pack."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import rig.evidence.recorder
from rig.cli import main
from rig.evidence.record import load_run
from rig.evidence.recorder import RunRecorder
from rig.evidence.safety_pack import _trials, build
from rig.evidence.seal import seal_run

ROOT = Path(__file__).resolve().parent.parent
IDN = "YOKOGAWA,WT310,91K000001,F1.03"
DEVIATION = {"key": "outage_alert_period", "requirement": "OUT-2", "reference": 180.0, "value": 170.0, "units": "s",
             "reason": "firmware 1.2 fixes the period at 170 s"}


def _text(html: str) -> str:
    """The visible text, one space between words."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _section(html: str, start: str, end: str) -> str:
    return html[html.index(start):html.index(end, html.index(start))]


def nightly(results: Path, store: str, name: str = "20261124T020000Z-night1", deviations=None) -> Path:
    """A sealed nightly run: property 2 with three observed trials (one of
    them a legacy ``safety.trial`` with no trial attribute), property 4
    with one unattributed measurement."""
    run = results / name
    rec = RunRecorder(run, lab_path=ROOT / "lab.yaml", store_url=store, argv=["t"]).start()
    rec.writer.emit({"ev": "hardware", "instruments": {"bench-1/analyser": {"identity": IDN}}})
    if deviations is not None:
        rec.set_deviations(deviations)

    def test(nodeid, props, reqs, body, verdict="passed"):
        rec.test_started({"nodeid": nodeid, "name": nodeid.split("::")[-1], "requirements": reqs,
                          "safety_properties": props})
        ev = rec.evidence_for(nodeid)
        body(ev)
        rec.test_finished({"nodeid": nodeid, "verdict": verdict, **ev.entries()})

    def button(ev):
        for trial in range(3):
            ev.measure("safety.enable_latency", 1.0 + trial, "s", high=5, observed_by=["analyser", "mains"],
                       trial=trial)
            ev.measure("safety.supply_before", "armed", equals="armed", observed_by="esme", trial=trial)

    def ppmid(ev):
        ev.measure("safety.replay", "refused", equals="refused", observed_by="dcc")
        ev.measure("safety.stale_press", "refused", equals="refused")

    def outage(ev):
        ev.measure("outage.alert_after", 171.0, "s", low=170, high=190, observed_by="dcc", reference=180.0,
                   deviation=True, requirement="OUT-2")

    test("test_safety.py::test_disable_arm_then_the_meter_button_enables", [2], ["SUP-2"], button)
    test("test_safety.py::test_a_replayed_ppmid_enable_is_not_carried_out", [4], ["SUP-4"], ppmid)
    test("test_outage.py::test_outage_keeps_the_supply_off_until_a_local_enable[armed]", [5], ["SUP-2", "OUT-2"],
         outage)
    rec.finish("passed", 0)
    seal_run(run)
    return run


def selftest(results: Path, store: str, name: str = "20261124T010000Z-self01", faults=("skips_arm",)) -> Path:
    """A sealed `rig selftest` run: the button check shown to detect each of
    ``faults``, the replay check shown to detect accepts_replayed_ppmid."""
    run = results / name
    rec = RunRecorder(run, lab_path=ROOT / "lab.yaml", store_url=store, argv=["rig", "selftest"], junit=None).start()
    rec.set_selftest({"faults": list(faults) + ["accepts_replayed_ppmid"], "partial": False,
                      "suite_files": ["test_outage.py", "test_safety.py"]})
    for check, props, shown in (("test_disable_arm_then_the_meter_button_enables", [2], list(faults)),
                                ("test_a_replayed_ppmid_enable_is_not_carried_out", [4], ["accepts_replayed_ppmid"])):
        nodeid = f"selftest::test_safety::{check}"
        rec.test_started({"nodeid": nodeid, "name": check, "detects": shown, "safety_properties": props})
        ev = rec.evidence_for(nodeid)
        for prop in props:
            ev.selftest(check, None, "passed", "passed", safety_property=prop)
            for fault in shown:
                ev.selftest(check, fault, "failed", "failed", device="esme", safety_property=prop)
        rec.test_finished({"nodeid": nodeid, "verdict": "passed", **ev.entries()})
    rec.finish("passed", 0)
    seal_run(run)
    return run


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'history.sqlite'}"


# ----------------------------------------------------------------------------- the record
def test_deviations_are_kept_in_the_record_and_survive_a_refold(tmp_path, store):
    rec = RunRecorder(tmp_path / "run", lab_path=ROOT / "lab.yaml", store_url=store, argv=["t"]).start()
    rec.set_deviations([DEVIATION])
    # killed here: run.json may lag, the journal does not
    folded = load_run(tmp_path / "run")
    assert folded["recovered"] and folded["deviations"] == [DEVIATION]
    assert folded["kind"] == "run" and set(folded["suites"]["files"]) >= {"test_safety.py", "test_outage.py"}


@pytest.mark.parametrize("bad, message", [
    ({"key": "x"}, "deviations: expected a list of dicts"),
    ([{"key": "outage_alert_period", "value": 170}], "deviations[0] (outage_alert_period): missing reference"),
    (["outage_alert_period"], "deviations[0]: expected a dict"),
])
def test_a_malformed_deviation_is_refused_naming_what_is_missing(tmp_path, store, bad, message):
    rec = RunRecorder(tmp_path / "run", lab_path=ROOT / "lab.yaml", store_url=store, argv=["t"]).start()
    with pytest.raises(ValueError, match=re.escape(message)):
        rec.set_deviations(bad)


def test_a_trial_is_each_trial_attribute_across_measurement_names():
    def m(name, outcome, **attrs):
        return {"name": name, "outcome": outcome, "attrs": attrs}

    by_trial = {"verdict": "failed", "measurements": [
        m("safety.enable_latency", "pass", trial=0), m("safety.supply_before", "fail", trial=0),
        m("safety.enable_latency", "pass", trial=1), m("safety.supply_before", "pass", trial=1),
        m("safety.refusals_logged", "pass")]}
    assert _trials(by_trial) == (2, 1)  # trial 0 failed on one of its two measurements
    hard_coded = {"verdict": "passed", "measurements": [m("safety.trial", "pass"), m("safety.trial", "pass")]}
    assert _trials(hard_coded) == (1, 0)  # a literal True per trial is not a trial observed
    failed_otherwise = {"verdict": "failed", "measurements": [m("safety.enable_latency", "pass", trial=0)]}
    assert _trials(failed_otherwise) == (1, 1)
    assert _trials({"verdict": "skipped", "measurements": []}) == (0, 0)


# ----------------------------------------------------------------------------- the safety pack
def test_the_pack_of_a_nightly_run_finds_the_self_test_and_says_what_each_property_rests_on(tmp_path, store):
    results = tmp_path / "runs"
    st = selftest(results, store)
    run = nightly(results, store, deviations=[DEVIATION])
    html = build(run, tmp_path / "pack.html")[0].read_text()
    head = _text(html[:html.index("<h2>Properties</h2>")])
    assert f"{st.name}" in head and "the results folder" in head and "the same suites as this run" in head
    assert 'id="selftest-problems"' not in html
    deviations = _text(_section(html, 'id="deviations"', "</div>"))
    assert "outage_alert_period" in deviations and "180 s" in deviations and "170 s" in deviations
    rests = _section(html, 'id="rests-on"', "<h2>Each property")
    rows = {re.sub(r"<[^>]+>", "", r.split("</td>")[0]).strip(): r
            for r in re.findall(r"<tr><td>(.*?)</tr>", rests, re.S)}
    p2, p4, p5 = _text(rows["2"]), _text(rows["4"]), _text(rows["5"])
    assert p2.split()[1] == "3"  # three trials, counted by their trial attribute
    assert f"bench-1/analyser: {IDN}" in p2 and "bench-1/mains" in p2 and "bench-1/esme" in p2
    assert "not attributed" not in p2 and "skips_arm" in p2
    assert "accepts_replayed_ppmid" in p4 and "not attributed: safety.stale_press (1)" in p4
    assert 'class="bad">not attributed' in rows["4"]
    assert "outage_alert_period = 170 s (requirement OUT-2: 180 s)" in p5
    assert "judged against a deviating limit (requirement value 180)" in p5
    props = _section(html, "<h2>Properties</h2>", "<h2>Worst enable latency")
    assert re.search(r"<td>2</td>.*?v-holds\"", props, re.S)  # shown able to fail by the self-test found


def test_the_pack_finds_a_self_test_kept_elsewhere_through_the_results_store(tmp_path, store):
    st = selftest(tmp_path / "other-runs", store)
    run = nightly(tmp_path / "runs", store)
    html = build(run, tmp_path / "pack.html")[0].read_text()
    head = _text(html[:html.index("<h2>Properties</h2>")])
    assert st.name in head and "the results store" in head


def test_the_pack_says_in_red_when_no_self_test_vouches_for_the_run(tmp_path, store, capsys):
    run = nightly(tmp_path / "runs", store)
    main(["evidence", "safety", "--run", str(run), "--out", str(tmp_path / "pack.html")])
    assert "no sealed self-test run of lab default-sim-lab" in capsys.readouterr().out.replace("\n", "")
    html = (tmp_path / "pack.html").read_text()
    alarm = _text(_section(html, 'id="selftest-problems"', "</div>"))
    assert "nothing shows these checks can fail" in alarm and "rig selftest" in alarm
    assert "Overall: holds" not in html.replace("Overall: holds, checks unproven", "")
    assert 'v-holds"' not in html  # no property holds without a self-test


def test_a_self_test_of_other_suites_does_not_vouch(tmp_path, store, monkeypatch):
    """A self-test made before the suites changed: found, named in red, and
    no property holds on its strength."""
    real = rig.evidence.recorder.suites_section
    monkeypatch.setattr(rig.evidence.recorder, "suites_section",
                        lambda: {**real(), "files": {**real()["files"], "test_safety.py": "0" * 64}})
    selftest(tmp_path / "runs", store)
    monkeypatch.setattr(rig.evidence.recorder, "suites_section", real)
    run = nightly(tmp_path / "runs", store)
    html = build(run, tmp_path / "pack.html")[0].read_text()
    alarm = _text(_section(html, 'id="selftest-problems"', "</div>"))
    assert "the suites differ from the ones the self-test ran (test_safety.py)" in alarm
    assert 'v-holds"' not in html


def test_the_latest_self_test_of_the_same_suites_is_preferred_and_can_be_given(tmp_path, store, monkeypatch):
    results = tmp_path / "runs"
    older = selftest(results, store, "20261124T000000Z-self00", faults=("skips_arm",))
    real = rig.evidence.recorder.suites_section
    monkeypatch.setattr(rig.evidence.recorder, "suites_section",
                        lambda: {**real(), "files": {**real()["files"], "test_safety.py": "0" * 64}})
    newer_other = selftest(results, store, "20261124T010000Z-self01", faults=("closes_on_remote_enable_when_armed",))
    monkeypatch.setattr(rig.evidence.recorder, "suites_section", real)
    run = nightly(results, store)
    html = build(run, tmp_path / "found.html")[0].read_text()
    head = _text(html[:html.index("<h2>Properties</h2>")])
    assert older.name in head and newer_other.name not in head
    given = build(run, tmp_path / "given.html", selftest_dir=newer_other)[0].read_text()
    head = _text(given[:given.index("<h2>Properties</h2>")])
    assert newer_other.name in head and "given with --selftest" in head
    assert "the suites differ" in _text(_section(given, 'id="selftest-problems"', "</div>"))


def test_selftest_option_must_name_a_run_folder(tmp_path, store, capsys):
    run = nightly(tmp_path / "runs", store)
    with pytest.raises(SystemExit) as exc:
        main(["evidence", "safety", "--run", str(run), "--selftest", str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "not a run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the report
def test_the_report_shows_deviations_in_red_and_what_each_check_was_shown_to_detect(tmp_path, store):
    run = nightly(tmp_path / "runs", store, deviations=[DEVIATION])
    html = (run / "report.html").read_text()
    top = html[:html.index('id="failures"')]
    assert 'class="deviations"' in top and "outage_alert_period" in top and "firmware 1.2" in top
    cell = re.search(r'<td class="deviating"[^>]*>(.*?)</td>', html, re.S)
    assert cell and "[170, 190]" in cell.group(1) and "requirement value 180" in _text(cell.group(1))
    st = selftest(tmp_path / "runs", store)
    report = (st / "report.html").read_text()
    detects = _section(report, 'id="detects"', "</table>")
    row = next(r for r in detects.split("<tr>") if "test_disable_arm_then_the_meter_button_enables" in r)
    assert "skips_arm" in row and "v-passed" in row
    assert json.loads((st / "run.json").read_text())["kind"] == "selftest"


def test_the_pack_says_why_the_self_test_it_uses_failed(tmp_path, store):
    results = tmp_path / "runs"
    run = results / "20261124T010000Z-selfbad"
    rec = RunRecorder(run, lab_path=ROOT / "lab.yaml", store_url=store, argv=["rig", "selftest"], junit=None).start()
    rec.set_selftest({"partial": False, "coverage": {"complete": False, "unclaimed_checks": ["test_load_limit"],
                                                     "unclaimed_faults": ["misses_mirror_sync"]}})
    rec.test_started({"nodeid": "selftest::test_safety::test_x", "name": "test_x", "safety_properties": [2]})
    ev = rec.evidence_for("selftest::test_safety::test_x")
    ev.selftest("test_x", "skips_arm", "passed", "failed", safety_property=2)
    rec.test_finished({"nodeid": "selftest::test_safety::test_x", "verdict": "failed", **ev.entries()})
    rec.finish("failed", 1)
    seal_run(run)
    night = nightly(results, store)
    alarm = _text(_section(build(night, tmp_path / "pack.html")[0].read_text(), 'id="selftest-problems"', "</div>"))
    assert "1 self-check(s) did not give their expected verdict (test_x against skips_arm)" in alarm
    assert "checks naming no fault: test_load_limit" in alarm
    assert "fault profiles no check claims: misses_mirror_sync" in alarm
