"""The controller agent: safe states, lease, interlocks, E-stop, heartbeat
watchdog; and the same agent as a process (SIGTERM, SIGKILL)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rig.agent import Agent
from rig.bus import Bus, CommandError
from rig.clock import LabClock
from rig.contract import Node, agent_node
from rig.lab import Lab

from conftest import LABS


@pytest.fixture
def agent(broker, minimal_lab):
    clock = LabClock(scale=60)
    with Agent(minimal_lab, "bench-1", broker, clock) as a:
        yield a


@pytest.fixture
def lab(broker, minimal_lab, agent):
    lab = Lab.open(minimal_lab, endpoint=broker)
    yield lab
    lab.close()


def test_outputs_start_in_their_safe_state(agent):
    assert agent.relays["mains"].is_on is False        # safe_state: off
    assert agent.relays["aux"].is_on is True           # safe_state: on
    pin = agent.factory.pin(17)
    assert pin.state is False


def test_switching_away_from_safe_needs_the_lease(lab):
    observer = lab.bench("bench-1", lease=False)
    with pytest.raises(CommandError) as info:
        observer.relay("mains").on()
    assert info.value.code == "not_leased" and info.value.error.requirement == "LAB-3"
    observer.relay("aux").on()            # towards its safe state: always allowed


def test_leased_bench_switches_and_the_agent_confirms(lab, agent):
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    assert agent.relays["mains"].is_on and agent.factory.pin(17).state is True
    assert bench.relay("mains").is_on
    assert bench.status["lease"]["holder"] == lab.holder


def test_minimum_switching_interval_is_enforced(lab, agent):
    bench = lab.bench("bench-1")
    mains = bench.relay("mains")
    mains.on()
    with pytest.raises(CommandError) as info:
        mains.off()
    assert info.value.code == "refused" and info.value.error.requirement == "LAB-2"
    assert "minimum switching interval" in info.value.reason
    assert agent.relays["mains"].is_on
    mains.wait_switchable()
    mains.off()
    assert not agent.relays["mains"].is_on


def test_second_holder_cannot_lease_a_leased_bench(lab, broker, minimal_lab):
    lab.bench("bench-1")
    other = Lab.open(minimal_lab, endpoint=broker, holder="someone-else")
    try:
        with pytest.raises(CommandError) as info:
            other.bench("bench-1")
        assert info.value.error.requirement == "LAB-3"
        assert lab.holder in info.value.reason
    finally:
        other.close()


def test_releasing_the_lease_puts_every_output_safe(lab, agent):
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    bench.relay("aux").off()
    bench.release()
    assert not agent.relays["mains"].is_on and agent.relays["aux"].is_on
    assert agent.safe_events[-1]["reason"].startswith("lease released")


def test_lost_heartbeat_makes_the_bench_safe_within_the_timeout(lab, agent):
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    state = bench.watch(Node("bench-1", "relay", "mains").state)
    bench._hb_stop.set()                    # the orchestrator stops beating, without releasing
    t0 = time.monotonic()
    off = state.wait_for(lambda s: s["state"] == "off", timeout=600, min_wall=5)
    elapsed = time.monotonic() - t0
    assert off is not None and "heartbeat lost" in off["reason"]
    assert elapsed <= agent.heartbeat_timeout + 0.5
    with pytest.raises(CommandError) as info:   # the lease went with the heartbeat
        bench.relay("mains").on()
    assert info.value.code == "not_leased"
    bench._key = None                       # nothing left to release


def test_estop_input_forces_safe_and_latches_until_reset(lab, agent):
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    estop_pin = agent.factory.pin(4)
    estop_pin.drive_low()                                     # button pressed (pull-up input)
    bench.wait(lambda: not agent.relays["mains"].is_on, 60, "E-stop made mains safe")
    bench.wait(lambda: bench.status and bench.status["estop"]["latched"], 60, "E-stop latched on the bus")
    bench.relay("mains").wait_switchable()
    with pytest.raises(CommandError) as info:
        bench.relay("mains").on()
    assert info.value.code == "estop"
    with pytest.raises(CommandError) as info:                 # still pressed: no reset
        bench.reset_estop()
    assert "still pressed" in info.value.reason
    estop_pin.drive_high()
    bench.reset_estop()
    bench.relay("mains").on()
    assert agent.relays["mains"].is_on


def test_software_estop_needs_no_lease(lab, agent):
    holder = lab.bench("bench-1")
    holder.relay("mains").on()
    other = Lab.open(lab.cfg, endpoint=lab.bus.endpoint, holder="operator")
    try:
        other.bench("bench-1", lease=False).estop("operator pressed stop")
    finally:
        other.close()
    assert not agent.relays["mains"].is_on and agent.estop_latched


def test_stop_leaves_everything_safe_and_presence_offline(broker, minimal_lab):
    observer = Bus(broker, client_id="obs-stop").connect()
    presence = observer.watch(agent_node("bench-1").presence)
    a = Agent(minimal_lab, "bench-1", broker, LabClock(scale=60)).start()
    lab = Lab.open(minimal_lab, endpoint=broker)
    try:
        lab.bench("bench-1").relay("mains").on()
        a.stop()
        assert not a.relays["mains"].is_on
        assert presence.wait_for(lambda p: not p["online"], 5, min_wall=2)
    finally:
        lab.bus.close()
        observer.close()


# ----------------------------------------------------------------------------- as processes
def spawn_agent(broker, lab_file=LABS / "minimal.yaml"):
    env = dict(os.environ, RIG_BROKER_URL=broker.url, **LabClock(scale=60).env())
    return subprocess.Popen([sys.executable, "-m", "rig", "agent", "--bench", "bench-1", "--lab", str(lab_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_online(watch, proc, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if watch.wait_for(lambda p: p["online"], 0.01, min_wall=0.2):
            return
        assert proc.poll() is None, proc.stdout.read()
    raise AssertionError("agent did not come online")


def test_sigterm_puts_relays_safe_and_presence_offline(broker, minimal_lab):
    observer = Bus(broker, client_id="obs-term").connect()
    presence = observer.watch(agent_node("bench-1").presence)
    mains = observer.watch(Node("bench-1", "relay", "mains").state)
    proc = spawn_agent(broker)
    lab = None
    try:
        wait_online(presence, proc)
        lab = Lab.open(minimal_lab, endpoint=broker)
        lab.bench("bench-1").relay("mains").on()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        off = mains.wait_for(lambda s: s["state"] == "off", 5, min_wall=2)
        assert off is not None and "SIGTERM" in off["reason"]
        p = presence.wait_for(lambda p: not p["online"], 5, min_wall=2)
        assert p is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        if lab:
            lab.bus.close()
        observer.close()


def test_killed_orchestrator_leaves_the_bench_safe_within_the_heartbeat_timeout(broker, minimal_lab):
    """SIGKILL the process that holds the lease with mains on: no release, no
    goodbye; the agent's watchdog must open the relay on its own."""
    agent = Agent(minimal_lab, "bench-1", broker, LabClock(scale=60)).start()
    observer = Bus(broker, client_id="obs-orch").connect()
    mains = observer.watch(Node("bench-1", "relay", "mains").state)
    script = textwrap.dedent(f"""
        import threading
        from rig.broker import Endpoint
        from rig.config import load_lab
        from rig.lab import Lab
        lab = Lab.open(load_lab({str(LABS / 'minimal.yaml')!r}), endpoint=Endpoint.from_url({broker.url!r}))
        lab.bench("bench-1").relay("mains").on()
        print("ON", flush=True)
        threading.Event().wait()
    """)
    orch = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert orch.stdout.readline().strip() == "ON"
        assert agent.relays["mains"].is_on
        assert mains.wait_for(lambda s: s["state"] == "on", 60, min_wall=5)
        os.kill(orch.pid, signal.SIGKILL)
        t0 = time.monotonic()
        off = mains.wait_for(lambda s: s["state"] == "off" and "heartbeat" in s["reason"], 600, min_wall=10)
        elapsed = time.monotonic() - t0
        assert off is not None, "the relay stayed on after its orchestrator died"
        assert "heartbeat lost" in off["reason"]
        assert elapsed <= agent.heartbeat_timeout + 0.5, f"safe after {elapsed:.2f} s"
        assert not agent.relays["mains"].is_on
    finally:
        if orch.poll() is None:
            orch.kill()
        observer.close()
        agent.stop()


def test_killed_agent_shows_offline(broker):
    observer = Bus(broker, client_id="obs-kill-agent").connect()
    presence = observer.watch(agent_node("bench-1").presence)
    proc = spawn_agent(broker)
    try:
        wait_online(presence, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        p = presence.wait_for(lambda p: not p["online"], 10, min_wall=10)
        assert p is not None and p["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
        observer.close()
