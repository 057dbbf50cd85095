"""Every instrument interlock refusing, through the agent over a real broker;
an instrument that stops answering putting the bench safe; the rig-script
API and the CLI on top."""

from __future__ import annotations

import json
import time

import pytest

from instruments.errors import InstrumentError
from rig.agent import Agent
from rig.bus import CommandError
from rig.clock import LabClock
from rig.config import ConfigError, load_lab_text

pytestmark = pytest.mark.requirement("LAB-2")


@pytest.fixture
def bench(sim_lab):
    b = sim_lab.bench("bench-1")
    yield b
    b.close()


def _refused(exc: pytest.ExceptionInfo, code: str = "refused") -> str:
    assert exc.value.code == code, exc.value
    return exc.value.reason


# ----------------------------------------------------------------------------- the API
@pytest.mark.requirement("LAB-1")
def test_a_rig_script_drives_the_bench_and_the_analyser_witnesses_it(sim_bench, bench):
    physics = sim_bench.physics
    bench.ac_source.set(voltage=230, frequency=50)
    bench.mains.on()
    assert bench.mains.is_on and physics.line_voltage() == 230.0
    physics.set_contactor(True)                 # the meter twin's job on a full bench
    bench.load.draw(amps=10)
    r = bench.analyser.read()
    assert (r.voltage, r.current, r.power, r.frequency) == (230.0, 10.0, 2300.0, 50.0)
    bench.analyser.wait_state(lambda s: s["summary"]["current"] == 10.0, timeout=60)   # for `rig status`
    bench.mains.relay.wait_switchable()         # LAB-2 counts lab time: at scale 60 a second is 17 wall ms
    bench.mains.off()
    r = bench.analyser.wait_for(lambda r: r.voltage == 0.0, timeout=60, what="mains off")
    assert r.current == 0.0 and r.frequency is None
    assert bench.attenuator("attenuator_ppmid").set(30) == 30.0
    assert bench.attenuators["attenuator_gas"].set(17) == 17.0
    assert physics.attenuation("attenuator_ppmid") == 30.0
    readout = bench.optical.read()
    assert readout["identification"].startswith("RIG5")
    assert bench.instrument("analyser").identify() == "YOKOGAWA,WT310,SIM00003,F1.03"
    bench.release()                             # the lease ends: every output safe
    assert not physics.source.output and not physics.load.on
    assert physics.attenuation("attenuator_ppmid") == 30.0      # nothing to de-energise there


def test_instruments_start_safe(sim_bench):
    physics = sim_bench.physics
    assert not physics.source.output and not physics.load.on
    state = sim_bench.agent.instruments["ac_source"].state()
    assert state["safe"] and state["online"] and state["identity"].startswith("Chroma ATE")


# ----------------------------------------------------------------------------- interlocks
def test_load_current_limit_refused(sim_bench, bench):
    bench.ac_source.on()
    with pytest.raises(CommandError) as err:
        bench.load.draw(amps=61)
    assert "current 61 A is above 60 A (lab.yaml limits.current_max)" in _refused(err)
    assert err.value.error.requirement == "LAB-2"
    assert not sim_bench.physics.load.on and sim_bench.physics.load.setpoint == 0.0


def test_load_power_at_the_supply_voltage_refused(sim_bench, bench):
    bench.ac_source.set(voltage=240)
    bench.ac_source.on()
    with pytest.raises(CommandError) as err:
        bench.load.draw(amps=60)
    assert "60 A at 240 V is 14400 W, above 14000 W (lab.yaml limits.power_max)" in _refused(err)
    bench.ac_source.set(voltage=230)
    with pytest.raises(CommandError) as err:
        bench.load.draw(watts=14000)
    assert "14000 W at 230 V is 60.9 A, above 60 A" in _refused(err)
    bench.load.draw(amps=60)                    # 13800 W at 230 V: allowed
    with pytest.raises(CommandError) as err:
        bench.ac_source.set(voltage=240)        # would make the running load 14400 W
    assert "AC source voltage 240 V refused" in _refused(err)
    assert sim_bench.physics.source.voltage == 230.0


