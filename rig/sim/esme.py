"""The simulated electricity meter (ESME).

It measures what the physical bench model has on its wires (line voltage,
load current through its own contactor), runs the supply state machine of
:mod:`rig.supply` (SUP-1, SUP-2, SUP-6; ZCL ``SupplyStatus``) and
prepayment, keeps an event log that survives loss of mains, and answers the
HAN like a SEP 1.x meter.  The state machine decides every supply change;
this twin feeds it triggers (remote commands over the WAN, local actions,
credit, the load limit, mains return) and carries its decisions out on the
contactor, the log, the alerts and the bus.

Local actions (bus ops of the device node, what a person at the meter does)::

    press("enable")            the enable prompt shows (SUP-7 menu step)
    hold("enable", 2.5)        held >= hold_time while the prompt shows: enable
    press("emergency_credit")  activate emergency credit when available
    enter_utrn("0100...")      keypad top-up (SUP-5)

Outage (OUT-1, OUT-3): loss of supply is logged (0x8F57 "Supply
interrupted") and so is its restoration; on restoration the meter alerts
0x8F35 (shorter than its ``outage_alert_period``) or 0x8F36 (at least that).
The outage alert itself (AD1) is not the meter's: the comms hub and the WAN
provider's network raise it (:mod:`rig.sim.wan`, seed 002:1678-1693).
Voltage sag/swell (OUT-6) raise 0x802C/0x8099 and 0x8024/0x8091.

PPMID commands (safety property 4) are carried out only from the paired
PPMID, only once (the radio drops a repeated frame counter, kept across
outages), only when authentic (frames that fail the HAN's security check
are dropped) and only while fresh: a press older than
``ppmid_command_ttl`` lab seconds (default 4.5, inside the 5 s enable bound)
is refused.

Fault profiles (rig/faults.py) are read once at start: those of the supply
logic become :class:`rig.supply.Rules`, the others :class:`Quirks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..alerts import AlertCode
from ..bus import CommandContext, Refused
from ..protocol import zcl
from ..supply import ArmCause, Party, Rules, Supply, SupplyMachine, Transition, Trigger
from .han import HanFrame
from .physics import SUPPLY_PRESENT_V
from .twin import FaultFlags, Twin, reject

log = logging.getLogger(__name__)

#: lab seconds the enable prompt stays on the display after ``press("enable")``
PROMPT_SECONDS = 30.0
#: longest modelled button hold, lab seconds
MAX_HOLD = 60.0
#: misses_flicker: interruptions shorter than this are not logged
FLICKER_SECONDS = 5.0
#: late_restore_alert: lab seconds the faulty meter waits before its restoration alert
LATE_RESTORE_DELAY = 60.0
#: long_freshness_window: the stale-command window of the faulty meter, lab seconds
LONG_FRESHNESS = 30.0
#: register_runs_fast: the faulty meter's register counts this much of what flows
REGISTER_FAST = 1.03
#: event log entries kept
LOG_SIZE = 2000
#: longest wait between metrology ticks, lab seconds
MAX_TICK = 60.0
#: event log entries the optical port's data readout carries (the latest), as logbook lines
OPTICAL_LOGBOOK = 64

#: which remote party may send which inner command (SEC-2, SEC-4)
AUTHORITY: dict[tuple[str, str], set[str]] = {
    ("Metering", "change_supply"): {"supplier", "dno"},
    ("Prepayment", "credit_adjustment"): {"supplier"},
    ("Prepayment", "select_available_emergency_credit"): {"supplier"},
    ("LoadLimit", "Write_Attributes"): {"supplier"},
    ("Metering", "Read_Attributes"): {"supplier", "dno"},
    ("Prepayment", "Read_Attributes"): {"supplier", "dno"},
    ("LoadLimit", "Read_Attributes"): {"supplier", "dno"},
}

#: the WAN's change_supply target -> trigger
REMOTE_TRIGGERS = {Supply.DISABLED: Trigger.REMOTE_DISABLE, Supply.ARMED: Trigger.REMOTE_ARM,
                   Supply.ENABLED: Trigger.REMOTE_ENABLE}


@dataclass(frozen=True)
class Quirks(FaultFlags):
    """The meter's fault profiles outside the supply logic, read once from lab.yaml."""

    misses_flicker: bool = False
    no_restore_alert: bool = False
    late_restore_alert: bool = False
    wrong_restore_code: bool = False
    duplicate_alerts: bool = False
    alerts_sent_once: bool = False
    alert_storm: bool = False
    reports_closed_when_open: bool = False
    welded_contactor: bool = False
    accepts_replayed_ppmid: bool = False
    replay_window_resets_on_reboot: bool = False
    accepts_forged_frames: bool = False
    accepts_stale_ppmid: bool = False
    long_freshness_window: bool = False
    accepts_unpaired_ppmid: bool = False
    ignores_hold_time: bool = False
    ignores_premises: bool = False
    utrn_reuse: bool = False
    no_power_quality_alerts: bool = False
    accepts_han_config_write: bool = False
    register_runs_fast: bool = False



class PressArgs(BaseModel):
    button: Literal["enable", "emergency_credit", "display"]


class HoldArgs(BaseModel):
    button: Literal["enable", "emergency_credit", "display"]
    seconds: float = Field(..., gt=0, le=MAX_HOLD, description="lab seconds the button is held")


class UtrnArgs(BaseModel):
    code: str = Field(..., min_length=1, max_length=40)


class LogArgs(BaseModel):
    since: float | None = None
    event: str | None = None


class Outcome(Exception):
    """A remote or HAN command the meter will not carry out."""

    def __init__(self, reason: str, requirement: str = "", status: zcl.Status = zcl.Status.FAILURE):
        super().__init__(reason)
        self.reason, self.requirement, self.status = reason, requirement, status


