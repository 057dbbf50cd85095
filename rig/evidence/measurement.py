"""Measurements with units and limits, and the steps of a test.

The test records values; the framework decides pass or fail (as in OpenHTF)::

    def test_long_outage(mains, esme, dcc, clock, measure, step):
        step("mains off")
        t0 = clock.now()
        mains.off()
        alert = dcc.wait_alert("AD1", timeout=240, since=t0)      # a dict: code, device, received, ...
        measure("outage.alert_latency", alert["received"] - t0, units="s",
                low=180, high=190, requirement="OUT-2")

A measurement outside its limits fails the test when the test body ends
(every measurement is still recorded, so a hundred-trial test shows all of
them).  ``measure(...)`` returns the :class:`Measurement`; ``assert
measure(...).passed`` stops the test at once instead.

Limits: ``low``/``high`` (inclusive, either may be omitted) for numbers,
``equals`` for anything (a code, a state, a boolean).  A measurement with no
limit is recorded with the outcome ``info``.  Extra keyword arguments are
attributes that the report's plots read (``band="2.4GHz",
attenuation_db=62``; see docs/evidence.md for the names).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import LabClock

#: keyword arguments of ``measure`` that are not attributes
RESERVED = ("name", "value", "units", "low", "high", "equals", "requirement")


class MeasurementOutOfLimits(AssertionError):
    """Raised by the framework after the test body when a measurement failed."""


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    try:  # numpy scalars and the like
        return _jsonable(value.item())
    except (AttributeError, ValueError):
        return str(value)


def _requirements(requirement: str | Sequence[str] | None) -> list[str]:
    if requirement is None:
        return []
    if isinstance(requirement, str):
        return [requirement]
    return [str(r) for r in requirement]


def judge(value: Any, low: float | None, high: float | None, equals: Any) -> tuple[str, str]:
    """(outcome, reason): outcome is ``pass``, ``fail`` or ``info`` (no limits)."""
    if low is None and high is None and equals is None:
        return "info", ""
    if equals is not None:
        if value == equals:
            return "pass", ""
        return "fail", f"expected {equals!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "fail", f"not a number: {value!r}"
    if not math.isfinite(value):
        return "fail", f"not a finite number: {value!r}"
    if low is not None and value < low:
        return "fail", f"below the low limit {low:g}"
    if high is not None and value > high:
        return "fail", f"above the high limit {high:g}"
    return "pass", ""


@dataclass
class Measurement:
    """One recorded value, its limits and the framework's outcome."""

    name: str
    value: Any
    units: str | None = None
    low: float | None = None
    high: float | None = None
    equals: Any = None
    requirements: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    outcome: str = "info"
    reason: str = ""
    lab: float | None = None
    wall: float | None = None

    @property
    def passed(self) -> bool:
        """True unless the value is outside its limits."""
        return self.outcome != "fail"

    def limits_text(self) -> str:
        """The limits as a person reads them: ``[180, 190] s``, ``= 'refused'``."""
        if self.equals is not None:
            return f"= {self.equals!r}"
        if self.low is None and self.high is None:
            return ""
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "+inf" if self.high is None else f"{self.high:g}"
        return f"[{lo}, {hi}]" + (f" {self.units}" if self.units else "")

    def describe(self) -> str:
        """``outcome.alert_latency = 195.2 s, above the high limit 190 [180, 190] s (OUT-2)``"""
        value = f"{self.value:g}" if isinstance(self.value, float) else repr(self.value)
        units = f" {self.units}" if self.units else ""
        req = f" ({', '.join(self.requirements)})" if self.requirements else ""
        why = f", {self.reason}" if self.reason else ""
        limits = f" {self.limits_text()}" if self.limits_text() else ""
        return f"{self.name} = {value}{units}{why}{limits}{req}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": _jsonable(self.value), "units": self.units,
            "low": self.low, "high": self.high, "equals": _jsonable(self.equals),
            "requirements": self.requirements, "attrs": _jsonable(self.attrs),
            "outcome": self.outcome, "reason": self.reason, "lab": self.lab, "wall": self.wall,
        }


