"""The simulated HAN: an IEEE 802.15.4 medium at 2.4 GHz and 868 MHz.

The comms hub is the coordinator (HAN-2): every other device joins it, polls
it on each band it has, and its traffic to another device is routed through
it (two hops: PPMID -> hub -> ESME).  Every hop of every frame is decided by
the link budget of :mod:`rig.propagation` at the instant it is sent:

* the RF path between the two devices (``lab.yaml`` ``rf_paths``: premises
  and attenuator; pairs without a path use the default premises, and the
  ESME and hub, which sit together in GB installations, 0.5 m and no wall);
* the attenuator's current setting, read from the physical bench model;
* CSMA-CA backoff, air time from the band's data rate, and the MAC ACK: an
  attempt succeeds when the frame and its ACK both arrive, each drawn
  against the packet error rate; up to ``han.max_retries`` retries with
  802.15.4 backoff exponents; a receiver drops MAC duplicates (a frame
  received whose ACK was lost is delivered once);
* randomness from ``han.seed``: each link draws from its own generator
  seeded with (seed, sender, receiver, band), so a link's sequence of
  outcomes repeats run to run for the same sequence of frames.

A link test (:meth:`HanRadio.link_test`, the comms hub's ``link_test`` op)
sends MAC test frames: real ZCL payloads, one transmission each (no MAC
retries), acknowledged by the peer's MAC but not passed to its application,
drawn from their own random stream so that testing a link does not change
the outcomes of the devices' own traffic.

Frames carry real ZCL payloads (:mod:`rig.protocol.zcl`), the APS security
frame counter of their originator, which receivers use to drop replays, and
whether their security check passes (``authentic``).  The medium is also
the rig's HAN tap, what a sniffer and an attacker's radio on the premises
would be (safety property 4): a journal of every application frame on its
first hop (:attr:`HanMedium.journal`), and an injector that replays a
recorded frame unchanged, holds the next frame of a kind back and releases
it late (a jammer with a recorder, or a slow network), or sends a forged
one (right format, wrong key).

Not modelled: collisions between simultaneous frames (one bench's traffic
is light), interference, frequency agility.

Everything runs on one :class:`EventLoop` thread per bench, in lab time.
Device code called from the loop (frame handlers) must not block; blocking
requests (:meth:`HanRadio.request`) are for other threads.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .. import propagation as prop
from ..clock import LabClock
from ..config import Band, BenchConfig, HanConfig, Premises
from .event_loop import EventLoop, Handle

log = logging.getLogger(__name__)

#: lab seconds between a device's polls of its parent, per band (ZigBee SE
#: end devices poll every few seconds; sleepy battery devices far less)
POLL_PERIOD = 7.5
#: consecutive failed frames (after retries) before a link counts as down
LINK_DOWN_AFTER = 3
#: a coordinator counts a polling child gone when unheard this long (lab s)
CHILD_TIMEOUT = (LINK_DOWN_AFTER + 1) * POLL_PERIOD
#: attempts kept per link for the measured packet error rate
PER_WINDOW = 32
#: frames a sniffer keeps per pair of devices (a PPMID's reads of the meter fill a short capture
#: within a minute, and the enable a replay needs must still be in it after a reboot)
CAPTURE_DEPTH = 1024
#: application frames the sniffer's journal keeps (first hop of each)
JOURNAL_DEPTH = 20000
#: PSDU octets of a MAC data request (poll)
POLL_PSDU_OCTETS = 18
CCA_SYMBOLS = 8
COLOCATED = Premises(distance_m=0.5, walls=0, floors=0)


# ----------------------------------------------------------------------------- frames and links
@dataclass
class HanFrame:
    """An application frame on the HAN (one APS data frame)."""

    src: str                   # originating device name
    dst: str                   # final destination device name
    cluster_id: int
    zcl: bytes
    counter: int               # originator's APS security frame counter
    created: float             # lab time the originator built it
    src_eui: str = ""
    kind: str = "data"         # "data" or "poll"
    # filled in on delivery (last hop)
    band: str | None = None
    rssi: float | None = None
    lqi: int | None = None
    hops: list[str] = field(default_factory=list)
    replayed: bool = False
    #: False: the frame's APS security check fails (a forger without the link key built it)
    authentic: bool = True
    #: how the rig's HAN injector put it on the air: "", "replayed", "delayed", "forged"
    injected: str = ""

    def copy(self) -> "HanFrame":
        return HanFrame(self.src, self.dst, self.cluster_id, self.zcl, self.counter, self.created,
                        self.src_eui, self.kind, self.band, self.rssi, self.lqi, list(self.hops), self.replayed,
                        self.authentic, self.injected)


@dataclass
class Hold:
    """A one-shot interception armed on the medium: the next data frame from
    ``src`` to ``dst`` (of that cluster and command) is kept off the air at
    its first hop, and so is every later frame between the two, as a jammer
    with a recorder (or a slow network) would; ``seconds`` later they go on
    unchanged, that frame first, the rest in their order, so the receiver's
    frame counters do not give the delay away.  A ``lost`` hold is a jammer
    without the recorder (or a deep fade): what it caught never arrives."""

    src: str
    dst: str
    cluster: int | None
    command: int | None
    seconds: float
    armed: float
    #: lab time after which a hold that has caught nothing lapses
    lapses: float = float("inf")
    caught: HanFrame | None = None
    released: float | None = None
    behind: list[HanFrame] = field(default_factory=list)
    #: a jam: the frames caught are lost, not sent on
    lost: bool = False


def frame_matches(f: HanFrame, cluster: int | None, command: int | None) -> bool:
    """Is ``f`` of that cluster and (cluster-specific) command id?"""
    if cluster is not None and f.cluster_id != cluster:
        return False
    return command is None or (len(f.zcl) >= 3 and (f.zcl[0] & 0x03) == 1 and f.zcl[2] == command)


@dataclass
class LinkState:
    """What one radio knows of its link to one peer on one band."""

    peer: str
    band: str
    up: bool = False
    rssi: float | None = None
    lqi: int = 0
    failures: int = 0                       # consecutive failed frames
    attempts: deque = field(default_factory=lambda: deque(maxlen=PER_WINDOW))
    last_change: float = 0.0
    last_heard: float | None = None

    @property
    def per(self) -> float | None:
        if not self.attempts:
            return None
        return round(1.0 - sum(self.attempts) / len(self.attempts), 3)

    def report(self) -> dict[str, Any]:
        return {"rssi": self.rssi, "lqi": self.lqi, "per": self.per, "up": self.up}


@dataclass
class LinkTest:
    """What a link test counted: test frames sent, acknowledged, and the
    RSSI/LQI the tester's radio measured on the peer's ACKs."""

    peer: str
    band: str
    psdu_octets: int
    sent: int = 0
    acked: int = 0
    rssi_sum: float = 0.0
    rssi_count: int = 0
    lqi_sum: int = 0
    started: float = 0.0
    finished: float | None = None

    def add(self, acked: bool, rssi: float | None, lqi: int) -> None:
        self.sent += 1
        if acked:
            self.acked += 1
            self.lqi_sum += lqi
            if rssi is not None:
                self.rssi_sum += rssi
                self.rssi_count += 1

    def report(self) -> dict[str, Any]:
        """The link test's result as the bus contract gives it (docs/devices.md)."""
        return {
            "peer": self.peer, "band": self.band, "frames": self.sent, "acked": self.acked,
            "per": round(1.0 - self.acked / self.sent, 4) if self.sent else None,
            "rssi": round(self.rssi_sum / self.rssi_count, 1) if self.rssi_count else None,
            "lqi": round(self.lqi_sum / self.acked, 1) if self.acked else 0,
            "psdu_octets": self.psdu_octets, "retries": 0, "method": "mac_single_attempt",
            "lab_seconds": round((self.finished or self.started) - self.started, 4),
        }


