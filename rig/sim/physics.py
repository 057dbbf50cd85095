"""The physical bench model: what is really on the wires of one bench.

Mains flows ``AC source -> mains relay -> meter line side`` (and, with
``hub_feed: unmetered``, the comms hub's supply, OUT-5); the meter's
contactor feeds the load side, where the load bank draws current only when
the load side is live and the power analyser reads what is really there.
Attenuator settings enter the RF link budget of the HAN medium.

Every simulated part of a bench shares one :class:`PhysicalBench`: the AC
source and load bank servers *set* it, the meter twin *sets* its contactor
and *reads* its line voltage, the analyser server *reads* the load side.
Nothing here knows about the bus or SCPI.

Listeners (``bench.listen(fn)``) are called after every change with the set
of quantities that changed, so a meter sees its supply fail in the same
instant the relay opens (no polling).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..clock import LabClock, Timer
from ..config import MAINS_FREQUENCY, MAINS_VOLTAGE

log = logging.getLogger(__name__)

#: a line side below this RMS voltage counts as "no supply" for the meter
SUPPLY_PRESENT_V = 50.0


@dataclass
class Source:
    """The AC source's programmed output (or the grid when there is none)."""

    output: bool = False
    voltage: float = MAINS_VOLTAGE
    frequency: float = MAINS_FREQUENCY


@dataclass
class Load:
    on: bool = False
    mode: str = "current"          # "current" (A setpoint) or "power" (W setpoint)
    setpoint: float = 0.0
    power_factor: float = 1.0


@dataclass
class Reading:
    """What an ideal instrument on a node of the bench would measure."""

    voltage: float
    current: float
    power: float
    frequency: float
    ts: float

    def as_dict(self) -> dict:
        return {"voltage": self.voltage, "current": self.current, "power": self.power,
                "frequency": self.frequency, "ts": self.ts}


@dataclass
class _State:
    source: Source = field(default_factory=Source)
    mains_relay: bool = False
    contactor: bool = False
    load: Load = field(default_factory=Load)
    dip_factor: float = 1.0          # 1.0 normally; <1 during a timed dip, 0 during an interruption
    attenuation: dict[str, float] = field(default_factory=dict)


Listener = Callable[[set[str]], None]


