"""Real devices behind the same bus contract as the twins.

A device whose ``lab.yaml`` ``backend`` is not ``sim`` is served by an
adapter: its own bus connection, presence and Last Will, the same retained
``state`` (``summary``, ``supply``, ``han`` per band) and the operations the
adapter can carry out.  A rig script cannot tell an adapter from a twin::

    devices:
      esme:
        kind: esme
        id: "00:0d:6f:00:00:00:00:01"
        backend: zigpy                  # a zigpy radio on the lab's HAN
        adapter: {radio: znp, path: /dev/ttyUSB0, baudrate: 115200, poll_period: 30}
      meter-b:
        kind: esme
        id: "00:0d:6f:00:00:00:00:21"
        backend: optical                # an IEC 62056-21 probe on its optical port
        adapter: {port: /dev/ttyUSB1, poll_period: 60}

Each backend is declared once, in rig/parts.py (:class:`rig.parts.DeviceBackend`):

=========  =====================================  ==============================================
backend    adapter                                 what it offers on the bus
=========  =====================================  ==============================================
zigpy      :class:`.zigpy_bridge.HanBridge`        SE Metering/Prepayment reads over a zigpy radio
                                                   (zigpy-znp, bellows, or the simulated medium);
                                                   RSSI/LQI of every packet (``event/packet``)
optical    :class:`.optical.OpticalAdapter`        the meter's registers over IEC 62056-21
=========  =====================================  ==============================================

Adapters start inside ``rig sim`` when the bench has simulated parts, or on
their own: ``python -m rig.adapters --lab lab.yaml --bench bench-1`` (on
the machine the radio or probe is plugged into).
"""

from __future__ import annotations

from typing import Any

from .. import parts


class AdapterError(RuntimeError):
    """An adapter cannot start; the message names the device and what to do."""


def adapter_class(backend: str, device: str = "") -> Any:
    """The adapter class of a lab.yaml ``backend:`` (each backend is declared once, in rig/parts.py)."""
    try:
        return parts.device_backend(backend).load()
    except parts.UnknownKind as exc:
        raise AdapterError(f"device {device}: {exc}") from None


def start_adapter(world: Any, name: str, device: Any, medium: Any = None) -> Any:
    """Start the adapter for one device of the world's bench (``rig sim``).
    ``medium`` is the bench's simulated HAN, for ``radio: sim``."""
    cls = adapter_class(device.backend, name)
    return cls(world.lab, world.bench_name, name, device, world.endpoint, world.clock, medium=medium).start()
