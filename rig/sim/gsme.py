"""The simulated gas meter (GSME): a battery device that sleeps.

It wakes every ``gas_mirror_period`` of the bench's comms hub (HAN-7, 30
minutes by default), integrates the gas that flowed since its last wake,
pushes its registers to the hub's mirror (ZCL Report Attributes of the
Metering cluster) and polls its parent, then sleeps again.  Everything else
on the HAN reads the gas meter from the hub's mirror, so its battery lasts.

Bus op ``set_flow`` (``{"m3_per_hour": 1.2}``) sets the gas the bench draws
(a gas flow rig on a real bench).  Battery: a charge per wake and a sleep
current; 0x8F1F "Low Battery Capacity" below 10 %.

A push the hub does not acknowledge is retried after :data:`RETRY_AFTER`
(:data:`RETRIES` times), then every :data:`SEARCH_PERIOD` until the hub
answers again (a lost gas meter searching for its hub).

Fault ``misses_mirror_sync``: skips every other sync (HAN-7).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..bus import CommandContext
from ..protocol import zcl
from .twin import Twin

#: mAh a wake costs (radio on, frames out, ACKs in)
WAKE_CHARGE_MAH = 0.02
#: sleep current, mA
SLEEP_CURRENT_MA = 0.005
LOW_BATTERY = 0.10
#: after a failed push the meter looks for its hub again this soon (lab s),
#: this many times, then every SEARCH_PERIOD until it finds it
RETRY_AFTER = 30.0
RETRIES = 3
SEARCH_PERIOD = 300.0


class FlowArgs(BaseModel):
    m3_per_hour: float = Field(..., ge=0, le=100)


class Gsme(Twin):
    kind = "gsme"
    poll_period = None   # sleepy: it only talks when it wakes

    def __init__(self, world, han, name, cfg):
        super().__init__(world, han, name, cfg)
        hub = next((d for d in world.cfg.devices.values() if d.kind == "comms_hub"), None)
        self.period = hub.settings.gas_mirror_period if hub is not None else 1800.0
        self.misses_mirror_sync = "misses_mirror_sync" in self.faults   # the one fault profile, read once
        self.capacity = cfg.settings.battery_mah
        self.charge = self.capacity
        self.volume_l = 0.0
        self.flow = 0.0
        self._ts = self.clock.now()
        self.wakes = 0
        self.syncs = 0
        self.last_sync: float | None = None
        self.low_battery = False
        self.failed = 0
        self._retry = None

    def serve(self) -> None:
        self.bus.serve(self.node, "set_flow", self._set_flow, FlowArgs)

    def started(self) -> None:
        self.every(self.period, self.wake, first=1.0)

    def _integrate(self) -> None:
        now = self.clock.now()
        dt = max(0.0, now - self._ts)
        self._ts = now
        self.volume_l += self.flow * 1000.0 * dt / 3600.0
        self.charge = max(0.0, self.charge - SLEEP_CURRENT_MA * dt / 3600.0)

    def _set_flow(self, args: FlowArgs, _ctx: CommandContext) -> dict:
        with self.lock:
            self._integrate()
            self.flow = args.m3_per_hour
        self.publish()
        return {"m3_per_hour": self.flow}

    def battery_fraction(self) -> float:
        return self.charge / self.capacity if self.capacity else 0.0

    def wake(self) -> None:
        with self.lock:
            self._integrate()
            self.wakes += 1
            if self.charge <= 0:
                return
            self.charge = max(0.0, self.charge - WAKE_CHARGE_MAH)
            if self.battery_fraction() < LOW_BATTERY and not self.low_battery:
                self.low_battery = True
                self.raise_alert(0x8F1F, battery=round(self.battery_fraction(), 3))
            if self.misses_mirror_sync and self.wakes % 2 == 0:
                return
            parent = self.radio.parent()
            if parent is None:
                return
            self.radio.poll()
            status = zcl.Metering.MeteringStatus.Low_Battery if self.low_battery else 0
            frame = zcl.report_attributes(zcl.Metering, {
                "current_summ_delivered": int(self.volume_l),          # litres = 0.001 m3
                "remaining_battery_life": int(round(200 * self.battery_fraction())),  # ZCL: half-percent
                "status": status,
            }, tsn=self.radio.next_tsn())
            self.radio.send(parent, zcl.Metering.cluster_id, frame, done=self._synced)

    def _synced(self, acked: bool) -> None:
        if acked:
            with self.lock:
                self.syncs += 1
                self.failed = 0
                self.last_sync = self.clock.now()
            self.event("mirror_sync", volume_m3=round(self.volume_l / 1000, 3), at=self.last_sync)
        else:
            # the hub did not answer (dark, or out of reach): look for it again soon
            self.failed += 1
            if self._retry is not None:
                self._retry.cancel()
            self._retry = self.loop.call_later(RETRY_AFTER if self.failed <= RETRIES else SEARCH_PERIOD, self.wake)
        self.publish()

    def state(self) -> dict[str, Any]:
        self._integrate()
        return {
            "summary": f"{self.volume_l / 1000:.3f} m3, battery {100 * self.battery_fraction():.1f} %",
            "volume_m3": round(self.volume_l / 1000, 4),
            "flow_m3_per_hour": self.flow,
            "battery": {"mah": round(self.charge, 3), "fraction": round(self.battery_fraction(), 5),
                        "low": self.low_battery},
            "mirror_period": self.period,
            "syncs": self.syncs,
            "last_sync": self.last_sync,
        }
