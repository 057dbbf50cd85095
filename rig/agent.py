"""The controller agent: the process on a bench's Raspberry Pi (``rig agent``).

It owns the bench's hardware (GPIO relays, E-stop input, and through the
instrument services the bench's VISA/serial instruments) and is the only
authority over it:

* every output is put in its safe state at start, at exit, on SIGTERM, on a
  crash, when the E-stop trips, when an instrument stops answering, and within
  ``controller.heartbeat_timeout`` wall seconds of the lease holder's last
  heartbeat (LAB-1);
* a bench is driven by one lease holder at a time (LAB-3); without a lease
  only commands *towards* the safe state are accepted;
* interlocks refuse, with a reason, what would break them (LAB-2).

The heartbeat watchdog counts wall seconds, not lab seconds: it guards real
outputs against a dead orchestrator, and a dead process does not die faster
in a simulation.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from .broker import BrokerError, Endpoint
from .bus import Bus, BusLoopDied, CommandContext, Refused
from .clock import LabClock
from .config import BenchConfig, LabConfig
from .contract import Heartbeat, Node, agent_node
from .relay import EStop, Relay, pin_factory
from .security import KeyExchange, SecurityError, command_fields, heartbeat_fields, mac_ok, system_wall
from .version import __version__

log = logging.getLogger(__name__)


class Output(Protocol):
    """Anything the agent must be able to put in its safe state."""

    name: str

    def force_safe(self, reason: str) -> bool: ...

    def close(self) -> None: ...


class LeaseArgs(BaseModel):
    holder: str = Field(..., min_length=1, max_length=200)
    key: str = Field(..., min_length=40, max_length=64,
                     description="the holder's ephemeral X25519 public key (base64) for this lease")
    wall: float = Field(..., description="the holder's system clock (seconds since the epoch) when it asked")


class RelayArgs(BaseModel):
    state: Literal["on", "off"]


class ReasonArgs(BaseModel):
    reason: str = "software E-stop"


class Lease:
    """A granted lease.  ``key`` (derived on both sides from an X25519
    exchange, never sent) proves the holder's heartbeats and commands."""

    def __init__(self, holder: str, clock: LabClock, key: bytes, lease_id: str, term: float):
        self.holder, self.key, self.id, self.term = holder, key, lease_id, term
        self.since = clock.now()
        self.last_heartbeat = time.monotonic()
        self.last_progress = time.monotonic()
        self.seq = 0
        self.progress: int | None = None
        self.skew: float | None = None
        self.used: dict[str, float] = {}     # lease-proved command ids -> their expiry (replay guard)

    def info(self) -> dict[str, Any]:
        return {"holder": self.holder, "since": self.since, "id": self.id, "term": self.term,
                "skew": None if self.skew is None else round(self.skew, 3)}


def _towards(relay: Relay) -> Callable[[RelayArgs], bool]:
    """The rule that a relay command goes towards the relay's safe state."""
    return lambda args: (args.state == "on") == relay.safe_on


