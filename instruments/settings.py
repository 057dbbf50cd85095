"""Instrument settings declared once, shared by the driver, its twin and lab.yaml.

A setting is one line in the driver class, as pymeasure's
``Instrument.control`` is: its quantity and unit, the command that reads it
and the one that sets it, the model's rating, and the lab.yaml ``limits:``
keys that bound it::

    class Chroma61500(Instrument):
        voltage = Setting("voltage", "V", get=":SOUR:VOLT:AC?", set=":SOUR:VOLT:AC {:.1f}",
                          rating=(0.0, 300.0), high="voltage_max", resolution=0.1)

From that line:

* ``src.voltage`` reads the setting from the instrument;
  ``src.voltage = 230`` checks the value against the tighter of the rating
  and lab.yaml (:class:`~instruments.limits.Range`: nothing outside it
  reaches the wire), sends it, reads it back and raises if the read-back
  differs (the labgrid publish-then-confirm rule, at the instrument);
* lab.yaml accepts ``limits: {voltage_max: ...}`` for every instrument
  whose kind has a driver declaring it (rig/config.py builds each kind's
  ``limits`` model from its drivers' settings), and docs/lab-yaml.md lists it;
* the simulated twin takes its rating and step from the same declaration
  (``Chroma61500.voltage.rating``), so the two cannot drift.

A setting whose writing is more than one command (a two-section
attenuator) leaves ``set`` out and the driver writes it; the range, the
step limit and the confirmation still come from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .errors import LimitError
from .limits import Range


class Limits(Protocol):
    """lab.yaml ``limits:`` of an instrument (:class:`rig.config.InstrumentLimits`)."""

    def get(self, key: str) -> float | None: ...


class Instrument(Protocol):
    """What a setting needs of its driver (:class:`instruments.visa.VisaInstrument`)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def limits(self) -> Limits: ...

    def rating_of(self, setting: Setting) -> tuple[float | None, float | None]: ...

    def write(self, command: str) -> None: ...

    def query(self, command: str) -> str: ...

    def query_float(self, command: str) -> float: ...

    def query_bool(self, command: str) -> bool: ...

    def confirm(self, what: str, wanted: Any, got: Any) -> None: ...


@dataclass(frozen=True)
class Limit:
    """A lab.yaml ``limits:`` key and what it bounds."""

    key: str
    side: Literal["low", "high", "step"]
    quantity: str
    unit: str
    #: the limit may be 0 (an attenuation floor); otherwise it must be above 0
    zero: bool = False

    @property
    def description(self) -> str:
        if self.side == "step":
            return f"largest single {self.quantity} step, {self.unit}"
        word = "lowest" if self.side == "low" else "highest"
        return f"{word} {self.quantity} the agent accepts, {self.unit} (the instrument's rating applies too)"


