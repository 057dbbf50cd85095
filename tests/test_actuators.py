"""Button actuators on the controller agent (rig/actuator.py): released at
rest and whenever the bench goes safe (E-stop, lost lease, safe, exit),
pressing only under the lease, interlocks, and every edge time-stamped by
the agent with the lab clock."""

from __future__ import annotations

import time

import pytest

from conftest import LABS
from rig.actuator import ActuationError
from rig.agent import Agent
from rig.bus import CommandError
from rig.clock import LabClock
from rig.config import ConfigError, load_lab, load_lab_text
from rig.lab import Lab

#: lab seconds an edge may come late on a loaded 2-core machine at x60 (0.25 wall s)
JITTER = 15.0


@pytest.fixture
def cfg():
    return load_lab(LABS / "actuators.yaml")


@pytest.fixture
def agent(broker, cfg):
    with Agent(cfg, "bench-1", broker, LabClock(scale=60)) as a:
        yield a


@pytest.fixture
def lab(broker, cfg, agent):
    lab = Lab.open(cfg, endpoint=broker)
    yield lab
    lab.close()


def level(agent, pin: int) -> bool:
    return bool(agent.factory.pin(pin).state)


def test_buttons_rest_released_and_pressing_needs_the_lease(lab, agent):
    assert not level(agent, 22) and not level(agent, 24)
    assert level(agent, 23)                       # active-low: released is high
    observer = lab.bench("bench-1", lease=False)
    with pytest.raises(CommandError) as info:
        observer.actuator("esme").press("enable")
    assert info.value.code == "not_leased" and info.value.error.requirement == "LAB-3"
    assert observer.actuator("esme").release() is False      # towards safe: no lease needed, nothing to do
    assert agent.status()["actuators"] == {"esme": ["emergency_credit", "enable"],
                                           "ppmid": ["enable", "key_1", "key_2", "key_enter"]}


def test_a_press_and_a_hold_are_timed_by_the_agent(lab, agent):
    bench = lab.bench("bench-1")
    esme = bench.actuator("esme")
    t0 = bench.clock.now()
    press = esme.press("enable")
    assert t0 <= press.pressed and press.held >= 0.2 and press.held < 0.2 + JITTER
    hold = esme.hold("enable", 2.5)
    assert press.released <= hold.pressed and 2.5 <= hold.held < 2.5 + JITTER
    assert hold.released <= bench.clock.now() and not level(agent, 22)
    states = [s.state for s in agent.factory.pin(22).states]
    assert states[-4:] == [True, False, True, False]          # two pushes on the wire, nothing else
    last = esme.state["last"]
    assert last["id"] == hold.id and last["complete"] and last["steps"][0]["held"] == round(hold.held, 4)
    solenoid = esme.press("emergency_credit")                # active-low: the wire went low, then high
    assert solenoid.held >= 0.2 and level(agent, 23)
    assert [s.state for s in agent.factory.pin(23).states][-2:] == [False, True]


def test_a_keypad_sequence_presses_each_key_in_order(lab, agent):
    bench = lab.bench("bench-1")
    typed = bench.actuator("ppmid").type("121")
    assert [s["button"] for s in typed.steps] == ["key_1", "key_2", "key_1", "key_enter"]
    times = [t for s in typed.steps for t in (s["pressed"], s["released"])]
    assert times == sorted(times) and all(s["held"] >= 0.2 for s in typed.steps)
    with pytest.raises(CommandError) as info:
        bench.actuator("ppmid").type("3")                    # no actuator on key_3
    assert info.value.code == "invalid" and "key_3" in info.value.reason


def test_interlocks(lab, agent):
    bench = lab.bench("bench-1")
    with pytest.raises(CommandError) as info:
        bench.actuator("esme").hold("emergency_credit", 6.0)  # its max_hold is 5 lab s
    assert info.value.code == "refused" and info.value.error.requirement == "LAB-2" and "max_hold" in info.value.reason
    with pytest.raises(CommandError) as info:
        bench.actuator("esme").press("display")               # a button with no actuator
    assert info.value.code == "invalid"
    started = bench.request(bench.actuator("esme").node, "hold", {"button": "enable", "seconds": 30.0})
    with pytest.raises(CommandError) as info:                 # one finger per device
        bench.actuator("esme").press("emergency_credit")
    assert info.value.code == "busy" and started["id"] in info.value.reason
    bench.actuator("esme").release()


