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

from rig import parts
from rig.sim.bench import SimBench

from .base import SimulatedInstrument

log = logging.getLogger(__name__)


def start_simulated_instruments(world: SimBench) -> list[SimulatedInstrument]:
    """Start and announce the twin of every ``address: sim`` instrument of the
    world's bench; returns them (each has ``.stop()``)."""
    parts_started: list[SimulatedInstrument] = []
    try:
        for name, cfg in world.cfg.instruments.items():
            if not cfg.simulated:
                continue
            twin = parts.instrument_kind(cfg.kind).driver(cfg.driver).load_twin()
            if twin is None:
                raise LookupError(f"instrument {name}: driver {cfg.driver} has no simulated twin; "
                                  f"give it a real address in lab.yaml")
            part = twin.on_bench(world, name).start()
            parts_started.append(part)
            part.announce(world.bus, world.bench_name)
            log.info("simulated %s %s at %s", cfg.kind, name, part.address)
    except BaseException:
        for part in reversed(parts_started):
            part.stop()
        raise
    return parts_started
