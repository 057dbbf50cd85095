"""Where an instrument is: the lab.yaml address, or a simulated one's announcement.

lab.yaml gives each instrument an ``address``: a VISA resource
(``TCPIP::10.0.0.5::5025::SOCKET``), a serial device or pyserial URL for the
optical probe (``/dev/ttyUSB0``), or ``sim``.  A simulated instrument
listens on a port the OS picks, so it announces its real address, retained,
on the bus::

    rig/v1/<bench>/instrument/<name>/address
    {"address": "TCPIP::127.0.0.1::40123::SOCKET", "simulated": true}

and the agent waits for that announcement (:func:`resolve`).  Above this
module nothing knows whether an instrument is simulated.
"""

from __future__ import annotations

import threading
from typing import Any

from rig.bus import Bus
from rig.config import InstrumentConfig
from rig.contract import Node

#: wall seconds the agent waits for a simulated instrument to announce itself
ANNOUNCE_TIMEOUT = 15.0


class AddressError(RuntimeError):
    """No usable address for an instrument."""


def address_topic(bench: str, name: str) -> str:
    return Node(bench, "instrument", name).base + "/address"


def announce(bus: Bus, bench: str, name: str, address: str) -> None:
    """Publish a simulated instrument's real address (retained)."""
    bus.publish(address_topic(bench, name), {"address": address, "simulated": True}, retain=True)


def withdraw(bus: Bus, bench: str, name: str) -> None:
    """Clear the announcement (the instrument is gone)."""
    bus.clear_retained(address_topic(bench, name))


def resolve(bus: Bus, bench: str, name: str, cfg: InstrumentConfig, timeout: float = ANNOUNCE_TIMEOUT) -> str:
    """The address to open: lab.yaml's, or for ``sim`` the announced one
    (waiting up to ``timeout`` wall seconds for it)."""
    if not cfg.simulated:
        return cfg.address
    topic = address_topic(bench, name)
    got: dict[str, Any] = {}
    ready = threading.Event()

    def on_address(_topic: str, payload: Any) -> None:
        if isinstance(payload, dict) and isinstance(payload.get("address"), str):
            got["address"] = payload["address"]
            ready.set()

    bus.subscribe(topic, on_address)
    try:
        if not ready.wait(timeout):
            raise AddressError(
                f"instrument {name} (address: sim): no simulated instrument announced itself on {topic} "
                f"within {timeout:g} s; is the bench's simulated world running (`rig sim --bench {bench}`, "
                "started by `rig up`)?")
    finally:
        bus.unsubscribe(topic, on_address)
    return got["address"]
