"""Simulated bench instruments, coupled through the bench's one physical model.

:func:`start_simulated_instruments` is called by the simulated world
(``rig sim --bench``, :mod:`rig.sim.world`) and starts, for every
instrument whose lab.yaml address is ``sim``, the twin of its driver:

==================  ==========================================  ===========================
driver              twin                                        reached at
==================  ==========================================  ===========================
chroma_61500        :class:`.ac_source.SimulatedChroma61500`    TCPIP::127.0.0.1::P::SOCKET
chroma_63800        :class:`.load_bank.SimulatedChroma63800`    TCPIP::127.0.0.1::P::SOCKET
yokogawa_wt310      :class:`.power_analyser.SimulatedWT310`     TCPIP::127.0.0.1::P::SOCKET
minicircuits_rcdat  :class:`.attenuator.SimulatedRCDAT`         TCPIP::127.0.0.1::P::SOCKET
keysight_11713      :class:`.attenuator.SimulatedKeysight11713` TCPIP::127.0.0.1::P::SOCKET
iec62056_21         :class:`.optical_port.SimulatedOpticalPort` /dev/pts/N
==================  ==========================================  ===========================

The AC source, load bank and analyser named in the bench's ``wiring:`` act
on ``world.physics``; one that the wiring does not name stands on the bench
connected to nothing (a physics of its own).  Attenuators set the
attenuation of their own name in the physics (what ``rf_paths`` refer to);
the optical port reads the wired meter.  Each twin announces its address,
retained, on ``rig/v1/<bench>/instrument/<name>/address`` and withdraws it
when stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rig.sim.physics import PhysicalBench

from .ac_source import SimulatedChroma61500
from .attenuator import SimulatedKeysight11713, SimulatedRCDAT
from .base import SimulatedInstrument
from .load_bank import SimulatedChroma63800
from .optical_port import SimulatedOpticalPort, physics_registers
from .power_analyser import SimulatedWT310

log = logging.getLogger(__name__)


def _wired_physics(world: Any, name: str, role: str) -> PhysicalBench:
    """The bench physics if the wiring connects this instrument in ``role``,
    else a physics of its own (on the bench, connected to nothing)."""
    return world.physics if getattr(world.cfg.wiring, role) == name else PhysicalBench(world.clock)


def _meter_id(world: Any, probe: str | None = None) -> str:
    cfg = world.cfg
    inst = cfg.instruments.get(probe or "")
    meter = (inst.device if inst is not None else None) or cfg.wiring.meter or cfg.device_of_kind("esme")
    dev = cfg.devices.get(meter) if meter else None
    return dev.id.replace(":", "") if dev is not None else "0000000000000000"


def _optical(world: Any, name: str) -> SimulatedOpticalPort:
    meter_id = _meter_id(world, name)
    return SimulatedOpticalPort(name, meter_id, physics_registers(world.physics, meter_id))


TWINS: dict[str, Callable[[Any, str], SimulatedInstrument]] = {
    "chroma_61500": lambda w, n: SimulatedChroma61500(n, _wired_physics(w, n, "supply")),
    "chroma_63800": lambda w, n: SimulatedChroma63800(n, _wired_physics(w, n, "load")),
    "yokogawa_wt310": lambda w, n: SimulatedWT310(n, _wired_physics(w, n, "analyser")),
    "minicircuits_rcdat": lambda w, n: SimulatedRCDAT(n, w.physics),
    "keysight_11713": lambda w, n: SimulatedKeysight11713(n, w.physics),
    "iec62056_21": _optical,
}


def start_simulated_instruments(world: Any) -> list[SimulatedInstrument]:
    """Start and announce the twin of every ``address: sim`` instrument of the
    world's bench; returns them (each has ``.stop()``)."""
    parts: list[SimulatedInstrument] = []
    try:
        for name, cfg in world.cfg.instruments.items():
            if not cfg.simulated:
                continue
            make = TWINS.get(cfg.driver)
            if make is None:
                raise LookupError(f"instrument {name}: driver {cfg.driver} has no simulated twin; "
                                  f"give it a real address in lab.yaml")
            part = make(world, name).start()
            parts.append(part)
            part.announce(world.bus, world.bench_name)
            log.info("simulated %s %s at %s", cfg.kind, name, part.address)
    except BaseException:
        for part in reversed(parts):
            part.stop()
        raise
    return parts
