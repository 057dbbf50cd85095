"""rig selftest: every safety and outage check passes on the healthy lab and
fails against each fault profile that breaks its property; and the
self-test itself fails when a check cannot be shown to fail, when a lab ran
no check, and when a check or a fault profile is uncovered.

CI runs a short self-test (four faults, one trial, the default lab from a
fresh folder with its relative results dir, as a new user runs it); the full
self-test takes minutes and is marked slow (``pytest -m slow``): ``rig
selftest`` itself is the full one."""

import io
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml
from rich.console import Console

import rig.selftest
from rig.config import load_lab
from rig.selftest import (Check, CollectionError, LabResult, collect, coverage, lab_text, record_results,
                          run_selftest)

from conftest import ROOT

#: faults the short self-test runs: one each of the meter's arming, alerting, prepayment and reporting
SHORT_FAULTS = ("skips_arm", "no_restore_alert", "utrn_reuse", "reports_closed_when_open")


def _fresh_lab_dir(tmp_path):
    """A folder holding only the default lab.yaml: what a new user runs in."""
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(ROOT / "lab.yaml", work / "lab.yaml")
    return work


def _record(results):
    [run] = [p for p in results.iterdir() if (p / "run.json").exists()]
    return run, json.loads((run / "run.json").read_text())


def test_short_selftest_from_a_fresh_folder_with_the_relative_results_dir(tmp_path):
    """The default lab's results dir is relative (runs/); each lab's pytest
    runs in a temporary folder.  The JUnit path was once built from the
    relative dir, so every lab read a file that was not there: 0/0 checks for
    every fault, and no test noticed because the full test gave --results an
    absolute path."""
    work = _fresh_lab_dir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rig", "selftest", "--lab", "lab.yaml", "--faults",
                           ",".join(SHORT_FAULTS), "--trials", "1"],
                          capture_output=True, text=True, timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0/0" not in proc.stdout
    run, record = _record(work / "runs")
    assert record["kind"] == "selftest" and record["status"] == "passed"
    assert record["selftest_run"]["partial"] and record["selftest_run"]["faults"] == list(SHORT_FAULTS)
    assert all(lab["ran"] == lab["expected"] > 0 for lab in record["selftest_run"]["labs"].values())
    entries = record["selftest"]
    assert entries and all(e["ok"] for e in entries), [e for e in entries if not e["ok"]]
    healthy = {e["check"] for e in entries if e["fault"] is None and e["verdict"] == "passed"}
    assert len(healthy) >= 4
    for fault in SHORT_FAULTS:
        caught = {e["check"] for e in entries if e["fault"] == fault and e["verdict"] == "failed"}
        assert caught, f"no check shown to fail against {fault}"
        assert caught <= healthy  # each check that caught it also passed on the healthy lab
    report = (run / "report.html").read_text()
    shown = report[report.index('id="detects"'):]
    assert all(f in shown for f in SHORT_FAULTS)


def test_a_lab_that_runs_no_check_fails_the_selftest(tmp_path, monkeypatch):
    """The healthy lab's pytest selects nothing (as when its results could
    not be read): the self-test once passed such a lab as 0/0.  It is an
    error now, quoting the end of that lab's pytest log."""
    work = _fresh_lab_dir(tmp_path)
    monkeypatch.chdir(work)
    real_run_checks, real_args = rig.selftest.run_checks, rig.selftest._run_args

    def run_checks(label, *args, **kwargs):
        narrowed = (lambda checks: real_args(checks) + ["-k", "no_check_is_called_this"])
        monkeypatch.setattr(rig.selftest, "_run_args", narrowed if label == "healthy" else real_args)
        return real_run_checks(label, *args, **kwargs)

    monkeypatch.setattr(rig.selftest, "run_checks", run_checks)
    out = io.StringIO()
    code = run_selftest(work / "lab.yaml", trials=1, faults=["utrn_reuse"], console=Console(file=out, width=200))
    text = out.getvalue()
    assert code == 1, text
    assert "lab healthy: ran 0 of its 1 checks (pytest exit 5)" in text
    assert "deselected" in text  # the end of the healthy lab's pytest.txt
    assert "utrn_reuse" in text and "1/1 checks failed" in text  # the fault lab itself ran
    _run, record = _record(work / "runs")
    assert record["status"] == "failed" and record["selftest_run"]["labs"]["healthy"]["ran"] == 0


