"""A simulated Chroma 61500-series AC source, feeding the bench's physics.

It accepts the commands of :mod:`instruments.ac_source` (long or short
form) and drives :class:`rig.sim.physics.PhysicalBench`: the output and
its voltage and frequency are the bench's supply; a PULSE-mode trigger is a
timed dip of the supply (``physics.dip``), timed in lab time; FETCh reads
what is at the terminals.  Setpoints outside the source's rating or above
its programmed voltage limit are rejected with ``-222,"Data out of range"``
and change nothing, as on the real source.
"""

from __future__ import annotations

from rig.sim.physics import PhysicalBench

from ..ac_source import Chroma61500
from .base import SimulatedScpiInstrument
from .scpi import Call, ScpiError

MODES = ("FIXED", "LIST", "PULSE", "STEP")


def _onoff(state: bool) -> str:
    return "ON" if state else "OFF"


class SimulatedChroma61500(SimulatedScpiInstrument):
    identity = "Chroma ATE,61505,SIM00001,1.00"
    #: the source's ratings, as the driver declares them
    VOLTAGE = Chroma61500.voltage.span
    FREQUENCY = Chroma61500.frequency.span

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.physics = physics
        src = physics.source
        self.voltage, self.frequency = src.voltage, src.frequency
        self.voltage_limit = self.VOLTAGE[1]
        self.mode = "FIXED"
        self.pulse = {"voltage": 0.0, "period_ms": 100.0, "duty": 50.0, "count": 1}
        add = self.add
        add("[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]:AC", self._set_voltage)
        add("[:SOURce]:VOLTage[:LEVel][:IMMediate][:AMPLitude]:AC?", lambda _c: f"{self.voltage:.1f}")
        add("[:SOURce]:VOLTage:LIMit:AC", self._set_limit)
        add("[:SOURce]:VOLTage:LIMit:AC?", lambda _c: f"{self.voltage_limit:.1f}")
        add("[:SOURce]:FREQuency[:IMMediate]", self._set_frequency)
        add("[:SOURce]:FREQuency[:IMMediate]?", lambda _c: f"{self.frequency:.2f}")
        add(":OUTPut[:STATe]", lambda c: self.physics.set_source(output=c.boolean()))
        add(":OUTPut[:STATe]?", lambda _c: _onoff(self.physics.source.output))
        add(":OUTPut:MODE", self._set_mode)
        add(":OUTPut:MODE?", lambda _c: self.mode)
        add("[:SOURce]:PULSe:VOLTage[:AC]", lambda c: self._pulse("voltage", c, 0.0, self.VOLTAGE[1]))
        add("[:SOURce]:PULSe:PERiod", lambda c: self._pulse("period_ms", c, 0.1, 99999.9))
        add("[:SOURce]:PULSe:DCYCle", lambda c: self._pulse("duty", c, 0.0, 100.0))
        add("[:SOURce]:PULSe:COUNt", lambda c: self._pulse("count", c, 0, 65535))
        add(":TRIGger[:STATe]", self._trigger)
        for root in (":FETCh", ":MEASure"):
            add(f"{root}:VOLTage:AC?", lambda _c: f"{self.physics.supply_voltage():.2f}")
            add(f"{root}:VOLTage:ACDC?", lambda _c: f"{self.physics.supply_voltage():.2f}")
            add(f"{root}:CURRent:AC?", lambda _c: f"{self.physics.load_current():.3f}")
            add(f"{root}:POWer:AC?", lambda _c: f"{self.physics.load_power():.1f}")
            add(f"{root}:FREQuency?", lambda _c: f"{self.frequency if self.physics.source.output else 0.0:.2f}")

    @staticmethod
    def _in(value: float, low: float, high: float) -> float:
        if not low <= value <= high:
            raise ScpiError(-222, "Data out of range")
        return value

    def _set_voltage(self, call: Call) -> None:
        v = self._in(call.number(), *self.VOLTAGE)
        if v > self.voltage_limit:
            raise ScpiError(-222, "Data out of range")
        self.voltage = v
        self.physics.set_source(voltage=v)

    def _set_limit(self, call: Call) -> None:
        self.voltage_limit = self._in(call.number(), *self.VOLTAGE)

    def _set_frequency(self, call: Call) -> None:
        self.frequency = self._in(call.number(), *self.FREQUENCY)
        self.physics.set_source(frequency=self.frequency)

    def _set_mode(self, call: Call) -> None:
        mode = call.text().upper()
        if mode not in MODES:
            raise ScpiError(-224, "Illegal parameter value")
        self.mode = mode

    def _pulse(self, key: str, call: Call, low: float, high: float) -> None:
        self.pulse[key] = self._in(call.number(), low, high)

    def _trigger(self, call: Call) -> None:
        if not call.boolean() or self.mode != "PULSE" or not self.physics.source.output:
            return
        p = self.pulse
        depth = min(1.0, max(0.0, 1.0 - p["voltage"] / self.voltage)) if self.voltage > 0 else 0.0
        seconds = p["period_ms"] / 1000.0 * p["duty"] / 100.0 * max(1, int(p["count"]))
        self.physics.dip(depth, seconds)
