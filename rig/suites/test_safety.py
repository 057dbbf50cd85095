"""Supply-enablement safety (SUP-1..SUP-10 and the six safety properties).

The question the safety case asks (SUP-4): may a PPMID enable supply over the
HAN?  These checks gather the evidence: a disabled supply closes only after
it was armed and only on a local action (the meter's own press-and-hold, or
the paired PPMID's), promptly or not at all; never on a remote or CAD
command, never on a replayed, delayed, forged, stale or foreign PPMID
command, never by itself; and the load side is always judged by the power
analyser, never by the meter's own report (property 6).

What a verdict rests on (rig/suites/observe.py): the analyser's samples, the
bench agent's stamps of each button its actuators press and release, the
meter's own registers through its optical port, the head end's answers and
the alerts it received, and the HAN tap's view of the air: what a real lab
has, so that the checks run unchanged on a bench whose meter and PPMID are
black boxes (labs/blackbox.yaml).  Requirement
values (the 5 s enable bound, the 2 s hold) come from the ``reference``
fixture, never from the device's configuration.  The rig also probes the
meter's own defences as an attacker or a slow network would: it replays,
delays and forges PPMID frames on the HAN.

Repeat counts come from lab.yaml ``suites.safety.trials``: a safety run sets
hundreds.  Every check names the fault profiles that break its property
(``detects``); ``rig selftest`` shows it fails against each.
"""

from __future__ import annotations

import pytest

from rig.bus import CommandError

from .observe import (CHANGE_SUPPLY, LIVE_A, LOAD_A, PREPAYMENT, analyser_name, bands, dead_for, enable_latency,
                      enter_code, first_alert, hold_seconds, keypad, link_test, meter, ppmid_enables_on_air, press,
                      press_and_hold, wait_enable_answered, wait_link, wait_live, wait_ppmid_informed)

#: lab seconds a check watches the load side stay dead after something that must not close the supply
WATCH = 5.0
#: lab seconds an armed supply is watched with nobody acting (longer than a PPMID's display refresh, 10 s)
UNATTENDED = 30.0
#: lab seconds late the HAN tap releases a PPMID enable it held back (inside a 30 s freshness window,
#: beyond the 5 s bound)
DELAY = 8.0


# ----------------------------------------------------------------------------- helpers
def disable_and_arm(bench, dcc, esme, analyser, step, measure=None, trial=None) -> None:
    """Supplier disables (the analyser confirms the load side dead), then arms."""
    with step("remote disable"):
        dcc.disable()
        meter(esme.bench).wait_supply("disabled")
        analyser.wait_for(lambda r: r.current < LIVE_A, 30, "load side dead after disable")
    with step("remote arm"):
        dcc.arm()
        meter(esme.bench).wait_supply("armed")
    if measure is not None:
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_armed", requirement="SUP-2", trial=trial)


def bound(reference) -> float:
    return reference.enable_latency_bound


def restore_enabled(esme, clock, reference) -> None:
    """Back to enabled with the meter's own press-and-hold, for the next trial.
    The state is read until the meter answers (an optical read can time out
    on a busy bench, and a meter taken for not armed would not be pressed)."""
    m = meter(esme.bench)
    if m.wait_answering(30.0) == "armed":
        press_and_hold(clock, esme, hold_seconds(reference))
    m.wait_supply("enabled")


def refused(op) -> tuple[bool, dict]:
    """Run a head-end command; (refused by the device, its answer)."""
    try:
        return False, op() or {}
    except CommandError as exc:
        if exc.code != "refused":
            raise
        return True, {"reason": exc.reason}


# ----------------------------------------------------------------------------- SUP-1, SUP-2, SUP-7
@pytest.mark.requirement("SUP-1", "SUP-2", "SUP-7")
@pytest.mark.safety(1, 2, 6)
@pytest.mark.detects("reports_closed_when_open", "welded_contactor")
def test_disable_arm_then_the_meter_button_enables(bench, esme, dcc, load, analyser, clock, measure, step, reference,
                                                   settings):
    """Disable, arm, then the meter's own press-and-hold: the analyser sees the
    load side dead while disabled and armed, and live within the bound of the
    end of the hold (timed by the rig)."""
    load.draw(amps=LOAD_A)
    analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load drawing before the trial")
    with step("remote arm and enable of an enabled supply: nothing to do"):
        measure("safety.arm_of_enabled_answer", _supply_after(dcc, "supplier", "arm"), equals="refused",
                requirement="SUP-1", observed_by="dcc")
        measure("safety.enable_of_enabled_answer", _supply_after(dcc, "supplier", "enable"), equals="enabled",
                requirement="SUP-1", observed_by="dcc")
    t0 = clock.now()
    for trial in range(settings.safety.trials):
        with step("remote disable", trial=trial):
            dcc.disable()
            meter(esme.bench).wait_supply("disabled")
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_disabled", requirement="SUP-1", trial=trial)
        with step("remote arm", trial=trial):
            dcc.arm()
            meter(esme.bench).wait_supply("armed")
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_armed", requirement="SUP-2", trial=trial)
        if trial == 0:
            armed = first_alert(bench, dcc, t0, clock.now() + 10.0, lambda a: a.get("device") == esme.name
                                and a.get("code") in ("0x8F32", "0x8F33", "0x8168"), inbox="supplier")
            measure("safety.arm_alert", armed.get("code") if armed else None, equals="0x8F32", requirement="SUP-1",
                    observed_by="dcc", note="the supplier hears the meter is armed (Supply Armed)")
            measure("safety.second_arm_answer", _supply_after(dcc, "supplier", "arm"), equals="armed",
                    requirement="SUP-1", observed_by="dcc")
        with step("meter press and hold", trial=trial):
            action = press_and_hold(clock, esme, hold_seconds(reference))
        enable_latency(bench, analyser, action, bound(reference), measure, "meter button", reference, trial=trial)
        meter(esme.bench).wait_supply("enabled")


