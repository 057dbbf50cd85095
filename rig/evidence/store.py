"""The results store: every run and every test result, kept over nights.

SQLite by default (``lab.results.store: sqlite:///runs/history.sqlite``, a
path relative to the working directory; ``sqlite:////abs/path`` for an
absolute one).  A ``postgresql://`` URL uses psycopg (3.x) when it is
installed (``pip install psycopg[binary]``).

Append-only: a run is inserted when it starts and each test result when the
test ends; nothing is ever deleted, and the only update is a run's final
status (complete, verdict counts, manifest hash), made once.  Triggers
refuse anything else (SQLite; PostgreSQL 14 or later).  So a killed run
stays in the store, marked incomplete.

::

    store = ResultsStore.open("sqlite:///runs/history.sqlite")
    for trend in store.test_trends(last=20):
        print(trend.nodeid, trend.pass_rate, trend.flaky)
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .inventory import fingerprints


class StoreError(Exception):
    """The store cannot be opened or written; the message names its URL."""


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        lab TEXT, bench TEXT, run_dir TEXT, host TEXT, pid INTEGER,
        started_wall DOUBLE PRECISION, started_lab DOUBLE PRECISION, clock_scale DOUBLE PRECISION,
        rig_version TEXT, software_fp TEXT, firmware_fp TEXT, faults TEXT,
        complete INTEGER NOT NULL DEFAULT 0, status TEXT, exit_code INTEGER, finished_wall DOUBLE PRECISION,
        total INTEGER, passed INTEGER, failed INTEGER, errors INTEGER, skipped INTEGER,
        manifest_sha256 TEXT, benches TEXT)""",
    """CREATE TABLE IF NOT EXISTS test_results (
        id {serial},
        run_id TEXT NOT NULL REFERENCES runs(id),
        nodeid TEXT NOT NULL, verdict TEXT NOT NULL,
        started_wall DOUBLE PRECISION, duration_wall DOUBLE PRECISION, duration_lab DOUBLE PRECISION,
        requirements TEXT, message TEXT, measurements_failed INTEGER,
        software_fp TEXT, firmware_fp TEXT, bench TEXT)""",
    "CREATE INDEX IF NOT EXISTS test_results_nodeid ON test_results(nodeid)",
    "CREATE INDEX IF NOT EXISTS test_results_run ON test_results(run_id)",
]

#: (table, column) added after the first schema; TEXT each
_ADDED_COLUMNS = [("runs", "benches"), ("test_results", "bench")]

_SQLITE_GUARDS = [
    """CREATE TRIGGER IF NOT EXISTS test_results_no_update BEFORE UPDATE ON test_results
       BEGIN SELECT RAISE(ABORT, 'test results are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS test_results_no_delete BEFORE DELETE ON test_results
       BEGIN SELECT RAISE(ABORT, 'test results are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS runs_no_delete BEFORE DELETE ON runs
       BEGIN SELECT RAISE(ABORT, 'runs are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS runs_final_once BEFORE UPDATE ON runs WHEN OLD.complete = 1
       BEGIN SELECT RAISE(ABORT, 'a finished run is never rewritten'); END""",
    """CREATE TRIGGER IF NOT EXISTS runs_identity_fixed BEFORE UPDATE OF id, lab, bench, run_dir, started_wall ON runs
       BEGIN SELECT RAISE(ABORT, 'a run''s identity is never rewritten'); END""",
]


_POSTGRES_GUARDS = [
    """CREATE OR REPLACE FUNCTION rig_refuse() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$""",
    """CREATE OR REPLACE TRIGGER test_results_append_only BEFORE UPDATE OR DELETE ON test_results
       FOR EACH ROW EXECUTE FUNCTION rig_refuse('test results are append-only')""",
    """CREATE OR REPLACE TRIGGER runs_no_delete BEFORE DELETE ON runs
       FOR EACH ROW EXECUTE FUNCTION rig_refuse('runs are append-only')""",
    """CREATE OR REPLACE TRIGGER runs_final_once BEFORE UPDATE ON runs FOR EACH ROW WHEN (OLD.complete = 1)
       EXECUTE FUNCTION rig_refuse('a finished run is never rewritten')""",
    """CREATE OR REPLACE TRIGGER runs_identity_fixed BEFORE UPDATE OF id, lab, bench, run_dir, started_wall ON runs
       FOR EACH ROW EXECUTE FUNCTION rig_refuse('a run''s identity is never rewritten')""",
]


