"""The simulated devices of one bench, as ``rig sim`` serves them.

:func:`start_devices` is called by :class:`rig.sim.world.World` for a bench.
It starts the simulated HAN (:mod:`rig.sim.han`), the head end
(:mod:`rig.sim.dcc`), one twin per device whose ``backend`` is ``sim`` or
``sealed``, an adapter (:mod:`rig.adapters`) for any other backend, and the
wiring of the bench's button actuators to the twins' buttons
(:mod:`rig.sim.buttons`).  Each ``sim`` twin has its own bus connection,
with its own presence and Last Will, exactly as a real device's adapter
would: the orchestrator cannot tell them apart.  A ``sealed`` twin has
none: it is reached only through its buttons, its optical port, the HAN
and the head end, as a real device on a bench without an adapter.

Every twin publishes a retained ``state`` with at least::

    {"kind": "esme", "eui64": "...", "summary": "...",
     "han": {"2.4GHz": {"rssi": -71.0, "lqi": 180, "per": 0.01, "up": true}}}

(the ESME adds ``supply``), ``event/<name>`` messages, and serves the
local actions a person at the bench could take (``cmd/press``,
``cmd/hold``, ...).  The whole contract is in docs/devices.md.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import parts
from .bench import SimBench
from .simulated_han import SimulatedHan
from .twin import Twin

log = logging.getLogger(__name__)


def start_devices(world: SimBench) -> list[Any]:
    """Start the bench's simulated HAN, head end, twins and adapters; return
    the started parts (each has ``stop()``), in start order."""
    cfg = world.cfg
    if not cfg.devices:
        return []
    from ..adapters import start_adapter
    from .dcc import HeadEnd

    started: list[Any] = []
    try:
        han = SimulatedHan(world).start()
        started.append(han)
        twins: dict[str, Twin] = {}
        # the HAN's coordinator first: every other device joins it
        order = sorted(cfg.devices.items(), key=lambda kv: not parts.device_kind(kv[1].kind).coordinator)
        for name, dev in order:
            if dev.simulated:
                twin = parts.device_kind(dev.kind).load_twin()
                if twin is None:
                    raise LookupError(f"device {name}: kind {dev.kind} has no simulated twin; give it a backend")
                twins[name] = twin(world, han, name, dev)
        headend = HeadEnd(world, han, twins)
        started.append(headend.start())
        for name, dev in order:
            if dev.simulated:
                started.append(twins[name].start())
            else:
                started.append(start_adapter(world, name, dev, medium=han))
        from .buttons import ButtonWiring

        started.append(ButtonWiring(world, twins).start())
        world.twins = twins
    except BaseException:
        for part in reversed(started):
            try:
                part.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping %r", part)
        raise
    log.info("%s: %d simulated devices on the HAN", world.bench_name, len([p for p in started if isinstance(p, Twin)]))
    return started
