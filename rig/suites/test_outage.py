"""Power outage detection and alerts (OUT-1..OUT-7), and safety property 5.

What the meter, the comms hub and the DCC do when the bench's mains goes
away and comes back, judged where the network operator would see it: at the
DCC (the alert sink), and in the meter's own event log.

Run it::

    rig run --suite outage                                  # nightly, on the lab that is up
    pytest --lab lab.yaml rig/suites/test_outage.py -k sweep # at a bench

An outage is made the way a lab makes one: the mains relay opens for the
outage and closes again (the AC source stays on, as the grid would); a
flicker is a timed dip of the AC source to 0 V; a sag or swell is the AC
source set beyond the meter's thresholds.  All times are lab seconds.

The period under test is the meter's own ``outage_alert_period``
(lab.yaml ``devices.<meter>.settings``, 180 s by default).  lab.yaml
``suites.outage`` sets the rest:

=================  ===========================================================
``alert_tolerance`` lab seconds allowed after the period for the outage alert,
                    and for any alert to reach the DCC
``sweep``           interruption lengths probed around the period (OUT-4)
``flickers``        how many flickers in a row (OUT-1)
``flicker_seconds`` length of each flicker
``log_tolerance``   how far a logged loss/restoration time may be from the
                    rig's own switching time
``delivery_min``    least share of the expected alerts that must reach the DCC
=================  ===========================================================

Each check names the device fault profiles that break what it checks
(``@pytest.mark.detects``); ``rig selftest`` shows it fails against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from rig.bus import MIN_WALL_TIMEOUT

#: the outage alert the WAN side raises at the DCC ("Power Outage Event", DUIS; docs/devices.md)
OUTAGE_ALERT = "AD1"
#: the meter's restoration alerts: shorter than the period / at least the period (OUT-3)
RESTORED_SHORT, RESTORED_LONG = "0x8F35", "0x8F36"
RESTORED = (RESTORED_SHORT, RESTORED_LONG)
#: power-quality alerts (OUT-6): sag, sag over, swell, swell over
SAG, SAG_END, SWELL, SWELL_END = "0x802C", "0x8099", "0x8024", "0x8091"
#: how far beyond a meter threshold the AC source is set, as a share of the nominal voltage
PQ_MARGIN = 0.02
#: amps the load bank draws while property 5 is checked, and the level above which the load side is live
LOAD_A = 5.0
LIVE_A = 0.5
#: the load side counts as live above this voltage (the meter's own supply-present level is 50 V)
LIVE_VOLTAGE = 50.0


# ----------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Interruption:
    """One loss of mains as the rig made it, in lab time: ``off`` and ``on``
    are the moments the switching was reported (the relay's ``changed``), and
    each edge's window runs from the command to its confirmation."""

    nominal: float
    off: float
    on: float
    off_window: tuple[float, float]
    on_window: tuple[float, float]

    @property
    def length(self) -> float:
        return self.on - self.off


def alert_period(esme) -> float:
    """The meter's outage alert period (lab.yaml ``devices.<meter>.settings``)."""
    return float(esme.cfg.settings.outage_alert_period)


def _switched_at(mains, fallback: float) -> float:
    changed = (mains.relay.state or {}).get("changed") if mains.relay is not None else None
    return float(changed) if changed is not None else fallback


def interrupt(bench, mains, seconds: float) -> Interruption:
    """Mains off for ``seconds``: the mains relay opens, then closes again
    (the AC source stays on).  A bench without a mains relay switches its AC
    source output instead."""
    clock, relay = bench.clock, mains.relay
    if relay is not None:
        relay.wait_switchable()
    before_off = clock.now()
    mains.off()
    off_seen = clock.now()
    off = _switched_at(mains, off_seen)
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


def wait_alert(bench, dcc, match, since: float, timeout: float) -> dict[str, Any] | None:
    """The first alert at the DCC received at or after ``since`` for which
    ``match(alert)`` holds, waiting up to ``timeout`` lab seconds (and at
    least the bus's minimum wall time); None if none came."""
    clock = bench.clock

    def fetch() -> dict[str, Any] | None:
        return next((a for a in dcc.fetch_alerts(since=since) if match(a)), None)

    def seen() -> dict[str, Any] | None:
        return next((a for a in dcc.events("alert") if float(a.get("received", 0)) >= since and match(a)), None)

    found = fetch() or clock.wait_for(seen, max(timeout, clock.lab_seconds(MIN_WALL_TIMEOUT)))
    return found or fetch()


def restoration_alert(bench, dcc, meter: str, cut: Interruption, timeout: float,
                      tolerance: float) -> dict[str, Any] | None:
    """The meter's restoration alert (0x8F35 or 0x8F36) for ``cut``."""
    def match(a: dict[str, Any]) -> bool:
        start = a.get("outage_start")
        return (a.get("code") in RESTORED and a.get("device") == meter
                and (start is None or float(start) >= cut.off_window[0] - tolerance))

    return wait_alert(bench, dcc, match, cut.on_window[0], timeout)


def settle(bench, esme, dcc, timeout: float) -> None:
    """Let the restoration of the last outage (the bench starts each test
    with mains just switched on) reach the DCC before a new outage starts, so
    the two are not confused."""
    last = esme.state.get("last_outage") or {}
    if last.get("end") is None:
        return
    wait_alert(bench, dcc, lambda a: a.get("code") in RESTORED and a.get("device") == esme.name,
               float(last["end"]), timeout)


def check_logged(esme, cut: Interruption, measure, tolerance: float, **attrs: Any) -> None:
    """OUT-1: one ``supply_lost`` and one ``supply_restored`` in the meter's
    log, each at the time the rig switched, and the logged interruption as
    long as the rig made it."""
    log = esme.event_log(since=cut.off_window[0] - tolerance)

    def at(event: str, window: tuple[float, float]) -> list[dict[str, Any]]:
        return [e for e in log if e.get("event") == event
                and window[0] - tolerance <= float(e.get("ts", 0)) <= window[1] + tolerance]

    lost, restored = at("supply_lost", cut.off_window), at("supply_restored", cut.on_window)
    measure("outage.loss_logged", len(lost), equals=1, requirement="OUT-1", **attrs)
    measure("outage.restoration_logged", len(restored), equals=1, requirement="OUT-1", **attrs)
    if lost and restored:
        measure("outage.logged_duration", float(restored[0]["ts"]) - float(lost[0]["ts"]), "s",
                low=cut.length - tolerance, high=cut.length + tolerance, requirement="OUT-1", **attrs)


def check_restoration(alert: dict[str, Any] | None, expected: str | None, measure, tolerance: float,
                      **attrs: Any) -> None:
    """OUT-3: the restoration alert came with the code its length calls for
    (``expected`` None: either code is right), and OUT-7: how long it took
    from the meter to the DCC."""
    code = alert.get("code") if alert else None
    if expected is not None or code is None:
        measure("outage.restore_code", code, equals=expected or "0x8F35 or 0x8F36", requirement="OUT-3", **attrs)
    else:
        measure("outage.restore_code", code, requirement="OUT-3", **attrs)
    if alert is not None:
        measure("outage.restore_alert_latency", float(alert["received"]) - float(alert["raised"]), "s",
                low=0.0, high=tolerance, requirement="OUT-7", code=code, **attrs)


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


def outage_alerts(dcc, meter: str, cut: Interruption) -> list[dict[str, Any]]:
    return dcc.fetch_alerts(since=cut.off, code=OUTAGE_ALERT, device=meter)


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


def peak_current(bench, analyser, seconds: float) -> float:
    """The highest load current the analyser sees over ``seconds`` (at least one sample)."""
    peak = [analyser.read().current]

    def sample() -> bool:
        peak.append(analyser.read().current)
        return False

    bench.clock.wait_for(sample, seconds)
    return max(peak)


# ----------------------------------------------------------------------------- OUT-1, OUT-3, OUT-4
@pytest.mark.requirement("OUT-1", "OUT-3", "OUT-4", "OUT-7")
@pytest.mark.detects("early_outage_alert", "no_restore_alert", "drops_outage_alerts")
def test_short_interruption_is_logged_and_restored_but_not_alerted(bench, mains, esme, dcc, clock, settings,
                                                                   measure, step):
    """Mains off for half the alert period: the meter logs the loss and the
    restoration with their times and sends 0x8F35; no outage alert reaches
    the DCC, watched until the period and its tolerance have passed."""
    s = settings.outage
    period = alert_period(esme)
    settle(bench, esme, dcc, s.alert_tolerance)
    length = period / 2
    with step(f"mains off for {length:g} s", seconds=length):
        cut = interrupt(bench, mains, length)
    with step("restoration alert at the DCC"):
        restored = restoration_alert(bench, dcc, esme.name, cut, s.alert_tolerance, s.log_tolerance)
        check_restoration(restored, RESTORED_SHORT, measure, s.alert_tolerance, interruption_s=cut.length)
    with step("the meter's event log"):
        check_logged(esme, cut, measure, s.log_tolerance, interruption_s=cut.length)
    with step("no outage alert until the period and its tolerance have passed"):
        bench.dwell(max(0.0, cut.off + period + s.alert_tolerance - clock.now()))
        alerts = outage_alerts(dcc, esme.name, cut)
    measure("outage.outage_alerts", len(alerts), equals=0, requirement="OUT-4", interruption_s=cut.length,
            alert_period=period)


# ----------------------------------------------------------------------------- OUT-2, OUT-3, OUT-5, OUT-7
@pytest.mark.requirement("OUT-1", "OUT-2", "OUT-3", "OUT-5", "OUT-7")
@pytest.mark.detects("no_outage_alert", "early_outage_alert", "no_restore_alert", "drops_outage_alerts",
                     "no_reserve")
def test_long_outage_alerts_the_dcc_then_restoration(bench, mains, esme, dcc, settings, measure, step):
    """Mains off for the alert period plus its tolerance: one outage alert
    reaches the DCC (the sink the network operator's feed leaves from, so
    whether the meter, the hub or the WAN provider's network sent it, OUT-5)
    within [period, period + tolerance] of the loss; on return the meter
    sends 0x8F36, the code for an outage of at least the period."""
    s = settings.outage
    period = alert_period(esme)
    settle(bench, esme, dcc, s.alert_tolerance)
    length = period + s.alert_tolerance
    with step(f"mains off for {length:g} s", seconds=length):
        cut = interrupt(bench, mains, length)
    alerts = outage_alerts(dcc, esme.name, cut)
    measure("outage.outage_alerts", len(alerts), equals=1, requirement=("OUT-2", "OUT-5"),
            interruption_s=cut.length)
    if alerts:
        first = alerts[0]
        measure("outage.alert_latency", float(first["received"]) - cut.off, "s", low=period,
                high=period + s.alert_tolerance, requirement=("OUT-2", "OUT-7"), alert_period=period)
        measure("outage.alert_to_network_operator", "dno" in (first.get("recipients") or []), equals=True,
                requirement="OUT-2")
    with step("restoration alert at the DCC"):
        restored = restoration_alert(bench, dcc, esme.name, cut, s.alert_tolerance, s.log_tolerance)
        check_restoration(restored, RESTORED_LONG, measure, s.alert_tolerance, interruption_s=cut.length)
    with step("the meter's event log"):
        check_logged(esme, cut, measure, s.log_tolerance, interruption_s=cut.length)


# ----------------------------------------------------------------------------- OUT-4 characterisation
@pytest.mark.requirement("OUT-2", "OUT-3", "OUT-4", "OUT-7")
@pytest.mark.detects("early_outage_alert", "no_outage_alert", "drops_outage_alerts", "no_reserve",
                     "no_restore_alert")
def test_outage_alert_threshold_sweep(bench, mains, esme, dcc, clock, settings, measure, step):
    """Interruptions of each length in ``suites.outage.sweep``: did an
    outage alert reach the DCC?  Lengths at least ``alert_tolerance`` short
    of the period must not alert, lengths at least that much beyond it must;
    those in between characterise the meter and network (OUT-4) and the
    threshold derived from all of them must lie within the tolerance of the
    period.  Every interruption must also bring the restoration alert its
    length calls for."""
    s = settings.outage
    period = alert_period(esme)
    settle(bench, esme, dcc, s.alert_tolerance)
    probes: list[tuple[float, bool]] = []
    expected = delivered = 0
    for nominal in sorted(s.sweep):
        with step(f"mains off for {nominal:g} s", seconds=nominal):
            cut = interrupt(bench, mains, nominal)
        restored = restoration_alert(bench, dcc, esme.name, cut, s.alert_tolerance, s.log_tolerance)
        check_restoration(restored, expected_restoration(cut.length, period, s.log_tolerance), measure,
                          s.alert_tolerance, interruption_s=round(cut.length, 2), nominal_s=nominal)
        bench.dwell(max(0.0, cut.off + period + s.alert_tolerance - clock.now()))
        alerted = bool(outage_alerts(dcc, esme.name, cut))
        must = must_alert(nominal, period, s.alert_tolerance)
        measure("outage.threshold_probe", alerted, equals=must, requirement="OUT-4",
                interruption_s=round(cut.length, 2), nominal_s=nominal, alert_period=period)
        probes.append((cut.length, alerted))
        expected += 1 + (must is True)
        delivered += (restored is not None) + (alerted and must is True)
    threshold, bound, monotonic = derive_threshold(probes)
    measure("outage.threshold", round(threshold, 2), "s", low=period - s.alert_tolerance,
            high=period + s.alert_tolerance, requirement="OUT-4", alert_period=period, bound=bound)
    measure("outage.threshold_monotonic", monotonic, equals=True, requirement="OUT-4")
    measure("outage.delivery_ratio", delivered / expected, low=s.delivery_min, requirement="OUT-7",
            expected=expected, delivered=delivered)


# ----------------------------------------------------------------------------- OUT-1 flickers
@pytest.mark.requirement("OUT-1", "OUT-3", "OUT-7")
@pytest.mark.detects("misses_flicker", "no_restore_alert", "drops_outage_alerts")
def test_every_flicker_is_logged_and_reported(bench, ac_source, analyser, esme, dcc, settings, measure, step):
    """``suites.outage.flickers`` short interruptions in a row (AC source
    dips to 0 V of ``flicker_seconds``): each is in the meter's log, loss and
    restoration with their times, and each brings a 0x8F35 to the DCC."""
    s = settings.outage
    settle(bench, esme, dcc, s.alert_tolerance)
    delivered = 0
    for i in range(1, s.flickers + 1):
        with step(f"flicker {i}: {s.flicker_seconds:g} s at 0 V", seconds=s.flicker_seconds):
            cut = flicker(bench, ac_source, analyser, s.flicker_seconds, s.flicker_seconds + s.alert_tolerance)
        restored = restoration_alert(bench, dcc, esme.name, cut, s.alert_tolerance, s.log_tolerance)
        check_restoration(restored, RESTORED_SHORT, measure, s.alert_tolerance, flicker=i)
        delivered += restored is not None
        check_logged(esme, cut, measure, s.log_tolerance, flicker=i, interruption_s=s.flicker_seconds)
    measure("outage.delivery_ratio", delivered / s.flickers, low=s.delivery_min, requirement="OUT-7",
            expected=s.flickers, delivered=delivered)


# ----------------------------------------------------------------------------- property 5
@pytest.mark.requirement("SUP-2")
@pytest.mark.safety(5, 6)
@pytest.mark.detects("reenables_after_mains_return", "reports_closed_when_open")
@pytest.mark.parametrize("held", ["disabled", "armed"])
def test_outage_keeps_the_supply_off_until_a_local_enable(held, bench, mains, load, analyser, esme, dcc, settings,
                                                          measure, step):
    """Property 5: a supply that was disabled (or armed) stays so through a
    long outage, hub dark included; the analyser sees no load current after
    mains returns (property 6), nor after a remote arm, until the local
    enable at the meter."""
    s = settings.outage
    window = settings.safety.enable_latency_bound
    settle(bench, esme, dcc, s.alert_tolerance)
    with step(f"supplier makes the supply {held}"):
        dcc.disable()
        esme.wait_supply("disabled")
        if held == "armed":
            dcc.arm()
            esme.wait_supply("armed")
    try:
        load.draw(amps=LOAD_A)
        measure("outage.load_current_before", peak_current(bench, analyser, window), "A", high=LIVE_A,
                requirement="SUP-2", held=held)
        length = alert_period(esme) + s.alert_tolerance
        with step(f"mains off for {length:g} s", seconds=length):
            cut = interrupt(bench, mains, length)
        state = esme.wait_state(lambda st: st.get("powered") and float(st.get("ts", 0)) >= cut.on_window[0],
                                s.alert_tolerance, "meter powered again")
        measure("outage.supply_after_mains_return", state.get("supply"), equals=held, requirement="SUP-2")
        measure("outage.load_current_after_return", peak_current(bench, analyser, window), "A", high=LIVE_A,
                requirement="SUP-2", held=held)
        if held == "disabled":
            with step("supplier arms the supply"):
                dcc.arm()
                esme.wait_supply("armed")
            measure("outage.load_current_when_armed", peak_current(bench, analyser, window), "A", high=LIVE_A,
                    requirement="SUP-2")
        with step("local enable at the meter"):
            esme.local_enable()
            try:
                live = analyser.wait_for(lambda r: r.current > LIVE_A, window, "load side live").current
            except TimeoutError:
                live = analyser.read().current
        measure("outage.load_current_after_local_enable", live, "A", low=LIVE_A, requirement="SUP-2")
    finally:
        load.off()


# ----------------------------------------------------------------------------- OUT-6
@pytest.mark.requirement("OUT-6", "OUT-7")
@pytest.mark.detects("no_power_quality_alerts")
def test_voltage_sag_and_swell_reach_the_network_operator(bench, ac_source, esme, dcc, clock, settings, measure,
                                                          step):
    """The AC source goes below the meter's sag threshold, above its swell
    threshold, then back to nominal: each crossing brings its alert to the
    DCC, addressed to the network operator, within the tolerance."""
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
                    alert = wait_alert(bench, dcc, lambda a, c=code: (a.get("code"), a.get("device")) == (c, esme.name),
                                       t0, s.alert_tolerance)
                    measure("power_quality.alert", alert.get("code") if alert else None, equals=code,
                            requirement="OUT-6", voltage=volts)
                    if alert is not None:
                        measure("power_quality.alert_latency", float(alert["received"]) - t0, "s", low=0.0,
                                high=s.alert_tolerance, requirement="OUT-7", code=code)
                        measure("power_quality.to_network_operator", "dno" in (alert.get("recipients") or []),
                                equals=True, requirement="OUT-6", code=code)
    finally:
        ac_source.set(voltage=original)
