"""Devices under test in a rig script: the meter, hub, PPMID, IHD, gas meter
and the head end, over the bus only.

::

    with Lab.open("lab.yaml") as lab:
        bench = lab.bench("bench-1")
        bench.dcc.disable("esme")                       # supplier disables, remotely
        bench.dcc.arm("esme")
        bench.esme.wait_supply("armed", timeout=30)
        t0 = bench.clock.now()
        bench.ppmid.enable()                            # press, then hold, on the PPMID
        bench.esme.wait_supply("enabled", timeout=30)
        bench.dcc.wait_alert("0x8154", timeout=30, since=t0)
        bench.esme.han["2.4GHz"]["lqi"]                 # link quality the meter reports

Nothing here imports a twin: the same script drives a real meter through
its adapter.  Every handle reads the device's retained ``state`` and
``presence`` and keeps the ``event/<name>`` messages it has seen
(``handle.events()``); ``request(op, **args)`` sends one of the device's
operations (docs/devices.md lists them) and raises
:class:`rig.bus.CommandError` with the device's reason when it refuses.

Waits take lab seconds (and last at least two wall seconds, as bus
requests do) and raise ``TimeoutError`` naming what did not happen.  For
events, pass ``since=`` a lab time taken *before* the action
(``t0 = bench.clock.now()``): events are kept from the moment the handle
was first used.

Device operations do not check the bench lease: a device (or its adapter)
cannot know who holds the agent's lease.  The lease still serialises
runs, because every suite takes it before touching a bench.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bench_port import BenchPort
from .bus import MIN_WALL_TIMEOUT, CommandError, Watch
from .config import UnknownPart
from .contract import han_node

#: lab seconds a device op may take by default (a HAN round trip, retries included)
DEFAULT_TIMEOUT = 30.0


def _at_least(bench: BenchPort, timeout: float) -> float:
    """A wait on the bus lasts at least MIN_WALL_TIMEOUT wall seconds, whatever
    the clock scale: message delivery does not speed up in a simulation."""
    return max(timeout, bench.clock.lab_seconds(MIN_WALL_TIMEOUT))


def _events_of(watch: Watch, name: str | None, since: float | None) -> list[dict[str, Any]]:
    with watch.cond:
        history = list(watch.history)
    out = []
    for topic, payload in history:
        ev = topic.rsplit("/", 1)[1]
        if (name is None or ev == name) and isinstance(payload, dict) and \
                (since is None or float(payload.get("ts", 0)) >= since):
            out.append({"event": ev, **payload})
    return out


def han_up(state: dict[str, Any]) -> bool:
    """Whether a device's reported state has it on the HAN: a link up on any band."""
    return any(isinstance(link, dict) and link.get("up") for link in (state.get("han") or {}).values())


