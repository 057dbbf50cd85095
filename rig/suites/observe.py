"""What the suites observe, and how: only what a real lab has.

Every value a check records, and every state a check waits for, comes
from here or from an instrument handle, through the parts a real bench
has, so that a check reads the same on the simulated bench and on a bench
whose meter and PPMID are black boxes (``backend: sealed``, or real ones):

* the load side from the **power analyser** (the independent witness,
  safety property 6): :func:`peak_current`, :func:`expect_dead_for`,
  :func:`wait_live`;
* local actions made by the rig's **actuators** on the devices' buttons
  (lab.yaml ``actuators``), every edge time-stamped by the bench's agent:
  :func:`press_and_hold` returns the moment the agent released the button,
  which every enable latency is measured from; :func:`press`,
  :func:`enter_code` (a keypad);
* the meter's **own published registers** (:class:`Meter`): its optical
  port (IEC 62056-21 readout: supply ``96.3.10``, the logbook), or, on a
  bench without an optical probe on it, the head end's remote read;
* alerts as the **head end** received them (their ``received`` lab time,
  never the device's ``raised``): :func:`alerts_between`,
  :func:`first_alert`; remote reads through it;
* HAN frames and links as the **HAN tap** sees them on the air
  (:func:`link_test`, :func:`wait_link`, :func:`ppmid_enables_on_air`).

A check that needs one of these and the bench lacks it is skipped, with
the reason (``pytest.skip``), never passed.  None of this uses a
simulated device's own operations or retained state: those serve the
twins' own tests.

Requirement values come from the ``reference`` fixture (rig/reference.py),
never from a device's settings.  Measurement attribute ``observed_by``
names the parts whose readings a value rests on (the safety pack lists
them).
"""

from __future__ import annotations

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
#: the ZCL Tunneling cluster: GBCS alerts travel in it from the meter to the hub
TUNNELING = 0x0704


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


# ----------------------------------------------------------------------------- the rig's hands: actuators
@dataclass(frozen=True)
class Action:
    """A local action as the rig made it, timed by the bench's agent: ``sent``
    (rig lab time before the first command), ``pressed`` (the agent's stamp
    of the hold's button going down), ``released`` (its stamp of the button
    coming up: enable latencies run from here) and ``held`` (released -
    pressed, as the agent did it)."""

    sent: float
    pressed: float
    released: float

    @property
    def held(self) -> float:
        return self.released - self.pressed


def actuator(bench, device: str, button: str):
    """The actuator on ``device``'s ``button``, or skip the check saying the bench has none."""
    buttons = bench.cfg.actuators.get(device) or {}
    if button not in buttons:
        pytest.skip(f"bench {bench.name} has no actuator on {device}'s '{button}' button (lab.yaml actuators): "
                    "the rig cannot press it")
    return bench.actuator(device)


def press(bench, device: str, button: str):
    """Press ``device``'s ``button`` once with its actuator; the agent's Actuation."""
    return actuator(bench, device, button).press(button)


def press_and_hold(clock, device, seconds: float, press: bool = True) -> Action:
    """Press ``enable`` (unless ``press`` is False), then hold it ``seconds``
    lab seconds, with the actuators on a meter's or PPMID's button (``device``
    is its handle)."""
    bench = device.bench
    act = actuator(bench, device.name, "enable")
    sent = clock.now()
    if press:
        act.press("enable")
    done = act.hold("enable", seconds)
    if done.interrupted:
        pytest.fail(f"the hold of {device.name}'s enable button was cut short: {done.interrupted}")
    return Action(sent, done.pressed, done.released)


def enter_code(bench, device: str, code: str):
    """Type ``code`` on ``device``'s keypad and press enter (its actuators)."""
    missing = [k for k in sorted({f"key_{c}" for c in code} | {"key_enter"})
               if k not in (bench.cfg.actuators.get(device) or {})]
    if missing:
        pytest.skip(f"bench {bench.name} has no actuator on {device}'s keypad keys {', '.join(missing)} "
                    "(lab.yaml actuators): the rig cannot type a code there")
    return bench.actuator(device).type(code)


def keypad(bench, *devices: str) -> str | None:
    """The first of ``devices`` whose whole keypad has actuators, or None."""
    from rig.parts import KEYPAD as KEYPAD_KEYS

    for d in devices:
        if all(k in (bench.cfg.actuators.get(d) or {}) for k in KEYPAD_KEYS):
            return d
    return None


