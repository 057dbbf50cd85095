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

Safe state: output off.  Voltage and frequency are checked against the
source's rating (0-300 V, 15-1000 Hz) and lab.yaml ``limits:``
(``voltage_max``, ``frequency_min``, ``frequency_max``) before anything is
sent; at open the source's own voltage limit (``:SOUR:VOLT:LIM:AC``) is set
to ``voltage_max`` as a second line.

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
from .visa import VisaInstrument


class Chroma61500(VisaInstrument):
    """Chroma 61500/61600-series programmable AC source."""

    model = "Chroma 61500"
    VOLTAGE_RATING = (0.0, 300.0)
    FREQUENCY_RATING = (15.0, 1000.0)
    #: the PULSE mode's period range, seconds
    DIP_DURATION = (0.0001, 99.9999)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        lim = self.limits
        self.voltage_range = Range.of("voltage", "V", self.VOLTAGE_RATING, self.model,
                                      high=(lim.voltage_max, "voltage_max"))
        self.frequency_range = Range.of("frequency", "Hz", self.FREQUENCY_RATING, self.model,
                                        low=(lim.frequency_min, "frequency_min"),
                                        high=(lim.frequency_max, "frequency_max"))
        self.dip_range = Range.of("dip duration", "s", self.DIP_DURATION, f"{self.model} PULSE mode")
        self._output: bool | None = None     # last confirmed output state

    def configure(self) -> None:
        """The source's own voltage limit, from lab.yaml ``voltage_max``."""
        if self.limits.voltage_max is not None:
            self.write(f":SOUR:VOLT:LIM:AC {self.limits.voltage_max:.1f}")

    # ------------------------------------------------------------------ setpoints
    def set(self, voltage: float | None = None, frequency: float | None = None) -> dict[str, float]:
        """Program voltage (V rms) and/or frequency (Hz); both are checked
        before either is sent, and both are read back."""
        v = self.voltage_range.check(self.name, voltage) if voltage is not None else None
        f = self.frequency_range.check(self.name, frequency) if frequency is not None else None
        if v is not None:
            self.write(f":SOUR:VOLT:AC {v:.1f}")
            self.confirm("voltage", round(v, 1), self.query_float(":SOUR:VOLT:AC?"))
        if f is not None:
            self.write(f":SOUR:FREQ {f:.2f}")
            self.confirm("frequency", round(f, 2), self.query_float(":SOUR:FREQ?"))
        return self.setpoints()

    def setpoints(self) -> dict[str, float]:
        return {"voltage": self.query_float(":SOUR:VOLT:AC?"), "frequency": self.query_float(":SOUR:FREQ?")}

    # ------------------------------------------------------------------ output
    @property
    def is_on(self) -> bool:
        return self.query_bool(":OUTP?")

    def output(self, on: bool) -> bool:
        """Switch the output and confirm it from the source; returns the state."""
        self._output = None            # unknown until confirmed
        self.write(":OUTP ON" if on else ":OUTP OFF")
        state = self.is_on
        self.confirm("output", on, state)
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
        level = self.query_float(":SOUR:VOLT:AC?") * (1.0 - float(depth))
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
