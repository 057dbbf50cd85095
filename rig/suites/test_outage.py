"""Power outage detection and alerts (OUT-1..OUT-7), and safety property 5.

What the meter, the comms hub and the WAN do when the bench's mains goes
away and comes back, judged where the network operator would see it: in the
network operator's inbox at the head end's alert sink, each alert with the
sink's own receive time, and in the meter's event log.

Run it::

    rig run --suite outage                                  # nightly, on the lab that is up
    pytest --lab lab.yaml rig/suites/test_outage.py -k sweep # at a bench

An outage is made the way a lab makes one: the mains relay opens for the
outage and closes again (the AC source stays on, as the grid would); a
flicker is a timed dip of the AC source to 0 V; a sag or swell is the AC
source set beyond the meter's thresholds.  All times are lab seconds and
every latency runs from the rig's own switching (the agent's time stamp of
the relay) to the sink's receive time: a late or early alert fails at every
clock scale alike.

The period judged against is the requirement's 3 minutes (the ``reference``
fixture: OUT-2), never the meter's or the hub's configured one; a lab that
must use another declares it (lab.yaml ``suites.deviations``).  lab.yaml
``suites.outage`` sets the rest:

=================  ===========================================================
``alert_tolerance`` lab seconds allowed after the period for the outage alert,
                    and for any alert to reach the head end
``sweep``           interruption lengths probed around the period (OUT-4)
``flickers``        how many flickers in a row (OUT-1)
``flicker_seconds`` length of each flicker
``log_tolerance``   how far a logged loss/restoration time may be from the
                    rig's own switching time; also how early an outage alert
                    may come (the rig's own timing jitter)
``delivery_min``    least share of the expected alerts that must reach the DCC
``fade_seconds``    how long the HAN tap jams the meter's link to the hub as
                    mains returns
``fade_recovery``   how soon after the fade the restoration alert must still
                    reach the DCC
=================  ===========================================================

Each check names the device fault profiles that break what it checks
(``@pytest.mark.detects``); ``rig selftest`` shows it fails against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rig.alerts import OUTAGE_ALERT, AlertCode

from .observe import (LIVE_A, LOAD_A, TUNNELING, alerts_between, analyser_name, first_alert, last_mains_return,
                      meter, peak_current, wait_until)

RESTORED_SHORT = AlertCode.SUPPLY_OUTAGE_RESTORED.hex
RESTORED_LONG = AlertCode.SUPPLY_OUTAGE_RESTORED_LONG.hex
RESTORED = (RESTORED_SHORT, RESTORED_LONG)
#: the code a meter logs a loss of supply with (SUP-8: "Supply Interrupted")
LOSS_LOGGED = AlertCode.SUPPLY_INTERRUPTED.hex
#: power-quality alerts (OUT-6): sag, sag over, swell, swell over
SAG, SAG_END = AlertCode.VOLTAGE_SAG.hex, AlertCode.VOLTAGE_SAG_END.hex
SWELL, SWELL_END = AlertCode.VOLTAGE_SWELL.hex, AlertCode.VOLTAGE_SWELL_END.hex
#: how far beyond a meter threshold the AC source is set, as a share of the nominal voltage
PQ_MARGIN = 0.02
#: the load side counts as live above this voltage (the meter's own supply-present level is 50 V)
LIVE_VOLTAGE = 50.0
#: the network operator's inbox at the head end
DNO = "dno"


# ----------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Interruption:
    """One loss of mains as the rig made it, in lab time: ``off`` and ``on``
    are the moments the switching was reported (the relay's ``changed``, the
    agent's time stamp), and each edge's window runs from the command to its
    confirmation."""

    nominal: float
    off: float
    on: float
    off_window: tuple[float, float]
    on_window: tuple[float, float]

    @property
    def length(self) -> float:
        return self.on - self.off


def _switched_at(mains, fallback: float) -> float:
    changed = (mains.relay.state or {}).get("changed") if mains.relay is not None else None
    return float(changed) if changed is not None else fallback


def interrupt(bench, mains, seconds: float, during: Callable[[], object] | None = None) -> Interruption:
    """Mains off for ``seconds``: the mains relay opens, then closes again
    (the AC source stays on).  A bench without a mains relay switches its AC
    source output instead.  ``during`` is called once mains is off."""
    clock, relay = bench.clock, mains.relay
    if relay is not None:
        relay.wait_switchable()
    before_off = clock.now()
    mains.off()
    off_seen = clock.now()
    off = _switched_at(mains, off_seen)
    if during is not None:
        during()
    bench.dwell(max(0.0, seconds - (clock.now() - off)))
    if relay is not None:
        relay.wait_switchable()
    before_on = clock.now()
    (relay if relay is not None else mains).on()
    on_seen = clock.now()
    return Interruption(seconds, off, _switched_at(mains, on_seen), (before_off, off_seen), (before_on, on_seen))


def flicker(bench, ac_source, analyser, seconds: float, timeout: float) -> Interruption:
    """A flicker: the AC source dips to 0 V for ``seconds`` (timed by the
    source itself); returns once the analyser sees the load side live again."""
    clock = bench.clock
    before = clock.now()
    ac_source.dip(depth=1.0, duration=seconds)
    started = clock.now()
    back = analyser.wait_for(lambda r: r.voltage > LIVE_VOLTAGE, timeout, "supply back after the flicker")
    return Interruption(seconds, (before + started) / 2, (before + started) / 2 + seconds,
                        (before, started), (before + seconds, max(started + seconds, back.ts)))


def is_restoration(meter: str):
    return lambda a: a.get("code") in RESTORED and a.get("device") == meter


def meter_alerts(dcc, meter: str, start: float, end: float) -> list[dict[str, Any]]:
    """Every alert the network operator's inbox received in [start, end] about this
    meter's supply: the meter's own, and the WAN's outage alert."""
    return [a for a in alerts_between(dcc, start, end, inbox=DNO)
            if a.get("device") == meter or a.get("code") == OUTAGE_ALERT]


def check_restoration(bench, dcc, meter: str, cut: Interruption, expected: str | None, measure, tolerance: float,
                      **attrs: Any) -> dict[str, Any] | None:
    """OUT-3: the restoration alert reached the network operator within
    ``tolerance`` of the rig closing the relay, with the code its length calls
    for (``expected`` None: either is right); OUT-7: its latency, from the
    rig's switching to the sink's receive time."""
    deadline = cut.on + tolerance
    alert = first_alert(bench, dcc, cut.on_window[0], deadline, is_restoration(meter), inbox=DNO)
    code = alert.get("code") if alert else None
    if expected is not None or code is None:
        measure("outage.restore_code", code, equals=expected or "0x8F35 or 0x8F36", requirement="OUT-3",
                observed_by="dcc", **attrs)
    else:
        measure("outage.restore_code", code, requirement="OUT-3", observed_by="dcc", **attrs)
    if alert is not None:
        measure("outage.restore_alert_latency", round(float(alert["received"]) - cut.on, 3), "s",
                low=0.0, high=tolerance, requirement="OUT-7", code=code, observed_by=["dcc", "mains"], **attrs)
    return alert


def check_counts(bench, dcc, meter: str, cut: Interruption, end: float, outage_alerts: int, measure,
                 **attrs: Any) -> None:
    """Alert counts at the network operator for one interruption, watched until
    ``end``: exactly one restoration alert (not a duplicate, not one per
    flicker), ``outage_alerts`` outage alerts, and nothing else about the
    meter's supply (no alert storm)."""
    wait_until(bench, end)
    seen = meter_alerts(dcc, meter, cut.off_window[0], end)
    codes = [a.get("code") for a in seen]
    measure("outage.restoration_alerts", sum(c in RESTORED for c in codes), "alerts", equals=1,
            requirement=("OUT-3", "OUT-7"), observed_by="dcc", **attrs)
    measure("outage.outage_alerts", codes.count(OUTAGE_ALERT), "alerts", equals=outage_alerts,
            requirement=("OUT-2", "OUT-4"), observed_by="dcc", **attrs)
    others = sorted((c for c in codes if c not in RESTORED and c != OUTAGE_ALERT), key=str)
    measure("outage.other_alerts", len(others), "alerts", equals=0, requirement="OUT-4", codes=others,
            observed_by="dcc", **attrs)


def _log_code(entry: dict[str, Any]) -> str | None:
    """A logbook entry's event code, as ``0x8F57`` (the text as read if it is not one)."""
    raw = entry.get("code")
    try:
        return AlertCode.parse(str(raw)).hex
    except ValueError:
        return str(raw) if raw not in (None, "") else None


def check_logged(bench, cut: Interruption, measure, tolerance: float, restored_code: str, **attrs: Any) -> None:
    """OUT-1: one ``supply_lost`` and one ``supply_restored`` in the meter's
    log (its logbook, read from its optical port), each at the time the rig
    switched, and the logged interruption as long as the rig made it; the
    loss logged as 0x8F57 (Supply Interrupted), the restoration with the
    code its length calls for (``restored_code``)."""
    m = meter(bench)
    log = m.event_log(since=cut.off_window[0] - tolerance - 1.0)   # the logbook's times are whole seconds
    attrs = {**attrs, "source": m.source}

    def at(event: str, window: tuple[float, float]) -> list[dict[str, Any]]:
        return [e for e in log if e.get("event") == event
                and window[0] - tolerance <= float(e.get("ts", 0)) <= window[1] + tolerance]

    lost, restored = at("supply_lost", cut.off_window), at("supply_restored", cut.on_window)
    measure("outage.loss_logged", len(lost), equals=1, requirement="OUT-1", observed_by=["meter event log", m.source],
            **attrs)
    measure("outage.restoration_logged", len(restored), equals=1, requirement="OUT-1",
            observed_by=["meter event log", m.source], **attrs)
    if lost:
        measure("outage.loss_log_code", _log_code(lost[0]), equals=LOSS_LOGGED, requirement="OUT-1",
                observed_by=["meter event log", m.source], **attrs)
    if restored:
        measure("outage.restoration_log_code", _log_code(restored[0]), equals=restored_code, requirement="OUT-1",
                observed_by=["meter event log", m.source], **attrs)
    if lost and restored:
        measure("outage.logged_duration", round(float(restored[0]["ts"]) - float(lost[0]["ts"]), 3), "s",
                low=cut.length - tolerance, high=cut.length + tolerance, requirement="OUT-1",
                observed_by=["meter event log", m.source, "mains"], **attrs)


def expected_restoration(length: float, period: float, tolerance: float) -> str | None:
    """The restoration code an interruption of ``length`` calls for; None
    when it is within ``tolerance`` of the period (either is right)."""
    if length >= period + tolerance:
        return RESTORED_LONG
    if length <= period - tolerance:
        return RESTORED_SHORT
    return None


def must_alert(length: float, period: float, tolerance: float) -> bool | None:
    """OUT-2/OUT-4: an interruption at least ``tolerance`` longer than the
    period must bring an outage alert, one at least that much shorter must
    not; None in between (characterised, not judged)."""
    if length >= period + tolerance:
        return True
    if length <= period - tolerance:
        return False
    return None


def derive_threshold(probes: list[tuple[float, bool]]) -> tuple[float, str, bool]:
    """From (interruption, alerted) probes: the threshold (midway between the
    longest interruption not alerted and the shortest alerted), how it is
    bounded (``between``, ``at or below``, ``above``) and whether the probes
    are monotonic (no alert for a longer interruption than one alerted)."""
    quiet = [length for length, alerted in probes if not alerted]
    loud = [length for length, alerted in probes if alerted]
    if not loud:
        return max(quiet), "above", True
    if not quiet:
        return min(loud), "at or below", True
    monotonic = max(quiet) < min(loud)
    return (max(quiet) + min(loud)) / 2, "between", monotonic


def settle(bench, esme, dcc, tolerance: float) -> None:
    """Let the restoration alert of the meter's last outage (the bench starts
    each test with mains just switched on) reach the head end before a new
    outage starts, so that the two are not confused.  The end of that
    outage is when the rig last closed the mains relay."""
    end = last_mains_return(bench)
    if end is None:
        return
    first_alert(bench, dcc, end - 1.0, max(end + tolerance, bench.clock.now()), is_restoration(esme.name), inbox=DNO)


def outage_alert(bench, dcc, cut: Interruption, end: float) -> dict[str, Any] | None:
    """The WAN's outage alert (AD1) for ``cut`` as the network operator's inbox received it by ``end``."""
    return first_alert(bench, dcc, cut.off_window[0], end, lambda a: a.get("code") == OUTAGE_ALERT, inbox=DNO)


# ----------------------------------------------------------------------------- OUT-1, OUT-3, OUT-4
@pytest.mark.requirement("OUT-1", "OUT-3", "OUT-4", "OUT-7")
@pytest.mark.detects("no_restore_alert", "late_restore_alert", "duplicate_alerts", "alert_storm",
                     "drops_outage_alerts")
def test_short_interruption_is_logged_and_restored_but_not_alerted(bench, mains, esme, dcc, clock, settings,
                                                                   reference, measure, step):
    """Mains off for half the 3-minute period: the meter logs the loss and the
    restoration with their times; the network operator gets exactly one
    0x8F35 within the tolerance of the relay closing, and no outage alert,
    watched until the period and its tolerance have passed."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    period = reference.outage_alert_period
    length = period / 2
    with step(f"mains off for {length:g} s", seconds=length):
        cut = interrupt(bench, mains, length)
    with step("restoration alert at the network operator"):
        check_restoration(bench, dcc, esme.name, cut, RESTORED_SHORT, measure, s.alert_tolerance,
                          interruption_s=round(cut.length, 2))
    with step("the meter's event log"):
        check_logged(bench, cut, measure, s.log_tolerance, RESTORED_SHORT, interruption_s=round(cut.length, 2))
    with step("no outage alert until the period and its tolerance have passed"):
        check_counts(bench, dcc, esme.name, cut, max(cut.off + period, cut.on) + s.alert_tolerance, 0, measure,
                     interruption_s=round(cut.length, 2), **reference.attrs("outage_alert_period"))


# ----------------------------------------------------------------------------- OUT-2, OUT-3, OUT-5, OUT-7
@pytest.mark.requirement("OUT-1", "OUT-2", "OUT-3", "OUT-5", "OUT-7")
@pytest.mark.detects("no_outage_alert", "outage_alert_early", "outage_alert_late", "no_restore_alert",
                     "late_restore_alert", "wrong_restore_code", "drops_outage_alerts", "no_reserve",
                     "duplicate_alerts")
def test_long_outage_alerts_the_dcc_then_restoration(bench, mains, esme, dcc, settings, reference, measure, step):
    """Mains off for the 3-minute period plus its tolerance: one outage alert
    reaches the network operator's inbox (whether the meter, the hub or the
    WAN provider's network sent it, OUT-5) within [period, period +
    tolerance] of the rig opening the relay; on return the meter's 0x8F36,
    the code for an outage of at least the period, within the tolerance."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    period = reference.outage_alert_period
    length = period + s.alert_tolerance
    with step(f"mains off for {length:g} s", seconds=length):
        cut = interrupt(bench, mains, length)
    alert = outage_alert(bench, dcc, cut, cut.on + s.alert_tolerance)
    measure("outage.alert_latency", None if alert is None else round(float(alert["received"]) - cut.off, 3), "s",
            low=period - s.log_tolerance, high=period + s.alert_tolerance, requirement=("OUT-2", "OUT-7"),
            observed_by=["dcc", "mains"], **reference.attrs("outage_alert_period"))
    with step("restoration alert at the network operator"):
        check_restoration(bench, dcc, esme.name, cut, RESTORED_LONG, measure, s.alert_tolerance,
                          interruption_s=round(cut.length, 2))
    with step("the meter's event log"):
        check_logged(bench, cut, measure, s.log_tolerance, RESTORED_LONG, interruption_s=round(cut.length, 2))
    check_counts(bench, dcc, esme.name, cut, cut.on + s.alert_tolerance, 1, measure,
                 interruption_s=round(cut.length, 2))


