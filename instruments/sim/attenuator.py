"""Simulated programmable attenuators: their setting enters the RF link budget.

Every accepted setting goes to :meth:`rig.sim.physics.PhysicalBench.set_attenuation`
under the instrument's lab.yaml name, which is what ``rf_paths`` refer to,
at the moment the instrument would switch (so a two-section attenuator's
intermediate setting is visible to the HAN medium, as on the real one).

* :class:`SimulatedRCDAT`: Mini-Circuits Telnet commands (``:MN?``,
  ``:SN?``, ``:SETATT=``, ``:ATT?``), 0.25 dB steps.  The real RCDAT has no
  ``*IDN?``; the twin answers it as well, so that a lab-wide ``*IDN?`` sweep
  over the simulated ports sees every one.
* :class:`SimulatedKeysight11713`: ``ATT:BANK1:X`` (0-11 dB, 1 dB steps) and
  ``ATT:BANK1:Y`` (0-70 dB, 10 dB steps); bank 2 is accepted but not wired.
"""

from __future__ import annotations

import functools

from rig.sim.physics import PhysicalBench

from ..attenuator import Keysight11713, MiniCircuitsRCDAT
from .base import SimulatedScpiInstrument
from .scpi import Call, ScpiError


class SimulatedRCDAT(SimulatedScpiInstrument):
    MODEL = "RCDAT-6000-110"
    SERIAL = "11900000001"
    MAX_DB = 110.0                                                 # the -110 of its model name
    STEP = float(MiniCircuitsRCDAT.attenuation.resolution or 0.25)  # as the driver declares it
    identity = f"Mini-Circuits,{MODEL},{SERIAL}"

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.physics = physics
        self.add(":MN?", lambda _c: f"MN={self.MODEL}")
        self.add(":SN?", lambda _c: f"SN={self.SERIAL}")
        self.add(":FIRMWARE?", lambda _c: "FIRMWARE=C6")
        self.add(":SETATT", self._set)
        self.add(":ATT?", lambda _c: f"{self.physics.attenuation(self.name):g}")

    def split(self, command: str) -> tuple[str, list[str]]:
        """Mini-Circuits syntax: ``:SETATT=40.25`` (no space)."""
        header, sep, value = command.partition("=")
        return (header, [value.strip()]) if sep else super().split(command)

    def _set(self, call: Call) -> str:
        value = call.number()
        if value < 0:
            return "0"
        answer = "2" if value > self.MAX_DB else "1"
        db = min(self.MAX_DB, round(value / self.STEP) * self.STEP)
        self.physics.set_attenuation(self.name, db)
        return answer


class SimulatedKeysight11713(SimulatedScpiInstrument):
    identity = "Agilent Technologies,11713C,SIM00004,1.0"
    X_MAX, Y_MAX, Y_STEP = Keysight11713.X_MAX, Keysight11713.Y_MAX, Keysight11713.Y_STEP

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.physics = physics
        total = int(round(physics.attenuation(name)))
        y = min(self.Y_MAX, (total // self.Y_STEP) * self.Y_STEP)
        self.sections = {1: {"X": min(self.X_MAX, total - y), "Y": y}, 2: {"X": 0, "Y": 0}}
        for section in ("X", "Y"):
            self.add(f":ATTenuator:BANK#:{section}", functools.partial(self._set, section=section))
            self.add(f":ATTenuator:BANK#:{section}?", functools.partial(self._get, section=section))

    def _get(self, call: Call, section: str) -> str:
        return str(self._bank(call)[section])

    def _bank(self, call: Call) -> dict[str, int]:
        bank = self.sections.get(call.nums[0])
        if bank is None:
            raise ScpiError(-114, "Header suffix out of range")
        return bank

    def _set(self, call: Call, section: str) -> None:
        bank = self._bank(call)
        value = call.number()
        if value != int(value):
            raise ScpiError(-222, "Data out of range")
        value = int(value)
        ok = 0 <= value <= self.X_MAX if section == "X" else (0 <= value <= self.Y_MAX and value % self.Y_STEP == 0)
        if not ok:
            raise ScpiError(-222, "Data out of range")
        bank[section] = value
        if call.nums[0] == 1:
            self.physics.set_attenuation(self.name, float(bank["X"] + bank["Y"]))
