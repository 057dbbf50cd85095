"""Shared fixtures of the rig's own tests.  Sections are owned by area;
keep each small.

Broker-backed tests take ``broker`` (parametrised over the embedded amqtt
and mosquitto: every such test runs on both).  Without mosquitto installed
the mosquitto half is skipped, unless ``RIG_REQUIRE_MOSQUITTO=1`` (set by
.ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rig.broker import Broker, mosquitto_path
from rig.config import BrokerConfig, load_lab

LABS = Path(__file__).parent / "labs"
ROOT = Path(__file__).parent.parent


# ----------------------------------------------------------------------------- foundation
@pytest.fixture(scope="session", params=["amqtt", "mosquitto"])
def broker(request):
    """A broker of each kind, on a free port, for the whole session."""
    kind = request.param
    if kind == "mosquitto" and mosquitto_path() is None:
        if os.environ.get("RIG_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("mosquitto is required here (RIG_REQUIRE_MOSQUITTO=1) but not installed")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    b = Broker.start(BrokerConfig(kind=kind, port=0))
    yield b.endpoint
    b.stop()


@pytest.fixture(scope="session")
def amqtt_broker():
    """The embedded broker only (for tests whose subject is not the broker)."""
    b = Broker.start(BrokerConfig(kind="amqtt", port=0))
    yield b.endpoint
    b.stop()


@pytest.fixture
def minimal_lab():
    return load_lab(LABS / "minimal.yaml")


# ----------------------------------------------------------------------------- instruments
@pytest.fixture
def instruments_lab():
    """tests/labs/instruments.yaml: every instrument kind simulated, no devices."""
    return load_lab(LABS / "instruments.yaml")


@pytest.fixture
def sim_bench(amqtt_broker, instruments_lab):
    """bench-1 of instruments.yaml running in-process: its simulated world
    (instrument twins on 127.0.0.1 and a pty) and its controller agent
    serving the instruments.  ``sim_bench.physics`` is the bench; the world
    follows the agent's mains relay, so close it with ``close_mains()``
    rather than in the physics."""
    from types import SimpleNamespace

    from rig.agent import Agent
    from rig.clock import LabClock
    from rig.sim.world import World

    clock = LabClock(scale=instruments_lab.lab.clock.scale)
    with World(instruments_lab, "bench-1", amqtt_broker, clock) as world:
        with Agent(instruments_lab, "bench-1", amqtt_broker, clock) as agent:

            def close_mains() -> None:
                """Close the mains relay as the agent does; the world follows it."""
                agent.relays["mains"].set(True)
                assert clock.wait_for(lambda: world.physics.mains_relay, timeout=120)

            yield SimpleNamespace(world=world, agent=agent, endpoint=amqtt_broker, cfg=instruments_lab,
                                  clock=clock, physics=world.physics, close_mains=close_mains)


@pytest.fixture
def sim_lab(sim_bench):
    """A rig-script Lab connected to ``sim_bench`` (bench not leased yet)."""
    from rig.lab import Lab

    lab = Lab.open(sim_bench.cfg, endpoint=sim_bench.endpoint)
    yield lab
    lab.close()


@pytest.fixture
def silent_instrument():
    """The VISA address of a TCP port that accepts connections, reads every
    command and never answers: an instrument that hangs."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    conns = []

    def swallow(conn):
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=swallow, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"TCPIP::127.0.0.1::{server.getsockname()[1]}::SOCKET"
    server.close()
    for conn in conns:
        conn.close()


# ----------------------------------------------------------------------------- devices
@pytest.fixture
def device_bench(amqtt_broker):
    """Start tests/labs/devices.yaml's bench-1 in-process: ``device_bench(faults={"esme": [...]},
    settings={"esme": {...}}, lab="devices.yaml", agent=False)`` returns a namespace with the
    running ``world``, a rig-script ``bench`` (not leased unless an agent runs) and ``physics``.
    Everything is stopped after the test."""
    import contextlib
    from types import SimpleNamespace

    from rig.bus import Bus
    from rig.clock import LabClock
    from rig.lab import Lab
    from rig.sim.world import World

    stack = contextlib.ExitStack()

    def start(faults=None, settings=None, lab="devices.yaml", agent=False, scale=None, edit=None):
        cfg = load_lab(LABS / lab)
        bench_cfg = cfg.bench("bench-1")
        for name, profiles in (faults or {}).items():
            bench_cfg.devices[name].faults = list(profiles)
        for name, values in (settings or {}).items():
            for key, value in values.items():
                setattr(bench_cfg.devices[name].settings, key, value)
        if edit is not None:
            edit(cfg)
        clock = LabClock(scale=scale or cfg.lab.clock.scale)
        world = stack.enter_context(World(cfg, "bench-1", amqtt_broker, clock))
        if agent:
            from rig.agent import Agent

            stack.enter_context(Agent(cfg, "bench-1", amqtt_broker, clock))
        # the script side shares the world's clock (a retained clock of an earlier test could linger)
        lab_ = stack.enter_context(Lab(cfg, Bus(amqtt_broker, clock=clock).connect(), clock))
        bench = lab_.bench("bench-1", lease=agent)
        for name in cfg.bench("bench-1").devices:
            bench.device(name).wait_online(10)
        return SimpleNamespace(world=world, bench=bench, lab=lab_, cfg=cfg, clock=clock, physics=world.physics,
                               part=lambda kind: next(p for p in world.parts if type(p).__name__ == kind))

    yield start
    stack.close()
    _clear_retained(amqtt_broker)


def _clear_retained(endpoint) -> None:
    """Leave the shared broker as the test found it: no retained state,
    presence or clock of the bench that ran (other tests read the broker)."""
    from rig.bus import Bus
    from rig.lab import snapshot

    with Bus(endpoint) as bus:
        for topic, payload in sorted(snapshot(bus, everything=True).items()):
            if payload is not None:
                bus.clear_retained(topic)


# ----------------------------------------------------------------------------- fuzzing (hypothesis)
try:
    from hypothesis import HealthCheck, settings as _hsettings

    # "ci" (the default): a fixed set of examples, so a CI run is repeatable and
    # short; "long": random and many, for hunting (--hypothesis-profile=long)
    _slow = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
    _hsettings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None,
                                suppress_health_check=_slow, print_blob=True)
    _hsettings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_slow,
                                print_blob=True)
    _hsettings.load_profile(os.environ.get("RIG_HYPOTHESIS_PROFILE", "ci"))
except ImportError:   # the fuzz tests skip themselves
    pass