class Esme(Twin):
    kind = "esme"

    def __init__(self, world, han, name, cfg):
        super().__init__(world, han, name, cfg)
        s = self.s = cfg.settings
        self.physics = world.physics
        self.lab_name = world.lab.lab.name
        self.wired = world.cfg.wiring.meter == name
        self.quirks = Quirks.of(self.faults)
        self.machine = SupplyMachine(Rules.for_meter(s.remote_enable, self.faults))
        now = self.clock.now()
        self.powered = self.physics.supply_present()
        self.reported_closed = False
        # metrology
        self.energy_wh = 0.0
        self._ts = now
        self._power = 0.0
        # prepayment (GBP; negative only while emergency credit is in use)
        self.credit = float(s.credit)
        self.ec_state = "not_available"
        self.low_credit = False
        self.total_credit_added = 0.0
        self.used_utrns: set[str] = set()
        self.utrn_key = zcl.meter_key(self.lab_name, cfg.id)
        # load limit (SUP-9)
        self.load_limit_kw = s.load_limit_kw
        self.load_limit_period = s.load_limit_period
        self._over_since: float | None = None
        self._ll_handle = None
        # outages and power quality
        self.outage_start: float | None = None if self.powered else now
        self.last_outage: dict[str, Any] | None = None
        self.power_quality: str | None = None
        # local user interface
        self.prompt_until = float("-inf")
        self.page = 0
        # security
        self.requests_seen: set[int] = set()
        bench = world.cfg
        self.paired_ppmid = s.paired_ppmid or next(
            (n for n, d in bench.devices.items() if d.kind == "ppmid"
             and getattr(d.settings, "paired_meter", None) in (None, name)), None)
        self.paired_eui = bench.devices[self.paired_ppmid].id if self.paired_ppmid in bench.devices else None
        self.hub_eui = next((d.id for d in bench.devices.values() if d.kind == "comms_hub"), None)
        self.radio.accept_replays = self.quirks.accepts_replayed_ppmid
        self.radio.accept_forged = self.quirks.accepts_forged_frames
        self.log: list[dict[str, Any]] = []
        self._tick_handle = None
        self._pushes: dict[str, tuple[float, bool, bool]] = {}   # button -> (down at, powered then, a hold)
        self._keypad = ""

    # ------------------------------------------------------------------ supply (rig.supply)
    @property
    def supply(self) -> str:
        return str(self.machine.state)

    @property
    def disabled_by(self) -> set[str]:
        return {str(p) for p in self.machine.holders}

    def freshness(self) -> float:
        """Lab seconds a PPMID press stays fresh (property 4)."""
        if self.quirks.accepts_stale_ppmid:
            return float("inf")
        return LONG_FRESHNESS if self.quirks.long_freshness_window else float(self.s.ppmid_command_ttl)

    def apply(self, trigger: Trigger, party: Party | None = None, *, why: str = "",
              cause: ArmCause | None = None, proposed: Supply | None = None, **data: Any) -> Transition:
        """Feed the state machine one trigger and carry out what it decided:
        the contactor, the log, the alert, the retained state."""
        holders = self.machine.holders
        t = self.machine.apply(trigger, party, cause=cause, proposed=proposed)
        if t.changed:
            self.record(f"supply_{t.after}", cause=why or str(trigger), previous=str(t.before),
                        disabled_by=sorted(self.disabled_by), **data)
            self.event("supply", state=str(t.after), previous=str(t.before), cause=why or str(trigger))
            self._drive_contactor()
            self.publish()
        if not t.accepted:
            self.record(f"{trigger}_refused", reason=t.reason, requirement=t.requirement,
                        party=str(party) if party else None, **data)
        elif trigger is Trigger.REMOTE_DISABLE and not t.changed:
            self.record("supply_disable", party=str(party), disabled_by=sorted(self.disabled_by),
                        note="already disabled")
        elif not t.changed and holders - self.machine.holders:
            self.record("disablement_lifted", party=str(party) if party else None,
                        lifted=sorted(str(p) for p in holders - self.machine.holders),
                        disabled_by=sorted(self.disabled_by), reason=t.reason)
        if t.alert is not None:
            role: dict[str, Any] = {"role": str(party)} if party else {}
            self.alert(t.alert, **role)
        return t

    # ------------------------------------------------------------------ wiring
    def radio_powered(self) -> bool:
        return self.powered

    def serve(self) -> None:
        s = self.bus.serve
        s(self.node, "press", self._press, PressArgs)
        s(self.node, "hold", self._hold, HoldArgs)
        s(self.node, "enter_utrn", self._enter_utrn, UtrnArgs)
        s(self.node, "event_log", self._event_log, LogArgs)
        s(self.node, "read", lambda _a, _c: self._read())

    def started(self) -> None:
        self.physics.listen(self._on_physics)
        with self.lock:
            self._drive_contactor()
            self._schedule_tick()

    # ------------------------------------------------------------------ log and alerts
    def record(self, event: str, code: int | None = None, /, **data: Any) -> dict[str, Any]:
        """Append to the meter's event log (kept across outages) and publish it."""
        entry = {"ts": self.clock.now(), "event": event, **({"code": f"0x{code:04X}"} if code else {}), **data}
        self.log.append(entry)
        if len(self.log) > LOG_SIZE:
            del self.log[: len(self.log) - LOG_SIZE]
        self.event("log", **entry)
        return entry

    def alert(self, code: AlertCode, last_gasp: bool = False, **data: Any) -> None:
        """Raise an alert over the HAN to the hub (twice, with the duplicate_alerts fault;
        never retried, with alerts_sent_once)."""
        for _ in range(2 if self.quirks.duplicate_alerts else 1):
            self.raise_alert(int(code), last_gasp=last_gasp, retry=not self.quirks.alerts_sent_once, **data)

    # ------------------------------------------------------------------ contactor
    def _drive_contactor(self) -> None:
        """Make the contactor match the supply state (reported and physical)."""
        want = self.machine.state is Supply.ENABLED
        if want == self.reported_closed and (not self.wired or self.physics.contactor == self._actual(want)):
            return
        self.reported_closed = want
        if self.wired:
            self.physics.set_contactor(self._actual(want))
        self.event("contactor", closed=want)

    def _actual(self, want: bool) -> bool:
        if self.quirks.welded_contactor:
            return True          # the contacts are welded shut: the load stays live, the meter says open
        return want and not self.quirks.reports_closed_when_open   # the relay never closes, the meter says it did

    # ------------------------------------------------------------------ physics
    def _on_physics(self, _what: set[str]) -> None:
        with self.lock:
            self._integrate()
            present = self.physics.supply_present()
            if present != self.powered:
                if present:
                    self._supply_restored(self.physics.event_time())
                else:
                    self._supply_lost(self.physics.event_time())
            if self.powered:
                self._check_power_quality()
                self._check_load_limit()
            self._schedule_tick()
        self.publish()

    def _integrate(self) -> None:
        now = self.clock.now()
        dt = max(0.0, now - self._ts)
        self._ts = now
        if dt > 0 and self._power > 0:
            wh = self._power * dt / 3600.0
            self.energy_wh += wh * (REGISTER_FAST if self.quirks.register_runs_fast else 1.0)
            self.credit -= wh / 1000.0 * self.s.tariff
            self._check_credit()
        self._power = self.physics.load_power() if self.wired and self.powered else 0.0

    def _tick(self) -> None:
        with self.lock:
            self._integrate()
            if self.powered:
                self._check_load_limit()
            self._schedule_tick()

    def _schedule_tick(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        delay = MAX_TICK
        rate = self._power / 1000.0 * self.s.tariff / 3600.0   # GBP per lab second
        if rate > 0:
            below = [x for x in self._credit_thresholds() if x < self.credit]
            if below:
                delay = min(delay, (self.credit - max(below)) / rate + 1e-3)
        self._tick_handle = self.loop.call_later(max(delay, 1e-3), self._tick)

    # ------------------------------------------------------------------ outages (OUT-1, OUT-3)
    def _supply_lost(self, t0: float) -> None:
        self.powered = False
        self.outage_start = t0
        self.prompt_until = float("-inf")
        self.power_quality = None
        self._over_since = None
        if self.quirks.replay_window_resets_on_reboot:
            self.radio.forget_counters()       # the frame counters were in RAM only
        if self.quirks.misses_flicker:
            self.loop.call_later(FLICKER_SECONDS, self._late_loss_log, t0)
        else:
            self.record("supply_lost", AlertCode.SUPPLY_INTERRUPTED, outage_start=t0, ts=t0)
        if self.quirks.alert_storm:
            # an alert to the network operator on every interruption, sent on the supply capacitor
            self.alert(AlertCode.SUPPLY_INTERRUPTED, last_gasp=True, outage_start=t0)
        self.event("power", powered=False)

    def _late_loss_log(self, t0: float) -> None:
        with self.lock:
            if not self.powered and self.outage_start == t0:
                self.record("supply_lost", AlertCode.SUPPLY_INTERRUPTED, outage_start=t0)

    def _supply_restored(self, t1: float) -> None:
        self.powered = True
        t0 = self.outage_start if self.outage_start is not None else t1
        self.outage_start = None
        duration = t1 - t0
        self.last_outage = {"start": t0, "end": t1, "duration": duration}
        self.apply(Trigger.MAINS_RETURN, why="mains returned")
        self._drive_contactor()
        self.event("power", powered=True, outage=duration)
        if self.quirks.misses_flicker and duration < FLICKER_SECONDS:
            return
        long = duration >= self.s.outage_alert_period and not self.quirks.wrong_restore_code
        code = AlertCode.SUPPLY_OUTAGE_RESTORED_LONG if long else AlertCode.SUPPLY_OUTAGE_RESTORED
        self.record("supply_restored", code, outage_start=t0, duration=duration, ts=t1)
        if self.quirks.no_restore_alert:
            return
        if self.quirks.late_restore_alert:
            self.loop.call_later(LATE_RESTORE_DELAY, self._late_alert, code, t0, duration)
        else:
            self.alert(code, outage_start=t0, duration=duration)

    def _late_alert(self, code: AlertCode, t0: float, duration: float) -> None:
        with self.lock:
            if self.powered:
                self.alert(code, outage_start=t0, duration=duration)

    def _check_power_quality(self) -> None:
        if self.quirks.no_power_quality_alerts:
            return
        v = self.physics.line_voltage()
        now = "sag" if SUPPLY_PRESENT_V <= v < self.s.voltage_sag_threshold else \
              "swell" if v > self.s.voltage_swell_threshold else None
        if now == self.power_quality:
            return
        before, self.power_quality = self.power_quality, now
        if before == "sag":
            self.record("voltage_sag_end", AlertCode.VOLTAGE_SAG_END, voltage=v)
            self.alert(AlertCode.VOLTAGE_SAG_END, voltage=v)
        elif before == "swell":
            self.record("voltage_swell_end", AlertCode.VOLTAGE_SWELL_END, voltage=v)
            self.alert(AlertCode.VOLTAGE_SWELL_END, voltage=v)
        if now == "sag":
            self.record("voltage_sag", AlertCode.VOLTAGE_SAG, voltage=v, threshold=self.s.voltage_sag_threshold)
            self.alert(AlertCode.VOLTAGE_SAG, voltage=v, threshold=self.s.voltage_sag_threshold)
        elif now == "swell":
            self.record("voltage_swell", AlertCode.VOLTAGE_SWELL, voltage=v,
                        threshold=self.s.voltage_swell_threshold)
            self.alert(AlertCode.VOLTAGE_SWELL, voltage=v, threshold=self.s.voltage_swell_threshold)

    # ------------------------------------------------------------------ load limit (SUP-9)
    def _check_load_limit(self) -> None:
        if not self.load_limit_kw or self.machine.state is not Supply.ENABLED:
            self._over_since = None
            return
        over = self._power > self.load_limit_kw * 1000.0
        if over and self._over_since is None:
            self._over_since = self.clock.now()
            self.record("load_limit_exceeded", AlertCode.LOAD_LIMIT_EXCEEDED, power=self._power,
                        threshold_kw=self.load_limit_kw)
            self.alert(AlertCode.LOAD_LIMIT_EXCEEDED, power=self._power, threshold_kw=self.load_limit_kw)
            self._ll_handle = self.loop.call_later(self.load_limit_period, self._load_limit_due)
        elif not over and self._over_since is not None:
            self._over_since = None
            if self._ll_handle is not None:
                self._ll_handle.cancel()

    def _load_limit_due(self) -> None:
        with self.lock:
            self._integrate()
            if self._over_since is None or self.machine.state is not Supply.ENABLED:
                return
            self._over_since = None
            t = self.apply(Trigger.LOAD_LIMIT_TRIP, why="load limit", power=self._power,
                           threshold_kw=self.load_limit_kw)
            if t.accepted:
                self.loop.call_later(self.load_limit_period, self._load_limit_restore)

    def _load_limit_restore(self) -> None:
        with self.lock:
            if self.powered:
                self.apply(Trigger.LOAD_LIMIT_RESTORE, why="load limit restoration period")

    # ------------------------------------------------------------------ prepayment (SUP-3, SUP-5)
    def _credit_thresholds(self) -> list[float]:
        out = [self.s.low_credit_threshold, 0.0]
        if self.ec_state == "in_use":
            out.append(-self.s.emergency_credit)
        return out

    def _credit_floor(self) -> float:
        return -self.s.emergency_credit if self.ec_state == "in_use" else 0.0

    def _ec_remaining(self) -> float:
        """GBP of emergency credit left to the consumer."""
        if self.ec_state == "in_use":
            return self.s.emergency_credit + min(0.0, self.credit)
        return self.s.emergency_credit if self.ec_state == "available" else 0.0

    def _check_credit(self) -> None:
        c = self.credit
        if c < self.s.low_credit_threshold and not self.low_credit:
            self.low_credit = True
            self.record("low_credit", AlertCode.LOW_CREDIT, credit=round(c, 2))
            self.alert(AlertCode.LOW_CREDIT, credit=round(c, 2))
        elif c >= self.s.low_credit_threshold:
            self.low_credit = False
        if c <= self.s.low_credit_threshold and self.ec_state == "not_available" and self.s.emergency_credit > 0:
            self.ec_state = "available"
            self.record("emergency_credit_available", AlertCode.EMERGENCY_CREDIT_AVAILABLE)
            self.alert(AlertCode.EMERGENCY_CREDIT_AVAILABLE)
        if c > 0 and self.ec_state == "in_use":
            self.ec_state = "not_available"  # emergency credit repaid
        if c <= self._credit_floor() and Party.CREDIT not in self.machine.holders:
            if self.ec_state == "in_use":
                self.ec_state = "exhausted"
                self.record("emergency_credit_exhausted", AlertCode.EMERGENCY_CREDIT_EXHAUSTED)
                self.alert(AlertCode.EMERGENCY_CREDIT_EXHAUSTED)
            self.record("credit_exhausted", AlertCode.CREDIT_BELOW_DISABLEMENT, credit=round(c, 2))
            self.alert(AlertCode.CREDIT_BELOW_DISABLEMENT, credit=round(c, 2))
            self.apply(Trigger.CREDIT_EXHAUSTED, why="credit exhausted")

    def _lift_credit_disablement(self, why: str, cause: ArmCause = ArmCause.CREDIT) -> None:
        if Party.CREDIT in self.machine.holders and self.credit > self._credit_floor():
            self.apply(Trigger.CREDIT_RESTORED, why=why, cause=cause)

    def _activate_emergency_credit(self, via: str) -> tuple[bool, str]:
        self._integrate()
        if self.ec_state != "available":
            return False, f"emergency credit is {self.ec_state.replace('_', ' ')}"
        self.ec_state = "in_use"
        self.record("emergency_credit_activated", AlertCode.EMERGENCY_CREDIT_ACTIVATED, via=via)
        self.alert(AlertCode.EMERGENCY_CREDIT_ACTIVATED, via=via)
        self._lift_credit_disablement("emergency credit activated", ArmCause.EMERGENCY_CREDIT)
        self._schedule_tick()
        self.publish()
        return True, "emergency credit in use"

    def _top_up(self, code: str, via: str) -> tuple[zcl.TopUpResult, float, str]:
        self._integrate()
        try:
            pence, _counter = zcl.read_utrn(self.utrn_key, self.cfg.id, code)
        except zcl.UtrnError as exc:
            self.record("utrn_rejected", exc.alert, via=via, reason=str(exc))
            self.raise_alert(exc.alert, via=via)
            return zcl.TopUpResult.Rejected_Invalid_Top_Up, 0.0, str(exc)
        if code in self.used_utrns and not self.quirks.utrn_reuse:
            self.record("utrn_rejected", AlertCode.DUPLICATE_UTRN, via=via, reason="duplicate UTRN")
            self.alert(AlertCode.DUPLICATE_UTRN, via=via)
            return zcl.TopUpResult.Rejected_Duplicate_Top_Up, 0.0, "UTRN already used (SUP-5)"
        self.used_utrns.add(code)
        amount = pence / 100.0
        self.credit += amount
        self.total_credit_added += amount
        self.record("credit_added", AlertCode.CREDIT_ADDED_LOCALLY, via=via, amount=amount,
                    credit=round(self.credit, 2))
        self.alert(AlertCode.CREDIT_ADDED_LOCALLY, amount=amount)
        self._check_credit()
        armed_before = self.machine.state is Supply.ARMED
        self._lift_credit_disablement("top-up")
        self._schedule_tick()
        self.publish()
        result = zcl.TopUpResult.Accepted_Supply_Armed if self.machine.state is Supply.ARMED and not armed_before \
            else zcl.TopUpResult.Accepted
        return result, amount, "accepted"

    # ------------------------------------------------------------------ local enable (SUP-2, SUP-7)
    def _local_enable(self, via: str) -> tuple[bool, str]:
        t = self.apply(Trigger.LOCAL_ENABLE, why=f"local action ({via})", via=via)
        return t.closes, t.reason

    def _require_power(self) -> None:
        if not self.powered:
            raise Refused(f"{self.name} has no supply: its display is dark and its buttons do nothing")

    def _press(self, args: PressArgs, _ctx: CommandContext) -> dict:
        self._require_power()
        return self._press_action(args.button)

    def _press_action(self, button: str) -> dict:
        """A press of ``button`` (op ``press``, or a short push on its GPIO input)."""
        with self.lock:
            if button == "enable":
                self.prompt_until = self.clock.now() + PROMPT_SECONDS
                self.record("button", button="enable", action="press")
                self.publish()
                return {"display": self.display(), "prompt_until": self.prompt_until}
            if button == "emergency_credit":
                ok, why = self._activate_emergency_credit("meter button")
                self.alert(AlertCode.UI_COMMAND_ACTIONED if ok else AlertCode.UI_COMMAND_NOT_ACTIONED,
                           input="emergency_credit")
                return {"actioned": ok, "reason": why, "display": self.display()}
            self.page = (self.page + 1) % 4
            self.publish()
            return {"display": self.display()}

    def _hold(self, args: HoldArgs, _ctx: CommandContext) -> dict:
        self._require_power()
        start = self.clock.now()
        with self.lock:
            prompt = self.prompt_until >= start and args.button == "enable"
            self.record("button", button=args.button, action="hold", seconds=args.seconds)
        self.clock.sleep(args.seconds)   # the person holds the button for this long
        return self._hold_action(args.button, args.seconds, prompt, self.clock.now())

    def _hold_action(self, button: str, seconds: float, prompt: bool, released: float) -> dict:
        """The end of a hold of ``button`` (op ``hold``, or a long push on its
        GPIO input): ``prompt`` whether the enable prompt showed when it began."""
        with self.lock:
            if not self.powered:
                return {"actioned": False, "reason": "supply lost during the hold", "supply": self.supply}
            if button != "enable":
                return {"actioned": False, "reason": f"holding '{button}' does nothing", "supply": self.supply}
            if not prompt:
                why = "hold without the enable prompt: press 'enable' first (SUP-7)"
            elif seconds < self.s.hold_time and not self.quirks.ignores_hold_time:
                why = f"held {seconds:g} s, less than the {self.s.hold_time:g} s needed (SUP-7)"
            else:
                why = ""
            if why:
                self.record("local_enable_refused", via="meter button", reason=why)
                self.alert(AlertCode.UI_COMMAND_NOT_ACTIONED, input="enable")
                return {"actioned": False, "reason": why, "supply": self.supply}
            self.prompt_until = float("-inf")
            ok, why = self._local_enable("meter button")
            self.alert(AlertCode.UI_COMMAND_ACTIONED if ok else AlertCode.UI_COMMAND_NOT_ACTIONED, input="enable")
            return {"actioned": ok, "reason": why, "supply": self.supply, "released": released}

    # ------------------------------------------------------------------ buttons on GPIO (rig/sim/buttons.py)
    def button_input(self, button: str, down: bool, at: float) -> None:
        """An edge of one of the meter's buttons as its input pin saw it,
        ``at`` the lab time of the edge (the bench's actuator stamp).  A
        push that starts while the enable prompt shows is a hold of
        ``enable`` (judged by how long it lasted); any other push is a
        press.  Keypad digits gather until ``key_enter`` enters them as a
        UTRN.  Without mains the buttons are dead."""
        with self.lock:
            if down:
                self._pushes[button] = (at, self.powered, button == "enable" and self.prompt_until >= at)
                return
            start, live, hold = self._pushes.pop(button, (None, False, False))
            if start is None or not live or not self.powered:
                return
            if button.startswith("key_"):
                key = button.removeprefix("key_")
                if key != "enter":
                    self._keypad = (self._keypad + key)[-40:]
                    return
                code, self._keypad = self._keypad, ""
                self._top_up(code, "meter keypad")
                return
        if hold:
            self.record("button", button=button, action="hold", seconds=round(at - start, 3))
            self._hold_action(button, at - start, True, at)
        else:
            self._press_action(button)

    def _enter_utrn(self, args: UtrnArgs, _ctx: CommandContext) -> dict:
        self._require_power()
        with self.lock:
            result, amount, why = self._top_up(args.code, "meter keypad")
            return {"result": result.name, "accepted": result.name.startswith("Accepted"), "amount": amount,
                    "reason": why, "credit": round(self.credit, 2), "supply": self.supply}

    def _event_log(self, args: LogArgs, _ctx: CommandContext) -> dict:
        with self.lock:
            entries = [e for e in self.log if (args.since is None or e["ts"] >= args.since)
                       and (args.event is None or e["event"] == args.event)]
        return {"entries": entries}

    def _read(self) -> dict:
        with self.lock:
            self._integrate()
            return self.state()

    def optical_registers(self) -> list[tuple[str, Any]]:
        """The meter's IEC 62056-21 data block (for a simulated optical port:
        ``port.provider = esme.optical_registers``): its registers, the
        disconnect control state ``96.3.10`` (0 disconnected, 1 connected, 2
        ready for reconnection: disabled, enabled, armed), the clock, and the
        last :data:`OPTICAL_LOGBOOK` entries of its event log as logbook lines
        ``P.98(<YYMMDDhhmmss>)(<code>)(<event>)`` (UTC, whole seconds)."""
        from instruments.optical_probe import LOGBOOK, stamp

        with self.lock:
            self._integrate()
            now = self.clock.now()
            lines: list[tuple[str, Any]] = [
                ("0.0.0", self.cfg.id.replace(":", "")),
                ("0.9.1", stamp(now)[6:]),
                ("0.9.2", stamp(now)[:6]),
                ("1.8.0", f"{self.energy_wh / 1000.0:010.3f}*kWh"),
                ("32.7.0", f"{self.physics.line_voltage() if self.powered else 0.0:05.1f}*V"),
                ("31.7.0", f"{self.physics.load_current() if self.wired else 0.0:06.2f}*A"),
                ("14.7.0", f"{self.physics.frequency():05.2f}*Hz"),
                ("96.3.10", str({Supply.DISABLED: 0, Supply.ENABLED: 1, Supply.ARMED: 2}[self.machine.state])),
                ("C.51.0", f"{len(self.log)}"),
                ("F.F", "00000000"),
            ]
            for e in self.log[-OPTICAL_LOGBOOK:]:
                lines.append((LOGBOOK, [stamp(float(e["ts"])), str(e.get("code", "")), str(e["event"])]))
            return lines

    def display(self) -> str:
        if not self.powered:
            return ""
        if self.prompt_until >= self.clock.now():
            return f"ENABLE SUPPLY? HOLD BUTTON {self.s.hold_time:g} s"
        pages = [f"SUPPLY {self.supply.upper()}", f"CREDIT GBP {self.credit:.2f}",
                 f"{self.energy_wh / 1000:.3f} kWh", f"{self.physics.line_voltage():.0f} V"]
        return pages[self.page % len(pages)]

    # ------------------------------------------------------------------ HAN
    def _who(self, frame: HanFrame) -> str:
        if self.hub_eui and frame.src_eui == self.hub_eui:
            return "hub"
        if self.paired_eui and frame.src_eui == self.paired_eui:
            return "ppmid"
        return "han_device"

    def on_frame(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        self._integrate()
        who = self._who(frame)
        if parsed.general:
            if parsed.name == "Read_Attributes":
                self.radio.reply(frame, zcl.read_attributes_response(
                    parsed.cluster, parsed.requested(), self._attributes(parsed.cluster), tsn=parsed.tsn))
            elif parsed.name == "Write_Attributes":
                self._han_function_call(frame, parsed, who)
            return
        if parsed.cluster is zcl.Tunneling and parsed.name == "transfer_data" and not parsed.to_client:
            if who == "hub":
                self._remote(frame, parsed)
            return
        if parsed.cluster is zcl.Prepayment and (who == "ppmid" or self.quirks.accepts_unpaired_ppmid):
            self._ppmid_command(frame, parsed)
            return
        self._han_function_call(frame, parsed, who)

    def _han_function_call(self, frame: HanFrame, parsed: zcl.Zcl, who: str) -> None:
        """Writes and function calls from HAN devices (CAD, IHD, an unpaired
        PPMID) are refused: only the WAN may change a meter (HAN-6)."""
        what = f"{parsed.cluster.__name__}.{parsed.name}"
        if parsed.cluster is zcl.Metering and parsed.name in ("local_change_supply", "change_supply"):
            proposed = Supply(int(parsed.args.get("proposed_supply_status", 0)))
            t = self.apply(Trigger.HAN_COMMAND, why=f"HAN command from {frame.src}", proposed=proposed,
                           source=frame.src)
            if t.accepted:
                self.record("han_command_executed", source=frame.src, command=what)
                self.radio.reply(frame, zcl.default_response(parsed.command_id, zcl.Status.SUCCESS, tsn=parsed.tsn))
                return
            self.alert(AlertCode.UNAUTHORISED_ACCESS, source=frame.src, command=what)   # logged by apply()
            reject(self.radio, frame, parsed)
            return
        elif parsed.general and parsed.name == "Write_Attributes" and parsed.cluster is zcl.LoadLimit \
                and self.quirks.accepts_han_config_write:
            self._write_load_limit(parsed.written(), f"HAN device {frame.src}")
            self.radio.reply(frame, zcl.write_attributes_response(zcl.Status.SUCCESS, [], tsn=parsed.tsn))
            return
        self.record("han_command_refused", AlertCode.UNAUTHORISED_ACCESS, source=frame.src, command=what,
                    reason="HAN devices may read only (HAN-6)")
        self.alert(AlertCode.UNAUTHORISED_ACCESS, source=frame.src, command=what)
        reject(self.radio, frame, parsed)

    def _stale(self, issued: float) -> str:
        age = self.clock.now() - issued
        window = self.freshness()
        if age > window:
            return f"PPMID command pressed {age:.0f} s ago, older than {window:g} s: not carried out (property 4)"
        return ""

    def _ppmid_command(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        now = self.clock.now()
        if parsed.name == "change_supply":
            issued = zcl.from_utc(parsed.args["request_date_time"])
            proposed = int(parsed.args["proposed_supply_status"])
            ok, why = False, ""
            if proposed != Supply.ENABLED:
                why = "a PPMID may only ask for the supply to be enabled"
            else:
                why = self._stale(issued)
                if not why:
                    ok, why = self._local_enable(f"PPMID {frame.src}")
            self.record("ppmid_enable", source=frame.src, accepted=ok, reason=why, pressed=issued,
                        counter=frame.counter, replayed=frame.replayed)
            self.alert(AlertCode.HAN_COMMAND_ACTIONED if ok else AlertCode.HAN_COMMAND_NOT_ACTIONED,
                       command="enable_supply", source=frame.src)
            self.radio.reply(frame, zcl.command(
                zcl.Prepayment, "supply_status_response", tsn=parsed.tsn, provider_id=0,
                implementation_date_time=zcl.to_utc(now), supply_status=int(self.machine.state)))
        elif parsed.name == "select_available_emergency_credit":
            issued = zcl.from_utc(parsed.args["command_issue_date_time"])
            why = self._stale(issued)
            ok, why = (False, why) if why else self._activate_emergency_credit(f"PPMID {frame.src}")
            self.record("ppmid_emergency_credit", source=frame.src, accepted=ok, reason=why)
            self.alert(AlertCode.HAN_COMMAND_ACTIONED if ok else AlertCode.HAN_COMMAND_NOT_ACTIONED,
                       command="emergency_credit", source=frame.src)
            self.radio.reply(frame, zcl.default_response(
                parsed.command_id, zcl.Status.SUCCESS if ok else zcl.Status.FAILURE, tsn=parsed.tsn))
        elif parsed.name == "consumer_top_up":
            result, amount, why = self._top_up(bytes(parsed.args["top_up_code"]).decode(errors="replace"),
                                               f"PPMID {frame.src}")
            self.radio.reply(frame, zcl.command(
                zcl.Prepayment, "consumer_top_up_response", tsn=parsed.tsn, result_type=result,
                top_up_value=int(round(amount * 100)), source_of_top_up=zcl.OriginatingDevice.In_Home_Display,
                credit_remaining=int(round(self.credit * 100))))
        else:
            self._han_function_call(frame, parsed, "ppmid")

    def _attributes(self, cluster) -> dict[str, Any]:
        if cluster is zcl.Metering:
            status = 0
            if not self.powered:
                status |= zcl.Metering.MeteringStatus.Power_Failure
            if not self.reported_closed:
                status |= zcl.Metering.MeteringStatus.Service_Disconnect_Open
            if self.power_quality:
                status |= zcl.Metering.MeteringStatus.Power_Quality
            return {
                "current_summ_delivered": int(self.energy_wh),
                "instantaneous_demand": int(round(self._power)),
                "supply_status": int(self.machine.state),
                "status": status,
                "unit_of_measure": zcl.Metering.MeteringUnitofMeasure.Kwh_and_Kwh_binary,
                "multiplier": 1,
                "divisor": 1000,
                "metering_device_type": zcl.Metering.MeteringDeviceType.Electric_Metering,
            }
        if cluster is zcl.Prepayment:
            status = 0
            if self.credit > 0:
                status |= zcl.CreditStatus.Credit_Ok
            if self.low_credit:
                status |= zcl.CreditStatus.Low_Credit
            if self.s.emergency_credit > 0:
                status |= zcl.CreditStatus.Emergency_Credit_Enabled
            if self.ec_state == "available":
                status |= zcl.CreditStatus.Emergency_Credit_Available
            if self.ec_state == "in_use":
                status |= zcl.CreditStatus.Emergency_Credit_In_Use | zcl.CreditStatus.Emergency_Credit_Selected
            if self.ec_state == "exhausted" or Party.CREDIT in self.machine.holders:
                status |= zcl.CreditStatus.Credit_Exhausted
            return {
                "credit_remaining": int(round(self.credit * 100)),
                "emergency_credit_remaining": int(round(self._ec_remaining() * 100)),
                "credit_status": status,
                "credit_remaining_timestamp": zcl.to_utc(self.clock.now()),
                "accumulated_debt": 0,
                "emergency_credit_limit_allowance": int(round(self.s.emergency_credit * 100)),
                "low_credit_warning_level": int(round(self.s.low_credit_threshold * 100)),
                "total_credit_added": int(round(self.total_credit_added * 100)),
            }
        if cluster is zcl.LoadLimit:
            return {"threshold_w": int((self.load_limit_kw or 0) * 1000), "period_s": int(self.load_limit_period),
                    "active": self.machine.arm_cause is ArmCause.LOAD_LIMIT}
        return {}

    # ------------------------------------------------------------------ remote commands (SUP-1, SEC-1)
    def _remote(self, frame: HanFrame, parsed: zcl.Zcl) -> None:
        data = bytes(parsed.args["data"])
        try:
            if zcl.tunnel_kind(data) != zcl.TunnelKind.request:
                return
            req, _ = zcl.RemoteRequest.deserialize(data)
        except ValueError as exc:
            log.info("%s: malformed tunnelled request: %s", self.name, exc)
            return
        role = req.role.name
        inner = b""
        try:
            inner = self._remote_checked(req, role)
            status, reason, requirement = zcl.Status.SUCCESS, "", ""
        except Outcome as exc:
            status, reason, requirement = exc.status, exc.reason, exc.requirement
        resp = zcl.RemoteResponse(kind=zcl.TunnelKind.response, request_id=req.request_id, status=status,
                                  reason=reason[:250], requirement=requirement, zcl=inner)
        self.radio.reply(frame, zcl.command(zcl.Tunneling, "transfer_data", tsn=parsed.tsn, to_client=True, tunnel_id=0,
                                            data=resp.serialize()))
        self.publish()

    def _remote_checked(self, req: zcl.RemoteRequest, role: str) -> bytes:
        if not zcl.verify(req, zcl.role_key(self.lab_name, role)):
            self.record("remote_refused", AlertCode.AUTHENTICATION_FAILURE, role=role,
                        reason="signature check failed")
            self.alert(AlertCode.AUTHENTICATION_FAILURE, role=role, request_id=int(req.request_id))
            raise Outcome("the command's signature does not verify: not carried out", "SEC-1",
                          zcl.Status.NOT_AUTHORIZED)
        if str(req.target) != self.cfg.id:
            raise Outcome(f"command addressed to {req.target}, not to this meter ({self.cfg.id})", "SUP-10")
        if str(req.premises) != self.s.premises_id and not self.quirks.ignores_premises:
            self.record("remote_refused", AlertCode.FAILED_AUTHORISATION, role=role, reason="premises mismatch",
                        premises=str(req.premises))
            self.alert(AlertCode.FAILED_AUTHORISATION, role=role, premises=str(req.premises))
            raise Outcome(f"command for premises {req.premises} but this meter serves {self.s.premises_id}",
                          "SUP-10", zcl.Status.NOT_AUTHORIZED)
        if int(req.request_id) in self.requests_seen:
            self.record("remote_refused", AlertCode.UNAUTHORISED_ACCESS, role=role, reason="duplicate request id")
            self.alert(AlertCode.UNAUTHORISED_ACCESS, role=role, request_id=int(req.request_id))
            raise Outcome(f"request {req.request_id} was already carried out: a replay is refused", "SEC-1",
                          zcl.Status.NOT_AUTHORIZED)
        self.requests_seen.add(int(req.request_id))
        try:
            cluster = zcl.cluster_by_id(int(req.cluster))
            cmd = zcl.parse(cluster, bytes(req.zcl))
        except ValueError as exc:
            raise Outcome(f"inner command not understood: {exc}") from None
        allowed = AUTHORITY.get((cluster.__name__, cmd.name), set())
        if role not in allowed:
            self.record("remote_refused", AlertCode.NO_AUTHORITY, role=role, command=f"{cluster.__name__}.{cmd.name}")
            self.alert(AlertCode.NO_AUTHORITY, role=role, command=f"{cluster.__name__}.{cmd.name}")
            raise Outcome(f"a {role} may not send {cluster.__name__}.{cmd.name} "
                          f"(allowed: {', '.join(sorted(allowed)) or 'nobody over the WAN'})", "SEC-4",
                          zcl.Status.NOT_AUTHORIZED)
        self.record("remote_command", role=role, command=f"{cluster.__name__}.{cmd.name}",
                    request_id=int(req.request_id))
        if cmd.name == "Read_Attributes":
            return zcl.read_attributes_response(cluster, cmd.requested(), self._attributes(cluster), tsn=cmd.tsn)
        if cluster is zcl.Metering and cmd.name == "change_supply":
            target = Supply(int(cmd.args["proposed_supply_status"]))
            t = self.apply(REMOTE_TRIGGERS[target], Party(role), why=f"remote {target} ({role})", role=role)
            if not t.accepted:
                raise Outcome(t.reason, t.requirement)
            return zcl.command(zcl.Metering, "supply_status_response", tsn=cmd.tsn, provider_id=0,
                               issuer_event_id=int(cmd.args["issuer_event_id"]),
                               implementation_date_time=zcl.to_utc(self.clock.now()),
                               supply_status=int(self.machine.state))
        if cluster is zcl.Prepayment and cmd.name == "credit_adjustment":
            value = int(cmd.args["credit_adjustment_value"]) / 100.0
            if int(cmd.args["credit_adjustment_type"]) == zcl.CreditAdjustmentType.Absolute:
                value -= self.credit
            self.credit += value
            self.total_credit_added += max(0.0, value)
            self.record("credit_adjusted", role=role, amount=value, credit=round(self.credit, 2))
            self._check_credit()
            self._lift_credit_disablement("credit added remotely")
            self._schedule_tick()
            return zcl.default_response(cmd.command_id, zcl.Status.SUCCESS, tsn=cmd.tsn)
        if cluster is zcl.Prepayment and cmd.name == "select_available_emergency_credit":
            ok, why = self._activate_emergency_credit(f"remote ({role})")
            if not ok:
                raise Outcome(why)
            return zcl.default_response(cmd.command_id, zcl.Status.SUCCESS, tsn=cmd.tsn)
        if cluster is zcl.LoadLimit and cmd.name == "Write_Attributes":
            self._write_load_limit(cmd.written(), role)
            return zcl.write_attributes_response(zcl.Status.SUCCESS, [], tsn=cmd.tsn)
        raise Outcome(f"{cluster.__name__}.{cmd.name} is not supported over the WAN")

    def _write_load_limit(self, written: dict[int, Any], who: str) -> None:
        if 0x0000 in written:
            self.load_limit_kw = (int(written[0x0000]) / 1000.0) or None
        if 0x0001 in written:
            self.load_limit_period = float(written[0x0001]) or self.load_limit_period
        self.record("load_limit_set", by=who, threshold_kw=self.load_limit_kw, period=self.load_limit_period)
        self._check_load_limit()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        v = self.physics.line_voltage()
        i = self.physics.load_current() if self.wired else 0.0
        p = self.physics.load_power() if self.wired else 0.0
        return {
            "summary": f"{self.supply}, contactor {'closed' if self.reported_closed else 'open'}, "
                       f"GBP {self.credit:.2f}" + ("" if self.powered else ", NO SUPPLY"),
            "supply": self.supply,
            "contactor": "closed" if self.reported_closed else "open",
            "disabled_by": sorted(self.disabled_by),
            "arm_cause": str(self.machine.arm_cause) if self.machine.arm_cause else None,
            "powered": self.powered,
            "premises_id": self.s.premises_id,
            "paired_ppmid": self.paired_ppmid,
            "metrology": {"voltage": round(v, 2), "current": round(i, 3), "power": round(p, 1),
                          "frequency": self.physics.frequency(), "energy_kwh": round(self.energy_wh / 1000, 6)},
            "prepayment": {"credit": round(self.credit, 4), "low_credit": self.low_credit,
                           "emergency_credit": {"state": self.ec_state, "remaining": round(self._ec_remaining(), 2),
                                                "limit": self.s.emergency_credit},
                           "total_credit_added": round(self.total_credit_added, 2), "tariff": self.s.tariff},
            "load_limit": {"threshold_kw": self.load_limit_kw, "period": self.load_limit_period,
                           "over_since": self._over_since,
                           "tripped": self.machine.arm_cause is ArmCause.LOAD_LIMIT},
            "power_quality": self.power_quality,
            "outage": {"since": self.outage_start} if self.outage_start is not None else None,
            "last_outage": self.last_outage,
            "display": self.display(),
            "log_size": len(self.log),
        }
