"""Faults (issue 10, items 4 to 6), on both brokers where they apply: the
broker killed and restarted mid-run, an agent killed or frozen, a network
partition, an instrument that stops answering, the agent's own threads
failing, and a disk that fills up during a run.  Each asserts what the
bench and the caller see; deadlines are wall seconds where the rig's
safety is wall time (the heartbeat timeout), with an explicit allowance
for a loaded 2-core machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rig.agent import Agent
from rig.broker import Endpoint, mosquitto_path
from rig.bus import Bus, BusError, CommandError, CommandTimeout
from rig.clock import LabClock
from rig.contract import LAB_CLOCK, Node, agent_node
from rig.lab import Lab

from conftest import LABS, ROOT, _clear_retained
from netfault import KillableBroker, TcpProxy

pytestmark = pytest.mark.timeout(300)

#: wall seconds a safety reaction may take beyond its timeout on a loaded machine
JITTER = 1.0


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_kind(request):
    if request.param == "mosquitto" and mosquitto_path() is None:
        if os.environ.get("RIG_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("mosquitto is required here (RIG_REQUIRE_MOSQUITTO=1) but not installed")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    return request.param


def relay_node(name: str = "mains") -> Node:
    return Node("bench-1", "relay", name)


def spawn_agent(endpoint: Endpoint, clock: LabClock, lab_file: Path) -> subprocess.Popen:
    """`rig agent` as a process of its own, on the given clock."""
    env = dict(os.environ, RIG_BROKER_URL=endpoint.url, **clock.env())
    return subprocess.Popen([sys.executable, "-m", "rig", "agent", "--bench", "bench-1", "--lab", str(lab_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_agent_online(bus: Bus, proc: subprocess.Popen, seconds: float = 30.0) -> None:
    presence = bus.watch(agent_node("bench-1").presence)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if presence.wait_for(lambda p: p.get("online") and p.get("client", "").startswith("agent-"), 0,
                             min_wall=0.2):
            return
        assert proc.poll() is None, proc.stdout.read()
    raise AssertionError("the agent did not come online")


# ----------------------------------------------------------------------------- the broker killed and restarted
def test_broker_killed_and_restarted_mid_run(broker_kind, minimal_lab):
    with KillableBroker(broker_kind) as broker:
        clock = LabClock(scale=60)
        agent = Agent(minimal_lab, "bench-1", broker.endpoint, clock).start()
        lab = None
        trips: list[str] = []
        trip = agent.trip_estop
        agent.trip_estop = lambda reason: (trips.append(reason), trip(reason))[-1]
        try:
            lab = Lab.open(minimal_lab, endpoint=broker.endpoint)
            bench = lab.bench("bench-1")
            bench.relay("mains").on()
            killed = time.monotonic()
            broker.kill()
            # the outage outlasts the heartbeat timeout: the agent puts the bench safe by itself
            assert clock.wait_for(lambda: not agent.relays["mains"].is_on,
                                  clock.lab_seconds(agent.heartbeat_timeout + JITTER)), "mains stayed on"
            assert time.monotonic() - killed <= agent.heartbeat_timeout + JITTER
            assert "heartbeat lost" in agent.safe_events[-1]["reason"]
            # a request meanwhile is answered with an error that says what is wrong ...
            with pytest.raises(CommandTimeout) as info:
                lab.bus.request(agent.node, "status")
            assert "broker" in info.value.reason and "unreachable" in info.value.reason
            # ... and one given longer gets its reply once the broker is back, and runs once
            result: dict = {}

            def send() -> None:
                try:
                    result["reply"] = lab.bus.request(agent.node, "estop.trip", {"reason": "during the outage"},
                                                      timeout=clock.lab_seconds(40))
                except Exception as exc:  # noqa: BLE001 - reported below
                    result["error"] = exc

            sender = threading.Thread(target=send)
            sender.start()
            assert clock.wait_for(lambda: lab.bus._pending, 600), "the request was never sent"
            broker.start()
            sender.join(60)
            assert result.get("reply") == {"latched": True}, result
            assert trips == ["during the outage"]
            # the restarted broker knows the lab's retained state again
            with Bus(broker.endpoint, clock=clock) as observer:
                def seen(topic, predicate):
                    return observer.watch(topic).wait_for(predicate, timeout=clock.lab_seconds(10), min_wall=10)

                assert seen(LAB_CLOCK, lambda c: c.get("scale") == 60), "the lab clock is gone"
                assert seen(agent.node.state, lambda s: s["estop"]["latched"] and s["lease"] is None)
                assert seen(relay_node().state, lambda s: s["state"] == "off"), "relay state missing or wrong"
                assert seen(agent.node.presence, lambda p: p["online"])
            # the orchestrator is told its lease ended with the outage
            with pytest.raises(CommandError) as info:
                bench.request(relay_node("aux"), "set", {"state": "off"})
            assert info.value.code in ("not_leased", "estop")
            assert agent.relays["aux"].is_on and not agent.relays["mains"].is_on
        finally:
            if lab is not None:
                lab.close()
            agent.stop()


# ----------------------------------------------------------------------------- an agent killed or frozen
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_the_simulated_mains_opens_when_the_agent_is_killed_or_frozen(broker, instruments_lab, how):
    """SIGKILL: the broker publishes the agent's Last Will.  SIGSTOP (a hung
    process; a Pi that froze): no Last Will comes (amqtt never sends one on
    keepalive expiry, mosquitto only after 1.5 keepalives), so the simulated
    bench must notice the silence itself, as a hardware fail-safe would."""
    from rig.sim.world import World

    clock = LabClock(scale=60)
    timeout = instruments_lab.bench("bench-1").controller.heartbeat_timeout
    proc = lab = None
    try:
        with World(instruments_lab, "bench-1", broker, clock) as world:
            proc = spawn_agent(broker, clock, LABS / "instruments.yaml")
            wait_agent_online(world.bus, proc)
            lab = Lab.open(instruments_lab, endpoint=broker)
            lab.bench("bench-1").relay("mains").on()
            assert clock.wait_for(lambda: world.physics.mains_relay, 600)
            os.kill(proc.pid, getattr(signal, how))
            t0 = time.monotonic()
            opened = clock.wait_for(lambda: not world.physics.mains_relay, clock.lab_seconds(timeout + JITTER))
            elapsed = time.monotonic() - t0
            assert opened, f"the simulated mains stayed closed {elapsed:.1f} s after the agent's {how}"
            assert elapsed <= timeout + JITTER
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        if lab is not None:
            lab.bus.close()   # no lease release: the agent is gone
        _clear_retained(broker)


# ----------------------------------------------------------------------------- a partition
def test_a_partition_between_agent_and_broker_leaves_the_bench_safe(broker, instruments_lab):
    """The agent's link to the broker stops carrying anything (nothing is
    lost: TCP holds it).  The agent hears no heartbeat and goes safe; the
    simulated bench hears no agent and opens the mains; the orchestrator's
    command meanwhile times out, and once the link heals it is not run late."""
    from rig.sim.world import World

    clock = LabClock(scale=60)
    timeout = instruments_lab.bench("bench-1").controller.heartbeat_timeout
    mains = relay_node()
    lab = None
    try:
        with World(instruments_lab, "bench-1", broker, clock) as world, \
                TcpProxy((broker.host, broker.port)) as proxy:
            via = replace(broker, port=proxy.port)
            with Agent(instruments_lab, "bench-1", via, clock) as agent:
                lab = Lab.open(instruments_lab, endpoint=broker)
                bench = lab.bench("bench-1")
                bench.relay("mains").on()
                assert clock.wait_for(lambda: world.physics.mains_relay, 600)
                proxy.pause()
                t0 = time.monotonic()
                safe = clock.wait_for(lambda: not agent.relays["mains"].is_on and not world.physics.mains_relay,
                                      clock.lab_seconds(timeout + JITTER))
                elapsed = time.monotonic() - t0
                assert safe, (f"after {elapsed:.1f} s: agent relay on={agent.relays['mains'].is_on}, "
                              f"simulated mains closed={world.physics.mains_relay}")
                assert elapsed <= timeout + JITTER
                with pytest.raises(CommandTimeout):
                    bench.request(mains, "set", {"state": "on"})
                proxy.resume()
                # answered after the held command (one connection, in order): that one did not run
                assert lab.bus.request(agent.node, "status", timeout=600)["lease"] is None
                assert not agent.relays["mains"].is_on
                with pytest.raises(CommandError) as info:
                    bench.request(mains, "set", {"state": "on"})
                assert info.value.code == "not_leased"
                assert agent.bus.connected and not world.physics.mains_relay
    finally:
        if lab is not None:
            lab.close()
        _clear_retained(broker)


# ----------------------------------------------------------------------------- safe-direction commands at the agent
def test_safe_direction_commands_are_never_refused_as_expired(broker, minimal_lab):
    clock = LabClock(scale=60)
    with Agent(minimal_lab, "bench-1", broker, clock) as agent:
        lab = Lab.open(minimal_lab, endpoint=broker)
        try:
            bench = lab.bench("bench-1")
            bench.relay("mains").on()
            bench.relay("aux").off()                       # away from its safe state (on)
            old = clock.now() - 3600
            with pytest.raises(CommandError) as info:      # away from safe, expired: refused
                bench.request(relay_node("mains"), "set", {"state": "on"}, expires=old)
            assert info.value.code == "expired"
            bench.request(relay_node("aux"), "set", {"state": "on"}, expires=old)   # to safe, expired: runs
            assert agent.relays["aux"].is_on
            assert bench.request(agent.node, "safe", expires=old)["changed"] == ["mains"]
            assert bench.request(agent.node, "estop.trip", {"reason": "late"}, expires=old) == {"latched": True}
            assert agent.estop_latched and not agent.relays["mains"].is_on
        finally:
            lab.close()


def test_estop_trip_does_not_wait_behind_instrument_io(amqtt_broker, instruments_lab):
    """The analyser stops answering in the middle of a read (the link to it
    is cut off): the read holds the instrument queue until its timeout.  An
    E-stop trip sent after it is answered, and the mains opened, while the
    read still waits."""
    from rig.sim.world import World

    clock = LabClock(scale=60)
    cfg = instruments_lab.model_copy(deep=True)
    with World(instruments_lab, "bench-1", amqtt_broker, clock) as world:
        twin = next(p for p in world.parts if getattr(p, "name", None) == "analyser")
        port = int(twin.address.split("::")[2])
        with TcpProxy(("127.0.0.1", port)) as proxy:
            analyser = cfg.bench("bench-1").instruments["analyser"]
            analyser.address, analyser.timeout = proxy.address, 60.0
            with Agent(cfg, "bench-1", amqtt_broker, clock) as agent:
                lab = Lab.open(cfg, endpoint=amqtt_broker)
                try:
                    bench = lab.bench("bench-1")
                    bench.relay("mains").on()
                    proxy.pause()
                    read: dict = {}
                    reader = threading.Thread(target=lambda: read.update(
                        r=bench.request(Node("bench-1", "instrument", "analyser"), "read",
                                        timeout=clock.lab_seconds(90))))
                    reader.start()
                    assert bench.request(agent.node, "estop.trip", {"reason": "operator"}) == {"latched": True}
                    assert reader.is_alive() and not read, "the trip waited for the instrument"
                    assert not agent.relays["mains"].is_on
                    proxy.resume()
                    reader.join(60)
                    assert "r" in read
                finally:
                    proxy.resume()
                    lab.close()


# ----------------------------------------------------------------------------- no thread dies silently
def test_the_agent_goes_safe_and_exits_non_zero_when_its_bus_loop_dies(broker, tmp_path):
    """paho's network loop ends (here: an error injected into its I/O step):
    the agent can no longer hear a heartbeat or an E-stop, so it puts every
    output safe and exits non-zero for its supervisor to restart it."""
    script = textwrap.dedent(f"""
        import atexit, sys
        from rig import agent as agent_mod
        from rig.cli import main

        start = agent_mod.Agent._start

        def _start(self):
            started = start(self)
            self.relays["mains"].set(True, reason="test: as if commanded")
            pin = self.factory.pin(17)
            atexit.register(lambda: print("MAINS PIN", pin.state, flush=True))
            print("MAINS ON", self.relays["mains"].is_on, flush=True)

            def broken(*_a, **_k):
                raise OSError("injected: the network loop's I/O fails")

            self.bus._client._loop = broken
            return started

        agent_mod.Agent._start = _start
        main(["agent", "--bench", "bench-1", "--lab", {str(LABS / 'minimal.yaml')!r}])
    """)
    env = dict(os.environ, RIG_BROKER_URL=broker.url, **LabClock(scale=60).env())
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the agent kept running, deaf, after its network loop died:\n{out[-2000:]}")
    assert "MAINS ON True" in out
    assert proc.returncode != 0, out[-2000:]
    assert "network loop died" in out
    assert "MAINS PIN False" in out, out[-2000:]


def test_a_watchdog_that_raises_is_logged_and_restarted(broker, minimal_lab, caplog):
    """The heartbeat watchdog failing once (here its status publish raises)
    must not leave later leases unwatched."""
    clock = LabClock(scale=60)
    with Agent(minimal_lab, "bench-1", broker, clock) as agent:
        publish = agent._publish_status
        failures = []

        def flaky() -> None:
            if not failures:
                failures.append(1)
                raise BusError("injected: status not published")
            publish()

        lab = Lab.open(minimal_lab, endpoint=broker)
        try:
            for attempt in range(2):
                bench = lab.bench("bench-1")
                if attempt == 0:
                    bench.relay("mains").on()
                    agent._publish_status = flaky
                else:
                    bench.acquire()
                    bench.relay("mains").wait_switchable()
                    bench.relay("mains").on()
                bench._hb_stop.set()              # the lease holder stops beating
                assert clock.wait_for(lambda: not agent.relays["mains"].is_on,
                                      clock.lab_seconds(agent.heartbeat_timeout + JITTER)), \
                    f"attempt {attempt}: the watchdog did not make the bench safe"
                bench._key = None              # nothing left to release
            assert failures and "watch_heartbeat failed" in caplog.text
        finally:
            lab.close()


# ----------------------------------------------------------------------------- a full disk
INNER_TESTS = '''
import os

def test_before():
    pass

def test_fills_the_disk():
    with open(os.path.join(os.environ["RIG_FULL_DIR"], "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass

def test_after():
    pass
'''


def _private_mount_command() -> list[str] | None:
    """A command prefix that runs a shell in a mount namespace of its own
    (so a small tmpfs can be mounted without touching the machine's mounts):
    plain ``unshare -m`` as root, ``unshare -rm`` (a user namespace) else."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "-m"], [unshare, "-rm"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                                "mount -t tmpfs -o size=64k tmpfs \"$TMPDIR\""],
                               capture_output=True, env=dict(os.environ, TMPDIR="/tmp"))
        if probe.returncode == 0:
            return prefix
    return None


