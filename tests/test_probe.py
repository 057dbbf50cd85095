"""``rig probe`` (rig/probe.py): on the default lab every part answers; with
one instrument's server stopped, the probe names that instrument and its
address and exits non-zero.  The default lab runs in-process (its simulated
world and its agent), so that one instrument can be stopped under it."""

from __future__ import annotations

import contextlib
import io

import pytest

from conftest import ROOT, _clear_retained
from rig.agent import Agent
from rig.clock import LabClock
from rig.config import load_lab
from rig.lab import Lab
from rig.probe import probe
from rig.sim.world import World


@pytest.fixture
def default_lab(broker):
    cfg = load_lab(ROOT / "lab.yaml")
    clock = LabClock(scale=cfg.lab.clock.scale)
    try:
        with World(cfg, "bench-1", broker, clock) as world, Agent(cfg, "bench-1", broker, clock):
            lab = Lab.open(cfg, endpoint=broker)
            try:
                yield world, lab, broker
            finally:
                lab.close()
    finally:
        _clear_retained(broker)      # the session's broker as we found it: no lab clock or state of this bench


def run_cli(broker, *extra: str) -> tuple[int, str]:
    from rig.cli import app, console

    out = io.StringIO()
    kept = console._file          # None: the console writes to whatever sys.stdout is at the time
    with contextlib.redirect_stdout(out):
        console.file = out
        try:
            # outside standalone mode click returns the exit code a command raised (typer.Exit)
            code = int(app(["probe", "--lab", str(ROOT / "lab.yaml"), "--broker", broker.url, *extra],
                           standalone_mode=False) or 0)
        finally:
            console._file = kept
    return code, out.getvalue()


def test_every_part_of_the_default_lab_answers(default_lab):
    _world, lab, broker = default_lab
    rows = probe(lab)
    bad = [f"{r.part}: {r.detail}" for r in rows if not r.ok]
    assert not bad, bad
    parts = {r.part for r in rows}
    assert {"controller", "mains", "ac_source", "load", "analyser", "attenuator_ppmid", "attenuator_gas", "optical",
            "han tap", "head end", "esme buttons", "ppmid buttons", "simulated world"} <= parts
    idn = {r.part: r.detail for r in rows}
    assert idn["analyser"].startswith("YOKOGAWA,WT310") and idn["load"].startswith("Chroma ATE,638")
    code, text = run_cli(broker)
    assert code == 0 and "every part answers" in text


def test_a_stopped_instrument_is_named_with_its_address_and_the_exit_is_non_zero(default_lab):
    world, lab, broker = default_lab
    load = next(p for p in world.parts if getattr(p, "name", None) == "load")
    address = load.address
    load.stop()
    rows = probe(lab)
    bad = [r for r in rows if not r.ok]
    assert [r.part for r in bad] == ["load"], [(r.part, r.detail) for r in bad]
    assert address in bad[0].address and address in bad[0].detail
    code, text = run_cli(broker)
    assert code == 1
    flat = " ".join(text.split())
    assert "1 of" in flat and "do not answer" in flat and "bench-1/load at" in flat and address in flat


def test_the_power_option_reads_the_meter_through_its_optical_port(default_lab):
    _world, lab, _broker = default_lab
    rows = {r.part: r for r in probe(lab, power=True)}
    assert rows["optical"].ok and rows["optical"].detail.startswith("RIG5000d6f0000000001")
