"""The simulated bench wires the agent's actuators to the twins' buttons
through gpiozero mock pins (rig/sim/buttons.py): a press goes GPIO -> twin
as a real one goes GPIO -> button, dated by the agent's own stamps; and a
sealed twin (``backend: sealed``) is reachable only that way, its node
given to nobody on the bus."""

from __future__ import annotations

import pytest

from rig.bus import Bus, CommandError
from rig.config import ButtonActuator
from rig.contract import Node
from rig.lab import snapshot
from rig.security import Acl, principals

KEYS = {f"key_{d}": 5 + i for i, d in enumerate("0123456789")} | {"key_enter": 20}


def with_actuators(cfg, sealed: bool = False) -> None:
    bench = cfg.bench("bench-1")
    bench.actuators = {
        "esme": {"enable": ButtonActuator(pin=22)},
        "ppmid": {"enable": ButtonActuator(pin=23), "emergency_credit": ButtonActuator(pin=24),
                  **{k: ButtonActuator(pin=p) for k, p in KEYS.items()}},
    }
    if sealed:
        for name in ("esme", "ppmid"):
            bench.devices[name].backend = "sealed"


def armed(sim) -> None:
    twin = sim.world.twins["esme"]
    sim.bench.dcc.disable()
    sim.bench.dcc.arm()
    sim.bench.wait(lambda: twin.supply == "armed", 30, "meter armed")


def test_a_press_and_hold_on_the_wire_enables_the_meter_dated_by_the_agent(device_bench):
    sim = device_bench(agent=True, edit=with_actuators)
    twin, b = sim.world.twins["esme"], sim.bench
    armed(sim)
    act = b.actuator("esme")
    act.hold("enable", 2.5)                                  # no prompt: a push that only shows it
    assert twin.supply == "armed"
    act.press("enable")
    short = act.hold("enable", 1.0)                          # the prompt shows: too short a hold
    b.wait(lambda: any(e["event"] == "local_enable_refused" and "less than" in e.get("reason", "")
                       for e in twin.log), 10, "the short hold refused")
    assert twin.supply == "armed" and not sim.physics.contactor
    act.press("enable")
    hold = act.hold("enable", 2.5)
    b.wait(lambda: twin.supply == "enabled", 10, "the meter enabled by its button")
    holds = [e for e in twin.log if e["event"] == "button" and e.get("action") == "hold"]
    assert holds[-1]["seconds"] == round(hold.held, 3)       # the twin timed the push by the agent's stamps
    assert round(short.held, 3) in [h["seconds"] for h in holds]
    assert sim.physics.contactor


def test_a_dark_meters_button_does_nothing(device_bench):
    sim = device_bench(agent=True, edit=with_actuators)
    twin, b = sim.world.twins["esme"], sim.bench
    armed(sim)
    sim.physics.set_mains_relay(False)
    b.wait(lambda: not twin.powered, 10, "meter dark")
    act = b.actuator("esme")
    act.press("enable")
    act.hold("enable", 2.5)
    sim.physics.set_mains_relay(True)
    b.wait(lambda: twin.powered, 10, "meter powered")
    assert twin.supply == "armed"


def test_the_ppmid_keypad_enters_a_utrn_once(device_bench):
    sim = device_bench(agent=True, edit=with_actuators)
    twin, b = sim.world.twins["esme"], sim.bench
    before = twin.credit
    code = b.dcc.issue_utrn(10.0)
    b.actuator("ppmid").type(code)
    b.wait(lambda: twin.credit >= before + 9.99, 30, "credit added by the PPMID's keypad")
    b.actuator("ppmid").type(code)
    b.wait(lambda: any(e["event"] == "utrn_rejected" and "duplicate" in e.get("reason", "") for e in twin.log),
           30, "the second use refused")
    assert twin.credit < before + 10.01


def test_a_sealed_twin_is_reached_only_as_real_hardware(device_bench, amqtt_broker):
    sim = device_bench(agent=True, edit=lambda cfg: with_actuators(cfg, sealed=True))
    twin, b = sim.world.twins["esme"], sim.bench
    with Bus(amqtt_broker) as bus:
        topics = snapshot(bus, "bench-1", everything=True)
    assert not [t for t in topics if "/device/esme/" in t or "/device/ppmid/" in t], sorted(topics)
    assert any("/device/comms_hub/" in t for t in topics)
    with pytest.raises(CommandError) as info:                 # nothing serves the sealed node
        b.request(Node("bench-1", "device", "esme"), "status", timeout=1.0)
    assert info.value.code == "timeout"
    armed(sim)                                               # the head end reaches it over WAN and HAN
    assert b.dcc.read()["supply"] == "armed"
    act = b.actuator("ppmid")                                # and its PPMID's buttons reach it over the HAN
    act.press("enable")
    act.hold("enable", 2.5)
    b.wait(lambda: twin.supply == "enabled", 30, "enabled from the sealed PPMID")
    acl = Acl(principals(sim.cfg))
    assert not acl.may_publish("sim-bench-1", None, "rig/v1/bench-1/device/esme/state")
    assert not acl.may_publish("sim-bench-1", None, "rig/v1/bench-1/device/ppmid/cmd/press")
    assert acl.may_publish("sim-bench-1", None, "rig/v1/bench-1/device/comms_hub/state")
    assert acl.may_publish("agent-bench-1", None, "rig/v1/bench-1/actuator/esme/state")


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
def test_the_broker_drops_what_anyone_says_on_a_sealed_twins_node(kind):
    """labs/blackbox.yaml's broker, as `rig up` starts it: its simulated world
    may speak on the hub's node, not on the sealed meter's."""
    import threading

    from conftest import ROOT, require_mosquitto
    from rig.broker import Broker
    from rig.config import BrokerConfig, load_lab

    if kind == "mosquitto":
        require_mosquitto()
    cfg = load_lab(ROOT / "labs" / "blackbox.yaml")
    broker = Broker.start(BrokerConfig(kind=kind, port=0), lab=cfg)
    try:
        seen: list[str] = []
        got = threading.Event()
        with Bus(broker.endpoint.as_user("admin", keep_store=True), client_id="watch") as watch:
            watch.subscribe("rig/v1/bench-1/device/#", lambda t, _p: (seen.append(t), got.set()))
            watch.wait_subscribed()
            with Bus(broker.endpoint.as_user("sim-bench-1"), client_id="sealed-world") as world:
                world.publish("rig/v1/bench-1/device/esme/state", {"supply": "enabled"})
                world.publish("rig/v1/bench-1/device/esme/cmd/press", {"button": "enable"})
                world.publish("rig/v1/bench-1/device/comms_hub/state", {"power": "mains"})   # after: in order
                world.flush()
            assert got.wait(10)
            watch.flush()
        assert seen == ["rig/v1/bench-1/device/comms_hub/state"], seen
    finally:
        broker.stop()
