"""A lab run's record per bench: each bench's status and why, the view from
one bench (the safety pack's), the store and the report grouping by bench."""

from __future__ import annotations

import json
import sqlite3

from rig.evidence.record import bench_record, bench_sections, derive, empty_record
from rig.evidence.store import ResultsStore


def entry(nodeid: str, bench: str, verdict: str, **kw) -> dict:
    return {"nodeid": nodeid, "name": nodeid.split("::")[-1], "bench": bench, "verdict": verdict,
            "measurements": [], "steps": [], "selftests": [], **kw}


def lab_run(status: str = "failed", complete: bool = True) -> dict:
    rec = empty_record("r1")
    rec.update(status=status, complete=complete, bench="b1, b2, b3, b4")
    rec["benches"] = {"b1": {"devices": {}, "not_run": None}, "b2": {"devices": {}, "not_run": None},
                      "b3": {"devices": {}, "not_run": "agent offline (connection lost)"},
                      "b4": {"devices": {}, "not_run": None}}
    rec["tests"] = [
        entry("t.py::test_a[b1]", "b1", "passed"), entry("t.py::test_b[b1]", "b1", "skipped"),
        entry("t.py::test_a[b2]", "b2", "failed"),
        entry("t.py::test_b[b2]", "b2", "skipped", not_run="b2: agent offline (agent exit (SIGTERM))"),
        entry("t.py::test_a[b3]", "b3", "skipped", not_run="b3: agent offline (connection lost)"),
        entry("t.py::test_a[b4]", "b4", "passed"), entry("t.py::test_b[b4]", "b4", "failed"),
    ]
    return rec


def test_each_bench_gets_its_status_and_the_reason_it_did_not_run_or_stopped():
    s = bench_sections(lab_run())
    assert {b: v["status"] for b, v in s.items()} == {"b1": "passed", "b2": "incomplete", "b3": "not_run",
                                                       "b4": "failed"}
    assert s["b2"]["reason"] == "agent offline (agent exit (SIGTERM))" and s["b2"]["not_run_tests"] == 1
    assert s["b3"]["reason"] == "agent offline (connection lost)"
    assert s["b1"]["reason"] is None and s["b1"]["summary"]["passed"] == 1 and s["b1"]["summary"]["skipped"] == 1


def test_a_bench_is_running_while_the_run_is_and_incomplete_when_the_run_died():
    rec = lab_run(status="running", complete=False)
    rec["tests"].append(entry("t.py::test_c[b1]", "b1", "running"))
    assert bench_sections(rec)["b1"]["status"] == "running"
    assert bench_sections(rec)["b4"]["status"] == "running"   # between two checks: not yet passed or failed
    rec["recovered"] = True                                   # refolded from the journal of a killed run
    s = bench_sections(rec)
    assert s["b1"]["status"] == "incomplete" and "stopped before" in s["b1"]["reason"]


def test_the_view_from_one_bench_holds_only_its_tests_and_parts():
    rec = derive(lab_run())
    rec["hardware"] = {"devices": {"b1/esme": {"kind": "esme"}, "b2/esme": {"kind": "esme"}},
                       "instruments": {"b1/analyser": {}, "b2/analyser": {}}}
    rec["lab"] = {"faults": {"b2/esme": ["skips_arm"]}}
    one = bench_record(rec, "b2")
    assert [t["nodeid"] for t in one["tests"]] == ["t.py::test_a[b2]", "t.py::test_b[b2]"]
    assert list(one["hardware"]["devices"]) == ["b2/esme"] and list(one["hardware"]["instruments"]) == ["b2/analyser"]
    assert one["lab"]["faults"] == {"b2/esme": ["skips_arm"]} and one["bench"] == "b2"
    assert one["summary"]["failed"] == 1 and one["summary"]["total"] == 2


def test_the_store_keeps_each_results_bench_and_adds_the_columns_to_an_older_store(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)   # the first schema, without the bench columns
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, lab TEXT, bench TEXT, run_dir TEXT, host TEXT, pid INTEGER,"
                 " started_wall DOUBLE PRECISION, started_lab DOUBLE PRECISION, clock_scale DOUBLE PRECISION,"
                 " rig_version TEXT, software_fp TEXT, firmware_fp TEXT, faults TEXT,"
                 " complete INTEGER NOT NULL DEFAULT 0, status TEXT, exit_code INTEGER, finished_wall DOUBLE PRECISION,"
                 " total INTEGER, passed INTEGER, failed INTEGER, errors INTEGER, skipped INTEGER, manifest_sha256 TEXT)")
    conn.execute("CREATE TABLE test_results (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, nodeid TEXT"
                 " NOT NULL, verdict TEXT NOT NULL, started_wall DOUBLE PRECISION, duration_wall DOUBLE PRECISION,"
                 " duration_lab DOUBLE PRECISION, requirements TEXT, message TEXT, measurements_failed INTEGER,"
                 " software_fp TEXT, firmware_fp TEXT)")
    conn.commit()
    conn.close()
    rec = derive(lab_run())
    rec["started"] = {"wall": 1.0, "lab": 1.0}
    with ResultsStore.open(f"sqlite:///{path}") as store:
        assert store.import_run(rec, tmp_path, "abc")
        runs = store.runs()
        trends = store.test_trends()
    assert json.loads(runs[0]["benches"])["b3"] == {"status": "not_run", "reason": "agent offline (connection lost)"}
    assert {t.nodeid: t.bench for t in trends}["t.py::test_a[b4]"] == "b4"
    assert [t.bench for t in trends] == sorted(t.bench for t in trends)   # grouped by bench


def test_the_report_has_a_table_of_benches_and_the_tests_of_each(tmp_path):
    from rig.evidence.report import render

    rec = derive(lab_run())
    rec["status"] = "partial"
    html = render(tmp_path, rec)
    assert 'id="benches"' in html and "PARTIAL" in html
    for bench in ("b1", "b2", "b3", "b4"):
        assert f'id="bench-{bench}"' in html
    assert "agent offline (connection lost)" in html
