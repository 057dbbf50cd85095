"""The results store: append-only, trends over runs, flaky tests flagged only
on the same software and firmware."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from rig.evidence.recorder import RunRecorder
from rig.evidence.seal import seal_run
from rig.evidence.store import ResultsStore, StoreError, sync_run_folders

ROOT = Path(__file__).resolve().parent.parent


def make_run(tmp: Path, name: str, verdicts: dict[str, str], store: str, lab: Path | None = None,
             seal: bool = True) -> Path:
    """A run recorded in-process, as the pytest plugin does it."""
    run_dir = tmp / "runs" / name
    rec = RunRecorder(run_dir, lab_path=lab or ROOT / "tests" / "labs" / "minimal.yaml", store_url=store,
                      argv=["test"]).start()
    for nodeid, verdict in verdicts.items():
        rec.test_started({"nodeid": nodeid, "requirements": ["LAB-1"]})
        ev = rec.evidence_for(nodeid)
        ev.measure("relay.switch_time", 0.2, "s", high=1)
        rec.test_finished({"nodeid": nodeid, "verdict": verdict, **ev.entries(),
                           "failure": {"phase": "call", "message": "boom", "text": ""} if verdict == "failed" else None})
    failed = any(v == "failed" for v in verdicts.values())
    rec.finish("failed" if failed else "passed", int(failed))
    if seal:
        seal_run(run_dir, report=False)
    return run_dir


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty store: SQLite always; PostgreSQL when RIG_TEST_POSTGRES_URL
    names a database this test may wipe (e.g. postgresql://postgres@127.0.0.1:5432/rig)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    url = os.environ.get("RIG_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("RIG_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (RIG_REQUIRE_POSTGRES=1) but RIG_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL to test on (set RIG_TEST_POSTGRES_URL)")
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS test_results, runs CASCADE")
    return url


def test_runs_and_results_are_appended_and_final_status_set_once(tmp_path, store_url):
    make_run(tmp_path, "r1", {"t::a": "passed", "t::b": "failed"}, store_url)
    with ResultsStore.open(store_url) as st:
        [run] = st.runs()
        assert (run["id"], run["complete"], run["status"], run["total"], run["passed"], run["failed"]) == (
            "r1", 1, "failed", 2, 1, 1)
        assert len(run["manifest_sha256"]) == 64 and run["state"] == "complete"
        with pytest.raises(StoreError, match="append-only"):
            st._exec("UPDATE test_results SET verdict = 'passed'")
        with pytest.raises(StoreError, match="append-only"):
            st._exec("DELETE FROM runs")
        with pytest.raises(StoreError, match="never rewritten"):
            st._exec("UPDATE runs SET status = 'passed' WHERE id = 'r1'")


def test_flaky_means_pass_and_fail_on_the_same_software_and_firmware(tmp_path, store_url):
    make_run(tmp_path, "r1", {"t::steady": "passed", "t::flip": "passed"}, store_url)
    make_run(tmp_path, "r2", {"t::steady": "passed", "t::flip": "failed"}, store_url)
    make_run(tmp_path, "r3", {"t::steady": "passed", "t::flip": "passed"}, store_url)
    with ResultsStore.open(store_url) as st:
        trends = {t.nodeid: t for t in st.test_trends()}
    assert trends["t::flip"].verdicts == ["passed", "failed", "passed"]
    assert trends["t::flip"].flaky and not trends["t::steady"].flaky
    assert trends["t::flip"].pass_rate == pytest.approx(2 / 3)
    assert len(trends["t::steady"].durations) == 3


def test_a_fault_profile_is_different_firmware_not_flakiness(tmp_path, store_url):
    faulty_lab = tmp_path / "faulty.yaml"
    faulty_lab.write_text((ROOT / "tests" / "labs" / "minimal.yaml").read_text() + """
    devices:
      esme: {kind: esme, id: "00:0d:6f:00:00:00:00:01", faults: [skips_arm]}
""")
    make_run(tmp_path, "r1", {"t::arm": "passed"}, store_url)
    make_run(tmp_path, "r2", {"t::arm": "failed"}, store_url, lab=faulty_lab)
    with ResultsStore.open(store_url) as st:
        [trend] = st.test_trends()
        runs = st.runs()
    assert trend.verdicts == ["passed", "failed"] and not trend.flaky
    assert runs[0]["software_fp"] == runs[1]["software_fp"] and runs[0]["firmware_fp"] != runs[1]["firmware_fp"]


def test_run_folders_the_store_missed_are_imported(tmp_path, store_url):
    make_run(tmp_path, "r1", {"t::a": "passed"}, "sqlite:///" + str(tmp_path / "elsewhere.sqlite"))
    with ResultsStore.open(store_url) as st:
        assert sync_run_folders(st, tmp_path / "runs") == ["r1"]
        assert sync_run_folders(st, tmp_path / "runs") == []
        [run] = st.runs()
        assert run["complete"] == 1 and len(run["manifest_sha256"]) == 64
        assert [t.verdicts for t in st.test_trends()] == [["passed"]]


def test_unreachable_store_does_not_stop_the_run(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    run_dir = make_run(tmp_path, "r1", {"t::a": "passed"}, f"sqlite:///{blocker}/history.sqlite", seal=False)
    from rig.evidence.record import load_run

    rec = load_run(run_dir)
    assert rec["complete"] and rec["tests"][0]["verdict"] == "passed"
    assert "not-a-dir" in rec["files"]["store_error"]


def test_store_urls_are_checked(tmp_path):
    with pytest.raises(StoreError, match="expected sqlite:///PATH or postgresql://"):
        ResultsStore.open("mysql://db/history")
    with pytest.raises(StoreError, match=r"mysql://u:\*\*\*@db"):
        ResultsStore.open("mysql://u:secret@db/history")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        with pytest.raises(StoreError, match=r"pip install 'psycopg\[binary\]'"):
            ResultsStore.open("postgresql://db.lab/rig")


def test_sqlite_store_uses_write_ahead_logging(tmp_path, store_url):
    if not store_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    make_run(tmp_path, "r1", {"t::a": "passed"}, store_url)
    path = store_url[len("sqlite:///"):]
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_history_prints_parametrised_test_ids_whole(tmp_path, capsys):
    """``[armed]`` in a test id is text, not rich markup: both parametrised
    cases must show, not one name twice."""
    from rig.cli import main

    store = f"sqlite:///{tmp_path / 'history.sqlite'}"
    make_run(tmp_path, "r1", {"t.py::test_outage[armed]": "passed", "t.py::test_outage[disabled]": "passed"}, store)
    make_run(tmp_path, "r2", {"t.py::test_outage[armed]": "failed", "t.py::test_outage[disabled]": "passed"}, store)
    capsys.readouterr()
    main(["history", "--store", store, "--results", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "test_outage[armed]" in out and "test_outage[disabled]" in out
