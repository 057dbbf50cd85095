"""A simulated Chroma 63800-series AC electronic load on the bench's load side.

Its setpoints go to :class:`rig.sim.physics.PhysicalBench` (``set_load``);
the physics decides what it really draws: nothing unless the load side is
live (supply on, mains relay closed, meter contactor closed).  MEASure
reads what the physics says is at its terminals.
"""

from __future__ import annotations

from rig.sim.physics import PhysicalBench

from .base import SimulatedScpiInstrument
from .scpi import Call, ScpiError

MODES = {"CC": "current", "CP": "power"}


class SimulatedChroma63800(SimulatedScpiInstrument):
    identity = "Chroma ATE,63804,SIM00002,1.00"
    #: the simulated load's own rating (lab.yaml limits are checked before this, by the driver)
    CURRENT_MAX = 100.0
    POWER_MAX = 20000.0

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.physics = physics
        load = physics.load
        self.setpoints = {"current": load.setpoint if load.mode == "current" else 0.0,
                          "power": load.setpoint if load.mode == "power" else 0.0}
        add = self.add
        add("[:SOURce]:MODE", self._set_mode)
        add("[:SOURce]:MODE?", lambda _c: next(c for c, m in MODES.items() if m == self.physics.load.mode))
        add("[:SOURce]:CURRent[:RMS]", lambda c: self._set("current", c, self.CURRENT_MAX))
        add("[:SOURce]:CURRent[:RMS]?", lambda _c: f"{self.setpoints['current']:.3f}")
        add("[:SOURce]:POWer[:REAL]", lambda c: self._set("power", c, self.POWER_MAX))
        add("[:SOURce]:POWer[:REAL]?", lambda _c: f"{self.setpoints['power']:.3f}")
        add(":LOAD[:STATe]", lambda c: self.physics.set_load(on=c.boolean()))
        add(":LOAD[:STATe]?", lambda _c: "ON" if self.physics.load.on else "OFF")
        add(":MEASure:VOLTage[:RMS]?", lambda _c: f"{self.physics.load_voltage():.2f}")
        add(":MEASure:CURRent[:RMS]?", lambda _c: f"{self.physics.load_current():.3f}")
        add(":MEASure:POWer[:REAL]?", lambda _c: f"{self.physics.load_power():.1f}")

    def _set_mode(self, call: Call) -> None:
        mode = MODES.get(call.text().upper())
        if mode is None:
            raise ScpiError(-224, "Illegal parameter value")
        self.physics.set_load(mode=mode, setpoint=self.setpoints[mode])

    def _set(self, mode: str, call: Call, high: float) -> None:
        value = call.number()
        if not 0.0 <= value <= high:
            raise ScpiError(-222, "Data out of range")
        self.setpoints[mode] = value
        if self.physics.load.mode == mode:
            self.physics.set_load(setpoint=value)
