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
    # the test's own clients log in as admin; an Agent, a World or a Lab picks its role's user
    yield b.endpoint.as_user("admin", keep_store=True)
    b.stop()


@pytest.fixture(scope="session")
def amqtt_broker():
    """The embedded broker only (for tests whose subject is not the broker)."""
    b = Broker.start(BrokerConfig(kind="amqtt", port=0))
    yield b.endpoint.as_user("admin", keep_store=True)
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
        for name, dev in cfg.bench("bench-1").devices.items():
            if not dev.sealed:              # a sealed twin has no presence on the bus
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


# ----------------------------------------------------------------------------- bus security
@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A lab CA, a broker certificate for 127.0.0.1/localhost and a client
    certificate, made for the test session with `cryptography` (PEM files)."""
    import datetime
    import ipaddress
    from types import SimpleNamespace

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("rig test lab CA")).issuer_name(name("rig test lab CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        (d / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, d / f"{cn}.key")
        return d / f"{cn}.pem", d / f"{cn}.key"

    server = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                  [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = leaf("rig-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return SimpleNamespace(dir=d, ca=d / "ca.pem", server_cert=server[0], server_key=server[1],
                           client_cert=client[0], client_key=client[1])


def require_mosquitto() -> None:
    if mosquitto_path() is None:
        if os.environ.get("RIG_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("mosquitto is required here (RIG_REQUIRE_MOSQUITTO=1) but not installed")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")


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
