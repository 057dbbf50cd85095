"""One declaration per part kind: what a bench can hold, and where each piece lives.

An *instrument kind* (an AC source, a load bank, an attenuator ...) is one
:class:`InstrumentKind`: its drivers (the lab.yaml ``driver:`` names, each
with its class and its simulated twin), the agent's service that serves it
on the bus, the rig-script handle, the pytest fixture and ``Bench``
accessor, the ``wiring:`` key that names the bench's one instrument of the
kind, and how ``rig instrument`` reads a bare value.  From that one
declaration:

* lab.yaml validation knows the kind, its drivers and its ``limits:`` keys
  (declared by the drivers' settings, :mod:`instruments.settings`);
* the agent serves it (:mod:`instruments.service`), the simulated world
  starts its twin (:mod:`instruments.sim`);
* ``rig instrument`` lists and drives it; ``bench.instrument(name)`` and
  ``bench.of_kind(kind)`` return its handle; the plugin makes its fixture.

A *device kind* (ESME, comms hub, PPMID ...) is one :class:`DeviceKind`
(settings model, handle, twin, fixture); a *device backend* (an adapter for
real devices: zigpy, optical) is one :class:`DeviceBackend`.

References to classes are ``"module:attribute"`` strings, imported when
first used: validating a lab file imports no VISA stack, no bus and no
simulation, and no layer is imported by the layers it serves.  A
declaration may also give the objects themselves (a test's toy kind does).

The rig's own kinds are declared at the end of this module.  A lab's own
package adds kinds without editing the rig: it declares them in a module
named by an entry point of the group ``rig.parts``::

    [project.entry-points."rig.parts"]
    my_lab = "my_lab.parts"       # a module that calls rig.parts.register(...)

docs/extending.md walks through adding an instrument kind, a device kind
and a fault profile.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

log = logging.getLogger(__name__)

#: a class or function, or ``"module:attribute"`` naming it (imported when first used)
Ref = Union[str, Any]
#: the entry-point group a lab's own package declares its part kinds in
ENTRY_POINTS = "rig.parts"


def load(ref: Ref) -> Any:
    """The object a reference names (imports its module)."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for name in filter(None, attribute.split(".")):
        obj = getattr(obj, name)
    return obj


