"""What the suites observe, through a lab's own parts (rig/suites/observe.py):
the meter's registers and logbook from its optical port, or its ZCL
attributes through a zigpy bridge, or the head end; the HAN tap's link
tests.  Run on the default lab and the device lab, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.config import DeviceConfig
from rig.suites.observe import Meter, link_test, link_up

pytestmark = pytest.mark.timeout(180)

DEFAULT_LAB = Path(__file__).parent.parent / "lab.yaml"


def test_the_meters_optical_port_gives_its_supply_and_its_logbook(device_bench):
    sim = device_bench(lab=DEFAULT_LAB, agent=True)
    b = sim.bench
    meter = Meter(b)
    assert meter.source == "optical" and meter.supply() is None        # a de-energised bench: a dark meter
    b.mains.on()
    meter.wait_answering(30)
    assert meter.supply() == "enabled"
    relay = b.relay("mains")
    relay.wait_switchable()
    relay.off()
    off = relay.state["changed"]
    relay.wait_switchable()
    relay.on()
    on = relay.state["changed"]
    meter.wait_answering(30)
    log = meter.event_log(since=off - 2.0)
    lost = [e for e in log if e["event"] == "supply_lost"]
    restored = [e for e in log if e["event"] == "supply_restored"]
    assert len(lost) == len(restored) == 1
    assert off - 1.0 < lost[0]["ts"] <= off and on - 1.0 < restored[0]["ts"] <= on    # whole seconds, truncated
    assert lost[0]["code"] == "0x8F57" and restored[0]["code"] == "0x8F35"
    b.dcc.disable()
    meter.wait_supply("disabled", 30)
    b.dcc.arm()
    meter.wait_supply("armed", 30)


def _bridged_esme(cfg):
    bench = cfg.bench("bench-1")
    esme = bench.devices["esme"]
    bench.devices["esme-z"] = DeviceConfig(kind="esme", id=esme.id, backend="zigpy", han={"band": "2.4GHz"},
                                           adapter={"radio": "sim", "poll_period": 5})


def test_a_bridged_meter_is_read_through_its_zigpy_bridge(device_bench):
    sim = device_bench(edit=_bridged_esme)
    b = sim.bench
    meter = Meter(b, "esme-z")
    assert meter.source == "esme-z (zigpy bridge)"
    meter.wait_supply("enabled", 60)
    b.dcc.disable()
    meter.wait_supply("disabled", 60)
    with pytest.raises(pytest.skip.Exception, match="no optical probe"):
        meter.event_log()
    assert Meter(b, "esme").source == "dcc"                # no probe, no bridge: the head end's read
    assert Meter(b, "esme").supply() == "disabled"


def test_the_tap_measures_a_link_from_the_hubs_place(device_bench):
    sim = device_bench()
    b = sim.bench
    clean = link_test(b, "ppmid", "2.4GHz", 20)
    assert clean["method"] == "tap_mac_ack" and clean["frames"] == 20 and clean["per"] < 0.5
    assert link_up(b, "ppmid")
    sim.physics.set_attenuation("attenuator_ppmid", 95.0)
    assert not link_up(b, "ppmid")
    lossy = link_test(b, "ppmid", "868MHz", 20)
    assert lossy["per"] == 1.0 and lossy["rssi"] is None


def test_the_timeline_shows_the_actuators_pushes_and_the_optical_supply():
    """The report's timeline of a black-box bench: each push at the agent's
    stamps, and the supply from the meter's optical port."""
    from rig.evidence.timeline import build_tracks

    rec = {"bench": "bench-1", "lab": {"model": {"benches": {"bench-1": {"wiring": {"meter": "esme"}}}}}}

    def state(pressed: bool, changed: float, ts: float) -> dict:
        return {"topic": "rig/v1/bench-1/actuator/esme/state",
                "payload": {"ts": ts, "buttons": {"enable": {"pressed": pressed, "changed": changed}}}}

    optical = {"topic": "rig/v1/bench-1/instrument/optical/state",
               "payload": {"ts": 105.0, "kind": "optical_probe", "summary": {"96.3.10": "2"}}}
    tracks = build_tracks(rec, [state(True, 100.0, 100.1), state(False, 102.5, 102.6), optical])
    assert tracks["buttons"].changes == [(100.0, "esme enable 2.50 s")]
    assert tracks["supply"].changes == [(105.0, "armed")]
