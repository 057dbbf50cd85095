"""The simulated communications hub: HAN coordinator and WAN gateway.

* **Power and outage reporting (OUT-2, OUT-5).**  With ``wiring.hub_feed:
  unmetered`` the hub is fed from the line side, before the meter's
  contactor: it loses power with mains, sends its last gasp up the WAN on
  its reserve (``settings.reserve_seconds``), then goes dark until mains
  returns, when it tells the WAN so.  The WAN provider's network
  (:mod:`rig.sim.wan`) raises the outage alert AD1 if the hub is not back
  within ``settings.outage_alert_period``.  With ``separate`` it never loses
  power.  Faults: ``no_reserve`` (dark at once: no last gasp),
  ``no_outage_alert`` (no last gasp), ``outage_alert_early`` /
  ``outage_alert_late`` (the network's period 15 s short / 40 s long).
* **HAN coordinator (HAN-2).**  Devices join it and poll it; frames between
  devices are routed through it.  Writes and function calls addressed to
  the hub from HAN devices are refused (HAN-6).
* **Gas mirror (HAN-7).**  The battery gas meter pushes its registers every
  ``settings.gas_mirror_period``; the hub answers reads of the gas meter
  from the mirror so the GSME can sleep.
* **WAN.**  Alerts from devices go up the WAN (:mod:`rig.sim.wan`) to the
  DCC; remote commands from the head end are tunnelled to their device and
  the answer returned.  Fault ``drops_outage_alerts``: no last gasp, and the
  meter's restoration alerts are not forwarded.
* **Link test (HAN-3, HAN-4).**  Bus op ``link_test`` (``{"peer": "ppmid",
  "band": "868MHz", "frames": 50}``): the hub sends that many test frames
  (a Metering Read Attributes request) to the device on that band, one
  transmission each with no MAC retries, and answers with the share the
  device's MAC did not acknowledge (``per``) and the mean RSSI and LQI of
  the acknowledgements.  Used by the propagation suite's attenuation sweeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ..alerts import RESTORATION_ALERTS, AlertCode
from ..bus import CommandContext, Refused
from ..protocol import zcl
from .han import HanFrame, HanRadio
from .twin import FaultFlags, Twin, reject

if TYPE_CHECKING:
    from .wan import Wan

log = logging.getLogger(__name__)

#: lab seconds the hub waits for a device to answer a tunnelled command
HAN_RESPONSE_TIMEOUT = 20.0
OUTAGE_ALERTS = {AlertCode.SUPPLY_INTERRUPTED, *RESTORATION_ALERTS}
#: outage_alert_early / outage_alert_late: how far the faulty network's period is off, lab seconds
EARLY_BY, LATE_BY = 15.0, 40.0
#: most test frames one link test may send
LINK_TEST_MAX_FRAMES = 1000
#: lab seconds a link test may take per frame (a frame takes a few lab ms)
LINK_TEST_SECONDS_PER_FRAME = 0.5


@dataclass(frozen=True)
class Quirks(FaultFlags):
    """The hub's fault profiles, read once from lab.yaml."""

    drops_outage_alerts: bool = False
    no_reserve: bool = False
    no_outage_alert: bool = False
    outage_alert_early: bool = False
    outage_alert_late: bool = False


class LinkTestArgs(BaseModel):
    peer: str = Field(..., description="the device whose link to the hub is tested")
    band: Literal["2.4GHz", "868MHz"] | None = Field(None, description="default: the first band both have")
    frames: int = Field(50, ge=1, le=LINK_TEST_MAX_FRAMES)


