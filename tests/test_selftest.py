"""rig selftest: every safety and outage check passes on the healthy lab and
fails against each fault profile that breaks its property; and the
self-test itself fails when a check cannot be shown to fail."""

import json
import subprocess
import sys

import pytest
import yaml

from rig.config import load_lab
from rig.faults import BREAKS
from rig.selftest import Check, CollectionError, collect, lab_text, parts, record_results

from conftest import ROOT

#: fault profiles with no suite check (their property is covered by a device test only)
NO_SUITE_CHECK = {"misses_mirror_sync"}


def test_every_check_fails_against_its_fault_and_passes_healthy(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "rig", "selftest", "--lab", str(ROOT / "lab.yaml"),
                           "--results", str(results)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    [run] = [p for p in results.iterdir() if (p / "run.json").exists()]
    record = json.loads((run / "run.json").read_text())
    entries = record["selftest"]
    checks = {e["check"] for e in entries}
    assert len(checks) >= 15
    for check in checks:
        mine = [e for e in entries if e["check"] == check]
        assert any(e["fault"] is None and e["verdict"] == "passed" for e in mine), check
        assert any(e["fault"] and e["verdict"] == "failed" for e in mine), check
        assert all(e["ok"] for e in mine), [e for e in mine if not e["ok"]]
    detected = {p for e in entries if e["fault"] for p in parts(e["fault"])}
    assert set(BREAKS) - detected <= NO_SUITE_CHECK
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
