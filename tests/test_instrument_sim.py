"""The simulated instruments through the bench's one physical model: what the
analyser reads is what the supply, the mains relay, the meter's contactor
and the load bank make, and a change shows in the next sample."""

from __future__ import annotations

import uuid

import pytest

from instruments.power_analyser import YokogawaWT310
from instruments.sim import start_simulated_instruments
from instruments.sim.optical_port import SimulatedOpticalPort
from rig.bus import Bus
from rig.clock import LabClock
from rig.config import load_lab_text
from rig.sim.physics import PhysicalBench

pytestmark = pytest.mark.requirement("LAB-5")


def _twin(sim_bench, name):
    return next(p for p in sim_bench.world.parts if getattr(p, "name", None) == name)


@pytest.fixture
def analyser(sim_bench):
    """A direct pyvisa session to the simulated analyser (beside the agent's)."""
    with YokogawaWT310("analyser", _twin(sim_bench, "analyser").address) as wt:
        yield wt


def test_every_twin_announces_its_address_retained(sim_bench):
    with Bus(sim_bench.endpoint, clock=sim_bench.clock) as bus:
        watch = bus.watch("rig/v1/bench-1/instrument/+/address")
        assert watch.wait_for(lambda _v: len(watch.values) == 6, timeout=60, min_wall=2) is not None
        got = {t.split("/")[-2]: v for t, v in watch.values.items()}
    assert got["analyser"]["simulated"] is True
    for name in ("ac_source", "load", "analyser", "attenuator_ppmid", "attenuator_gas"):
        assert got[name]["address"] == _twin(sim_bench, name).address
        assert got[name]["address"].startswith("TCPIP::127.0.0.1::")
    assert got["optical"]["address"].startswith("/dev/pts/")


def test_stopped_twins_withdraw_their_announcement(amqtt_broker, instruments_lab):
    from rig.sim.world import World

    clock = LabClock(60)
    with World(instruments_lab, "bench-1", amqtt_broker, clock):
        pass
    with Bus(amqtt_broker, clock=clock) as bus:
        watch = bus.watch("rig/v1/bench-1/instrument/+/address")
        # the retained topics were cleared: nothing (or only empty payloads) arrives
        watch.wait_for(lambda _v: False, timeout=0, min_wall=0.3)
        assert not [v for v in watch.values.values() if v]


def test_load_current_only_with_supply_contactor_and_load(sim_bench, analyser):
    physics = sim_bench.physics
    combos = []
    for relay in (False, True):          # one switching: the relay's minimum interval
        if relay:
            sim_bench.close_mains()
        for supply in (False, True):
            for contactor in (False, True):
                for load in (False, True):
                    physics.set_source(output=supply)
                    physics.set_contactor(contactor)
                    physics.set_load(on=load, mode="current", setpoint=10)
                    combos.append(((supply, relay, contactor, load), analyser.read().current))
    drawing = [c for c, amps in combos if amps > 0]
    assert drawing == [(True, True, True, True)]
    assert dict(combos)[(True, True, True, True)] == 10.0


def test_mains_off_reads_zero_volts_in_the_next_sample(sim_bench, analyser):
    physics = sim_bench.physics
    physics.set_source(output=True)
    sim_bench.close_mains()
    physics.set_contactor(True)
    physics.set_load(on=True, mode="current", setpoint=10)
    assert analyser.read().voltage == 230.0
    opened = []
    physics.listen(lambda what: "mains_relay" in what and opened.append(True))
    sim_bench.agent.relays["mains"].force_safe("test: mains off")
    assert sim_bench.clock.wait_for(lambda: opened, timeout=120)
    first = analyser.read()          # the first sample after the relay opened
    assert (first.voltage, first.current, first.power, first.frequency) == (0.0, 0.0, 0.0, None)


def test_relay_from_the_agent_reaches_the_analyser(sim_bench, analyser):
    """The world follows the agent's relay over the bus, as a meter follows the contacts."""
    physics = sim_bench.physics
    physics.set_source(output=True)
    physics.set_contactor(True)
    agent = sim_bench.agent
    from rig.lab import Bench, Lab

    with Lab(sim_bench.cfg, Bus(sim_bench.endpoint.for_role("orchestrator"), clock=sim_bench.clock).connect(),
             sim_bench.clock) as lab:
        bench = Bench(lab, "bench-1")        # leased: the command below proves the lease
        bench.request(agent.node.__class__("bench-1", "relay", "mains"), "set", {"state": "on"})
        assert sim_bench.clock.wait_for(lambda: physics.mains_relay, timeout=120)
        assert analyser.read().voltage == 230.0
        bench.relay("mains").wait_switchable()      # LAB-2: 1 lab s is 17 wall ms at scale 60
        lab.bus.request(agent.node.__class__("bench-1", "relay", "mains"), "set", {"state": "off"})
        assert sim_bench.clock.wait_for(lambda: not physics.mains_relay, timeout=120)
        assert analyser.read().voltage == 0.0