def band_list(band: str) -> list[str]:
    return ["2.4GHz", "868MHz"] if band == "dual" else [band]


# ----------------------------------------------------------------------------- the medium
class HanMedium:
    """The shared radio medium of one bench."""

    def __init__(self, han: HanConfig, bench: BenchConfig, attenuation: Callable[[str | None], float],
                 clock: LabClock, loop: EventLoop):
        self.han, self.bench, self.clock, self.loop = han, bench, clock, loop
        self.attenuation = attenuation
        self.radios: dict[str, "HanRadio"] = {}
        self._rngs: dict[tuple[str, str, str, str], random.Random] = {}
        self.captured: dict[tuple[str, str], deque] = {}
        #: every application frame as the sniffer saw it on its first hop, oldest first
        self.journal: deque = deque(maxlen=JOURNAL_DEPTH)
        self.holds: list[Hold] = []
        self.stats: dict[str, dict[str, float]] = {
            b: {"frames": 0, "delivered": 0, "lost": 0, "attempts": 0, "retries": 0, "air_time": 0.0}
            for b in han.bands
        }
        self.listeners: list[Callable[[str, HanFrame, dict], None]] = []

    def attach(self, radio: "HanRadio") -> None:
        self.radios[radio.name] = radio
        radio.medium = self

    @property
    def coordinator(self) -> "HanRadio | None":
        return next((r for r in self.radios.values() if r.coordinator), None)

    # -- link budget ------------------------------------------------------------
    def path(self, a: str, b: str, band: str) -> tuple[Premises, str | None]:
        """The premises and attenuator between two devices on a band."""
        for p in self.bench.rf_paths.values():
            if p.band == band and set(p.between) == {a, b}:
                return p.premises, p.attenuator
        kinds = {self.bench.devices[n].kind for n in (a, b) if n in self.bench.devices}
        if kinds == {"esme", "comms_hub"}:
            return COLOCATED, None
        return Premises(), None

    def budget(self, a: str, b: str, band: str) -> prop.LinkBudget:
        premises, attenuator = self.path(a, b, band)
        return prop.link_budget(band, self.han.bands[cast(Band, band)], premises, self.attenuation(attenuator))

    def _rng(self, a: str, b: str, band: str, stream: str = "") -> random.Random:
        key = (a, b, band, stream)
        rng = self._rngs.get(key)
        if rng is None:
            suffix = f":{stream}" if stream else ""
            digest = hashlib.sha256(f"{self.han.seed}:{a}:{b}:{band}{suffix}".encode()).digest()
            rng = self._rngs[key] = random.Random(int.from_bytes(digest[:8], "big"))
        return rng

    # -- one hop ----------------------------------------------------------------
    def transmit(self, sender: "HanRadio", receiver_name: str, band: str, frame: HanFrame,
                 done: Callable[[bool], None] | None = None, retries: int | None = None,
                 on_ack: Callable[[bool, float | None, int], None] | None = None) -> None:
        """Send ``frame`` one hop, with CSMA backoff, ACK and retries; deliver
        it to the receiver when it arrives and call ``done(acked)`` when the
        sender knows the outcome.  Must run on the loop.

        ``retries`` overrides ``han.max_retries`` (0: one attempt, as a link
        test sends); ``on_ack(acked, rssi, lqi)`` is called with ``done``,
        with the RSSI and LQI the sender's radio measured on the ACK (None
        and 0 when no ACK came).  Test frames (``kind="test"``) draw from
        their own random stream and leave the sender's link state alone."""
        receiver = self.radios.get(receiver_name)
        first_hop = frame.kind == "data" and sender.name == frame.src
        if first_hop and self._intercept(sender, receiver_name, band, frame, done):
            return
        bm = self.han.bands[cast(Band, band)]
        budget = self.budget(sender.name, receiver_name, band)
        test = frame.kind == "test"
        rng = self._rng(sender.name, receiver_name, band, "test" if test else "")
        sym = prop.symbol_seconds(bm)
        sizes = [POLL_PSDU_OCTETS] if frame.kind == "poll" else prop.fragments(len(frame.zcl))
        listening = receiver is not None and receiver.listening(band)
        st = self.stats[band]
        st["frames"] += 1
        t = 0.0
        delivered_at: float | None = None
        acked = True
        attempts_total = 0
        for size in sizes:
            got_fragment = False
            fragment_acked = False
            be = prop.MIN_BE
            for attempt in range((self.han.max_retries if retries is None else max(0, retries)) + 1):
                attempts_total += 1
                t += rng.randint(0, 2 ** be - 1) * prop.UNIT_BACKOFF_SYMBOLS * sym + CCA_SYMBOLS * sym
                air = prop.air_time(bm, size)
                t += air
                st["air_time"] += air
                data_ok = listening and rng.random() >= budget.per(size)
                ack_ok = data_ok and rng.random() >= budget.per(prop.ACK_PSDU_OCTETS)
                if not test:
                    sender.record_attempt(receiver_name, band, ack_ok, budget if ack_ok else None)
                if data_ok:
                    got_fragment = True
                if ack_ok:
                    t += prop.TURNAROUND_SYMBOLS * sym + prop.air_time(bm, prop.ACK_PSDU_OCTETS)
                    st["air_time"] += prop.air_time(bm, prop.ACK_PSDU_OCTETS)
                    fragment_acked = True
                    break
                t += prop.ACK_WAIT_SYMBOLS * sym
                be = min(be + 1, prop.MAX_BE)
            if not got_fragment:
                acked = False
                delivered_at = None
                break
            acked = acked and fragment_acked
            delivered_at = t
        st["attempts"] += attempts_total
        st["retries"] += attempts_total - len(sizes)
        delivered = delivered_at is not None and all(True for _ in sizes)
        if delivered and delivered_at is not None and receiver is not None:
            st["delivered"] += 1
            hop = frame.copy()
            hop.band, hop.rssi, hop.lqi = band, budget.rssi, budget.lqi(sizes[-1])
            hop.hops.append(sender.name)
            self.loop.call_later(delivered_at, receiver.receive, hop, sender.name)
        else:
            st["lost"] += 1
        if not test:
            sender.record_frame(receiver_name, band, acked)
        if frame.kind == "data" and not frame.injected:
            self.captured.setdefault((frame.src, frame.dst), deque(maxlen=CAPTURE_DEPTH)).append(frame)
        if first_hop:
            self.journal.append({"ts": self.clock.now(), "src": frame.src, "dst": frame.dst, "hop": receiver_name,
                                 "cluster": frame.cluster_id, "zcl": frame.zcl, "counter": frame.counter,
                                 "created": frame.created, "band": band, "delivered": delivered,
                                 "injected": frame.injected, "authentic": frame.authentic})
        for fn in self.listeners:
            try:
                fn("hop", frame, {"from": sender.name, "to": receiver_name, "band": band, "delivered": delivered,
                                  "acked": acked, "attempts": attempts_total, "rssi": budget.rssi,
                                  "lqi": budget.lqi(sizes[-1]), "delay": t})
            except Exception:  # noqa: BLE001
                log.exception("HAN listener failed")
        if done is not None:
            self.loop.call_later(t, done, acked)
        if on_ack is not None:
            self.loop.call_later(t, on_ack, acked, budget.rssi if acked else None,
                                 budget.lqi(prop.ACK_PSDU_OCTETS) if acked else 0)

    # -- the rig's HAN injector: replay, delay, forge ---------------------------------
    def recorded(self, src: str, dst: str, cluster: int | None = None, command: int | None = None) -> HanFrame | None:
        """The last frame recorded on the air from ``src`` to ``dst`` (of that cluster and command)."""
        return next((f for f in reversed(self.captured.get((src, dst), ())) if frame_matches(f, cluster, command)),
                    None)

    def inject(self, frame: HanFrame, how: str) -> HanFrame | None:
        """Put ``frame`` on the air from where its originator sits, marked as the injector's (``how``)."""
        radio = self.radios.get(frame.src)
        if radio is None:
            return None
        copy = frame.copy()
        copy.injected, copy.replayed = how, how == "replayed"
        copy.band, copy.rssi, copy.lqi, copy.hops = None, None, None, []
        self.loop.call_soon(radio.forward, copy, None, True)
        return copy

    def replay(self, src: str, dst: str, cluster: int | None = None, command: int | None = None) -> HanFrame | None:
        """Re-send the last frame recorded from ``src`` to ``dst`` (of that
        cluster, and cluster-specific command id), unchanged (same frame
        counter), as an attacker with a recorder would."""
        frame = self.recorded(src, dst, cluster, command)
        return self.inject(frame, "replayed") if frame is not None else None

    def hold_next(self, src: str, dst: str, cluster: int | None, command: int | None, seconds: float,
                  within: float = 60.0, lost: bool = False) -> Hold:
        """Arm a :class:`Hold`: the next such frame (if one comes within ``within``
        lab seconds) reaches its destination ``seconds`` late; with ``lost``, it
        and every frame between the two for ``seconds`` never arrive (a jam)."""
        now = self.clock.now()
        hold = Hold(src, dst, cluster, command, seconds, now, lapses=now + within, lost=lost)
        self.holds.append(hold)
        return hold

    def _intercept(self, sender: "HanRadio", receiver: str, band: str, frame: HanFrame,
                   done: Callable[[bool], None] | None) -> bool:
        if frame.injected or not self.holds:
            return False
        now = self.clock.now()
        self.holds = [h for h in self.holds if h.caught is not None or h.lapses >= now]
        hold = next((h for h in self.holds if h.released is None and h.src == frame.src and h.dst == frame.dst
                     and (h.caught is not None or frame_matches(frame, h.cluster, h.command))), None)
        if hold is None:
            return False
        if hold.caught is None:
            hold.caught = frame
            self.loop.call_later(hold.seconds, self._release, hold)
        else:
            hold.behind.append(frame)
        self.journal.append({"ts": self.clock.now(), "src": frame.src, "dst": frame.dst, "hop": receiver,
                             "cluster": frame.cluster_id, "zcl": frame.zcl, "counter": frame.counter,
                             "created": frame.created, "band": None,
                             "delivered": False, "injected": "jammed" if hold.lost else "held",
                             "authentic": frame.authentic})
        sender.record_frame(receiver, band, False)     # jammed: the sender's MAC saw no ACK
        if done is not None:
            self.loop.call_soon(done, False)
        return True

    def _release(self, hold: Hold) -> None:
        hold.released = self.clock.now()
        self.holds.remove(hold)
        if hold.lost:
            return
        for frame in [hold.caught, *hold.behind]:
            if frame is not None:
                self.inject(frame, "delayed")

    def links(self) -> dict[str, dict[str, Any]]:
        """The current link budget of every joined pair, for the HAN node's state."""
        out: dict[str, dict[str, Any]] = {}
        coord = self.coordinator
        if coord is None:
            return out
        for radio in self.radios.values():
            if radio is coord:
                continue
            for band in radio.bands:
                if band not in coord.bands:
                    continue
                b = self.budget(radio.name, coord.name, band)
                premises, attenuator = self.path(radio.name, coord.name, band)
                out[f"{radio.name}~{coord.name}@{band}"] = {
                    "band": band, "attenuator": attenuator, "attenuation_db": b.attenuation_db,
                    "path_loss_db": round(b.path_loss_db, 1), "rssi": b.rssi, "margin_db": round(b.margin_db, 1),
                    "lqi": b.lqi(), "per": round(b.per(64), 4),
                    "link": radio.links[(coord.name, band)].report() if (coord.name, band) in radio.links else None,
                }
        return out