# ----------------------------------------------------------------------------- the meter's own registers
class Meter:
    """The meter as a lab reads it, from its own published registers: its
    optical port (IEC 62056-21 readout) when the lab declares an optical
    probe on it; else, for a meter bridged onto the bus by a zigpy radio
    (``backend: zigpy``), its ZCL Metering attributes as the bridge reads
    them; else the head end's remote read.

    ``source`` names it (``observed_by``).  The registers give the supply
    state (``96.3.10``: 0 disconnected, 1 connected, 2 ready for
    reconnection; ZCL ``supply_status``), the logbook (``P.98``) gives the
    event log (only an optical probe gives one); a meter that does not
    answer has no supply."""

    SUPPLY = {"0": "disabled", "1": "enabled", "2": "armed"}

    def __init__(self, bench, name: str | None = None):
        self.bench = bench
        self.name = name or bench.cfg.wiring.meter or bench.cfg.device_of_kind("esme")
        probes = [n for n, i in bench.cfg.instruments.items() if i.kind == "optical_probe"
                  and (i.device or bench.cfg.wiring.meter) == self.name]
        self.probe = probes[0] if probes else None
        dev = bench.cfg.devices.get(self.name)
        self.bridged = self.probe is None and dev is not None and dev.backend == "zigpy"
        self.source = self.probe or (f"{self.name} (zigpy bridge)" if self.bridged else "dcc")
        # a read of a dark meter costs the probe's whole timeout (wall seconds): a wait allows a few
        io = bench.cfg.instruments[self.probe].timeout if self.probe else 2.0
        self.least_wait = bench.clock.lab_seconds(3 * io + 1.0)

    def readout(self) -> dict[str, Any] | None:
        """One optical readout now, or None when the meter does not answer."""
        from rig.bus import CommandError

        if self.probe is None:
            return None
        try:
            return self.bench.instrument(self.probe).read()
        except CommandError as exc:
            if exc.code in ("timeout", "failed"):
                return None
            raise

    def supply(self) -> str | None:
        """The supply state the meter publishes now (None: it does not answer)."""
        from rig.bus import CommandError

        if self.probe is not None:
            got = self.readout()
            if got is None:
                return None
            value = ((got.get("registers") or {}).get("96.3.10") or {}).get("value")
            return self.SUPPLY.get(str(value).strip()) if value is not None else None
        try:
            if self.bridged:
                return self.bench.device(self.name).request("read", timeout=10.0).get("supply")
            return self.bench.dcc.read(self.name).get("supply")
        except CommandError as exc:
            if exc.code == "timeout":
                return None
            raise

    def wait_supply(self, supply: str, timeout: float = 30.0) -> None:
        """Wait until the meter publishes ``supply`` (lab seconds)."""
        seen: list[str | None] = []

        def check() -> bool:
            seen[:] = [self.supply()]
            return seen[0] == supply

        if not self.bench.clock.wait_for(check, max(timeout, self.least_wait), poll=self.bench.clock.lab_seconds(0.01)):
            raise TimeoutError(f"{self.bench.name}/{self.name}: supply {supply} not published within {timeout:g} lab s "
                               f"(last: {seen[0] if seen else 'none'}, read from {self.source})")

    def wait_answering(self, timeout: float = 60.0) -> str:
        """Wait until the meter answers (it has supply and is up); the supply state it gave."""
        got = self.bench.clock.wait_for(self.supply, max(timeout, self.least_wait),
                                        poll=self.bench.clock.lab_seconds(0.01))
        if not got:
            raise TimeoutError(f"{self.bench.name}/{self.name} did not answer on {self.source} within {timeout:g} "
                               "lab s")
        return got

    def event_log(self, since: float | None = None, event: str | None = None) -> list[dict[str, Any]]:
        """The meter's event log as its optical port gives it (the logbook's
        latest entries: ``{"ts", "code", "event"}``, whole seconds); skips
        the check on a bench with no optical probe on this meter."""
        if self.probe is None:
            pytest.skip(f"bench {self.bench.name} has no optical probe on {self.name}: the meter's event log "
                        "cannot be read")
        got = None
        for _ in range(3):          # a readout lost on the line is read again
            got = self.readout()
            if got is not None:
                break
        if got is None:
            raise AssertionError(f"{self.name} did not answer its optical port ({self.probe})")
        return [e for e in got.get("logbook") or [] if e.get("ts") is not None
                and (since is None or float(e["ts"]) >= since) and (event is None or e.get("event") == event)]


