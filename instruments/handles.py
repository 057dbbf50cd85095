"""Bench instruments in a rig script: the verbs a lab engineer uses.

::

    with Lab.open("lab.yaml") as lab:
        bench = lab.bench("bench-1")
        bench.ac_source.set(voltage=230, frequency=50)
        bench.mains.on()                       # AC source output on, then the mains relay closed
        bench.load.draw(amps=10)
        r = bench.analyser.read()              # Reading(voltage=230.0, current=10.0, power=2300.0, ...)
        bench.attenuator("attenuator_ppmid").set(40)
        bench.ac_source.dip(depth=0.5, duration=0.2)
        bench.mains.off()                      # mains relay open
        bench.analyser.wait_for(lambda r: r.voltage < 1, timeout=5)

Every verb is a command to the bench's agent over the bus
(``bench.request(node, op, args)``) and returns once the agent has done it
and read the instrument back; a refusal (an interlock, no lease, E-stop, an
instrument that does not answer) raises :class:`rig.bus.CommandError` with
the reason.  Nothing here imports a driver: a script runs unchanged against
a real bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rig.config import UnknownPart

if TYPE_CHECKING:  # pragma: no cover
    from rig.lab import Bench


@dataclass(frozen=True)
class Reading:
    """One sample of the power analyser: V rms, A rms, W, Hz (None with no
    voltage to measure a frequency on) and the lab time it was taken."""

    voltage: float
    current: float
    power: float
    frequency: float | None
    ts: float


class InstrumentHandle:
    """Any instrument of the bench: its retained state and its operations."""

    def __init__(self, bench: "Bench", name: str):
        if name not in bench.cfg.instruments:
            raise UnknownPart(f"bench {bench.name} has no instrument '{name}'; instruments: "
                              f"{', '.join(bench.cfg.instruments) or 'none'}")
        self.bench, self.name = bench, name
        self.cfg = bench.cfg.instruments[name]
        self.node = bench.node("instrument", name)
        self._watch = bench.watch(self.node.state)
        # long enough for the agent to try the instrument a few times over
        self.timeout = bench.clock.lab_seconds(3 * self.cfg.timeout + 2.0)

    @property
    def state(self) -> dict[str, Any] | None:
        """The agent's retained state of the instrument (summary, address, identity, fault)."""
        return self._watch.get(self.node.state)

    def wait_state(self, predicate: Callable[[dict[str, Any]], object], timeout: float) -> dict[str, Any]:
        """Wait (lab seconds) until the retained state satisfies ``predicate``;
        the state follows a command's reply, it is not part of it."""
        state = self._watch.wait_for(predicate, timeout, topic=self.node.state, min_wall=1.0)
        if state is None:
            raise TimeoutError(f"{self.bench.name}/{self.name}: state condition not met within {timeout:g} lab s; "
                               f"state: {self.state}")
        return state

    @property
    def address(self) -> str | None:
        s = self.state
        return s.get("address") if s else None

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``op`` with ``args`` to the instrument's agent; returns the result."""
        return self.bench.request(self.node, op, {k: v for k, v in args.items() if v is not None},
                                  timeout=self.timeout)

    def identify(self) -> str:
        """The identity the instrument reports now (``*IDN?`` or equivalent)."""
        return self.request("identify")["identity"]

    def query(self) -> dict[str, Any]:
        """Read the instrument's state now."""
        return self.request("query")

    def safe(self) -> bool:
        """Put this instrument in its safe state (no lease needed)."""
        return bool(self.request("safe")["changed"])

    def __repr__(self) -> str:
        s = self.state or {}
        return f"<{self.cfg.kind} {self.bench.name}/{self.name}: {s.get('summary')}>"


class AcSourceHandle(InstrumentHandle):
    """The bench's programmable AC source (the supply to the mains relay)."""

    def set(self, voltage: float | None = None, frequency: float | None = None) -> dict[str, Any]:
        """Program voltage (V rms) and/or frequency (Hz)."""
        return self.request("set", voltage=voltage, frequency=frequency)

    def on(self) -> dict[str, Any]:
        return self.request("output", state="on")

    def off(self) -> dict[str, Any]:
        return self.request("output", state="off")

    @property
    def is_on(self) -> bool:
        return self.query().get("output") == "on"

    def dip(self, depth: float, duration: float) -> dict[str, Any]:
        """A timed dip: ``depth`` (fraction removed; 1 = interruption) for
        ``duration`` lab seconds; returns as it starts."""
        return self.request("dip", depth=depth, duration=duration)


class LoadHandle(InstrumentHandle):
    """The load bank on the meter's load side."""

    def draw(self, amps: float | None = None, watts: float | None = None) -> dict[str, Any]:
        """Draw a constant current (A rms) or a constant power (W)."""
        return self.request("draw", amps=amps, watts=watts)

    def off(self) -> dict[str, Any]:
        return self.request("off")

    @property
    def is_on(self) -> bool:
        return self.query().get("load") == "on"


