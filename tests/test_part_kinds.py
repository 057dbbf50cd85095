"""A new instrument kind is one declaration (rig/parts.py; docs/extending.md).

The test writes a toy kind (a "dimmer" with one setting, ``level``) the way
a lab would: a driver with a declared setting, its simulated twin, the
agent's service, the rig-script handle, and one :class:`rig.parts.InstrumentKind`
naming them.  With that declaration alone the toy is in lab.yaml
validation (its kind, driver and ``limits:`` key), the simulated world
starts its twin, the agent serves it, ``rig instrument`` lists and sets it,
``Bench`` returns its handle, and the pytest plugin has its fixture.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from instruments.handles import InstrumentHandle
from instruments.service import Args, InstrumentService, Op
from instruments.settings import Setting
from instruments.sim.base import SimulatedScpiInstrument
from instruments.sim.scpi import Call, ScpiError
from instruments.visa import VisaInstrument
from rig import parts
from rig.bus import CommandContext, CommandError
from rig.config import ConfigError, load_lab_text
from rig.sim.physics import PhysicalBench


# ----------------------------------------------------------------------------- the toy kind, as a lab writes it
class ToyDimmer(VisaInstrument):
    """Driver: one setting, declared once."""

    model = "Toy dimmer"
    level = Setting("level", "%", get="LEV?", set="LEV {:.1f}", rating=(0.0, 100.0), high="level_max",
                    resolution=0.1)

    def safe(self) -> bool:
        was = self.level != 0
        ToyDimmer.level.apply(self, 0.0)
        return was


class SimulatedToyDimmer(SimulatedScpiInstrument):
    """Twin: the driver's rating, its own command table."""

    identity = "TOY,DIMMER,0001,1.0"

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.value = 0.0
        self.add(":LEVel", self._set)
        self.add(":LEVel?", lambda _c: f"{self.value:.1f}")

    def _set(self, call: Call) -> None:
        low, high = ToyDimmer.level.span
        if not low <= call.number() <= high:
            raise ScpiError(-222, "Data out of range")
        self.value = call.number()


class LevelArgs(Args):
    level: float


class ToyService(InstrumentService):
    """Agent side: a lit dimmer is an output with a safe state (0 %)."""

    energises = True

    def ops(self) -> dict[str, Op]:
        return super().ops() | {"set": (self._set, LevelArgs)}

    def refresh(self) -> dict[str, Any]:
        self.summary = {"level": self.driver.level}
        return self.summary

    def is_safe(self) -> bool:
        return self.summary.get("level") == 0

    def _set(self, args: Any, ctx: CommandContext) -> dict[str, Any]:
        self.guard(ctx, towards_safe=args.level == 0)
        ToyDimmer.level.apply(self.driver, args.level)
        return self.refresh()


class ToyHandle(InstrumentHandle):
    """Script side."""

    def set(self, level: float) -> float:
        return self.request("set", level=level)["level"]


TOY = parts.InstrumentKind(
    "dimmer", "A toy dimmer: one level, 0-100 %.",
    drivers=(parts.Driver("toy_dimmer", ToyDimmer, twin=SimulatedToyDimmer),),
    service=ToyService, handle=ToyHandle, fixture="dimmer", number="level",
)

LAB = textwrap.dedent("""\
    lab:
      name: toy
      clock: {scale: 60}
    broker: {kind: auto, port: 0}
    benches:
      bench-1:
        controller: {pin_factory: mock, heartbeat_timeout: 1.0}
        instruments:
          lamp:
            kind: dimmer
            driver: toy_dimmer
            address: sim
            timeout: 1.0
            limits: {level_max: 60}
    """)


@pytest.fixture
def toy():
    with parts.registered(TOY):
        yield TOY


# ----------------------------------------------------------------------------- lab.yaml
def test_without_the_declaration_the_kind_is_unknown():
    with pytest.raises(ConfigError, match="benches.bench-1.instruments.lamp.kind: unknown instrument kind 'dimmer'; "
                                          "known: ac_source, attenuator, load_bank, optical_probe, power_analyser"):
        load_lab_text(LAB, "lab.yaml")