@pytest.mark.requirement("SUP-7", "SUP-2")
@pytest.mark.safety(1, 2, 6)
@pytest.mark.detects("ignores_hold_time", "skips_arm")
def test_a_short_hold_or_a_hold_without_the_prompt_does_nothing(bench, esme, dcc, load, analyser, clock, step,
                                                                measure, reference):
    """SUP-7: press and hold are distinct: a hold without the press that shows
    the prompt, or a press and a hold of half the required 2 s, leaves the
    supply armed; and on a disabled (not armed) supply even the full
    sequence does nothing (property 1)."""
    load.draw(amps=LOAD_A)
    disable_and_arm(bench, dcc, esme, analyser, step)
    with step("hold without the prompt"):
        press_and_hold(clock, esme, hold_seconds(reference), press=False)
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_hold_without_prompt", requirement="SUP-7")
    with step("press, then half the required hold", seconds=reference.hold_time / 2):
        press_and_hold(clock, esme, reference.hold_time / 2)
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_short_hold", requirement="SUP-7",
             **reference.attrs("hold_time"))
    with step("full sequence on a disabled, not armed, supply"):
        dcc.disable()
        meter(esme.bench).wait_supply("disabled")
        press_and_hold(clock, esme, hold_seconds(reference))
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_local_action_on_disabled", requirement="SUP-2")


@pytest.mark.requirement("SUP-2", "SUP-1", "SEC-2")
@pytest.mark.safety(2, 3, 6)
@pytest.mark.detects("closes_on_remote_enable_when_armed", "dno_enable_closes_armed", "welded_contactor")
def test_a_remote_enable_never_closes_an_armed_supply(bench, esme, dcc, load, analyser, step, measure, settings):
    """An armed supply never closes on a remote command, from any remote
    party (supplier, network operator): the head end's enable is refused and
    the analyser sees no current; the refusal is in the meter's answer."""
    load.draw(amps=LOAD_A)
    disable_and_arm(bench, dcc, esme, analyser, step)
    for trial in range(settings.safety.trials):
        for role in ("supplier", "dno"):
            with step("remote enable while armed", role=role, trial=trial):
                was_refused, _ = refused(lambda: dcc.enable(role=role))
            measure("safety.remote_enable_refused", was_refused, equals=True, requirement="SUP-2", role=role,
                    trial=trial, observed_by="dcc")
            dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_remote_enable",
                     requirement="SUP-2", role=role, trial=trial)


@pytest.mark.requirement("SUP-1", "SUP-2")
@pytest.mark.safety(1, 3, 6)
@pytest.mark.detects("closes_on_remote_enable_when_disabled")
def test_a_remote_enable_of_a_disabled_supply_arms_it_at_most(bench, esme, dcc, load, analyser, clock, step, measure,
                                                              reference):
    """SUP-1 and seed 002:2438-2442 ("after an individual meter has been
    disabled a person must be present when supply is enabled"): a remote
    enable of a disabled supply may arm it or be refused, never close it.  A
    lab that declares its meters close (``remote_enable: closes``) gets this
    check failing as a safety deviation against properties 1 and 3."""
    declared = bench.cfg.devices[esme.name].settings.remote_enable
    load.draw(amps=LOAD_A)
    with step("remote disable"):
        dcc.disable()
        meter(esme.bench).wait_supply("disabled")
        analyser.wait_for(lambda r: r.current < LIVE_A, 30, "load side dead after disable")
    with step("remote enable of a disabled supply", declared=declared):
        was_refused, answer = refused(dcc.enable)
    peak = dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_remote_enable_of_disabled",
                    requirement="SUP-1", declared=declared,
                    **({"deviation": True, "deviation_reason": "remote_enable: closes declared for this meter"}
                       if declared == "closes" else {}))
    measure("safety.remote_enable_of_disabled_answer", "refused" if was_refused else answer.get("supply"),
            requirement="SUP-1", observed_by="dcc")
    if peak > LIVE_A and declared == "closes":
        pytest.fail("safety deviation declared by the lab (remote_enable: closes): a remote enable closed a "
                    "disabled supply with nobody present, against safety properties 1 and 3")
    with step("back to enabled, locally"):
        if not was_refused and answer.get("supply") == "armed":
            press_and_hold(clock, esme, hold_seconds(reference))


