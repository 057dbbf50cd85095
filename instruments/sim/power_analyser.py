"""A simulated Yokogawa WT310 on the bench's load side.

Every ``:NUM:NORM:VAL?`` is one sample of
:meth:`rig.sim.physics.PhysicalBench.read_load_side` taken when the query
arrives, so a change in the physics (mains off) shows in the next sample.
Frequency with no voltage reads ``NAN``, as on the real meter.
"""

from __future__ import annotations

from rig.sim.physics import PhysicalBench, Reading

from .base import SimulatedScpiInstrument
from .scpi import Call, ScpiError

FUNCTIONS = {
    "U": lambda r: r.voltage,
    "I": lambda r: r.current,
    "P": lambda r: r.power,
    "S": lambda r: r.voltage * r.current,
    "FU": lambda r: r.frequency if r.voltage > 0 else None,
}
DEFAULT_ITEMS = ["U", "I", "P", "FU"]


class SimulatedWT310(SimulatedScpiInstrument):
    identity = "YOKOGAWA,WT310,SIM00003,F1.03"

    def __init__(self, name: str, physics: PhysicalBench):
        super().__init__(name)
        self.physics = physics
        self.items = list(DEFAULT_ITEMS) + ["U"] * 6
        self.number = len(DEFAULT_ITEMS)
        add = self.add
        add(":NUMeric:FORMat", self._set_format)
        add(":NUMeric:FORMat?", lambda _c: "ASCII")
        add(":NUMeric[:NORMal]:NUMber", self._set_number)
        add(":NUMeric[:NORMal]:NUMber?", lambda _c: str(self.number))
        add(":NUMeric[:NORMal]:ITEM#", self._set_item)
        add(":NUMeric[:NORMal]:ITEM#?", lambda c: f"{self.items[c.nums[-1] - 1]},1")
        add(":NUMeric[:NORMal]:VALue?", self._values)
        add(":RATE", lambda _c: None)

    def _set_format(self, call: Call) -> None:
        if call.text().upper() not in ("ASC", "ASCII"):
            raise ScpiError(-224, "Illegal parameter value")  # the twin speaks ASCII only

    def _set_number(self, call: Call) -> None:
        n = int(call.number())
        if not 1 <= n <= len(self.items):
            raise ScpiError(-222, "Data out of range")
        self.number = n

    def _set_item(self, call: Call) -> None:
        n = call.nums[-1]
        function = call.text(0).upper()
        if not 1 <= n <= len(self.items) or function not in FUNCTIONS:
            raise ScpiError(-224, "Illegal parameter value")
        self.items[n - 1] = function

    def _values(self, _call: Call) -> str:
        sample: Reading = self.physics.read_load_side()
        out = []
        for function in self.items[:self.number]:
            value = FUNCTIONS[function](sample)
            out.append("NAN" if value is None else f"{value:.4E}")
        return ",".join(out)
