"""Acceptance of the devices, through the bus alone: this file imports no
twin.  It drives the default lab (lab.yaml: agent, instruments and devices
simulated, run in-process by the ``device_bench`` fixture) with rig.lab and
rig.devices only, as a lab engineer's script would."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rig.bus import CommandError

pytestmark = pytest.mark.timeout(180)

DEFAULT_LAB = Path(__file__).parent.parent / "lab.yaml"


@pytest.fixture
def default_bench(device_bench):
    pytest.importorskip("instruments.handles", reason="bench instrument handles not available")
    sim = device_bench(lab=DEFAULT_LAB, agent=True)
    b = sim.bench
    b.mains.on()
    b.esme.wait_state(lambda s: s.get("powered"), 30, "meter powered")
    return b


@pytest.mark.safety
@pytest.mark.requirement("SUP-1", "SUP-2")
def test_contactor_closes_only_after_the_local_action(default_bench):
    b = default_bench
    b.load.draw(amps=5)
    b.analyser.wait_for(lambda r: r.current > 4.5, timeout=30, what="load drawing through the meter")
    b.dcc.disable()
    b.analyser.wait_for(lambda r: r.current < 0.01, timeout=30, what="load side dead after disable")
    b.dcc.arm()
    b.esme.wait_supply("armed")
    t0 = b.clock.now()
    with pytest.raises(CommandError) as exc:
        b.dcc.enable()                                        # a remote enable while armed ...
    assert exc.value.error.requirement == "SUP-2"
    assert b.esme.event_log(since=t0, event="remote_enable_refused")   # ... is refused and logged
    assert b.analyser.read().current < 0.01                   # and the load side stays dead
    out = b.ppmid.enable()                                    # the local action
    assert out["accepted"]
    r = b.analyser.wait_for(lambda r: r.current > 4.5, timeout=30, what="load side live after the PPMID enable")
    assert r.ts >= out["sent_at"]


@pytest.mark.requirement("HAN-3", "HAN-4")
def test_attenuation_degrades_then_drops_2g4_before_868(default_bench):
    b = default_bench
    ppmid, att = b.ppmid, b.attenuator("attenuator_ppmid")

    def settled(pred, what):
        return ppmid.wait_state(lambda s: pred(s["han"]), 60, what)["han"]

    clear = settled(lambda h: h["2.4GHz"]["up"] and h["868MHz"]["up"] and h["2.4GHz"]["lqi"] > 150, "links up")
    att.set(20)
    weak = settled(lambda h: 0 < h["2.4GHz"]["lqi"] < clear["2.4GHz"]["lqi"] - 40, "2.4 GHz LQI degraded")
    assert weak["2.4GHz"]["up"] and weak["2.4GHz"]["rssi"] < clear["2.4GHz"]["rssi"] - 15
    att.set(40)
    mid = settled(lambda h: not h["2.4GHz"]["up"], "2.4 GHz link dropped")
    assert mid["868MHz"]["up"]                                # same premises, same attenuator: 868 MHz holds
    assert b.ppmid.enable()["delivered"]                      # and carries the PPMID's traffic
    att.set(75)
    settled(lambda h: not h["868MHz"]["up"], "868 MHz link dropped")
    assert not b.ppmid.enable()["delivered"]
    att.set(0)
    settled(lambda h: h["2.4GHz"]["up"] and h["868MHz"]["up"], "links back")


def test_rig_status_lists_every_device_with_supply_link_and_presence(default_bench):
    from rich.console import Console

    from rig.cli import render_status
    from rig.lab import snapshot

    b = default_bench
    for name in b.cfg.devices:
        b.device(name).wait_state(lambda s: any(v.get("rssi") is not None for v in (s.get("han") or {}).values()),
                                  120, f"{name} link measured")
    out = io.StringIO()
    Console(file=out, width=250).print(render_status(b.lab.cfg, snapshot(b.bus, "bench-1")))
    text = out.getvalue()
    for name, dev in b.cfg.devices.items():
        row = next(line for line in text.splitlines() if f"{dev.kind} {name}" in line)
        assert "online" in row and "RSSI" in row and "LQI" in row, row
    esme_row = next(line for line in text.splitlines() if "esme esme" in line)
    assert "enabled" in esme_row
    # the neighbour PPMID believes it is paired; the meter pairs the other one, and status says so
    neighbour = next(line for line in text.splitlines() if "ppmid ppmid-neighbour" in line)
    assert "not accepted: esme pairs ppmid" in neighbour, neighbour
    paired = next(line for line in text.splitlines() if "ppmid ppmid " in line)
    assert "not accepted" not in paired, paired
