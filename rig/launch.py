"""Bring a lab up on this machine: broker, bench agents, simulated parts.

``rig up`` and ``rig run`` (when no lab is up) use :class:`LabUp`.  Each
bench's controller agent and simulated world run as child processes, exactly
as an agent would run on its own Raspberry Pi: they find the broker and the
lab clock from their arguments/environment, and they die with their parent
(PR_SET_PDEATHSIG: SIGTERM, on which an agent puts every output safe).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .broker import Broker, Endpoint, endpoint_for, port_open
from .bus import Bus
from .clock import LabClock
from .config import LabConfig
from .contract import LAB_CLOCK, Node, agent_node, sim_node

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


def bench_has_sim(cfg: LabConfig, bench: str) -> bool:
    b = cfg.bench(bench)
    return (any(i.simulated for i in b.instruments.values())
            or any(d.simulated for d in b.devices.values())
            or b.controller.pin_factory == "mock")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    presence: Node

    def tail(self, lines: int = 15) -> str:
        """The child's own one-line error if it printed one, else its last lines."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in text if line.startswith(("error:", "refused:"))]
        if errors:
            return f"{errors[-1]} (log: {self.log_path})"
        return "\n".join(text[-lines:]) + f"\n(log: {self.log_path})"


@dataclass
class LabUp:
    """Start the lab described by ``cfg``; ``with LabUp(cfg) as up: ...``.

    ``port=0`` picks a free broker port (tests); ``clock_scale`` overrides
    lab.yaml's; ``log_dir`` receives each child's log.
    """

    cfg: LabConfig
    port: int | None = None
    clock_scale: float | None = None
    log_dir: Path = Path(".rig/logs")
    benches: list[str] | None = None
    lab_path: str | None = None
    broker: Broker | None = None
    #: set by start(): the broker's endpoint and the lab clock the children share
    endpoint: Endpoint = field(init=False)
    clock: LabClock = field(init=False)
    children: list[Child] = field(default_factory=list)
    bus: Bus | None = None

    def start(self, timeout: float = 20.0) -> "LabUp":
        self.broker = Broker.start(self.cfg.broker, self.port, lab=self.cfg)
        self.endpoint = self.broker.endpoint
        try:
            self.clock = LabClock(scale=self.clock_scale or self.cfg.lab.clock.scale)
            self.bus = Bus(self.endpoint, client_id=f"labup-{os.getpid()}", clock=self.clock).connect()
            self.bus.publish_clock()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            for bench in self.benches or list(self.cfg.benches):
                if bench_has_sim(self.cfg, bench):
                    self._spawn("sim", bench, sim_node(bench))
                self._spawn("agent", bench, agent_node(bench))
            self.wait_online(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, role: str, bench: str, presence: Node) -> None:
        log_path = self.log_dir / f"{bench}-{role}.log"
        env = dict(os.environ)
        env.update(self.clock.env())
        # the child's own user and password file, never the password itself
        user = f"{role}-{bench}"
        env["RIG_BROKER_URL"] = self.endpoint.as_user(user).url
        env.pop("RIG_BROKER_KIND", None)
        env["RIG_DIE_WITH_PARENT"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "rig", role, "--bench", bench]
        if self.lab_path:
            cmd += ["--lab", str(self.lab_path)]
        else:
            raise LaunchError("LabUp needs lab_path to hand the lab file to its children")
        out = open(log_path, "w")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        self.children.append(Child(f"{bench}/{role}", proc, log_path, presence))
        log.info("started %s/%s (pid %d), log %s", bench, role, proc.pid, log_path)

    def wait_online(self, timeout: float) -> None:
        """Wait for every child's presence online; on failure show its log."""
        assert self.bus is not None, "start() first"
        watches = {c.name: self.bus.watch(c.presence.presence) for c in self.children}
        deadline = time.monotonic() + timeout
        for child in self.children:
            w = watches[child.name]
            while True:
                p = w.get(child.presence.presence)
                if p and p.get("online"):
                    break
                if child.proc.poll() is not None:
                    raise LaunchError(f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}")
                if time.monotonic() > deadline:
                    raise LaunchError(f"{child.name} did not come online within {timeout:g} s:\n{child.tail()}")
                with w.cond:
                    w.cond.wait(0.1)
        for w in watches.values():
            w.close()

    def stop(self) -> None:
        """SIGTERM every child (agents go safe), then stop the broker."""
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop on SIGTERM; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
        self.children.clear()
        if self.bus is not None:
            self.bus.clear_retained(LAB_CLOCK)
            self.bus.close()
            self.bus = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> "LabUp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "pid": c.proc.pid, "alive": c.proc.poll() is None, "log": str(c.log_path)}
                for c in self.children]


#: wall seconds a `rig agent`/`rig sim` started on its own waits for the lab clock on the bus
CLOCK_WAIT = {"agent": 1.5, "sim": 2.0}


def child_clock(cfg: LabConfig, endpoint: Endpoint, role: str = "agent") -> LabClock:
    """The lab clock for a bench process (``rig agent``, ``rig sim``).

    Started by ``rig up``/``rig run`` it inherits the clock (``RIG_CLOCK``).
    Started on its own, on another host, it adopts the anchor retained on the
    lab's bus (whoever came first published it), so every process of the lab
    shares one lab time; only when there is none yet does it start one (the
    agent publishes it).  At clock scale 1 (hardware) every anchor gives the
    same lab time, so the order does not matter there; in a simulated lab
    spread over hosts, start one agent first or hand ``RIG_CLOCK`` around."""
    if os.environ.get("RIG_CLOCK"):
        return LabClock.from_env(cfg.lab.clock.scale)
    from .lab import adopt_clock

    clock = LabClock(scale=cfg.lab.clock.scale)
    try:
        with Bus(endpoint, client_id=f"clock-{role}-{os.getpid()}", clock=clock) as bus:
            anchor = adopt_clock(bus, wait=CLOCK_WAIT.get(role, 1.5))
            if anchor is None:
                bus.publish_clock()   # the first process of the lab: its clock is the lab's
    except Exception as exc:  # noqa: BLE001 - the process itself reports an unreachable broker
        log.warning("lab clock not read from the bus (%s): starting one", exc)
        anchor = None
    if anchor is not None:
        log.info("adopted the lab clock from the bus: x%g since %s", anchor.scale, anchor.wall)
        return LabClock(anchor=anchor)
    return clock


def serve_simulated_bench(cfg: LabConfig, bench: str, endpoint: Endpoint) -> None:
    """``rig sim``: serve one bench's simulated parts (physics, instruments,
    device twins, HAN) until SIGTERM or Ctrl-C.  This launcher is the one
    module outside rig/sim and instruments/sim that imports the simulation
    (docs/architecture.md, "Layers"; tests/test_architecture.py)."""
    from .sim.world import World

    World(cfg, bench, endpoint, child_clock(cfg, endpoint, "sim")).run()


def lab_is_up(cfg: LabConfig) -> bool:
    ep = endpoint_for(cfg.broker)
    return port_open(ep.host, ep.port)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (children of
    ``rig up``/``rig run``), so a killed orchestrator never strands an agent."""
    if os.environ.get("RIG_DIE_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    except OSError:
        pass
