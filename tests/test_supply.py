"""The meter's supply state machine (rig/supply.py), with no broker and no clock.

Each row of the transition table, then the safety properties as invariants
over random trigger sequences (hypothesis), each shown to fail against the
fault profile that breaks it.
"""

from __future__ import annotations

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from rig.alerts import AlertCode
from rig.supply import ArmCause, Party, Rules, Supply, SupplyMachine, Trigger

SUPPLIER, DNO, CREDIT = Party.SUPPLIER, Party.DNO, Party.CREDIT


def machine(state: Supply = Supply.ENABLED, holders=(), cause=None, **rules) -> SupplyMachine:
    return SupplyMachine(Rules(**rules), state, frozenset(holders), cause)


# ----------------------------------------------------------------------------- the table, row by row
def test_a_remote_disable_opens_and_records_who_holds_it():
    m = machine()
    t = m.apply(Trigger.REMOTE_DISABLE, SUPPLIER)
    assert (t.accepted, t.after, m.holders) == (True, Supply.DISABLED, {SUPPLIER})
    t = m.apply(Trigger.REMOTE_DISABLE, DNO)   # already disabled: the second party's hold is recorded
    assert (t.accepted, t.changed, m.holders) == (True, False, {SUPPLIER, DNO})


def test_an_arm_lifts_only_the_arming_partys_disablement():
    m = machine(Supply.DISABLED, {SUPPLIER, DNO})
    t = m.apply(Trigger.REMOTE_ARM, DNO)
    assert t.accepted and (m.state, m.holders) == (Supply.DISABLED, {SUPPLIER}), "the supplier's hold stays"
    assert "supplier" in t.reason and t.requirement == "SUP-6"


def test_an_arm_from_a_party_that_holds_no_disablement_is_refused_and_changes_nothing():
    m = machine(Supply.DISABLED, {SUPPLIER})
    t = m.apply(Trigger.REMOTE_ARM, DNO)
    assert (t.accepted, t.requirement) == (False, "SUP-6")
    assert (m.state, m.holders) == (Supply.DISABLED, {SUPPLIER})
    t = m.apply(Trigger.REMOTE_ENABLE, DNO)
    assert not t.accepted and m.holders == {SUPPLIER}


def test_the_holder_arms_alone_and_the_meter_raises_supply_armed():
    m = machine(Supply.DISABLED, {SUPPLIER})
    t = m.apply(Trigger.REMOTE_ARM, SUPPLIER)
    assert (t.after, t.arm_cause, t.alert, m.holders) == (Supply.ARMED, ArmCause.REMOTE, AlertCode.SUPPLY_ARMED,
                                                          frozenset())


def test_arming_an_enabled_supply_is_refused():
    t = machine().apply(Trigger.REMOTE_ARM, SUPPLIER)
    assert (t.accepted, t.after, t.requirement) == (False, Supply.ENABLED, "SUP-1")


@pytest.mark.parametrize("party", [SUPPLIER, DNO])
def test_a_remote_enable_never_closes_an_armed_supply(party):
    m = machine(Supply.ARMED, cause=ArmCause.REMOTE)
    t = m.apply(Trigger.REMOTE_ENABLE, party)
    assert (t.accepted, m.state, t.requirement) == (False, Supply.ARMED, "SUP-2")


def test_a_remote_enable_of_a_disabled_supply_arms_at_most_by_default():
    m = machine(Supply.DISABLED, {SUPPLIER})
    t = m.apply(Trigger.REMOTE_ENABLE, SUPPLIER)
    assert (t.accepted, t.after, t.closes) == (True, Supply.ARMED, False)


def test_the_remote_enable_declarations():
    refused = machine(Supply.DISABLED, {SUPPLIER}, remote_enable="refused")
    assert not refused.apply(Trigger.REMOTE_ENABLE, SUPPLIER).accepted and refused.state is Supply.DISABLED
    closes = machine(Supply.DISABLED, {SUPPLIER}, remote_enable="closes")
    assert closes.apply(Trigger.REMOTE_ENABLE, SUPPLIER).closes
    other = machine(Supply.DISABLED, {SUPPLIER, DNO}, remote_enable="closes")
    t = other.apply(Trigger.REMOTE_ENABLE, SUPPLIER)
    assert other.state is Supply.DISABLED and other.holders == {DNO}, "even a closing meter keeps SUP-6"


def test_a_local_action_enables_only_an_armed_supply():
    armed = machine(Supply.ARMED, cause=ArmCause.REMOTE)
    assert armed.apply(Trigger.LOCAL_ENABLE).closes
    disabled = machine(Supply.DISABLED, {SUPPLIER})
    t = disabled.apply(Trigger.LOCAL_ENABLE)
    assert (t.accepted, disabled.state, t.requirement) == (False, Supply.DISABLED, "P1")


def test_credit_runs_out_then_a_top_up_or_emergency_credit_arms_never_enables():
    m = machine()
    assert m.apply(Trigger.CREDIT_EXHAUSTED).after is Supply.DISABLED and m.holders == {CREDIT}
    t = m.apply(Trigger.CREDIT_RESTORED, cause=ArmCause.EMERGENCY_CREDIT)
    assert (t.after, t.arm_cause, t.alert) == (Supply.ARMED, ArmCause.EMERGENCY_CREDIT,
                                               AlertCode.EMERGENCY_CREDIT_ARMED)


