"""One run's recorder: the record, the bus capture, the log and the store,
fed test by test.

The pytest plugin (``fixtures/evidence.py``) drives it; anything else that
runs checks (a self-test runner, a rig script) can too::

    rec = RunRecorder(run_dir, lab_path="lab.yaml", store_url="sqlite:///runs/history.sqlite").start()
    rec.attach_bus(endpoint)                      # capture + identities + lab clock
    rec.test_started({"nodeid": "check_a", "requirements": ["SUP-2"]})
    ev = rec.evidence_for("check_a")              # TestEvidence: measure/step/selftest
    ev.measure("safety.enable_latency", 1.2, "s", high=5, requirement="SUP-2")
    rec.test_finished({"nodeid": "check_a", "verdict": "passed", **ev.entries()})
    rec.finish(status="passed", exit_code=0)
    seal_run(run_dir)                             # report, manifest, store (rig.evidence.seal)

A lab that departs from a requirement value declares it, and the report and
the safety pack show it in red::

    rec.set_deviations([{"key": "outage_alert_period", "requirement": "OUT-2", "reference": 180.0,
                         "value": 170.0, "units": "s", "reason": "meter firmware 1.2 fixed at 170 s"}])
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import ENV_VAR, LabClock
from . import CAPTURE_FILE, JOURNAL_FILE, JUNIT_FILE, LAB_FILE, LOG_DIR, RECORD_FILE
from .inventory import configured_hardware, from_bus, lab_section, software, suites_section
from .measurement import TestEvidence
from .record import RecordWriter, clean
from .store import redact

if TYPE_CHECKING:  # pragma: no cover
    from ..config import LabConfig
    from .capture import BusCapture
    from .store import ResultsStore

log = logging.getLogger(__name__)

#: the fields of a deviation (``set_deviations``): required, then optional
DEVIATION_REQUIRED = ("key", "reference", "value")
DEVIATION_OPTIONAL = ("requirement", "units", "reason")

#: pytest exit codes -> run status
STATUS = {0: "passed", 1: "failed", 2: "interrupted", 3: "internal_error", 4: "usage_error", 5: "no_tests"}
#: exit code of a run whose checks passed but a bench did not run or was cut short (status ``partial``)
PARTIAL_EXIT = 6
STATUS[PARTIAL_EXIT] = "partial"


class _RunLog(logging.FileHandler):
    """The run's log file.  A write that fails (a full disk) stops it
    quietly: the record already says what was lost, once, and a traceback
    per log line would bury that."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True


def stamp(clock: LabClock) -> dict[str, float]:
    return {"lab": clock.now(), "wall": clock.wall()}


