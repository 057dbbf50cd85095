"""One bench's simulated world, served as one process (``rig sim --bench``).

It holds what a real bench has physically: the wiring and the physics
between mains, meter and load (:mod:`rig.sim.physics`), the simulated
instruments on 127.0.0.1 (:mod:`instruments.sim`), the device twins and the
simulated HAN medium (:mod:`rig.sim.devices`, :mod:`rig.sim.han`).

The world follows the controller's relays from the bus, as a meter follows
the mains contactor's contacts, never by importing the agent.  When the
agent is gone (presence offline, or no presence heartbeat for the bench's
``controller.heartbeat_timeout`` wall seconds: killed, hung, or cut off by a
partition or a broker outage, when no Last Will comes) its relays fall to
their safe state, as the wiring of a real bench makes them (normally-open
contacts, pull resistors): the model of the hardware fail-safe.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
import uuid
from typing import Any

from ..broker import Endpoint
from ..bus import Bus
from ..clock import LabClock
from ..config import MAINS_VOLTAGE, LabConfig
from ..contract import Node, agent_node, sim_node
from .physics import PhysicalBench

log = logging.getLogger(__name__)

#: wall seconds a relay's switching may take to reach the simulation and still be dated by the agent's stamp
MAX_HOP = 2.0


class World:
    """The simulated parts of one bench, coupled through one physical model."""

    def __init__(self, lab: LabConfig, bench: str, endpoint: Endpoint, clock: LabClock):
        # every bus of the world (devices, DCC, HAN) logs in as the bench's simulated world
        endpoint = endpoint.for_role("sim", bench)
        self.lab, self.bench_name, self.endpoint, self.clock = lab, bench, endpoint, clock
        self.cfg = lab.bench(bench)
        self.node = sim_node(bench)
        self.bus = Bus(endpoint, client_id=f"sim-{bench}-{uuid.uuid4().hex[:6]}", clock=clock,
                       presence=self.node, presence_info={"kind": "sim"})
        w = self.cfg.wiring
        nominal = MAINS_VOLTAGE
        if w.meter and w.meter in self.cfg.devices:
            nominal = getattr(self.cfg.devices[w.meter].settings, "voltage_nominal", MAINS_VOLTAGE)
        self.physics = PhysicalBench(clock, has_source=w.supply is not None, has_relay=w.mains_relay is not None,
                                     nominal_voltage=nominal)
        self.parts: list[Any] = []   # started parts, each with .stop()
        self._relay_state: dict[str, bool] = {}
        self._agent_online = False
        self._agent_seen = 0.0              # monotonic time of the agent's last presence
        self._agent_silence = self.cfg.controller.heartbeat_timeout
        self._mains_lock = threading.Lock()
        self._stopped = threading.Event()
        #: called with the agent's liveness when it changes (rig/sim/buttons.py releases the buttons)
        self.on_agent_change: list[Any] = []
        self.twins: dict[str, Any] = {}     # the device twins by name (rig/sim/devices.py)

    @property
    def agent_online(self) -> bool:
        return self._agent_online

    def _agent_now(self, online: bool) -> None:
        for fn in list(self.on_agent_change):
            try:
                fn(online)
            except Exception:  # noqa: BLE001 - the fail-safe model must not die
                log.exception("agent change listener")

    # ------------------------------------------------------------------ relays -> physics
    def _follow_relays(self) -> None:
        relay = self.cfg.wiring.mains_relay
        self._mains_safe_closed = relay is not None and self.cfg.relays[relay].safe_state == "on"
        node = Node(self.bench_name, "relay", relay) if relay is not None else None
        agent = agent_node(self.bench_name)

        def on_relay(_topic: str, payload: Any) -> None:
            if isinstance(payload, dict) and payload.get("state") in ("on", "off"):
                self._relay_state[str(relay)] = payload["state"] == "on"
                self._apply_mains(payload.get("changed"))

        def on_agent(_topic: str, payload: Any) -> None:
            online = bool(isinstance(payload, dict) and payload.get("online"))
            if online:
                # an agent that beats slower than the timeout gets two of its beats
                beat = payload.get("heartbeat_interval")
                beat = float(beat) if isinstance(beat, (int, float)) and beat > 0 else 0.0
                self._agent_silence = max(self.cfg.controller.heartbeat_timeout, 2 * beat)
            self._agent_seen = time.monotonic()
            self._agent_online = online
            self._apply_mains()
            self._agent_now(online)

        if node is not None:
            self.bus.subscribe(node.state, on_relay)
        self.bus.subscribe(agent.presence, on_agent)
        threading.Thread(target=self._watch_agent, name=f"sim-agent-watch:{self.bench_name}", daemon=True).start()

    def _watch_agent(self) -> None:
        """An agent that falls silent is gone: no Last Will comes from a hung
        process, a partition or a broker that is down (and amqtt sends none on
        keepalive expiry), so the world does not wait for one."""
        while not self._stopped.wait(0.05):
            try:
                silent = time.monotonic() - self._agent_seen
                if self._agent_online and silent > self._agent_silence:
                    log.warning("agent of %s silent for %.1f wall s: its relays fall to their safe state",
                                self.bench_name, silent)
                    self._agent_online = False
                    self._apply_mains()
                    self._agent_now(False)
            except Exception:  # noqa: BLE001 - the fail-safe model must not die
                log.exception("watching the agent of %s", self.bench_name)

    def _apply_mains(self, changed: Any = None) -> None:
        """Put the mains relay where the agent says, as of the moment it says it
        switched (its ``changed`` time stamp: the wires change at once, the
        simulation hears of it a bus hop later), unless that is older than the
        hop can explain (a retained state from before this world started)."""
        relay = self.cfg.wiring.mains_relay
        if relay is None:
            return
        with self._mains_lock:
            closed = (self._relay_state.get(relay, self._mains_safe_closed) if self._agent_online
                      else self._mains_safe_closed)
            if closed != self.physics.mains_relay:
                now = self.clock.now()
                at = float(changed) if isinstance(changed, (int, float)) else None
                if at is not None and not now - self.clock.lab_seconds(MAX_HOP) <= at <= now:
                    at = None
                log.info("mains relay %s %s", relay, "closed" if closed else "open")
                self.physics.set_mains_relay(closed, at)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "World":
        self.bus.connect(announce=False)
        self._follow_relays()
        from instruments.sim import start_simulated_instruments

        from .devices import start_devices

        self.parts += start_simulated_instruments(self)
        self.parts += start_devices(self)
        self._wire_optical_ports()
        self.bus.publish_state(self.node, {"physics": self.physics.describe()})
        self.physics.listen(lambda _what: self._publish_physics())
        self.bus.announce()
        log.info("simulated world for %s up: %d parts", self.bench_name, len(self.parts))
        return self

    def _wire_optical_ports(self) -> None:
        """A simulated optical probe sits on its meter's port: the port answers
        with the meter twin's own registers and logbook, and not at all while
        the meter has no supply."""
        from instruments.sim.optical_port import SimulatedOpticalPort

        for part in self.parts:
            if not isinstance(part, SimulatedOpticalPort):
                continue
            cfg = self.cfg.instruments.get(part.name)
            meter = (cfg.device if cfg is not None else None) or self.cfg.wiring.meter
            twin = self.twins.get(meter or "")
            if twin is not None and hasattr(twin, "optical_registers"):
                part.provider = twin.optical_registers
                part.answering = functools.partial(_powered, twin)

    def _publish_physics(self) -> None:
        if self.bus.connected:
            self.bus.publish_state(self.node, {"physics": self.physics.describe()})

    def stop(self) -> None:
        self._stopped.set()
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stop the rest
                log.exception("stopping %r", part)
        self.parts.clear()
        self.bus.close()

    def __enter__(self) -> "World":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with self:
            while not stop.wait(1.0):
                pass


def _powered(twin: Any) -> bool:
    return bool(twin.powered)