def test_no_load_while_the_ac_source_is_off(sim_bench, bench):
    physics = sim_bench.physics
    with pytest.raises(CommandError) as err:
        bench.load.draw(amps=5)
    assert "the AC source ac_source output is off" in _refused(err)
    assert not physics.load.on
    bench.ac_source.on()
    bench.load.draw(amps=5)
    assert physics.load.on
    bench.ac_source.off()                       # the load goes off first
    assert not physics.load.on and not physics.source.output
    bench.load.wait_state(lambda s: s["summary"]["load"] == "off", timeout=60)


def test_attenuator_range_and_step_refused(sim_bench, bench):
    att = bench.attenuator("attenuator_ppmid")
    with pytest.raises(CommandError) as err:
        att.set(40)
    assert "a step from 0 to 40 dB is 40 dB, larger than 30 dB (lab.yaml limits.step_max)" in _refused(err)
    att.set(30)
    att.set(60)
    att.set(90)
    with pytest.raises(CommandError) as err:
        att.set(96)
    assert "attenuation 96 dB is above 95 dB (lab.yaml limits.attenuation_max)" in _refused(err)
    assert sim_bench.physics.attenuation("attenuator_ppmid") == 90.0


def test_ac_source_ratings_refused(sim_bench, bench):
    with pytest.raises(CommandError) as err:
        bench.ac_source.set(voltage=270)
    assert "voltage 270 V is above 264 V" in _refused(err)
    with pytest.raises(CommandError) as err:
        bench.ac_source.set(voltage=230, frequency=70)
    assert "frequency 70 Hz is above 65 Hz (lab.yaml limits.frequency_max)" in _refused(err)
    assert sim_bench.physics.source.frequency == 50.0 and sim_bench.physics.source.voltage == 230.0


def test_dip_needs_the_output_on(bench):
    with pytest.raises(CommandError) as err:
        bench.ac_source.dip(0.5, 0.2)
    assert "a dip needs the output on" in _refused(err)


@pytest.mark.requirement("LAB-3")
def test_without_the_lease_only_towards_safe(sim_bench, sim_lab):
    unleased = sim_lab.bench("bench-1", lease=False)
    with pytest.raises(CommandError) as err:
        unleased.attenuator("attenuator_ppmid").set(10)
    assert err.value.code == "not_leased"
    with pytest.raises(CommandError) as err:
        unleased.ac_source.on()
    assert err.value.code == "not_leased"
    unleased.ac_source.off()                    # towards safe: allowed
    unleased.load.off()
    assert unleased.analyser.read().voltage == 0.0      # reading needs no lease


def test_estop_makes_instruments_safe_and_refuses(sim_bench, bench):
    physics = sim_bench.physics
    bench.ac_source.on()
    bench.load.draw(amps=5)
    bench.estop("test")
    assert not physics.source.output and not physics.load.on
    with pytest.raises(CommandError) as err:
        bench.ac_source.on()
    assert err.value.code == "estop"
    bench.reset_estop()
    bench.ac_source.on()
    assert physics.source.output


# ----------------------------------------------------------------------------- an instrument that stops answering
@pytest.mark.requirement("LAB-1")
def test_an_instrument_that_stops_answering_makes_the_bench_safe(sim_bench, bench):
    physics, agent = sim_bench.physics, sim_bench.agent
    bench.ac_source.on()
    bench.relay("mains").on()
    bench.load.draw(amps=5)
    twin = next(p for p in sim_bench.world.parts if getattr(p, "name", None) == "analyser")
    twin.silent = True
    t0 = time.monotonic()
    with pytest.raises(CommandError) as err:
        bench.analyser.read()
    assert time.monotonic() - t0 < 5
    assert err.value.code == "timeout"
    assert err.value.reason.startswith(f"instrument analyser at {twin.address}: no answer to ':NUM:NORM:VAL?' "
                                       "within 1 s")
    assert "the bench was put in its safe state" in err.value.reason
    # every output safe: the agent's own relay and the other instruments
    assert not agent.relays["mains"].is_on
    assert not physics.source.output and not physics.load.on
    assert agent.safe_events[-1]["reason"].startswith("instrument analyser at ")
    bench.analyser.wait_state(lambda s: s["online"] is False and "no answer" in s["fault"], timeout=60)
    twin.silent = False                         # it answers again: the next command reopens it
    assert bench.analyser.read().voltage == 0.0
    bench.analyser.wait_state(lambda s: s["online"] is True, timeout=60)


