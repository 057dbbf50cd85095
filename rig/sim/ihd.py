"""The simulated in-home display: consumption and credit, read over the HAN.

Every ``settings.refresh_period`` lab seconds it reads the electricity
meter (power now, energy register, supply state, credit) and the gas
meter's mirror on the comms hub (HAN-7: never the sleeping gas meter
itself), and shows them.  It is a read-only device: it sends no write or
function call, and the meter refuses any from it (HAN-6).  Bus op
``press("display")`` turns the page.  Fault ``writes_configuration``: at
each refresh it also writes the meter's load-limit threshold (a consumer
access device that changes configuration); ``speaks_proprietary``: it also
sends a frame that is not ZCL (HAN-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from ..bus import CommandContext
from ..protocol import zcl
from .twin import FaultFlags, Twin

RESPONSE_TIMEOUT = 10.0
SUPPLY = {0: "disabled", 1: "armed", 2: "enabled"}


@dataclass(frozen=True)
class Quirks(FaultFlags):
    """The display's fault profiles, read once from lab.yaml."""

    writes_configuration: bool = False
    speaks_proprietary: bool = False


class PressArgs(BaseModel):
    button: Literal["display"]


class Ihd(Twin):
    kind = "ihd"

    def __init__(self, world, han, name, cfg):
        super().__init__(world, han, name, cfg)
        bench = world.cfg
        self.meter = next((n for n, d in bench.devices.items() if d.kind == "esme"), None)
        self.hub = next((n for n, d in bench.devices.items() if d.kind == "comms_hub"), None)
        self.period = cfg.settings.refresh_period
        self.quirks = Quirks.of(self.faults)
        self.shown: dict[str, Any] = {}
        self.updated: float | None = None
        self.signal = False
        self.page = 0

    def serve(self) -> None:
        self.bus.serve(self.node, "press", self._press, PressArgs)

    def started(self) -> None:
        self.every(self.period, lambda: self.background(self.refresh), first=3.0)

    def _read(self, dst: str, cluster, names: list[str]) -> dict[str, Any] | None:
        tsn = self.radio.next_tsn()
        answer = self.radio.request(dst, cluster.cluster_id, zcl.read_attributes(cluster, names, tsn=tsn), tsn,
                                    RESPONSE_TIMEOUT)
        return None if answer is None else zcl.parse(cluster, answer.zcl).attributes()

    def refresh(self) -> bool:
        shown: dict[str, Any] = {}
        ok = True
        if self.meter:
            m = self._read(self.meter, zcl.Metering,
                           ["instantaneous_demand", "current_summ_delivered", "supply_status"])
            p = self._read(self.meter, zcl.Prepayment, ["credit_remaining"]) if m is not None else None
            if m is None or p is None:
                ok = False
            else:
                shown["electricity"] = {
                    "power_w": int(m.get("instantaneous_demand", 0)),
                    "energy_kwh": int(m.get("current_summ_delivered", 0)) / 1000.0,
                    "supply": SUPPLY.get(int(m.get("supply_status", 2))),
                    "credit": int(p.get("credit_remaining", 0)) / 100.0,
                }
        if self.meter and ok and self.quirks.writes_configuration:
            tsn = self.radio.next_tsn()
            self.radio.request(self.meter, zcl.LoadLimit.cluster_id,
                               zcl.write_attributes(zcl.LoadLimit, {"threshold_w": 20000}, tsn=tsn), tsn,
                               RESPONSE_TIMEOUT)
        if self.meter and ok and self.quirks.speaks_proprietary:
            self.radio.send(self.meter, 0xFC01, b"\x55\xaa" + bytes(8))   # not a ZCL frame
        if self.hub and ok:
            g = self._read(self.hub, zcl.Metering, ["current_summ_delivered", "remaining_battery_life"])
            if g is None:
                ok = False
            elif "current_summ_delivered" in g:
                shown["gas"] = {"volume_m3": int(g["current_summ_delivered"]) / 1000.0,
                                "battery": int(g.get("remaining_battery_life", 0)) / 200.0}
        with self.lock:
            self.signal = ok
            if ok:
                self.shown, self.updated = shown, self.clock.now()
        self.publish()
        return ok

    def _press(self, _args: PressArgs, _ctx: CommandContext) -> dict:
        with self.lock:
            self.page = (self.page + 1) % 3
        self.publish()
        return {"display": self.display()}

    def display(self) -> str:
        if not self.signal:
            return "NO SIGNAL"
        e, g = self.shown.get("electricity", {}), self.shown.get("gas")
        pages = [f"NOW {e.get('power_w', 0)} W", f"CREDIT GBP {e.get('credit', 0):.2f}",
                 f"GAS {g['volume_m3']:.3f} m3" if g else "GAS --"]
        return pages[self.page % len(pages)]

    def state(self) -> dict[str, Any]:
        return {"summary": self.display(), "display": {"text": self.display(), "signal": self.signal,
                                                       "updated": self.updated, **self.shown}}
