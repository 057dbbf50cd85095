"""Supply-enablement safety (SUP-1..SUP-10 and the six safety properties).

The question the safety case asks (SUP-4): may a PPMID enable supply over the
HAN?  These checks gather the evidence: a disabled supply closes only after
it was armed and only on a local action (the meter's own press-and-hold, or
the paired PPMID), promptly or not at all, never on a remote or CAD command,
never on a replayed, stale or foreign PPMID command; the state survives
mains loss (the outage suite); and the load side is always checked by the
power analyser, never only by the meter's own report (property 6).

Repeat counts come from lab.yaml ``suites.safety.trials``: a safety run sets
hundreds.  Every check names the fault profiles that break its property
(``detects``); ``rig selftest`` shows each fails against them.
"""

from __future__ import annotations

import pytest

from rig.bus import CommandError

#: amps the load bank draws during a check: the analyser sees supply by it
LOAD_A = 5.0
#: above this the load side counts as live, below it as dead (noise floor of a real analyser is ~mA)
LIVE_A = 0.5


# ----------------------------------------------------------------------------- helpers
def load_side_live(analyser) -> bool:
    return analyser.read().current > LIVE_A


def expect_dead_for(analyser, window: float, what: str) -> None:
    """Property 6: for ``window`` lab seconds the analyser must see no load
    current; fail at the first live sample."""
    try:
        reading = analyser.wait_for(lambda r: r.current > LIVE_A, window)
    except TimeoutError:
        return
    pytest.fail(f"{what}: the load side went live ({reading.current:.2f} A at lab {reading.ts:.1f})")


def disable_and_arm(dcc, esme, analyser, step) -> None:
    """Supplier disables (the analyser confirms the load side dead), then arms."""
    with step("remote disable"):
        dcc.disable()
        esme.wait_supply("disabled")
        analyser.wait_for(lambda r: r.current < LIVE_A, 30, "load side dead after disable")
    with step("remote arm"):
        dcc.arm()
        esme.wait_supply("armed")


def enable_latency(clock, analyser, bound: float, action, hold: float) -> float:
    """Run a local ``action`` (press, then hold ``hold`` lab s) and return the
    lab seconds from the end of the hold (the moment the device says the
    button was released) to the load side going live, as the analyser sees it."""
    t_start = clock.now()
    out = action() or {}
    released = out.get("released") or out.get("pressed") or t_start + hold
    reading = analyser.wait_for(lambda r: r.current > LIVE_A, bound + hold + 10,
                                "load side live after the local action")
    return reading.ts - released


def hold_time(esme) -> float:
    return esme.cfg.settings.hold_time + 0.5


def remote_policy(bench) -> str:
    return bench.cfg.devices[bench.esme.name].settings.remote_enable


# ----------------------------------------------------------------------------- SUP-1, SUP-2, SUP-7
@pytest.mark.requirement("SUP-1", "SUP-2", "SUP-7")
@pytest.mark.safety(1, 2, 6)
@pytest.mark.detects("reports_closed_when_open")
def test_disable_arm_then_the_meter_button_enables(esme, dcc, load, analyser, clock, measure, step, settings):
    """Disable, arm, then the meter's own press-and-hold: the analyser sees the
    load side dead while disabled and armed, live promptly after the hold."""
    load.draw(amps=LOAD_A)
    analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load drawing before the trial")
    for trial in range(settings.safety.trials):
        disable_and_arm(dcc, esme, analyser, step)
        expect_dead_for(analyser, 5, "armed, before any local action")
        with step("meter press and hold", trial=trial):
            latency = enable_latency(clock, analyser, settings.safety.enable_latency_bound,
                                     esme.local_enable, hold_time(esme))
        measure("safety.enable_latency", latency, "s", low=0, high=settings.safety.enable_latency_bound,
                requirement="SUP-2", path="meter button", trial=trial)
        esme.wait_supply("enabled")
        measure("safety.trial", True, equals=True, requirement="SUP-2", path="meter button", trial=trial)