def meter(bench, name: str | None = None) -> Meter:
    """The bench's meter as a lab reads it (one per bench handle)."""
    return bench.handle(("observe-meter", name or ""), lambda: Meter(bench, name))


def last_mains_return(bench) -> float | None:
    """When the rig last closed the mains relay (the agent's stamp), if it is closed."""
    relay = bench.mains.relay if bench.cfg.wiring.mains_relay else None
    state = (relay.state or {}) if relay is not None else {}
    return float(state["changed"]) if state.get("state") == "on" and state.get("changed") is not None else None


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


def tap_or_skip(bench):
    tap = bench.han_tap
    if not tap.available:
        pytest.skip(f"bench {bench.name} has no HAN tap (sniffer and injector radio) answering")
    return tap


def bands(bench, device: str) -> list[str]:
    """The HAN bands ``device`` has (lab.yaml ``han.band``)."""
    band = bench.cfg.devices[device].han.band
    return ["2.4GHz", "868MHz"] if band == "dual" else [band]


def link_test(bench, peer: str, band: str | None = None, frames: int = 50) -> dict[str, Any]:
    """The HAN link between the coordinator and ``peer`` on ``band``: ``frames``
    single-attempt frames from the HAN tap's injector (``method:
    tap_mac_ack``), or, on a bench without a tap, from the peer's own HAN
    bridge (a zigpy radio: ``zcl_round_trip``).  Skips the check when
    neither answers."""
    from rig.bus import CommandError

    tap = bench.han_tap
    if tap.available:
        return tap.link_test(peer, band, frames)
    dev = bench.cfg.devices.get(peer)
    if dev is not None and dev.backend == "zigpy":
        try:
            return bench.device(peer).request("link_test", timeout=30.0 + frames * 0.5, peer=peer, band=band,
                                              frames=frames)
        except CommandError as exc:
            if exc.code != "unknown_op":
                raise
    pytest.skip(f"bench {bench.name} has nothing to measure a HAN link with (no HAN tap, no HAN bridge on {peer})")


def link_up(bench, device: str, frames: int = 10) -> bool:
    """Whether ``device`` has a working HAN link on any of its bands (a link
    test per band loses less than half its frames)."""
    def per(result: dict[str, Any]) -> float:
        value = result.get("per")
        return 1.0 if value is None else float(value)

    return any(per(link_test(bench, device, band, frames)) < 0.5 for band in bands(bench, device))


def wait_link(bench, device: str, up: bool, timeout: float) -> None:
    """Wait (lab seconds) until ``device``'s HAN link is up (any band) or down (every band)."""
    if not bench.clock.wait_for(lambda: link_up(bench, device) == up, timeout,
                                poll=bench.clock.lab_seconds(0.01)):
        raise TimeoutError(f"{bench.name}: {device}'s HAN link not {'up' if up else 'down'} within {timeout:g} lab s")


def wait_enable_answered(bench, ppmid: str, meter_name: str, since: float, timeout: float = 30.0) -> bool:
    """Wait until the HAN tap has seen the meter answer an enable from the
    PPMID sent since ``since`` (a button's command goes out when the hold
    ends, and its answer comes a HAN round trip later).  False, at once, on
    a bench without a tap."""
    tap = bench.han_tap
    if not tap.available:
        return False

    def answered() -> bool:
        return any(f.get("to_client") and not f.get("general") for f in
                   tap.journal(since=since, src=meter_name, dst=ppmid, cluster=PREPAYMENT))

    bench.wait(answered, timeout, f"the meter answering {ppmid}'s enable on the air")
    return True


def wait_ppmid_informed(bench, ppmid: str, meter_name: str, since: float, timeout: float = 60.0) -> bool:
    """Wait until the meter has answered a read of its supply status from
    the PPMID since ``since`` (the HAN tap sees the answer on the air): the
    PPMID can then know what to show.  False on a bench without a tap."""
    tap = bench.han_tap
    if not tap.available:
        return False

    def answered() -> bool:
        return any(f.get("to_client") and f.get("delivered") for f in
                   tap.journal(since=since, src=meter_name, dst=ppmid, cluster=0x0702))

    bench.wait(answered, timeout, f"the meter answering {ppmid}'s read of its supply status")
    return True