# ----------------------------------------------------------------------------- OUT-3, OUT-7 through a fading HAN
@pytest.mark.requirement("OUT-3", "OUT-7")
@pytest.mark.detects("alerts_sent_once", "no_restore_alert", "drops_outage_alerts", "duplicate_alerts")
def test_restoration_alert_gets_through_a_fading_han(bench, mains, esme, dcc, han_tap, settings, reference, measure,
                                                     step):
    """The meter's link to the hub fades just as mains returns: the HAN tap
    jams the meter's restoration alert, and every frame from the meter to the
    hub after it, for ``fade_seconds`` (the meter's MAC sees no
    acknowledgement).  The meter must send the alert again until the hub
    takes it: exactly one restoration alert reaches the network operator,
    within ``fade_recovery`` of the fade ending, and no outage alert."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    hub = bench.cfg.device_of_kind("comms_hub")
    if hub is None:
        pytest.skip(f"bench {bench.name} has no comms hub on its HAN to fade the meter's link to")
    length = reference.outage_alert_period / 6
    watch = length + s.alert_tolerance + s.fade_seconds

    def fade() -> None:
        han_tap.jam(esme.name, hub, s.fade_seconds, cluster=TUNNELING, within=watch)

    with step(f"mains off for {length:g} s; the meter's link to the hub fades for {s.fade_seconds:g} s as it "
              "returns", seconds=length, fade_s=s.fade_seconds):
        cut = interrupt(bench, mains, length, during=fade)
    with step("the restoration alert at the network operator after the fade"):
        # by the end of this wait the meter has sent the alert, been jammed and sent it again
        alert = first_alert(bench, dcc, cut.on_window[0], cut.on + watch + s.fade_recovery,
                            is_restoration(esme.name), inbox=DNO)
        caught = first_jammed(han_tap, esme.name, hub, cut)
        measure("outage.fade_caught_alert", caught is not None, equals=True, requirement="OUT-7",
                fade_s=s.fade_seconds, observed_by="han tap")
        fade_end = (float(caught["ts"]) if caught else cut.on) + s.fade_seconds
        measure("outage.restore_code", alert.get("code") if alert else None, equals=RESTORED_SHORT,
                requirement="OUT-3", observed_by="dcc", fade_s=s.fade_seconds, interruption_s=round(cut.length, 2))
        if alert is not None:
            measure("outage.restore_alert_after_fade", round(float(alert["received"]) - fade_end, 3), "s",
                    low=0.0, high=s.fade_recovery, requirement="OUT-7", fade_s=s.fade_seconds,
                    observed_by=["dcc", "han tap"])
    check_counts(bench, dcc, esme.name, cut, max(fade_end + s.fade_recovery, bench.clock.now()), 0, measure,
                 fade_s=s.fade_seconds, interruption_s=round(cut.length, 2))


def first_jammed(han_tap, meter: str, hub: str, cut: Interruption) -> dict[str, Any] | None:
    """The first frame from the meter to the hub that the tap's jam caught
    after mains returned, from the tap's journal."""
    frames = han_tap.journal(since=cut.on_window[0], src=meter, dst=hub, cluster=TUNNELING)
    return next((f for f in frames if f.get("injected") == "jammed"), None)