# ----------------------------------------------------------------------------- PPMID (SUP-3, SUP-4, property 4)
@pytest.mark.requirement("SUP-3", "SUP-4", "SUP-2")
@pytest.mark.safety(2, 4, 6)
@pytest.mark.detects("reports_closed_when_open", "slow_to_send")
def test_the_paired_ppmid_enables_an_armed_supply_promptly(bench, esme, ppmid, dcc, load, analyser, clock, step,
                                                           measure, settings, reference):
    """The paired PPMID's press-and-hold closes an armed supply within the
    bound of the end of the hold (the agent's release of the button),
    confirmed by the analyser; before the press the PPMID has read the
    meter's supply status and had it answered (SUP-3: what its display
    mirrors), as the HAN tap sees on the air."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.trials):
        disable_and_arm(bench, dcc, esme, analyser, step)
        with step("the PPMID reads the meter's supply status (HAN tap)", trial=trial):
            wait_ppmid_informed(bench, ppmid.name, esme.name, clock.now())
        with step("PPMID press and hold", trial=trial):
            action = press_and_hold(clock, ppmid, hold_seconds(reference))
        enable_latency(bench, analyser, action, bound(reference), measure, "PPMID", reference, trial=trial)
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-7", "SUP-4", "SUP-2")
@pytest.mark.safety(2, 4, 6)
@pytest.mark.detects("enables_without_hold")
def test_a_ppmid_press_without_the_hold_sends_nothing(bench, esme, ppmid, dcc, load, analyser, clock, han_tap, step,
                                                      measure, reference):
    """SUP-7 at the PPMID: a press of enable only shows the prompt, and a hold
    of half the required 2 s does nothing: no enable goes on the air (the HAN
    tap watches) and the load side stays dead."""
    load.draw(amps=LOAD_A)
    disable_and_arm(bench, dcc, esme, analyser, step)
    t0 = clock.now()
    with step("PPMID press, no hold"):
        press(bench, ppmid.name, "enable")
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_ppmid_press", requirement="SUP-7")
    with step("PPMID press, then half the required hold", seconds=reference.hold_time / 2):
        press_and_hold(clock, ppmid, reference.hold_time / 2)
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_ppmid_short_hold", requirement="SUP-7",
             **reference.attrs("hold_time"))
    sent = ppmid_enables_on_air(han_tap, ppmid.name, t0)
    measure("safety.ppmid_enables_without_a_hold", len(sent), "frames", equals=0, requirement="SUP-7",
            observed_by="han_tap")


@pytest.mark.requirement("SUP-2", "SUP-4")
@pytest.mark.safety(2, 4, 6)
@pytest.mark.detects("auto_enables_when_armed")
def test_an_armed_supply_stays_open_with_nobody_present(bench, esme, ppmid, dcc, load, analyser, clock, step,
                                                        measure, reference):
    """Property 2, "only on a local action": armed, with nobody touching the
    meter or the PPMID for longer than the PPMID takes to see it armed, the
    load side stays dead."""
    load.draw(amps=LOAD_A)
    disable_and_arm(bench, dcc, esme, analyser, step)
    with step("nobody present", lab_seconds=UNATTENDED):
        dead_for(bench, analyser, UNATTENDED, measure, "safety.load_current_armed_unattended", requirement="SUP-2")
    restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(1, 4, 6)
@pytest.mark.detects("skips_arm")
def test_a_ppmid_enable_does_nothing_unless_armed(bench, esme, ppmid, dcc, load, analyser, clock, step, measure,
                                                  reference):
    """Property 4, only while armed (and property 1): a PPMID enable on a
    disabled, not armed supply does not close it."""
    load.draw(amps=LOAD_A)
    with step("remote disable"):
        dcc.disable()
        meter(esme.bench).wait_supply("disabled")
    with step("PPMID enable on a disabled supply"):
        action = press_and_hold(clock, ppmid, hold_seconds(reference))
        wait_enable_answered(bench, ppmid.name, esme.name, action.pressed)
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_ppmid_on_disabled", requirement="SUP-2")


@pytest.mark.requirement("SUP-4")
@pytest.mark.safety(4, 6)
@pytest.mark.detects("accepts_unpaired_ppmid")
def test_an_unpaired_ppmid_cannot_enable(bench, esme, dcc, load, analyser, clock, step, measure, settings, reference):
    """Property 4, only the paired PPMID: another PPMID on the same HAN is refused."""
    paired = bench.cfg.devices[esme.name].settings.paired_ppmid
    others = [n for n, d in bench.cfg.devices.items() if d.kind == "ppmid" and n != paired]
    if not others:
        pytest.skip("the lab has no second PPMID to act as an unpaired one")
    stranger = bench.device(others[0])
    load.draw(amps=LOAD_A)
    disable_and_arm(bench, dcc, esme, analyser, step)
    for trial in range(settings.safety.trials):
        with step("unpaired PPMID enable", ppmid=others[0], trial=trial):
            press_and_hold(clock, stranger, hold_seconds(reference))
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_unpaired_ppmid", requirement="SUP-4",
                 ppmid=others[0], trial=trial)


def _replay_trial(bench, esme, ppmid, dcc, analyser, clock, han_tap, step, measure, reference, trial: int,
                  reboot: bool) -> None:
    """One replay: the PPMID's genuine enable on a disabled supply (refused,
    but its frame counter is spent); then either the supplier arms and the
    tap replays the recorded frame, or the meter reboots (mains off and on,
    the tap keeping the PPMID quiet meanwhile so that the replay is the first
    frame the meter hears from it) and the tap replays it at once.  A meter
    whose frame-counter check stops the replay drops it unanswered; one that
    lets it through answers it on the air (the tap sees the answer, whatever
    the meter then decided) and, armed and while the frame is fresh, closes."""
    with step("remote disable", trial=trial):
        dcc.disable()
        meter(esme.bench).wait_supply("disabled")
    with step("genuine PPMID enable, refused: the meter is not armed", trial=trial):
        action = press_and_hold(clock, ppmid, hold_seconds(reference))
        wait_enable_answered(bench, ppmid.name, esme.name, action.pressed)
    if reboot:
        with step("mains off and on: the meter reboots; the tap keeps the PPMID quiet", trial=trial):
            han_tap.delay(ppmid.name, esme.name, 2 * WATCH, within=2 * WATCH)
            relay = bench.mains.relay
            relay.off()
            relay.wait_switchable()
            relay.on()
            meter(bench).wait_answering(30)
    else:
        with step("remote arm", trial=trial):
            dcc.arm()
            meter(esme.bench).wait_supply("armed")
    with step("the recorded enable replayed", trial=trial):
        out = han_tap.replay(ppmid.name, esme.name, cluster=PREPAYMENT, command=CHANGE_SUPPLY)
    at = float(out.get("at", clock.now()))
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_replay", requirement="SUP-4",
             trial=trial, reboot=reboot)
    answers = [f for f in han_tap.journal(since=at, src=esme.name, dst=ppmid.name, cluster=PREPAYMENT)
               if f["to_client"] and not f["general"]]
    measure("safety.replays_answered", len(answers), "frames", equals=0, requirement="SUP-4", trial=trial,
            reboot=reboot, observed_by="han_tap",
            note="a replay the meter's frame-counter check stops gets no answer on the air")
    if reboot:
        with step("remote arm", trial=trial):
            dcc.arm()
            meter(esme.bench).wait_supply("armed")
    restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SEC-1")
@pytest.mark.safety(4, 6)
@pytest.mark.detects("accepts_replayed_ppmid")
def test_a_replayed_ppmid_enable_is_not_carried_out(bench, esme, ppmid, dcc, load, analyser, clock, han_tap, step,
                                                    measure, settings, reference):
    """Property 4, only once: a PPMID enable recorded off the air and sent
    again (a replay) must not be carried out, nor even answered: the
    meter's frame-counter check drops it."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.trials):
        _replay_trial(bench, esme, ppmid, dcc, analyser, clock, han_tap, step, measure, reference, trial,
                      reboot=False)


