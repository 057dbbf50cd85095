"""Power analyser on the load side of the meter (Yokogawa WT310 style SCPI).

It is the independent witness of supply state (safety property 6): what it
reads is what is on the wires, whatever the meter reports.

Command set: Yokogawa WT310/WT310HC/WT330 Communication Interface User's
Manual (IM WT310-17EN), chapter "Commands", NUMeric group:
``:NUMeric:FORMat ASCii``, ``:NUMeric:NORMal:NUMber 4``,
``:NUMeric:NORMal:ITEM<x> <function>,<element>`` with the functions U
(voltage), I (current), P (active power), FU (voltage frequency), and
``:NUMeric:NORMal:VALue?``, which returns the items comma-separated in
ASCII (``2.3012E+02,1.0003E+01,2.3019E+03,5.0001E+01``).  Values the
instrument cannot measure come back as ``NAN`` or ``INF`` (or 9.91E+37).

Nothing to de-energise: its safe state is "as it is".

Example::

    with YokogawaWT310("analyser", "TCPIP::10.0.0.7::10001::SOCKET") as wt:
        r = wt.read()
        print(r.voltage, r.current, r.power, r.frequency)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InstrumentError
from .visa import VisaInstrument

#: the items the driver programs, in the order :NUM:NORM:VAL? returns them
ITEMS = (("voltage", "U"), ("current", "I"), ("power", "P"), ("frequency", "FU"))
_NO_DATA = {"NAN", "INF", "-INF", "9.91E+37", "+9.91E+37", "-9.91E+37"}


@dataclass(frozen=True)
class Measurement:
    """One sample of the analyser: V rms, A rms, W, and Hz (None when there
    is no voltage to measure a frequency on)."""

    voltage: float
    current: float
    power: float
    frequency: float | None

    def as_dict(self) -> dict:
        return asdict(self)


class YokogawaWT310(VisaInstrument):
    """Yokogawa WT310-series single-phase power meter."""

    model = "Yokogawa WT310"
    element = 1

    def configure(self) -> None:
        """ASCII numeric output with the four items V, I, P, f."""
        self.write(":NUM:FORM ASC")
        self.write(f":NUM:NORM:NUM {len(ITEMS)}")
        for i, (_name, function) in enumerate(ITEMS, start=1):
            self.write(f":NUM:NORM:ITEM{i} {function},{self.element}")

    def read(self) -> Measurement:
        """The latest sample (one update of the analyser)."""
        answer = self.query(":NUM:NORM:VAL?")
        fields = [f.strip().upper() for f in answer.split(",")]
        if len(fields) != len(ITEMS):
            raise InstrumentError(self.name, self.address,
                                  f":NUM:NORM:VAL? answered {answer!r}: expected {len(ITEMS)} values")
        values: dict[str, float | None] = {}
        for (name, _fn), text in zip(ITEMS, fields):
            if text in _NO_DATA and name == "frequency":
                values[name] = None     # no frequency to lock on to: no voltage
                continue
            if text in _NO_DATA:
                raise InstrumentError(self.name, self.address, f"{name} reads {text}: over range or no data")
            try:
                values[name] = float(text)
            except ValueError:
                raise InstrumentError(self.name, self.address, f"{name} reads {text!r}, not a number") from None
        frequency = values.pop("frequency")
        return Measurement(**{k: float(v) for k, v in values.items() if v is not None}, frequency=frequency)
