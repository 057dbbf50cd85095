"""What every simulated instrument is to the simulated world: a part with an
address, announced on the bus while it runs, and ``stop()``."""

from __future__ import annotations

from rig.bus import Bus

from ..address import announce, withdraw
from .scpi import ScpiDevice
from .server import ScpiServer


class SimulatedInstrument:
    """A simulated instrument of one bench, named as in lab.yaml."""

    def __init__(self, name: str):
        self.name = name
        self._announced: tuple[Bus, str] | None = None

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
    def address(self) -> str:
        return self.server.address

    @property
    def silent(self) -> bool:
        return self.server.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self.server.silent = value

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