@pytest.mark.requirement("SUP-4", "SEC-1")
@pytest.mark.safety(4, 5, 6)
@pytest.mark.detects("replay_window_resets_on_reboot")
def test_a_replay_after_the_meter_reboots_is_not_carried_out(bench, esme, ppmid, dcc, load, mains, analyser,
                                                             clock, han_tap, step, measure, settings, reference):
    """Property 4 across a loss of mains: the meter keeps the frame counters
    it has seen, so a recorded enable replayed after it reboots is still
    dropped."""
    if mains.relay is None:
        pytest.skip(f"bench {bench.name} has no mains relay to reboot the meter with")
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.link_trials):
        _replay_trial(bench, esme, ppmid, dcc, analyser, clock, han_tap, step, measure, reference, trial,
                      reboot=True)


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(2, 4, 6)
@pytest.mark.detects("long_freshness_window", "accepts_stale_ppmid")
def test_a_ppmid_enable_delivered_late_is_not_carried_out(bench, esme, ppmid, dcc, load, analyser, clock, han_tap,
                                                          step, measure, settings, reference):
    """Property 4, only while fresh (and property 2's bound): the HAN tap holds
    the PPMID's enable back and releases it 8 s later, as a jammer with a
    recorder or a slow network would.  The meter must not close then: the
    consumer may have walked away; a close beyond the bound fails."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.link_trials):
        disable_and_arm(bench, dcc, esme, analyser, step)
        with step("tap holds the next PPMID enable back", seconds=DELAY, trial=trial):
            han_tap.delay(ppmid.name, esme.name, DELAY, cluster=PREPAYMENT, command=CHANGE_SUPPLY, within=30.0)
        with step("PPMID press and hold", trial=trial):
            action = press_and_hold(clock, ppmid, hold_seconds(reference))
        dead_for(bench, analyser, max(0.0, action.released + DELAY + 2 * WATCH - clock.now()), measure,
                 "safety.load_current_after_delayed_enable", requirement="SUP-4", trial=trial, delayed_s=DELAY,
                 note="the only enable reached the meter 8 s after the hold: any close is beyond the bound")
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SEC-1")
@pytest.mark.safety(4, 6)
@pytest.mark.detects("accepts_forged_frames")
def test_a_forged_ppmid_enable_is_not_carried_out(bench, esme, ppmid, dcc, load, analyser, clock, han_tap, step,
                                                  measure, settings, reference):
    """Property 4, only from the paired PPMID: a PPMID enable forged on the
    air (the right format and a fresh time, without the HAN link key) must
    not close the supply."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.trials):
        with step("a genuine PPMID frame to copy, on a disabled supply", trial=trial):
            dcc.disable()
            meter(esme.bench).wait_supply("disabled")
            action = press_and_hold(clock, ppmid, hold_seconds(reference))
            wait_enable_answered(bench, ppmid.name, esme.name, action.pressed)
        with step("remote arm, then the forged enable", trial=trial):
            dcc.arm()
            meter(esme.bench).wait_supply("armed")
            han_tap.forge(ppmid.name, esme.name, cluster=PREPAYMENT, command=CHANGE_SUPPLY)
        dead_for(bench, analyser, 2 * WATCH, measure, "safety.load_current_after_forgery", requirement="SUP-4",
                 trial=trial)
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(4, 6)
@pytest.mark.detects("queues_presses", "accepts_stale_ppmid+queues_presses")
def test_a_press_made_while_the_han_is_down_is_never_carried_out_later(bench, esme, ppmid, dcc, load, analyser,
                                                                       attenuator, clock, han_tap, step, measure,
                                                                       settings, reference):
    """Property 4, only while fresh: the consumer presses enable while the HAN
    link is down and walks away; when the link returns the supply stays
    armed, and no enable from that press goes on the air at all (a PPMID
    that keeps presses for later is at fault even when the meter refuses
    them as stale): the analyser and the HAN tap watch."""
    top = attenuator.cfg.limits.attenuation_max or 95.0
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.link_trials):
        disable_and_arm(bench, dcc, esme, analyser, step)
        with step("HAN link to the PPMID down", db=top, trial=trial):
            attenuator.set(top)
            wait_link(bench, ppmid.name, False, 120)
        with step("consumer presses enable, link down", trial=trial):
            press_and_hold(clock, ppmid, hold_seconds(reference))
        with step("consumer walks away", lab_seconds=30.0, trial=trial):
            bench.dwell(30.0)
        with step("link restored", trial=trial):
            t_back = clock.now()
            attenuator.set(attenuator.cfg.limits.attenuation_min or 0)
            wait_link(bench, ppmid.name, True, 120)
        dead_for(bench, analyser, 30.0, measure, "safety.load_current_after_link_returned", requirement="SUP-4",
                 trial=trial)
        late = ppmid_enables_on_air(han_tap, ppmid.name, t_back)
        measure("safety.late_ppmid_enables", len(late), "frames", equals=0, requirement="SUP-4", trial=trial,
                observed_by="han_tap")
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SUP-2")
@pytest.mark.safety(4, 5, 6)
@pytest.mark.detects("queues_presses_across_outage")
def test_a_press_made_during_a_mains_outage_is_never_carried_out_later(bench, esme, ppmid, dcc, load, analyser,
                                                                       mains, clock, han_tap, step, measure,
                                                                       settings, reference):
    """Property 4 across a loss of mains: with the meter dark, the consumer
    presses enable on the (battery) PPMID and walks away; when mains returns
    the supply stays armed (property 5) and no enable from that press goes
    on the air."""
    load.draw(amps=LOAD_A)
    for trial in range(settings.safety.link_trials):
        disable_and_arm(bench, dcc, esme, analyser, step)
        with step("mains off: the meter is dark", trial=trial):
            mains.relay.wait_switchable()
            mains.off()          # returns once the agent reports the relay open: the meter has no supply
        with step("consumer presses enable, meter dark", trial=trial):
            press_and_hold(clock, ppmid, hold_seconds(reference))
        with step("mains back", trial=trial):
            mains.relay.wait_switchable()
            mains.on()
            t_back = clock.now()
            meter(bench).wait_answering(60)
        dead_for(bench, analyser, UNATTENDED, measure, "safety.load_current_after_mains_returned",
                 requirement="SUP-4", trial=trial)
        late = ppmid_enables_on_air(han_tap, ppmid.name, t_back)
        measure("safety.late_ppmid_enables", len(late), "frames", equals=0, requirement="SUP-4", trial=trial,
                observed_by="han_tap", after="mains outage")
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-4", "SUP-2", "HAN-3")
@pytest.mark.safety(2, 4)
@pytest.mark.detects("accepts_stale_ppmid+queues_presses")
def test_enable_at_the_edge_of_the_link_is_prompt_or_not_at_all(bench, esme, ppmid, dcc, load, analyser, attenuator,
                                                                clock, step, measure, settings, reference):
    """Degraded RF: with the PPMID's path attenuated past, at, and just
    inside the edge of its link (frames lost and retried), each enable either
    closes the supply within the bound of the end of the hold or never; not
    later, when the link comes back after the consumer has walked away (30
    lab s: long enough for a PPMID's unanswered enable to time out)."""
    limit = bound(reference)
    edge = _link_edge(bench, ppmid, attenuator, step)
    top = attenuator.cfg.limits.attenuation_max or 95.0
    floor = attenuator.cfg.limits.attenuation_min or 0.0
    levels = [min(edge + 10.0, top), edge, max(edge - 2.0, floor)]    # past it: the link is gone, not just lossy
    load.draw(amps=LOAD_A)
    prompt = late = 0
    trials = settings.safety.link_trials
    for trial in range(trials):
        db = levels[trial % len(levels)]
        disable_and_arm(bench, dcc, esme, analyser, step)
        attenuator.set(db)
        with step("PPMID enable near the link edge", db=db, trial=trial):
            action = press_and_hold(clock, ppmid, hold_seconds(reference))
        reading = wait_live(analyser, max(0.0, action.released + limit - clock.now()))
        if reading is not None:
            prompt += 1
            measure("safety.enable_latency", round(reading.ts - action.released, 3), "s", low=0, high=limit,
                    requirement="SUP-2", path="PPMID near link edge", db=db, trial=trial,
                    observed_by=[analyser_name(bench), "rig"], **reference.attrs("enable_latency_bound"))
        else:
            # not promptly: then never, not even once the link is good again, after the consumer has gone
            with step("consumer walks away", lab_seconds=UNATTENDED, trial=trial):
                bench.dwell(UNATTENDED)
            with step("link restored; watching for a late enable", trial=trial):
                attenuator.set(floor)
                wait_link(bench, ppmid.name, True, 120)
                reading = wait_live(analyser, 30.0)
                if reading is not None:
                    late += 1
                    measure("safety.late_enable", round(reading.ts - action.released, 3), "s", high=limit,
                            requirement="SUP-4", db=db, trial=trial, observed_by=[analyser_name(bench), "rig"])
        attenuator.set(floor)
        wait_link(bench, ppmid.name, True, 120)
        restore_enabled(esme, clock, reference)
    measure("safety.edge_enables_prompt", prompt, "trials", requirement="SUP-4", edge_db=edge, of=trials,
            observed_by=analyser_name(bench))
    measure("safety.edge_enables_late", late, "trials", equals=0, requirement="SUP-4", edge_db=edge, of=trials,
            observed_by=analyser_name(bench))