def test_a_dip_shows_on_the_load_side(sim_bench, analyser):
    physics = sim_bench.physics
    from instruments.ac_source import Chroma61500

    sim_bench.close_mains()
    physics.set_contactor(True)
    with Chroma61500("ac_source", _twin(sim_bench, "ac_source").address) as src:
        src.set(voltage=230)
        src.on()
        levels = []
        physics.listen(lambda _what: levels.append(physics.load_voltage()))
        src.dip(depth=0.4, duration=1.0)
        assert levels[0] == pytest.approx(138.0)
        assert sim_bench.clock.wait_for(lambda: physics.load_voltage() == 230.0, timeout=60)


def test_attenuators_set_their_rf_path_by_name(sim_bench):
    from instruments.attenuator import Keysight11713, MiniCircuitsRCDAT

    physics = sim_bench.physics
    with MiniCircuitsRCDAT("attenuator_ppmid", _twin(sim_bench, "attenuator_ppmid").address) as a, \
            Keysight11713("attenuator_gas", _twin(sim_bench, "attenuator_gas").address) as b:
        a.set(25.5)
        b.set(17)
    assert (physics.attenuation("attenuator_ppmid"), physics.attenuation("attenuator_gas")) == (25.5, 17.0)


def test_optical_port_reads_the_meter_energy(sim_bench):
    from instruments.optical_probe import OpticalProbe

    physics = sim_bench.physics
    port = _twin(sim_bench, "optical")
    assert isinstance(port, SimulatedOpticalPort)
    with OpticalProbe("optical", port.address) as probe:
        before = probe.read().value("1.8.0")
        physics.set_source(output=True)
        sim_bench.close_mains()
        physics.set_contactor(True)
        physics.set_load(on=True, mode="power", setpoint=3600)     # 1 Wh per lab second
        start = sim_bench.clock.now()
        sim_bench.clock.sleep(30)                                     # let 30 lab s of drawing pass
        after = probe.read().value("1.8.0")
        elapsed = sim_bench.clock.now() - start
    assert after - before == pytest.approx(elapsed / 3600 * 3.6, abs=0.003)     # kWh at 3.6 kW
    port.provider = lambda: [("1.8.0", "000042.000*kWh")]            # the meter twin's own registers
    with OpticalProbe("optical", port.address) as probe:
        assert probe.read().value("1.8.0") == 42.0


def test_an_unwired_instrument_is_connected_to_nothing(amqtt_broker):
    """An analyser the wiring does not name reads nothing, whatever the bench does."""
    cfg = load_lab_text(f"""
lab: {{clock: {{scale: 60}}}}
benches:
  b1:
    relays: {{mains: {{pin: 17, safe_state: "off"}}}}
    instruments:
      src: {{kind: ac_source, driver: chroma_61500, address: sim}}
      wired: {{kind: power_analyser, driver: yokogawa_wt310, address: sim}}
      spare: {{kind: power_analyser, driver: yokogawa_wt310, address: sim}}
    wiring: {{supply: src, mains_relay: mains, analyser: wired}}
""")

    class World:            # the parts of a world this function uses
        def __init__(self):
            self.cfg, self.clock, self.bench_name = cfg.bench("b1"), LabClock(60), f"b{uuid.uuid4().hex[:6]}"
            self.physics = PhysicalBench(self.clock)
            self.bus = Bus(amqtt_broker, clock=self.clock).connect()

    world = World()
    parts = start_simulated_instruments(world)
    try:
        world.physics.set_source(output=True)
        world.physics.set_mains_relay(True)
        world.physics.set_contactor(True)
        by_name = {p.name: p for p in parts}
        with YokogawaWT310("wired", by_name["wired"].address) as wired, \
                YokogawaWT310("spare", by_name["spare"].address) as spare:
            assert (wired.read().voltage, spare.read().voltage) == (230.0, 0.0)
    finally:
        for p in parts:
            p.stop()
        world.bus.close()


def test_lab_up_addresses_answer_idn(instruments_lab, tmp_path, monkeypatch, capsys):
    """The acceptance check: with the lab up (agent and world as child
    processes), every address `rig instrument list` prints answers: *IDN?
    over a plain pyvisa-py session, the optical port its IEC 62056-21 sign-on."""
    import json

    import pyvisa

    from instruments.optical_probe import OpticalProbe
    from rig.cli import main
    from rig.launch import LabUp

    with LabUp(instruments_lab, port=0, lab_path=instruments_lab.source, log_dir=tmp_path) as up:
        monkeypatch.setenv("RIG_BROKER_URL", up.endpoint.url)
        main(["instrument", "list", "--json", "--lab", instruments_lab.source])
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 6 and all(r["identity"] for r in rows)
        rm = pyvisa.ResourceManager("@py")
        answers = {}
        for row in rows:
            if row["address"].startswith("TCPIP::"):
                session = rm.open_resource(row["address"], read_termination="\n", write_termination="\n")
                answers[row["name"]] = session.query("*IDN?")
                session.close()
            else:
                with OpticalProbe(row["name"], row["address"]) as probe:
                    answers[row["name"]] = probe.identity
    assert answers["analyser"] == "YOKOGAWA,WT310,SIM00003,F1.03"
    assert answers["optical"].startswith("RIG5")
    assert all(answers.values()) and len(answers) == 6
