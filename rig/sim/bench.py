"""A simulated bench as its parts see it: what :class:`rig.sim.world.World`
hands every simulated part it starts (device twins, the HAN, the head end,
the simulated instruments).  A protocol, so that no part imports the world
that starts it."""

from __future__ import annotations

from typing import Any, Protocol

from ..broker import Endpoint
from ..bus import Bus
from ..clock import LabClock
from ..config import BenchConfig, LabConfig
from .physics import PhysicalBench


class SimBench(Protocol):
    """The lab, the bench's name and configuration, the bus endpoint the
    parts log in with (each part has a connection of its own), the world's
    own connection (on which the simulated instruments announce their
    addresses), the lab clock and the bench's physics."""

    lab: LabConfig
    bench_name: str
    cfg: BenchConfig
    endpoint: Endpoint
    bus: Bus
    clock: LabClock
    physics: PhysicalBench
    #: the device twins by name, once :func:`rig.sim.devices.start_devices` has made them
    twins: dict[str, Any]
    #: called with the agent's presence (True: online) each time it changes
    on_agent_change: list[Any]

    @property
    def agent_online(self) -> bool: ...
