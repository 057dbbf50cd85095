"""The lab clock: one time base for every wait, timeout and timestamp.

On hardware the lab clock is wall time (``scale: 1``).  In the simulated lab it
may run faster: at ``scale: 60`` one wall second is one lab minute, so the
3-minute outage alert period of OUT-2 passes in 3 wall seconds while the tests
keep the requirement's own value (180 s).

Every process of a lab shares one *anchor* (the wall instant at which lab time
and wall time were equal, plus the scale), so timestamps taken by the agent,
the simulated meters and the orchestrator are comparable.  The anchor travels
on the bus (retained on ``rig/v1/_lab/clock``) and to child processes in the
``RIG_CLOCK`` environment variable.

Lab time is expressed in seconds since the Unix epoch, like ``time.time()``,
so it reads as a date in reports.

Example::

    clock = LabClock(scale=60)
    t0 = clock.now()
    clock.sleep(180)              # returns after ~3 wall seconds
    assert clock.now() - t0 >= 180
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

T = TypeVar("T")

ENV_VAR = "RIG_CLOCK"
#: wall seconds between two progress ticks of a long wait (see LabClock.add_tick)
TICK = 1.0


@dataclass(frozen=True)
class ClockAnchor:
    """Wall instant at which lab time equalled wall time, and the scale after it."""

    wall: float
    scale: float

    def encode(self) -> str:
        return f"{self.wall!r}:{self.scale!r}"

    @classmethod
    def decode(cls, text: str) -> "ClockAnchor":
        wall, scale = text.split(":")
        return cls(float(wall), float(scale))


class LabClock:
    """Scaled time shared by a whole lab.

    ``now()`` is lab time in seconds; ``sleep``/``wait`` take lab seconds and
    block for ``seconds / scale`` wall seconds.  A scale of 1 is wall time.
    """

    def __init__(self, scale: float = 1.0, anchor: ClockAnchor | None = None):
        if anchor is None:
            if scale <= 0:
                raise ValueError(f"clock scale must be > 0, got {scale}")
            anchor = ClockAnchor(wall=time.time(), scale=float(scale))
        self.anchor = anchor
        # perf_counter is monotonic; pin it to the anchor once so that lab time
        # never goes backwards if the wall clock is stepped by NTP.
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._ticks: list[Callable[[], None]] = []

    # -- progress ticks -----------------------------------------------------------
    def add_tick(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the waiting thread at least every :data:`TICK` wall
        seconds while it waits or sleeps on this clock (a leased bench counts
        its holder's waits as progress: rig/lab.py)."""
        self._ticks.append(fn)

    def remove_tick(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._ticks.remove(fn)

    def _tick(self) -> None:
        for fn in list(self._ticks):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a tick must never break a wait
                pass

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_env(cls, default_scale: float = 1.0) -> "LabClock":
        """The clock a parent process handed down in ``RIG_CLOCK``, else a new one."""
        text = os.environ.get(ENV_VAR)
        if text:
            return cls(anchor=ClockAnchor.decode(text))
        return cls(scale=default_scale)

    def env(self) -> dict[str, str]:
        """Environment entries that give a child process this same clock."""
        return {ENV_VAR: self.anchor.encode()}

    # -- reading ----------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self.anchor.scale

    def wall(self) -> float:
        """Wall time (seconds since the epoch), monotonic within this process."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def now(self) -> float:
        """Lab time in seconds since the epoch."""
        return self.to_lab(self.wall())

    def to_lab(self, wall: float) -> float:
        return self.anchor.wall + (wall - self.anchor.wall) * self.anchor.scale

    def to_wall(self, lab: float) -> float:
        return self.anchor.wall + (lab - self.anchor.wall) / self.anchor.scale

    def wall_seconds(self, lab_seconds: float) -> float:
        """How many wall seconds a lab duration takes."""
        return max(0.0, lab_seconds) / self.anchor.scale

    def lab_seconds(self, wall_seconds: float) -> float:
        return wall_seconds * self.anchor.scale

    @staticmethod
    def iso(lab_time: float) -> str:
        return datetime.fromtimestamp(lab_time, timezone.utc).isoformat(timespec="milliseconds")

    # -- waiting ----------------------------------------------------------------
    def sleep(self, lab_seconds: float) -> None:
        """Let ``lab_seconds`` of lab time pass.  For simulated processes that
        model a duration (a meter's alert period), never for "waiting for
        things" in tests: use :meth:`wait_for` on an event instead."""
        end = time.monotonic() + self.wall_seconds(lab_seconds)
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if self._ticks:
                self._tick()
                remaining = min(remaining, TICK)
            time.sleep(remaining)

    def wait_event(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait on a threading event for at most ``timeout`` lab seconds."""
        if not self._ticks:
            return event.wait(None if timeout is None else self.wall_seconds(timeout))
        end = None if timeout is None else time.monotonic() + self.wall_seconds(timeout)
        while True:
            self._tick()
            step = TICK if end is None else min(TICK, end - time.monotonic())
            if step <= 0:
                return event.is_set()
            if event.wait(step):
                return True

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float,
        condition: threading.Condition | None = None,
        poll: float | None = None,
    ) -> T:
        """Wait until ``predicate()`` is truthy, for at most ``timeout`` lab seconds.

        With a ``condition`` the wait wakes on ``notify``; the predicate is
        called with the condition held.  Returns the predicate's last value
        (falsy on timeout).
        """
        deadline = time.monotonic() + self.wall_seconds(timeout)
        step = 0.005 if poll is None else self.wall_seconds(poll)
        next_tick = 0.0
        with condition if condition is not None else contextlib.nullcontext():
            while True:
                value = predicate()
                if value:
                    return value
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    return value
                if self._ticks:
                    if now >= next_tick:
                        self._tick()
                        next_tick = now + TICK
                    remaining = min(remaining, TICK)
                if condition is not None:
                    condition.wait(remaining)
                else:
                    time.sleep(min(step, remaining))

    def deadline(self, lab_seconds: float) -> float:
        """The lab time ``lab_seconds`` from now."""
        return self.now() + lab_seconds

    def __repr__(self) -> str:
        return f"LabClock(scale={self.scale:g})"


class Timer:
    """Run ``action`` after ``lab_seconds`` of lab time unless cancelled.

    Used by simulated devices for durations they model (a meter's 180 s
    outage alert period, a PPMID button hold).
    """

    def __init__(self, clock: LabClock, lab_seconds: float, action: Callable[[], None], name: str = "lab-timer"):
        self._timer = threading.Timer(clock.wall_seconds(lab_seconds), action)
        self._timer.name = name
        self._timer.daemon = True

    def start(self) -> "Timer":
        self._timer.start()
        return self

    def cancel(self) -> None:
        self._timer.cancel()

    @property
    def active(self) -> bool:
        return self._timer.is_alive()