# ----------------------------------------------------------------------------- OUT-4 characterisation
@pytest.mark.requirement("OUT-2", "OUT-3", "OUT-4", "OUT-7")
@pytest.mark.detects("outage_alert_late", "no_outage_alert", "drops_outage_alerts", "no_reserve",
                     "no_restore_alert", "wrong_restore_code")
def test_outage_alert_threshold_sweep(bench, mains, esme, dcc, clock, settings, reference, measure, step):
    """Interruptions of each length in ``suites.outage.sweep``: did an outage
    alert reach the network operator?  Lengths at least ``alert_tolerance``
    short of the 3-minute period must not alert, lengths at least that much
    beyond it must; those in between characterise the meter and network
    (OUT-4) and the threshold derived from all of them must lie within the
    tolerance of the period.  Every interruption must also bring the
    restoration alert its length calls for."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    period = reference.outage_alert_period
    ref = reference.attrs("outage_alert_period")
    probes: list[tuple[float, bool]] = []
    expected = delivered = 0
    for nominal in sorted(s.sweep):
        with step(f"mains off for {nominal:g} s", seconds=nominal):
            cut = interrupt(bench, mains, nominal)
        restored = check_restoration(bench, dcc, esme.name, cut,
                                     expected_restoration(cut.length, period, s.log_tolerance), measure,
                                     s.alert_tolerance, interruption_s=round(cut.length, 2), nominal_s=nominal)
        end = max(cut.off + period, cut.on) + s.alert_tolerance
        wait_until(bench, end)
        alerted = bool(alerts_between(dcc, cut.off_window[0], end, code=OUTAGE_ALERT, inbox=DNO))
        must = must_alert(nominal, period, s.alert_tolerance)
        measure("outage.threshold_probe", alerted, equals=must, requirement="OUT-4",
                interruption_s=round(cut.length, 2), nominal_s=nominal, observed_by="dcc", **ref)
        probes.append((cut.length, alerted))
        expected += 1 + (must is True)
        delivered += (restored is not None) + (alerted and must is True)
    threshold, bound, monotonic = derive_threshold(probes)
    measure("outage.threshold", round(threshold, 2), "s", low=period - s.alert_tolerance,
            high=period + s.alert_tolerance, requirement="OUT-4", bound=bound, observed_by="dcc", **ref)
    measure("outage.threshold_monotonic", monotonic, equals=True, requirement="OUT-4", observed_by="dcc")
    measure("outage.delivery_ratio", delivered / expected, low=s.delivery_min, requirement="OUT-7",
            expected=expected, delivered=delivered, observed_by="dcc")


# ----------------------------------------------------------------------------- OUT-1 flickers
@pytest.mark.requirement("OUT-1", "OUT-3", "OUT-4", "OUT-7")
@pytest.mark.detects("misses_flicker", "no_restore_alert", "drops_outage_alerts", "alert_storm",
                     "duplicate_alerts")
def test_every_flicker_is_logged_and_reported_once(bench, ac_source, analyser, esme, dcc, settings, measure, step):
    """``suites.outage.flickers`` short interruptions in a row (AC source dips
    to 0 V of ``flicker_seconds``): each is in the meter's log, loss and
    restoration with their times, and each brings exactly one 0x8F35 to the
    network operator and nothing else."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    delivered = 0
    for i in range(1, s.flickers + 1):
        with step(f"flicker {i}: {s.flicker_seconds:g} s at 0 V", seconds=s.flicker_seconds):
            cut = flicker(bench, ac_source, analyser, s.flicker_seconds, s.flicker_seconds + s.alert_tolerance)
        restored = check_restoration(bench, dcc, esme.name, cut, RESTORED_SHORT, measure, s.alert_tolerance,
                                     flicker=i)
        delivered += restored is not None
        check_logged(bench, cut, measure, s.log_tolerance, RESTORED_SHORT, flicker=i,
                     interruption_s=s.flicker_seconds)
        check_counts(bench, dcc, esme.name, cut, cut.on + s.alert_tolerance, 0, measure, flicker=i)
    measure("outage.delivery_ratio", delivered / s.flickers, low=s.delivery_min, requirement="OUT-7",
            expected=s.flickers, delivered=delivered, observed_by="dcc")


