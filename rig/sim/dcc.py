"""The simulated DCC and head end: where remote commands start and alerts end.

Bus node ``rig/v1/<bench>/dcc/headend`` (its own connection and presence).

* **Alert sink.**  Every alert a device raises arrives here through the comms
  hub and the WAN; each is recorded with the lab time it arrived
  (``received``) next to the time the device raised it (``raised``), given its
  recipients (``supplier``, ``dno``, ``wan_provider``) and published on
  ``event/alert``; the retained ``state`` keeps counts and the latest alerts.
* **Outage alerts (OUT-2, OUT-5).**  A meter's last gasp (0x8F57, with its
  configured ``alert_after`` period) opens a pending outage; if neither the
  meter's restoration alert (0x8F35/0x8F36) nor the hub's power-restored
  notice arrives first, the WAN provider's network raises the outage alert
  ``AD1`` "Power Outage Event" (DCC alert code, DUIS) at ``outage_start +
  alert_after`` and forwards it to the network operator.  The meter and the
  hub may both be dark by then: this is the "elsewhere in the WAN provider's
  network" of OUT-5.
* **Service requests (SUP-1, SEC-1/2/4, SUP-10, HAN-6).**  ``service_request``
  builds the remote command (a ZCL frame inside a signed GBCS-like
  envelope), sends it over the WAN to the hub, which tunnels it over the HAN
  to the device, and replies with the device's answer: a refusal comes back
  as a ``refused`` error carrying the device's reason and requirement id.
  Role ``cad`` stands in for a consumer access device on the premises HAN:
  the command enters the HAN at the hub with the CAD's own address.
* **UTRNs (SUP-5).**  ``issue_utrn`` makes a top-up code for one meter, as a
  supplier's prepayment system would.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ..bus import Bus, CommandContext, Refused
from . import zcl
from .comms_hub import WAN_LATENCY, CommsHub
from .devices import ALERT_NAMES, SimulatedHan, Twin, dcc_node, refresh_period

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger(__name__)

OUTAGE_ALERT = "AD1"
OUTAGE_ALERT_NAME = "Power Outage Event"
#: lab seconds the head end waits for a device's answer, WAN included
REQUEST_TIMEOUT = 30.0
ALERTS_KEPT = 5000

DNO_ALERTS = {"0x8F57", "0x8F35", "0x8F36", "0x802C", "0x8099", "0x8024", "0x8091", OUTAGE_ALERT}
SECURITY_ALERTS = {"0x8F3D", "0x8F3E", "0x8F30", "0x8F53"}

Op = Literal["disable", "arm", "enable", "add_credit", "emergency_credit", "set_load_limit", "read"]


def recipients(code: str) -> list[str]:
    if code in DNO_ALERTS:
        return ["dno"]
    if code in SECURITY_ALERTS:
        return ["supplier", "wan_provider"]
    if code == "0x8F34":
        return ["supplier", "dno"]
    return ["supplier"]


class ServiceRequestArgs(BaseModel):
    role: Literal["supplier", "dno", "cad"]
    device: str = Field(..., description="device name in lab.yaml, e.g. esme")
    op: Op
    premises: str | None = Field(None, description="premises the command is for (default: the device's own)")
    amount: float | None = Field(None, description="add_credit: GBP")
    threshold_kw: float | None = Field(None, ge=0, description="set_load_limit: kW, 0 removes the limit")
    period: float | None = Field(None, gt=0, le=65535, description="set_load_limit: seconds above the limit")
    authentic: bool = Field(True, description="false: send it with a broken signature, as a forger would")


class UtrnArgs(BaseModel):
    device: str
    amount: float = Field(..., gt=0, lt=1000, description="GBP")


class AlertsArgs(BaseModel):
    since: float | None = None
    code: str | None = None
    device: str | None = None


class HeadEnd:
    """The DCC / head end of one bench."""

    def __init__(self, world: "World", han: SimulatedHan, twins: dict[str, Twin]):
        self.world, self.han, self.clock, self.loop = world, han, world.clock, han.loop
        self.cfg = world.cfg
        self.lab_name = world.lab.lab.name
        self.node = dcc_node(world.bench_name)
        self.bus = Bus(world.endpoint, client_id=f"dcc-{world.bench_name}-{uuid.uuid4().hex[:6]}", clock=world.clock,
                       presence=self.node, presence_info={"kind": "dcc"})
        self.hub: CommsHub | None = next((t for t in twins.values() if isinstance(t, CommsHub)), None)
        if self.hub is not None:
            self.hub.wan = self
        self.alerts: list[dict[str, Any]] = []
        self._seen: set[tuple[str, int]] = set()
        self.pending: dict[str, dict[str, Any]] = {}
        self.requests = 0
        self.refused = 0
        self._ids = itertools.count(int(self.clock.now()) % 100000 * 1000 + 1)
        self._utrn_counters: dict[str, int] = {}
        self._lock = threading.RLock()
        self._refresh = None

    def start(self) -> "HeadEnd":
        self.bus.connect()
        s = self.bus.serve
        s(self.node, "service_request", self._service_request, ServiceRequestArgs)
        s(self.node, "issue_utrn", self._issue_utrn, UtrnArgs)
        s(self.node, "alerts", self._alerts, AlertsArgs)
        self._refresh = self.loop.call_every(refresh_period(self.clock), self.publish, first=0.0)
        return self

    def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        with self._lock:
            for p in self.pending.values():
                p["handle"].cancel()
        self.bus.close()

    # ------------------------------------------------------------------ alerts
    def receive_alert(self, record: dict[str, Any]) -> None:
        """An alert arrived from the WAN (on the HAN loop)."""
        key = (record.get("eui64", record.get("device", "")), int(record.get("seq", -1)))
        with self._lock:
            if key[1] >= 0 and key in self._seen:
                return  # delivered twice (a MAC ACK was lost): keep one
            self._seen.add(key)
        code = record["code"]
        if code == "0x8F57" and record.get("alert_after") is not None:
            self._outage_pending(record)
        if code in ("0x8F35", "0x8F36"):
            self._outage_over(record["device"], "restoration alert", record.get("outage_start"))
        self._record(record)

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        code = record["code"]
        try:
            name = ALERT_NAMES.get(int(code, 16), "")
        except ValueError:
            name = OUTAGE_ALERT_NAME if code == OUTAGE_ALERT else ""
        alert = {**record, "name": record.get("name") or name, "received": self.clock.now(),
                 "recipients": recipients(code)}
        with self._lock:
            self.alerts.append(alert)
            if len(self.alerts) > ALERTS_KEPT:
                del self.alerts[: len(self.alerts) - ALERTS_KEPT]
        if self.bus.connected:
            self.bus.publish_event(self.node, "alert", alert)
        self.publish()
        return alert

    def _outage_pending(self, record: dict[str, Any]) -> None:
        device = record["device"]
        start = float(record.get("outage_start", record.get("raised", self.clock.now())))
        due = start + float(record["alert_after"])
        with self._lock:
            if device in self.pending:
                return
            handle = self.loop.call_at(due, self._outage_due, device)
            self.pending[device] = {"start": start, "due": due, "handle": handle}

    def _outage_over(self, device: str, why: str, start: float | None = None) -> None:
        with self._lock:
            p = self.pending.pop(device, None)
        if p is not None:
            p["handle"].cancel()
            log.info("outage at %s over before its alert (%s)", device, why)

    def hub_power_restored(self, hub: str, at: float) -> None:
        """The hub is back on mains: supply is back at its premises (unmetered feed)."""
        with self._lock:
            devices = list(self.pending)
        for device in devices:
            self._outage_over(device, f"{hub} power restored")
        if self.bus.connected:
            self.bus.publish_event(self.node, "notice", {"notice": "hub_power_restored", "device": hub, "at": at,
                                                         "cancelled": devices})

    def _outage_due(self, device: str) -> None:
        with self._lock:
            p = self.pending.pop(device, None)
        if p is None:
            return
        self._record({"code": OUTAGE_ALERT, "name": OUTAGE_ALERT_NAME, "device": device, "raised": self.clock.now(),
                      "outage_start": p["start"], "alert_after": p["due"] - p["start"], "source": "wan_provider"})

    def _alerts(self, args: AlertsArgs, _ctx: CommandContext) -> dict:
        with self._lock:
            out = [a for a in self.alerts if (args.since is None or a["received"] >= args.since)
                   and (args.code is None or a["code"].lower() == args.code.lower())
                   and (args.device is None or a["device"] == args.device)]
        return {"alerts": out}

    # ------------------------------------------------------------------ service requests
    def _service_request(self, args: ServiceRequestArgs, ctx: CommandContext) -> dict:
        dev = self.cfg.devices.get(args.device)
        if dev is None:
            raise Refused(f"no device '{args.device}' on {self.world.bench_name}; devices: {', '.join(self.cfg.devices)}",
                          code="invalid")
        if self.hub is None:
            raise Refused(f"{self.world.bench_name} has no simulated comms hub to carry the command", code="timeout")
        premises = args.premises or getattr(dev.settings, "premises_id", "")
        request_id = next(self._ids)
        cluster, inner = self._inner(args, request_id)
        req = zcl.RemoteRequest(kind=zcl.TunnelKind.request, request_id=request_id,
                                role=zcl.RemoteRole[args.role], target=zcl.eui64(dev.id), cluster=cluster,
                                premises=premises, issued=zcl.to_utc(self.clock.now()), zcl=inner, signature=b"")
        sig = zcl.sign(req, zcl.role_key(self.lab_name, args.role))
        req.signature = sig if args.authentic else bytes([sig[0] ^ 0xFF]) + sig[1:]
        self.requests += 1
        self.clock.sleep(WAN_LATENCY)
        resp = self.hub.wan_request(req.serialize(), REQUEST_TIMEOUT)
        self.clock.sleep(WAN_LATENCY)
        outcome = {"request_id": request_id, "role": args.role, "device": args.device, "op": args.op,
                   "sender": ctx.sender}
        if resp is None:
            self.refused += 1
            self.bus.publish_event(self.node, "request", {**outcome, "ok": False, "reason": "no answer"})
            raise Refused(f"no answer from {args.device} through {self.hub.name} within {REQUEST_TIMEOUT:g} lab s "
                          f"(hub {self.hub.power}; HAN link down?)", code="timeout")
        ok = resp.status == zcl.Status.SUCCESS
        result = {**outcome, "ok": ok, "status": zcl.Status(resp.status).name}
        if ok:
            result.update(self._decode(args, cluster, bytes(resp.zcl)))
        self.bus.publish_event(self.node, "request", {**result, "reason": str(resp.reason)})
        self.publish()
        if not ok:
            self.refused += 1
            raise Refused(f"{args.device} refused {args.op} from the {args.role}: {resp.reason}",
                          requirement=str(resp.requirement) or None)
        return result

    def _inner(self, args: ServiceRequestArgs, request_id: int) -> tuple[int, bytes]:
        tsn = request_id & 0xFF
        now = zcl.to_utc(self.clock.now())
        if args.op in ("disable", "arm", "enable"):
            status = {"disable": 0, "arm": 1, "enable": 2}[args.op]
            return zcl.Metering.cluster_id, zcl.command(
                zcl.Metering, "change_supply", tsn=tsn, provider_id=0, issuer_event_id=request_id & 0xFFFFFFFF,
                request_date_time=now, implementation_date_time=0, proposed_supply_status=status,
                supply_control_bits=0x01)
        if args.op == "add_credit":
            if args.amount is None:
                raise Refused("add_credit needs an amount (GBP)", code="invalid")
            return zcl.Prepayment.cluster_id, zcl.command(
                zcl.Prepayment, "credit_adjustment", tsn=tsn, issuer_event_id=request_id & 0xFFFFFFFF,
                start_time=0, credit_adjustment_type=zcl.CreditAdjustmentType.Incremental,
                credit_adjustment_value=int(round(args.amount * 100)))
        if args.op == "emergency_credit":
            return zcl.Prepayment.cluster_id, zcl.command(
                zcl.Prepayment, "select_available_emergency_credit", tsn=tsn, command_issue_date_time=now,
                originating_device=zcl.OriginatingDevice.Energy_Service_Interface)
        if args.op == "set_load_limit":
            values: dict[str, Any] = {}
            if args.threshold_kw is not None:
                values["threshold_w"] = int(round(args.threshold_kw * 1000))
            if args.period is not None:
                values["period_s"] = int(args.period)
            if not values:
                raise Refused("set_load_limit needs threshold_kw and/or period", code="invalid")
            return zcl.LoadLimit.cluster_id, zcl.write_attributes(zcl.LoadLimit, values, tsn=tsn)
        if args.role == "cad":
            # what a CAD asks for: the supply status and consumption
            return zcl.Metering.cluster_id, zcl.read_attributes(
                zcl.Metering, ["supply_status", "current_summ_delivered", "instantaneous_demand"], tsn=tsn)
        return zcl.Metering.cluster_id, zcl.read_attributes(
            zcl.Metering, ["supply_status", "current_summ_delivered", "instantaneous_demand", "status"], tsn=tsn)

    def _decode(self, args: ServiceRequestArgs, cluster: int, inner: bytes) -> dict[str, Any]:
        if not inner:
            return {}
        try:
            parsed = zcl.parse(zcl.cluster_by_id(cluster), inner)
        except ValueError:
            return {}
        if parsed.name == "supply_status_response":
            return {"supply": {0: "disabled", 1: "armed", 2: "enabled"}.get(int(parsed.args["supply_status"]))}
        if parsed.name == "Read_Attributes_rsp":
            values = parsed.attributes()
            out: dict[str, Any] = {}
            if "supply_status" in values:
                out["supply"] = {0: "disabled", 1: "armed", 2: "enabled"}.get(int(values["supply_status"]))
            if "current_summ_delivered" in values:
                out["energy_kwh"] = int(values["current_summ_delivered"]) / 1000.0
            if "instantaneous_demand" in values:
                out["power_w"] = int(values["instantaneous_demand"])
            return out
        return {}

    # ------------------------------------------------------------------ UTRNs
    def _issue_utrn(self, args: UtrnArgs, _ctx: CommandContext) -> dict:
        dev = self.cfg.devices.get(args.device)
        if dev is None or dev.kind != "esme":
            raise Refused(f"'{args.device}' is not an electricity meter on {self.world.bench_name}", code="invalid")
        with self._lock:
            counter = self._utrn_counters.get(args.device, 0) + 1
            self._utrn_counters[args.device] = counter
        code = zcl.make_utrn(zcl.meter_key(self.lab_name, dev.id), dev.id, int(round(args.amount * 100)), counter)
        return {"utrn": code, "device": args.device, "amount": args.amount}

    # ------------------------------------------------------------------ state
    def publish(self) -> None:
        if not self.bus.connected:
            return
        with self._lock:
            by_code: dict[str, int] = {}
            for a in self.alerts:
                by_code[a["code"]] = by_code.get(a["code"], 0) + 1
            state = {
                "summary": f"{len(self.alerts)} alerts, {len(self.pending)} outages pending",
                "alerts": len(self.alerts), "by_code": by_code, "latest": self.alerts[-20:],
                "pending_outages": {d: {"start": p["start"], "due": p["due"]} for d, p in self.pending.items()},
                "requests": self.requests, "refused": self.refused,
                "hub": self.hub.name if self.hub else None,
            }
        self.bus.publish_state(self.node, state)
