"""The twin base: what every simulated device is to the simulated world.

A twin has its own bus connection with presence and Last Will (as a real
device's adapter has), a HAN radio on the bench's simulated medium, a lock,
its retained ``state`` and an alert outbox that retries over the HAN until
the hub acknowledges.  The kinds (rig/sim/esme.py, ppmid.py, ...) override
``serve``, ``on_frame``, ``state`` and ``started``; their fault profiles
(rig/faults.py) are read once into a :class:`FaultFlags` dataclass.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ..alerts import ALERT_NAMES
from ..bus import Bus
from ..contract import Node
from ..protocol import zcl
from .bench import SimBench
from .han import HanFrame, HanRadio
from .simulated_han import SimulatedHan, refresh_period

log = logging.getLogger(__name__)

#: lab seconds between retries of an alert that did not reach the hub
ALERT_RETRY = 10.0
#: an alert older than this (lab seconds) is given up
ALERT_MAX_AGE = 3600.0


class FaultFlags:
    """Base of a twin's fault profiles as one frozen dataclass of flags, read
    once from lab.yaml (``Quirks.of(cfg.faults)``): the logic tests a named
    field, never a string."""

    @classmethod
    def of(cls, faults: "set[str] | list[str]"):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{f: True for f in faults if f in names})


class Twin:
    """What every simulated device has: a bus connection with presence, a
    HAN radio, a lock, retained state and an alert outbox."""

    kind = "device"
    #: lab seconds between polls of the parent (None: a sleepy device)
    poll_period: float | None = 7.5

    def __init__(self, world: SimBench, han: SimulatedHan, name: str, cfg: Any):
        self.world, self.han, self.name, self.cfg = world, han, name, cfg
        self.clock = world.clock
        self.loop = han.loop
        self.bench = world.bench_name
        self.node = Node(world.bench_name, "device", name)
        self.faults: set[str] = set(cfg.faults)
        self.lock = threading.RLock()
        self.bus = Bus(world.endpoint, client_id=f"dev-{world.bench_name}-{name}-{uuid.uuid4().hex[:6]}",
                       clock=world.clock, presence=self.node, presence_info={"kind": cfg.kind})
        self.radio = HanRadio(name, cfg.id, cfg.han.band, han.loop, world.clock,
                              coordinator=self.kind == "comms_hub", poll_period=self.poll_period,
                              powered=self.radio_powered)
        self.radio.on_frame = self._on_frame_locked
        self.radio.on_link_change = lambda _ls: self.publish()
        han.medium.attach(self.radio)
        self._outbox_seq = 0
        self._timers: list = []
        self._stopped = False
        self._jobs: queue.Queue = queue.Queue()
        self._queued: set = set()
        self._worker = threading.Thread(target=self._work, name=f"twin:{world.bench_name}/{name}", daemon=True)

    # -- to override ------------------------------------------------------------
    def radio_powered(self) -> bool:
        return True

    def serve(self) -> None:
        """Register bus ops (``self.bus.serve(self.node, op, handler, Args)``)."""

    def on_frame(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        """A HAN frame for this device, its ZCL parsed (on the HAN loop, under the lock)."""

    def state(self) -> dict[str, Any]:
        return {}

    def started(self) -> None:
        """Called once the bus and radio are up."""

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> "Twin":
        self._worker.start()
        if not self.cfg.sealed:
            # a sealed twin (backend: sealed) never connects: no operation, state,
            # event or presence of its own on the bus, as a real meter on a bench
            self.bus.connect()
            self.serve()
            self.bus.serve(self.node, "status", lambda _a, _c: self.full_state())
        self.radio.start()
        self._timers.append(self.loop.call_every(refresh_period(self.clock), self.publish,
                                                 first=refresh_period(self.clock)))
        self.started()
        self.publish()
        return self

    def stop(self) -> None:
        self._stopped = True
        for h in self._timers:
            h.cancel()
        self._jobs.put(None)
        self.radio.stop()
        self.bus.close()

    def background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the device's own worker thread: for work that waits
        on the HAN (a read and its answer), which the HAN loop must not do.
        A job still queued when the next one of the same function comes is
        not run twice."""
        if fn not in self._queued:
            self._queued.add(fn)
            self._jobs.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._jobs.get()
            if fn is None:
                return
            self._queued.discard(fn)
            try:
                fn()
            except Exception:  # noqa: BLE001 - the device keeps running
                log.exception("%s: background job failed", self.name)

    def every(self, period: float, fn: Callable[[], None], first: float | None = None) -> None:
        self._timers.append(self.loop.call_every(period, fn, first=first))

    # -- state and events -------------------------------------------------------
    def full_state(self) -> dict[str, Any]:
        with self.lock:
            body = self.state()
        return {"kind": self.cfg.kind, "eui64": self.cfg.id, "firmware": self.cfg.firmware or f"sim-{self.kind}-1.0",
                "backend": "sim", "faults": sorted(self.faults), "han": self.radio.han_report(), **body}

    def publish(self) -> None:
        if self._stopped or not self.bus.connected:
            return
        try:
            self.bus.publish_state(self.node, self.full_state())
        except Exception:  # noqa: BLE001 - publishing must never break the device
            log.exception("%s: state not published", self.name)

    def event(self, channel: str, /, **data: Any) -> None:
        if self.bus.connected:
            self.bus.publish_event(self.node, channel, data)

    def _on_frame_locked(self, frame: HanFrame) -> None:
        try:
            parsed = zcl.parse(zcl.cluster_by_id(frame.cluster_id), frame.zcl)
        except ValueError as exc:
            log.info("%s: ignored a frame from %s: %s", self.name, frame.src, exc)
            return
        with self.lock:
            self.on_frame(frame, parsed)

    # -- alerts to the head end -------------------------------------------------
    def raise_alert(self, code: int, last_gasp: bool = False, retry: bool = True, **data: Any) -> dict[str, Any]:
        """Raise a GBCS alert: published on ``event/alert`` at once and sent
        over the HAN to the hub (and on to the head end), retried until it is
        acknowledged or an hour old (``retry`` False: sent once, as a faulty
        meter does).  A ``last_gasp`` is sent once, at once, on the energy a
        device has left after losing power."""
        self._outbox_seq += 1
        raised = self.clock.now()
        record = {"code": f"0x{code:04X}", "name": ALERT_NAMES.get(code, ""), "device": self.name,
                  "raised": raised, "seq": self._outbox_seq, **data}
        self.event("alert", **record)
        payload = zcl.DeviceAlert(kind=zcl.TunnelKind.alert, alert_code=code, raised=zcl.to_utc(raised),
                                  source=zcl.eui64(self.cfg.id),
                                  data=zcl.encode_details({"seq": self._outbox_seq, "raised": raised, **data}))
        self._send_alert(payload.serialize(), raised, last_gasp, retry)
        return record

    def _send_alert(self, data: bytes, raised: float, last_gasp: bool = False, retry: bool = True) -> None:
        parent = self.radio.parent()
        if parent is None:
            return

        def done(acked: bool) -> None:
            if acked or self._stopped or last_gasp or not retry:
                return
            if self.clock.now() - raised < ALERT_MAX_AGE:
                self.loop.call_later(ALERT_RETRY, self._send_alert, data, raised)

        frame = zcl.command(zcl.Tunneling, "transfer_data", tsn=self.radio.next_tsn(), tunnel_id=0, data=data)
        self.radio.send(parent, zcl.Tunneling.cluster_id, frame, done=done, force=last_gasp)


def reject(radio: HanRadio, frame: HanFrame, parsed: zcl.Zcl, status: zcl.Status = zcl.Status.NOT_AUTHORIZED) -> None:
    """Answer a frame the device will not act on, as ZCL does."""
    if parsed.general and parsed.name == "Write_Attributes":
        ids = list(parsed.written())
        radio.reply(frame, zcl.write_attributes_response(status, ids, tsn=parsed.tsn))
    else:
        radio.reply(frame, zcl.default_response(parsed.command_id, status, tsn=parsed.tsn,
                                                to_client=not parsed.to_client))