# ----------------------------------------------------------------------------- property 5
@pytest.mark.requirement("SUP-2")
@pytest.mark.safety(5, 6)
@pytest.mark.detects("reenables_after_mains_return", "reports_closed_when_open", "welded_contactor")
@pytest.mark.parametrize("held", ["disabled", "armed"])
def test_outage_keeps_the_supply_off_until_a_local_enable(held, bench, mains, load, analyser, esme, dcc, clock,
                                                          settings, reference, measure, step):
    """Property 5: a supply that was disabled (or armed) stays so through a
    long outage, hub dark included: the head end reads it back so, and the
    analyser sees no load current after mains returns (property 6), nor
    after a remote arm, until the local enable at the meter."""
    from .observe import hold_seconds, press_and_hold

    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    window = reference.enable_latency_bound
    with step(f"supplier makes the supply {held}"):
        dcc.disable()
        meter(bench).wait_supply("disabled")
        if held == "armed":
            dcc.arm()
            meter(bench).wait_supply("armed")
    witness = analyser_name(bench)
    try:
        load.draw(amps=LOAD_A)
        measure("outage.load_current_before", peak_current(bench, analyser, window), "A", high=LIVE_A,
                requirement="SUP-2", held=held, observed_by=witness)
        length = reference.outage_alert_period + s.alert_tolerance
        with step(f"mains off for {length:g} s", seconds=length):
            interrupt(bench, mains, length)
        measure("outage.load_current_after_return", peak_current(bench, analyser, window), "A", high=LIVE_A,
                requirement="SUP-2", held=held, observed_by=witness)
        measure("outage.supply_after_mains_return", dcc.read().get("supply"), equals=held, requirement="SUP-2",
                observed_by="dcc")
        if held == "disabled":
            with step("supplier arms the supply"):
                dcc.arm()
                meter(bench).wait_supply("armed")
            measure("outage.load_current_when_armed", peak_current(bench, analyser, window), "A", high=LIVE_A,
                    requirement="SUP-2", observed_by=witness)
        with step("local enable at the meter"):
            action = press_and_hold(clock, esme, hold_seconds(reference))
            try:
                live = analyser.wait_for(lambda r: r.current > LIVE_A,
                                         max(0.0, action.released + window - clock.now()), "load side live").current
            except TimeoutError:
                live = analyser.read().current
        measure("outage.load_current_after_local_enable", live, "A", low=LIVE_A, requirement="SUP-2",
                observed_by=witness)
    finally:
        load.off()