@pytest.mark.requirement("SUP-7")
@pytest.mark.safety(2)
@pytest.mark.detects("skips_arm")
def test_a_short_hold_or_a_hold_without_the_prompt_does_nothing(esme, dcc, load, analyser, step, measure):
    """SUP-7: press and hold are distinct: a hold shorter than hold_time, or a
    hold without the press that shows the prompt, leaves the supply armed;
    and on a disabled (not armed) supply even the full sequence does nothing."""
    load.draw(amps=LOAD_A)
    disable_and_arm(dcc, esme, analyser, step)
    with step("hold without the prompt"):
        out = esme.hold("enable", hold_time(esme))
        assert esme.state["supply"] == "armed", out
    with step("press, then too short a hold"):
        esme.press("enable")
        esme.hold("enable", esme.cfg.settings.hold_time / 2)
        assert esme.state["supply"] == "armed"
    expect_dead_for(analyser, 5, "after holds that must not enable")
    with step("full sequence on a disabled, not armed, supply"):
        dcc.disable()
        esme.wait_supply("disabled")
        esme.local_enable()
        expect_dead_for(analyser, 5, "local action on a disabled supply (property 1)")
        measure("safety.trial", esme.state["supply"] == "disabled", equals=True, requirement="SUP-2",
                path="meter button on disabled")


@pytest.mark.requirement("SUP-2", "SUP-1")
@pytest.mark.safety(2, 3, 6)
@pytest.mark.detects("closes_on_remote_enable_when_armed")
def test_remote_enable_of_an_armed_supply_is_refused(bench, esme, dcc, load, analyser, step, measure, settings):
    """An armed supply never closes on a remote command: the head end's enable
    is refused (and logged), and the analyser sees no current."""
    load.draw(amps=LOAD_A)
    disable_and_arm(dcc, esme, analyser, step)
    for trial in range(settings.safety.trials):
        t0 = bench.clock.now()
        with step("remote enable while armed", trial=trial):
            try:
                dcc.enable()
                refused = False
            except CommandError as exc:
                refused = exc.code == "refused"
            expect_dead_for(analyser, 5, "remote enable of an armed supply")
        measure("safety.trial", refused and esme.state["supply"] == "armed", equals=True,
                requirement="SUP-2", path="remote enable while armed", trial=trial)
    logged = esme.event_log(since=t0, event="remote_enable_refused")
    measure("safety.refusals_logged", len(logged) > 0, equals=True, requirement="SUP-2")


@pytest.mark.requirement("SUP-1", "SUP-2")
def test_remote_enable_of_a_disabled_supply_follows_the_lab_policy(bench, esme, dcc, load, analyser, step, measure):
    """Where the lab's policy allows a remote enable (``remote_enable:
    when_not_armed``) it may close a disabled, not armed supply; with
    ``never`` it is refused.  Recorded so the safety case shows which policy
    the evidence was gathered under."""
    policy = remote_policy(bench)
    load.draw(amps=LOAD_A)
    with step("remote disable"):
        dcc.disable()
        esme.wait_supply("disabled")
    with step("remote enable of a disabled supply", policy=policy):
        try:
            dcc.enable()
            outcome = "enabled"
        except CommandError as exc:
            outcome = "refused" if exc.code == "refused" else exc.code
    if policy == "never":
        expect_dead_for(analyser, 5, "remote enable under policy never")
        measure("safety.trial", outcome == "refused", equals=True, requirement="SUP-2", policy=policy)
    else:
        esme.wait_supply("enabled")
        analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load live after a permitted remote enable")
        measure("safety.trial", outcome == "enabled", equals=True, requirement="SUP-1", policy=policy)


