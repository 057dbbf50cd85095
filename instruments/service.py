"""Bench instruments served on the bus by the controller agent, with their interlocks.

:func:`serve_instruments` is called by the agent at start
(``Agent._start_instruments``).  For each instrument of the bench it resolves
the address (:mod:`instruments.address`), opens the driver, puts the
instrument in its safe state (LAB-1), publishes its retained state and
serves its operations on ``rig/v1/<bench>/instrument/<name>/cmd/<op>``.
Each service is one of the agent's outputs: the agent forces it safe with
everything else (E-stop, lost heartbeat, lease release, exit).

Operations (args as JSON; every reply carries the instrument's state):

=================  ======================================================  =============
kind               op: args                                                lease needed
=================  ======================================================  =============
every kind         ``identify``, ``query``, ``safe``                       no
ac_source          ``set``: voltage, frequency, output (on|off)            yes, except output off alone
                   ``output``: state (on|off); ``dip``: depth, duration    yes, except off
load_bank          ``draw``: amps | watts; ``off``; ``set``: amps | watts, state   yes, except off
power_analyser     ``read``                                                no
attenuator         ``set``: db                                             yes
optical_probe      ``read``                                                no
=================  ======================================================  =============

Interlocks (a refusal is a :class:`~rig.bus.Refused` with requirement
LAB-2 and the reason, sent back on the bus and printed by the CLI):

* setpoints outside the driver's ranges (ratings and lab.yaml ``limits:``:
  AC source voltage/frequency, load current/power, attenuator range and
  ``step_max``) never reach the wire;
* a load bank with ``requires_supply: true`` does not switch on while the
  bench's AC source output is off, and switching the source off first
  switches such loads off;
* a load's current x the supply voltage (or power / voltage) may not pass
  its ``power_max`` (or ``current_max``);
* the E-stop and the lease, through ``agent.guard`` (towards the safe
  state is always allowed).

An instrument that does not answer (or answers nonsense) is a fault: the
reply names it and its address, and the whole bench goes safe
(``agent.all_safe``).  The next command tries it afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from rig import parts
from rig.bus import CommandContext, Refused
from rig.config import MAINS_VOLTAGE, InstrumentConfig
from rig.contract import Node

from .address import resolve
from .errors import InstrumentError, InstrumentTimeout, LimitError
from .optical_probe import LOGBOOK

log = logging.getLogger(__name__)



class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OnOff(Args):
    state: Literal["on", "off"]


class AcSetArgs(Args):
    voltage: float | None = None
    frequency: float | None = None
    output: Literal["on", "off"] | None = None


class DipArgs(Args):
    depth: float = Field(..., ge=0, le=1, description="fraction of the voltage removed; 1 = interruption")
    duration: float = Field(..., gt=0, description="lab seconds")


class DrawArgs(Args):
    amps: float | None = Field(None, ge=0)
    watts: float | None = Field(None, ge=0)


class LoadSetArgs(DrawArgs):
    state: Literal["on", "off"] | None = None


class AttenuationArgs(Args):
    db: float


Op = tuple[Callable[[Any, CommandContext], dict[str, Any]], type[BaseModel] | None]


def refuse(reason: str) -> Refused:
    return Refused(reason, requirement="LAB-2")


class InstrumentService:
    """One instrument of the bench, served on the bus: an agent output.  A
    kind's service is named by its declaration (rig/parts.py)."""

    #: whether the instrument drives anything that has a safe state (a source,
    #: a load); a measuring instrument has none, so making the bench safe never
    #: waits on its I/O
    energises: ClassVar[bool] = False
    #: whether an instrument that stops answering makes the whole bench safe
    loss_is_a_fault: ClassVar[bool] = True

    def __init__(self, agent: Any, name: str, cfg: InstrumentConfig, driver: Any, address: str,
                 bench: dict[str, "InstrumentService"]):
        self.agent, self.name, self.cfg, self.driver, self.address = agent, name, cfg, driver, address
        self.bench = bench          # the bench's services by name (for cross-instrument interlocks)
        self.node = Node(agent.bench_name, "instrument", name)
        self.summary: dict[str, Any] = {}
        self.fault: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ life
    def start(self) -> "InstrumentService":
        """Safe state, first readings, ops served, state published."""
        with self._lock:
            self.driver.safe()
            self.refresh()
        rules = self.safe_ops()
        for op, (handler, args) in self.ops().items():
            self.agent.bus.serve(self.node, op, self._wrap(op, handler), args, safe=rules.get(op, False))
        self.publish()
        return self

    def safe_ops(self) -> dict[str, Any]:
        """The ops that go towards the safe state (True, or a function of the
        args): never refused as expired, and not queued behind other
        instruments' I/O (docs/bus.md).  Kinds extend."""
        return {"safe": True}

    def ops(self) -> dict[str, Op]:
        return {
            "identify": (lambda _a, _c: {"identity": self._identify()}, None),
            "query": (lambda _a, _c: self.refresh(), None),
            "safe": (self._safe_op, None),
        }

    def refresh(self) -> dict[str, Any]:
        """Read the instrument's state into the summary (kinds extend)."""
        return self.summary

    def _identify(self) -> str:
        self.driver.identity = self.driver.identify()
        return self.driver.identity

    def _safe_op(self, _args: Any, ctx: CommandContext) -> dict[str, Any]:
        return {"changed": self.force_safe(f"safe requested by {ctx.sender}")}

    def _wrap(self, op: str, handler: Callable[[Any, CommandContext], dict[str, Any]]):
        def run(args: Any, ctx: CommandContext) -> dict[str, Any]:
            with self._lock:
                try:
                    result = handler(args, ctx) or {}
                except LimitError as exc:
                    raise refuse(str(exc)) from None
                except InstrumentError as exc:
                    self._lost(exc)
                    raise Refused(f"{exc}; the bench was put in its safe state" if self.loss_is_a_fault else str(exc),
                                  code="timeout" if isinstance(exc, InstrumentTimeout) else "failed") from None
                self.fault = None
            self.publish()
            return result | {"state": self.state()}
        return run

    def _lost(self, exc: InstrumentError) -> None:
        """The instrument stopped answering: say so, and make the bench safe."""
        self.fault = str(exc)
        log.error("%s", exc)
        self.publish()
        if self.loss_is_a_fault:
            self.agent.all_safe(f"{exc}")

    # ------------------------------------------------------------------ output protocol
    def is_safe(self) -> bool:
        return True

    def force_safe(self, reason: str) -> bool:
        """The instrument's safe state now (touches only this instrument).
        An instrument busy with I/O finishes it first (within its timeout);
        one that energises nothing is left alone."""
        if not self.energises:
            return False
        with self._lock:
            try:
                changed = bool(self.driver.safe())
                if changed:
                    self.refresh()
            except InstrumentError as exc:
                self.fault = str(exc)
                log.error("%s could not go safe (%s): %s", self.name, reason, exc)
                changed = False
        if changed:
            log.warning("%s safe: %s", self.name, reason)
        self.publish()
        return changed

    def close(self) -> None:
        self.driver.close()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "kind": self.cfg.kind,
            "driver": self.cfg.driver,
            "model": self.driver.model,
            "address": self.address,
            "simulated": self.cfg.simulated,
            "identity": self.driver.identity,
            "summary": dict(self.summary),
            "safe": self.is_safe(),
            "online": self.fault is None,
            "fault": self.fault,
            "limits": self.cfg.limits.model_dump(exclude_none=True),
        }

    def publish(self) -> None:
        # even while the broker is away: it goes (or is republished) when it is back
        self.agent.bus.publish_state(self.node, self.state())

    def guard(self, ctx: CommandContext, towards_safe: bool) -> None:
        self.agent.guard(ctx, towards_safe=towards_safe)