def test_an_instrument_silent_at_start_stops_the_agent_with_its_name(amqtt_broker, silent_instrument):
    lab = load_lab_text(f"""
lab: {{clock: {{scale: 60}}}}
benches:
  bench-9:
    relays: {{mains: {{pin: 17, safe_state: "off"}}}}
    instruments:
      analyser: {{kind: power_analyser, driver: yokogawa_wt310, address: "{silent_instrument}", timeout: 0.3}}
""", "silent.yaml")
    agent = Agent(lab, "bench-9", amqtt_broker, LabClock(60))
    t0 = time.monotonic()
    with pytest.raises(InstrumentError) as err:
        agent.start()
    agent.stop("test")
    assert str(err.value) == f"instrument analyser at {silent_instrument}: no answer to '*IDN?' within 0.3 s"
    assert time.monotonic() - t0 < 3
    assert not agent.relays["mains"].is_on


def test_an_unknown_driver_is_one_clear_line():
    with pytest.raises(ConfigError) as err:
        load_lab_text("""
benches:
  b1:
    instruments:
      load: {kind: load_bank, driver: chroma_99999, address: sim}
""", "lab.yaml")
    assert str(err.value) == ("lab.yaml:5: benches.b1.instruments.load.driver: unknown driver 'chroma_99999' "
                              "for kind load_bank; known: chroma_63800")


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture
def cli(sim_bench, monkeypatch, capsys):
    from rig.cli import main

    monkeypatch.setenv("RIG_BROKER_URL", sim_bench.endpoint.url)

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([*args, "--lab", str(sim_bench.cfg.source)])
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_lists_every_instrument_with_its_address_in_use(sim_bench, cli):
    code, out, _ = cli("instrument", "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(sim_bench.cfg.bench("bench-1").instruments)
    twins = {p.name: p for p in sim_bench.world.parts if hasattr(p, "address")}
    for name, row in rows.items():
        assert row["address"] == twins[name].address
        assert row["identity"]
    code, out, _ = cli("instrument", "list")
    assert "ADDRESS" in out and twins["analyser"].address in out


def test_cli_sets_queries_and_prints_refusals(sim_bench, cli):
    code, out, _ = cli("instrument", "bench-1", "attenuator_ppmid", "set", "25")
    assert code == 0 and "db: 25.0" in out
    assert sim_bench.physics.attenuation("attenuator_ppmid") == 25.0
    code, out, _ = cli("instrument", "bench-1", "analyser", "query")
    assert code == 0 and "voltage: 0.0" in out
    code, _, err = cli("instrument", "bench-1", "load", "draw", "amps=10")
    assert code == 4
    assert err.startswith("refused: ") and "the AC source ac_source output is off" in err
    code, _, err = cli("instrument", "bench-1", "nope", "query")
    assert code == 2 and "bench bench-1 has no instrument 'nope'" in err


def test_mains_off_on_a_bench_with_a_supply_and_no_relay_switches_the_supply_off(amqtt_broker, tmp_path,
                                                                                   monkeypatch, capsys):
    """`rig mains BENCH off` on a bench whose mains is its AC source alone: the
    source's output goes off (it used to print "off" and do nothing)."""
    from rig.agent import Agent
    from rig.cli import main
    from rig.clock import LabClock
    from rig.config import load_lab
    from rig.lab import Lab
    from rig.sim.world import World

    from conftest import LABS

    path = tmp_path / "no-relay.yaml"
    path.write_text((LABS / "instruments.yaml").read_text().replace("      mains_relay: mains\n", ""))
    cfg = load_lab(path)
    assert cfg.bench("bench-1").wiring.mains_relay is None
    clock = LabClock(scale=cfg.lab.clock.scale)
    monkeypatch.setenv("RIG_BROKER_URL", amqtt_broker.url)
    with World(cfg, "bench-1", amqtt_broker, clock) as world, Agent(cfg, "bench-1", amqtt_broker, clock):
        with Lab.open(cfg, endpoint=amqtt_broker) as lab:
            bench = lab.bench("bench-1")             # this script holds the lease with the supply on
            bench.mains.on()
            assert world.physics.supply_voltage() > 0
            main(["mains", "bench-1", "off", "--lab", str(path)])   # returns (exit 0) when done
            assert "mains off" in capsys.readouterr().out
            assert world.physics.supply_voltage() == 0.0
            assert bench.ac_source.is_on is False
