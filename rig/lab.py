"""The rig-script API: the lab and its benches as a lab engineer names them.

::

    from rig import Lab

    with Lab.open("lab.yaml") as lab:            # the lab must be up (`rig up`)
        bench = lab.bench("bench-1")             # lease the bench; heartbeat starts
        bench.relay("mains").on()                # returns once the agent confirms
        bench.wait(lambda: bench.relay("mains").is_on, timeout=5)   # lab seconds
    # leaving the block releases the lease: every output goes safe

Everything here goes over the bus; nothing imports the agent or the
simulated devices, so a script runs unchanged against a real bench.

A bench's parts are its relays (``bench.relay(name)``), its instruments
(``bench.instrument(name)``, and by kind: ``bench.ac_source``,
``bench.load``, ``bench.analyser``, ``bench.attenuator(name)``,
``bench.optical``; ``bench.mains`` is the AC source and the mains relay
together) and its devices (``bench.device(name)``, ``bench.esme``,
``bench.ppmid``, ``bench.comms_hub``, ``bench.gsme``, ``bench.ihd``), plus
the head end (``bench.dcc``) and the HAN tap (``bench.han_tap``).  Each
kind's handle class comes from its declaration (rig/parts.py), so a kind a
lab adds is ``bench.instrument(name)`` or ``bench.of_kind(kind)`` at once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from instruments.handles import (
    AcSourceHandle,
    AnalyserHandle,
    AttenuatorHandle,
    InstrumentHandle,
    LoadHandle,
    OpticalProbeHandle,
)

from . import parts
from .actuator import ActuatorHandle
from .broker import Endpoint, endpoint_for
from .bus import MIN_WALL_TIMEOUT, Bus, BusError, CommandError, Watch, encode
from .clock import ClockAnchor, LabClock
from .config import LabConfig, UnknownPart, load_lab
from .contract import LAB_CLOCK, ROOT, ErrorBody, Heartbeat, Node, agent_node
from .devices import (
    CommsHubHandle,
    DeviceHandle,
    EsmeHandle,
    GsmeHandle,
    HanTapHandle,
    IhdHandle,
    PpmidHandle,
)
from .headend import HeadEnd
from .security import KeyExchange, command_fields, heartbeat_fields, mac, system_wall

H = TypeVar("H")

log = logging.getLogger(__name__)


class ConfirmationTimeout(CommandError):
    """A command was accepted but the state it asked for was never reported."""


def holder_id() -> str:
    return f"{os.environ.get('USER', 'user')}@{socket.gethostname()}:{os.getpid()}"


class RelayHandle:
    """A bench relay: ``on()``/``off()`` send the command and return only when
    the agent's retained state confirms it (like labgrid's MQTT power driver)."""

    def __init__(self, bench: "Bench", name: str):
        self.bench, self.name = bench, name
        self.node = Node(bench.name, "relay", name)
        self._watch = bench.watch(self.node.state)

    @property
    def state(self) -> dict[str, Any] | None:
        return self._watch.get(self.node.state)

    @property
    def is_on(self) -> bool:
        s = self.state
        return bool(s and s.get("state") == "on")

    def switchable_at(self) -> float:
        """Lab time from which the minimum switching interval (LAB-2) allows
        the next switching."""
        s = self.state or {}
        changed = s.get("changed")
        return (changed + float(s.get("min_interval") or 0)) if changed is not None else float("-inf")

    def wait_switchable(self, timeout: float = 60.0) -> None:
        """Wait (lab seconds) until the relay's minimum interval has passed.
        A handle that has not yet heard the relay's retained state waits for
        it first: without it the last switching time is unknown."""
        if self._watch.wait_for(lambda s: "state" in s, timeout, min_wall=MIN_WALL_TIMEOUT) is None:
            raise TimeoutError(f"{self.bench.name}: relay {self.name} reported no state within {timeout:g} lab s")
        self.bench.wait(lambda: self.bench.clock.now() >= self.switchable_at(), timeout,
                        f"relay {self.name} switchable")

    def set(self, on: bool, timeout: float = 5.0) -> dict[str, Any]:
        want = "on" if on else "off"
        result = self.bench.request(self.node, "set", {"state": want}, timeout=timeout)
        confirmed = self._watch.wait_for(lambda s: s.get("state") == want, timeout, min_wall=MIN_WALL_TIMEOUT)
        if confirmed is None:
            raise ConfirmationTimeout(self.node, "set", _error("timeout", f"agent accepted but never reported {want}"))
        return result

    def on(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.set(True, timeout)

    def off(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.set(False, timeout)

    def __repr__(self) -> str:
        s = self.state
        return f"<relay {self.bench.name}/{self.name}: {s.get('state') if s else 'unknown'}>"


def _error(code: str, message: str) -> ErrorBody:
    return ErrorBody(code=code, message=message)


class MainsHandle:
    """The bench's mains as the wiring makes it: AC source, then mains relay.

    ``on()`` switches the AC source output on and closes the mains relay;
    ``off()`` opens the relay (the source stays on, as a grid would), or on
    a bench with a supply and no relay switches the source's output off.
    Both directions of ``off()`` are towards the safe state: no lease needed."""

    def __init__(self, bench: Bench):
        w = bench.cfg.wiring
        if w.mains_relay is None and w.supply is None:
            raise UnknownPart(f"bench {bench.name} has no mains: wiring names neither a mains_relay nor a supply")
        self.bench, self.relay_name, self.supply_name = bench, w.mains_relay, w.supply

    @property
    def relay(self) -> RelayHandle | None:
        return self.bench.relay(self.relay_name) if self.relay_name else None

    @property
    def supply(self) -> AcSourceHandle | None:
        return self.bench.ac_source if self.supply_name else None

    def on(self) -> None:
        if self.supply is not None:
            self.supply.on()
        if self.relay is not None:
            self.relay.on()

    def off(self) -> None:
        if self.relay is not None:
            self.relay.off()
        elif self.supply is not None:
            self.supply.off()

    @property
    def is_on(self) -> bool:
        relay_on = self.relay.is_on if self.relay is not None else True
        return relay_on and (self.supply.is_on if self.supply is not None else True)

    def __repr__(self) -> str:
        return f"<mains {self.bench.name}: relay {self.relay_name}, supply {self.supply_name}>"


class Attenuators(Mapping[str, AttenuatorHandle]):
    """``bench.attenuators["attenuator_ppmid"]``: every attenuator of the bench."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.names = [n for n, i in bench.cfg.instruments.items() if i.kind == "attenuator"]

    def __getitem__(self, name: str) -> AttenuatorHandle:
        if name not in self.names:
            raise UnknownPart(f"bench {self.bench.name} has no attenuator '{name}'; attenuators: "
                              f"{', '.join(self.names) or 'none'}")
        return _as(self.bench.instrument(name), AttenuatorHandle)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _as(handle: Any, cls: type[H]) -> H:
    """A handle of the class its accessor promises (a lab may declare a subclass)."""
    if not isinstance(handle, cls):
        raise TypeError(f"{handle!r} is a {type(handle).__name__}, not a {cls.__name__} (rig/parts.py)")
    return handle