class CommsHub(Twin):
    kind = "comms_hub"
    poll_period = None

    def __init__(self, world, han, name, cfg):
        super().__init__(world, han, name, cfg)
        self.s = cfg.settings
        self.quirks = Quirks.of(self.faults)
        self.physics = world.physics
        self.unmetered = world.cfg.wiring.hub_feed == "unmetered"
        mains = self.physics.supply_present() if self.unmetered else True
        self.mains = mains
        self.power = "mains" if mains else "off"
        self.reserve_until: float | None = None
        self._reserve_handle = None
        self.wan: "Wan | None" = None
        self.mirror: dict[str, dict[str, Any]] = {}
        self.forwarded = 0
        self.alerts_forwarded = 0
        self.alerts_dropped = 0
        self.radio.forward_filter = self._route
        # the slot through which the head end stands in for a consumer access
        # device joined to this HAN (the bench has no real CAD)
        cad_eui = ":".join(cfg.id.split(":")[:-1] + [f"{(int(cfg.id.split(':')[-1], 16) + 0x80) & 0xFF:02x}"])
        self.cad = HanRadio(f"{name}-cad", cad_eui, cfg.han.band if cfg.han.band != "dual" else "2.4GHz",
                            han.loop, world.clock, poll_period=None)
        han.medium.attach(self.cad)

    def serve(self) -> None:
        self.bus.serve(self.node, "link_test", self._link_test, LinkTestArgs)

    # ------------------------------------------------------------------ power
    def radio_powered(self) -> bool:
        return self.power in ("mains", "reserve")

    def started(self) -> None:
        if self.unmetered:
            self.physics.listen(self._on_physics)

    def outage_alert_period(self) -> float:
        """The WAN provider's outage period for this hub's premises, lab seconds."""
        period = float(self.s.outage_alert_period)
        if self.quirks.outage_alert_early:
            return period - EARLY_BY
        return period + LATE_BY if self.quirks.outage_alert_late else period

    def _on_physics(self, _what: set[str]) -> None:
        present = self.physics.supply_present()
        with self.lock:
            if present == self.mains:
                return
            self.mains = present
            now = self.physics.event_time()
            if not present:
                if self.quirks.no_reserve or self.s.reserve_seconds <= 0:
                    self._go_dark("mains lost, no reserve")
                else:
                    self.power = "reserve"
                    self.reserve_until = now + self.s.reserve_seconds
                    self._reserve_handle = self.loop.call_later(self.s.reserve_seconds, self._reserve_empty)
                    self.event("power", state="reserve", until=self.reserve_until)
                    if self.wan is not None and not (self.quirks.no_outage_alert or self.quirks.drops_outage_alerts):
                        self.wan.hub_lost_power(self.name, now, self.outage_alert_period(), self._premises())
            else:
                if self._reserve_handle is not None:
                    self._reserve_handle.cancel()
                was = self.power
                self.power, self.reserve_until = "mains", None
                self.event("power", state="mains", previous=was)
                if self.wan is not None:
                    self.wan.hub_power_restored(self.name, now)
        self.publish()

    def _premises(self) -> list[str]:
        return sorted({getattr(d.settings, "premises_id", "") for d in self.world.cfg.devices.values()
                       if d.kind == "esme"} - {""})

    def _reserve_empty(self) -> None:
        with self.lock:
            if not self.mains:
                self._go_dark("reserve exhausted")
        self.publish()

    def _go_dark(self, why: str) -> None:
        self.power, self.reserve_until = "off", None
        self.event("power", state="off", reason=why)

    # ------------------------------------------------------------------ HAN
    def _route(self, frame: HanFrame) -> bool:
        self.forwarded += 1
        return True

    def on_frame(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        if parsed.cluster is zcl.Tunneling and parsed.name == "transfer_data" and not parsed.to_client:
            data = bytes(parsed.args["data"])
            try:
                if zcl.tunnel_kind(data) == zcl.TunnelKind.alert:
                    alert, _ = zcl.DeviceAlert.deserialize(data)
                    self._forward_alert(frame, alert)
                    return
            except ValueError:
                pass
        if parsed.general and parsed.name == "Report_Attributes" and parsed.cluster is zcl.Metering:
            self._mirror_update(frame, parsed.reported())
            return
        if parsed.general and parsed.name == "Read_Attributes":
            self._mirror_read(frame, parsed)
            return
        # configuration writes and function calls from the HAN: refused (HAN-6)
        self.event("han_command_refused", source=frame.src, command=f"{parsed.cluster.__name__}.{parsed.name}")
        reject(self.radio, frame, parsed)

    def _forward_alert(self, frame: HanFrame, alert: zcl.DeviceAlert) -> None:
        code = int(alert.alert_code)
        if self.quirks.drops_outage_alerts and code in OUTAGE_ALERTS:
            self.alerts_dropped += 1
            return
        record = {"code": f"0x{code:04X}", "device": frame.src, "eui64": str(alert.source),
                  "raised": zcl.from_utc(alert.raised), **alert.details()}
        self.alerts_forwarded += 1
        if self.wan is not None and self.radio_powered():
            self.wan.alert_from_hub(self.name, record)

    def _mirror_update(self, frame: HanFrame, values: dict[str, Any]) -> None:
        """HAN-7: the gas meter's registers, pushed at each of its wakes."""
        m = self.mirror.setdefault(frame.src, {"syncs": 0})
        m.update({k: int(v) for k, v in values.items()})
        m["synced"] = self.clock.now()
        m["syncs"] += 1
        self.event("mirror", device=frame.src, **{k: v for k, v in m.items()})
        self.publish()

    def _mirror_read(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        gas = next(iter(self.mirror.values()), None)
        values = {} if gas is None or parsed.cluster is not zcl.Metering else {
            "current_summ_delivered": gas.get("current_summ_delivered"),
            "remaining_battery_life": gas.get("remaining_battery_life"),
            "metering_device_type": zcl.Metering.MeteringDeviceType.Mirrored_Gas_Metering,
            "unit_of_measure": zcl.Metering.MeteringUnitofMeasure.Cubic_Meter_and_Cubic_Meter_per_Hour_binary,
            "divisor": 1000,
            "multiplier": 1,
        }
        self.radio.reply(frame, zcl.read_attributes_response(parsed.cluster, parsed.requested(), values,
                                                             tsn=parsed.tsn))

    # ------------------------------------------------------------------ WAN side (called by the head end)
    def wan_request(self, data: bytes, timeout: float = HAN_RESPONSE_TIMEOUT) -> zcl.RemoteResponse | None:
        """Carry one remote request to its device and return the answer
        (None: the hub is dark or the device never answered).  Blocks: called
        from the head end's thread, never from the HAN loop."""
        if not self.radio_powered():
            return None
        req, _ = zcl.RemoteRequest.deserialize(data)
        target = self._device_by_eui(str(req.target))
        if target is None:
            return zcl.RemoteResponse(kind=zcl.TunnelKind.response, request_id=req.request_id,
                                      status=zcl.Status.NOT_FOUND,
                                      reason=f"no device {req.target} has joined {self.name}",
                                      requirement="", zcl=b"")
        if req.role == zcl.RemoteRole.cad:
            return self._as_cad(req, target, timeout)
        tsn = self.radio.next_tsn()
        frame = zcl.command(zcl.Tunneling, "transfer_data", tsn=tsn, tunnel_id=0, data=data)
        answer = self.radio.request(target, zcl.Tunneling.cluster_id, frame, tsn, timeout)
        if answer is None:
            return None
        try:
            parsed = zcl.parse(zcl.Tunneling, answer.zcl)
            resp, _ = zcl.RemoteResponse.deserialize(bytes(parsed.args["data"]))
        except ValueError as exc:
            log.warning("%s: unreadable answer from %s: %s", self.name, target, exc)
            return None
        return resp

    def _as_cad(self, req: zcl.RemoteRequest, target: str, timeout: float) -> zcl.RemoteResponse | None:
        """A consumer access device on the HAN sends the inner ZCL frame itself."""
        inner = bytes(req.zcl)
        answer = self.cad.request(target, int(req.cluster), inner, inner[1], timeout)
        if answer is None:
            return None
        parsed = zcl.parse(zcl.cluster_by_id(int(req.cluster)), answer.zcl)
        status = zcl.Status.SUCCESS
        if parsed.name == "Default_Response":
            status = parsed.args["status"]
        elif parsed.name == "Write_Attributes_rsp":
            status = parsed.args["status_records"][0].status
        reason = "" if status == zcl.Status.SUCCESS else \
            f"{target} answered {zcl.Status(status).name}: consumer access devices may read only (HAN-6)"
        return zcl.RemoteResponse(kind=zcl.TunnelKind.response, request_id=req.request_id, status=status,
                                  reason=reason, requirement="" if status == zcl.Status.SUCCESS else "HAN-6",
                                  zcl=answer.zcl)

    # ------------------------------------------------------------------ link test (HAN-3, HAN-4)
    def _link_test(self, args: LinkTestArgs, _ctx: CommandContext) -> dict:
        radios = self.han.medium.radios
        peer = radios.get(args.peer)
        if peer is None or peer is self.radio or peer is self.cad:
            known = sorted(n for n, r in radios.items() if r is not self.radio and r is not self.cad)
            raise Refused(f"{self.name}: no device '{args.peer}' on the HAN; devices: {', '.join(known) or 'none'}",
                          code="invalid")
        shared = [b for b in self.radio.bands if b in peer.bands]
        band = args.band or (shared[0] if shared else None)
        if band not in shared:
            raise Refused(f"{self.name}: {args.peer} and the hub share no band {args.band or ''}; "
                          f"the hub has {', '.join(self.radio.bands)}, {args.peer} has {', '.join(peer.bands)}",
                          code="invalid")
        if not self.radio_powered():
            raise Refused(f"{self.name} is dark (power {self.power}): no link test without mains or reserve")
        frame = zcl.read_attributes(zcl.Metering, ["current_summ_delivered"], tsn=self.radio.next_tsn())
        result = self.radio.link_test(args.peer, band, args.frames, zcl.Metering.cluster_id, frame,
                                      timeout=5.0 + LINK_TEST_SECONDS_PER_FRAME * args.frames)
        if result.sent < args.frames:
            raise Refused(f"{self.name}: link test to {args.peer} on {band} stopped after {result.sent} of "
                          f"{args.frames} frames (hub lost power, or the HAN loop is overloaded)", code="timeout")
        return result.report()

    def _device_by_eui(self, eui: str) -> str | None:
        for name, radio in self.han.medium.radios.items():
            if radio.eui64 == eui and radio is not self.radio and radio is not self.cad:
                return name
        return None

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        now = self.clock.now()
        mirror = {n: {**m, "age": round(now - m["synced"], 1) if "synced" in m else None}
                  for n, m in self.mirror.items()}
        return {
            "summary": f"power {self.power}" + (f" (reserve {max(0.0, self.reserve_until - now):.0f} s left)"
                                                 if self.reserve_until else "") + f", {len(self._joined())} joined",
            "power": self.power,
            "feed": "unmetered" if self.unmetered else "separate",
            "reserve_until": self.reserve_until,
            "wan": "connected" if self.radio_powered() and self.wan is not None else "down",
            "joined": self._joined(),
            "mirror": mirror,
            "forwarded": self.forwarded,
            "alerts_forwarded": self.alerts_forwarded,
        }

    def _joined(self) -> list[str]:
        return sorted({peer for (peer, _b), ls in list(self.radio.links.items()) if ls.up})
