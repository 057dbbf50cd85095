"""AC electronic load bank on the load side of the meter (Chroma 63800 style SCPI).

Command set: Chroma 63800 Series Programmable AC/DC Electronic Load,
Programming Manual, chapter "Command Syntax": MODE (``MODE CC|CP``,
``MODE?``), CURRent (``CURR <A rms>``, ``CURR?``), POWer (``POW <W>``,
``POW?``), LOAD (``LOAD ON|OFF``, ``LOAD?``) and MEASure
(``MEAS:VOLT?``, ``MEAS:CURR?``, ``MEAS:POW?``), in their short forms.

Safe state: load off (``LOAD OFF``).  The current setpoint (constant
current mode) and the power setpoint (constant power mode) are declared
settings (:mod:`instruments.settings`), checked against lab.yaml
``limits.current_max`` / ``limits.power_max`` before anything is sent and
read back after; a load bank without ``current_max`` in lab.yaml is not
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
from .settings import Setting
from .visa import VisaInstrument

MODES = {"current": "CC", "power": "CP"}


class Chroma63800(VisaInstrument):
    """Chroma 63800-series AC/DC electronic load."""

    model = "Chroma 63800"
    mode = Setting("mode", get="MODE?", set="MODE {}", values=MODES, doc="constant current (CC) or power (CP)")
    current = Setting("current", "A", get="CURR?", set="CURR {:.3f}", rating=(0.0, None), high="current_max",
                      resolution=0.001, doc="constant-current setpoint, A rms")
    power = Setting("power", "W", get="POW?", set="POW {:.3f}", rating=(0.0, None), high="power_max",
                    resolution=0.001, doc="constant-power setpoint")
    load_on = Setting("load", get="LOAD?", set="LOAD {}", values={True: "ON", False: "OFF"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.limits.get("current_max") is None:
            raise LimitError(self.name, "a load bank needs limits.current_max in lab.yaml (LAB-2 current limit)")
        self._on: bool | None = None         # last confirmed load state

    # ------------------------------------------------------------------ setpoints
    def set(self, amps: float | None = None, watts: float | None = None) -> dict[str, Any]:
        """Constant current (``amps``, A rms) or constant power (``watts``):
        the mode and the setpoint are sent, then both are read back."""
        if (amps is None) == (watts is None):
            raise LimitError(self.name, "give exactly one of amps= or watts=")
        mode, setting, value = ("current", Chroma63800.current, amps) if amps is not None else \
            ("power", Chroma63800.power, watts)
        value = setting.check(self, value)
        Chroma63800.mode.write(self, mode)
        setting.write(self, value)
        Chroma63800.mode.confirm(self, mode)
        setting.confirm(self, value)
        return {"mode": mode, "setpoint": value}

    def setpoint(self) -> dict[str, Any]:
        mode = self.mode
        if mode not in MODES:
            raise InstrumentError(self.name, self.address, f"in mode {mode}, which this driver does not use")
        return {"mode": mode, "setpoint": self.current if mode == "current" else self.power}

    # ------------------------------------------------------------------ load on/off
    @property
    def is_on(self) -> bool:
        return bool(self.load_on)

    def load(self, on: bool) -> bool:
        """Switch the load and confirm it from the instrument."""
        self._on = None                # unknown until confirmed
        state = bool(Chroma63800.load_on.apply(self, bool(on)))
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
