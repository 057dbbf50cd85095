"""What every simulated instrument is to the simulated world: a part with an
address, announced on the bus while it runs, and ``stop()``.

The world makes each twin with :meth:`SimulatedInstrument.on_bench` (the
twin class is named by its driver's declaration, rig/parts.py).  A twin
acts on the bench's physics when the lab.yaml ``wiring:`` connects its
instrument in its kind's role (the supply, the load, the analyser), or
when its kind has no role (an attenuator sets the attenuation of its own
name); one the wiring leaves out stands on the bench connected to nothing.
"""

from __future__ import annotations

from typing import Any

from rig import parts
from rig.bus import Bus
from rig.sim.bench import SimBench
from rig.sim.physics import PhysicalBench

from ..address import announce, withdraw
from .scpi import ScpiDevice
from .server import ScpiServer


def wired_physics(world: SimBench, name: str) -> PhysicalBench:
    """The bench physics if the wiring connects instrument ``name`` in its
    kind's role (or the kind has none), else a physics of its own."""
    role = parts.instrument_kind(world.cfg.instruments[name].kind).wiring
    if role is None or getattr(world.cfg.wiring, role) == name:
        return world.physics
    return PhysicalBench(world.clock)


class SimulatedInstrument:
    """A simulated instrument of one bench, named as in lab.yaml."""

    def __init__(self, name: str):
        self.name = name
        self._announced: tuple[Bus, str] | None = None

    @classmethod
    def on_bench(cls, world: SimBench, name: str) -> SimulatedInstrument:
        """The twin of instrument ``name`` on the world's bench (not started)."""
        make: Any = cls
        return make(name, wired_physics(world, name))

    @property
    def address(self) -> str:
        raise NotImplementedError

    def start(self) -> "SimulatedInstrument":
        """Open the port (subclasses); returns self."""
        return self

    def announce(self, bus: Bus, bench: str) -> None:
        announce(bus, bench, self.name, self.address)
        self._announced = (bus, bench)

    def close(self) -> None:
        """Release the port (subclasses)."""

    def stop(self) -> None:
        """Withdraw the announcement, then close the port."""
        if self._announced is not None:
            bus, bench = self._announced
            self._announced = None
            if bus.connected:
                withdraw(bus, bench, self.name)
        self.close()


class SimulatedScpiInstrument(ScpiDevice, SimulatedInstrument):
    """A simulated SCPI instrument on its own TCP port (see :mod:`.server`)."""

    def __init__(self, name: str):
        ScpiDevice.__init__(self)
        SimulatedInstrument.__init__(self, name)
        self.server: ScpiServer | None = None

    def start(self) -> "SimulatedScpiInstrument":
        self.server = ScpiServer(self, self.name)
        return self

    @property
    def _serving(self) -> ScpiServer:
        if self.server is None:
            raise RuntimeError(f"simulated {self.name} is not started")
        return self.server

    @property
    def address(self) -> str:
        return self._serving.address

    @property
    def silent(self) -> bool:
        return self._serving.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._serving.silent = value

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