class Setting:
    """One setting of an instrument, declared in its driver class."""

    def __init__(self, quantity: str, unit: str = "", *, get: str | None = None, set: str | None = None,
                 rating: tuple[float | None, float | None] = (None, None), low: str | None = None,
                 high: str | None = None, step: str | None = None, resolution: float | None = None,
                 values: Mapping[Any, str] | None = None, zero_limit: bool = False, doc: str = ""):
        self.quantity, self.unit = quantity, unit
        self.get_command, self.set_command = get, set
        self.rating = rating
        self.low, self.high, self.step = low, high, step
        self.resolution = resolution
        #: a setting with named values (``{True: "ON", False: "OFF"}``): the strings sent, and read back
        self.values = dict(values) if values is not None else None
        self.zero_limit = zero_limit
        self.__doc__ = doc or (f"{quantity} ({unit})" if unit else quantity)
        self.name = quantity

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    # ------------------------------------------------------------------ the declaration
    def limits(self) -> list[Limit]:
        """The lab.yaml limit keys of this setting."""
        sides: list[tuple[Literal["low", "high", "step"], str | None]] = [
            ("low", self.low), ("high", self.high), ("step", self.step)]
        return [Limit(key, side, self.quantity, self.unit, zero=self.zero_limit and side != "step")
                for side, key in sides if key is not None]

    @property
    def span(self) -> tuple[float, float]:
        """The rating as two numbers (an open end is infinite): for a twin's own check."""
        low, high = self.rating
        return (low if low is not None else -math.inf, high if high is not None else math.inf)

    def range(self, instrument: Instrument) -> Range:
        """The accepted range on this instrument: its rating (the driver may
        read it from the instrument: ``rating_of``) and its lab.yaml limits."""
        limits = instrument.limits
        return Range.of(self.quantity, self.unit, instrument.rating_of(self), instrument.model,
                        low=(limits.get(self.low) if self.low else None, self.low or ""),
                        high=(limits.get(self.high) if self.high else None, self.high or ""))

    def quantise(self, instrument_name: str, value: Any) -> float:
        """``value`` rounded to the instrument's resolution (a number, or LimitError)."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise LimitError(instrument_name, f"{self.quantity} must be a number, got {value!r}") from None
        if self.resolution and math.isfinite(number):   # a non-finite value is refused by the range
            number = round(round(number / self.resolution) * self.resolution, 6)
        return number

    def check(self, instrument: Instrument, value: Any) -> Any:
        """The value to send: a named value as it is, a number quantised and
        inside the range (LimitError otherwise; nothing was sent)."""
        if self.values is not None:
            if value not in self.values:
                raise LimitError(instrument.name, f"{self.quantity} is one of {', '.join(map(str, self.values))}, "
                                                  f"got {value!r}")
            return value
        return self.range(instrument).check(instrument.name, self.quantise(instrument.name, value))

    def check_step(self, instrument: Instrument, now: float, target: float) -> None:
        """Refuse a change larger than the lab.yaml step limit."""
        step_max = instrument.limits.get(self.step) if self.step else None
        if step_max is not None and abs(target - now) > step_max + 1e-9:
            raise LimitError(instrument.name, f"a step from {now:g} to {target:g} {self.unit} is "
                                              f"{abs(target - now):g} {self.unit}, larger than {step_max:g} "
                                              f"{self.unit} (lab.yaml limits.{self.step})")

    # ------------------------------------------------------------------ on the wire
    def command(self, value: Any) -> str:
        """The set command for ``value`` (already checked)."""
        if self.set_command is None:
            raise TypeError(f"{self.name}: the driver writes this setting itself")
        return self.set_command.format(self.values[value] if self.values is not None else value)

    def write(self, instrument: Instrument, value: Any) -> None:
        """Send the (checked) value; no read-back."""
        instrument.write(self.command(value))

    def read(self, instrument: Instrument) -> Any:
        """The setting as the instrument reports it now."""
        if self.get_command is None:
            raise TypeError(f"{self.name}: the driver reads this setting itself")
        if self.values is None:
            return instrument.query_float(self.get_command)
        if set(self.values) == {True, False}:
            return instrument.query_bool(self.get_command)     # 1/0 or ON/OFF, as the firmware answers
        answer = instrument.query(self.get_command).strip().upper()
        return next((value for value, text in self.values.items() if answer == text.upper()), answer)

    def confirm(self, instrument: Instrument, value: Any) -> Any:
        """Read the setting back and raise unless it is what was sent; returns the read-back."""
        got = self.read(instrument)
        instrument.confirm(self.quantity, value, got)
        return got

    def apply(self, instrument: Instrument, value: Any) -> Any:
        """Check, send, read back and confirm; returns the read-back."""
        checked = self.check(instrument, value)
        self.write(instrument, checked)
        return self.confirm(instrument, checked)

    # ------------------------------------------------------------------ attribute access
    def __get__(self, instance: Instrument | None, owner: type | None = None) -> Any:
        return self if instance is None else self.read(instance)

    def __set__(self, instance: Instrument, value: Any) -> None:
        self.apply(instance, value)

    def __repr__(self) -> str:
        return f"<Setting {self.name}: {self.quantity} {self.unit} {self.rating}>"


def settings_of(driver: type) -> dict[str, Setting]:
    """Every setting a driver class declares (its bases' included)."""
    found: dict[str, Setting] = {}
    for klass in reversed(driver.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Setting):
                found[name] = value
    return found


def limits_of(driver: type) -> list[Limit]:
    """The lab.yaml limit keys a driver class's settings declare."""
    return [limit for s in settings_of(driver).values() for limit in s.limits()]
