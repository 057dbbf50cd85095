"""Setpoint limits that live in the instrument driver (pymeasure style).

A driver declares, for each setpoint, the range it accepts: the tighter of
the instrument's own rating and the ``limits:`` entry of lab.yaml.  A value
outside it raises :class:`~instruments.errors.LimitError` naming the bound
and where it comes from, and nothing reaches the wire::

    >>> r = Range.of("voltage", "V", rating=(0, 300), model="Chroma 61500", high=(264, "voltage_max"))
    >>> r.check("ac_source", 250.0)
    250.0
    >>> r.check("ac_source", 270.0)
    Traceback (most recent call last):
    ...
    instruments.errors.LimitError: instrument ac_source: voltage 270 V is above 264 V (lab.yaml limits.voltage_max)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import LimitError


@dataclass(frozen=True)
class Bound:
    value: float
    source: str


def _pick(bounds: list[Bound], tightest) -> Bound | None:
    return tightest(bounds, key=lambda b: b.value) if bounds else None


@dataclass(frozen=True)
class Range:
    """The accepted range of one setpoint, with where each end comes from."""

    quantity: str
    unit: str
    low: Bound | None = None
    high: Bound | None = None

    @classmethod
    def of(cls, quantity: str, unit: str, rating: tuple[float | None, float | None] = (None, None),
           model: str = "", low: tuple[float | None, str] = (None, ""),
           high: tuple[float | None, str] = (None, "")) -> "Range":
        """The tighter of the model's ``rating`` and lab.yaml's ``low``/``high``
        (each given as ``(value, limits key)``; a value of None is no bound)."""
        lows = [Bound(v, s) for v, s in ((rating[0], f"rating of the {model}"),
                                         (low[0], f"lab.yaml limits.{low[1]}")) if v is not None]
        highs = [Bound(v, s) for v, s in ((rating[1], f"rating of the {model}"),
                                          (high[0], f"lab.yaml limits.{high[1]}")) if v is not None]
        return cls(quantity, unit, _pick(lows, max), _pick(highs, min))

    def check(self, instrument: str, value: float) -> float:
        """``value`` as a float if it is inside the range, else LimitError."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LimitError(instrument, f"{self.quantity} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise LimitError(instrument, f"{self.quantity} must be a finite number, got {value}")
        if self.high is not None and value > self.high.value:
            raise LimitError(instrument, f"{self.quantity} {value:g} {self.unit} is above "
                                         f"{self.high.value:g} {self.unit} ({self.high.source})")
        if self.low is not None and value < self.low.value:
            raise LimitError(instrument, f"{self.quantity} {value:g} {self.unit} is below "
                                         f"{self.low.value:g} {self.unit} ({self.low.source})")
        return value

    def describe(self) -> dict[str, float | None]:
        return {"min": self.low.value if self.low else None, "max": self.high.value if self.high else None}
