"""Programmable AC source: the bench's mains (Chroma 61500/61600 style SCPI).

Command set: Chroma 61500/61600 Series Programmable AC Source, Programming
Manual, chapter "Command Syntax": SOURce (``:SOUR:VOLT:AC``,
``:SOUR:FREQ``, ``:SOUR:VOLT:LIM:AC``), OUTPut (``:OUTP ON|OFF``,
``:OUTP?``, ``:OUTP:MODE``), FETCh (``:FETC:VOLT:AC?``, ``:FETC:CURR:AC?``,
``:FETC:POW:AC?``, ``:FETC:FREQ?``) and the PULSE transient mode used for a
timed dip (``:PULS:VOLT:AC``, ``:PULS:PER`` in ms, ``:PULS:DCYC`` in %,
``:PULS:COUN``, ``:TRIG ON``, then ``*OPC?``).  The same strings are used by sigrok's
scpi-pps profile for the 61604.  Check the PULSE-mode syntax against your
unit's manual when you first connect a real source: models differ in which
transient modes they have.

Safe state: output off.  Voltage and frequency are declared settings
(:mod:`instruments.settings`): checked against the source's rating
(0-300 V, 15-1000 Hz) and lab.yaml ``limits:`` (``voltage_max``,
``frequency_min``, ``frequency_max``) before anything is sent, then read
back; at open the source's own voltage limit (``:SOUR:VOLT:LIM:AC``) is
set to ``voltage_max`` as a second line.

Example::

    with Chroma61500("ac_source", "TCPIP::10.0.0.5::2101::SOCKET", limits=cfg.limits) as src:
        src.set(voltage=230, frequency=50)
        src.on()
        src.dip(depth=0.5, duration=0.2)      # 50 % for 200 ms, then back
"""

from __future__ import annotations

from typing import Any

from .errors import LimitError
from .limits import Range
from .settings import Setting
from .visa import VisaInstrument


class Chroma61500(VisaInstrument):
    """Chroma 61500/61600-series programmable AC source."""

    model = "Chroma 61500"
    voltage = Setting("voltage", "V", get=":SOUR:VOLT:AC?", set=":SOUR:VOLT:AC {:.1f}", rating=(0.0, 300.0),
                      high="voltage_max", resolution=0.1, doc="output voltage, V rms")
    frequency = Setting("frequency", "Hz", get=":SOUR:FREQ?", set=":SOUR:FREQ {:.2f}", rating=(15.0, 1000.0),
                        low="frequency_min", high="frequency_max", resolution=0.01, doc="output frequency")
    #: the source's own voltage limit (a second line behind the driver's check), set at open
    voltage_limit = Setting("voltage limit", "V", get=":SOUR:VOLT:LIM:AC?", set=":SOUR:VOLT:LIM:AC {:.1f}",
                            rating=(0.0, 300.0), resolution=0.1)
    output_on = Setting("output", get=":OUTP?", set=":OUTP {}", values={True: "ON", False: "OFF"})
    #: the PULSE mode's period range, seconds
    DIP_DURATION = (0.0001, 99.9999)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dip_range = Range.of("dip duration", "s", self.DIP_DURATION, f"{self.model} PULSE mode")
        self._output: bool | None = None     # last confirmed output state

    def configure(self) -> None:
        """The source's own voltage limit, from lab.yaml ``voltage_max``."""
        voltage_max = self.limits.get("voltage_max")
        if voltage_max is not None:
            Chroma61500.voltage_limit.write(self, voltage_max)

    # ------------------------------------------------------------------ setpoints
    def set(self, voltage: float | None = None, frequency: float | None = None) -> dict[str, float]:
        """Program voltage (V rms) and/or frequency (Hz); both are checked
        before either is sent, and both are read back."""
        chosen = [(s, s.check(self, value)) for s, value in ((Chroma61500.voltage, voltage),
                                                              (Chroma61500.frequency, frequency)) if value is not None]
        for setting, value in chosen:
            setting.write(self, value)
            setting.confirm(self, value)
        return self.setpoints()

    def setpoints(self) -> dict[str, float]:
        return {"voltage": self.voltage, "frequency": self.frequency}

    # ------------------------------------------------------------------ output
    @property
    def is_on(self) -> bool:
        return bool(self.output_on)

    def output(self, on: bool) -> bool:
        """Switch the output and confirm it from the source; returns the state."""
        self._output = None            # unknown until confirmed
        state = bool(Chroma61500.output_on.apply(self, bool(on)))
        self._output = state
        return state

    def on(self) -> bool:
        return self.output(True)

    def off(self) -> bool:
        return self.output(False)

    def safe(self) -> bool:
        """Output off, sent before anything is asked of the source (a source
        that has stopped answering may still obey).  True if the output was
        on, or not known to be off."""
        was = self._output
        self.output(False)
        return was is not False

    # ------------------------------------------------------------------ transients
    def dip(self, depth: float, duration: float) -> dict[str, float]:
        """A timed dip: the output falls to ``(1 - depth)`` of its voltage for
        ``duration`` seconds, then returns (``depth=1``: an interruption).
        Runs in the source (PULSE mode, one pulse); returns at once."""
        if not 0.0 <= float(depth) <= 1.0:
            raise LimitError(self.name, f"dip depth is a fraction 0..1, got {depth}")
        seconds = self.dip_range.check(self.name, duration)
        if not self.is_on:
            raise LimitError(self.name, "a dip needs the output on")
        level = self.voltage * (1.0 - float(depth))
        for command in (f":PULS:VOLT:AC {level:.1f}", f":PULS:PER {seconds * 1000:.1f}", ":PULS:DCYC 100",
                        ":PULS:COUN 1", ":OUTP:MODE PULSE", ":TRIG ON"):
            self.write(command)
        self.query("*OPC?")        # returns once the source has taken the trigger
        return {"level": round(level, 1), "duration": seconds}

    # ------------------------------------------------------------------ readings
    def measure(self) -> dict[str, float]:
        """What the source measures at its output terminals."""
        return {
            "voltage": self.query_float(":FETC:VOLT:AC?"),
            "current": self.query_float(":FETC:CURR:AC?"),
            "power": self.query_float(":FETC:POW:AC?"),
            "frequency": self.query_float(":FETC:FREQ?"),
        }
