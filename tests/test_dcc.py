"""Outage alerts end to end: hub last gasp on its reserve -> the WAN
provider's network -> the network operator's inbox at the head end's sink
(OUT-1..OUT-6), through the bus, in lab time.  Run at clock scale 300 so
a 3-minute period takes 0.6 wall seconds; the verdicts are in lab seconds."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)

SCALE = 300


def _outage(sim, seconds: float) -> tuple[float, float]:
    """Cut mains for ``seconds`` lab seconds; returns (start, end) lab times."""
    b = sim.bench
    t0 = b.clock.now()
    sim.physics.set_mains_relay(False)
    b.esme.wait_state(lambda s: not s["powered"], 10)
    b.dwell(seconds - (b.clock.now() - t0))
    t1 = b.clock.now()
    sim.physics.set_mains_relay(True)
    b.esme.wait_state(lambda s: s["powered"], 10)
    return t0, t1


@pytest.mark.requirement("OUT-1", "OUT-3", "OUT-4")
def test_a_short_interruption_is_logged_and_alerted_as_restored_only(device_bench):
    sim = device_bench(scale=SCALE)
    b = sim.bench
    t0, t1 = _outage(sim, 60)
    restored = b.dcc.wait_alert("0x8F35", since=t0)
    assert restored["duration"] == pytest.approx(t1 - t0, abs=3)
    assert restored["inbox"] == "dno"
    b.dwell(200)
    assert not b.dcc.fetch_alerts(since=t0, code="AD1")
    log = [e["event"] for e in b.esme.event_log(since=t0) if e["event"].startswith("supply_")]
    assert log == ["supply_lost", "supply_restored"]


@pytest.mark.requirement("OUT-2", "OUT-3", "OUT-5")
def test_an_outage_past_the_period_is_alerted_by_the_wan_side(device_bench):
    sim = device_bench(scale=SCALE)
    b = sim.bench
    t0, t1 = _outage(sim, 240)
    alert = b.dcc.wait_alert("AD1", since=t0)
    assert alert["received"] - t0 == pytest.approx(180, abs=5)
    assert alert["inbox"] == "dno" and alert["device"] == "comms_hub" and alert["source"] == "wan_provider"
    # the hub's reserve (120 s) ran out before the alert was due: it came from the WAN side
    assert b.comms_hub.events("power")[-2]["state"] == "off"
    b.dcc.wait_alert("0x8F36", since=t1)


@pytest.mark.requirement("OUT-2")
@pytest.mark.parametrize("fault,due", [("outage_alert_early", 165.0), ("outage_alert_late", 220.0)])
def test_faults_that_move_the_outage_alert_are_caught(device_bench, fault, due):
    sim = device_bench(scale=SCALE, faults={"comms_hub": [fault]})
    t0, _ = _outage(sim, 240)
    alert = sim.bench.dcc.wait_alert("AD1", since=t0)
    assert alert["received"] - t0 == pytest.approx(due, abs=5)


@pytest.mark.requirement("OUT-2")
def test_the_outage_alert_period_is_the_hubs_not_the_meters(device_bench):
    """The meter's own outage period picks its restoration code; it does not
    move the WAN's outage alert."""
    sim = device_bench(scale=SCALE, settings={"esme": {"outage_alert_period": 100.0}})
    t0, t1 = _outage(sim, 150)
    sim.bench.dwell(60)
    assert not sim.bench.dcc.fetch_alerts(since=t0, code="AD1")
    sim.bench.dcc.wait_alert("0x8F36", since=t1)          # 150 s >= the meter's own 100 s


@pytest.mark.requirement("OUT-2", "OUT-5")
@pytest.mark.parametrize("device,fault", [("comms_hub", "no_outage_alert"), ("comms_hub", "no_reserve"),
                                          ("comms_hub", "drops_outage_alerts")])
def test_faults_that_lose_the_outage_alert_are_caught(device_bench, device, fault):
    sim = device_bench(scale=SCALE, faults={device: [fault]})
    t0, _ = _outage(sim, 200)
    sim.bench.dwell(10)
    assert not sim.bench.dcc.fetch_alerts(since=t0, code="AD1")


@pytest.mark.requirement("OUT-3")
def test_fault_no_restore_alert_is_caught(device_bench):
    sim = device_bench(scale=SCALE, faults={"esme": ["no_restore_alert"]})
    t0, _ = _outage(sim, 30)
    sim.bench.dwell(30)
    assert not sim.bench.dcc.fetch_alerts(since=t0, code="0x8F35")
    assert sim.bench.esme.event_log(since=t0, event="supply_restored")      # logged, not alerted


@pytest.mark.requirement("OUT-1")
def test_fault_misses_flicker_is_caught(device_bench):
    sim = device_bench(scale=60, faults={"esme": ["misses_flicker"]})
    t0, _ = _outage(sim, 2)
    sim.bench.dwell(10)
    assert not sim.bench.esme.event_log(since=t0, event="supply_lost")


@pytest.mark.safety
@pytest.mark.requirement("SUP-2")
def test_supply_state_survives_loss_of_mains(device_bench):
    sim = device_bench(scale=SCALE)
    b = sim.bench
    b.dcc.disable()
    b.dcc.arm()
    _outage(sim, 30)
    assert b.esme.wait_state(lambda s: s["powered"])["supply"] == "armed"
    assert not sim.physics.contactor
    sim.bench.dwell(10)
    assert b.esme.supply == "armed"


@pytest.mark.safety
def test_fault_reenables_after_mains_return_is_caught(device_bench):
    sim = device_bench(scale=SCALE, faults={"esme": ["reenables_after_mains_return"]})
    sim.bench.dcc.disable()
    _outage(sim, 30)
    sim.bench.esme.wait_supply("enabled")
    assert sim.physics.contactor


@pytest.mark.requirement("OUT-6")
def test_voltage_sag_and_swell_reach_the_network_operator(device_bench):
    sim = device_bench()
    b = sim.bench
    t0 = b.clock.now()
    sim.physics.set_source(voltage=200.0)
    sag = b.dcc.wait_alert("0x802C", since=t0)
    assert sag["inbox"] == "dno" and sag["voltage"] == pytest.approx(200.0)
    sim.physics.set_source(voltage=260.0)
    b.dcc.wait_alert("0x8099", since=t0)
    b.dcc.wait_alert("0x8024", since=t0)
    sim.physics.set_source(voltage=230.0)
    b.dcc.wait_alert("0x8091", since=t0)


def test_fault_no_power_quality_alerts_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["no_power_quality_alerts"]})
    t0 = sim.bench.clock.now()
    sim.physics.set_source(voltage=200.0)
    sim.bench.dwell(30)
    assert not sim.bench.dcc.fetch_alerts(since=t0, code="0x802C")


def test_alerts_carry_raise_and_arrival_times(device_bench):
    sim = device_bench()
    b = sim.bench
    t0 = b.clock.now()
    b.dcc.disable()
    b.dcc.arm()
    armed = b.dcc.wait_alert("0x8F32", since=t0)
    assert armed["name"] == "Supply Armed" and armed["inbox"] == "supplier"
    assert t0 <= armed["raised"] <= armed["received"] <= b.clock.now()
    assert any(a["code"] == "0x8F32" for a in b.dcc.alerts)
    assert b.dcc.events("alert", since=t0)