class UnknownKind(KeyError):
    """A kind, driver or backend no declaration names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown kind"


# ----------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Driver:
    """One driver of an instrument kind: the lab.yaml ``driver:`` name, the
    driver class (:mod:`instruments`) and the class of its simulated twin
    (:mod:`instruments.sim`; None: ``address: sim`` is refused for it)."""

    name: str
    cls: Ref
    twin: Ref | None = None
    #: what its instrument says it is (``*IDN?``, or the meter's identification message for an
    #: optical probe): a case-insensitive regular expression ``rig probe`` checks the answer against
    identity: str | None = None

    def load(self) -> Any:
        return load(self.cls)

    def load_twin(self) -> Any:
        return load(self.twin) if self.twin is not None else None


@dataclass(frozen=True)
class InstrumentKind:
    """Everything the rig needs to know of one kind of bench instrument."""

    kind: str
    #: one line for the person at the bench (fixture docs, ``rig instrument``)
    doc: str
    drivers: tuple[Driver, ...]
    #: the agent's service (:class:`instruments.service.InstrumentService` subclass)
    service: Ref
    #: the rig-script handle (:class:`instruments.handles.InstrumentHandle` subclass)
    handle: Ref
    #: the pytest fixture and ``Bench`` attribute of the bench's instrument of this kind (None: none)
    fixture: str | None = None
    #: the lab.yaml ``wiring:`` key naming the bench's instrument of this kind (supply, load, analyser)
    wiring: str | None = None
    #: ``rig instrument B NAME set 40``: the argument a bare number sets
    number: str | None = None
    #: ``rig instrument B NAME set on``: the argument a bare on/off sets
    switch: str | None = None
    #: the op ``rig instrument B NAME query`` sends (a measuring instrument: ``read``)
    query: str = "query"

    def driver(self, name: str) -> Driver:
        for d in self.drivers:
            if d.name == name:
                return d
        raise UnknownKind(f"unknown driver '{name}' for kind {self.kind}; known: "
                          f"{', '.join(sorted(d.name for d in self.drivers)) or 'none'}")

    def load_service(self) -> Any:
        return load(self.service)

    def load_handle(self) -> Any:
        return load(self.handle)


@dataclass(frozen=True)
class DeviceKind:
    """Everything the rig needs to know of one kind of device under test."""

    kind: str
    doc: str
    #: the model of its lab.yaml ``settings:`` (rig/config.py)
    settings: Ref
    #: the rig-script handle (:class:`rig.devices.DeviceHandle` subclass)
    handle: Ref
    #: the simulated twin (:class:`rig.sim.twin.Twin` subclass) for ``backend: sim``
    twin: Ref | None
    #: the pytest fixture and ``Bench`` attribute of the bench's device of this kind
    fixture: str | None = None
    #: the lab.yaml ``wiring:`` key naming the bench's device of this kind (the ESME: meter)
    wiring: str | None = None
    #: the HAN coordinator: started first, every other device joins it
    coordinator: bool = False
    #: its fixture waits until the device is online (a PPMID joins the HAN late)
    wait_online: bool = False
    #: the buttons a lab.yaml ``actuators:`` entry may be wired across (``key_0`` .. ``key_9``,
    #: ``key_enter``: a keypad)
    buttons: tuple[str, ...] = ()

    def load_settings(self) -> Any:
        return load(self.settings)

    def load_handle(self) -> Any:
        return load(self.handle)

    def load_twin(self) -> Any:
        return load(self.twin) if self.twin is not None else None


@dataclass(frozen=True)
class DeviceBackend:
    """An adapter that puts a real device on the bus contract (lab.yaml ``backend:``)."""

    name: str
    doc: str
    #: ``cls(lab, bench, name, device_cfg, endpoint, clock, medium=None)`` with ``start()``/``stop()``
    adapter: Ref

    def load(self) -> Any:
        return load(self.adapter)


Declaration = Union[InstrumentKind, DeviceKind, DeviceBackend]


# ----------------------------------------------------------------------------- the registry
@dataclass
class Registry:
    """The declared kinds.  Read through the module functions below."""

    instruments: dict[str, InstrumentKind] = field(default_factory=dict)
    devices: dict[str, DeviceKind] = field(default_factory=dict)
    backends: dict[str, DeviceBackend] = field(default_factory=dict)
    _discovered: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def table(self, decl: Declaration) -> dict[str, Any]:
        if isinstance(decl, InstrumentKind):
            return self.instruments
        if isinstance(decl, DeviceKind):
            return self.devices
        if isinstance(decl, DeviceBackend):
            return self.backends
        raise TypeError(f"not a part declaration: {decl!r}")

    def register(self, decl: Declaration) -> Declaration:
        key = decl.name if isinstance(decl, DeviceBackend) else decl.kind
        with self._lock:
            table = self.table(decl)
            if key in table and table[key] != decl:
                raise ValueError(f"{key} is declared twice (rig/parts.py and a {ENTRY_POINTS} entry point?)")
            if isinstance(decl, InstrumentKind):
                taken = {d.name: k.kind for k in self.instruments.values() if k.kind != key for d in k.drivers}
                clash = [d.name for d in decl.drivers if d.name in taken]
                if clash:
                    raise ValueError(f"driver {clash[0]} of {key} is already a driver of {taken[clash[0]]}")
            table[key] = decl
        return decl

    def unregister(self, decl: Declaration) -> None:
        key = decl.name if isinstance(decl, DeviceBackend) else decl.kind
        with self._lock:
            self.table(decl).pop(key, None)

    def discover(self) -> None:
        """Import the modules the installed packages declare kinds in (once)."""
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
                try:
                    importlib.import_module(ep.value.partition(":")[0])
                except Exception:  # noqa: BLE001 - a broken lab package is named, the rig's own kinds stay
                    log.exception("part kinds of entry point %s (%s) not loaded", ep.name, ep.value)


REGISTRY = Registry()


def register(decl: Declaration) -> Declaration:
    """Declare a kind (or a device backend); returns it."""
    return REGISTRY.register(decl)


@contextmanager
def registered(*decls: Declaration) -> Iterator[None]:
    """Declarations that last for a ``with`` block (a test's toy kind)."""
    for d in decls:
        register(d)
    try:
        yield
    finally:
        for d in reversed(decls):
            REGISTRY.unregister(d)


def _find(table: dict[str, Any], key: str, what: str, known: str = "known: ") -> Any:
    if key not in table:
        raise UnknownKind(f"unknown {what} '{key}'; {known}{', '.join(sorted(table))}")
    return table[key]


def instrument_kinds() -> dict[str, InstrumentKind]:
    REGISTRY.discover()
    return dict(REGISTRY.instruments)


def instrument_kind(kind: str) -> InstrumentKind:
    return _find(instrument_kinds(), kind, "instrument kind")


def device_kinds() -> dict[str, DeviceKind]:
    REGISTRY.discover()
    return dict(REGISTRY.devices)


def device_kind(kind: str) -> DeviceKind:
    return _find(device_kinds(), kind, "device kind")


def device_backends() -> dict[str, DeviceBackend]:
    REGISTRY.discover()
    return dict(REGISTRY.backends)


def device_backend(name: str) -> DeviceBackend:
    return _find(device_backends(), name, "backend", known="backends: sim, sealed, ")


# ----------------------------------------------------------------------------- the rig's own kinds
# Instruments: the driver is instruments/<module>.py, its twin instruments/sim/<module>.py, the
# service instruments/service.py, the handle instruments/handles.py.
register(InstrumentKind(
    "ac_source", "The AC source feeding the bench (the wiring's supply).",
    drivers=(Driver("chroma_61500", "instruments.ac_source:Chroma61500",
                    twin="instruments.sim.ac_source:SimulatedChroma61500",
                    identity=r"^chroma[^,]*,615\d\d"),),
    service="instruments.service:AcSourceService", handle="instruments.handles:AcSourceHandle",
    fixture="ac_source", wiring="supply", number="voltage", switch="output",
))
register(InstrumentKind(
    "load_bank", "The load bank on the meter's load side (the wiring's load): load.draw(amps=10), load.off().",
    drivers=(Driver("chroma_63800", "instruments.load_bank:Chroma63800",
                    twin="instruments.sim.load_bank:SimulatedChroma63800",
                    identity=r"^chroma[^,]*,638\d\d"),),
    service="instruments.service:LoadBankService", handle="instruments.handles:LoadHandle",
    fixture="load", wiring="load", number="amps", switch="state",
))
register(InstrumentKind(
    "power_analyser", "The power analyser on the load side (the wiring's analyser), the independent witness "
    "(property 6).",
    drivers=(Driver("yokogawa_wt310", "instruments.power_analyser:YokogawaWT310",
                    twin="instruments.sim.power_analyser:SimulatedWT310",
                    identity=r"^yokogawa,wt3\d\d"),),
    service="instruments.service:AnalyserService", handle="instruments.handles:AnalyserHandle",
    fixture="analyser", wiring="analyser", query="read",
))
register(InstrumentKind(
    "attenuator", "A programmable RF attenuator in a HAN path (rf_paths).",
    drivers=(Driver("minicircuits_rcdat", "instruments.attenuator:MiniCircuitsRCDAT",
                    twin="instruments.sim.attenuator:SimulatedRCDAT",
                    identity=r"^mini-circuits,rc"),
             Driver("keysight_11713", "instruments.attenuator:Keysight11713",
                    twin="instruments.sim.attenuator:SimulatedKeysight11713",
                    identity=r"^(agilent|keysight)[^,]*,11713")),
    service="instruments.service:AttenuatorService", handle="instruments.handles:AttenuatorHandle",
    number="db",   # its fixtures (attenuator: the PPMID's path; attenuators) are the plugin's own
))
register(InstrumentKind(
    "optical_probe", "The optical probe on the meter (IEC 62056-21 readout).",
    drivers=(Driver("iec62056_21", "instruments.optical_probe:OpticalProbe",
                    twin="instruments.sim.optical_port:SimulatedOpticalPort",
                    identity=r"^[a-z]{3}[0-9a-z]"),),
    service="instruments.service:OpticalProbeService", handle="instruments.handles:OpticalProbeHandle",
    fixture="optical", query="read",
))

KEYPAD = tuple(f"key_{d}" for d in "0123456789") + ("key_enter",)

# Devices: settings in rig/config.py, handle in rig/devices.py, twin rig/sim/<kind>.py.
register(DeviceKind(
    "esme", "The electricity meter (the wiring's meter).",
    settings="rig.config:EsmeSettings", handle="rig.devices:EsmeHandle", twin="rig.sim.esme:Esme",
    fixture="esme", wiring="meter", buttons=("enable", "emergency_credit", "display", *KEYPAD),
))
register(DeviceKind(
    "comms_hub", "The communications hub (the HAN's coordinator).",
    settings="rig.config:HubSettings", handle="rig.devices:CommsHubHandle", twin="rig.sim.comms_hub:CommsHub",
    fixture="comms_hub", coordinator=True,
))
register(DeviceKind(
    "gsme", "The gas meter.",
    settings="rig.config:GsmeSettings", handle="rig.devices:GsmeHandle", twin="rig.sim.gsme:Gsme",
    fixture="gsme",
))
register(DeviceKind(
    "ppmid", "The PPMID paired with the meter, on the HAN.",
    settings="rig.config:PpmidSettings", handle="rig.devices:PpmidHandle", twin="rig.sim.ppmid:Ppmid",
    fixture="ppmid", wait_online=True, buttons=("enable", "emergency_credit", "display", *KEYPAD),
))
register(DeviceKind(
    "ihd", "The in-home display.",
    settings="rig.config:IhdSettings", handle="rig.devices:IhdHandle", twin="rig.sim.ihd:Ihd",
    fixture="ihd", buttons=("display",),
))

# Device backends: real devices behind the same bus contract as the twins (rig/adapters).
register(DeviceBackend("zigpy", "SE Metering/Prepayment reads over a zigpy radio (zigpy-znp, bellows, or the "
                       "simulated medium)", adapter="rig.adapters.zigpy_bridge:HanBridge"))
register(DeviceBackend("optical", "the meter's registers over an IEC 62056-21 optical probe",
                       adapter="rig.adapters.optical:OpticalAdapter"))