class AnalyserHandle(InstrumentHandle):
    """The power analyser on the load side: the independent witness of supply."""

    def read(self) -> Reading:
        """One sample, taken now."""
        r = self.request("read")
        return Reading(r["voltage"], r["current"], r["power"], r.get("frequency"), r["ts"])

    def wait_for(self, predicate: Callable[[Reading], object], timeout: float, what: str = "") -> Reading:
        """Sample until ``predicate(reading)`` holds; raise TimeoutError after
        ``timeout`` lab seconds.  Each sample is a fresh reading."""
        last: list[Reading] = []

        def check() -> Reading | None:
            reading = self.read()
            last[:] = [reading]
            return reading if predicate(reading) else None

        found = self.bench.clock.wait_for(check, timeout, poll=self.bench.clock.lab_seconds(0.005))
        if not found:
            raise TimeoutError(f"{self.bench.name}/{self.name}: {what or 'reading condition'} not met within "
                               f"{timeout:g} lab s; last reading {last[0] if last else None}")
        return found


class AttenuatorHandle(InstrumentHandle):
    """A programmable RF attenuator in a HAN path."""

    def set(self, db: float) -> float:
        """Set the attenuation; returns the read-back (dB)."""
        return self.request("set", db=db)["db"]

    @property
    def db(self) -> float:
        return self.query()["db"]


class OpticalProbeHandle(InstrumentHandle):
    """The optical probe on the meter (IEC 62056-21 readout)."""

    def read(self) -> dict[str, Any]:
        """The meter's identification and registers: ``{"identification",
        "baud", "registers": {"1.8.0": {"value", "unit"}, ...}}``."""
        return self.request("read")


HANDLES: dict[str, type[InstrumentHandle]] = {
    "ac_source": AcSourceHandle,
    "load_bank": LoadHandle,
    "power_analyser": AnalyserHandle,
    "attenuator": AttenuatorHandle,
    "optical_probe": OpticalProbeHandle,
}


class MainsHandle:
    """The bench's mains as the wiring makes it: AC source, then mains relay.

    ``on()`` switches the AC source output on and closes the mains relay;
    ``off()`` opens the relay (the source stays on, as a grid would)."""

    def __init__(self, bench: "Bench"):
        w = bench.cfg.wiring
        if w.mains_relay is None and w.supply is None:
            raise UnknownPart(f"bench {bench.name} has no mains: wiring names neither a mains_relay nor a supply")
        self.bench, self.relay_name, self.supply_name = bench, w.mains_relay, w.supply

    @property
    def relay(self):
        return self.bench.relay(self.relay_name) if self.relay_name else None

    @property
    def supply(self) -> AcSourceHandle | None:
        return instrument(self.bench, self.supply_name) if self.supply_name else None

    def on(self) -> None:
        if self.supply is not None:
            self.supply.on()
        if self.relay is not None:
            self.relay.on()

    def off(self) -> None:
        if self.relay is not None:
            self.relay.off()
        else:
            self.supply.off()

    @property
    def is_on(self) -> bool:
        relay_on = self.relay.is_on if self.relay is not None else True
        return relay_on and (self.supply.is_on if self.supply is not None else True)

    def __repr__(self) -> str:
        return f"<mains {self.bench.name}: relay {self.relay_name}, supply {self.supply_name}>"


class Attenuators(Mapping[str, AttenuatorHandle]):
    """``bench.attenuators["attenuator_ppmid"]``: every attenuator of the bench."""

    def __init__(self, bench: "Bench"):
        self.bench = bench
        self.names = [n for n, i in bench.cfg.instruments.items() if i.kind == "attenuator"]

    def __getitem__(self, name: str) -> AttenuatorHandle:
        if name not in self.names:
            raise UnknownPart(f"bench {self.bench.name} has no attenuator '{name}'; attenuators: "
                              f"{', '.join(self.names) or 'none'}")
        return instrument(self.bench, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------------------- bench members
def instrument(bench: "Bench", name: str) -> Any:
    """``bench.instrument(name)``: the handle for any instrument of the bench."""
    cfg = bench.cfg.instruments.get(name)
    cls = HANDLES[cfg.kind] if cfg is not None else InstrumentHandle
    return bench.handle(("instrument", name), lambda: cls(bench, name))


def _of_kind(bench: "Bench", kind: str, wired: str | None = None) -> Any:
    if wired is not None:
        return instrument(bench, wired)
    names = [n for n, i in bench.cfg.instruments.items() if i.kind == kind]
    if len(names) != 1:
        raise UnknownPart(f"bench {bench.name} has {len(names)} {kind} instruments ({', '.join(names) or 'none'}); "
                          f"name one with bench.instrument(name)")
    return instrument(bench, names[0])


def attenuator(bench: "Bench", name: str | None = None) -> AttenuatorHandle:
    """``bench.attenuator("attenuator_ppmid")`` (the name may be left out on
    a bench with one attenuator)."""
    return Attenuators(bench)[name] if name is not None else _of_kind(bench, "attenuator")


mains = property(lambda bench: bench.handle(("mains", ""), lambda: MainsHandle(bench)),
                 doc="The bench's mains: AC source and mains relay (MainsHandle).")
ac_source = property(lambda bench: _of_kind(bench, "ac_source", bench.cfg.wiring.supply),
                     doc="The AC source feeding the bench (the wiring's supply).")
load = property(lambda bench: _of_kind(bench, "load_bank", bench.cfg.wiring.load),
                doc="The load bank on the meter's load side (the wiring's load).")
analyser = property(lambda bench: _of_kind(bench, "power_analyser", bench.cfg.wiring.analyser),
                    doc="The power analyser on the load side (the wiring's analyser).")
optical = property(lambda bench: _of_kind(bench, "optical_probe"),
                   doc="The optical probe on the meter.")
attenuators = property(lambda bench: Attenuators(bench), doc="Every attenuator of the bench, by name.")