def _link_edge(bench, ppmid, attenuator, step) -> float:
    """The attenuation at which the PPMID's last band is about to go: the
    lowest setting where a single-attempt link test loses half its frames on
    every band the PPMID has (a dual-band PPMID keeps its link until both
    bands fail).  Coarse 4 dB steps, then 1 dB."""
    top = attenuator.cfg.limits.attenuation_max or 95.0
    floor = attenuator.cfg.limits.attenuation_min or 0.0
    its_bands = bands(bench, ppmid.name)

    def lossy(db: float) -> bool:
        attenuator.set(db)
        return all(link_test(bench, ppmid.name, band, frames=20)["per"] >= 0.5 for band in its_bands)

    with step("find the link edge", bands=its_bands):
        db = floor
        while db + 4.0 <= top and not lossy(db + 4.0):
            db += 4.0
        while db + 1.0 <= top and not lossy(db + 1.0):
            db += 1.0
        attenuator.set(floor)
        wait_link(bench, ppmid.name, True, 120)
    return db + 1.0


# ----------------------------------------------------------------------------- HAN-6, SUP-6, SUP-10, SEC
@pytest.mark.requirement("HAN-6", "SUP-2")
@pytest.mark.safety(3, 6)
@pytest.mark.detects("accepts_cad_command", "accepts_han_config_write", "writes_configuration")
def test_a_consumer_access_device_cannot_switch_supply_or_change_configuration(bench, esme, dcc, load, analyser,
                                                                               clock, step, measure):
    """HAN-6 and property 3: a CAD may read but never execute a meter function
    or update configuration: its enable on an armed supply is refused and the
    contactor stays open; its write of the load limit is refused and the
    supplier reads the old value back; and the in-home display sends no
    write or command on the HAN (the tap watches a whole refresh period)."""
    load.draw(amps=LOAD_A)
    t0 = clock.now()
    disable_and_arm(bench, dcc, esme, analyser, step)
    with step("CAD reads"):
        dcc.read(role="cad")
    with step("CAD sends enable"):
        was_refused, _ = refused(lambda: dcc.enable(role="cad"))
    measure("safety.cad_enable_refused", was_refused, equals=True, requirement="HAN-6", observed_by="dcc")
    dead_for(bench, analyser, WATCH, measure, "safety.load_current_after_cad_enable", requirement="HAN-6")
    with step("CAD writes the load limit"):
        before = dcc.read(what="load_limit").get("load_limit_kw")
        was_refused, _ = refused(lambda: dcc.service_request(esme.name, "set_load_limit", role="cad",
                                                            threshold_kw=20.0))
        after = dcc.read(what="load_limit").get("load_limit_kw")
    measure("safety.cad_write_refused", was_refused, equals=True, requirement="HAN-6", observed_by="dcc")
    measure("safety.load_limit_after_cad_write", after, "kW", equals=before, requirement="HAN-6", observed_by="dcc")
    ihds = [n for n, d in bench.cfg.devices.items() if d.kind == "ihd"]
    tap = bench.han_tap
    if ihds and tap.available:
        with step("the in-home display's traffic", lab_seconds=20.0):
            bench.dwell(max(0.0, t0 + 20.0 - clock.now()))
            frames = [f for name in ihds for f in tap.journal(since=t0, src=name)
                      if not f["to_client"] and (f["command"] in ("Write_Attributes", "Write_Attributes_Undivided")
                                                 or not f["general"])]
        measure("safety.cad_writes_on_air", len(frames), "frames", equals=0, requirement="HAN-6",
                observed_by="han_tap", devices=ihds)


