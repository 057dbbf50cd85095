"""The HAN link test (HAN-3, HAN-4): the comms hub's ``link_test`` op on the
simulated medium, and the zigpy bridge's on a bridged meter.  The
propagation suite's attenuation sweeps stand on it."""

from __future__ import annotations

import pytest

from rig.bus import CommandError
from rig.devices import CommsHubHandle
from rig import propagation as prop

from test_adapters import _bridged_esme   # the meter seen through a zigpy bridge on the simulated medium

pytestmark = pytest.mark.timeout(120)

TEST_PSDU = 50   # a Metering Read Attributes request with the stack's overhead


def _single_attempt_per(sim, path: str, attenuation: float) -> float:
    """What the link budget says one transmission (frame and ACK) fails with."""
    cfg = sim.cfg.bench("bench-1").rf_paths[path]
    budget = prop.link_budget(cfg.band, sim.cfg.han.bands[cfg.band], cfg.premises, attenuation)
    return 1 - (1 - budget.per(TEST_PSDU)) * (1 - budget.per(prop.ACK_PSDU_OCTETS))


def test_link_test_counts_single_attempts_as_the_link_budget_says(device_bench):
    sim = device_bench()
    hub = sim.bench.comms_hub
    cfg = sim.cfg.bench("bench-1").rf_paths["ppmid-2g4"]
    clean = hub.link_test("ppmid", "2.4GHz", frames=100)
    expected_rssi = prop.link_budget("2.4GHz", sim.cfg.han.bands["2.4GHz"], cfg.premises, 0).rssi
    assert clean["frames"] == 100 and clean["acked"] == 100 and clean["per"] == 0
    assert clean["method"] == "mac_single_attempt" and clean["retries"] == 0 and clean["psdu_octets"] == TEST_PSDU
    assert clean["rssi"] == expected_rssi and 0 < clean["lqi"] <= 255

    # at the edge a single attempt fails often; with MAC retries it would hardly ever
    edge = prop.max_attenuation_db(sim.cfg.han.bands["2.4GHz"], cfg.premises, per_limit=0.3, psdu_octets=TEST_PSDU)
    sim.physics.set_attenuation("attenuator_ppmid", round(edge))
    expected = _single_attempt_per(sim, "ppmid-2g4", round(edge))
    assert 0.1 < expected < 0.9
    mid = hub.link_test("ppmid", "2.4GHz", frames=400)
    assert mid["frames"] == 400
    assert mid["per"] == pytest.approx(expected, abs=0.1)         # 4 standard deviations of 400 frames
    assert mid["rssi"] == expected_rssi - round(edge)

    # past the edge at 2.4 GHz, while 868 MHz over the same premises holds
    sim.physics.set_attenuation("attenuator_ppmid", 45)
    dead = hub.link_test("ppmid", "2.4GHz", frames=50)
    assert dead["per"] == 1.0 and dead["acked"] == 0 and dead["rssi"] is None and dead["lqi"] == 0
    assert hub.link_test("ppmid", "868MHz", frames=50)["per"] == 0.0


def test_link_test_leaves_the_devices_link_state_alone(device_bench):
    sim = device_bench()
    link = sim.part("CommsHub").radio.link("ppmid", "2.4GHz")
    sim.physics.set_attenuation("attenuator_ppmid", 45)
    failures = link.failures
    assert sim.bench.comms_hub.link_test("ppmid", "2.4GHz", frames=200)["per"] == 1.0
    # 200 lost test frames did not count against the link; the devices' own
    # traffic meanwhile (a poll or two) may have, which is what the link is for
    assert link.failures - failures < 20


def test_link_test_refuses_what_it_cannot_test(device_bench):
    sim = device_bench(faults={"comms_hub": ["no_reserve"]})
    hub = sim.bench.comms_hub
    with pytest.raises(CommandError, match="no device 'nobody' on the HAN; devices: .*ppmid") as exc:
        hub.link_test("nobody")
    assert exc.value.code == "invalid"
    with pytest.raises(CommandError, match="gsme and the hub share no band 2.4GHz"):
        hub.link_test("gsme", "2.4GHz")
    assert hub.link_test("gsme", frames=10)["band"] == "868MHz"          # the band they share
    sim.physics.set_mains_relay(False)                                   # no reserve: the hub goes dark at once
    hub.wait_state(lambda s: s.get("power") == "off", 30, "hub dark")
    with pytest.raises(CommandError, match="dark"):
        hub.link_test("ppmid")


def test_zigpy_bridge_link_test_and_the_handle_falls_back_to_it(device_bench):
    sim = device_bench(edit=_bridged_esme)
    z = sim.bench.device("esme-z")
    z.wait_state(lambda s: s.get("supply") == "enabled", 60, "bridged meter read")
    result = z.request("link_test", frames=10)
    assert result["method"] == "zcl_round_trip" and result["frames"] == 10 and result["per"] == 0.0
    assert result["rssi"] is not None and result["lqi"] > 0
    with pytest.raises(CommandError, match="tests only its own device"):
        z.request("link_test", peer="ppmid")
    # a "hub" without link_test (here the IHD's node): the handle asks the peer's own node
    no_op_hub = CommsHubHandle(sim.bench, "ihd")
    assert no_op_hub.link_test("esme-z", frames=5)["method"] == "zcl_round_trip"