# ----------------------------------------------------------------------------- PPMID (SUP-3, SUP-4, property 4)
@pytest.mark.requirement("SUP-3", "SUP-4", "SUP-2")
@pytest.mark.safety(2, 4, 6)
@pytest.mark.detects("reports_closed_when_open")
def test_the_paired_ppmid_enables_an_armed_supply_promptly(esme, ppmid, dcc, load, analyser, clock, step, measure,
                                                           settings):
    """The paired PPMID's enable closes an armed supply within the bound,
    confirmed by the analyser; its display mirrors the meter's state (SUP-3)."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.trials):
        disable_and_arm(dcc, esme, analyser, step)
        ppmid.wait_state(lambda s: "armed" in str((s.get("display") or {}).get("supply", "")), 60,
                         "PPMID shows the supply armed")
        with step("PPMID enable", trial=trial):
            latency = enable_latency(clock, analyser, settings.safety.enable_latency_bound, ppmid.enable,
                                     hold_time(esme))
        measure("safety.enable_latency", latency, "s", low=0, high=settings.safety.enable_latency_bound,
                requirement="SUP-2", path="PPMID", trial=trial)
        esme.wait_supply("enabled")
        measure("safety.trial", True, equals=True, requirement="SUP-4", path="PPMID", trial=trial)


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(1, 4)
@pytest.mark.detects("skips_arm")
def test_a_ppmid_enable_does_nothing_unless_armed(esme, ppmid, dcc, load, analyser, step, measure):
    """Property 4, only while armed (and property 1): a PPMID enable on a
    disabled, not armed supply is refused."""
    load.draw(amps=LOAD_A)
    with step("remote disable"):
        dcc.disable()
        esme.wait_supply("disabled")
    with step("PPMID enable on a disabled supply"):
        out = ppmid.enable()
    expect_dead_for(analyser, 5, "PPMID enable of a disabled supply")
    measure("safety.trial", esme.state["supply"] == "disabled" and not out.get("accepted"), equals=True,
            requirement="SUP-2", path="PPMID on disabled")


@pytest.mark.requirement("SUP-4")
@pytest.mark.safety(4)
@pytest.mark.detects("accepts_unpaired_ppmid")
def test_an_unpaired_ppmid_cannot_enable(bench, esme, dcc, load, analyser, step, measure, settings):
    """Property 4, only the paired PPMID: another PPMID on the same HAN is refused."""
    paired = bench.cfg.devices[esme.name].settings.paired_ppmid
    others = [n for n, d in bench.cfg.devices.items() if d.kind == "ppmid" and n != paired]
    if not others:
        pytest.skip("the lab has no second PPMID to act as an unpaired one")
    stranger = bench.device(others[0])
    stranger.wait_online()
    load.draw(amps=LOAD_A)
    disable_and_arm(dcc, esme, analyser, step)
    for trial in range(settings.safety.trials):
        with step("unpaired PPMID enable", ppmid=others[0], trial=trial):
            out = stranger.enable()
        expect_dead_for(analyser, 3, f"enable from the unpaired PPMID {others[0]}")
        measure("safety.trial", esme.state["supply"] == "armed" and not out.get("accepted"), equals=True,
                requirement="SUP-4", path="unpaired PPMID", trial=trial)


@pytest.mark.requirement("SUP-4")
@pytest.mark.safety(4)
@pytest.mark.detects("accepts_replayed_ppmid")
def test_a_replayed_ppmid_enable_is_not_carried_out(bench, esme, ppmid, dcc, load, analyser, step, measure,
                                                    settings):
    """Property 4, only once: a PPMID enable frame recorded off the air and
    sent again later (a replay) must not close the supply."""
    load.draw(amps=LOAD_A)
    medium = bench.node("han", "medium")
    for trial in range(settings.safety.trials):
        disable_and_arm(dcc, esme, analyser, step)
        with step("genuine PPMID enable", trial=trial):
            assert ppmid.enable().get("accepted")
            analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load live after the genuine enable")
        disable_and_arm(dcc, esme, analyser, step)
        with step("replay of the recorded enable frame", trial=trial):
            bench.request(medium, "replay", {"src": ppmid.name, "dst": esme.name, "cluster": 0x0705,
                                             "command": 0x01})
            expect_dead_for(analyser, 10, "replayed PPMID enable")
        ok = esme.state["supply"] == "armed"
        measure("safety.replay", ok, equals=True, requirement="SUP-4", trial=trial)
        esme.local_enable()
        esme.wait_supply("enabled")


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(4)
@pytest.mark.detects("queues_presses", "accepts_stale_ppmid+queues_presses")
def test_a_press_made_while_the_han_is_down_is_never_carried_out_later(bench, esme, ppmid, dcc, load, analyser,
                                                                       attenuator, step, measure, settings):
    """Property 4, only while fresh: the consumer presses enable while the HAN
    link is down and walks away; when the link returns after the command's
    freshness window the supply must stay armed, and no enable from that press
    may reach the meter at all (a PPMID that keeps presses for later is at
    fault even when the meter refuses them as stale)."""
    ttl = bench.cfg.devices[esme.name].settings.ppmid_command_ttl
    top = attenuator.cfg.limits.attenuation_max or 95.0
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.link_trials):
        disable_and_arm(dcc, esme, analyser, step)
        with step("HAN link to the PPMID down", db=top, trial=trial):
            attenuator.set(top)
            ppmid.wait_state(lambda s: not _link_up_state(s), 120, "PPMID link down")
        with step("consumer presses enable, link down", trial=trial):
            out = ppmid.enable()
        with step("consumer walks away", lab_seconds=ttl + 10, trial=trial):
            bench.dwell(ttl + 10)
        with step("link restored", trial=trial):
            t_back = bench.clock.now()
            attenuator.set(attenuator.cfg.limits.attenuation_min or 0)
            ppmid.wait_state(_link_up_state, 120, "PPMID link up")
        expect_dead_for(analyser, 30, "a press made during the HAN outage, after the link returned")
        late = [e for e in esme.event_log(since=t_back, event="ppmid_enable") if e.get("source") == ppmid.name
                or e.get("source") == ppmid.cfg.id]
        measure("safety.stale_command", esme.state["supply"] == "armed", equals=True, requirement="SUP-4",
                delivered_at_press=bool(out.get("delivered")), ttl=ttl, trial=trial)
        measure("safety.late_ppmid_commands", len(late), "commands", equals=0, requirement="SUP-4", trial=trial)
        esme.local_enable()
        esme.wait_supply("enabled")


def _link_up_state(state: dict) -> bool:
    return any(isinstance(v, dict) and v.get("up") for v in (state.get("han") or {}).values())


@pytest.mark.requirement("SUP-4", "SUP-2", "HAN-3")
@pytest.mark.safety(2, 4)
@pytest.mark.detects("accepts_stale_ppmid+queues_presses")
def test_enable_at_the_edge_of_the_link_is_prompt_or_not_at_all(bench, esme, ppmid, dcc, load, analyser, attenuator,
                                                                clock, step, measure, settings):
    """Degraded RF: with the PPMID's path attenuated just past, at, and just
    inside the edge of its link (frames lost and retried), each enable either
    closes the supply within the bound or never; not later, when the link
    comes back and the consumer may have gone."""
    ttl = bench.cfg.devices[esme.name].settings.ppmid_command_ttl
    bound = settings.safety.enable_latency_bound
    edge = _link_edge(bench, ppmid, attenuator, step)
    top = attenuator.cfg.limits.attenuation_max or 95.0
    floor = attenuator.cfg.limits.attenuation_min or 0.0
    levels = [min(edge + 6.0, top), edge, max(edge - 2.0, floor)]
    load.draw(amps=LOAD_A)
    prompt = late = 0
    trials = settings.safety.link_trials
    for trial in range(trials):
        db = levels[trial % len(levels)]
        disable_and_arm(dcc, esme, analyser, step)
        attenuator.set(db)
        t_start = clock.now()
        with step("PPMID enable near the link edge", db=db, trial=trial):
            out = ppmid.enable() or {}
        t_action = out.get("pressed") or t_start + hold_time(esme)
        try:
            reading = analyser.wait_for(lambda r: r.current > LIVE_A, max(bound - (clock.now() - t_action), 0.1))
            prompt += 1
            measure("safety.enable_latency", reading.ts - t_action, "s", low=0, high=bound, requirement="SUP-2",
                    path="PPMID near link edge", db=db, trial=trial)
        except TimeoutError:
            # not promptly: then never, not even once the link is good again
            with step("link restored; watching for a late enable", trial=trial):
                attenuator.set(floor)
                ppmid.wait_state(_link_up_state, 120, "PPMID link back")
                try:
                    reading = analyser.wait_for(lambda r: r.current > LIVE_A, ttl + 20)
                    late += 1
                    measure("safety.late_enable", reading.ts - t_action, "s", high=bound, requirement="SUP-4",
                            db=db, trial=trial)
                except TimeoutError:
                    pass
        attenuator.set(floor)
        ppmid.wait_state(_link_up_state, 120, "PPMID link back")
        if esme.state.get("supply") != "enabled":
            esme.local_enable()
            esme.wait_supply("enabled")
    measure("safety.edge_enables_prompt", prompt, "trials", requirement="SUP-4", edge_db=edge, of=trials)
    measure("safety.edge_enables_late", late, "trials", equals=0, requirement="SUP-4", edge_db=edge, of=trials)


def _link_edge(bench, ppmid, attenuator, step) -> float:
    """The attenuation at which the PPMID's last band is about to go: the
    lowest setting where a single-attempt link test loses half its frames on
    every band the PPMID has (a dual-band PPMID keeps its link until both
    bands fail).  Coarse 4 dB steps, then 1 dB."""
    top = attenuator.cfg.limits.attenuation_max or 95.0
    floor = attenuator.cfg.limits.attenuation_min or 0.0
    bands = list(((ppmid.state or {}).get("han") or {}).keys()) or [None]

    def lossy(db: float) -> bool:
        attenuator.set(db)
        return all(bench.comms_hub.link_test(ppmid.name, band, frames=20)["per"] >= 0.5 for band in bands)

    with step("find the link edge", bands=bands):
        db = floor
        while db + 4.0 <= top and not lossy(db + 4.0):
            db += 4.0
        while db + 1.0 <= top and not lossy(db + 1.0):
            db += 1.0
        attenuator.set(floor)
        ppmid.wait_state(_link_up_state, 120, "PPMID link back")
    return db + 1.0


# ----------------------------------------------------------------------------- HAN-6, SUP-6, SUP-10
@pytest.mark.requirement("HAN-6", "SUP-2")
@pytest.mark.safety(3)
@pytest.mark.detects("accepts_cad_command")
def test_a_consumer_access_device_cannot_switch_supply(esme, dcc, load, analyser, step, measure):
    """HAN-6 and property 3: a CAD may read but never execute a meter function:
    its enable on an armed supply is refused and the contactor stays open."""
    load.draw(amps=LOAD_A)
    disable_and_arm(dcc, esme, analyser, step)
    with step("CAD reads"):
        dcc.read(role="cad")
    with step("CAD sends enable"):
        with pytest.raises(CommandError) as refusal:
            dcc.enable(role="cad")
    expect_dead_for(analyser, 5, "enable from a consumer access device")
    measure("safety.trial", refusal.value.code == "refused" and esme.state["supply"] == "armed", equals=True,
            requirement="HAN-6", path="CAD enable")


@pytest.mark.requirement("SUP-6")
@pytest.mark.safety(1)
@pytest.mark.detects("dno_overridden_by_supplier")
def test_one_party_cannot_lift_anothers_disablement(esme, dcc, load, analyser, step, measure):
    """SUP-6: supplier and network operator both disable; the supplier's arm
    and enable must not override the operator's disablement; the sequence is
    in the meter's log."""
    load.draw(amps=LOAD_A)
    t0 = esme.bench.clock.now()
    with step("network operator disables"):
        dcc.disable(role="dno")
        esme.wait_supply("disabled")
    with step("supplier disables too"):
        dcc.disable(role="supplier")
    with step("supplier arms and enables"):
        for op in (dcc.arm, dcc.enable):
            try:
                op(role="supplier")
            except CommandError:
                pass
    expect_dead_for(analyser, 5, "supplier lifting the network operator's disablement")
    still_disabled = esme.state["supply"] == "disabled" and "dno" in (esme.state.get("disabled_by") or [])
    measure("safety.trial", still_disabled, equals=True, requirement="SUP-6", path="supplier over dno")
    with step("network operator arms, meter enabled locally"):
        dcc.arm(role="dno")
        esme.wait_supply("armed")
        esme.local_enable()
        esme.wait_supply("enabled")
    log = [e["event"] for e in esme.event_log(since=t0)]
    measure("safety.sequence_recorded", "supply_disabled" in log and "supply_armed" in log, equals=True,
            requirement="SUP-6")