class Bench:
    """One bench of the lab, leased (by default) for as long as it is open."""

    def __init__(self, lab: "Lab", name: str, lease: bool = True):
        self.lab, self.name = lab, name
        self.cfg = lab.cfg.bench(name)
        self.bus = lab.bus
        self.clock = lab.clock
        self.agent = agent_node(name)
        self._watches: dict[str, Watch] = {}
        self._relays: dict[str, RelayHandle] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._hb_seq = 0
        self._progress = 0
        self._key: bytes | None = None
        self._owner: int | None = None
        self.lease_id: str | None = None
        self.lease_term: float | None = None
        #: this host's system clock, as the heartbeat reports it (a seam for clock-step faults)
        self.wall_source: Callable[[], float] = system_wall
        self.agent_state = self.watch(self.agent.state)
        if lease:
            self.acquire()

    # ------------------------------------------------------------------ lease
    def acquire(self) -> None:
        """Lease the bench (LAB-3) and keep the lease alive with heartbeats.

        The lease key comes from an X25519 exchange in ``lease.acquire``
        (rig/security.py): it is never on the bus.  Heartbeats and every
        command of this bench carry an HMAC under it instead of a token."""
        kx = KeyExchange()
        result = self.bus.request(self.agent, "lease.acquire",
                                  {"holder": self.lab.holder, "key": kx.public, "wall": self.wall_source()})
        self.lease_id = str(result["lease"])
        self._key = kx.orchestrator_key(str(result["key"]), self.name, self.lab.holder, self.lease_id)
        self.lease_term = float(result.get("lease_term", 60.0))
        self._owner = threading.get_ident()
        self.clock.add_tick(self._tick)
        interval = float(result.get("heartbeat_timeout", 2.0)) / 4
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(target=self._heartbeat, args=(interval,),
                                           name=f"heartbeat:{self.name}", daemon=True)
        self._hb_thread.start()

    def progress(self) -> None:
        """Say that this bench's work goes on: the lease lasts ``lease_term``
        wall seconds past the last progress.  Every command, wait and dwell of
        the bench says it (and the lab clock's waits on the thread that leased
        the bench); call it from a long piece of work of your own.  The
        heartbeat thread never does: a hung script loses its lease."""
        self._progress += 1

    def _tick(self) -> None:
        if threading.get_ident() == self._owner:
            self._progress += 1

    def prove(self, topic: str, cmd: dict[str, Any]) -> dict[str, str] | None:
        """The lease proof of a command (``Bus.request(lease=...)``)."""
        key, lease_id = self._key, self.lease_id
        if key is None or lease_id is None:
            return None
        args = json.loads(encode(cmd.get("args") or {}))
        return {"id": lease_id, "mac": mac(key, *command_fields(topic, cmd["id"], cmd["sender"], cmd["expires"],
                                                                  args))}

    def _heartbeat(self, interval: float) -> None:
        key, lease_id = self._key, self.lease_id
        if key is None or lease_id is None:
            return                         # acquire() starts this thread with both set
        while not self._hb_stop.wait(interval):
            self._hb_seq += 1
            seq, wall, progress = self._hb_seq, self.wall_source(), self._progress
            try:
                self.bus.publish(self.agent.heartbeat, Heartbeat(
                    lease=lease_id, seq=seq, wall=wall, progress=progress,
                    mac=mac(key, *heartbeat_fields(self.name, lease_id, seq, wall, progress)),
                ).model_dump())
            except BusError as exc:
                log.warning("heartbeat to %s not sent: %s", self.name, exc)

    def release(self) -> None:
        """Give the bench back; the agent puts every output in its safe state."""
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(2)
        self.clock.remove_tick(self._tick)
        if self._key is not None:
            try:
                self.request(self.agent, "lease.release")
            except CommandError as exc:
                log.warning("lease release on %s: %s (the heartbeat watchdog will make it safe)", self.name, exc)
            self._key = None
            self.lease_id = None

    @property
    def token(self) -> str | None:
        """The lease id (public: it names the lease, it does not prove it)."""
        return self.lease_id

    @property
    def leased(self) -> bool:
        return self._key is not None

    # ------------------------------------------------------------------ bus access
    def watch(self, topic_filter: str) -> Watch:
        if topic_filter not in self._watches:
            self._watches[topic_filter] = self.bus.watch(topic_filter)
        return self._watches[topic_filter]

    def node(self, kind: str, name: str) -> Node:
        return Node(self.name, kind, name)

    def request(self, node: Node, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
                **kw) -> dict[str, Any]:
        """Send a command to a node of this bench, proving this bench's lease."""
        self._progress += 1
        return self.bus.request(node, op, args, timeout=timeout, lease=self.prove if self._key else None, **kw)

    def wait(self, predicate: Callable[[], object], timeout: float, what: str = "condition") -> object:
        """Wait up to ``timeout`` lab seconds for ``predicate()``; raise
        TimeoutError naming ``what`` if it never holds."""
        self._progress += 1
        value = self.clock.wait_for(predicate, timeout)
        self._progress += 1
        if not value:
            raise TimeoutError(f"{self.name}: {what} not met within {timeout:g} lab s")
        return value

    def dwell(self, lab_seconds: float) -> None:
        """Let a scenario's duration pass (mains off for 170 s).  Not for
        waiting on things to happen: use :meth:`wait` for that."""
        self._progress += 1
        self.clock.sleep(lab_seconds)
        self._progress += 1

    # ------------------------------------------------------------------ parts
    def relay(self, name: str) -> RelayHandle:
        if name not in self.cfg.relays:
            raise UnknownPart(f"bench {self.name} has no relay '{name}'; relays: "
                              f"{', '.join(self.cfg.relays) or 'none'}")
        if name not in self._relays:
            self._relays[name] = RelayHandle(self, name)
        return self._relays[name]

    def handle(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        """The bench's one handle for a part (an instrument, a device, the
        mains), made by ``make`` on first use and kept: every handle follows
        the bus, so one per part is enough."""
        if key not in self._handles:
            self._handles[key] = make()
        return self._handles[key]

    def instrument(self, name: str) -> InstrumentHandle:
        """The handle of any instrument of the bench (its kind's handle class)."""
        cfg = self.cfg.instruments.get(name)
        cls = parts.instrument_kind(cfg.kind).load_handle() if cfg is not None else InstrumentHandle
        return self.handle(("instrument", name), lambda: cls(self, name))

    def device(self, name: str) -> DeviceHandle:
        """The handle of any device of the bench (its kind's handle class)."""
        cfg = self.cfg.devices.get(name)
        cls = parts.device_kind(cfg.kind).load_handle() if cfg is not None else DeviceHandle
        return self.handle(("device", name), lambda: cls(self, name))

    def of_kind(self, kind: str) -> Any:
        """The bench's part of a kind: the one the lab.yaml ``wiring:`` names
        for it, else the bench's only instrument of the kind (or its first
        device of the kind).  UnknownPart when there is none (or, for an
        instrument, several: name one with ``bench.instrument(name)``)."""
        if kind in parts.device_kinds():
            return self._device_of_kind(parts.device_kind(kind))
        decl = parts.instrument_kind(kind)
        wired = getattr(self.cfg.wiring, decl.wiring) if decl.wiring else None
        if wired is not None:
            return self.instrument(wired)
        names = [n for n, i in self.cfg.instruments.items() if i.kind == kind]
        if len(names) != 1:
            raise UnknownPart(f"bench {self.name} has {len(names)} {kind} instruments ({', '.join(names) or 'none'}); "
                              f"name one with bench.instrument(name)")
        return self.instrument(names[0])

    def _device_of_kind(self, decl: parts.DeviceKind) -> DeviceHandle:
        wired = getattr(self.cfg.wiring, decl.wiring) if decl.wiring else None
        if wired:
            return self.device(wired)
        names = [n for n, d in self.cfg.devices.items() if d.kind == decl.kind]
        if not names:
            raise UnknownPart(f"bench {self.name} has no {decl.kind}; devices: {', '.join(self.cfg.devices) or 'none'}")
        return self.device(names[0])

    # --- instruments by kind (instruments/handles.py)
    @property
    def mains(self) -> MainsHandle:
        """The bench's mains: AC source and mains relay (MainsHandle)."""
        return self.handle(("mains", ""), lambda: MainsHandle(self))

    @property
    def ac_source(self) -> AcSourceHandle:
        """The AC source feeding the bench (the wiring's supply)."""
        return _as(self.of_kind("ac_source"), AcSourceHandle)

    @property
    def load(self) -> LoadHandle:
        """The load bank on the meter's load side (the wiring's load)."""
        return _as(self.of_kind("load_bank"), LoadHandle)

    @property
    def analyser(self) -> AnalyserHandle:
        """The power analyser on the load side (the wiring's analyser)."""
        return _as(self.of_kind("power_analyser"), AnalyserHandle)

    @property
    def optical(self) -> OpticalProbeHandle:
        """The optical probe on the meter."""
        return _as(self.of_kind("optical_probe"), OpticalProbeHandle)

    def attenuator(self, name: str | None = None) -> AttenuatorHandle:
        """``bench.attenuator("attenuator_ppmid")`` (the name may be left out on
        a bench with one attenuator)."""
        return self.attenuators[name] if name is not None else _as(self.of_kind("attenuator"), AttenuatorHandle)

    @property
    def attenuators(self) -> Attenuators:
        """Every attenuator of the bench, by name."""
        return Attenuators(self)

    # --- devices by kind (rig/devices.py)
    @property
    def esme(self) -> EsmeHandle:
        """The electricity meter (the wiring's meter)."""
        return _as(self.of_kind("esme"), EsmeHandle)

    @property
    def gsme(self) -> GsmeHandle:
        """The gas meter."""
        return _as(self.of_kind("gsme"), GsmeHandle)

    @property
    def comms_hub(self) -> CommsHubHandle:
        """The communications hub."""
        return _as(self.of_kind("comms_hub"), CommsHubHandle)

    @property
    def ppmid(self) -> PpmidHandle:
        """The (first) PPMID."""
        return _as(self.of_kind("ppmid"), PpmidHandle)

    @property
    def ihd(self) -> IhdHandle:
        """The (first) in-home display."""
        return _as(self.of_kind("ihd"), IhdHandle)

    @property
    def dcc(self) -> HeadEnd:
        """The bench's head end as lab.yaml declares it (rig/headend: the simulated
        DCC, an HTTP head end, a plugin): remote commands and the alerts that come
        back.  One per lab, kept across tests; the bench that asks for it counts
        its operations as the lease holder's progress."""
        he = self.lab.head_end(self.name)
        he.on_progress = self.progress
        return he

    @property
    def han_tap(self) -> HanTapHandle:
        """The HAN tap: sniffer journal and injector (replay, delay, forge)."""
        return self.handle(("han", "tap"), lambda: HanTapHandle(self))

    def actuator(self, device: str) -> ActuatorHandle:
        """The actuators on a device's buttons (rig/actuator.py):
        ``bench.actuator("esme").hold("enable", 2.5)``."""
        return self.handle(("actuator", device), lambda: ActuatorHandle(self, device))

    def safe(self) -> list[str]:
        """Ask the agent to put every output in its safe state now."""
        return self.bus.request(self.agent, "safe").get("changed", [])

    def estop(self, reason: str = "software E-stop") -> None:
        self.bus.request(self.agent, "estop.trip", {"reason": reason})

    def reset_estop(self) -> None:
        """Reset the E-stop: the agent asks for the lease (lease the bench first)."""
        self.request(self.agent, "estop.reset")

    @property
    def status(self) -> dict[str, Any] | None:
        return self.agent_state.get(self.agent.state)

    def close(self) -> None:
        self.release()
        for w in self._watches.values():
            w.close()
        self._watches.clear()

    def __enter__(self) -> "Bench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bench {self.name}{' (leased)' if self.leased else ''}>"


class Lab:
    """A lab: its configuration, its bus, its clock, its benches."""

    def __init__(self, cfg: LabConfig, bus: Bus, clock: LabClock, holder: str | None = None):
        self.cfg, self.bus, self.clock = cfg, bus, clock
        self.holder = holder or holder_id()
        self._benches: dict[str, Bench] = {}
        self._head_ends: dict[str, Any] = {}
        self._head_end_lock = threading.Lock()

    def head_end(self, bench: str) -> Any:
        """The head end of ``bench`` as lab.yaml declares it (rig/headend), made
        on first use and kept for the lab's life: its alerts, webhooks
        included, are received between tests too."""
        with self._head_end_lock:
            if bench not in self._head_ends:
                from .headend import make

                self._head_ends[bench] = make(self, bench, self.cfg.bench(bench).head_end)
            return self._head_ends[bench]

    @classmethod
    def open(cls, path: str | Path | LabConfig = "lab.yaml", endpoint: Endpoint | None = None,
             holder: str | None = None) -> "Lab":
        """Connect to a running lab (``rig up``, or the lab's own broker and agents)."""
        cfg = path if isinstance(path, LabConfig) else load_lab(path)
        endpoint = (endpoint or endpoint_from_env() or endpoint_for(cfg.broker)).for_role("orchestrator")
        clock = LabClock(scale=cfg.lab.clock.scale)
        bus = Bus(endpoint, client_id=f"orch-{uuid.uuid4().hex[:8]}", clock=clock).connect()
        anchor = adopt_clock(bus)
        if anchor is not None:
            bus.clock = clock = LabClock(anchor=anchor)
        return cls(cfg, bus, clock, holder)

    def bench(self, name: str | None = None, lease: bool = True) -> Bench:
        """A bench of the lab (the only one if ``name`` is omitted), leased."""
        if name is None:
            if len(self.cfg.benches) != 1:
                raise UnknownPart(f"name a bench: {', '.join(self.cfg.benches)}")
            name = next(iter(self.cfg.benches))
        self.cfg.bench(name)  # a clear error for an unknown bench
        if name not in self._benches:
            self._benches[name] = Bench(self, name, lease=lease)
        return self._benches[name]

    def close(self) -> None:
        for bench in self._benches.values():
            bench.close()
        self._benches.clear()
        for he in self._head_ends.values():
            try:
                he.close()
            except Exception:  # noqa: BLE001 - the bus must still close
                log.exception("closing the head end %r", he)
        self._head_ends.clear()
        self.bus.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def endpoint_from_env() -> Endpoint | None:
    """``RIG_BROKER_URL`` (set by ``rig up``/``rig run`` for their children):
    an :meth:`Endpoint.url`, TLS and credentials included."""
    url = os.environ.get("RIG_BROKER_URL")
    if not url:
        return None
    return Endpoint.from_url(url)


def adopt_clock(bus: Bus, wait: float = 1.0) -> ClockAnchor | None:
    """The lab's clock anchor, retained on the bus by whoever brought the lab up."""
    got: dict[str, Any] = {}
    ready = threading.Event()

    def on_clock(_topic: str, payload: Any) -> None:
        if isinstance(payload, dict) and "wall" in payload and "scale" in payload:
            got.update(payload)
            ready.set()

    bus.subscribe(LAB_CLOCK, on_clock)
    ready.wait(wait)
    bus.unsubscribe(LAB_CLOCK, on_clock)
    if not got:
        return None
    return ClockAnchor(float(got["wall"]), float(got["scale"]))


def snapshot(bus: Bus, bench: str | None = None, quiet: float = 0.3, limit: float = 3.0,
             everything: bool = False) -> dict[str, Any]:
    """The retained state, presence and clock under the lab's root (or one
    bench), or with ``everything`` every retained topic, read until the
    broker has been quiet for ``quiet`` wall seconds (MQTT marks no end of
    the retained messages)."""
    import time

    topic = f"{ROOT}/{bench}/#" if bench else f"{ROOT}/#"
    seen: dict[str, Any] = {}
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_msg(t: str, payload: Any) -> None:
        if everything or "/state" in t or t.endswith("/presence") or t == LAB_CLOCK:
            with lock:
                seen[t] = payload
                last[0] = time.monotonic()

    bus.subscribe(topic, on_msg)
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with lock:
            if time.monotonic() - last[0] > quiet and time.monotonic() - start > quiet:
                break
        time.sleep(0.02)
    bus.unsubscribe(topic, on_msg)
    return seen