def test_a_full_disk_during_a_run_gives_a_clear_error_and_a_valid_incomplete_record(tmp_path):
    """The run folder is on a small filesystem that a test fills: the run
    carries on, says in one line what was lost, exits non-zero, and leaves
    run.json valid and marked incomplete."""
    from rig.evidence.record import load_run

    prefix = _private_mount_command()
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (no unshare, or mount namespaces not permitted)")
    mnt, out, inner = tmp_path / "mnt", tmp_path / "out", tmp_path / "inner"
    for d in (mnt, out, inner):
        d.mkdir()
    (inner / "test_inner.py").write_text(INNER_TESTS)
    shell = (
        'mount -t tmpfs -o size=384k tmpfs "$1" || exit 97; cd "$3" || exit 98; '
        'RIG_FULL_DIR="$1" "$4" -m pytest -q -p no:cacheprovider -o addopts= test_inner.py '
        '--rig-run-dir "$1/run" --rig-no-seal --rig-store "sqlite:///$2/history.sqlite" > "$2/output" 2>&1; '
        'echo $? > "$2/rc"; cp -a "$1/run" "$2/run"'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([*prefix, "sh", "-c", shell, "sh", str(mnt), str(out), str(inner), sys.executable],
                   env=env, timeout=120, check=True)
    output = (out / "output").read_text()
    assert (out / "rc").read_text().strip() != "0", output
    assert "INTERNALERROR" not in output, output
    assert "3 passed" in output, output                  # the run went on
    errors = [line for line in output.splitlines() if line.startswith("rig: error:")]
    assert len(errors) == 1, output
    assert "No space left on device (disk full)" in errors[0] and "marked incomplete" in errors[0]
    record = json.loads((out / "run" / "run.json").read_text())   # still valid JSON
    assert record["complete"] is False
    assert not list((out / "run").glob(".*.tmp"))                 # no half-written file left behind
    loaded = load_run(out / "run")
    assert loaded["complete"] is False
    assert "test_inner.py::test_before" in [t["nodeid"] for t in loaded["tests"]]
