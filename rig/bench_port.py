"""The bench as a part's handle sees it.

Every handle of a rig script (an instrument's, a device's, the head end's)
is made by :class:`rig.lab.Bench` and talks to its part through it: the
bench's name, lab.yaml section and clock, its bus watches and its requests
(which carry the bench lease's proof).  The handles depend on this
protocol, not on ``Bench``, so that ``rig/lab.py`` can import them all
without either module importing the other.
"""

from __future__ import annotations

from typing import Any, Protocol

from .bus import Watch
from .clock import LabClock
from .config import BenchConfig
from .contract import Node


class BenchPort(Protocol):
    name: str
    cfg: BenchConfig
    clock: LabClock

    def node(self, kind: str, name: str) -> Node: ...

    def watch(self, topic_filter: str) -> Watch: ...

    def request(self, node: Node, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
                **kw: Any) -> dict[str, Any]: ...

    def progress(self) -> None: ...
