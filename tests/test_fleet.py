"""rig/sim/fleet.py: meters in bulk raise their outage alert once each when
the feeder stays open for the alert period, and none for a short
interruption (the model bench/outage_storm.py measures the alert path with)."""

from __future__ import annotations

import json
import threading

from rig.bus import Bus
from rig.clock import LabClock
from rig.sim.fleet import Fleet

PERIOD = 180.0   # lab seconds (OUT-2)


class Alerts:
    def __init__(self, endpoint, bench: str, clock: LabClock):
        self.got: list[dict] = []
        self.cond = threading.Condition()
        self.bus = Bus(endpoint, clock=clock).connect()
        self.bus.subscribe(f"rig/v1/{bench}/device/+/event/alert", self._on)
        self.bus.wait_subscribed()

    def _on(self, _topic, payload):
        with self.cond:
            self.got.append(payload)
            self.cond.notify_all()

    def feeder(self, bench: str, state: str) -> None:
        self.bus.publish(f"rig/v1/{bench}/relay/feeder/state", {"state": state}, retain=True)


def start(endpoint, bench: str, clock: LabClock, count: int) -> Fleet:
    return Fleet(endpoint.url, clock, first=0, count=count, bench=bench, per_connection=20,
                 alert_period=PERIOD).start()


def test_every_meter_alerts_once_when_the_feeder_stays_open(broker):
    clock = LabClock(scale=600)
    bench = f"fleet-{broker.kind}-long"
    alerts = Alerts(broker, bench, clock)
    alerts.feeder(bench, "on")
    fleet = start(broker, bench, clock, 50)
    try:
        off = clock.now()
        alerts.feeder(bench, "off")
        assert clock.wait_for(lambda: len(alerts.got) >= 50, PERIOD + 120, condition=alerts.cond)
        # nothing more comes: wait as long again as the alerts took
        clock.wait_for(lambda: len(alerts.got) > 50, 60, condition=alerts.cond)
    finally:
        fleet.stop()
        alerts.bus.clear_retained(f"rig/v1/{bench}/relay/feeder/state")
        alerts.bus.close()
    assert sorted(a["device"] for a in alerts.got) == [f"m{i:06d}" for i in range(50)]
    assert {a["code"] for a in alerts.got} == {"AD1"}
    assert all(a["ts"] >= a["lost_at"] + PERIOD - 1 and a["lost_at"] >= off - 1 for a in alerts.got)


def test_a_short_interruption_raises_no_alert(broker):
    clock = LabClock(scale=60)   # the period is 3 wall s: ample for the switch back on, even on a loaded machine
    bench = f"fleet-{broker.kind}-short"
    alerts = Alerts(broker, bench, clock)
    alerts.feeder(bench, "on")
    fleet = start(broker, bench, clock, 20)
    try:
        alerts.feeder(bench, "off")
        assert clock.wait_for(lambda: not any(m.powered for m in fleet.meters), 60)
        alerts.feeder(bench, "on")
        assert clock.wait_for(lambda: all(m.powered for m in fleet.meters), 60)
        # past the period: still no alert
        assert not clock.wait_for(lambda: alerts.got, PERIOD + 30, condition=alerts.cond)
    finally:
        fleet.stop()
        alerts.bus.clear_retained(f"rig/v1/{bench}/relay/feeder/state")
        alerts.bus.close()
    assert alerts.got == []


def test_a_fleet_says_when_it_is_ready(broker):
    clock = LabClock(scale=600)
    bench = f"fleet-{broker.kind}-ready"
    seen: list[dict] = []
    cond = threading.Condition()

    def on_presence(_t, p):
        with cond:
            seen.append(p)
            cond.notify_all()

    with Bus(broker, clock=clock) as bus:
        bus.subscribe(f"rig/v1/{bench}/fleet/+/presence", on_presence)
        bus.wait_subscribed()
        fleet = start(broker, bench, clock, 45)
        try:
            assert clock.wait_for(lambda: any(p and p.get("online") for p in seen), 60, condition=cond)
        finally:
            fleet.stop()
        assert clock.wait_for(lambda: seen[-1] and not seen[-1].get("online"), 60, condition=cond)
        bus.clear_retained(f"rig/v1/{bench}/fleet/{fleet.name}/presence")
    online = next(p for p in seen if p and p.get("online"))
    assert online == {"online": True, "meters": 45, "connections": 3}
    json.dumps(seen)
