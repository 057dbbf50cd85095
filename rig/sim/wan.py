"""The simulated WAN provider's network and the DCC's alert routing.

Part of the simulated system under test, not of the rig: it carries what
the comms hubs send (alerts, the hub's last gasp, its power-restored notice)
to the DCC and routes each alert to the inboxes of the parties it is for
(supplier, network operator, WAN provider), where the rig's alert sink
(:class:`rig.sim.dcc.HeadEnd`) records it with the rig's own receive time.

Outage reporting is the WAN provider's (seed 002:1678-1693, "CSPs may elect
to implement the functionality in any of the components of their smart
meter WAN infrastructure, including ... the communications hub"): a hub on
the unmetered supply that loses mains sends a last gasp on its reserve; if
its power-restored notice has not come within the hub's configured
``outage_alert_period`` (180 s: OUT-2), the network raises the DCC alert AD1
"Power Outage Event" for the network operator.  The meter plays no part in
it: it is dark.  The rig judges the AD1 it receives against the
requirement's 3 minutes, never against this setting.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from ..alerts import OUTAGE_ALERT, OUTAGE_ALERT_NAME, AlertCode
from .event_loop import EventLoop

log = logging.getLogger(__name__)

#: one-way WAN delay, lab seconds (cellular/long-range radio to the head end)
WAN_LATENCY = 0.5

_DNO = {AlertCode.SUPPLY_INTERRUPTED, AlertCode.SUPPLY_OUTAGE_RESTORED, AlertCode.SUPPLY_OUTAGE_RESTORED_LONG,
        AlertCode.VOLTAGE_SAG, AlertCode.VOLTAGE_SAG_END, AlertCode.VOLTAGE_SWELL, AlertCode.VOLTAGE_SWELL_END}
_SECURITY = {AlertCode.AUTHENTICATION_FAILURE, AlertCode.UNAUTHORISED_ACCESS, AlertCode.NO_AUTHORITY,
             AlertCode.FAILED_AUTHORISATION}


def routes(code: str) -> list[str]:
    """The DCC's routing: the parties an alert code is sent to."""
    if code == OUTAGE_ALERT:
        return ["dno"]
    try:
        alert = AlertCode.parse(code)
    except ValueError:
        return ["supplier"]
    if alert in _DNO:
        return ["dno"]
    if alert in _SECURITY:
        return ["supplier", "wan_provider"]
    if alert is AlertCode.LOAD_LIMIT_RESTORED:
        return ["supplier", "dno"]
    return ["supplier"]


class AlertSink(Protocol):
    """Where the WAN delivers: the head end (:class:`rig.sim.dcc.HeadEnd`)."""

    def receive(self, record: dict[str, Any], inbox: str) -> object: ...

    def notice(self, body: dict[str, Any]) -> None: ...


class Wan:
    """The WAN provider's network of one bench, in lab time on the HAN loop."""

    def __init__(self, loop: EventLoop, sink: AlertSink):
        self.loop, self.sink, self.clock = loop, sink, loop.clock
        self.pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ from the hubs
    def alert_from_hub(self, hub: str, record: dict[str, Any]) -> None:
        """An alert a hub sends up the WAN (thread-safe): routed after the WAN's delay."""
        self.loop.call_later(WAN_LATENCY, self.route, {**record, "via": hub})

    def route(self, record: dict[str, Any]) -> None:
        for inbox in routes(record["code"]):
            self.sink.receive(record, inbox)

    def hub_lost_power(self, hub: str, at: float, period: float, premises: list[str]) -> None:
        """A hub's last gasp: its mains went at ``at``; raise AD1 ``period`` lab seconds
        later unless its power-restored notice comes first."""
        def arrived() -> None:
            with self._lock:
                if hub in self.pending:
                    return
                handle = self.loop.call_at(at + period, self._outage_due, hub)
                self.pending[hub] = {"start": at, "due": at + period, "handle": handle, "premises": premises}

        self.loop.call_later(WAN_LATENCY, arrived)

    def hub_power_restored(self, hub: str, at: float) -> None:
        """A hub is back on mains: supply is back at its premises (unmetered feed)."""
        def arrived() -> None:
            with self._lock:
                p = self.pending.pop(hub, None)
            if p is not None:
                p["handle"].cancel()
                log.info("outage at %s over before its alert", hub)
            self.sink.notice({"notice": "hub_power_restored", "device": hub, "at": at,
                              "cancelled": p is not None})

        self.loop.call_later(WAN_LATENCY, arrived)

    def _outage_due(self, hub: str) -> None:
        with self._lock:
            p = self.pending.pop(hub, None)
        if p is None:
            return
        self.route({"code": OUTAGE_ALERT, "name": OUTAGE_ALERT_NAME, "device": hub, "raised": self.clock.now(),
                    "premises": p["premises"], "source": "wan_provider", "via": "wan_provider"})

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {d: {"start": p["start"], "due": p["due"]} for d, p in self.pending.items()}

    def stop(self) -> None:
        with self._lock:
            for p in self.pending.values():
                p["handle"].cancel()
            self.pending.clear()