class DeviceHandle:
    """Any device under test: its state, presence, events and operations.
    A kind's handle class is named by its declaration (rig/parts.py)."""

    def __init__(self, bench: BenchPort, name: str):
        cfg = bench.cfg.devices.get(name)
        if cfg is None:
            raise UnknownPart(f"bench {bench.name} has no device '{name}'; devices: "
                              f"{', '.join(bench.cfg.devices) or 'none'}")
        self.bench, self.name, self.cfg = bench, name, cfg
        self.node = bench.node("device", name)
        self._state = bench.watch(self.node.state)
        self._presence = bench.watch(self.node.presence)
        self._events = bench.watch(f"{self.node.base}/event/+")

    # ------------------------------------------------------------------ what it reports
    @property
    def state(self) -> dict[str, Any]:
        """The device's retained state (empty until it has published one)."""
        return self._state.get(self.node.state) or {}

    @property
    def presence(self) -> dict[str, Any]:
        return self._presence.get(self.node.presence) or {}

    @property
    def online(self) -> bool:
        return bool(self.presence.get("online"))

    @property
    def han(self) -> dict[str, dict[str, Any]]:
        """Link quality per band: ``{"2.4GHz": {"rssi", "lqi", "per", "up"}}``."""
        return self.state.get("han") or {}

    @property
    def on_han(self) -> bool:
        """A HAN link up on any band, as the device reports it (:func:`han_up`)."""
        return han_up(self.state)

    @property
    def summary(self) -> str:
        return str(self.state.get("summary", ""))

    # ------------------------------------------------------------------ operations and waits
    def request(self, op: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> dict[str, Any]:
        """Send ``op`` to the device; returns its result or raises CommandError."""
        return self.bench.request(self.node, op, {k: v for k, v in args.items() if v is not None}, timeout=timeout)

    def wait_state(self, predicate: Callable[[dict[str, Any]], object], timeout: float = DEFAULT_TIMEOUT,
                   what: str = "") -> dict[str, Any]:
        """Wait until the retained state satisfies ``predicate``; return it."""
        got = self._state.wait_for(predicate, timeout, topic=self.node.state, min_wall=MIN_WALL_TIMEOUT)
        if got is None:
            raise TimeoutError(f"{self.bench.name}/{self.name}: {what or 'state condition'} not met within "
                               f"{timeout:g} lab s (state: {self.summary or 'none'})")
        return got

    def wait_online(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        got = self._presence.wait_for(lambda p: p.get("online"), timeout, topic=self.node.presence, min_wall=2.0)
        if got is None:
            raise TimeoutError(f"{self.bench.name}/{self.name} is not online (is `rig sim` or its adapter running?)")

    def events(self, name: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Events seen so far (each with its ``event`` name), oldest first."""
        return _events_of(self._events, name, since)

    def wait_event(self, name: str, predicate: Callable[[dict[str, Any]], object] | None = None,
                   timeout: float = DEFAULT_TIMEOUT, since: float | None = None) -> dict[str, Any]:
        """Wait for an ``event/<name>`` (after ``since``) satisfying ``predicate``."""
        def check() -> dict[str, Any] | None:
            return next((e for e in _events_of(self._events, name, since) if predicate is None or predicate(e)), None)

        got = self.bench.clock.wait_for(check, _at_least(self.bench, timeout), condition=self._events.cond)
        if not got:
            raise TimeoutError(f"{self.bench.name}/{self.name}: no '{name}' event"
                               f"{' matching the condition' if predicate else ''} within {timeout:g} lab s")
        return got

    def status(self) -> dict[str, Any]:
        """The device's full state, asked for now (not the retained copy)."""
        return self.request("status")

    def __repr__(self) -> str:
        return f"<{self.cfg.kind} {self.bench.name}/{self.name}: {self.summary or 'no state'}>"


class EsmeHandle(DeviceHandle):
    """The electricity meter."""

    @property
    def supply(self) -> str | None:
        """``enabled``, ``armed`` or ``disabled`` as the meter reports it."""
        return self.state.get("supply")

    @property
    def contactor(self) -> str | None:
        """``closed`` or ``open`` as the meter reports it (check the load side with the analyser: property 6)."""
        return self.state.get("contactor")

    @property
    def credit(self) -> float | None:
        return (self.state.get("prepayment") or {}).get("credit")

    def wait_supply(self, supply: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return self.wait_state(lambda s: s.get("supply") == supply, timeout, f"supply {supply}")

    def press(self, button: str) -> dict[str, Any]:
        """Press a meter button: ``enable`` (shows the enable prompt),
        ``emergency_credit``, ``display``."""
        return self.request("press", button=button)

    def hold(self, button: str, seconds: float) -> dict[str, Any]:
        """Hold a meter button for ``seconds`` lab seconds (returns after the hold)."""
        return self.request("hold", timeout=seconds + DEFAULT_TIMEOUT, button=button, seconds=seconds)

    def local_enable(self, hold: float | None = None) -> dict[str, Any]:
        """The SUP-7 sequence at the meter: press ``enable``, then hold it
        (default: the meter's hold_time + 0.5 s)."""
        self.press("enable")
        return self.hold("enable", hold if hold is not None else self.cfg.settings.hold_time + 0.5)

    def enter_utrn(self, code: str) -> dict[str, Any]:
        """Type a top-up code on the meter's keypad."""
        return self.request("enter_utrn", code=code)

    def event_log(self, since: float | None = None, event: str | None = None) -> list[dict[str, Any]]:
        """The meter's own event log (kept across outages)."""
        return self.request("event_log", since=since, event=event)["entries"]


class PpmidHandle(DeviceHandle):
    """The prepayment interface device."""

    @property
    def display(self) -> dict[str, Any]:
        return self.state.get("display") or {}

    def press(self, button: str, code: str | None = None) -> dict[str, Any]:
        """Press ``enable``, ``emergency_credit``, ``utrn`` (with ``code``) or ``display``."""
        return self.request("press", button=button, code=code)

    def hold(self, button: str, seconds: float) -> dict[str, Any]:
        return self.request("hold", timeout=seconds + DEFAULT_TIMEOUT, button=button, seconds=seconds)

    def enable(self, hold: float | None = None) -> dict[str, Any]:
        """Enable supply from the PPMID: press ``enable``, then hold it (default: the
        PPMID's own ``hold_time`` + 0.5 s).  Returns the PPMID's outcome
        (``delivered``, ``accepted``, ``supply``)."""
        self.press("enable")
        return self.hold("enable", hold if hold is not None else self.cfg.settings.hold_time + 0.5)

    def emergency_credit(self) -> dict[str, Any]:
        return self.press("emergency_credit")

    def enter_utrn(self, code: str) -> dict[str, Any]:
        return self.press("utrn", code=code)


class CommsHubHandle(DeviceHandle):
    """The communications hub."""

    @property
    def power(self) -> str | None:
        """``mains``, ``reserve`` or ``off``."""
        return self.state.get("power")

    @property
    def mirror(self) -> dict[str, Any]:
        return self.state.get("mirror") or {}

    @property
    def joined(self) -> list[str]:
        return list(self.state.get("joined") or [])

    def link_test(self, peer: str, band: str | None = None, frames: int = 50) -> dict[str, Any]:
        """Measure the HAN link between the hub and ``peer`` on ``band``:
        ``frames`` test frames, each sent once (no MAC retries).  Returns
        ``{"frames", "acked", "per", "rssi", "lqi", "method", ...}``: ``per``
        the share of frames not acknowledged, ``rssi``/``lqi`` the means
        over the acknowledged ones (``rssi`` None when none came back)::

            bench.attenuator("attenuator_ppmid").set(40)
            bench.comms_hub.link_test("ppmid", "868MHz", frames=50)["per"]

        A hub that has no ``link_test`` op (a real hub, whose coordinator
        is a zigpy bridge on the test HAN) is skipped: the peer's own node
        is asked (the bridge's ``link_test``, ``method: zcl_round_trip``)."""
        args = {"peer": peer, "band": band, "frames": frames}
        timeout = DEFAULT_TIMEOUT + frames * 0.5
        try:
            return self.request("link_test", timeout=timeout, **args)
        except CommandError as exc:
            if exc.code != "unknown_op":
                raise
        if peer not in self.bench.cfg.devices:
            raise UnknownPart(f"bench {self.bench.name} has no device '{peer}'; devices: "
                              f"{', '.join(self.bench.cfg.devices) or 'none'}")
        return self.bench.request(self.bench.node("device", peer), "link_test",
                                  {k: v for k, v in args.items() if v is not None}, timeout=timeout)


class GsmeHandle(DeviceHandle):
    """The gas meter."""

    def set_flow(self, m3_per_hour: float) -> dict[str, Any]:
        return self.request("set_flow", m3_per_hour=m3_per_hour)


class IhdHandle(DeviceHandle):
    """The in-home display."""

    @property
    def display(self) -> dict[str, Any]:
        return self.state.get("display") or {}

    def press(self, button: str = "display") -> dict[str, Any]:
        return self.request("press", button=button)


class HanTapHandle:
    """The bench's HAN tap: a sniffer's journal of the frames on the air, and
    an attacker's radio that replays, holds back or forges frames (safety
    property 4).  On the simulated bench it is the medium's node
    (``rig/v1/<bench>/han/medium``); a real bench has it when a sniffer and
    injector radio is declared.  Times are the tap's lab times.

    ::

        tap = bench.han_tap
        tap.delay("ppmid", "esme", cluster=0x0705, command=1, seconds=8)   # next PPMID enable, 8 s late
        frames = tap.journal(since=t0, src="ppmid", cluster=0x0705)
    """

    PREPAYMENT, CHANGE_SUPPLY = 0x0705, 0x01

    def __init__(self, bench: BenchPort):
        self.bench = bench
        self.node = han_node(bench.name)
        self._presence = bench.watch(self.node.presence)
        self._looked = False

    #: wall seconds the first look waits for the tap's presence: on a loaded machine a fresh
    #: subscription's retained presence can take a second or more, and a tap missed here skips checks
    PRESENCE_WAIT = 5.0

    @property
    def available(self) -> bool:
        """Is a tap on this bench's HAN answering?  The first look waits up to
        :attr:`PRESENCE_WAIT` wall seconds for its presence (it comes at once
        when the tap is up); later looks only read what has come since."""
        wait = 0.2 if self._looked else self.PRESENCE_WAIT
        got = self._presence.wait_for(lambda p: p.get("online"), 0.0, topic=self.node.presence, min_wall=wait)
        self._looked = True
        return bool(got)

    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.bench.request(self.node, op, {k: v for k, v in args.items() if v is not None},
                                  timeout=DEFAULT_TIMEOUT)

    def journal(self, since: float | None = None, src: str | None = None, dst: str | None = None,
                cluster: int | None = None, command: int | None = None) -> list[dict[str, Any]]:
        """Application frames seen on their first hop (``ts``, ``src``, ``dst``, ``command`` name, ...)."""
        return self._request("journal", since=since, src=src, dst=dst, cluster=cluster, command=command)["frames"]

    def replay(self, src: str, dst: str, cluster: int | None = None, command: int | None = None) -> dict[str, Any]:
        return self._request("replay", src=src, dst=dst, cluster=cluster, command=command)

    def delay(self, src: str, dst: str, seconds: float, cluster: int | None = None, command: int | None = None,
              within: float | None = None) -> dict[str, Any]:
        """Hold the next such frame (if one comes within ``within`` lab s, default 60), and every
        later one between the two, off the air for ``seconds``, then send them on in order."""
        return self._hold("delay", src, dst, seconds, cluster, command, within)

    def jam(self, src: str, dst: str, seconds: float, cluster: int | None = None, command: int | None = None,
            within: float | None = None) -> dict[str, Any]:
        """Jam the link from ``src`` to ``dst``: the next such frame (if one comes within ``within``
        lab s, default 60), and every later one between the two for ``seconds``, is lost on the air."""
        return self._hold("jam", src, dst, seconds, cluster, command, within)

    def _hold(self, op: str, src: str, dst: str, seconds: float, cluster: int | None, command: int | None,
              within: float | None) -> dict[str, Any]:
        return self._request(op, src=src, dst=dst, cluster=cluster, command=command, seconds=seconds, within=within)

    def forge(self, src: str, dst: str, cluster: int | None = None, command: int | None = None) -> dict[str, Any]:
        return self._request("forge", src=src, dst=dst, cluster=cluster, command=command)

    def link_test(self, peer: str, band: str | None = None, frames: int = 50) -> dict[str, Any]:
        """``frames`` single-attempt frames from the injector to ``peer`` (from the
        coordinator's place): ``{"frames", "acked", "per", "rssi", "lqi", "method": "tap_mac_ack"}``."""
        return self.bench.request(self.node, "link_test", {k: v for k, v in
                                                           {"peer": peer, "band": band, "frames": frames}.items()
                                                           if v is not None}, timeout=DEFAULT_TIMEOUT + frames * 0.5)


