"""A real meter seen through its optical port (IEC 62056-21), on the bus contract.

For a meter the rig cannot reach over a HAN (an older meter, a meter under
type test, a meter whose HAN is the thing being tested), an IEC 62056-21
optical probe reads its registers.  This adapter publishes them as the
device's retained ``state`` every ``poll_period`` lab seconds and serves
``read``:

* ``1.8.0`` energy import (kWh) -> ``metrology.energy_kwh``;
* ``32.7.0`` voltage, ``31.7.0`` current, ``14.7.0`` frequency;
* ``96.3.10`` disconnect control state (0 disconnected, 1 connected,
  2 ready for reconnection) -> ``supply`` disabled / enabled / armed;
* every register as ``registers``.

``han`` is empty: the probe says nothing about the radio.

``lab.yaml``::

    backend: optical
    adapter: {port: /dev/ttyUSB1, poll_period: 60, timeout: 2.0}

The probe protocol is the bench's own optical probe driver
(:class:`instruments.optical_probe.OpticalProbe`): one implementation of
IEC 62056-21 in the rig.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from ..bus import Bus, CommandContext, Refused
from ..contract import Node
from . import AdapterError

log = logging.getLogger(__name__)

DISCONNECT_STATE = {"0": "disabled", "1": "enabled", "2": "armed"}


class OpticalAdapter:
    def __init__(self, lab: Any, bench: str, name: str, device: Any, endpoint: Any, clock: Any, medium: Any = None):
        from instruments.optical_probe import OpticalProbe

        opts = dict(device.adapter)
        port = opts.get("port")
        if not port:
            raise AdapterError(f"device {name}: backend 'optical' needs adapter.port (e.g. /dev/ttyUSB1)")
        self.bench, self.name, self.cfg, self.clock = bench, name, device, clock
        self.poll_period = float(opts.get("poll_period", 60.0))
        self.probe = OpticalProbe(name, str(port), timeout=float(opts.get("timeout", 2.0)))
        self.node = Node(bench, "device", name)
        self.bus = Bus(endpoint, client_id=f"optical-{bench}-{name}-{uuid.uuid4().hex[:6]}", clock=clock,
                       presence=self.node, presence_info={"kind": device.kind})
        self.readout: dict[str, Any] | None = None
        self.error: str | None = None
        self.updated: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"optical:{bench}/{name}", daemon=True)

    def start(self) -> "OpticalAdapter":
        self.bus.connect()
        self.bus.serve(self.node, "read", self._read_op)
        self.bus.serve(self.node, "status", lambda _a, _c: self.state())
        self.read()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.probe.close()
        self.bus.close()

    def read(self) -> bool:
        from instruments.errors import InstrumentError

        with self._lock:
            try:
                self.readout = self.probe.read().as_dict()
                self.error, self.updated = None, self.clock.now()
            except InstrumentError as exc:
                self.error = str(exc)
                log.info("%s: optical read failed: %s", self.name, exc)
        self.publish()
        return self.error is None

    def _loop(self) -> None:
        while not self._stop.wait(self.clock.wall_seconds(self.poll_period)):
            self.read()

    def _read_op(self, _args: Any, _ctx: CommandContext) -> dict:
        if not self.read():
            raise Refused(f"{self.name}: {self.error}", code="timeout")
        return self.state()

    def state(self) -> dict[str, Any]:
        regs = (self.readout or {}).get("registers", {})

        def num(address: str) -> float | None:
            try:
                return float(regs[address]["value"])
            except (KeyError, ValueError):
                return None

        state = num("96.3.10")
        supply = DISCONNECT_STATE.get(str(int(state))) if state is not None else None
        out: dict[str, Any] = {
            "kind": self.cfg.kind, "eui64": self.cfg.id, "backend": "optical", "firmware": self.cfg.firmware,
            "identification": (self.readout or {}).get("identification"),
            "summary": (f"{supply}, " if supply else "") + (f"{num('1.8.0')} kWh" if num("1.8.0") is not None
                                                             else (self.error or "no readout yet")),
            "han": {}, "updated": self.updated, "error": self.error,
            "metrology": {"energy_kwh": num("1.8.0"), "voltage": num("32.7.0"), "current": num("31.7.0"),
                          "frequency": num("14.7.0")},
            "registers": {a: r["value"] + (f"*{r['unit']}" if r.get("unit") else "") for a, r in regs.items()},
        }
        if supply:
            out["supply"] = supply
        return out

    def publish(self) -> None:
        if self.bus.connected:
            self.bus.publish_state(self.node, self.state())
