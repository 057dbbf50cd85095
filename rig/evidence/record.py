"""The run record: ``run.json``, kept valid while the run goes.

The record is a fold over events.  Every event is appended to
``journal.jsonl`` (one JSON object a line, flushed at once) and applied to the
record in memory; ``run.json`` is rewritten atomically (temporary file, then
rename) at the start, at the end of every test (at most once a second) and at
the end of the run.  A run killed at any instant therefore leaves:

* ``run.json``: valid JSON, ``"complete": false``, at most a second behind;
* ``journal.jsonl``: every event up to the kill (a torn last line is skipped).

:func:`load_run` reads ``run.json`` and, for an incomplete run, folds the
journal again so nothing is lost.

Top-level shape (``schema: rig.run/1``; docs/evidence.md has every field)::

    {"schema", "id", "complete", "status", "exit_code", "started", "finished",
     "host", "pid", "argv", "lab": {"name", "source", "text", "sha256", "model", "faults"},
     "bench", "clock": {"scale", "configured_scale", "anchor_wall", "source"},
     "software": {"rig", "python", "platform", "git", "packages"},
     "hardware": {"instruments": {...}, "devices": {...}},
     "files": {"junit", "bus_capture", "journal", "logs", "lab"},
     "tests": [...], "summary": {...}, "selftest": [...],
     "kind": "run" | "selftest", "suites": {"files": {name: sha256}, "sha256"},
     "deviations": [{"key", "requirement", "reference", "value", "units", "reason"}],
     "selftest_run": {...}}                        # a `rig selftest` run only: what it ran
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import JOURNAL_FILE, RECORD_FILE

log = logging.getLogger(__name__)
SCHEMA = "rig.run/1"
#: a snapshot of run.json may take at most 1/SNAPSHOT_SHARE of the time between two
SNAPSHOT_SHARE = 20
#: wall seconds from which a snapshot counts as slow (a small record is always written at the interval)
SLOW_SNAPSHOT = 0.01
VERDICTS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "running")


class RecordError(Exception):
    """A run folder without a readable record; the message names the file."""


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, unknown objects str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(data, indent=indent, allow_nan=False, ensure_ascii=False, sort_keys=False)


# ----------------------------------------------------------------------------- the fold
def empty_record(run_id: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "id": run_id, "complete": False, "status": "running", "exit_code": None,
        "started": None, "finished": None, "host": None, "pid": None, "argv": [],
        "lab": None, "bench": None, "benches": {}, "clock": None, "software": None,
        "hardware": {"instruments": {}, "devices": {}},
        "files": {}, "tests": [], "summary": summarise([]), "selftest": [],
        "kind": "run", "suites": None, "deviations": [],
    }


def summarise(tests: list[dict[str, Any]]) -> dict[str, int]:
    counts = {v: 0 for v in VERDICTS}
    for t in tests:
        counts[t.get("verdict", "running")] = counts.get(t.get("verdict", "running"), 0) + 1
    counts["total"] = len(tests)
    counts["measurements"] = sum(len(t.get("measurements", [])) for t in tests)
    counts["measurements_failed"] = sum(1 for t in tests for m in t.get("measurements", [])
                                        if m.get("outcome") == "fail")
    return counts


def _find(rec: dict[str, Any], nodeid: str | None) -> int | None:
    """Index of a test by id, searching from the newest (the one running)."""
    tests = rec["tests"]
    for i in range(len(tests) - 1, -1, -1):
        if tests[i]["nodeid"] == nodeid:
            return i
    return None


def _merge_entry(entries: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Steps are re-sent when they end: replace the one with the same start."""
    for i, e in enumerate(entries):
        if e.get("name") == entry.get("name") and e.get("wall") == entry.get("wall"):
            entries[i] = entry
            return
    entries.append(entry)