class RunRecorder:
    def __init__(self, run_dir: str | Path, lab_path: str | Path | None = None, bench: str | None = None,
                 store_url: str | None = None, argv: list[str] | None = None, clock: LabClock | None = None,
                 junit: str | Path | None = JUNIT_FILE, benches: list[str] | None = None,
                 not_run: dict[str, str] | None = None):
        """``benches``: the benches this run goes to (default: ``bench``, else
        the lab's first); ``not_run``: {bench: why it could not run}."""
        self.run_dir = Path(run_dir)
        self.lab_path = Path(lab_path) if lab_path else None
        self.bench = bench
        self.benches = list(benches) if benches else ([bench] if bench else None)
        self.not_run = dict(not_run or {})
        self.store_url = store_url
        self.argv = list(argv if argv is not None else sys.argv)
        self.junit = junit
        if clock is not None:
            self.clock, self.clock_source = clock, "given"
        elif os.environ.get(ENV_VAR):
            self.clock, self.clock_source = LabClock.from_env(), "env"
        else:
            self.clock, self.clock_source = LabClock(scale=1.0), "wall"
        self.cfg: LabConfig | None = None
        self.writer: RecordWriter | None = None
        self.capture: BusCapture | None = None
        self.store: ResultsStore | None = None
        self.store_error: str | None = None
        self._log_handler: logging.Handler | None = None
        self._lock = threading.Lock()

    @property
    def _writer(self) -> RecordWriter:
        """The record writer of a started recorder."""
        if self.writer is None:
            raise RuntimeError(f"the recorder of {self.run_dir} is not started")
        return self.writer

    # ------------------------------------------------------------------ start
    def start(self) -> "RunRecorder":
        from ..config import ConfigError, load_lab
        from .record import RecordError

        if (self.run_dir / RECORD_FILE).exists() or (self.run_dir / JOURNAL_FILE).exists():
            raise RecordError(f"{self.run_dir}: already holds a run record; every run needs a new run folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        error = None
        if self.lab_path is not None:
            try:
                self.cfg = load_lab(self.lab_path)
            except ConfigError as exc:
                error = str(exc)
            except OSError as exc:
                error = f"{self.lab_path}: {exc.strerror or exc}"
            if self.lab_path.is_file():
                shutil.copyfile(self.lab_path, self.run_dir / LAB_FILE)
        if self.benches is None:
            self.benches = [self.bench] if self.bench else ([next(iter(self.cfg.benches))] if self.cfg else [])
        self.bench = ", ".join(self.benches) if self.benches else None
        if self.store_url is None:
            self.store_url = (self.cfg.lab.results.store if self.cfg is not None
                              else f"sqlite:///{(self.run_dir.parent / 'history.sqlite').resolve()}")
        self._start_log()
        self.writer = RecordWriter(self.run_dir)
        hardware: dict[str, Any] = (configured_hardware(self.cfg, self.benches) if self.cfg is not None
                    else {"instruments": {}, "devices": {}})
        run = {
            "id": self.run_dir.name, "started": stamp(self.clock), "host": socket.gethostname(), "pid": os.getpid(),
            "argv": self.argv, "cwd": os.getcwd(), "lab": lab_section(self.lab_path, self.cfg, error),
            "bench": self.bench, "benches": self._bench_sections(), "clock": self._clock_info(),
            "software": software(), "hardware": hardware,
            "store_url": redact(self.store_url),
            "files": {"journal": JOURNAL_FILE, "junit": self._junit_path(), "lab": LAB_FILE if self.lab_path else None,
                      "logs": LOG_DIR, "bus_capture": None},
        }
        run["suites"] = suites_section()  # the self-test of these suites vouches for this run's checks
        self._writer.emit({"ev": "run.start", "run": run}, snapshot=True)
        self._open_store()
        return self

    def _bench_sections(self) -> dict[str, dict[str, Any]]:
        """One section per bench of the run: its devices under test and, for a
        bench that could not run, why (``status`` is derived as tests end)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.benches or []:
            b = self.cfg.benches.get(name) if self.cfg is not None else None
            out[name] = {
                "description": b.description if b is not None else "",
                "devices": {d: {"kind": dev.kind, "id": dev.id} for d, dev in b.devices.items()} if b else {},
                "not_run": self.not_run.get(name),
            }
        return out

    def benches_cut_short(self) -> list[str]:
        """Benches that did not run or whose checks were cut short."""
        if self.writer is None:
            return []
        from .record import derive

        sections = derive(self._writer.record).get("benches") or {}
        # a bench no check of this session needed (none uses a bench) cuts nothing short
        return [b for b, sec in sections.items()
                if sec.get("status") in ("not_run", "incomplete") and (sec.get("summary") or {}).get("total")]

    def _junit_path(self) -> str | None:
        """The JUnit file, relative to the run folder when it is inside it."""
        if self.junit is None:
            return None
        path = Path(self.junit)
        if not path.is_absolute():
            return path.as_posix()
        try:
            return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _clock_info(self) -> dict[str, Any]:
        return {"scale": self.clock.scale, "anchor_wall": self.clock.anchor.wall, "source": self.clock_source,
                "configured_scale": self.cfg.lab.clock.scale if self.cfg is not None else None}

    def _start_log(self) -> None:
        logs = self.run_dir / LOG_DIR
        logs.mkdir(exist_ok=True)
        handler = _RunLog(logs / "run.log", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        rig_logger = logging.getLogger("rig")
        if rig_logger.level == logging.NOTSET:
            rig_logger.setLevel(logging.INFO)
        self._log_handler = handler

    def _open_store(self) -> None:
        from .store import ResultsStore, StoreError

        try:
            assert self.store_url is not None       # start() settled it
            store = self.store = ResultsStore.open(self.store_url)
            store.begin_run(self._writer.record, self.run_dir.resolve())
        except StoreError as exc:
            # the run goes on; `rig history` imports the folder later
            self.store, self.store_error = None, str(exc)
            log.warning("results store unavailable, the run folder still has everything: %s", exc)

    # ------------------------------------------------------------------ declarations
    def set_deviations(self, deviations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Declare the lab's deviations from the requirement values (replacing
        any declared before): a list of ``{"key", "reference", "value"}`` and
        optionally ``"requirement"``, ``"units"``, ``"reason"``, e.g.
        ``{"key": "outage_alert_period", "requirement": "OUT-2", "reference":
        180.0, "value": 170.0, "units": "s", "reason": "..."}``.  Kept as the
        record's top-level ``deviations``; the report and the safety pack show
        them in red.  Bad input raises ValueError naming the entry and field."""
        if not isinstance(deviations, (list, tuple)):
            raise ValueError(f"deviations: expected a list of dicts, got {type(deviations).__name__}")
        clean_list = []
        for i, d in enumerate(deviations):
            if not isinstance(d, dict):
                raise ValueError(f"deviations[{i}]: expected a dict with {', '.join(DEVIATION_REQUIRED)}, "
                                 f"got {type(d).__name__}")
            missing = [k for k in DEVIATION_REQUIRED if d.get(k) is None]
            if missing:
                raise ValueError(f"deviations[{i}] ({d.get('key', 'no key')}): missing {', '.join(missing)}; "
                                 f"a deviation needs {', '.join(DEVIATION_REQUIRED)} "
                                 f"(and may give {', '.join(DEVIATION_OPTIONAL)})")
            clean_list.append({**{k: d.get(k) for k in DEVIATION_REQUIRED + DEVIATION_OPTIONAL}, **d})
        self._writer.emit({"ev": "deviations", "deviations": clean_list}, snapshot=True)
        return clean_list

    def set_selftest(self, info: dict[str, Any]) -> None:
        """For ``rig selftest``: what the self-test ran (faults, trials,
        partial, coverage, labs), merged into the record's ``selftest_run``;
        the record's ``kind`` becomes ``"selftest"``."""
        self._writer.emit({"ev": "selftest.run", "selftest_run": dict(info)}, snapshot=True)

    # ------------------------------------------------------------------ the bus
    def attach_bus(self, endpoint) -> None:
        """Capture every message of the lab into ``bus.jsonl``, adopt the lab's
        clock and keep instrument identities and device versions up to date."""
        from .capture import BusCapture

        if self.capture is not None:
            return
        try:
            capture = self.capture = BusCapture(endpoint, self.run_dir / CAPTURE_FILE, self.clock).start()
        except Exception as exc:  # noqa: BLE001 - a run without a capture still has a record
            log.warning("bus capture not started: %s", exc)
            self._writer.emit({"ev": "files", "files": {"bus_capture_error": str(exc)}})
            self.capture = None
            return
        if capture.clock_source == "bus":
            self.clock, self.clock_source = capture.clock, "bus"
        self._writer.emit({"ev": "clock", "clock": self._clock_info()})
        self._writer.emit({"ev": "files", "files": {"bus_capture": CAPTURE_FILE}})
        capture.on_message(self._on_bus)
        for topic, payload in capture.latest().items():
            self._on_bus(topic, payload)

    def _on_bus(self, topic: str, payload: Any) -> None:
        facts = from_bus(topic, payload)
        if not facts or self.writer is None:
            return
        hw = self._writer.record["hardware"]
        new = any(hw.get(section, {}).get(name, {}).get(k) != v
                  for section, parts in facts.items() for name, info in parts.items() for k, v in info.items())
        if new:
            self._writer.emit({"ev": "hardware", **facts})

    # ------------------------------------------------------------------ tests
    def test_started(self, info: dict[str, Any]) -> None:
        info = {"started": stamp(self.clock), **info}
        self._writer.emit({"ev": "test.start", "test": info})

    def listener(self, kind: str, payload: dict[str, Any]) -> None:
        """For :class:`TestEvidence`: journal a step/measurement as it is made."""
        if self.writer is not None:
            self._writer.emit({"ev": kind, **payload}, snapshot=False)

    def evidence_for(self, nodeid: str) -> TestEvidence:
        return TestEvidence(nodeid, self.clock, self.listener)

    def test_finished(self, test: dict[str, Any]) -> None:
        """The test's final entry (verdict, failure, steps, measurements ...)."""
        tests = self._writer.record["tests"]
        current: dict[str, Any] = next((t for t in tests if t["nodeid"] == test["nodeid"]), {})
        finished = test.get("finished") or stamp(self.clock)
        started = test.get("started") or current.get("started") or finished
        duration = test.get("duration") or {"wall": finished["wall"] - started["wall"],
                                             "lab": finished["lab"] - started["lab"]}
        final = {**test, "started": started, "finished": finished, "duration": duration}
        self._writer.emit({"ev": "test.end", "test": final})
        if self.store is not None:
            from .store import StoreError

            entry = next(t for t in self._writer.record["tests"] if t["nodeid"] == test["nodeid"])
            try:
                self.store.add_test(self._writer.record, entry)
            except StoreError as exc:
                log.warning("%s", exc)

    # ------------------------------------------------------------------ end
    def finish(self, status: str, exit_code: int | None, complete: bool = True) -> dict[str, Any]:
        """Stop the capture, close the record.  The run folder is sealed
        (report, manifest, store) by :func:`rig.evidence.seal.seal_run`."""
        if self.capture is not None:
            self.capture.stop()
        if self.store_error:
            self._writer.emit({"ev": "files", "files": {"store_error": self.store_error}})
        rec = self._writer.close(status, exit_code, finished=stamp(self.clock), complete=complete)
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            try:
                self._log_handler.close()
            except OSError:   # a full disk: the record says so already
                pass
            self._log_handler = None
        if self.store is not None:
            self.store.close()
            self.store = None
        return clean(rec)
