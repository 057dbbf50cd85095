"""The simulated HAN of one bench as a part of the simulated world: the
medium (:mod:`rig.sim.han`), its event loop (:mod:`rig.sim.event_loop`) and
its node on the bus, which is also the bench's HAN tap (journal, replay,
delay, forge).  Started by :func:`rig.sim.devices.start_devices`; the twins
and a zigpy bridge on ``radio: sim`` attach their radios to it."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from ..bus import Bus, CommandContext, Refused
from ..clock import LabClock
from ..contract import han_node
from ..protocol import zcl
from .bench import SimBench
from .event_loop import EventLoop, Handle
from .han import HanFrame, HanMedium, HanRadio


def refresh_period(clock: LabClock) -> float:
    """Lab seconds between periodic state publications: every 5 lab s, but
    no more than once a wall second (the bus is wall-time I/O)."""
    return max(5.0, clock.lab_seconds(1.0))


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
    * ``jam`` (``{..., "seconds": 30}``): the next such frame, and every
      later one between the two for that many lab seconds, is lost on the
      air (a jammer, or a deep fade): the sender's MAC sees no ACK;
    * ``forge`` (``{...}``): send a copy of the last recorded frame re-stamped
      with the time now and a fresh frame counter, but without the link key:
      its security check fails;
    * ``links``: the link budget of every joined pair.
    """

    def __init__(self, world: SimBench):
        self.world = world
        self.clock = world.clock
        self.loop = EventLoop(world.clock, name=f"han:{world.bench_name}")
        self.medium = HanMedium(world.lab.han, world.cfg, world.physics.attenuation, world.clock, self.loop)
        self.node = han_node(world.bench_name)
        self.bus = Bus(world.endpoint, client_id=f"han-{world.bench_name}-{uuid.uuid4().hex[:6]}", clock=world.clock,
                       presence=self.node, presence_info={"kind": "han"})
        self._refresh: Handle | None = None

    def start(self) -> "SimulatedHan":
        self.loop.start()
        self.bus.connect()
        s = self.bus.serve
        s(self.node, "journal", self._journal, JournalArgs)
        s(self.node, "replay", self._replay, FrameArgs)
        s(self.node, "delay", self._delay, DelayArgs)
        s(self.node, "jam", self._jam, DelayArgs)
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
                    or (args.dst and e["dst"] != args.dst) \
                    or (args.cluster is not None and e["cluster"] != args.cluster):
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

    def _delay(self, args: "DelayArgs", _ctx: CommandContext, lost: bool = False) -> dict:
        if args.src not in self.medium.radios or args.dst not in self.medium.radios:
            raise Refused(f"no device '{args.src}' or '{args.dst}' on the HAN; devices: "
                          f"{', '.join(sorted(self.medium.radios))}", code="invalid")
        hold = self.medium.hold_next(args.src, args.dst, args.cluster, args.command, args.seconds, args.within,
                                     lost=lost)
        return {"armed": True, "at": hold.armed, "seconds": hold.seconds}

    def _jam(self, args: "DelayArgs", ctx: CommandContext) -> dict:
        return self._delay(args, ctx, lost=True)

    def _forge(self, args: "FrameArgs", _ctx: CommandContext) -> dict:
        frame = self._recorded(args).copy()
        frame.zcl = zcl.restamp(frame.cluster_id, frame.zcl, self.clock.now())
        frame.counter += 1_000_000
        frame.created = self.clock.now()
        frame.authentic = False
        sent = self.medium.inject(frame, "forged")
        return {"forged": sent is not None, "counter": frame.counter, "at": self.clock.now()}

    # ------------------------------------------------------------------ radios from outside the twins
    def open_radio(self, name: str, eui64: str, band: str, poll_period: float | None = 7.5) -> HanRadio:
        """A radio of the medium for a part that is not a twin (a zigpy bridge on
        ``radio: sim``): attached and started; the caller stops it."""
        radio = HanRadio(name, eui64, band, self.loop, self.clock, poll_period=poll_period)
        self.medium.attach(radio)
        radio.start()
        return radio

    def radio_name(self, eui64: str, besides: object = None) -> str | None:
        """The name of the radio with this EUI-64 on the medium (other than ``besides``)."""
        return next((r.name for r in self.medium.radios.values() if r.eui64 == eui64 and r is not besides), None)

    def _link_test(self, args: TapLinkTestArgs, _ctx: CommandContext) -> dict:
        """The injector's link test: ``frames`` single-attempt frames to ``peer``
        from the coordinator's place, under the coordinator's address, counting
        the peer's MAC acknowledgements (a MAC acknowledges before any
        security check, so a radio that does not hold the keys can measure a
        link).  On a real bench the injector's antenna sits on the hub's side
        of the path's attenuator."""
        coord = self.medium.coordinator
        peer = self.medium.radios.get(args.peer)
        if coord is None or peer is None or peer is coord:
            known = sorted(n for n, r in self.medium.radios.items() if r is not coord)
            raise Refused(f"no device '{args.peer}' on the HAN to test; devices: {', '.join(known) or 'none'}",
                          code="invalid")
        shared = [b for b in coord.bands if b in peer.bands]
        band = args.band or (shared[0] if shared else None)
        if band is None or band not in shared:
            raise Refused(f"{args.peer} has no band {args.band} the coordinator has ({', '.join(shared) or 'none'})",
                          code="invalid")
        if not coord.powered():
            raise Refused("the coordinator (comms hub) is dark: no HAN to test", code="refused")
        frame = zcl.read_attributes(zcl.Metering, ["current_summ_delivered"], tsn=0)
        result = coord.link_test(args.peer, band, args.frames, zcl.Metering.cluster_id, frame,
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
