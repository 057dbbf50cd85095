"""AC electronic load bank on the load side of the meter (Chroma 63800 style SCPI).

Command set: Chroma 63800 Series Programmable AC/DC Electronic Load,
Programming Manual, chapter "Command Syntax": MODE (``MODE CC|CP``,
``MODE?``), CURRent (``CURR <A rms>``, ``CURR?``), POWer (``POW <W>``,
``POW?``), LOAD (``LOAD ON|OFF``, ``LOAD?``) and MEASure
(``MEAS:VOLT?``, ``MEAS:CURR?``, ``MEAS:POW?``), in their short forms.

Safe state: load off (``LOAD OFF``).  The current setpoint (constant
current mode) and the power setpoint (constant power mode) are checked
against lab.yaml ``limits.current_max`` / ``limits.power_max`` before
anything is sent; a load bank without ``current_max`` in lab.yaml is not
driven at all (LAB-2 needs the limit).

Example::

    with Chroma63800("load", "TCPIP::10.0.0.6::2101::SOCKET", limits=cfg.limits) as load:
        load.draw(amps=10)          # CC mode, 10 A rms, load on
        print(load.measure())       # {'voltage': 229.8, 'current': 10.0, 'power': 2298.0}
        load.off()
"""

from __future__ import annotations

from typing import Any

from .errors import InstrumentError, LimitError
from .limits import Range
from .visa import VisaInstrument

MODES = {"current": "CC", "power": "CP"}


class Chroma63800(VisaInstrument):
    """Chroma 63800-series AC/DC electronic load."""

    model = "Chroma 63800"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        lim = self.limits
        if lim.current_max is None:
            raise LimitError(self.name, "a load bank needs limits.current_max in lab.yaml (LAB-2 current limit)")
        self.current_range = Range.of("current", "A", (0.0, None), self.model, high=(lim.current_max, "current_max"))
        self.power_range = Range.of("power", "W", (0.0, None), self.model, high=(lim.power_max, "power_max"))
        self._on: bool | None = None         # last confirmed load state

    # ------------------------------------------------------------------ setpoints
    def set(self, amps: float | None = None, watts: float | None = None) -> dict[str, Any]:
        """Constant current (``amps``, A rms) or constant power (``watts``)."""
        if (amps is None) == (watts is None):
            raise LimitError(self.name, "give exactly one of amps= or watts=")
        if amps is not None:
            mode, value, header = "current", self.current_range.check(self.name, amps), "CURR"
        else:
            mode, value, header = "power", self.power_range.check(self.name, watts), "POW"
        self.write(f"MODE {MODES[mode]}")
        self.write(f"{header} {value:.3f}")
        self.confirm("mode", MODES[mode], self.query("MODE?").upper())
        self.confirm(mode, round(value, 3), self.query_float(f"{header}?"))
        return {"mode": mode, "setpoint": value}

    def setpoint(self) -> dict[str, Any]:
        code = self.query("MODE?").upper()
        mode = next((m for m, c in MODES.items() if c == code), None)
        if mode is None:
            raise InstrumentError(self.name, self.address, f"in mode {code}, which this driver does not use")
        return {"mode": mode, "setpoint": self.query_float("CURR?" if mode == "current" else "POW?")}

    # ------------------------------------------------------------------ load on/off
    @property
    def is_on(self) -> bool:
        return self.query_bool("LOAD?")

    def load(self, on: bool) -> bool:
        """Switch the load and confirm it from the instrument."""
        self._on = None                # unknown until confirmed
        self.write("LOAD ON" if on else "LOAD OFF")
        state = self.is_on
        self.confirm("load", on, state)
        self._on = state
        return state

    def draw(self, amps: float | None = None, watts: float | None = None) -> dict[str, Any]:
        """Set the setpoint, then switch the load on."""
        result = self.set(amps=amps, watts=watts)
        self.load(True)
        return result | {"on": True}

    def off(self) -> bool:
        return self.load(False)

    def safe(self) -> bool:
        """Load off, sent before anything is asked of the load.  True if it
        was on, or not known to be off."""
        was = self._on
        self.load(False)
        return was is not False

    # ------------------------------------------------------------------ readings
    def measure(self) -> dict[str, float]:
        """Voltage, current and power at the load's input terminals."""
        return {"voltage": self.query_float("MEAS:VOLT?"), "current": self.query_float("MEAS:CURR?"),
                "power": self.query_float("MEAS:POW?")}