@pytest.mark.requirement("SUP-10", "SEC-1")
@pytest.mark.detects("ignores_premises")
def test_commands_for_another_premises_or_forged_are_refused(esme, dcc, analyser, step, measure):
    """SUP-10: a command addressed to another premises is refused (no final
    'failsafe' visit check exists any more); SEC-1: so is a forged one."""
    with step("disable addressed to another premises"):
        with pytest.raises(CommandError) as other:
            dcc.disable(premises="MPAN-9999999999999")
    measure("safety.trial", other.value.code == "refused" and esme.state["supply"] == "enabled", equals=True,
            requirement="SUP-10", path="other premises")
    with step("disable with a forged signature"):
        with pytest.raises(CommandError) as forged:
            dcc.disable(authentic=False)
    measure("safety.trial", forged.value.code == "refused" and esme.state["supply"] == "enabled", equals=True,
            requirement="SEC-1", path="forged")


# ----------------------------------------------------------------------------- prepayment (SUP-3, SUP-5, SUP-8)
@pytest.mark.requirement("SUP-5")
@pytest.mark.detects("utrn_reuse")
def test_a_utrn_is_accepted_once(esme, ppmid, dcc, step, measure):
    """SUP-5: a top-up code works once; the second use is rejected and the
    credit does not move."""
    code = dcc.issue_utrn(5.0)
    before = esme.state["prepayment"]["credit"]
    with step("UTRN entered on the PPMID"):
        first = ppmid.enter_utrn(code)
    with step("same UTRN entered on the meter"):
        second = esme.enter_utrn(code)
    credit = esme.wait_state(lambda s: s["prepayment"]["credit"] >= before + 4.99, 30, "credit added")
    measure("prepayment.first_use_accepted", bool(first.get("accepted")), equals=True, requirement="SUP-5")
    measure("prepayment.second_use_rejected", not second.get("accepted"), equals=True, requirement="SUP-5")
    measure("prepayment.credit_added", credit["prepayment"]["credit"] - before, "GBP", low=4.99, high=5.01,
            requirement="SUP-5")


