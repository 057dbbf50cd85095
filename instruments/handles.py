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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rig.bench_port import BenchPort
from rig.config import UnknownPart


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
    """Any instrument of the bench: its retained state and its operations.
    A kind's handle class is named by its declaration (rig/parts.py)."""

    def __init__(self, bench: BenchPort, name: str):
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
        if not isinstance(found, Reading):
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