def _supply_after(dcc, role: str, op: str) -> str:
    """A remote command's outcome as the head end saw it: the supply state the
    meter answered with, or ``refused``."""
    was_refused, answer = refused(lambda: getattr(dcc, op)(role=role))
    return "refused" if was_refused else str(answer.get("supply"))


@pytest.mark.requirement("SUP-6")
@pytest.mark.safety(1, 6)
@pytest.mark.detects("supplier_overridden_by_dno", "dno_overridden_by_supplier")
def test_one_party_cannot_lift_anothers_disablement(bench, esme, dcc, load, analyser, clock, step, measure,
                                                    reference):
    """SUP-6, in the seed's direction first (002:1903-1905: "an energy
    supplier that had disabled a meter due to non-payment would not wish the
    meter to be enabled by a DNO that had disabled a group of meters"): the
    supplier disables for debt, the network operator disables the area, then
    lifts its own (arm, enable): the supply stays disabled.  Then the other
    way round.  The head end's answers and the analyser judge."""
    load.draw(amps=LOAD_A)
    for first, second in (("supplier", "dno"), ("dno", "supplier")):
        with step(f"{first} disables, then {second}"):
            dcc.disable(role=first)
            meter(esme.bench).wait_supply("disabled")
            dcc.disable(role=second)
        for op in ("arm", "enable"):
            with step(f"{second} {op}s"):
                answer = _supply_after(dcc, second, op)
                after = dcc.read().get("supply")
            measure("safety.supply_after_other_partys_lift", after, equals="disabled", requirement="SUP-6",
                    holder=first, by=second, op=op, answer=answer, observed_by="dcc")
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_other_party_held", requirement="SUP-6",
                 holder=first)
        with step(f"{first} arms; local enable"):
            outcome = _supply_after(dcc, first, "arm")
            measure("safety.supply_after_holder_arms", outcome, equals="armed", requirement="SUP-6", holder=first,
                    observed_by="dcc")
            if outcome == "armed":
                press_and_hold(clock, esme, hold_seconds(reference))
            meter(esme.bench).wait_supply("enabled")