class Agent:
    """A bench controller.  ``Agent(lab, "bench-1", endpoint).run()`` serves
    until SIGTERM/SIGINT; tests use it as a context manager."""

    def __init__(self, lab: LabConfig, bench: str, endpoint: Endpoint, clock: LabClock | None = None,
                 factory=None):
        self.lab = lab
        self.bench_name = bench
        self.cfg: BenchConfig = lab.bench(bench)
        self.clock = clock or LabClock(scale=lab.lab.clock.scale)
        self.node = agent_node(bench)
        endpoint = endpoint.for_role("agent", bench)
        if self.cfg.controller.pin_factory != "mock" and (endpoint.tls is None or not endpoint.authenticated):
            raise BrokerError(f"bench {bench} switches real mains (pin factory {self.cfg.controller.pin_factory}): "
                              f"refusing to serve it over {endpoint}, a broker without TLS and credentials")
        self.factory = factory if factory is not None else pin_factory(self.cfg.controller.pin_factory)
        self.heartbeat_timeout = self.cfg.controller.heartbeat_timeout
        self.lease_term = self.cfg.controller.lease_term
        self.max_clock_skew = self.cfg.controller.max_clock_skew
        #: this host's system clock (a seam for the clock-step fault tests)
        self.wall_source: Callable[[], float] = system_wall
        self.clock_report: dict[str, Any] | None = None   # the last clock problem seen
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.lease: Lease | None = None
        self.estop_latched = False
        self.estop_reason: str | None = None
        self.safe_events: list[dict[str, Any]] = []
        # presence beats as often as the lease holder's heartbeat: a simulated
        # bench drops its relays when the agent falls silent for heartbeat_timeout
        self.bus = Bus(endpoint, client_id=f"agent-{bench}-{uuid.uuid4().hex[:6]}", clock=self.clock,
                       presence=self.node, presence_info={"kind": "agent"},
                       heartbeat_interval=min(1.0, self.heartbeat_timeout / 4))
        self.bus.on_fatal = self._bus_died
        self.fatal: str | None = None
        # Outputs exist, in their safe state, before anything can command them.
        self.relays: dict[str, Relay] = {
            name: Relay(name, rc, self.clock, self.factory, on_change=self._relay_changed)
            for name, rc in self.cfg.relays.items()
        }
        from .actuator import build_actuators

        self.actuators = build_actuators(self)      # every button released (rig/actuator.py)
        self.outputs: list[Output] = [*self.relays.values(), *self.actuators.values()]
        self.estop: EStop | None = None
        if self.cfg.controller.estop is not None:
            self.estop = EStop(self.cfg.controller.estop, self.factory, on_press=self._estop_input)
        self._watchdog = threading.Thread(target=self._supervised, args=(self._watch_heartbeat,),
                                          name=f"watchdog:{bench}", daemon=True)
        self.instruments: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Agent":
        """Connect, serve, announce.  If anything fails the agent stops again:
        every output stays safe and the pins are released."""
        try:
            return self._start()
        except BaseException:
            self.stop("agent failed to start")
            raise

    def _start(self) -> "Agent":
        self.bus.connect(announce=False)
        self.bus.publish_clock()   # every lab has a clock on the bus, even one with no `rig up`
        self.bus.subscribe(self.node.heartbeat, self._on_heartbeat)
        s = self.bus.serve
        # GPIO and the lease table never block: served inline on the network thread
        s(self.node, "lease.acquire", self._lease_acquire, LeaseArgs, inline=True)
        s(self.node, "lease.release", self._lease_release)
        # safe-direction: never refused as expired, never behind instrument I/O (the express lane)
        s(self.node, "estop.trip", self._estop_trip_cmd, ReasonArgs, safe=True, supersedes="all")
        s(self.node, "estop.reset", self._estop_reset)
        s(self.node, "safe", self._safe_cmd, safe=True, supersedes="all")
        s(self.node, "status", lambda _a, _c: self.status(), inline=True)
        for name, relay in self.relays.items():
            s(Node(self.bench_name, "relay", name), "set", self._relay_set, RelayArgs, inline=True,
              safe=_towards(relay))
        self._start_instruments()
        if self.actuators:
            from .actuator import serve_actuators

            serve_actuators(self)
        for relay in self.relays.values():
            self._publish_relay(relay)
        if self.estop is not None and self.estop.is_pressed:
            self.trip_estop("E-stop input active at start")
        self._publish_status()
        self._watchdog.start()
        self.bus.announce()
        log.info("agent for %s up: %d relays, %d instruments, pin factory %s", self.bench_name,
                 len(self.relays), len(self.instruments), self.cfg.controller.pin_factory)
        return self

    def _start_instruments(self) -> None:
        """Serve the bench's instruments (instruments/service.py)."""
        if not self.cfg.instruments:
            return
        from instruments.service import serve_instruments

        for name, service in serve_instruments(self).items():
            self.instruments[name] = service
            self.outputs.append(service)

    def stop(self, reason: str = "agent exit") -> None:
        """Every output safe, presence offline, pins released."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.all_safe(reason)
        with self._lock:
            self.lease = None
        try:
            self._publish_status()
        except Exception:  # noqa: BLE001 - stopping must finish
            pass
        self.bus.close(reason)
        for out in self.outputs:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                log.exception("closing %s", out.name)
        if self.estop is not None:
            self.estop.close()

    def __enter__(self) -> "Agent":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop("agent exit" if exc[0] is None else f"agent crash: {exc[0].__name__}")

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; always leave every output safe."""
        def on_signal(signum, _frame):
            log.warning("agent %s: %s, going safe", self.bench_name, signal.Signals(signum).name)
            self._stop_requested = signal.Signals(signum).name
            self._wake.set()

        self._wake = threading.Event()
        self._stop_requested = ""
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
            while not self._wake.wait(0.5) and not self.fatal:
                pass
        finally:
            self.stop(f"agent exit ({self._stop_requested or self.fatal or 'crash'})")
        if self.fatal:
            # a supervisor (systemd, `rig up`) restarts an agent that exits non-zero
            raise BusLoopDied(f"agent {self.bench_name}: {self.fatal}; every output was put in its safe state")

    def _bus_died(self, reason: str) -> None:
        """paho's network loop ended: the agent can no longer hear a heartbeat
        or an E-stop command.  Bench safe, then stop (``run`` exits non-zero)."""
        self.fatal = f"MQTT network loop died ({reason})"
        log.critical("agent %s: %s: going safe and exiting", self.bench_name, self.fatal)
        self.all_safe(self.fatal)
        self.stop(self.fatal)
        wake = getattr(self, "_wake", None)
        if wake is not None:
            wake.set()

    def _supervised(self, loop: Callable[[], None]) -> None:
        """Run a safety loop (the heartbeat watchdog) for the agent's life:
        if it raises, log it, put the bench safe and run it again."""
        while not self._stop.is_set():
            try:
                loop()
                return
            except Exception:  # noqa: BLE001 - the watchdog must not die silently
                log.exception("agent %s: %s failed; bench going safe, restarting it", self.bench_name, loop.__name__)
                try:
                    self.all_safe(f"{loop.__name__} failed")
                except Exception:  # noqa: BLE001
                    log.exception("agent %s: could not go safe", self.bench_name)
                self._stop.wait(0.05)

    # ------------------------------------------------------------------ safety
    def all_safe(self, reason: str) -> list[str]:
        """Force every output to its safe state; returns those that changed."""
        changed = []
        for out in list(self.outputs):
            try:
                if out.force_safe(reason):
                    changed.append(out.name)
            except Exception:  # noqa: BLE001 - keep going: the others must still go safe
                log.exception("%s: could not go safe", out.name)
        if changed:
            record = {"reason": reason, "outputs": changed, "ts": self.clock.now()}
            self.safe_events.append(record)
            log.warning("bench %s safe (%s): %s", self.bench_name, reason, ", ".join(changed))
            try:
                self.bus.publish_event(self.node, "safe", record)
            except Exception:  # noqa: BLE001 - the outputs are safe; the event is information
                log.exception("bench %s: event/safe not published", self.bench_name)
        return changed

    def trip_estop(self, reason: str) -> None:
        with self._lock:   # after this, no relay command passes the guard
            self.estop_latched, self.estop_reason = True, reason
        self.all_safe(f"estop: {reason}")
        if self.bus.connected:
            self.bus.publish_event(self.node, "estop", {"reason": reason})
            self._publish_status()

    def _estop_input(self) -> None:
        self.trip_estop("E-stop input")

    def _on_heartbeat(self, _topic: str, payload: Any) -> None:
        """A heartbeat keeps the lease only if it proves the lease key, its
        ``seq`` is new and its wall clock agrees with this host's."""
        try:
            hb = Heartbeat.model_validate(payload)
        except Exception:  # noqa: BLE001 - malformed: log and carry on
            log.warning("malformed heartbeat ignored: %r", payload)
            return
        ended = None
        with self._lock:
            lease = self.lease
            if lease is None or hb.lease != lease.id:
                return
            if not mac_ok(lease.key, hb.mac, *heartbeat_fields(self.bench_name, lease.id, hb.seq, hb.wall,
                                                                hb.progress)):
                log.warning("%s: heartbeat for lease %s without a valid proof ignored", self.bench_name, lease.id)
                return
            if hb.seq <= lease.seq:
                log.warning("%s: heartbeat seq %d after %d (stale or replayed) ignored", self.bench_name,
                            hb.seq, lease.seq)
                return
            lease.seq = hb.seq
            lease.skew = hb.wall - self.wall_source()
            if abs(lease.skew) > self.max_clock_skew:
                self.lease, ended = None, lease
            else:
                lease.last_heartbeat = time.monotonic()
                if hb.progress != lease.progress:
                    lease.progress, lease.last_progress = hb.progress, time.monotonic()
        if ended is not None:
            self._report_skew(ended.holder, ended.skew or 0.0)
            self._end_lease(ended, f"clock skew {ended.skew:+.1f} s from {ended.holder} exceeds "
                                   f"{self.max_clock_skew:g} s")

    def _report_skew(self, holder: str, skew: float) -> None:
        self.clock_report = {"holder": holder, "skew": round(skew, 3), "limit": self.max_clock_skew,
                             "ts": self.clock.now()}
        log.error("bench %s: %s's clock is %+.1f s from this controller's (limit %g s): fix NTP",
                  self.bench_name, holder, skew, self.max_clock_skew)
        if self.bus.connected:
            self.bus.publish_event(self.node, "clock", dict(self.clock_report))

    def _end_lease(self, lease: Lease, reason: str) -> None:
        self.all_safe(f"lease of {lease.holder} ended: {reason}")
        if self.bus.connected:
            self.bus.publish_event(self.node, "lease", {"released": lease.holder, "reason": reason})
            self._publish_status()

    def _watch_heartbeat(self) -> None:
        period = min(0.05, self.heartbeat_timeout / 10)
        offset = self.wall_source() - time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            reason = None
            with self._lock:
                lease = self.lease
                if lease is not None:
                    if now - lease.last_heartbeat > self.heartbeat_timeout:
                        reason = "heartbeat lost"
                    elif now - lease.last_progress > lease.term:
                        reason = (f"no progress from {lease.holder} for {lease.term:g} s "
                                  "(its heartbeat runs, its work does not: hung?)")
                    if reason:
                        self.lease = None
            if reason and lease is not None:
                self._end_lease(lease, reason)
            # this host's own clock stepped (NTP on a Pi without an RTC)?
            step = (self.wall_source() - time.monotonic()) - offset
            if abs(step) > self.max_clock_skew:
                offset += step
                self.clock_report = {"stepped": round(step, 3), "limit": self.max_clock_skew, "ts": self.clock.now()}
                log.error("bench %s: this controller's clock stepped %+.1f s", self.bench_name, step)
                if self.bus.connected:
                    self.bus.publish_event(self.node, "clock", dict(self.clock_report))
                    self._publish_status()

    # ------------------------------------------------------------------ guards for ops
    def require_lease(self, ctx: CommandContext) -> None:
        """The command proves the current lease: its lease id, an HMAC of the
        command under the lease key, and an id not used before in the lease."""
        proof = ctx.lease
        with self._lock:
            lease = self.lease
            if lease is None:
                raise Refused(f"bench {self.bench_name} is not leased: lease it first (Lab.bench() does)",
                              code="not_leased", requirement="LAB-3")
            if proof is None or proof.id != lease.id:
                raise Refused(f"bench {self.bench_name} is leased by {lease.holder}",
                              code="not_leased", requirement="LAB-3")
            if getattr(ctx, "lease_checked", None) == lease.id:
                return
            if not mac_ok(lease.key, proof.mac, *command_fields(ctx.topic, ctx.id, ctx.sender, ctx.expires,
                                                                 ctx.args)):
                raise Refused(f"the lease proof of this command does not verify: bench {self.bench_name} is "
                              f"leased by {lease.holder}", code="not_leased", requirement="LAB-3")
            now = self.clock.now()
            for cid in [c for c, exp in lease.used.items() if exp < now]:
                del lease.used[cid]
            if ctx.id in lease.used:
                raise Refused(f"command {ctx.id} was already used in this lease (a replay)",
                              code="not_leased", requirement="LAB-3")
            lease.used[ctx.id] = ctx.expires
            ctx.lease_checked = lease.id

    def require_not_estop(self) -> None:
        if self.estop_latched:
            raise Refused(f"E-stop latched ({self.estop_reason}); reset it with `rig estop reset {self.bench_name}`",
                          code="estop", requirement="LAB-2")

    def guard(self, ctx: CommandContext, towards_safe: bool) -> None:
        """The rule for every output command: towards the safe state is always
        allowed; anything else needs the lease and no latched E-stop."""
        if towards_safe:
            return
        self.require_not_estop()
        self.require_lease(ctx)

    # ------------------------------------------------------------------ ops
    def _lease_acquire(self, args: LeaseArgs, _ctx: CommandContext) -> dict:
        """Grant the lease to one holder at a time (LAB-3): while it is held,
        nobody gets it, whatever holder name they give.  The reply carries
        the agent's public key; the lease key is derived on both sides."""
        skew = args.wall - self.wall_source()
        if abs(skew) > self.max_clock_skew:
            self._report_skew(args.holder, skew)
            raise Refused(f"clock skew: {args.holder}'s clock is {skew:+.1f} s from bench {self.bench_name}'s "
                          f"controller (limit {self.max_clock_skew:g} s); fix NTP on both hosts", requirement="LAB-3")
        kx = KeyExchange()
        lease_id = uuid.uuid4().hex[:16]
        try:
            key = kx.agent_key(args.key, self.bench_name, args.holder, lease_id)
        except SecurityError as exc:
            raise Refused(f"args.key: {exc}", code="invalid") from None
        with self._lock:
            if self.lease is not None:
                raise Refused(f"bench {self.bench_name} is leased by {self.lease.holder} since "
                              f"{LabClock.iso(self.lease.since)}", requirement="LAB-3")
            self.lease = Lease(args.holder, self.clock, key, lease_id, self.lease_term)
            self.lease.skew = skew
        self.bus.publish_event(self.node, "lease", {"acquired": args.holder})
        self._publish_status()
        return {"lease": lease_id, "key": kx.public, "heartbeat_timeout": self.heartbeat_timeout,
                "lease_term": self.lease_term, "max_clock_skew": self.max_clock_skew}

    def _lease_release(self, _args: Any, ctx: CommandContext) -> dict:
        try:
            self.require_lease(ctx)
        except Refused:
            return {"released": False}
        with self._lock:
            if self.lease is None:
                return {"released": False}
            holder, self.lease = self.lease.holder, None
        self.all_safe(f"lease released by {holder}")
        self.bus.publish_event(self.node, "lease", {"released": holder, "reason": "released"})
        self._publish_status()
        return {"released": True}

    def _estop_trip_cmd(self, args: ReasonArgs, _ctx: CommandContext) -> dict:
        self.trip_estop(args.reason)
        return {"latched": True}

    def _estop_reset(self, _args: Any, ctx: CommandContext) -> dict:
        """Only the lease holder resets the E-stop (a person at the bench who
        has leased it), and only once the input is released."""
        if self.estop is not None and self.estop.is_pressed:
            raise Refused("the E-stop input is still pressed: release it first", code="estop", requirement="LAB-2")
        self.require_lease(ctx)
        with self._lock:
            self.estop_latched, self.estop_reason = False, None
        self.bus.publish_event(self.node, "estop", {"reset": True})
        self._publish_status()
        return {"latched": False}

    def _safe_cmd(self, _args: Any, ctx: CommandContext) -> dict:
        return {"changed": self.all_safe(f"safe requested by {ctx.sender}")}

    def _relay_set(self, args: RelayArgs, ctx: CommandContext) -> dict:
        relay = self.relays[ctx.node.name]
        on = args.state == "on"
        with self._lock:   # the guard and the switching as one: an E-stop trip cannot fall between them
            self.guard(ctx, towards_safe=(on == relay.safe_on))
            relay.set(on, reason=f"command from {ctx.sender}")
        return relay.state()

    # ------------------------------------------------------------------ state
    def _relay_changed(self, relay: Relay, _reason: str) -> None:
        # each relay's own retained state says it; the agent's status is
        # republished only when the lease or the E-stop changes.  Published
        # even while the broker is away: it goes when the broker is back, so
        # the retained state never disagrees with the relay
        self._publish_relay(relay)

    def _publish_relay(self, relay: Relay) -> None:
        self.bus.publish_state(Node(self.bench_name, "relay", relay.name), relay.state())

    def status(self) -> dict[str, Any]:
        with self._lock:
            lease = self.lease.info() if self.lease else None
        return {
            "bench": self.bench_name,
            "version": __version__,
            "pin_factory": self.cfg.controller.pin_factory,
            "heartbeat_timeout": self.heartbeat_timeout,
            "lease": lease,
            "lease_term": self.lease_term,
            "max_clock_skew": self.max_clock_skew,
            "clock": self.clock_report,
            "estop": {"latched": self.estop_latched, "reason": self.estop_reason,
                      "input": self.estop.is_pressed if self.estop else None},
            "relays": sorted(self.relays),
            "instruments": sorted(self.instruments),
            "actuators": {d: sorted(a.cfg) for d, a in sorted(self.actuators.items())},
        }

    def _publish_status(self) -> None:
        self.bus.publish_state(self.node, self.status())

