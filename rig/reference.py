"""The requirement values the suites judge against.

A check compares what the rig observed with the *requirement's* value (the
3-minute outage period, the enable bound, the 2-second hold), never with the
device's own settings: a meter configured for 168 s is a finding, not a new
expectation.  A lab that must judge against another value declares it in
lab.yaml with its reason; the run record, the report and the safety pack
show every such deviation in red::

    suites:
      deviations:
        outage_alert_period: {value: 170, reason: "DNO agreement X-123 for this network"}

>>> refs = References()
>>> refs.outage_alert_period
180.0
>>> References({"hold_time": Deviation(value=3.0, reason="make Y")}).deviations[0]["reference"]
2.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Reference:
    key: str
    value: float
    units: str
    requirement: str
    text: str


REFERENCES: dict[str, Reference] = {r.key: r for r in (
    Reference("outage_alert_period", 180.0, "s", "OUT-2",
              "if supply is not restored within 3 minutes an alert goes via the WAN to the DCC (002:1671-1675)"),
    Reference("enable_latency_bound", 5.0, "s", "SUP-2",
              "safety property 2: an armed supply closes within a bounded time of the local action, or never"),
    Reference("hold_time", 2.0, "s", "SUP-7",
              "the enable button is held for at least 2 s (public SMETS2 manuals)"),
    Reference("gas_mirror_period", 1800.0, "s", "HAN-7",
              "the hub's gas mirror is synchronised every 30 minutes (002:1267-1271)"),
)}


class Deviation(BaseModel):
    """A lab's declared departure from one requirement value."""

    model_config = ConfigDict(extra="forbid")
    value: float = Field(..., gt=0, description="the value this lab judges against instead")
    reason: str = Field(..., min_length=3, description="why (an agreement, a meter make's documented behaviour)")


class References:
    """The values in force for a run: the requirements', with the lab's declared deviations."""

    def __init__(self, deviations: dict[str, Deviation] | None = None):
        unknown = set(deviations or {}) - set(REFERENCES)
        if unknown:
            raise KeyError(f"no requirement value named {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(REFERENCES)}")
        self._deviations = dict(deviations or {})

    def value(self, key: str) -> float:
        dev = self._deviations.get(key)
        return dev.value if dev is not None else REFERENCES[key].value

    def __getattr__(self, key: str) -> float:
        if key in REFERENCES:
            return self.value(key)
        raise AttributeError(key)

    def deviates(self, key: str) -> bool:
        return key in self._deviations

    def attrs(self, key: str) -> dict[str, Any]:
        """Measurement attributes naming the value judged against, and a deviation when there is one."""
        ref = REFERENCES[key]
        out: dict[str, Any] = {"reference": ref.value}
        if self.deviates(key):
            out.update(deviation=True, judged_against=self.value(key),
                       deviation_reason=self._deviations[key].reason)
        return out

    @property
    def deviations(self) -> list[dict[str, Any]]:
        """For the run record: each declared deviation with the requirement value it replaces."""
        return [{"key": k, "requirement": REFERENCES[k].requirement, "reference": REFERENCES[k].value,
                 "value": d.value, "units": REFERENCES[k].units, "reason": d.reason}
                for k, d in self._deviations.items()]
