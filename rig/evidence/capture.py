"""The bus traffic capture: every message on ``rig/v1/#`` during a run.

Written as JSON lines to ``bus.jsonl`` in the run folder, one message a
line, flushed as it arrives (a killed run keeps what it saw)::

    {"topic": "rig/v1/bench-1/relay/mains/state", "ts": 1763890210.5,
     "wall": 1763890203.1, "payload": {"state": "off", ...}}

``ts`` is lab time and ``wall`` wall time, both taken when the capture
received the message (the payload's own ``ts`` is the sender's lab time).
Retained messages arrive first, so the capture also knows the latest state
of every part: :meth:`BusCapture.latest` is what the run record reads the
instruments' ``*IDN?`` identities and the devices' versions from.

::

    cap = BusCapture(endpoint, run_dir / "bus.jsonl").start()
    ...
    cap.stop()
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..broker import Endpoint
from ..bus import Bus
from ..clock import LabClock
from ..contract import ROOT

#: everything under the contract's root that the capture's user may read: as
#: the orchestrator, every node topic and the lab clock, but not other clients'
#: replies (the broker's ACL); no secret is on the bus to capture
CAPTURE_FILTER = f"{ROOT}/#"


class BusCapture:
    """Subscribe to the whole lab and write what passes to a JSONL file."""

    def __init__(self, endpoint: Endpoint, path: Path, clock: LabClock | None = None,
                 topic_filter: str = CAPTURE_FILTER):
        self.endpoint, self.path, self.filter = endpoint, Path(path), topic_filter
        self.clock = clock or LabClock()
        self.bus = Bus(endpoint, client_id=f"capture-{uuid.uuid4().hex[:8]}", clock=self.clock)
        self.count = 0
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._marker = f"{ROOT}/_capture/{self.bus.client_id}/drained"
        self._drained = threading.Event()
        self._file: TextIO | None = None
        self._listeners: list[Callable[[str, Any], None]] = []

    def start(self, adopt_clock_within: float | None = 0.5) -> "BusCapture":
        """Connect, adopt the lab's clock anchor if one is retained (None: keep
        the clock given), start writing."""
        from ..lab import adopt_clock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self.bus.connect()
        anchor = adopt_clock(self.bus, wait=adopt_clock_within) if adopt_clock_within is not None else None
        if anchor is not None:
            self.clock = self.bus.clock = LabClock(anchor=anchor)
        self.clock_source = "bus" if anchor is not None else "local"
        self.bus.subscribe(self.filter, self._on_message)
        return self

    def on_message(self, listener: Callable[[str, Any], None]) -> None:
        """Also call ``listener(topic, payload)`` for every captured message."""
        self._listeners.append(listener)

    def _on_message(self, topic: str, payload: Any) -> None:
        if topic == self._marker:
            self._drained.set()
            return
        line = json.dumps({"topic": topic, "ts": self.clock.now(), "wall": self.clock.wall(), "payload": payload},
                          separators=(",", ":"), default=str)
        with self._lock:
            if self._file is None:
                return
            self._file.write(line + "\n")
            self.count += 1
            if payload is None:
                self._latest.pop(topic, None)
            else:
                self._latest[topic] = payload
            self._cond.notify_all()
        for listener in self._listeners:
            listener(topic, payload)

    def latest(self, topic_filter: str | None = None) -> dict[str, Any]:
        """The latest payload of every topic seen (matching ``topic_filter``)."""
        import paho.mqtt.client as mqtt

        with self._lock:
            if topic_filter is None:
                return dict(self._latest)
            return {t: p for t, p in self._latest.items() if mqtt.topic_matches_sub(topic_filter, t)}

    def wait_for(self, predicate: Callable[[dict[str, Any]], object], timeout: float) -> object:
        """Wait (lab seconds) until ``predicate(latest)`` holds for the latest
        payloads by topic, e.g. until every instrument has reported its identity."""
        return self.clock.wait_for(lambda: predicate(self._latest), timeout, condition=self._cond)

    def drain(self, wall_timeout: float = 2.0) -> bool:
        """Wait until every message the broker had for the capture when this
        was called has been written (a marker published through the broker
        comes back after them)."""
        if not self.bus.connected:
            return False
        self._drained.clear()
        self.bus.publish(self._marker, {"drain": True})
        return self._drained.wait(wall_timeout)

    def stop(self) -> None:
        """Write what is still in flight, then disconnect and close the file."""
        self.drain()
        self.bus.close()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "BusCapture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_capture(path: Path, topic_filter: str | None = None) -> Iterator[dict[str, Any]]:
    """Every whole line of a capture file (a torn last line is skipped),
    optionally only topics matching an MQTT filter."""
    import paho.mqtt.client as mqtt

    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if topic_filter is None or mqtt.topic_matches_sub(topic_filter, msg.get("topic", "")):
                yield msg