# ----------------------------------------------------------------------------- a device's radio
FrameHandler = Callable[[HanFrame], None]


class HanRadio:
    """A device's 802.15.4 radio and ZigBee stack, as far as the rig models it.

    ``radio.send("esme", cluster_id, zcl_bytes)`` routes through the
    coordinator; ``radio.request(...)`` waits (lab seconds, never on the loop)
    for the answer with the same ZCL sequence number; ``on_frame`` is called
    on the loop for every frame addressed to this device that passes the
    replay check (``accept_replays`` turns the check off: a fault profile)."""

    def __init__(self, name: str, eui64: str, band: str, loop: EventLoop, clock: LabClock,
                 coordinator: bool = False, poll_period: float | None = POLL_PERIOD,
                 powered: Callable[[], bool] = lambda: True):
        self.name, self.eui64, self.loop, self.clock = name, eui64, loop, clock
        self.bands = band_list(band)
        self.coordinator = coordinator
        self.poll_period = poll_period
        self.powered = powered
        self.medium: HanMedium | None = None
        self.on_frame: FrameHandler | None = None
        self.on_link_change: Callable[[LinkState], None] | None = None
        self.forward_filter: Callable[[HanFrame], bool] | None = None
        self.accept_replays = False
        self.accept_forged = False
        self.forged_dropped = 0
        #: send to a peer directly instead of through the coordinator (a fault profile)
        self.direct = False
        self.links: dict[tuple[str, str], LinkState] = {}
        self._counter = 0
        self._tsn = 0
        self._counters_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], tuple[threading.Event, list]] = {}
        self._poll: Handle | None = None
        self.replays_dropped = 0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        if not self.coordinator and self.poll_period:
            self._poll = self.loop.call_every(self.poll_period, self.poll, first=0.05)

    def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()

    def listening(self, band: str) -> bool:
        return band in self.bands and self.powered()

    # -- counters ---------------------------------------------------------------
    def next_tsn(self) -> int:
        with self._lock:
            self._tsn = (self._tsn + 1) & 0xFF
            return self._tsn

    def _next_counter(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def forget_counters(self) -> None:
        """Lose the table of frame counters seen (a device that kept it in RAM, on a reboot)."""
        with self._lock:
            self._counters_seen.clear()

    # -- link state -------------------------------------------------------------
    def link(self, peer: str, band: str) -> LinkState:
        key = (peer, band)
        if key not in self.links:
            self.links[key] = LinkState(peer, band)
        return self.links[key]

    def record_attempt(self, peer: str, band: str, ok: bool, budget: prop.LinkBudget | None) -> None:
        ls = self.link(peer, band)
        ls.attempts.append(1 if ok else 0)
        if budget is not None:
            ls.rssi, ls.lqi = budget.rssi, budget.lqi()

    def record_frame(self, peer: str, band: str, acked: bool) -> None:
        ls = self.link(peer, band)
        before = ls.up
        if acked:
            ls.failures = 0
            ls.up = True
        else:
            ls.failures += 1
            if ls.failures >= LINK_DOWN_AFTER:
                ls.up = False
                ls.lqi = 0
                ls.rssi = None
        if ls.up != before:
            ls.last_change = self.clock.now()
            if self.on_link_change is not None:
                self.on_link_change(ls)

    def _heard(self, peer: str, frame: HanFrame) -> None:
        if frame.band is None:
            return
        ls = self.link(peer, frame.band)
        ls.rssi, ls.lqi = frame.rssi, frame.lqi or 0
        ls.last_heard = self.clock.now()
        if self.coordinator and not ls.up:
            # a coordinator knows a child is there when it hears it
            ls.up, ls.failures, ls.last_change = True, 0, self.clock.now()

    def parent(self) -> str | None:
        if self.coordinator or self.medium is None:
            return None
        coord = self.medium.coordinator
        return coord.name if coord is not None else None

    def band_to(self, peer: str) -> str:
        """The band to use towards a peer.  A device uses the first shared
        band whose link to its parent is up; the coordinator answers a child
        on the band it last heard that child on (the child's choice)."""
        peer_radio = self.medium.radios.get(peer) if self.medium else None
        shared = [b for b in self.bands if peer_radio is None or b in peer_radio.bands] or self.bands
        if self.coordinator:
            now = self.clock.now()
            heard = [(last, b) for b in shared
                     if (last := self.link(peer, b).last_heard) is not None and now - last < CHILD_TIMEOUT]
            if heard:
                return max(heard)[1]
            return shared[0]
        for b in shared:
            if self.link(peer, b).up:
                return b
        return shared[0]

    def han_report(self) -> dict[str, dict[str, Any]]:
        """Per band: the link to the parent (a device) or the weakest joined
        child (the coordinator), for the device's retained state."""
        out: dict[str, dict[str, Any]] = {}
        if self.coordinator:
            now = self.clock.now()
            for band in self.bands:
                children = [ls for (peer, b), ls in list(self.links.items()) if b == band]
                for ls in children:
                    if ls.up and ls.last_heard is not None and now - ls.last_heard > CHILD_TIMEOUT \
                            and self.medium is not None and ls.peer in self.medium.radios \
                            and self.medium.radios[ls.peer].poll_period:
                        ls.up = False
                up = [ls for ls in children if ls.up]
                worst = min(up, key=lambda ls: ls.lqi) if up else None
                out[band] = {
                    "rssi": worst.rssi if worst else None, "lqi": worst.lqi if worst else 0,
                    "per": worst.per if worst else None, "up": self.powered(),
                    "joined": sorted(ls.peer for ls in up),
                }
            return out
        parent = self.parent()
        for band in self.bands:
            out[band] = (self.link(parent, band).report() if parent
                         else {"rssi": None, "lqi": 0, "per": None, "up": False})
        return out

    # -- sending ----------------------------------------------------------------
    def poll(self) -> None:
        """MAC data request to the parent on every band (keeps links measured)."""
        parent = self.parent()
        if parent is None or not self.powered() or self.medium is None:
            return
        for band in self.bands:
            f = HanFrame(self.name, parent, 0, b"", 0, self.clock.now(), self.eui64, kind="poll")
            self.medium.transmit(self, parent, band, f)

    def send(self, dst: str, cluster_id: int, zcl: bytes, done: Callable[[bool], None] | None = None,
             force: bool = False) -> HanFrame:
        """Send an application frame to ``dst`` (thread-safe).  ``force``
        sends even if the device has just lost power: its last gasp."""
        frame = HanFrame(self.name, dst, cluster_id, zcl, self._next_counter(), self.clock.now(), self.eui64)
        if self.loop.on_loop:
            self.forward(frame, done, force)
        else:
            self.loop.call_soon(self.forward, frame, done, force)
        return frame

    def forward(self, frame: HanFrame, done: Callable[[bool], None] | None = None, force: bool = False) -> None:
        """Put a frame on its next hop (on the loop)."""
        if self.medium is None or not (force or self.powered()):
            if done is not None:
                done(False)
            return
        nxt: str | None
        if frame.dst in self.medium.radios and (self.coordinator or self.direct or frame.dst == self.parent()):
            nxt = frame.dst
        else:
            nxt = self.parent()
        if nxt is None:
            if done is not None:
                done(False)
            return
        self.medium.transmit(self, nxt, self.band_to(nxt), frame, done)

    def request(self, dst: str, cluster_id: int, zcl: bytes, tsn: int, timeout: float) -> HanFrame | None:
        """Send and wait up to ``timeout`` lab seconds for the frame from
        ``dst`` with the same ZCL sequence number; None if none came."""
        if self.loop.on_loop:
            raise RuntimeError("HanRadio.request blocks: call it from a device thread, not the HAN loop")
        ev = threading.Event()
        box: list = []
        with self._lock:
            self._pending[(dst, tsn)] = (ev, box)
        self.send(dst, cluster_id, zcl)
        self.clock.wait_event(ev, timeout)
        with self._lock:
            self._pending.pop((dst, tsn), None)
        return box[0] if box else None

    def link_test(self, peer: str, band: str, frames: int, cluster_id: int, zcl: bytes,
                  timeout: float) -> LinkTest:
        """Measure the link to ``peer`` on ``band``: send ``frames`` test
        frames carrying ``zcl`` one after another, each a single transmission
        (no MAC retries), and count those the peer's MAC acknowledged.  The
        packet error rate is then the share of single attempts that failed
        (frame or ACK lost), as in the 802.15.4 definition of sensitivity.

        Blocks up to ``timeout`` lab seconds (a frame takes a few lab
        milliseconds): call it from a device thread, never from the loop."""
        if self.loop.on_loop:
            raise RuntimeError("HanRadio.link_test blocks: call it from a device thread, not the HAN loop")
        medium = self.medium
        if medium is None:
            raise RuntimeError(f"{self.name} is not on a HAN medium")
        psdu = prop.fragments(len(zcl))[0]
        result = LinkTest(peer, band, psdu, started=self.clock.now())
        finished = threading.Event()
        stop = threading.Event()

        def one(index: int) -> None:
            if index >= frames or stop.is_set() or not self.powered():
                result.finished = self.clock.now()
                finished.set()
                return
            frame = HanFrame(self.name, peer, cluster_id, zcl, 0, self.clock.now(), self.eui64, kind="test")

            def outcome(acked: bool, rssi: float | None, lqi: int) -> None:
                result.add(acked, rssi, lqi)
                one(index + 1)

            medium.transmit(self, peer, band, frame, retries=0, on_ack=outcome)

        self.loop.call_soon(one, 0)
        if not self.clock.wait_event(finished, timeout):
            stop.set()
            self.clock.wait_event(finished, 1.0)
        return result

    def reply(self, to: HanFrame, zcl: bytes) -> None:
        self.send(to.src, to.cluster_id, zcl)

    # -- receiving --------------------------------------------------------------
    def receive(self, frame: HanFrame, from_radio: str) -> None:
        """A frame arrived over one hop (on the loop)."""
        if not self.powered():
            return
        self._heard(from_radio, frame)
        if frame.kind in ("poll", "test"):
            return
        if frame.dst != self.name:
            if self.coordinator:
                if self.forward_filter is None or self.forward_filter(frame):
                    self.forward(frame)
            return
        if not frame.authentic and not self.accept_forged:
            self.forged_dropped += 1
            log.info("%s dropped a frame claiming to be from %s: its security check fails", self.name, frame.src)
            return
        last = self._counters_seen.get(frame.src, 0)
        if frame.counter <= last and not self.accept_replays:
            self.replays_dropped += 1
            log.info("%s dropped a replayed frame from %s (counter %d <= %d)", self.name, frame.src,
                     frame.counter, last)
            return
        self._counters_seen[frame.src] = max(last, frame.counter)
        if len(frame.zcl) >= 2:
            key = (frame.src, frame.zcl[1])
            with self._lock:
                pending = self._pending.get(key)
            if pending is not None and _is_answer(frame.zcl):
                ev, box = pending
                box.append(frame)
                ev.set()
                return
        if self.on_frame is not None:
            self.on_frame(frame)


def _is_answer(zcl: bytes) -> bool:
    """Server-to-client frames and general responses answer a request."""
    fc = zcl[0]
    direction_to_client = bool(fc & 0x08)
    general = (fc & 0x03) == 0
    return direction_to_client or (general and zcl[2] in (0x01, 0x04, 0x0B))
