"""The simulated devices of one bench, as ``rig sim`` serves them.

:func:`start_devices` is called by :class:`rig.sim.world.World` for a bench.
It starts the simulated HAN (:mod:`rig.sim.han`), the head end
(:mod:`rig.sim.dcc`) and one twin per device whose ``backend`` is ``sim``,
and an adapter (:mod:`rig.adapters`) for any other backend.  Each twin has
its own bus connection, with its own presence and Last Will, exactly as a
real device's adapter would: the orchestrator cannot tell them apart.

Every twin publishes a retained ``state`` with at least::

    {"kind": "esme", "eui64": "...", "summary": "...",
     "han": {"2.4GHz": {"rssi": -71.0, "lqi": 180, "per": 0.01, "up": true}}}

(the ESME adds ``supply``), ``event/<name>`` messages, and serves the
local actions a person at the bench could take (``cmd/press``,
``cmd/hold``, ...).  The whole contract is in docs/devices.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ..bus import Bus, CommandContext, Refused
from ..contract import Node
from . import zcl
from .han import EventLoop, HanFrame, HanMedium, HanRadio

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger(__name__)

#: lab seconds between retries of an alert that did not reach the hub
ALERT_RETRY = 10.0
#: an alert older than this (lab seconds) is given up
ALERT_MAX_AGE = 3600.0


def han_node(bench: str) -> Node:
    return Node(bench, "han", "medium")


def dcc_node(bench: str) -> Node:
    return Node(bench, "dcc", "headend")


# ----------------------------------------------------------------------------- the simulated HAN as a part
class SimulatedHan:
    """The medium, its event loop and its bus node (``rig/v1/<bench>/han/medium``).

    Ops: ``replay`` (``{"src": "ppmid", "dst": "esme"}``: re-send the last
    frame recorded between them, the replay attack of property 4) and
    ``links`` (the link budget of every joined pair)."""

    def __init__(self, world: "World"):
        self.world = world
        self.clock = world.clock
        self.loop = EventLoop(world.clock, name=f"han:{world.bench_name}")
        self.medium = HanMedium(world.lab.han, world.cfg, world.physics.attenuation, world.clock, self.loop)
        self.node = han_node(world.bench_name)
        self.bus = Bus(world.endpoint, client_id=f"han-{world.bench_name}-{uuid.uuid4().hex[:6]}", clock=world.clock,
                       presence=self.node, presence_info={"kind": "han"})
        self._refresh = None

    def start(self) -> "SimulatedHan":
        self.loop.start()
        self.bus.connect()
        self.bus.serve(self.node, "replay", self._replay, ReplayArgs)
        self.bus.serve(self.node, "links", lambda _a, _c: {"links": self.medium.links()})
        self._refresh = self.loop.call_every(refresh_period(self.clock), self.publish, first=0.0)
        return self

    def publish(self) -> None:
        if self.bus.connected:
            self.bus.publish_state(self.node, {
                "seed": self.world.lab.han.seed, "max_retries": self.world.lab.han.max_retries,
                "bands": {b: dict(s) for b, s in self.medium.stats.items()},
                "links": self.medium.links(),
            })

    def _replay(self, args: "ReplayArgs", _ctx: CommandContext) -> dict:
        frame = self.medium.replay(args.src, args.dst, args.cluster, args.command)
        if frame is None:
            what = f" (cluster {args.cluster}, command {args.command})" if args.cluster is not None else ""
            raise Refused(f"no frame from {args.src} to {args.dst}{what} has been recorded on the HAN yet")
        return {"replayed": True, "counter": frame.counter, "cluster": f"0x{frame.cluster_id:04X}",
                "created": frame.created}

    def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        self.loop.stop()
        self.bus.close()


class ReplayArgs(BaseModel):
    src: str
    dst: str
    cluster: int | None = Field(None, description="ZCL cluster id, e.g. 0x0705 (1797) for Prepayment")
    command: int | None = Field(None, description="cluster-specific command id, e.g. 1 for change_supply")


def refresh_period(clock) -> float:
    """Lab seconds between periodic state publications: every 5 lab s, but
    no more than once a wall second (the bus is wall-time I/O)."""
    return max(5.0, clock.lab_seconds(1.0))


# ----------------------------------------------------------------------------- twin base
class Twin:
    """What every simulated device has: a bus connection with presence, a
    HAN radio, a lock, retained state and an alert outbox."""

    kind = "device"
    #: lab seconds between polls of the parent (None: a sleepy device)
    poll_period: float | None = 7.5

    def __init__(self, world: "World", han: SimulatedHan, name: str, cfg: Any):
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
    def raise_alert(self, code: int, last_gasp: bool = False, **data: Any) -> dict[str, Any]:
        """Raise a GBCS alert: published on ``event/alert`` at once and sent
        over the HAN to the hub (and on to the head end), retried until it is
        acknowledged or an hour old.  A ``last_gasp`` is sent once, at once,
        on the energy a device has left after losing power."""
        self._outbox_seq += 1
        raised = self.clock.now()
        record = {"code": f"0x{code:04X}", "name": ALERT_NAMES.get(code, ""), "device": self.name,
                  "raised": raised, "seq": self._outbox_seq, **data}
        self.event("alert", **record)
        payload = zcl.DeviceAlert(kind=zcl.TunnelKind.alert, alert_code=code, raised=zcl.to_utc(raised),
                                  source=zcl.eui64(self.cfg.id),
                                  data=zcl.encode_details({"seq": self._outbox_seq, "raised": raised, **data}))
        self._send_alert(payload.serialize(), raised, last_gasp)
        return record

    def _send_alert(self, data: bytes, raised: float, last_gasp: bool = False) -> None:
        parent = self.radio.parent()
        if parent is None:
            return

        def done(acked: bool) -> None:
            if acked or self._stopped or last_gasp:
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


# ----------------------------------------------------------------------------- alert names
#: GBCS alert and event codes the twins raise, with their names (GBCS alert
#: table as carried by SmartDCCInnovation/gbcs-parser src/util.ts) and the
#: DCC alert the WAN side raises for a power outage (DUIS DCC alert AD1).
ALERT_NAMES: dict[int, str] = {
    0x8F01: "Active Power Import above Load Limit Threshold",
    0x8F0F: "Credit Below Disablement Threshold (prepayment mode)",
    0x8F1D: "GSME Power Supply Loss",
    0x8F1F: "Low Battery Capacity",
    0x8F30: "Source Does not have Authority for Command",
    0x8F32: "Supply Armed",
    0x8F33: "Supply Disabled then Armed - Load Limit triggered",
    0x8F34: "Supply Enabled after Load Limit Restoration Period (Load Limit triggered)",
    0x8F35: "Supply Outage Restored",
    0x8F36: "Supply Outage Restored - Outage >= 3 minutes",
    0x8F3D: "Trusted Source Authentication Failure",
    0x8F3E: "Unauthorised Communication Access attempted",
    0x8F51: "Duplicate UTRN entered",
    0x8F53: "Failed Authentication or Authorisation not covered by other codes",
    0x8F57: "Supply interrupted",
    0x8F63: "UTRN not Authentic",
    0x8F64: "UTRN not for this Device",
    0x810D: "Combined Credit Below Low Credit Threshold (prepayment mode)",
    0x810E: "Credit Added Locally",
    0x8119: "Emergency Credit Has Become Available (prepayment mode)",
    0x8154: "Immediate HAN Interface Command Received and Successfully Actioned",
    0x8155: "Immediate HAN Interface Command Received but not Successfully Actioned",
    0x8161: "User Interface Command Input and Successfully Actioned",
    0x8162: "User Interface Command Input but not Successfully Actioned",
    0x8168: "Supply Disabled then Armed - Activate Emergency Credit triggered",
    0x8183: "Device joined SMHAN",
    0x81AA: "Emergency Credit Exhausted",
    0x81AB: "Emergency Credit Activated",
    0x802C: "RMS Voltage below Voltage Sag Threshold",
    0x8099: "RMS Voltage below Voltage Sag Threshold (voltage returns above)",
    0x8024: "RMS Voltage above Voltage Swell Threshold",
    0x8091: "RMS Voltage above Voltage Swell Threshold (voltage returns below)",
}


# ----------------------------------------------------------------------------- start
def start_devices(world: "World") -> list[Any]:
    """Start the bench's simulated HAN, head end, twins and adapters; return
    the started parts (each has ``stop()``), in start order."""
    cfg = world.cfg
    if not cfg.devices:
        return []
    from .comms_hub import CommsHub
    from .dcc import HeadEnd
    from .esme import Esme
    from .gsme import Gsme
    from .ihd import Ihd
    from .ppmid import Ppmid

    classes: dict[str, type[Twin]] = {"esme": Esme, "gsme": Gsme, "comms_hub": CommsHub, "ppmid": Ppmid, "ihd": Ihd}
    parts: list[Any] = []
    try:
        han = SimulatedHan(world).start()
        parts.append(han)
        twins: dict[str, Twin] = {}
        order = sorted(cfg.devices.items(), key=lambda kv: kv[1].kind != "comms_hub")
        for name, dev in order:
            if dev.backend == "sim":
                twins[name] = classes[dev.kind](world, han, name, dev)
        headend = HeadEnd(world, han, twins)
        parts.append(headend.start())
        for name, dev in order:
            if dev.backend == "sim":
                parts.append(twins[name].start())
            else:
                from ..adapters import start_adapter

                parts.append(start_adapter(world, name, dev, medium=han))
    except BaseException:
        for part in reversed(parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping %r", part)
        raise
    log.info("%s: %d simulated devices on the HAN", world.bench_name, len([p for p in parts if isinstance(p, Twin)]))
    return parts
