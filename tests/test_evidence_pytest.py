"""The evidence plugin end to end: a real pytest run in a subprocess writes a
run folder; a killed run leaves a valid, incomplete record; two runs, one
against a fault profile, show their difference in `rig history`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rig.evidence.manifest import verify
from rig.evidence.record import load_run

LAB = """
lab: {{name: evidence-test, clock: {{scale: 60}}}}
broker: {{kind: auto, port: 0}}
benches:
  bench-1:
    relays:
      mains: {{pin: 17, safe_state: "off"}}
    devices:
      esme:
        kind: esme
        id: "00:0d:6f:00:00:00:00:01"
        firmware: "ESME 4.2"
        faults: {faults}
"""

SUITE = '''
import threading
import pytest


@pytest.mark.requirement("OUT-2")
def test_alert_in_time(measure, step):
    with step("mains off", relay="mains"):
        pass
    measure("outage.alert_latency", 184.2, units="s", low=180, high=190, requirement="OUT-2")


@pytest.mark.requirement("OUT-4")
def test_alert_too_late(measure):
    m = measure("outage.alert_latency", 195.0, units="s", low=180, high=190)
    measure("outage.flickers_logged", 5, equals=5)
    assert not m.passed  # the test body itself does not fail: the framework does


@pytest.mark.requirement("SUP-4")
@pytest.mark.safety(4)
def test_ppmid_unpaired_refused(pytestconfig, measure):
    from rig.config import load_lab

    esme = load_lab(pytestconfig.getoption("--lab")).benches["bench-1"].devices["esme"]
    executed = "accepts_unpaired_ppmid" in esme.faults
    measure("safety.unpaired_enable", "executed" if executed else "refused", equals="refused", requirement="SUP-4")


def test_skipped():
    pytest.skip("no analyser on this bench")


def test_killed_midway(step, measure):
    if not pytestconfig_kill():
        return
    step("enable pressed on the PPMID")
    measure("safety.enable_latency", 1.5, units="s", high=5)
    print("READY", flush=True)
    threading.Event().wait(60)  # the parent kills the run here


def pytestconfig_kill():
    import os
    return os.environ.get("EVIDENCE_KILL_TEST") == "1"
'''


def run_pytest(tmp: Path, run_dir: Path | None, faults: str = "[]", env: dict | None = None,
               extra: list[str] | None = None, wait_ready: bool = False):
    """Run SUITE in a pytest subprocess with the evidence plugin; returns the
    CompletedProcess, or (with wait_ready) the Popen once the test printed READY."""
    (tmp / "pytest.ini").write_text("[pytest]\n")
    (tmp / "test_suite.py").write_text(SUITE)
    lab = tmp / f"lab-{abs(hash(faults))}.yaml"
    lab.write_text(LAB.format(faults=faults))
    args = [sys.executable, "-m", "pytest", "test_suite.py", "-c", "pytest.ini", "--rootdir", str(tmp),
            "-p", "no:cacheprovider", "-p", "rig_fixtures.evidence", "--lab", str(lab), "-q", "-s"]
    if run_dir is not None:
        args += ["--rig-run-dir", str(run_dir), "--junitxml", str(run_dir / "junit.xml"),
                 "--rig-store", f"sqlite:///{tmp / 'history.sqlite'}"]
    args += extra or []
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RIG_")}
    child_env.update(env or {})
    if not wait_ready:
        return subprocess.run(args, cwd=tmp, env=child_env, capture_output=True, text=True, timeout=120)
    proc = subprocess.Popen(args, cwd=tmp, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    ready = threading.Event()
    seen: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            seen.append(line)
            if "READY" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        pytest.fail("the synthetic test never reached its kill point:\n" + "".join(seen))
    return proc


def history_json(tmp: Path, capsys) -> dict:
    from rig.cli import main

    capsys.readouterr()
    main(["history", "--store", f"sqlite:///{tmp / 'history.sqlite'}", "--results", str(tmp / "runs"), "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evidence-run")
    run_dir = tmp / "runs" / "20261123T000000Z-aaaaaa"
    proc = run_pytest(tmp, run_dir)
    return tmp, run_dir, proc


def test_run_folder_has_a_complete_record(finished_run):
    tmp, run_dir, proc = finished_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["complete"] is True and rec["status"] == "failed" and rec["exit_code"] == 1
    tests = {t["name"]: t for t in rec["tests"]}
    assert {n: t["verdict"] for n, t in tests.items()} == {
        "test_alert_in_time": "passed", "test_alert_too_late": "failed", "test_ppmid_unpaired_refused": "passed",
        "test_skipped": "skipped", "test_killed_midway": "passed"}
    ok = tests["test_alert_in_time"]
    assert ok["requirements"] == ["OUT-2"]
    assert ok["steps"][0]["name"] == "mains off" and ok["steps"][0]["attrs"] == {"relay": "mains"}
    assert ok["steps"][0]["end_wall"] >= ok["steps"][0]["wall"]
    m = ok["measurements"][0]
    assert (m["name"], m["value"], m["units"], m["low"], m["high"], m["outcome"], m["requirements"]) == (
        "outage.alert_latency", 184.2, "s", 180, 190, "pass", ["OUT-2"])
    for stamp in (ok["started"], ok["finished"]):
        assert stamp["lab"] > 1e9 and stamp["wall"] > 1e9
    late = tests["test_alert_too_late"]
    assert "outage.alert_latency = 195 s, above the high limit 190" in late["failure"]["message"]
    assert [x["outcome"] for x in late["measurements"]] == ["fail", "pass"]
    assert tests["test_ppmid_unpaired_refused"]["safety_properties"] == [4]
    # what ran on what
    assert rec["lab"]["name"] == "evidence-test" and "kind: esme" in rec["lab"]["text"]
    assert rec["lab"]["model"]["benches"]["bench-1"]["devices"]["esme"]["firmware"] == "ESME 4.2"
    assert rec["hardware"]["devices"]["bench-1/esme"]["firmware"] == "ESME 4.2"
    assert rec["software"]["rig"] and rec["software"]["python"] and "pytest" in rec["software"]["packages"]
    assert rec["clock"]["configured_scale"] == 60
    assert rec["summary"]["total"] == 5 and rec["summary"]["failed"] == 1
    assert rec["files"]["junit"] == "junit.xml" and rec["files"]["journal"] == "journal.jsonl"


def test_run_folder_is_sealed_with_report_and_junit(finished_run):
    tmp, run_dir, _ = finished_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"run.json", "journal.jsonl", "junit.xml", "lab.yaml", "logs", "report.html", "MANIFEST.sha256"} <= names
    v = verify(run_dir)
    assert v.intact and v.checked >= 6
    assert "requirement" in (run_dir / "junit.xml").read_text()  # requirement ids as junit properties
    assert "test_alert_too_late" in (run_dir / "report.html").read_text()


def test_plain_pytest_writes_nothing_but_still_judges_measurements(tmp_path):
    proc = run_pytest(tmp_path, None)
    assert proc.returncode == 1
    assert "1 failed, 3 passed, 1 skipped" in proc.stdout, proc.stdout
    assert "outage.alert_latency = 195 s" in proc.stdout
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("**/run.json"))


def test_killed_run_leaves_a_valid_incomplete_record(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "20261123T000100Z-killed"
    proc = run_pytest(tmp_path, run_dir, env={"EVIDENCE_KILL_TEST": "1"}, wait_ready=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    raw = json.loads((run_dir / "run.json").read_text())  # valid JSON as it lies on disk
    assert raw["complete"] is False and raw["status"] == "running"
    rec = load_run(run_dir)  # refolded from the journal: nothing lost
    assert rec["complete"] is False and rec["recovered"] is True
    tests = {t["name"]: t for t in rec["tests"]}
    assert tests["test_alert_in_time"]["verdict"] == "passed"
    killed = tests["test_killed_midway"]
    assert killed["verdict"] == "running"
    assert [s["name"] for s in killed["steps"]] == ["enable pressed on the PPMID"]
    assert killed["measurements"][0]["name"] == "safety.enable_latency"
    assert not (run_dir / "MANIFEST.sha256").exists()

    hist = history_json(tmp_path, capsys)
    run = next(r for r in hist["runs"] if r["id"] == run_dir.name)
    assert run["state"] == "incomplete" and not run["complete"]


def test_history_shows_the_run_against_a_fault_profile(tmp_path, capsys):
    healthy = tmp_path / "runs" / "20261123T010000Z-health"
    faulty = tmp_path / "runs" / "20261123T020000Z-faulty"
    assert run_pytest(tmp_path, healthy).returncode == 1
    assert run_pytest(tmp_path, faulty, faults="[accepts_unpaired_ppmid]").returncode == 1

    hist = history_json(tmp_path, capsys)
    assert [r["id"] for r in hist["runs"]] == [faulty.name, healthy.name]
    assert json.loads(hist["runs"][0]["faults"]) == {"bench-1/esme": ["accepts_unpaired_ppmid"]}
    assert hist["runs"][0]["failed"] == 2 and hist["runs"][1]["failed"] == 1
    assert hist["changes"] == [{"nodeid": "test_suite.py::test_ppmid_unpaired_refused",
                                "before": "passed", "now": "failed"}]
    trend = next(t for t in hist["tests"] if t["nodeid"].endswith("test_ppmid_unpaired_refused"))
    assert trend["verdicts"] == ["passed", "failed"] and trend["pass_rate"] == 0.5
    assert trend["flaky"] is False  # different firmware (a fault profile): a real difference, not flakiness

    from rig.cli import main

    capsys.readouterr()
    main(["history", "--store", f"sqlite:///{tmp_path / 'history.sqlite'}", "--results", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "accepts_unpaired_ppmid" in out and "changed since the previous run" in out
