"""The electricity meter's supply logic as a pure state machine.

No broker, no clock, no radio: a :class:`SupplyMachine` takes one
:class:`Trigger` at a time and returns the :class:`Transition` it made (or
refused, with the reason and the requirement that refuses it).  The
simulated meter (:mod:`rig.sim.esme`) wires it to the HAN, the bus and the
physics; its tests (tests/test_supply.py) walk the table without either.

States are the ZCL ``SupplyStatus`` values (SE 1.x Metering cluster)::

    Supply.DISABLED = 0   contactor open
    Supply.ARMED    = 1   contactor open; a local action may close it
    Supply.ENABLED  = 2   contactor closed

Who holds a disablement (:class:`Party`: ``supplier``, ``dno``, ``credit``)
is kept beside the state: a party's disablement is lifted only by that party
(SUP-6: "an energy supplier that had disabled a meter due to non-payment
would not wish the meter to be enabled by a DNO", seed 002:1903-1905).  A
party's arm (or remote enable) lifts its own disablement and arms the supply
only when nobody else holds one; from a party that holds none it is refused,
and a refused trigger changes nothing.  Why the supply is armed
(:class:`ArmCause`) decides whether the load-limit restoration may close it.

The transition table (:data:`TABLE`), one row per (state, trigger)::

    any      remote_disable(p)   -> disabled, p holds              (SUP-1)
    enabled  remote_arm          refused: nothing to arm           (SUP-1)
    disabled remote_arm(p)       p's disablement lifted; -> armed if nobody else holds one;
                                 refused (no change) if p held none  (SUP-1, SUP-6)
    armed    remote_arm          stays armed
    armed    remote_enable       refused: a person must be present (SUP-2, P2, P3)
    disabled remote_enable(p)    arms at most (``remote_enable: arms``, the seed's rule),
                                 or refused, or (a declared deviation) closes
    armed    local_enable        -> enabled                          (SUP-2, P2)
    disabled local_enable        refused: not armed                  (P1)
    any      credit_exhausted    -> disabled, credit holds
    any      credit_restored     credit lets go; a disabled supply nobody else
                                 holds -> armed (never enabled)      (SUP-3, SUP-8)
    enabled  load_limit_trip     -> armed, cause load limit          (SUP-9)
    armed    load_limit_restore  -> enabled only if still armed by the load limit
    any      mains_return        no change                           (P5)
    any      han_command         refused: HAN devices read only      (HAN-6, P3)

Fault profiles (rig/faults.py) that break the logic are :class:`Rules`
fields, read once when the meter starts (:meth:`Rules.for_meter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from typing import Any, ClassVar, Literal

from .alerts import AlertCode


class Supply(IntEnum):
    """The supply state, valued as ZCL ``SupplyStatus``."""

    DISABLED = 0
    ARMED = 1
    ENABLED = 2

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | int | Supply") -> "Supply":
        """``"armed"``, ``1`` or ``Supply.ARMED``."""
        if isinstance(value, str):
            return cls[value.upper()]
        return cls(int(value))


class Party(str, Enum):
    """Who may hold a disablement."""

    SUPPLIER = "supplier"
    DNO = "dno"
    CREDIT = "credit"      # the meter itself, when prepayment credit runs out

    def __str__(self) -> str:
        return self.value


#: the remote parties (roles of a WAN command)
REMOTE_PARTIES = (Party.SUPPLIER, Party.DNO)


class ArmCause(str, Enum):
    REMOTE = "remote"
    CREDIT = "credit"
    EMERGENCY_CREDIT = "emergency_credit"
    LOAD_LIMIT = "load_limit"

    def __str__(self) -> str:
        return self.value


class Trigger(str, Enum):
    REMOTE_DISABLE = "remote_disable"
    REMOTE_ARM = "remote_arm"
    REMOTE_ENABLE = "remote_enable"
    LOCAL_ENABLE = "local_enable"
    CREDIT_EXHAUSTED = "credit_exhausted"
    CREDIT_RESTORED = "credit_restored"
    LOAD_LIMIT_TRIP = "load_limit_trip"
    LOAD_LIMIT_RESTORE = "load_limit_restore"
    MAINS_RETURN = "mains_return"
    HAN_COMMAND = "han_command"

    def __str__(self) -> str:
        return self.value


RemoteEnablePolicy = Literal["arms", "refused", "closes"]


@dataclass(frozen=True)
class Rules:
    """How a meter applies the table.  The defaults are the requirements;
    each other value is a way firmware goes wrong (a fault profile) or, for
    ``remote_enable``, what a lab declares its meters do."""

    #: remote enable of a disabled supply: arm at most (SUP-1, seed 002:2438-2442), refuse, or close (deviation)
    remote_enable: RemoteEnablePolicy = "arms"
    #: parties whose remote enable closes an ARMED supply (healthy: nobody)
    remote_enable_closes_armed: frozenset[Party] = frozenset()
    #: a local action enables a disabled supply that was never armed
    local_enable_skips_arm: bool = False
    #: parties whose arm or enable lifts every party's disablement, not only their own
    lifts_all: frozenset[Party] = frozenset()
    #: credit restored (top-up, emergency credit) closes a credit-disabled supply instead of arming it
    credit_restore_closes: bool = False
    #: mains return closes the supply whatever it was
    enabled_after_mains_return: bool = False
    #: the load-limit restoration closes the supply whatever happened since the trip
    load_limit_restore_unchecked: bool = False
    #: a HAN device's (CAD's) command changes the supply
    han_commands_switch: bool = False

    #: fault profile -> the rule it changes
    FAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "closes_on_remote_enable_when_armed": {"remote_enable_closes_armed": frozenset(REMOTE_PARTIES)},
        "closes_on_remote_enable_when_disabled": {"remote_enable": "closes"},
        "dno_enable_closes_armed": {"remote_enable_closes_armed": frozenset({Party.DNO})},
        "skips_arm": {"local_enable_skips_arm": True},
        "dno_overridden_by_supplier": {"lifts_all": frozenset({Party.SUPPLIER})},
        "supplier_overridden_by_dno": {"lifts_all": frozenset({Party.DNO})},
        "credit_closes_supply": {"credit_restore_closes": True},
        "reenables_after_mains_return": {"enabled_after_mains_return": True},
        "load_limit_restores_regardless": {"load_limit_restore_unchecked": True},
        "accepts_cad_command": {"han_commands_switch": True},
    }

    @classmethod
    def for_meter(cls, remote_enable: RemoteEnablePolicy = "arms", faults: Iterable[str] = ()) -> "Rules":
        """The rules of a meter with the lab's ``remote_enable`` declaration and these fault profiles
        (profiles that are not about the supply logic are ignored here)."""
        rules = cls(remote_enable=remote_enable)
        for fault in faults:
            change = cls.FAULTS.get(fault)
            if change:
                merged = {k: (getattr(rules, k) | v if isinstance(v, frozenset) else v) for k, v in change.items()}
                rules = replace(rules, **merged)
        return rules


@dataclass(frozen=True)
class Transition:
    """One trigger applied: what the meter did, or why it refused."""

    trigger: Trigger
    before: Supply
    after: Supply
    accepted: bool
    reason: str = ""
    requirement: str = ""
    party: Party | None = None
    holders: frozenset[Party] = frozenset()
    arm_cause: ArmCause | None = None
    alert: AlertCode | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def closes(self) -> bool:
        """The contactor closes: the transition ends in ENABLED from elsewhere."""
        return self.after is Supply.ENABLED and self.before is not Supply.ENABLED


class SupplyRefused(Exception):
    """Raised inside a rule: the trigger is refused and nothing changes."""

    def __init__(self, reason: str, requirement: str = ""):
        super().__init__(reason)
        self.reason, self.requirement = reason, requirement


@dataclass
class SupplyMachine:
    """The supply state, its holders and its arm cause, and the table that moves them.

    >>> m = SupplyMachine()
    >>> m.apply(Trigger.REMOTE_DISABLE, Party.SUPPLIER).after
    <Supply.DISABLED: 0>
    >>> m.apply(Trigger.REMOTE_ENABLE, Party.SUPPLIER).after   # arms at most
    <Supply.ARMED: 1>
    >>> m.apply(Trigger.LOCAL_ENABLE).after
    <Supply.ENABLED: 2>
    """

    rules: Rules = field(default_factory=Rules)
    state: Supply = Supply.ENABLED
    holders: frozenset[Party] = frozenset()
    arm_cause: ArmCause | None = None

    def apply(self, trigger: Trigger, party: Party | None = None, *,
              cause: ArmCause | None = None, proposed: Supply | None = None) -> Transition:
        """Apply one trigger; refused triggers change nothing."""
        before, holders = self.state, self.holders
        rule = TABLE.get((self.state, trigger), _no_change)
        try:
            after, new_holders, arm_cause, alert, reason, requirement = rule(self, party, cause, proposed)
        except SupplyRefused as refused:
            return Transition(trigger, before, before, False, refused.reason, refused.requirement, party, holders,
                              self.arm_cause)
        self.state, self.holders = after, new_holders
        self.arm_cause = arm_cause if after is Supply.ARMED else None
        return Transition(trigger, before, after, True, reason, requirement, party, new_holders, self.arm_cause,
                          alert)

    # ------------------------------------------------------------------ helpers for rules
    def _lift(self, party: Party | None) -> frozenset[Party]:
        """The holders left once ``party`` lets go (all of them with the lifts_all fault)."""
        if party in self.rules.lifts_all:
            return self.holders - set(REMOTE_PARTIES) - {party}
        return self.holders - {party} if party is not None else self.holders


Outcome = tuple[Supply, frozenset[Party], "ArmCause | None", "AlertCode | None", str, str]
Rule = Callable[[SupplyMachine, "Party | None", "ArmCause | None", "Supply | None"], Outcome]


def _held(others: frozenset[Party]) -> str:
    return ", ".join(sorted(str(p) for p in others))


# ----------------------------------------------------------------------------- rules
def _disable(m: SupplyMachine, party, _cause, _proposed) -> Outcome:
    if party is None:
        raise SupplyRefused("a disablement needs the party that holds it", "SUP-6")
    note = "already disabled: the party's disablement is recorded" if m.state is Supply.DISABLED else ""
    return Supply.DISABLED, m.holders | {party}, None, None, note, "SUP-1"


def _refuse_arm_enabled(_m, _party, _cause, _proposed) -> Outcome:
    raise SupplyRefused("supply is enabled: there is nothing to arm (disable it first)", "SUP-1")


def _lift_own(m: SupplyMachine, party: Party | None) -> frozenset[Party]:
    """The holders once ``party`` lifts its own disablement; refused (no change) when
    ``party`` holds none of it, since lifting another's is not a party's to do."""
    if party not in m.holders and party not in m.rules.lifts_all:
        raise SupplyRefused(f"supply is disabled by {_held(m.holders) or 'nobody'}, not by the {party}: "
                            f"a {party} cannot lift another party's disablement (SUP-6)", "SUP-6")
    return m._lift(party)


def _arm(m: SupplyMachine, party, _cause, _proposed) -> Outcome:
    left = _lift_own(m, party)
    if left:
        return (Supply.DISABLED, left, None, None,
                f"the {party}'s disablement is lifted; supply stays disabled: still disabled by {_held(left)}",
                "SUP-6")
    return Supply.ARMED, left, ArmCause.REMOTE, AlertCode.SUPPLY_ARMED, "armed", "SUP-1"


def _stay(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    return m.state, m.holders, m.arm_cause, None, f"supply already {m.state}", ""


def _remote_enable_armed(m: SupplyMachine, party, _cause, _proposed) -> Outcome:
    if party in m.rules.remote_enable_closes_armed:
        return Supply.ENABLED, frozenset(), None, None, "closed on a remote enable", "SUP-2"
    raise SupplyRefused("supply is armed: only a local action (meter button or paired PPMID) may enable it "
                        "(a person must be present)", "SUP-2")


def _remote_enable_disabled(m: SupplyMachine, party, cause, proposed) -> Outcome:
    policy = m.rules.remote_enable
    if policy == "refused":
        raise SupplyRefused("this meter refuses a remote enable of a disabled supply (remote_enable: refused)",
                            "SUP-1")
    if policy == "closes":
        left = _lift_own(m, party)
        if left:
            return (Supply.DISABLED, left, None, None,
                    f"the {party}'s disablement is lifted; supply stays disabled: still disabled by {_held(left)}",
                    "SUP-6")
        return Supply.ENABLED, left, None, None, "closed on a remote enable (remote_enable: closes)", "SUP-1"
    return _arm(m, party, cause, proposed)


def _local_enable_armed(_m, _party, _cause, _proposed) -> Outcome:
    return Supply.ENABLED, frozenset(), None, None, "supply enabled", "SUP-2"


def _local_enable_disabled(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    if m.rules.local_enable_skips_arm:
        return Supply.ENABLED, frozenset(), None, None, "supply enabled", "SUP-2"
    raise SupplyRefused(f"supply is disabled by {_held(m.holders) or 'a party'}, not armed: "
                        "a local action enables only an armed supply", "P1")


def _local_enable_enabled(_m, _party, _cause, _proposed) -> Outcome:
    raise SupplyRefused("supply is already enabled", "")


def _credit_exhausted(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    return Supply.DISABLED, m.holders | {Party.CREDIT}, None, None, "credit exhausted", "SUP-3"


def _credit_restored(m: SupplyMachine, _party, cause, _proposed) -> Outcome:
    left = m.holders - {Party.CREDIT}
    if m.state is not Supply.DISABLED or Party.CREDIT not in m.holders or left:
        return m.state, left, m.arm_cause, None, "credit restored", "SUP-3"
    cause = cause or ArmCause.CREDIT
    if m.rules.credit_restore_closes:
        return Supply.ENABLED, left, None, None, "credit restored", "SUP-3"
    alert = AlertCode.EMERGENCY_CREDIT_ARMED if cause is ArmCause.EMERGENCY_CREDIT else AlertCode.SUPPLY_ARMED
    return Supply.ARMED, left, cause, alert, "credit restored: armed, a person must enable it", "SUP-8"


def _load_limit_trip(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    return Supply.ARMED, m.holders, ArmCause.LOAD_LIMIT, AlertCode.LOAD_LIMIT_ARMED, "load limit exceeded", "SUP-9"


def _load_limit_restore(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    if m.rules.load_limit_restore_unchecked or (m.state is Supply.ARMED and m.arm_cause is ArmCause.LOAD_LIMIT
                                                and not m.holders):
        return Supply.ENABLED, frozenset(), None, AlertCode.LOAD_LIMIT_RESTORED, "load limit period over", "SUP-9"
    raise SupplyRefused(f"supply is {m.state}"
                        f"{' by ' + _held(m.holders) if m.holders else ''}"
                        f"{', armed by ' + str(m.arm_cause) if m.arm_cause else ''} since the load limit tripped: "
                        "the restoration does not close it", "SUP-9")


def _mains_return(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    if m.rules.enabled_after_mains_return:
        return Supply.ENABLED, frozenset(), None, None, "mains returned", "P5"
    return m.state, m.holders, m.arm_cause, None, "mains returned: state kept", "P5"


def _han_command(m: SupplyMachine, _party, _cause, proposed) -> Outcome:
    if m.rules.han_commands_switch and proposed is not None:
        return proposed, frozenset() if proposed is Supply.ENABLED else m.holders, \
            ArmCause.REMOTE if proposed is Supply.ARMED else None, None, "HAN command carried out", "HAN-6"
    raise SupplyRefused("HAN devices may read only: a consumer access device never switches supply", "HAN-6")


def _no_change(m: SupplyMachine, _party, _cause, _proposed) -> Outcome:
    raise SupplyRefused(f"nothing to do in state {m.state}", "")


S, T = Supply, Trigger
#: (state, trigger) -> rule; a pair not listed is refused with no change
TABLE: dict[tuple[Supply, Trigger], Rule] = {
    **{(s, T.REMOTE_DISABLE): _disable for s in S},
    (S.ENABLED, T.REMOTE_ARM): _refuse_arm_enabled,
    (S.DISABLED, T.REMOTE_ARM): _arm,
    (S.ARMED, T.REMOTE_ARM): _stay,
    (S.ENABLED, T.REMOTE_ENABLE): _stay,
    (S.ARMED, T.REMOTE_ENABLE): _remote_enable_armed,
    (S.DISABLED, T.REMOTE_ENABLE): _remote_enable_disabled,
    (S.ARMED, T.LOCAL_ENABLE): _local_enable_armed,
    (S.DISABLED, T.LOCAL_ENABLE): _local_enable_disabled,
    (S.ENABLED, T.LOCAL_ENABLE): _local_enable_enabled,
    **{(s, T.CREDIT_EXHAUSTED): _credit_exhausted for s in S},
    **{(s, T.CREDIT_RESTORED): _credit_restored for s in S},
    (S.ENABLED, T.LOAD_LIMIT_TRIP): _load_limit_trip,
    **{(s, T.LOAD_LIMIT_RESTORE): _load_limit_restore for s in S},
    **{(s, T.MAINS_RETURN): _mains_return for s in S},
    **{(s, T.HAN_COMMAND): _han_command for s in S},
}
del S, T