@dataclass
class TestTrend:
    """One test's history over the runs looked at (oldest first)."""

    __test__ = False

    nodeid: str
    bench: str | None = None
    verdicts: list[str] = field(default_factory=list)
    durations: list[float | None] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    flaky: bool = False
    flaky_on: list[str] = field(default_factory=list)  # "software/firmware" fingerprints it flaked on

    @property
    def runs(self) -> int:
        return len(self.verdicts)

    @property
    def passed(self) -> int:
        return sum(v == "passed" for v in self.verdicts)

    @property
    def pass_rate(self) -> float | None:
        judged = [v for v in self.verdicts if v in ("passed", "failed", "error", "xpassed")]
        return sum(v == "passed" for v in judged) / len(judged) if judged else None


def _sqlite_path(url: str) -> Path:
    # sqlite:///relative/path, sqlite:////absolute/path (SQLAlchemy's spelling)
    rest = url[len("sqlite://"):]
    if not rest.startswith("/"):
        raise StoreError(f"store URL {url}: expected sqlite:///path/to/file.sqlite")
    rest = rest[1:]
    return Path(rest) if rest else Path("history.sqlite")


class ResultsStore:
    def __init__(self, conn: Any, url: str, dialect: str, errors: type[Exception] = sqlite3.Error):
        self.conn, self.url, self.dialect, self._errors = conn, url, dialect, errors

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str) -> "ResultsStore":
        """Open (creating if needed) the store at ``url``."""
        conn: Any       # a sqlite3 or a psycopg connection
        if url.startswith("sqlite:"):
            path = _sqlite_path(url)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"results store {url} ({path}): {exc}") from None
            store = cls(conn, url, "sqlite")
        elif url.startswith(("postgresql:", "postgres:")):
            try:
                import psycopg  # noqa: PLC0415 - optional, only for a PostgreSQL store
            except ImportError:
                raise StoreError(f"results store {url}: PostgreSQL needs psycopg: "
                                 "pip install 'psycopg[binary]'") from None
            try:
                conn = psycopg.connect(url, autocommit=True)
            except Exception as exc:  # noqa: BLE001 - psycopg.Error and OS errors alike
                raise StoreError(f"results store {redact(url)}: {exc}") from None
            store = cls(conn, redact(url), "postgresql", psycopg.Error)
        else:
            raise StoreError(f"results store {redact(url)}: expected sqlite:///PATH or postgresql://...")
        store._create()
        return store

    def _create(self) -> None:
        serial = "INTEGER PRIMARY KEY AUTOINCREMENT" if self.dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
        for stmt in _SCHEMA:
            self._exec(stmt.format(serial=serial))
        # columns added since the first schema (a lab run's benches): added to an older store in place
        for table, column in _ADDED_COLUMNS:
            if column not in self._columns(table):
                try:
                    self._exec(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
                except StoreError:
                    if column not in self._columns(table):  # else another process added it first
                        raise
        for stmt in _SQLITE_GUARDS if self.dialect == "sqlite" else _POSTGRES_GUARDS:
            self._exec(stmt)

    def _columns(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            return {row[1] for row in self._exec(f"PRAGMA table_info({table})").fetchall()}
        rows = self._exec("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
        return {row[0] for row in rows.fetchall()}

    def _exec(self, sql: str, params: tuple | None = None) -> Any:
        if self.dialect != "sqlite" and params is not None:
            sql = sql.replace("?", "%s")
        try:
            return self.conn.execute(sql, params) if params is not None else self.conn.execute(sql)
        except self._errors as exc:
            raise StoreError(f"results store {self.url}: {str(exc).strip().splitlines()[0]}") from None

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        self._exec(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                   tuple(row.values()))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def has_run(self, run_id: str) -> bool:
        return self._exec("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

    def begin_run(self, rec: dict[str, Any], run_dir: Path | str | None = None) -> None:
        """Insert a run as it starts (incomplete until :meth:`finish_run`)."""
        if self.has_run(rec["id"]):
            return
        sw_fp, fw_fp = fingerprints(rec)
        started = rec.get("started") or {}
        lab = rec.get("lab") or {}
        self._insert("runs", {
            "id": rec["id"], "lab": lab.get("name"), "bench": rec.get("bench"),
            "run_dir": str(run_dir) if run_dir else None, "host": rec.get("host"), "pid": rec.get("pid"),
            "started_wall": started.get("wall"), "started_lab": started.get("lab"),
            "clock_scale": (rec.get("clock") or {}).get("scale"), "rig_version": (rec.get("software") or {}).get("rig"),
            "software_fp": sw_fp, "firmware_fp": fw_fp, "faults": json.dumps(lab.get("faults") or {}),
            "complete": 0, "status": "running"})

    def add_test(self, rec: dict[str, Any], test: dict[str, Any]) -> None:
        """Append one finished test's result."""
        sw_fp, fw_fp = fingerprints(rec)
        duration = test.get("duration") or {}
        failure = test.get("failure") or {}
        self._insert("test_results", {
            "run_id": rec["id"], "nodeid": test["nodeid"], "verdict": test.get("verdict", "error"),
            "started_wall": (test.get("started") or {}).get("wall"),
            "duration_wall": duration.get("wall"), "duration_lab": duration.get("lab"),
            "requirements": ",".join(test.get("requirements") or []),
            "message": (failure.get("message") or "")[:500] or None,
            "measurements_failed": sum(1 for m in test.get("measurements", []) if m.get("outcome") == "fail"),
            "software_fp": sw_fp, "firmware_fp": fw_fp, "bench": test.get("bench")})

    def finish_run(self, rec: dict[str, Any], manifest_sha256: str | None = None) -> None:
        """Record a run's final status: the one update the store allows."""
        s = rec.get("summary") or {}
        sw_fp, fw_fp = fingerprints(rec)
        self._exec(
            "UPDATE runs SET complete = ?, status = ?, exit_code = ?, finished_wall = ?, total = ?, passed = ?, "
            "failed = ?, errors = ?, skipped = ?, manifest_sha256 = ?, software_fp = ?, firmware_fp = ?, "
            "clock_scale = ?, benches = ? WHERE id = ? AND complete = 0",
            (1 if rec.get("complete") else 0, rec.get("status"), rec.get("exit_code"),
             (rec.get("finished") or {}).get("wall"), s.get("total"), s.get("passed"), s.get("failed"),
             s.get("error"), s.get("skipped"), manifest_sha256, sw_fp, fw_fp,
             (rec.get("clock") or {}).get("scale"), bench_statuses(rec), rec["id"]))

    def import_run(self, rec: dict[str, Any], run_dir: Path | str | None = None,
                   manifest_sha256: str | None = None) -> bool:
        """Add a run folder's record the store has never seen (a run made while
        the store was unreachable); returns whether it was added."""
        if self.has_run(rec["id"]):
            return False
        self.begin_run(rec, run_dir)
        for test in rec.get("tests", []):
            if test.get("verdict") != "running":
                self.add_test(rec, test)
        if rec.get("complete"):
            self.finish_run(rec, manifest_sha256)
        return True

    # ------------------------------------------------------------------ reading
    def runs(self, last: int = 20, lab: str | None = None) -> list[dict[str, Any]]:
        """The last runs, newest first, as dicts (``complete`` 0 = incomplete)."""
        sql = "SELECT * FROM runs" + (" WHERE lab = ?" if lab else "") + " ORDER BY started_wall DESC, id DESC LIMIT ?"
        cur = self._exec(sql, ((lab, last) if lab else (last,)))
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        for r in rows:
            r["state"] = run_state(r)
        return rows

    def selftest_runs(self, lab: str | None, last: int = 50) -> list[dict[str, Any]]:
        """Complete runs (newest first) that hold ``rig selftest`` results
        (tests ``selftest::...``), of ``lab`` when given: id, run_dir, started_wall."""
        sql = ("SELECT id, run_dir, started_wall FROM runs WHERE complete = 1"
               + (" AND lab = ?" if lab else "")
               + " AND id IN (SELECT run_id FROM test_results WHERE nodeid LIKE ?)"
               " ORDER BY started_wall DESC, id DESC LIMIT ?")
        params = ((lab,) if lab else ()) + ("selftest::%", last)
        cur = self._exec(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def test_trends(self, last: int = 20, lab: str | None = None, test: str | None = None) -> list[TestTrend]:
        """Per-test verdicts and durations over the last ``last`` runs, oldest
        first, with flaky tests flagged: passed and failed on the same
        software and firmware fingerprints."""
        runs = list(reversed(self.runs(last, lab)))
        if not runs:
            return []
        order = {r["id"]: i for i, r in enumerate(runs)}
        marks = ",".join("?" for _ in runs)
        sql = (f"SELECT run_id, nodeid, verdict, duration_wall, software_fp, firmware_fp, id, bench FROM test_results "
               f"WHERE run_id IN ({marks})")
        params: tuple = tuple(order)
        if test:
            sql += " AND nodeid LIKE ?"
            params += (f"%{test}%",)
        rows = sorted(self._exec(sql, params).fetchall(), key=lambda r: (order[r[0]], r[6]))
        trends: dict[str, TestTrend] = {}
        seen: dict[tuple[str, str, str], set[str]] = {}
        for run_id, nodeid, verdict, duration, sw, fw, _id, bench in rows:
            t = trends.setdefault(nodeid, TestTrend(nodeid, bench=bench))
            t.verdicts.append(verdict)
            t.durations.append(duration)
            t.run_ids.append(run_id)
            if verdict in ("passed", "failed", "error"):
                seen.setdefault((nodeid, sw, fw), set()).add("passed" if verdict == "passed" else "failed")
        for (nodeid, sw, fw), outcomes in seen.items():
            if outcomes == {"passed", "failed"}:
                trends[nodeid].flaky = True
                trends[nodeid].flaky_on.append(f"{sw}/{fw}")
        return sorted(trends.values(), key=lambda t: (t.bench or "", t.nodeid))


def bench_statuses(rec: dict[str, Any]) -> str | None:
    """``{"bench-1": {"status", "reason"}}`` as JSON, for the runs table."""
    benches = rec.get("benches") or {}
    if not benches:
        return None
    return json.dumps({name: {"status": b.get("status"), "reason": b.get("reason")} for name, b in benches.items()})


def run_state(row: dict[str, Any]) -> str:
    """``complete`` or ``incomplete``; ``running`` when the run's process is
    alive on this host."""
    if row.get("complete"):
        return "complete"
    if row.get("host") == socket.gethostname() and row.get("pid"):
        try:
            os.kill(int(row["pid"]), 0)
            return "running"
        except (OSError, ValueError):
            pass
    return "incomplete"


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    if u.password:
        netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
        return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
    return url


def sync_run_folders(store: ResultsStore, results_dir: Path) -> list[str]:
    """Import every run folder under ``results_dir`` that the store lacks."""
    from . import MANIFEST_FILE
    from .manifest import sha256_file
    from .record import RecordError, load_run

    added: list[str] = []
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return added
    for run_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        if store.has_run(run_dir.name):
            continue
        try:
            rec = load_run(run_dir)
        except RecordError:
            continue
        manifest = run_dir / MANIFEST_FILE
        if store.import_run(rec, run_dir, sha256_file(manifest) if manifest.exists() else None):
            added.append(run_dir.name)
    return added
