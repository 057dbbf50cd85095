"""The simulated DCC as the bench's head end (lab.yaml ``head_end: {kind: simulated}``, the default).

Commands are the DCC node's ops over the bus (``rig/v1/<bench>/dcc/headend``:
``service_request``, ``issue_utrn``, ``alerts``; docs/devices.md); alerts
come from its ``event/alert``, each stamped ``received`` by the DCC's alert
sink, the rig's side of the simulated DCC (:mod:`rig.sim.dcc`).
"""

from __future__ import annotations

from typing import Any

from ..contract import Node
from . import DEFAULT_TIMEOUT, HeadEnd, LabPort

#: lab seconds a query of the sink may take
QUERY_TIMEOUT = 30.0


class SimulatedHeadEnd(HeadEnd):
    kind = "simulated"

    def __init__(self, lab: LabPort, bench: str, cfg: Any):
        super().__init__(lab, bench, cfg)
        self.node = Node(bench, "dcc", "headend")
        self.bus = lab.bus
        self._state = self.bus.watch(self.node.state)
        self._presence = self.bus.watch(self.node.presence)
        self.bus.subscribe(f"{self.node.base}/event/alert", self._on_alert)

    @staticmethod
    def key(alert: dict[str, Any]) -> tuple:
        """The sink stamps each record it keeps with its own receive time, once
        per inbox: that, with the code, device and inbox, names the record
        (the event's bus ``seq`` is not the device's for AD1)."""
        return (str(alert.get("code")), str(alert.get("eui64") or alert.get("device") or ""),
                str(alert.get("inbox") or ""), round(float(alert.get("received", 0.0)), 6))

    def _on_alert(self, _topic: str, payload: Any) -> None:
        if isinstance(payload, dict) and "received" in payload:
            self.record(dict(payload))

    @property
    def state(self) -> dict[str, Any]:
        """The DCC node's retained state (alert counts, pending outages)."""
        return self._state.get(self.node.state) or {}

    def _request(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._progress()
        return self.bus.request(self.node, op, args, timeout=timeout)

    def service_request(self, device: str, op: str, role: str = "supplier", timeout: float = DEFAULT_TIMEOUT,
                        **args: Any) -> dict[str, Any]:
        body = {"role": role, "device": device, "op": op, **{k: v for k, v in args.items() if v is not None}}
        return self._request("service_request", body, timeout)

    def issue_utrn(self, amount: float, device: str | None = None) -> str:
        return self._request("issue_utrn", {"device": self.meter(device), "amount": amount}, QUERY_TIMEOUT)["utrn"]

    def ask_alerts(self, since: float | None) -> list[dict[str, Any]] | None:
        args = {} if since is None else {"since": since}
        return self._request("alerts", args, QUERY_TIMEOUT)["alerts"]

    def probe(self) -> tuple[bool, str]:
        presence = self._presence.wait_for(lambda p: p.get("online"), 1.0, topic=self.node.presence, min_wall=0.5)
        if not presence:
            return False, f"no simulated DCC online at {self.node.base} (is `rig sim` running?)"
        got = self._request("alerts", {"since": self.clock.now()}, QUERY_TIMEOUT)
        return True, f"simulated DCC at {self.node.base}: {len(got.get('alerts', []))} new alerts"

    def close(self) -> None:
        self.bus.unsubscribe(f"{self.node.base}/event/alert", self._on_alert)
        self._state.close()
        self._presence.close()

    def __repr__(self) -> str:
        return f"<head end {self.bench_name} (simulated DCC): {self.state.get('summary', 'no state')}>"