@pytest.mark.requirement("SUP-10", "SEC-1", "SEC-2")
@pytest.mark.detects("ignores_premises")
def test_commands_for_another_premises_forged_or_unauthorised_are_refused(bench, esme, dcc, load, analyser, clock,
                                                                          step, measure):
    """SUP-10: a disable addressed to another premises is refused (no final
    'failsafe' visit check exists any more); SEC-1: so is a forged one, and
    the failed authentication is alerted (0x8F3D) to the supplier; SEC-2: a
    party without the authority (a network operator adjusting credit) is
    refused.  The load stays live through all of them."""
    load.draw(amps=LOAD_A)
    t0 = clock.now()
    for path, op in (("other premises", lambda: dcc.disable(premises="MPAN-9999999999999")),
                     ("forged signature", lambda: dcc.disable(authentic=False)),
                     ("no authority", lambda: dcc.service_request(esme.name, "add_credit", role="dno",
                                                                   amount=100.0))):
        with step(f"disable: {path}"):
            was_refused, _ = refused(op)
        measure("safety.command_refused", was_refused, equals=True, requirement="SUP-10", path=path,
                observed_by="dcc")
    live = wait_live(analyser, WATCH)
    measure("safety.load_current_after_refused_commands", live.current if live else 0.0, "A", low=LIVE_A,
            requirement="SUP-10", observed_by=analyser_name(bench))
    alert = first_alert(bench, dcc, t0, clock.now() + 10.0, lambda a: a.get("code") == "0x8F3D", inbox="supplier")
    measure("safety.authentication_failure_alerted", alert is not None, equals=True, requirement="SEC-1",
            observed_by="dcc")


# ----------------------------------------------------------------------------- prepayment (SUP-3, SUP-5, SUP-8)
@pytest.mark.requirement("SUP-5")
@pytest.mark.detects("utrn_reuse")
def test_a_utrn_is_accepted_once(bench, esme, ppmid, dcc, clock, step, measure):
    """SUP-5: a top-up code works once: typed on the PPMID's keypad it adds
    its credit; typed again (on the meter's keypad where the rig has one,
    else the PPMID's) it adds nothing.  The credit is read remotely before
    and after each use; the meter's answer to each (credit added locally, or
    a UTRN refusal) at the supplier's inbox says when to read."""
    first_pad = keypad(bench, ppmid.name, esme.name)
    second_pad = keypad(bench, esme.name, ppmid.name)
    if first_pad is None:
        pytest.skip(f"bench {bench.name} has no actuators on a keypad (lab.yaml actuators): no UTRN can be typed")
    code = dcc.issue_utrn(5.0)
    credit = [dcc.read(what="prepayment")["credit"]]
    for use, pad in (("first", first_pad), ("second", second_pad or first_pad)):
        with step(f"UTRN typed on the {pad}'s keypad", use=use):
            t0 = clock.now()
            enter_code(bench, pad, code)
            first_alert(bench, dcc, t0, clock.now() + 30.0, lambda a: a.get("device") == esme.name and a.get("code")
                        in ("0x810E", "0x8F51", "0x8F63", "0x8F64"), inbox="supplier")
            credit.append(dcc.read(what="prepayment")["credit"])
    before, after_first, after = credit
    measure("prepayment.first_use_accepted", abs(after_first - before - 5.0) < 0.01, equals=True,
            requirement="SUP-5", keypad=first_pad, observed_by="dcc", note="credit read over the WAN around the use")
    measure("prepayment.credit_added", round(after - before, 2), "GBP", low=4.99, high=5.01, requirement="SUP-5",
            observed_by="dcc", note="credit read over the WAN before and after both uses")
    measure("prepayment.second_use_rejected", abs(after - after_first) < 0.01, equals=True, requirement="SUP-5",
            keypad=second_pad, observed_by="dcc", note="credit read over the WAN around the second use")


