"""The simulated devices of one bench, as ``rig sim`` serves them.

:func:`start_devices` is called by :class:`rig.sim.world.World` for a bench.
It starts the simulated HAN (:mod:`rig.sim.han`), the head end
(:mod:`rig.sim.dcc`), one twin per device whose ``backend`` is ``sim`` or
``sealed``, an adapter (:mod:`rig.adapters`) for any other backend, and the
wiring of the bench's button actuators to the twins' buttons
(:mod:`rig.sim.buttons`).  Each ``sim`` twin has its own bus connection,
with its own presence and Last Will, exactly as a real device's adapter
would: the orchestrator cannot tell them apart.  A ``sealed`` twin has
none: it is reached only through its buttons, its optical port, the HAN
and the head end, as a real device on a bench without an adapter.

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
from dataclasses import fields
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ..alerts import ALERT_NAMES
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

    The node is also the bench's HAN tap (what a sniffer and an attacker's
    radio on the premises are on a real bench).  Ops:

    * ``journal`` (``{"since": t, "src": "ppmid", "dst": "esme", "cluster": 0x0705, "command": 1}``):
      application frames as the sniffer saw them on their first hop, each with
      the lab time it went on the air (``ts``), the first hop's receiver
      (``hop``), its ZCL command name, frame counter, whether it was
      delivered and whether the injector sent it;
    * ``replay`` (``{"src": "ppmid", "dst": "esme"}``): re-send the last frame
      recorded between them, unchanged (the replay attack of property 4);
    * ``delay`` (``{..., "seconds": 8}``): the next such frame is held off the
      air at its first hop and released unchanged that many lab seconds later
      (a jammer with a recorder, or a slow network);
    * ``forge`` (``{...}``): send a copy of the last recorded frame re-stamped
      with the time now and a fresh frame counter, but without the link key:
      its security check fails;
    * ``links``: the link budget of every joined pair.
    """

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
        s = self.bus.serve
        s(self.node, "journal", self._journal, JournalArgs)
        s(self.node, "replay", self._replay, FrameArgs)
        s(self.node, "delay", self._delay, DelayArgs)
        s(self.node, "forge", self._forge, FrameArgs)
        s(self.node, "links", lambda _a, _c: {"links": self.medium.links()})
        s(self.node, "link_test", self._link_test, TapLinkTestArgs)
        self._refresh = self.loop.call_every(refresh_period(self.clock), self.publish, first=0.0)
        return self

    def publish(self) -> None:
        if self.bus.connected:
            self.bus.publish_state(self.node, {
                "seed": self.world.lab.han.seed, "max_retries": self.world.lab.han.max_retries,
                "bands": {b: dict(s) for b, s in self.medium.stats.items()},
                "links": self.medium.links(),
            })

    def _journal(self, args: "JournalArgs", _ctx: CommandContext) -> dict:
        out = []
        for e in list(self.medium.journal):
            if (args.since is not None and e["ts"] < args.since) or (args.src and e["src"] != args.src) \
                    or (args.dst and e["dst"] != args.dst) or (args.cluster is not None and e["cluster"] != args.cluster):
                continue
            raw = e["zcl"]
            command = raw[2] if len(raw) >= 3 else None
            specific = len(raw) >= 1 and (raw[0] & 0x03) == 1
            if args.command is not None and not (specific and command == args.command):
                continue
            try:
                parsed = zcl.parse(zcl.cluster_by_id(e["cluster"]), raw)
                name, general, to_client = parsed.name, parsed.general, parsed.to_client
            except ValueError:
                name, general, to_client = None, not specific, bool(raw and raw[0] & 0x08)
            out.append({k: v for k, v in e.items() if k != "zcl"} | {
                "cluster": f"0x{e['cluster']:04X}", "command": name, "general": general, "to_client": to_client})
        return {"frames": out[-args.limit:]}

    def _recorded(self, args: "FrameArgs") -> HanFrame:
        frame = self.medium.recorded(args.src, args.dst, args.cluster, args.command)
        if frame is None:
            what = f" (cluster {args.cluster}, command {args.command})" if args.cluster is not None else ""
            raise Refused(f"no frame from {args.src} to {args.dst}{what} has been recorded on the HAN yet")
        return frame

    def _replay(self, args: "FrameArgs", _ctx: CommandContext) -> dict:
        frame = self.medium.inject(self._recorded(args), "replayed")
        return {"replayed": True, "counter": frame.counter, "cluster": f"0x{frame.cluster_id:04X}",
                "created": frame.created, "at": self.clock.now()} if frame else {"replayed": False}

    def _delay(self, args: "DelayArgs", _ctx: CommandContext) -> dict:
        if args.src not in self.medium.radios or args.dst not in self.medium.radios:
            raise Refused(f"no device '{args.src}' or '{args.dst}' on the HAN; devices: "
                          f"{', '.join(sorted(self.medium.radios))}", code="invalid")
        hold = self.medium.hold_next(args.src, args.dst, args.cluster, args.command, args.seconds, args.within)
        return {"armed": True, "at": hold.armed, "seconds": hold.seconds}

    def _forge(self, args: "FrameArgs", _ctx: CommandContext) -> dict:
        frame = self._recorded(args).copy()
        frame.zcl = zcl.restamp(frame.cluster_id, frame.zcl, self.clock.now())
        frame.counter += 1_000_000
        frame.created = self.clock.now()
        frame.authentic = False
        sent = self.medium.inject(frame, "forged")
        return {"forged": sent is not None, "counter": frame.counter, "at": self.clock.now()}

    def _link_test(self, args: "TapLinkTestArgs", _ctx: CommandContext) -> dict:
        """The injector's link test: ``frames`` single-attempt frames to ``peer``
        from the coordinator's place, under the coordinator's address, counting
        the peer's MAC acknowledgements (a MAC acknowledges before any
        security check, so a radio that does not hold the keys can measure a
        link).  On a real bench the injector's antenna sits on the hub's side
        of the path's attenuator."""
        from .zcl import Metering, read_attributes

        coord = self.medium.coordinator
        peer = self.medium.radios.get(args.peer)
        if coord is None or peer is None or peer is coord:
            known = sorted(n for n, r in self.medium.radios.items() if r is not coord)
            raise Refused(f"no device '{args.peer}' on the HAN to test; devices: {', '.join(known) or 'none'}",
                          code="invalid")
        shared = [b for b in coord.bands if b in peer.bands]
        band = args.band or (shared[0] if shared else None)
        if band not in shared:
            raise Refused(f"{args.peer} has no band {args.band} the coordinator has ({', '.join(shared) or 'none'})",
                          code="invalid")
        if not coord.powered():
            raise Refused("the coordinator (comms hub) is dark: no HAN to test", code="refused")
        frame = read_attributes(Metering, ["current_summ_delivered"], tsn=0)
        result = coord.link_test(args.peer, band, args.frames, Metering.cluster_id, frame,
                                 timeout=5.0 + 0.5 * args.frames)
        if result.sent < args.frames:
            raise Refused(f"link test to {args.peer} on {band} stopped after {result.sent} of {args.frames} frames "
                          "(the coordinator lost power)", code="timeout")
        return {**result.report(), "method": "tap_mac_ack"}

    def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        self.loop.stop()
        self.bus.close()