# ---------------------------------------------------------------------------- kinds
class AcSourceService(InstrumentService):
    energises = True

    def ops(self) -> dict[str, Op]:
        own: dict[str, Op] = {
            "set": (self._set, AcSetArgs),
            "output": (lambda a, c: self._set(AcSetArgs(output=a.state), c), OnOff),
            "dip": (self._dip, DipArgs),
        }
        return super().ops() | own

    def safe_ops(self) -> dict[str, Any]:
        return super().safe_ops() | {
            "output": lambda a: a.state == "off",
            "set": lambda a: a.output == "off" and a.voltage is None and a.frequency is None,
        }

    def refresh(self) -> dict[str, Any]:
        self.summary = {"output": "on" if self.driver.is_on else "off", **self.driver.setpoints()}
        return self.summary

    def is_safe(self) -> bool:
        return self.summary.get("output") != "on"

    def _set(self, args: AcSetArgs, ctx: CommandContext) -> dict[str, Any]:
        only_off = args.output == "off" and args.voltage is None and args.frequency is None
        self.guard(ctx, towards_safe=only_off)
        if args.output == "off":
            for load in self.loads_needing_supply():
                load.force_safe(f"AC source {self.name} output going off (requires_supply)")
        if args.voltage is not None:
            self.driver.check("voltage", args.voltage)
            for load in self.loads():
                load.check_draw_at(args.voltage)
        if args.voltage is not None or args.frequency is not None:
            self.driver.set(voltage=args.voltage, frequency=args.frequency)
        if args.output is not None:
            self.driver.output(args.output == "on")
        return self.refresh()

    def _dip(self, args: DipArgs, ctx: CommandContext) -> dict[str, Any]:
        self.guard(ctx, towards_safe=False)
        return {"dip": self.driver.dip(args.depth, args.duration)} | self.refresh()

    def loads(self) -> list["LoadBankService"]:
        return [s for s in self.bench.values() if isinstance(s, LoadBankService) and s.supply() is self]

    def loads_needing_supply(self) -> list["LoadBankService"]:
        return [s for s in self.loads() if s.cfg.requires_supply]