@pytest.mark.requirement("SUP-3", "SUP-8", "SUP-2")
def test_emergency_credit_arms_and_a_local_action_enables(bench, esme, ppmid, dcc, load, analyser, step, measure):
    """Credit runs out: the meter disables; activating emergency credit at the
    PPMID arms it (0x8168) and still only a local action closes the supply."""
    load.draw(amps=LOAD_A)
    t0 = bench.clock.now()
    credit = esme.state["prepayment"]["credit"]
    with step("supplier adjusts credit to nothing"):
        dcc.add_credit(-credit)
        esme.wait_supply("disabled")
    expect_dead_for(analyser, 3, "credit exhausted")
    with step("emergency credit on the PPMID"):
        out = ppmid.emergency_credit()
        esme.wait_supply("armed")
        dcc.wait_alert("0x8168", since=t0)
    expect_dead_for(analyser, 3, "armed by emergency credit, before a local action")
    with step("PPMID enable"):
        ppmid.enable()
        analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load live after the PPMID enable")
    measure("safety.trial", bool(out.get("accepted")), equals=True, requirement="SUP-8", path="emergency credit")
    with step("supplier restores credit"):
        dcc.add_credit(credit + 5.0)
        esme.wait_state(lambda s: s["prepayment"]["credit"] > 0, 30, "credit restored")


@pytest.mark.requirement("SUP-9", "SUP-8")
def test_load_limit_interrupts_then_restores(bench, esme, dcc, load, analyser, step, measure):
    """SUP-9: above the load limit for its period the meter disables then arms
    (0x8F33) and re-enables after the restoration period (0x8F34)."""
    period = 30.0
    t0 = bench.clock.now()
    try:
        with step("supplier sets a 1 kW load limit", period=period):
            dcc.service_request(esme.name, "set_load_limit", threshold_kw=1.0, period=period)
        with step("load draws 2.3 kW"):
            load.draw(amps=10.0)
            esme.wait_supply("armed", 4 * period)
            tripped = dcc.wait_alert("0x8F33", since=t0)
        expect_dead_for(analyser, 2, "load limit tripped")
        measure("load_limit.trip_after", tripped["raised"] - t0, "s", low=period * 0.8, high=period * 1.5 + 5,
                requirement="SUP-9")
        with step("load reduced; restoration period"):
            load.draw(amps=1.0)
            esme.wait_supply("enabled", 4 * period)
            dcc.wait_alert("0x8F34", since=t0)
    finally:
        dcc.service_request(esme.name, "set_load_limit", threshold_kw=0, period=period)