# ----------------------------------------------------------------------------- OUT-6
@pytest.mark.requirement("OUT-6", "OUT-7")
@pytest.mark.detects("no_power_quality_alerts")
def test_voltage_sag_and_swell_reach_the_network_operator(bench, ac_source, esme, dcc, clock, settings, measure,
                                                          step):
    """The AC source goes below the meter's sag threshold, above its swell
    threshold, then back to nominal: each crossing brings its alert to the
    network operator's inbox within the tolerance of the rig setting the
    source."""
    s = settings.outage
    meter = esme.cfg.settings
    margin = PQ_MARGIN * meter.voltage_nominal
    sag_v = round(meter.voltage_sag_threshold - margin, 1)
    swell_v = round(meter.voltage_swell_threshold + margin, 1)
    vmax = ac_source.cfg.limits.voltage_max
    if vmax is not None and swell_v > vmax:
        pytest.skip(f"{ac_source.name}: voltage_max {vmax:g} V is below a swell test at {swell_v:g} V "
                    f"(the meter's swell threshold {meter.voltage_swell_threshold:g} V + {margin:g} V)")
    original = float(ac_source.query().get("voltage") or meter.voltage_nominal)
    try:
        for level, volts, codes in (("sag", sag_v, (SAG,)), ("swell", swell_v, (SAG_END, SWELL)),
                                    ("nominal", meter.voltage_nominal, (SWELL_END,))):
            with step(f"AC source to {volts:g} V ({level})", voltage=volts):
                t0 = clock.now()
                ac_source.set(voltage=volts)
                for code in codes:
                    alert = first_alert(bench, dcc, t0, t0 + s.alert_tolerance,
                                        lambda a, c=code: (a.get("code"), a.get("device")) == (c, esme.name),  # type: ignore[misc]  # c=code binds the loop value
                                        inbox=DNO)
                    measure("power_quality.alert", alert.get("code") if alert else None, equals=code,
                            requirement="OUT-6", voltage=volts, observed_by="dcc")
                    if alert is not None:
                        measure("power_quality.alert_latency", round(float(alert["received"]) - t0, 3), "s",
                                low=0.0, high=s.alert_tolerance, requirement="OUT-7", code=code,
                                observed_by=["dcc", ac_source.name])
    finally:
        ac_source.set(voltage=original)