def apply(rec: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Apply one journal event to the record (in place); returns the record."""
    ev = event.get("ev")
    if ev == "run.start":
        rec.update(event["run"])
    elif ev == "hardware":
        for section in ("instruments", "devices"):
            for name, info in (event.get(section) or {}).items():
                rec["hardware"][section].setdefault(name, {}).update(info)
    elif ev == "clock":
        rec["clock"] = {**(rec.get("clock") or {}), **event["clock"]}
    elif ev == "files":
        rec["files"].update(event["files"])
    elif ev == "test.start":
        test = {"verdict": "running", "steps": [], "measurements": [], "selftests": [],
                "failure": None, "phases": {}, "finished": None, "duration": None, **event["test"]}
        i = _find(rec, test["nodeid"])
        if i is not None:  # a rerun of the same id replaces the earlier attempt
            rec["tests"][i] = test
        else:
            rec["tests"].append(test)
    elif ev in ("step", "measurement", "selftest"):
        i = _find(rec, event.get("nodeid"))
        if i is not None:
            test = rec["tests"][i]
            if ev == "step":
                _merge_entry(test["steps"], event["step"])
            elif ev == "measurement":
                test["measurements"].append(event["measurement"])
            else:
                test["selftests"].append(event["selftest"])
        elif ev == "selftest":
            rec.setdefault("run_selftests", []).append(event["selftest"])
    elif ev == "test.end":
        final = event["test"]
        i = _find(rec, final["nodeid"])
        if i is not None:
            rec["tests"][i].update(final)
        else:
            rec["tests"].append({"steps": [], "measurements": [], "selftests": [], **final})
    elif ev == "deviations":
        rec["deviations"] = list(event.get("deviations") or [])
    elif ev == "selftest.run":
        rec["kind"] = "selftest"
        rec["selftest_run"] = {**(rec.get("selftest_run") or {}), **(event.get("selftest_run") or {})}
    elif ev == "run.end":
        rec.update({"complete": bool(event.get("complete", True)), "status": event["status"],
                    "exit_code": event.get("exit_code"), "finished": event.get("finished")})
    return rec


#: a bench's status in a run: ``not_run`` (could not start: agent offline, leased by someone
#: else, E-stop), ``incomplete`` (cut short: its agent went away, or the run was killed),
#: ``running``, ``failed``, ``passed``, ``skipped`` (every check skipped), ``no_tests``
BENCH_STATUSES = ("not_run", "incomplete", "running", "failed", "passed", "skipped", "no_tests")


def bench_sections(rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per bench of the run: its status, the reason when it did not run or
    was cut short, and its own summary (``run.json`` ``benches``)."""
    sections = {name: dict(sec) for name, sec in (rec.get("benches") or {}).items()}
    by_bench: dict[str | None, list[dict[str, Any]]] = {}
    for t in rec.get("tests", []):
        by_bench.setdefault(t.get("bench"), []).append(t)
    for name in by_bench:
        if name is not None and name not in sections:
            sections[name] = {"devices": {}, "not_run": None}
    live = rec.get("status") == "running" and not rec.get("recovered")
    for name, sec in sections.items():
        tests = by_bench.get(name, [])
        summary = summarise(tests)
        cut = next((t["not_run"] for t in tests if t.get("not_run")), None)
        reason = None
        if sec.get("not_run"):
            status, reason = "not_run", sec["not_run"]
        elif cut:
            status, reason = "incomplete", cut.removeprefix(f"{name}: ")
        elif summary["running"] or live:
            status = "running" if live else "incomplete"
            if status == "incomplete":
                reason = "the run stopped before this bench's checks ended"
        elif summary["failed"] or summary["error"] or summary["xpassed"]:
            status = "failed"
        elif summary["passed"]:
            status = "passed"
        elif tests:
            status = "skipped"
        else:
            status = "no_tests"
        sec.update({"status": status, "reason": reason, "summary": summary,
                    "not_run_tests": sum(1 for t in tests if t.get("not_run"))})
    return sections


def derive(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields computed from the tests (``summary``, ``selftest``,
    each bench's section); done when the record is written, not on every event."""
    rec["summary"] = summarise(rec["tests"])
    rec["selftest"] = [s for t in rec["tests"] for s in t.get("selftests", [])] + rec.get("run_selftests", [])
    if rec.get("benches") or any(t.get("bench") for t in rec["tests"]):
        rec["benches"] = bench_sections(rec)
    return rec


def bench_record(rec: dict[str, Any], bench: str) -> dict[str, Any]:
    """The record as seen from one bench: its tests, its instruments and
    devices, its self-checks (the safety pack is built per device under test)."""
    prefix = f"{bench}/"
    hw = rec.get("hardware") or {}
    tests = [t for t in rec.get("tests", []) if t.get("bench") in (bench, None)]
    out = {**rec, "bench": bench, "tests": tests,
           "hardware": {section: {k: v for k, v in (hw.get(section) or {}).items() if k.startswith(prefix)}
                        for section in ("instruments", "devices")},
           "benches": {bench: (rec.get("benches") or {}).get(bench, {})}}
    lab = dict(rec.get("lab") or {})
    lab["faults"] = {k: v for k, v in (lab.get("faults") or {}).items() if k.startswith(prefix)}
    out["lab"] = lab
    out["summary"] = summarise(tests)
    out["selftest"] = [s for t in tests for s in t.get("selftests", [])] + (
        rec.get("run_selftests", []) if len(rec.get("benches") or {}) <= 1 else [])
    return out


def fold(events: list[dict[str, Any]], run_id: str = "") -> dict[str, Any]:
    rec = empty_record(run_id)
    for event in events:
        apply(rec, event)
    return derive(rec)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every whole event of a journal; a torn last line (a kill mid-write) is skipped."""
    events = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


# ----------------------------------------------------------------------------- writing
def write_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` so that a reader (or a kill) sees the old
    or the new file, never half of one.  If the write fails (a full disk),
    the old file stays and no temporary file is left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


class RecordWriter:
    """Writes one run's record into its run folder, event by event.

    ::

        w = RecordWriter(run_dir)
        w.emit({"ev": "run.start", "run": {...}})
        w.emit({"ev": "test.start", "test": {"nodeid": "test_x.py::test_a", ...}})
        ...
        w.close("passed", exit_code=0)
    """

    def __init__(self, run_dir: Path, snapshot_interval: float = 1.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RECORD_FILE
        self.journal_path = self.run_dir / JOURNAL_FILE
        self.snapshot_interval = snapshot_interval
        self.record = empty_record(self.run_dir.name)
        self._lock = threading.RLock()
        self._last_snapshot = float("-inf")  # the first boundary always writes run.json (not "uptime > interval")
        self._last_cost = 0.0
        self._dirty = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._journal = open(self.journal_path, "a", encoding="utf-8", buffering=1)
        self._journal_ok = True
        self.closed = False
        #: the first write that failed (a full disk ...): the run goes on, the
        #: record in memory stays whole, run.json is kept valid and the run is
        #: closed incomplete
        self.error: str | None = None

    def _failed(self, path: Path, exc: OSError) -> None:
        if self.error is None:
            self.error = (f"the run record could not be written: {path}: {exc.strerror or exc}"
                          f"{' (disk full)' if exc.errno == errno.ENOSPC else ''}; "
                          f"{self.path.name} is kept valid and the run is marked incomplete")
            log.error("%s", self.error)
            self.record["files"]["record_error"] = self.error

    def emit(self, event: dict[str, Any], snapshot: bool | None = None) -> None:
        """Journal and apply an event.  ``snapshot`` True rewrites run.json now,
        None does so at test and run boundaries (throttled), False never."""
        event = clean(event)
        line = dumps(event)
        with self._lock:
            if self.closed:
                return
            if self._journal_ok:
                try:
                    self._journal.write(line + "\n")
                except OSError as exc:
                    # a torn line is skipped when the journal is read; nothing
                    # after it is written there (it would be glued to it)
                    self._journal_ok = False
                    self._failed(self.journal_path, exc)
            apply(self.record, event)
            self._dirty = True
            boundary = event.get("ev") in ("run.start", "test.start", "test.end", "hardware", "clock", "files")
            if snapshot or (snapshot is None and boundary
                            and time.monotonic() - self._last_snapshot >= self._gap()):
                self.snapshot()

    def _gap(self) -> float:
        """Seconds between two snapshots: the interval, or for a record so large
        (a lab run of many benches) that writing it is slow, long enough that
        the writing takes at most 1/SNAPSHOT_SHARE of a core."""
        slow = self._last_cost if self._last_cost > SLOW_SNAPSHOT else 0.0
        return max(self.snapshot_interval, slow * SNAPSHOT_SHARE)

    def snapshot(self, durable: bool = False, pretty: bool = False) -> bool:
        """Rewrite run.json; False (the old one kept) if it cannot be written.
        Compact while the run goes (the C encoder; an indented dump of a large
        record costs several times more), indented when the record is closed."""
        with self._lock:
            t0 = self._last_snapshot = time.monotonic()
            try:
                write_atomic(self.path, dumps(derive(self.record), indent=1 if pretty else None), durable=durable)
            except OSError as exc:
                self._failed(self.path, exc)
                return False
            finally:
                self._last_cost = time.monotonic() - t0
            self._dirty = False
            return True

    def flush(self) -> None:
        """Write run.json now if events arrived since the last snapshot."""
        with self._lock:
            if self._dirty and not self.closed:
                self.snapshot()

    def close(self, status: str, exit_code: int | None, finished: dict[str, Any] | None = None,
              complete: bool = True) -> dict[str, Any]:
        """Close the record with the run's final status; ``complete`` False for
        a run that ended early (interrupted): closed cleanly, yet incomplete."""
        with self._lock:
            if self.closed:
                return self.record
            self.emit({"ev": "run.end", "status": status, "exit_code": exit_code, "finished": finished,
                       "complete": complete and self.error is None}, snapshot=False)
            if self.error is not None:
                self.record["complete"] = False   # evidence was lost on the way: never a complete run
            self.snapshot(durable=True, pretty=True)
            try:
                self._journal.close()
            except OSError as exc:
                self._failed(self.journal_path, exc)
            self.closed = True
            return derive(self.record)


# ----------------------------------------------------------------------------- reading
def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The record of a run folder, complete or not.

    An incomplete run (killed, or still going) is refolded from its journal,
    which is never behind ``run.json``; ``recovered`` says so."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordError(f"{run_dir}: no such run folder")
    path, journal = run_dir / RECORD_FILE, run_dir / JOURNAL_FILE
    rec: dict[str, Any] | None = None
    if path.exists():
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not journal.exists():
                raise RecordError(f"{path}: not valid JSON ({exc}) and no journal to rebuild it from") from None
    if rec is not None and rec.get("complete"):
        return rec
    if journal.exists():
        rec = fold(read_journal(journal), run_dir.name)
        rec["recovered"] = True
        if rec.get("started") is None and not rec["tests"]:
            raise RecordError(f"{journal}: the journal holds no run")
        return rec
    if rec is None:
        raise RecordError(f"{run_dir}: no {RECORD_FILE} and no {JOURNAL_FILE}: not a run folder")
    return rec