# ----------------------------------------------------------------------------- coverage, in-process
FAKE_SUITE = textwrap.dedent("""
    import pytest

    @pytest.mark.detects("fault_a")
    def test_catches_a():
        pass

    @pytest.mark.detects({b_marker})
    def test_catches_b():
        pass
""")


def _fake_selftest(tmp_path, monkeypatch, *, b_marker, catalogue, faults=None):
    """run_selftest over a fake safety suite and fault catalogue, with labs
    that behave as they should (every check passes healthy and fails against
    the faults it names): only coverage can fail it."""
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "test_safety.py").write_text(FAKE_SUITE.format(b_marker=b_marker))
    monkeypatch.setattr(rig.selftest, "_files", lambda: [str(suites / "test_safety.py")])
    monkeypatch.setattr(rig.selftest, "FAULTS", {"esme": {f: "a fake fault" for f in catalogue}})
    monkeypatch.setattr(rig.selftest, "BREAKS", {f: ("SUP-2",) for f in catalogue})

    def run_checks(label, text, fault, bench, tmpdir, log_dir, ini, checks):
        verdict = "passed" if fault is None else "failed"
        return LabResult(label, fault, [c.nodeid for c in checks], {c.nodeid: (verdict, "") for c in checks}, 0)

    monkeypatch.setattr(rig.selftest, "run_checks", run_checks)
    monkeypatch.chdir(tmp_path)  # the lab's relative results dir and store
    out = io.StringIO()
    code = run_selftest(ROOT / "lab.yaml", faults=faults, console=Console(file=out, width=300))
    return code, out.getvalue()


def test_a_fully_covered_selftest_passes(tmp_path, monkeypatch):
    code, text = _fake_selftest(tmp_path, monkeypatch, b_marker="'fault_b'", catalogue=["fault_a", "fault_b"])
    assert code == 0, text
    assert "PASSED" in text


def test_a_safety_check_that_names_no_fault_fails_a_full_selftest(tmp_path, monkeypatch):
    code, text = _fake_selftest(tmp_path, monkeypatch, b_marker="", catalogue=["fault_a"])
    assert code == 1, text
    assert "SELF-TEST FAILED test_catches_b: a safety or outage check with no detects(...)" in text


def test_a_fault_no_check_claims_fails_a_full_selftest(tmp_path, monkeypatch):
    code, text = _fake_selftest(tmp_path, monkeypatch, b_marker="'fault_b'",
                                catalogue=["fault_a", "fault_b", "fault_c"])
    assert code == 1, text
    assert "SELF-TEST FAILED fault profile fault_c: no check claims to detect it" in text


def test_a_partial_selftest_lists_the_gaps_without_failing_on_them(tmp_path, monkeypatch):
    code, text = _fake_selftest(tmp_path, monkeypatch, b_marker="", catalogue=["fault_a", "fault_c"],
                                faults=["fault_a"])
    assert code == 0, text
    gaps = text[text.index("a full `rig selftest` fails on:"):]
    assert "test_catches_b" in gaps and "fault_c" in gaps


def test_a_check_naming_an_unknown_fault_is_a_gap():
    checks = [Check("test_safety::test_x", "test_x", ["skips_arm", "typo_fault"], [], [], "safety"),
              Check("test_outage::test_y", "test_y", [], [], [], "outage"),
              Check("test_propagation::test_z", "test_z", [], [], [], "propagation")]
    cover = coverage(checks, {"skips_arm", "utrn_reuse"})
    assert [c.name for c in cover.unclaimed_checks] == ["test_y"]  # a propagation check need not name one
    assert cover.unclaimed_faults == ["utrn_reuse"] and cover.unknown_faults == {"test_x": ["typo_fault"]}
    assert not cover.complete


@pytest.mark.parametrize("faults, message", [
    ("no_such_fault", "unknown fault profile 'no_such_fault'; the checks name:"),
])
def test_a_bad_fault_name_is_a_usage_error(tmp_path, monkeypatch, capsys, faults, message):
    from rig.cli import main

    monkeypatch.chdir(_fresh_lab_dir(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["selftest", "--lab", "lab.yaml", "--faults", faults])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "lab" / "runs").exists()  # nothing ran, no run folder


