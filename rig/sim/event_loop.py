"""The simulated bench's event loop: callbacks at lab times, on one thread.

The simulated HAN (:mod:`rig.sim.han`), the twins' timers and the WAN
provider's network all run on one :class:`EventLoop` per bench, in lab
time: ``loop.call_later(180, fn)`` runs ``fn`` after 180 lab seconds (3
wall seconds at clock scale 60).  Code called from the loop must not block.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..clock import LabClock

log = logging.getLogger(__name__)


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Callbacks at lab times, run one at a time on one thread.

    ``loop.call_later(180, fn)`` runs ``fn`` after 180 lab seconds (3 wall
    seconds at clock scale 60); ``call_every`` repeats.  A callback's
    exception is logged and the loop carries on."""

    def __init__(self, clock: LabClock, name: str = "han-loop"):
        self.clock = clock
        self._heap: list[tuple[float, int, Handle, Callable, tuple]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "EventLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    @property
    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call_at(self, lab_time: float, fn: Callable, *args: Any) -> Handle:
        h = Handle()
        with self._cond:
            heapq.heappush(self._heap, (lab_time, next(self._seq), h, fn, args))
            self._cond.notify_all()
        return h

    def call_later(self, lab_seconds: float, fn: Callable, *args: Any) -> Handle:
        return self.call_at(self.clock.now() + max(0.0, lab_seconds), fn, *args)

    def call_soon(self, fn: Callable, *args: Any) -> Handle:
        return self.call_at(float("-inf"), fn, *args)

    def call_every(self, period: float, fn: Callable, first: float | None = None) -> Handle:
        """Run ``fn()`` every ``period`` lab seconds (first after ``first``)."""
        handle = Handle()

        def tick() -> None:
            if handle.cancelled:
                return
            try:
                fn()
            finally:
                if not handle.cancelled:
                    inner = self.call_later(period, tick)
                    handle.inner = inner  # type: ignore[attr-defined]

        self.call_later(period if first is None else first, tick)
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        return
                    if self._heap:
                        due = self._heap[0][0]
                        wait = self.clock.wall_seconds(due - self.clock.now()) if due != float("-inf") else 0.0
                        if wait <= 0:
                            _, _, h, fn, args = heapq.heappop(self._heap)
                            break
                        self._cond.wait(min(wait, 0.5))
                    else:
                        self._cond.wait(0.5)
            if h.cancelled:
                continue
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one device's bug must not stop the HAN
                log.exception("HAN loop callback %r failed", fn)
