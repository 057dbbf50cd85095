"""What every ``rig`` command module shares: the consoles, the ``--lab``
option, the one-line error, loading the lab file and holding a lease.

The command modules (rig/cli.py, rig/cli_instrument.py, rig/cli_evidence.py,
rig/cli_broker.py) import this one; rig/cli.py registers the others' commands.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .config import LabConfig, load_lab

console = Console()
err = Console(stderr=True)

LabOpt = typer.Option(Path("lab.yaml"), "--lab", "-l", help="the lab file", envvar="RIG_LAB",
                      show_default=True)


class Exit(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def load(path: Path) -> LabConfig:
    return load_lab(path)


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO if os.environ.get("RIG_VERBOSE") else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("amqtt", "transitions", "pyvisa"):
        logging.getLogger(name).setLevel(logging.WARNING)


def hold_lease(clock, hold: Optional[float], what: str) -> None:
    """Keep this process (its lease and the heartbeat that keeps an output
    on) alive for ``hold`` lab seconds, or until Ctrl-C/SIGTERM; the caller's
    ``with Lab.open(...)`` then releases the lease and the bench goes safe."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"{what}: holding the lease " + (f"for {hold:g} lab s" if hold is not None else "until Ctrl-C")
                  + "; then the bench goes to its safe state")
    try:
        # a wait on the lab clock counts as the lease holder's progress (the lease stays)
        clock.wait_event(stop, hold)
    except KeyboardInterrupt:
        pass