def test_an_estop_releases_a_held_button_at_once_and_latches(lab, agent):
    bench = lab.bench("bench-1")
    esme = bench.actuator("esme")
    bench.request(esme.node, "hold", {"button": "enable", "seconds": 50.0})
    bench.wait(lambda: level(agent, 22), 10, "the button down")
    t0 = time.monotonic()
    bench.estop("operator pressed stop")
    bench.wait(lambda: not level(agent, 22), 10, "the button up")
    assert time.monotonic() - t0 < 0.5                        # not at the end of the 50 s hold (0.8 wall s)
    last = esme._state.wait_for(lambda s: (s.get("last") or {}).get("interrupted"), 10, min_wall=2)["last"]
    assert "estop" in last["interrupted"] and not last["complete"]
    with pytest.raises(CommandError) as info:
        esme.press("enable")
    assert info.value.code == "estop"


def test_a_lost_lease_releases_a_held_button_within_the_heartbeat_timeout(lab, agent):
    bench = lab.bench("bench-1")
    bench.request(bench.actuator("esme").node, "hold", {"button": "enable", "seconds": 400.0})   # 6.7 wall s
    bench.wait(lambda: level(agent, 22), 10, "the button down")
    bench._hb_stop.set()                                      # the orchestrator dies without a release
    t0 = time.monotonic()
    while level(agent, 22) and time.monotonic() - t0 < 5:
        agent._stop.wait(0.01)
    assert not level(agent, 22) and time.monotonic() - t0 <= agent.heartbeat_timeout + 0.5
    state = bench.actuator("esme")._state
    last = state.wait_for(lambda s: (s.get("last") or {}).get("interrupted"), 10, min_wall=2)["last"]
    assert "heartbeat lost" in last["interrupted"]
    bench._key = None


def test_the_agent_leaves_every_button_released_when_it_stops(broker, cfg):
    agent = Agent(cfg, "bench-1", broker, LabClock(scale=60)).start()
    lab = Lab.open(cfg, endpoint=broker)
    try:
        bench = lab.bench("bench-1")
        bench.request(bench.actuator("esme").node, "hold", {"button": "enable", "seconds": 50.0})
        bench.wait(lambda: level(agent, 22), 10, "the button down")
        agent.stop("test exit")
        assert not agent.factory.pin(22).state and agent.factory.pin(23).state     # released, the low one high
        assert "test exit" in agent.safe_events[-1]["reason"] and "esme" in agent.safe_events[-1]["outputs"]
        bench._key = None
    finally:
        lab.close()


def test_a_cancelled_actuation_is_an_error_not_a_press(lab, agent):
    bench = lab.bench("bench-1")
    esme = bench.actuator("esme")
    real = agent.actuators["esme"].start

    def start_cancelled(op, steps, sender):
        act = agent.actuators["esme"]
        with act._lock:                  # the timer thread waits for the lock before its first edge
            out = real(op, steps, sender)
            act.force_safe("safe requested before the first edge")
        return out
    agent.actuators["esme"].start = start_cancelled
    try:
        with pytest.raises(ActuationError, match="pressed nothing"):
            esme.press("enable")
    finally:
        agent.actuators["esme"].start = real


def test_actuator_configuration_errors_name_the_file_line_and_key():
    base = (LABS / "actuators.yaml").read_text()
    cases = [
        (base.replace("key_enter: {pin: 12}", "key_enter: {pin: 17}"), "actuators.ppmid.key_enter.pin",
         "already used by relays.mains.pin"),
        (base.replace("        enable: {pin: 24}", "        flush: {pin: 24}"), "actuators.ppmid.flush",
         "a ppmid has no button 'flush'"),
        (base.replace("    actuators:\n      esme:", "    actuators:\n      gsme:"), "actuators.gsme",
         "unknown device 'gsme'"),
    ]
    for text, key, message in cases:
        with pytest.raises(ConfigError) as info:
            load_lab_text(text, "lab.yaml")
        assert info.value.key.endswith(key) and message in info.value.message and info.value.line > 0, info.value