def make_measurement(name: str, value: Any, units: str | None = None, *, low: float | None = None,
                     high: float | None = None, equals: Any = None,
                     requirement: str | Sequence[str] | None = None, clock: LabClock | None = None,
                     **attrs: Any) -> Measurement:
    """Build and judge a measurement; bad arguments raise ValueError naming it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a measurement needs a name, got {name!r}")
    for label, limit in (("low", low), ("high", high)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not math.isfinite(limit)):
            raise ValueError(f"measurement {name}: {label} limit must be a finite number, got {limit!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"measurement {name}: low limit {low:g} is above high limit {high:g}")
    if equals is not None and (low is not None or high is not None):
        raise ValueError(f"measurement {name}: give either equals or low/high limits, not both")
    outcome, reason = judge(value, low, high, equals)
    clock = clock or LabClock()
    return Measurement(name, value, units, low, high, equals, _requirements(requirement), dict(attrs),
                       outcome, reason, clock.now(), clock.wall())


@dataclass
class Step:
    """A named step of a test; a context manager records its end too::

        with step("mains off for 170 s"):
            mains.off(); bench.dwell(170); mains.on()
    """

    name: str
    attrs: dict[str, Any]
    lab: float
    wall: float
    end_lab: float | None = None
    end_wall: float | None = None
    _on_end: Callable[["Step"], None] | None = field(default=None, repr=False)

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    def end(self) -> None:
        if self.end_wall is None and self._on_end is not None:
            self._on_end(self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "attrs": _jsonable(self.attrs), "lab": self.lab, "wall": self.wall,
                "end_lab": self.end_lab, "end_wall": self.end_wall}


class TestEvidence:
    """What one test records: its steps, measurements and self-check results.

    The ``evidence`` fixture is one of these; ``measure`` and ``step`` are its
    methods.  ``listener(kind, payload)`` (set by the run record when one is
    being written in this process) sees every entry as it is made, so a run
    killed mid-test still has them in its journal.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, nodeid: str, clock: LabClock | None = None,
                 listener: Callable[[str, dict[str, Any]], None] | None = None):
        self.nodeid = nodeid
        self.clock = clock or LabClock()
        self.listener = listener
        self.steps: list[Step] = []
        self.measurements: list[Measurement] = []
        self.selftests: list[dict[str, Any]] = []
        self._raised = 0  # failed measurements already turned into a test failure
        self._lock = threading.Lock()

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self.listener is not None:
            self.listener(kind, {"nodeid": self.nodeid, **payload})

    # ------------------------------------------------------------------ the test's API
    def measure(self, name: str, value: Any, units: str | None = None, *, low: float | None = None,
                high: float | None = None, equals: Any = None, requirement: str | Sequence[str] | None = None,
                **attrs: Any) -> Measurement:
        """Record a value; the framework judges it against ``low``/``high``/``equals``."""
        m = make_measurement(name, value, units, low=low, high=high, equals=equals, requirement=requirement,
                             clock=self.clock, **attrs)
        with self._lock:
            self.measurements.append(m)
        self._emit("measurement", {"measurement": m.to_dict()})
        return m

    def step(self, name: str, **attrs: Any) -> Step:
        """Mark the start of a step; use as a context manager to mark its end."""
        s = Step(name, dict(attrs), self.clock.now(), self.clock.wall(), _on_end=self._step_ended)
        with self._lock:
            self.steps.append(s)
        self._emit("step", {"step": s.to_dict()})
        return s

    def _step_ended(self, s: Step) -> None:
        s.end_lab, s.end_wall = self.clock.now(), self.clock.wall()
        self._emit("step", {"step": s.to_dict()})

    def selftest(self, check: str, fault: str | None, verdict: str, expected: str, *,
                 device: str | None = None, requirement: str | Sequence[str] | None = None,
                 safety_property: int | None = None, detail: str = "") -> dict[str, Any]:
        """Record one self-check result (issue 5 item 6): ``check`` (a test id)
        run against ``fault`` (None: the healthy device) gave ``verdict``
        (``passed``/``failed``); ``expected`` is what it must give.  The
        safety pack shows these as the proof that each check can fail."""
        if verdict not in ("passed", "failed") or expected not in ("passed", "failed"):
            raise ValueError(f"self-check {check}: verdict and expected are 'passed' or 'failed', "
                             f"got {verdict!r}, {expected!r}")
        entry = {"check": check, "fault": fault, "device": device, "verdict": verdict, "expected": expected,
                 "ok": verdict == expected, "requirements": _requirements(requirement),
                 "property": safety_property, "detail": detail, "lab": self.clock.now(), "wall": self.clock.wall()}
        with self._lock:
            self.selftests.append(entry)
        self._emit("selftest", {"selftest": entry})
        return entry

    # ------------------------------------------------------------------ the framework's side
    @property
    def failed(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.passed]

    def unreported_failures(self) -> list[Measurement]:
        """Failed measurements not yet turned into a test failure (and mark them)."""
        with self._lock:
            failed = self.failed
            new = failed[self._raised:]
            self._raised = len(failed)
        return new

    def entries(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {"steps": [s.to_dict() for s in self.steps],
                    "measurements": [m.to_dict() for m in self.measurements],
                    "selftests": list(self.selftests)}