class LoadBankService(InstrumentService):
    energises = True

    def ops(self) -> dict[str, Op]:
        return super().ops() | {
            "draw": (self._draw, DrawArgs),
            "off": (self._off, None),
            "set": (self._set, LoadSetArgs),
        }

    def safe_ops(self) -> dict[str, Any]:
        return super().safe_ops() | {
            "off": True,
            "set": lambda a: a.state == "off" and a.amps is None and a.watts is None,
        }

    def refresh(self) -> dict[str, Any]:
        self.summary = {"load": "on" if self.driver.is_on else "off", **self.driver.setpoint()}
        return self.summary

    def is_safe(self) -> bool:
        return self.summary.get("load") != "on"

    # ------------------------------------------------------------------ interlocks
    def supply(self) -> AcSourceService | None:
        """The AC source feeding this bench (the wiring's, else the only one)."""
        wired = self.agent.cfg.wiring.supply
        if wired is not None:
            svc = self.bench.get(wired)
            return svc if isinstance(svc, AcSourceService) else None
        sources = [s for s in self.bench.values() if isinstance(s, AcSourceService)]
        return sources[0] if len(sources) == 1 else None

    def _supply_voltage(self) -> float:
        supply = self.supply()
        return supply.driver.setpoints()["voltage"] if supply is not None else MAINS_VOLTAGE   # a grid-fed bench

    def _check_setpoint(self, amps: float | None, watts: float | None, voltage: float) -> None:
        """The driver's own ranges first, then current x voltage against the other limit."""
        if amps is not None:
            self.driver.check("current", amps)
        if watts is not None:
            self.driver.check("power", watts)
        lim = self.cfg.limits
        if amps is not None and lim.power_max is not None and amps * voltage > lim.power_max:
            raise refuse(f"load {self.name}: {amps:g} A at {voltage:g} V is {amps * voltage:g} W, above "
                         f"{lim.power_max:g} W (lab.yaml limits.power_max)")
        if watts is not None and lim.current_max is not None and voltage > 0 and watts / voltage > lim.current_max:
            raise refuse(f"load {self.name}: {watts:g} W at {voltage:g} V is {watts / voltage:.3g} A, above "
                         f"{lim.current_max:g} A (lab.yaml limits.current_max)")

    def check_draw_at(self, voltage: float) -> None:
        """Refuse a supply voltage at which this load, if on, would break its limits."""
        if self.summary.get("load") != "on":
            return
        mode, setpoint = self.summary.get("mode"), self.summary.get("setpoint")
        try:
            self._check_setpoint(setpoint if mode == "current" else None, setpoint if mode == "power" else None,
                                 voltage)
        except Refused as exc:
            raise refuse(f"AC source voltage {voltage:g} V refused: {exc.message}") from None

    def _check_supply_on(self) -> None:
        supply = self.supply()
        if self.cfg.requires_supply and supply is not None and not supply.driver.is_on:
            raise refuse(f"load {self.name}: the AC source {supply.name} output is off; this load bank may not "
                         "switch on without supply (lab.yaml requires_supply)")

    # ------------------------------------------------------------------ ops
    def _draw(self, args: DrawArgs, ctx: CommandContext) -> dict[str, Any]:
        self.guard(ctx, towards_safe=False)
        if (args.amps is None) == (args.watts is None):
            raise refuse(f"load {self.name}: give exactly one of amps or watts")
        self._check_supply_on()
        self._check_setpoint(args.amps, args.watts, self._supply_voltage())
        self.driver.draw(amps=args.amps, watts=args.watts)
        return self.refresh()

    def _off(self, _args: Any, ctx: CommandContext) -> dict[str, Any]:
        self.guard(ctx, towards_safe=True)
        self.driver.off()
        return self.refresh()

    def _set(self, args: LoadSetArgs, ctx: CommandContext) -> dict[str, Any]:
        has_setpoint = args.amps is not None or args.watts is not None
        if args.state == "on":
            if not has_setpoint:
                current = self.driver.setpoint()
                key = "amps" if current["mode"] == "current" else "watts"
                args = LoadSetArgs(**{key: current["setpoint"]})
            return self._draw(DrawArgs(amps=args.amps, watts=args.watts), ctx)
        if args.state == "off" and not has_setpoint:
            return self._off(None, ctx)
        self.guard(ctx, towards_safe=False)
        if not has_setpoint:
            raise refuse(f"load {self.name}: nothing to set (amps, watts or state)")
        if args.amps is not None and args.watts is not None:
            raise refuse(f"load {self.name}: give exactly one of amps or watts")
        self._check_setpoint(args.amps, args.watts, self._supply_voltage())
        self.driver.set(amps=args.amps, watts=args.watts)
        if args.state == "off":
            self.driver.off()
        return self.refresh()