def test_the_declaration_is_in_lab_yaml_validation(toy):
    lamp = load_lab_text(LAB, "lab.yaml").bench("bench-1").instruments["lamp"]
    assert (lamp.kind, lamp.driver, lamp.limits.level_max) == ("dimmer", "toy_dimmer", 60.0)
    with pytest.raises(ConfigError, match="lamp.driver: unknown driver 'toy_9000' for kind dimmer; known: toy_dimmer"):
        load_lab_text(LAB.replace("driver: toy_dimmer", "driver: toy_9000"), "lab.yaml")
    with pytest.raises(ConfigError, match=r"lab.yaml:14: benches.bench-1.instruments.lamp.limits.voltage_max: "
                                          "unknown key"):
        load_lab_text(LAB.replace("level_max: 60", "voltage_max: 60"), "lab.yaml")
    with pytest.raises(ConfigError, match="limits.level_max: Input should be greater than 0"):
        load_lab_text(LAB.replace("level_max: 60", "level_max: -1"), "lab.yaml")


# ----------------------------------------------------------------------------- agent, world, CLI, Bench, fixture
@pytest.fixture
def toy_bench(toy, amqtt_broker, tmp_path):
    """The toy lab in-process: its simulated world (the toy's twin) and its agent."""
    from types import SimpleNamespace

    from rig.agent import Agent
    from rig.clock import LabClock
    from rig.lab import Lab
    from rig.sim.world import World

    path = tmp_path / "toy.yaml"
    path.write_text(LAB)
    from rig.config import load_lab

    cfg = load_lab(path)
    clock = LabClock(scale=60)
    with World(cfg, "bench-1", amqtt_broker, clock) as world, Agent(cfg, "bench-1", amqtt_broker, clock) as agent:
        lab = Lab.open(cfg, endpoint=amqtt_broker)
        try:
            yield SimpleNamespace(world=world, agent=agent, lab=lab, cfg=cfg, path=path, endpoint=amqtt_broker)
        finally:
            lab.close()


def test_the_world_starts_its_twin_and_the_agent_serves_it(toy_bench):
    twin = next(p for p in toy_bench.world.parts if isinstance(p, SimulatedToyDimmer))
    service = toy_bench.agent.instruments["lamp"]
    assert isinstance(service, ToyService) and service.address == twin.address
    assert toy_bench.agent.status()["instruments"] == ["lamp"]
    assert service.state()["identity"] == "TOY,DIMMER,0001,1.0"


def test_bench_returns_its_handle_and_the_agent_checks_its_limit(toy_bench):
    bench = toy_bench.lab.bench("bench-1")
    lamp = bench.instrument("lamp")
    assert isinstance(lamp, ToyHandle) and bench.of_kind("dimmer") is lamp
    assert lamp.set(40) == 40.0
    with pytest.raises(CommandError, match=r"level 70 % is above 60 % \(lab.yaml limits.level_max\)"):
        lamp.set(70)
    bench.release()                      # the agent puts the lamp in its safe state
    assert toy_bench.world.parts and next(p for p in toy_bench.world.parts
                                          if isinstance(p, SimulatedToyDimmer)).value == 0.0


def test_rig_instrument_lists_and_sets_it(toy_bench, monkeypatch, capsys):
    from rig.cli import main

    monkeypatch.setenv("RIG_BROKER_URL", toy_bench.endpoint.url)

    def cli(*args: str) -> tuple[int, str]:
        try:
            main([*args, "--lab", str(toy_bench.path)])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().out

    code, out = cli("instrument", "list", "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert (row["name"], row["kind"], row["driver"], row["identity"]) == ("lamp", "dimmer", "toy_dimmer",
                                                                          "TOY,DIMMER,0001,1.0")
    code, out = cli("instrument", "bench-1", "lamp", "set", "25", "--hold", "0")   # a bare number is its level
    assert code == 0 and "level: 25.0" in out


def test_the_plugin_has_its_fixture(toy_bench, tmp_path):
    """An in-process pytest session against the running toy lab: the plugin
    made a ``dimmer`` fixture from the declaration."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_lamp.py").write_text(textwrap.dedent("""\
        def test_lamp(dimmer):
            assert type(dimmer).__name__ == "ToyHandle"
            assert dimmer.set(12.5) == 12.5
        """))
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"), "--rootdir",
                        str(tmp_path), "--lab", str(toy_bench.path), "--rig-broker", toy_bench.endpoint.url,
                        str(tmp_path / "test_lamp.py")])
    assert code == 0
