"""The simulated DCC and head end: where remote commands start and alerts end.

Bus node ``rig/v1/<bench>/dcc/headend`` (its own connection and presence).

* **Alert sink (the rig's).**  Every alert the DCC routes to a party
  (:mod:`rig.sim.wan`) arrives in that party's inbox here (``supplier``,
  ``dno``, ``wan_provider``) and is recorded once per inbox, with the lab
  time the sink received it (``received``: the rig's own time, what every
  latency is measured to) beside the time the device claims it raised it
  (``raised``, recorded, never judged); each is published on
  ``event/alert``; the retained ``state`` keeps counts and the latest.  The
  sink itself computes nothing: the outage timers and the routing are the
  simulated WAN's (:mod:`rig.sim.wan`, which this process runs beside it and
  whose pending outages the state shows, as a WAN provider's portal would).
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
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..alerts import name_of
from ..bus import Bus, CommandContext, Refused
from ..contract import dcc_node
from ..protocol import zcl
from .bench import SimBench
from .comms_hub import CommsHub
from .event_loop import Handle
from .simulated_han import SimulatedHan, refresh_period
from .twin import Twin
from .wan import WAN_LATENCY, Wan

log = logging.getLogger(__name__)

#: lab seconds the head end waits for a device's answer, WAN included
REQUEST_TIMEOUT = 30.0
ALERTS_KEPT = 5000

Op = Literal["disable", "arm", "enable", "add_credit", "emergency_credit", "set_load_limit", "read"]


class ServiceRequestArgs(BaseModel):
    role: Literal["supplier", "dno", "cad"]
    device: str = Field(..., description="device name in lab.yaml, e.g. esme")
    op: Op
    premises: str | None = Field(None, description="premises the command is for (default: the device's own)")
    amount: float | None = Field(None, description="add_credit: GBP")
    threshold_kw: float | None = Field(None, ge=0, description="set_load_limit: kW, 0 removes the limit")
    period: float | None = Field(None, gt=0, le=65535, description="set_load_limit: seconds above the limit")
    authentic: bool = Field(True, description="false: send it with a broken signature, as a forger would")
    what: Literal["metering", "prepayment", "load_limit"] = Field(
        "metering", description="read: which registers (supply status and energy; credit; load-limit settings)")


class UtrnArgs(BaseModel):
    device: str
    amount: float = Field(..., gt=0, lt=1000, description="GBP")


class AlertsArgs(BaseModel):
    since: float | None = Field(None, description="received at or after this lab time")
    code: str | None = None
    device: str | None = None
    inbox: str | None = Field(None, description="supplier, dno or wan_provider (default: every inbox)")


class HeadEnd:
    """The DCC / head end of one bench: the rig's alert sink and the service requests."""

    def __init__(self, world: SimBench, han: SimulatedHan, twins: dict[str, Twin]):
        self.world, self.han, self.clock, self.loop = world, han, world.clock, han.loop
        self.cfg = world.cfg
        self.lab_name = world.lab.lab.name
        self.node = dcc_node(world.bench_name)
        self.bus = Bus(world.endpoint, client_id=f"dcc-{world.bench_name}-{uuid.uuid4().hex[:6]}", clock=world.clock,
                       presence=self.node, presence_info={"kind": "dcc"})
        self.wan = Wan(han.loop, self)
        self.hub: CommsHub | None = next((t for t in twins.values() if isinstance(t, CommsHub)), None)
        if self.hub is not None:
            self.hub.wan = self.wan
        self.alerts: list[dict[str, Any]] = []
        self._seen: set[tuple[str, int, str]] = set()
        self.requests = 0
        self.refused = 0
        self._ids = itertools.count(int(self.clock.now()) % 100000 * 1000 + 1)
        self._utrn_counters: dict[str, int] = {}
        self._lock = threading.RLock()
        self._refresh: Handle | None = None

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
        self.wan.stop()
        self.bus.close()

    # ------------------------------------------------------------------ the alert sink
    def receive(self, record: dict[str, Any], inbox: str) -> dict[str, Any] | None:
        """An alert arrived in ``inbox``: stamp it with the sink's receive time, keep and publish it."""
        received = self.clock.now()
        key = (str(record.get("eui64", record.get("device", ""))), int(record.get("seq", -1)), inbox)
        with self._lock:
            if key[1] >= 0 and key in self._seen:
                return None   # the same frame delivered twice (a MAC ACK was lost): keep one
            self._seen.add(key)
        alert = {**record, "name": record.get("name") or name_of(record["code"]), "inbox": inbox,
                 "received": received}
        with self._lock:
            self.alerts.append(alert)
            if len(self.alerts) > ALERTS_KEPT:
                del self.alerts[: len(self.alerts) - ALERTS_KEPT]
        if self.bus.connected:
            self.bus.publish_event(self.node, "alert", alert)
        self.publish()
        return alert

    def notice(self, data: dict[str, Any]) -> None:
        if self.bus.connected:
            self.bus.publish_event(self.node, "notice", data)

    def _alerts(self, args: AlertsArgs, _ctx: CommandContext) -> dict:
        with self._lock:
            out = [a for a in self.alerts if (args.since is None or a["received"] >= args.since)
                   and (args.code is None or a["code"].lower() == args.code.lower())
                   and (args.device is None or a["device"] == args.device)
                   and (args.inbox is None or a["inbox"] == args.inbox)]
        return {"alerts": out}

    # ------------------------------------------------------------------ service requests
    def _service_request(self, args: ServiceRequestArgs, ctx: CommandContext) -> dict:
        dev = self.cfg.devices.get(args.device)
        if dev is None:
            raise Refused(f"no device '{args.device}' on {self.world.bench_name}; "
                          f"devices: {', '.join(self.cfg.devices)}", code="invalid")
        if self.hub is None:
            raise Refused(f"{self.world.bench_name} has no simulated comms hub to carry the command", code="timeout")
        premises = args.premises or getattr(dev.settings, "premises_id", "")
        request_id = next(self._ids)
        cluster, inner = self._inner(args, request_id)
        req = zcl.RemoteRequest(kind=zcl.TunnelKind.request, request_id=request_id,
                                role=zcl.RemoteRole[args.role], target=zcl.eui64(dev.id), cluster=cluster,
                                premises=premises, issued=zcl.to_utc(self.clock.now()), zcl=inner, signature=b"")
        sig = zcl.sign(req, zcl.role_key(self.lab_name, args.role))
        req.signature = sig if args.authentic else bytes([sig[0] ^ 0xFF]) + sig[1:]  # type: ignore[assignment]  # zigpy converts
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
        if args.role == "cad" and args.what == "metering":
            # what a CAD asks for: the supply status and consumption
            return zcl.Metering.cluster_id, zcl.read_attributes(
                zcl.Metering, ["supply_status", "current_summ_delivered", "instantaneous_demand"], tsn=tsn)
        if args.what == "prepayment":
            return zcl.Prepayment.cluster_id, zcl.read_attributes(
                zcl.Prepayment, ["credit_remaining", "emergency_credit_remaining", "credit_status"], tsn=tsn)
        if args.what == "load_limit":
            return zcl.LoadLimit.cluster_id, zcl.read_attributes(zcl.LoadLimit, ["threshold_w", "period_s"], tsn=tsn)
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
            if "credit_remaining" in values:
                out["credit"] = int(values["credit_remaining"]) / 100.0
            if "emergency_credit_remaining" in values:
                out["emergency_credit"] = int(values["emergency_credit_remaining"]) / 100.0
            if "threshold_w" in values:
                out["load_limit_kw"] = int(values["threshold_w"]) / 1000.0
            if "period_s" in values:
                out["load_limit_period"] = int(values["period_s"])
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
            pending = self.wan.status()
            state = {
                "summary": f"{len(self.alerts)} alerts, {len(pending)} outages pending",
                "alerts": len(self.alerts), "by_code": by_code, "latest": self.alerts[-20:],
                "pending_outages": pending,
                "requests": self.requests, "refused": self.refused,
                "hub": self.hub.name if self.hub else None,
            }
        self.bus.publish_state(self.node, state)
