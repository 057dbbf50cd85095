"""What the suites observe, and how: the rig's own instruments and times.

Every value a check records comes from here or from an instrument handle:

* the load side from the **power analyser** (the independent witness,
  safety property 6): :func:`peak_current`, :func:`expect_dead_for`,
  :func:`wait_live`;
* local actions timed by the **rig**: :func:`press_and_hold` returns the
  earliest moment the button can have been released (the rig's send time
  plus the hold it asked for), which every enable latency is measured from;
* alerts as the **head end's sink** received them (its ``received`` lab
  time, never the device's ``raised``): :func:`alerts_between`;
* HAN frames as the **HAN tap** saw them on the air.

Requirement values come from the ``reference`` fixture (rig/reference.py),
never from a device's settings.  Measurement attribute ``observed_by``
names the parts whose readings a value rests on (the safety pack lists
them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

#: amps the load bank draws during a check: the analyser sees supply by it
LOAD_A = 5.0
#: above this the load side counts as live, below it as dead (a real analyser's noise floor is ~mA)
LIVE_A = 0.5
#: lab seconds added to the requirement's hold time when the rig holds a button
HOLD_MARGIN = 0.5
#: the ZCL Prepayment cluster and its change_supply command (a PPMID's enable on the air)
PREPAYMENT, CHANGE_SUPPLY = 0x0705, 0x01


def analyser_name(bench) -> str:
    return bench.cfg.wiring.analyser or "analyser"


def peak_current(bench, analyser, seconds: float) -> float:
    """The highest load current the analyser saw over ``seconds`` lab seconds (at least one sample)."""
    peak = [analyser.read().current]

    def sample() -> bool:
        peak.append(analyser.read().current)
        return False

    bench.clock.wait_for(sample, seconds)
    return max(peak)


def expect_dead_for(analyser, window: float, what: str) -> None:
    """Safety property 6: for ``window`` lab seconds the analyser must see no
    load current; fail at the first live sample."""
    try:
        reading = analyser.wait_for(lambda r: r.current > LIVE_A, window)
    except TimeoutError:
        return
    pytest.fail(f"{what}: the load side went live ({reading.current:.2f} A at lab {reading.ts:.1f})")


def dead_for(bench, analyser, window: float, measure, name: str, **attrs: Any) -> float:
    """Record the peak load current over ``window`` lab seconds as ``name``
    (limit: dead), observed by the analyser; returns it."""
    peak = peak_current(bench, analyser, window)
    measure(name, round(peak, 3), "A", high=LIVE_A, observed_by=analyser_name(bench), window_s=window, **attrs)
    return peak


def wait_live(analyser, timeout: float):
    """The first analyser sample with the load side live within ``timeout`` lab s, or None."""
    try:
        return analyser.wait_for(lambda r: r.current > LIVE_A, timeout)
    except TimeoutError:
        return None


@dataclass(frozen=True)
class Action:
    """A local action as the rig made it: ``sent`` (rig lab time before the
    first command) and ``released`` (the earliest the hold can have ended:
    the hold command's send time plus its length)."""

    sent: float
    released: float


def press_and_hold(clock, device, seconds: float, press: bool = True) -> Action:
    """Press ``enable`` (unless ``press`` is False), then hold it ``seconds``
    lab seconds, on a meter or PPMID handle; returns once the hold is over,
    as a finger (or an actuator) lets go: what the device does with it next
    (a PPMID waiting on the meter's answer, say) is for the analyser and the
    tap to see, not something the rig waits for before it looks."""
    sent = clock.now()
    if press:
        device.press("enable")
    t_hold = clock.now()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            device.hold("enable", seconds)
        except Exception as exc:  # noqa: BLE001 - a dark device ignores its button; the analyser judges
            errors.append(exc)

    threading.Thread(target=hold, name=f"hold:{device.name}", daemon=True).start()
    clock.sleep(max(0.0, t_hold + seconds - clock.now()))   # the hold itself: the action, not a wait for it
    return Action(sent, t_hold + seconds)


def hold_seconds(reference) -> float:
    """How long the rig holds an enable button: the requirement's hold time and a margin."""
    return reference.hold_time + HOLD_MARGIN


def enable_latency(bench, analyser, action: Action, bound: float, measure, path: str, reference=None,
                   **attrs: Any) -> float | None:
    """Record ``safety.enable_latency``: lab seconds from the rig's release of
    the button to the analyser's first live sample, against the bound (the
    analyser is watched for the bound and ten seconds more: a late close is a
    failure, not a pass).  Returns it, or None when the load never went live."""
    reading = wait_live(analyser, max(0.0, action.released + bound + 10.0 - bench.clock.now()))
    latency = None if reading is None else round(reading.ts - action.released, 3)
    ref = reference.attrs("enable_latency_bound") if reference is not None else {}
    measure("safety.enable_latency", latency, "s", low=0.0, high=bound, requirement="SUP-2", path=path,
            observed_by=[analyser_name(bench), "rig"], **ref, **attrs)
    return latency


# ----------------------------------------------------------------------------- the head end's sink
def alerts_between(dcc, start: float, end: float, code: str | tuple[str, ...] | None = None,
                   inbox: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
    """Alerts the sink received in [start, end] (lab time), of ``code`` (one or several)."""
    codes = (code,) if isinstance(code, str) else code
    out = []
    for a in dcc.fetch_alerts(since=start, inbox=inbox, device=device):
        if float(a["received"]) > end:
            continue
        if codes is not None and str(a.get("code", "")).lower() not in {c.lower() for c in codes}:
            continue
        out.append(a)
    return out


def wait_until(bench, lab_time: float) -> None:
    """Wait (lab seconds) until the lab clock reads ``lab_time``."""
    remaining = lab_time - bench.clock.now()
    if remaining > 0:
        bench.dwell(remaining)


def first_alert(bench, dcc, start: float, deadline: float, match: Callable[[dict[str, Any]], bool],
                inbox: str | None = None) -> dict[str, Any] | None:
    """The first alert received in [start, deadline] for which ``match`` holds:
    waits on the sink's events until the lab clock passes the deadline, but
    judges by the sink's ``received`` time, so an alert late by the deadline
    is late at every clock scale."""
    def seen() -> dict[str, Any] | None:
        for a in dcc.events("alert"):
            if start <= float(a.get("received", -1)) <= deadline and (inbox is None or a.get("inbox") == inbox) \
                    and match(a):
                return a
        return None

    found = seen()
    if found is None and deadline > bench.clock.now():
        found = dcc.watch_alert(lambda a: start <= float(a.get("received", -1)) <= deadline
                                and (inbox is None or a.get("inbox") == inbox) and match(a),
                                deadline - bench.clock.now())
    if found is None:   # the event stream can miss one: ask the sink itself
        found = next((a for a in alerts_between(dcc, start, deadline, inbox=inbox) if match(a)), None)
    return found


# ----------------------------------------------------------------------------- the HAN tap
def ppmid_enables_on_air(tap, ppmid: str, since: float, until: float | None = None) -> list[dict[str, Any]]:
    """The PPMID's enable frames (Prepayment change_supply) the tap saw on the air since ``since``."""
    frames = tap.journal(since=since, src=ppmid, cluster=PREPAYMENT, command=CHANGE_SUPPLY)
    return [f for f in frames if until is None or float(f["ts"]) <= until]