class PhysicalBench:
    """Thread-safe physics of one bench.  With ``has_source=False`` the bench
    is fed by the grid: the supply is always on at nominal voltage."""

    def __init__(self, clock: LabClock, has_source: bool = True, has_relay: bool = True,
                 nominal_voltage: float = MAINS_VOLTAGE, frequency: float = MAINS_FREQUENCY):
        self.clock = clock
        self._lock = threading.RLock()
        self._s = _State()
        self._s.source = Source(output=not has_source, voltage=nominal_voltage, frequency=frequency)
        self._s.mains_relay = not has_relay
        self._listeners: list[Listener] = []
        self._dip_timer: Timer | None = None
        self.energy_wh = 0.0           # load-side energy, integrated on every change
        self._energy_ts = clock.now()
        self._at = threading.local()

    # ------------------------------------------------------------------ listeners
    def listen(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _changed(self, what: set[str]) -> None:
        for fn in list(self._listeners):
            try:
                fn(what)
            except Exception:  # noqa: BLE001 - one part's bug must not stop the physics
                log.exception("physics listener failed")

    def _mutate(self, what: str, fn: Callable[[_State], None], at: float | None = None) -> None:
        with self._lock:
            self._integrate()
            before = self._snapshot()
            fn(self._s)
            after = self._snapshot()
        changed = {k for k in after if after[k] != before[k]} | {what}
        outer = getattr(self._at, "value", None)
        self._at.value = at          # per thread: listeners run on the thread that made the change
        try:
            self._changed(changed)
        finally:
            self._at.value = outer

    def event_time(self) -> float:
        """For a listener: the lab time the change being told happened.  A relay
        switches on the wires the instant the agent switches it; the simulation
        hears of it a bus hop later, and at a fast clock that hop is lab
        seconds, so a change carries the agent's own time stamp."""
        at = getattr(self._at, "value", None)
        return at if at is not None else self.clock.now()

    def _snapshot(self) -> dict[str, float | bool]:
        return {"line_voltage": round(self.line_voltage(), 6), "load_voltage": round(self.load_voltage(), 6),
                "load_current": round(self.load_current(), 6)}

    def energy_wh_now(self) -> float:
        """Load-side energy in Wh up to this instant (what the meter's
        register should read)."""
        with self._lock:
            return self.energy_wh + self.load_power() * max(0.0, self.clock.now() - self._energy_ts) / 3600.0

    def _integrate(self) -> None:
        now = self.clock.now()
        self.energy_wh += self.load_power() * max(0.0, now - self._energy_ts) / 3600.0
        self._energy_ts = now

    # ------------------------------------------------------------------ inputs
    def set_source(self, output: bool | None = None, voltage: float | None = None,
                   frequency: float | None = None) -> None:
        def f(s: _State) -> None:
            if output is not None:
                s.source.output = output
            if voltage is not None:
                s.source.voltage = voltage
            if frequency is not None:
                s.source.frequency = frequency
        self._mutate("source", f)

    def set_mains_relay(self, closed: bool, at: float | None = None) -> None:
        """Open or close the mains relay; ``at``: the lab time it switched (default now)."""
        self._mutate("mains_relay", lambda s: setattr(s, "mains_relay", closed), at)

    def set_contactor(self, closed: bool) -> None:
        self._mutate("contactor", lambda s: setattr(s, "contactor", closed))

    def set_load(self, on: bool | None = None, mode: str | None = None, setpoint: float | None = None,
                 power_factor: float | None = None) -> None:
        def f(s: _State) -> None:
            if on is not None:
                s.load.on = on
            if mode is not None:
                s.load.mode = mode
            if setpoint is not None:
                s.load.setpoint = setpoint
            if power_factor is not None:
                s.load.power_factor = power_factor
        self._mutate("load", f)

    def set_attenuation(self, name: str, db: float) -> None:
        self._mutate("attenuation", lambda s: s.attenuation.__setitem__(name, db))

    def dip(self, depth: float, duration: float) -> None:
        """A timed dip of the source: voltage x (1 - depth) for ``duration``
        lab seconds (``depth=1``: an interruption), then back."""
        if not 0.0 <= depth <= 1.0:
            raise ValueError("dip depth is a fraction 0..1")
        if self._dip_timer is not None:
            self._dip_timer.cancel()
        self._mutate("source", lambda s: setattr(s, "dip_factor", 1.0 - depth))
        self._dip_timer = Timer(self.clock, duration, self._end_dip, name="source-dip").start()

    def _end_dip(self) -> None:
        self._mutate("source", lambda s: setattr(s, "dip_factor", 1.0))

    # ------------------------------------------------------------------ outputs
    @property
    def source(self) -> Source:
        with self._lock:
            return Source(**vars(self._s.source))

    @property
    def mains_relay(self) -> bool:
        return self._s.mains_relay

    @property
    def contactor(self) -> bool:
        return self._s.contactor

    @property
    def load(self) -> Load:
        with self._lock:
            return Load(**vars(self._s.load))

    def attenuation(self, name: str | None) -> float:
        if name is None:
            return 0.0
        with self._lock:
            return self._s.attenuation.get(name, 0.0)

    def supply_voltage(self) -> float:
        """RMS voltage at the supply side of the mains relay."""
        with self._lock:
            src = self._s.source
            return src.voltage * self._s.dip_factor if src.output else 0.0

    def line_voltage(self) -> float:
        """RMS voltage at the meter's line side (and the hub's unmetered feed)."""
        with self._lock:
            return self.supply_voltage() if self._s.mains_relay else 0.0

    def frequency(self) -> float:
        with self._lock:
            return self._s.source.frequency if self.line_voltage() > 0 else 0.0

    def supply_present(self) -> bool:
        return self.line_voltage() >= SUPPLY_PRESENT_V

    def load_voltage(self) -> float:
        """RMS voltage on the load side of the meter's contactor."""
        with self._lock:
            return self.line_voltage() if self._s.contactor else 0.0

    def load_current(self) -> float:
        """RMS current the load bank draws: nothing unless the load side is live."""
        with self._lock:
            v, load = self.load_voltage(), self._s.load
            if not load.on or v < SUPPLY_PRESENT_V:
                return 0.0
            if load.mode == "power":
                return load.setpoint / (v * max(load.power_factor, 1e-3))
            return load.setpoint

    def load_power(self) -> float:
        with self._lock:
            return self.load_voltage() * self.load_current() * self._s.load.power_factor

    def read_load_side(self) -> Reading:
        """What a power analyser on the load side measures now."""
        with self._lock:
            return Reading(self.load_voltage(), self.load_current(), self.load_power(),
                           self.frequency() if self.load_voltage() > 0 else 0.0, self.clock.now())

    def describe(self) -> dict:
        with self._lock:
            return {
                "source": vars(self._s.source) | {"dip_factor": self._s.dip_factor},
                "mains_relay": self._s.mains_relay,
                "contactor": self._s.contactor,
                "load": vars(self._s.load),
                "line_voltage": self.line_voltage(),
                "load_voltage": self.load_voltage(),
                "load_current": self.load_current(),
                "attenuation": dict(self._s.attenuation),
                "energy_wh": self.energy_wh,
            }