def test_credit_restored_leaves_another_partys_disablement():
    m = machine(Supply.DISABLED, {SUPPLIER, CREDIT})
    t = m.apply(Trigger.CREDIT_RESTORED, cause=ArmCause.CREDIT)
    assert (t.after, m.holders) == (Supply.DISABLED, {SUPPLIER})


def test_the_load_limit_restoration_closes_only_what_the_load_limit_armed():
    m = machine()
    assert m.apply(Trigger.LOAD_LIMIT_TRIP).after is Supply.ARMED and m.arm_cause is ArmCause.LOAD_LIMIT
    assert m.apply(Trigger.LOAD_LIMIT_RESTORE).closes
    m = machine()
    m.apply(Trigger.LOAD_LIMIT_TRIP)
    m.apply(Trigger.REMOTE_DISABLE, SUPPLIER)
    m.apply(Trigger.REMOTE_ARM, SUPPLIER)      # armed again, but by the supplier now
    t = m.apply(Trigger.LOAD_LIMIT_RESTORE)
    assert (t.accepted, m.state) == (False, Supply.ARMED)


@pytest.mark.parametrize("state", list(Supply))
def test_mains_return_keeps_the_state(state):
    m = machine(state, {SUPPLIER} if state is Supply.DISABLED else (), ArmCause.REMOTE if state is Supply.ARMED else None)
    assert m.apply(Trigger.MAINS_RETURN).after is state


def test_a_han_command_never_switches():
    m = machine(Supply.ARMED, cause=ArmCause.REMOTE)
    t = m.apply(Trigger.HAN_COMMAND, proposed=Supply.ENABLED)
    assert (t.accepted, m.state, t.requirement) == (False, Supply.ARMED, "HAN-6")


def test_faults_are_rules_read_once():
    rules = Rules.for_meter("arms", ["closes_on_remote_enable_when_armed", "no_restore_alert", "skips_arm"])
    assert rules.remote_enable_closes_armed == {SUPPLIER, DNO} and rules.local_enable_skips_arm
    assert Rules.for_meter("arms", ["dno_enable_closes_armed"]).remote_enable_closes_armed == {DNO}
    assert Rules.for_meter("refused").remote_enable == "refused"


# ----------------------------------------------------------------------------- safety properties as invariants
STEP = st.one_of(
    st.tuples(st.sampled_from([Trigger.REMOTE_DISABLE, Trigger.REMOTE_ARM, Trigger.REMOTE_ENABLE]),
              st.sampled_from([SUPPLIER, DNO])),
    st.tuples(st.sampled_from([Trigger.LOCAL_ENABLE, Trigger.CREDIT_EXHAUSTED, Trigger.LOAD_LIMIT_TRIP,
                               Trigger.LOAD_LIMIT_RESTORE, Trigger.MAINS_RETURN, Trigger.HAN_COMMAND]), st.none()),
    st.tuples(st.just(Trigger.CREDIT_RESTORED), st.sampled_from([ArmCause.CREDIT, ArmCause.EMERGENCY_CREDIT])),
)


def violations(rules: Rules, steps) -> list[str]:
    """The safety properties a run of ``steps`` breaks (empty: none)."""
    m = SupplyMachine(rules)
    found = []
    load_limit_armed = False
    for trigger, arg in steps:
        party = arg if isinstance(arg, Party) else None
        cause = arg if isinstance(arg, ArmCause) else None
        before_holders, before_cause = m.holders, m.arm_cause
        t = m.apply(trigger, party, cause=cause, proposed=Supply.ENABLED)
        if not t.accepted and (t.after, m.holders) != (t.before, before_holders):
            found.append("a refused trigger changed something")
        if t.before is Supply.DISABLED and t.after is Supply.ENABLED:
            found.append("P1: disabled -> enabled without armed")
        if t.closes and trigger not in (Trigger.LOCAL_ENABLE, Trigger.LOAD_LIMIT_RESTORE):
            found.append(f"P2/P3: closed on {trigger}")
        if t.closes and trigger is Trigger.LOAD_LIMIT_RESTORE and not (
                t.before is Supply.ARMED and before_cause is ArmCause.LOAD_LIMIT and load_limit_armed):
            found.append("SUP-9: load-limit restoration closed a supply armed or disabled by another cause")
        lost = {p for p in before_holders - m.holders if p is not party and p is not Party.CREDIT}
        if t.accepted and lost and trigger is not Trigger.LOCAL_ENABLE:
            found.append(f"SUP-6: {party} lifted {sorted(map(str, lost))}")
        if trigger is Trigger.MAINS_RETURN and t.changed:
            found.append("P5: mains return changed the state")
        load_limit_armed = m.state is Supply.ARMED and m.arm_cause is ArmCause.LOAD_LIMIT
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=25))
def test_the_healthy_rules_keep_every_safety_property(steps):
    assert violations(Rules(), steps) == []


@pytest.mark.parametrize("fault", sorted(Rules.FAULTS))
def test_every_supply_fault_breaks_a_property_the_invariants_check(fault):
    """The invariants above can fail: for each fault profile of the supply
    logic, hypothesis finds a sequence that breaks one."""
    rules = Rules.for_meter("arms", [fault])
    example = find(st.lists(STEP, max_size=25), lambda steps: bool(violations(rules, steps)),
                   settings=settings(max_examples=3000, database=None, deadline=None))
    assert violations(rules, example), fault