def test_the_suites_cover_every_fault_and_every_check_names_one(tmp_path):
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    cover = coverage(collect(ROOT / "lab.yaml", ini).values())
    assert cover.complete, cover.problems()


@pytest.mark.slow
def test_every_check_fails_against_its_fault_and_passes_healthy(tmp_path):
    """The full self-test, as `rig selftest` runs it from a fresh folder
    (minutes: pytest -m slow)."""
    work = _fresh_lab_dir(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rig", "selftest", "--lab", "lab.yaml"],
                          capture_output=True, text=True, timeout=1800, cwd=work)
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    cover = coverage(collect(ROOT / "lab.yaml", ini).values())
    # exit 0 exactly when nothing is uncovered; every gap is named
    assert proc.returncode == (0 if cover.complete else 1), proc.stdout[-4000:] + proc.stderr[-2000:]
    for line in cover.problems():
        assert line.split(":")[0] in proc.stdout
    run, record = _record(work / "runs")
    entries = record["selftest"]
    assert entries and all(e["ok"] for e in entries), [e for e in entries if not e["ok"]]
    checks = [c for c in collect(ROOT / "lab.yaml", ini).values() if c.detects or c.required]
    assert len(checks) >= 15
    for check in checks:
        mine = [e for e in entries if e["check"] == check.name]
        assert any(e["fault"] is None and e["verdict"] == "passed" for e in mine), check.name
        for fault in check.detects:
            assert any(e["fault"] == fault and e["verdict"] == "failed" for e in mine), (check.name, fault)
    verify = subprocess.run([sys.executable, "-m", "rig", "verify", str(run)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    pack = subprocess.run([sys.executable, "-m", "rig", "evidence", "safety", "--run", str(run), "--selftest",
                           str(run), "--out", str(tmp_path / "pack.html")], capture_output=True, text=True)
    assert pack.returncode == 0, pack.stdout + pack.stderr
    html = (tmp_path / "pack.html").read_text()
    assert "self-test run" in html and "checks unproven" not in html


def test_collection_finds_the_checks_in_process(tmp_path):
    """The self-test collects the suites with pytest.main in its own process:
    a plugin object pytest cannot keep (unhashable) once made it collect 0
    checks and report success."""
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    lab = tmp_path / "healthy.yaml"
    lab.write_text(lab_text(yaml.safe_load((ROOT / "lab.yaml").read_text()), "bench-1", 2))
    checks = collect(lab, ini)
    assert len([c for c in checks.values() if c.detects]) >= 15


def test_a_collection_that_fails_is_an_error_not_an_empty_pass(tmp_path, monkeypatch):
    import rig.selftest
    monkeypatch.setattr(rig.selftest, "_files", lambda: [str(tmp_path / "test_missing_suite.py")])
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    with pytest.raises(CollectionError, match="pytest exit 4"):
        collect(ROOT / "lab.yaml", ini)


class _Recorder:
    """Stands in for the run recorder: collects what the self-test records."""

    def __init__(self):
        self.tests, self.entries = [], []

    def test_started(self, info):
        pass

    def evidence_for(self, nodeid):
        outer = self

        class Ev:
            def selftest(self, check, fault, verdict, expected, **kw):
                entry = {"check": check, "fault": fault, "ok": verdict == expected}
                outer.entries.append(entry)
                return entry

            def entries(self):
                return {}

        return Ev()

    def test_finished(self, test):
        self.tests.append(test)


def test_a_check_that_passes_against_its_fault_fails_the_selftest():
    cfg = load_lab(ROOT / "lab.yaml")
    key = "test_safety::test_always_green"
    checks = {key: Check(key, "test_always_green", ["skips_arm"], ["SUP-2"], [1])}
    results = {key: {None: ("passed", ""), "skips_arm": ("passed", "")}}
    problems = record_results(_Recorder(), checks, results, cfg, "bench-1")
    assert problems and "expected failed" in problems[0]


def test_a_safety_check_naming_no_fault_fails_the_selftest():
    cfg = load_lab(ROOT / "lab.yaml")
    key = "test_safety::test_unproven"
    checks = {key: Check(key, "test_unproven", [], ["SUP-2"], [2])}
    problems = record_results(_Recorder(), checks, {key: {None: ("passed", "")}}, cfg, "bench-1")
    assert problems and "nothing shows it can fail" in problems[0]
