"""The head end: where a bench's remote commands start and its alerts end.

One interface, :class:`HeadEnd`, whatever the lab's head end is (lab.yaml
``benches.<bench>.head_end``):

=============  ================================================  ===========================================
``kind``       implementation                                    commands / alerts
=============  ================================================  ===========================================
``simulated``  :class:`rig.headend.simulated.SimulatedHeadEnd`   the simulated DCC's bus node (``.../dcc/headend``)
``http``       :class:`rig.headend.http.HttpHeadEnd`             HTTP requests from templates / a webhook the rig serves
(plugin)       an entry point of group ``rig.headends``          :mod:`rig.headend.registry`
=============  ================================================  ===========================================

::

    dcc = bench.dcc                       # the bench's head end, as lab.yaml declares it
    t0 = bench.clock.now()
    dcc.disable()                         # supplier, remotely: {"supply": "disabled", ...}
    dcc.arm(role="dno")                   # CommandError("refused", ...) if the meter says no
    dcc.read(what="prepayment")["credit"]
    alert = dcc.wait_alert("0x8F32", since=t0)
    alert["received"]                     # the rig's own receive time (lab): latencies run to it

**Every alert carries the rig's receive time** (``received``, lab time): for
the simulated DCC the time its sink (the rig's) received it; for an HTTP
head end the moment the rig's webhook received the POST, or, for one the
rig only found when it asked the head end (a lost webhook), the moment it
asked (``via: "poll"``).  The device's own ``raised`` is recorded beside it,
never judged.  Alerts are kept once per (device, sequence number, inbox).

The head end lives as long as the :class:`rig.lab.Lab` (``lab.head_end(bench)``):
an alert that arrives between two tests is not lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..bus import MIN_WALL_TIMEOUT
from ..config import UnknownPart
from .registry import HeadEndError, make

if TYPE_CHECKING:  # pragma: no cover
    from ..bus import Bus
    from ..clock import LabClock
    from ..config import LabConfig

__all__ = ["HeadEnd", "HeadEndError", "LabPort", "make", "ALERTS_KEPT", "DEFAULT_TIMEOUT"]


class LabPort(Protocol):
    """The lab as a head end sees it (:class:`rig.lab.Lab`): its configuration,
    its clock and its bus connection."""

    cfg: LabConfig
    clock: LabClock
    bus: Bus

#: alert records a head end keeps (the oldest go first)
ALERTS_KEPT = 5000
#: lab seconds a head-end operation may take by default (WAN, hub and HAN included)
DEFAULT_TIMEOUT = 60.0


class HeadEnd:
    """The rig's side of a bench's head end: remote commands (``service_request``
    and its verbs), UTRNs, and the alerts that come back, each with the
    rig's receive time.  Subclasses implement :meth:`service_request`,
    :meth:`issue_utrn`, :meth:`ask_alerts` and :meth:`probe`; they feed
    arriving alerts to :meth:`record`."""

    kind = "?"

    def __init__(self, lab: LabPort, bench: str, cfg: Any):
        self.lab, self.bench_name, self.cfg = lab, bench, cfg
        self.bench_cfg = lab.cfg.bench(bench)
        self.clock = lab.clock
        self._alerts: list[dict[str, Any]] = []
        self._keys: set[tuple] = set()
        self.cond = threading.Condition()
        #: called on each operation: the lease holder's progress (set by ``bench.dcc``)
        self.on_progress: Callable[[], None] | None = None

    # ------------------------------------------------------------------ to implement
    def service_request(self, device: str, op: str, role: str = "supplier", timeout: float = DEFAULT_TIMEOUT,
                        **args: Any) -> dict[str, Any]:
        """A remote command: ``op`` is disable, arm, enable, add_credit
        (amount=GBP), emergency_credit, set_load_limit (threshold_kw=,
        period=) or read (what=); ``role`` supplier, dno or cad.  Returns the
        head end's outcome (``supply``, ``credit``, ...); a refusal by the
        device or the head end raises :class:`rig.bus.CommandError` with
        code ``refused`` and the reason."""
        raise NotImplementedError

    def issue_utrn(self, amount: float, device: str | None = None) -> str:
        """A one-time top-up code for the meter, as the supplier would issue it."""
        raise NotImplementedError

    def ask_alerts(self, since: float | None) -> list[dict[str, Any]] | None:
        """The head end's own list of alerts received at or after ``since``
        (each a record with ``received``); None when it offers none."""
        return None

    def probe(self) -> tuple[bool, str]:
        """Whether the head end answers now, and what it said (``rig probe``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening (webhooks, subscriptions)."""

    # ------------------------------------------------------------------ alerts
    @staticmethod
    def key(alert: dict[str, Any]) -> tuple:
        """One record per device, sequence number and inbox (a repeat is the same alert)."""
        if alert.get("seq") is not None:
            return (str(alert.get("eui64") or alert.get("device") or ""), str(alert.get("seq")),
                    str(alert.get("inbox") or ""), str(alert.get("code") or ""))
        return ("id", str(alert.get("id") or sorted((k, str(v)) for k, v in alert.items() if k != "received")))

    def record(self, alert: dict[str, Any]) -> dict[str, Any] | None:
        """Keep an alert that arrived (it carries ``received``); a repeat is dropped."""
        key = self.key(alert)
        with self.cond:
            if key in self._keys:
                return None
            self._keys.add(key)
            self._alerts.append(alert)
            if len(self._alerts) > ALERTS_KEPT:
                for old in self._alerts[: len(self._alerts) - ALERTS_KEPT]:
                    self._keys.discard(self.key(old))
                del self._alerts[: len(self._alerts) - ALERTS_KEPT]
            self.cond.notify_all()
        return alert

    def events(self, name: str | None = "alert", since: float | None = None) -> list[dict[str, Any]]:
        """The alerts received so far (oldest first), each as ``{"event": "alert", ...}``."""
        if name not in (None, "alert"):
            return []
        with self.cond:
            return [{"event": "alert", **a} for a in self._alerts
                    if since is None or float(a.get("received", 0)) >= since]

    def fetch_alerts(self, since: float | None = None, code: str | None = None, device: str | None = None,
                     inbox: str | None = None) -> list[dict[str, Any]]:
        """Alerts received at or after ``since`` (lab time): the head end's own
        list where it keeps one (anything there the rig had not received
        yet is recorded now), else the ones the rig received."""
        self._progress()
        asked = self.ask_alerts(since)
        if asked is not None:
            for a in asked:
                self.record(a)
        with self.cond:
            pool = list(self._alerts)
        return [a for a in pool if (since is None or float(a.get("received", 0)) >= since)
                and (code is None or str(a.get("code", "")).lower() == code.lower())
                and (device is None or a.get("device") == device)
                and (inbox is None or a.get("inbox") == inbox)]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return self.fetch_alerts()

    def watch_alert(self, predicate: Callable[[dict[str, Any]], object], timeout: float) -> dict[str, Any] | None:
        """Wait up to ``timeout`` lab seconds for a received alert satisfying ``predicate``."""
        def check() -> dict[str, Any] | None:
            with self.cond:
                return next((a for a in self._alerts if predicate(a)), None)

        return self.clock.wait_for(check, max(0.0, timeout), condition=self.cond) or None

    def wait_alert(self, code: str, timeout: float = 30.0, device: str | None = None,
                   since: float | None = None) -> dict[str, Any]:
        """Wait until an alert ``code`` (``"0x8F35"``, ``"AD1"``) received at or
        after ``since`` is there; return it, or raise TimeoutError."""
        def match(a: dict[str, Any]) -> bool:
            return (str(a.get("code", "")).lower() == code.lower() and (device is None or a.get("device") == device)
                    and (since is None or float(a.get("received", 0)) >= since))

        found = next((a for a in self.fetch_alerts(since=since, code=code, device=device) if match(a)), None)
        if found is None:
            found = self.watch_alert(match, max(timeout, self.clock.lab_seconds(MIN_WALL_TIMEOUT)))
        if found is None:
            found = next((a for a in self.fetch_alerts(since=since, code=code, device=device) if match(a)), None)
        if found is None:
            raise TimeoutError(f"{self.bench_name}: no alert {code}{' from ' + device if device else ''} at the head "
                               f"end ({self.kind}) within {timeout:g} lab s")
        return found

    # ------------------------------------------------------------------ the verbs
    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def meter(self, device: str | None = None) -> str:
        name = device or self.bench_cfg.wiring.meter or self.bench_cfg.device_of_kind("esme")
        if name is None:
            raise UnknownPart(f"bench {self.bench_name} has no electricity meter")
        return name

    def disable(self, device: str | None = None, role: str = "supplier", **kw: Any) -> dict[str, Any]:
        return self.service_request(self.meter(device), "disable", role, **kw)

    def arm(self, device: str | None = None, role: str = "supplier", **kw: Any) -> dict[str, Any]:
        return self.service_request(self.meter(device), "arm", role, **kw)

    def enable(self, device: str | None = None, role: str = "supplier", **kw: Any) -> dict[str, Any]:
        return self.service_request(self.meter(device), "enable", role, **kw)

    def read(self, device: str | None = None, role: str = "supplier", what: str = "metering",
             **kw: Any) -> dict[str, Any]:
        """A remote read: ``what`` is ``metering`` (``supply``, ``energy_kwh``, ``power_w``),
        ``prepayment`` (``credit``, ``emergency_credit``) or ``load_limit``."""
        return self.service_request(self.meter(device), "read", role, what=what, **kw)

    def add_credit(self, amount: float, device: str | None = None, **kw: Any) -> dict[str, Any]:
        return self.service_request(self.meter(device), "add_credit", "supplier", amount=amount, **kw)

    def __repr__(self) -> str:
        return f"<head end {self.bench_name} ({self.kind})>"