class TapLinkTestArgs(BaseModel):
    peer: str = Field(..., description="the device whose link to the coordinator is measured")
    band: Literal["2.4GHz", "868MHz"] | None = Field(None, description="default: the first band both have")
    frames: int = Field(50, ge=1, le=1000)


class FrameArgs(BaseModel):
    src: str
    dst: str
    cluster: int | None = Field(None, description="ZCL cluster id, e.g. 0x0705 (1797) for Prepayment")
    command: int | None = Field(None, description="cluster-specific command id, e.g. 1 for change_supply")


class DelayArgs(FrameArgs):
    seconds: float = Field(..., gt=0, le=3600, description="lab seconds the frame is held back")
    within: float = Field(60.0, gt=0, le=3600, description="lab seconds the tap waits for such a frame")


class JournalArgs(BaseModel):
    since: float | None = Field(None, description="lab time: frames on the air at or after it")
    src: str | None = None
    dst: str | None = None
    cluster: int | None = None
    command: int | None = Field(None, description="cluster-specific command id")
    limit: int = Field(2000, ge=1, le=20000)


class FaultFlags:
    """Base of a twin's fault profiles as one frozen dataclass of flags, read
    once from lab.yaml (``Quirks.of(cfg.faults)``): the logic tests a named
    field, never a string."""

    @classmethod
    def of(cls, faults: "set[str] | list[str]"):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{f: True for f in faults if f in names})


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
            if dev.simulated:
                twins[name] = classes[dev.kind](world, han, name, dev)
        headend = HeadEnd(world, han, twins)
        parts.append(headend.start())
        for name, dev in order:
            if dev.simulated:
                parts.append(twins[name].start())
            else:
                from ..adapters import start_adapter

                parts.append(start_adapter(world, name, dev, medium=han))
        from .buttons import ButtonWiring

        parts.append(ButtonWiring(world, twins).start())
        world.twins = twins
    except BaseException:
        for part in reversed(parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping %r", part)
        raise
    log.info("%s: %d simulated devices on the HAN", world.bench_name, len([p for p in parts if isinstance(p, Twin)]))
    return parts