class AnalyserService(InstrumentService):

    def ops(self) -> dict[str, Op]:
        return super().ops() | {"read": (lambda _a, _c: self.refresh(), None)}

    def refresh(self) -> dict[str, Any]:
        m = self.driver.read()
        self.summary = m.as_dict() | {"ts": self.agent.clock.now()}
        return self.summary


class AttenuatorService(InstrumentService):

    def ops(self) -> dict[str, Op]:
        return super().ops() | {"set": (self._set, AttenuationArgs)}

    def refresh(self) -> dict[str, Any]:
        self.summary = {"db": self.driver.db}
        return self.summary

    def _set(self, args: AttenuationArgs, ctx: CommandContext) -> dict[str, Any]:
        self.guard(ctx, towards_safe=False)
        self.driver.set(args.db)
        return self.refresh()


class OpticalProbeService(InstrumentService):
    """The optical probe on a meter.  A meter that does not answer its port is
    dark (no supply) or the probe is off the port: the read is refused
    (``timeout``, naming the port) and the bench is left as it is, since the
    probe energises nothing and a dark meter is what outage checks make."""

    loss_is_a_fault = False

    def _lost(self, exc: InstrumentError) -> None:
        if isinstance(exc, InstrumentTimeout):
            log.info("%s", exc)          # the meter is dark: the probe itself is fine
            return
        super()._lost(exc)

    def ops(self) -> dict[str, Op]:
        return super().ops() | {"read": (lambda _a, _c: self._read(), None)}

    def refresh(self) -> dict[str, Any]:
        if not self.summary:
            self.summary = {"identification": self.driver.identity}
        return self.summary

    def _read(self) -> dict[str, Any]:
        readout = self.driver.read()
        self.driver.identity = readout.identification      # the meter on the port, as it last said
        self.summary = {"identification": readout.identification,
                        **{a: f"{r.value}{'*' + r.unit if r.unit else ''}" for a, r in readout.registers.items()
                           if a != LOGBOOK}}
        return readout.as_dict()


def open_driver(name: str, cfg: InstrumentConfig, address: str) -> Any:
    """The lab.yaml driver for an instrument, opened at ``address``."""
    cls = parts.instrument_kind(cfg.kind).driver(cfg.driver).load()
    return cls(name, address, timeout=cfg.timeout, limits=cfg.limits).open()


def serve_instruments(agent: Any) -> dict[str, InstrumentService]:
    """Open, make safe and serve every instrument of the agent's bench.

    Raises (after closing what it opened) if an instrument has no address,
    cannot be reached or refuses its configuration: the error names the
    instrument and its address."""
    services: dict[str, InstrumentService] = {}
    try:
        for name, cfg in agent.cfg.instruments.items():
            address = resolve(agent.bus, agent.bench_name, name, cfg)
            try:
                driver = open_driver(name, cfg, address)
            except LimitError as exc:
                raise InstrumentError(name, address, str(exc).removeprefix(f"instrument {name}: ")) from None
            service_cls = parts.instrument_kind(cfg.kind).load_service()
            service = service_cls(agent, name, cfg, driver, address, services)
            services[name] = service
            service.start()
    except BaseException:
        for service in services.values():
            try:
                service.force_safe("instrument start failed")
            finally:
                service.close()
        raise
    return services