@pytest.mark.requirement("SUP-3", "SUP-8", "SUP-2")
@pytest.mark.safety(2, 6)
@pytest.mark.detects("credit_closes_supply")
def test_credit_restored_arms_and_only_a_local_action_enables(bench, esme, ppmid, dcc, load, analyser, clock, step,
                                                              measure, reference):
    """Credit runs out: the meter disables.  Emergency credit activated at the
    PPMID, then a top-up, each arm it (0x8168 and 0x8F32 "Supply Armed", at
    the supplier's inbox) and never close it: only a local action does.  A
    top-up while the supplier also holds a disablement lifts the credit's
    only: the supply stays disabled until the supplier arms (SUP-6)."""
    load.draw(amps=LOAD_A)
    for path in ("emergency credit", "top-up", "top-up, supplier disabled too"):
        t_path = clock.now()
        credit = dcc.read(what="prepayment")["credit"]
        with step("supplier adjusts credit to nothing", path=path):
            dcc.add_credit(-credit - (0.0 if path == "emergency credit" else 10.0))
            meter(esme.bench).wait_supply("disabled")
            if path.endswith("too"):
                dcc.disable()
        dead_for(bench, analyser, WATCH, measure, "safety.load_current_credit_exhausted", requirement="SUP-3",
                 path=path)
        with step(path):
            if path == "emergency credit":
                press(bench, ppmid.name, "emergency_credit")
            else:
                enter_code(bench, ppmid.name, dcc.issue_utrn(20.0))
        dead_for(bench, analyser, 2 * WATCH, measure, "safety.load_current_after_credit_restored",
                 requirement="SUP-8", path=path)
        if path.endswith("too"):
            measure("safety.supply_after_top_up", dcc.read().get("supply"), equals="disabled", requirement="SUP-6",
                    path=path, observed_by="dcc", note="the supplier's disablement outlives the credit's")
            with step("supplier arms", path=path):
                dcc.arm()
                meter(esme.bench).wait_supply("armed")
        else:
            code = "0x8168" if path == "emergency credit" else "0x8F32"
            alert = first_alert(bench, dcc, t_path, clock.now() + 10.0,
                                lambda a: a.get("device") == esme.name and a.get("code") in ("0x8168", "0x8F32",
                                                                                             "0x8F33"),
                                inbox="supplier")
            measure("safety.armed_by_credit_alert", alert.get("code") if alert else None, equals=code,
                    requirement="SUP-8", path=path, observed_by="dcc")
        with step("PPMID enable", path=path):
            action = press_and_hold(clock, ppmid, hold_seconds(reference))
        enable_latency(bench, analyser, action, bound(reference), measure, f"PPMID after {path}", reference)
        with step("supplier restores credit", path=path):
            dcc.add_credit(20.0)
        restore_enabled(esme, clock, reference)


@pytest.mark.requirement("SUP-9", "SUP-8", "SUP-2")
@pytest.mark.safety(2, 6)
@pytest.mark.detects("load_limit_restores_regardless")
def test_load_limit_interrupts_then_restores_only_what_it_armed(bench, esme, dcc, load, analyser, clock, step,
                                                                 measure, reference):
    """SUP-9: above the load limit for its period the meter opens and arms
    (0x8F33) and closes again after the restoration period (0x8F34).  If a
    party disabled and armed the supply meanwhile, the restoration must not
    close it: that arm waits for a person."""
    period = 30.0
    t0 = clock.now()
    try:
        with step("supplier sets a 1 kW load limit", period=period):
            dcc.service_request(esme.name, "set_load_limit", threshold_kw=1.0, period=period)
        with step("load draws 2.3 kW"):
            t_load = clock.now()
            load.draw(amps=10.0)
            dead = analyser.wait_for(lambda r: r.current < LIVE_A, 4 * period, "load limit trips")
        measure("load_limit.trip_after", round(dead.ts - t_load, 2), "s", low=period * 0.8, high=period * 1.5 + 5,
                requirement="SUP-9", observed_by=[analyser_name(bench), "rig"])
        tripped = first_alert(bench, dcc, t0, clock.now() + 10.0, lambda a: a.get("code") == "0x8F33")
        measure("load_limit.trip_alerted", tripped is not None, equals=True, requirement="SUP-9",
                observed_by="dcc")
        with step("load reduced; restoration period"):
            load.draw(amps=1.0)
            live = wait_live(analyser, 4 * period)
        measure("load_limit.restored_after", None if live is None else round(live.ts - dead.ts, 2), "s",
                low=period * 0.8, high=period * 1.5 + 5, requirement="SUP-9", observed_by=analyser_name(bench))
        with step("trips again; the supplier disables and arms during the restoration period"):
            load.draw(amps=10.0)
            analyser.wait_for(lambda r: r.current < LIVE_A, 4 * period, "load limit trips again")
            dcc.disable()
            meter(esme.bench).wait_supply("disabled")
            dcc.arm()
            meter(esme.bench).wait_supply("armed")
            load.draw(amps=1.0)
        dead_for(bench, analyser, period * 1.5 + 5, measure, "safety.load_current_after_restoration_period",
                 requirement="SUP-9", note="armed by the supplier since the trip: waits for a person")
    finally:
        dcc.service_request(esme.name, "set_load_limit", threshold_kw=0, period=period)
    restore_enabled(esme, clock, reference)
