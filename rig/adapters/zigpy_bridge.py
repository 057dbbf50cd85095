"""A zigpy-based HAN bridge: a real SEP 1.x device on the bus contract.

A zigpy radio (a ControllerApplication of ``zigpy-znp`` or ``bellows``) sits
on the lab's test HAN with the device joined to it.  The bridge

* reads the device's Smart Energy Metering (and, for an ESME, Prepayment)
  attributes every ``poll_period`` lab seconds, with ZCL frames built and
  parsed by zigpy (:mod:`rig.protocol.zcl`), and publishes them as the device's
  retained ``state`` (``supply``, ``metrology``, ``prepayment``);
* publishes the RSSI and LQI of **every packet** the radio receives from
  the device on ``event/packet``, and the link in ``state.han``;
* keeps the device's presence (its own bus connection and Last Will);
* serves ``read`` (the attributes now), ``status`` and ``link_test``
  (``{"frames": 50}``: that many Metering reads, one after another, each
  given :data:`LINK_TEST_TIMEOUT`; ``per`` is the share left unanswered,
  ``rssi``/``lqi`` the means over the answers, ``method: zcl_round_trip``:
  the radio's own MAC retries included, unlike a twin hub's single-attempt
  test frames).

Commands that change a meter (disable, arm, enable) do not go through the
bridge: on a GB HAN they come from the comms hub over the WAN.

``lab.yaml``::

    backend: zigpy
    adapter:
      radio: znp            # znp (zigpy-znp), ezsp (bellows), or sim (the simulated HAN)
      path: /dev/ttyUSB0    # the radio's serial port
      baudrate: 115200
      database: zigbee.db   # zigpy's network database (default: none, in memory)
      poll_period: 30       # lab seconds between reads
      band: 2.4GHz          # the band the radio works on (default: the device's first band)

The radio libraries are imported only when used: ``pip install zigpy-znp``
or ``pip install bellows`` on the machine the radio is plugged into.  zigpy
does not decode the Smart Energy profile (0x0109); the bridge mixes
:class:`BridgeMixin` into the radio's application class to receive those
frames itself, with the per-packet ``lqi``/``rssi`` the radio reports.

``radio: sim`` puts the zigpy application on the bench's simulated 802.15.4
medium (:func:`medium_application_class`): the working example that runs with no
radio (tests/test_adapters.py reads the ESME twin through it).

"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from pydantic import BaseModel, Field

from ..bus import Bus, CommandContext, Refused
from ..contract import Node
from ..protocol import zcl
from . import AdapterError

log = logging.getLogger(__name__)

SE_PROFILE = 0x0109
SE_ENDPOINT = 1
#: wall seconds a read waits for the device's answer
READ_TIMEOUT = 5.0
#: wall seconds one link-test read waits for its answer before it counts as lost
LINK_TEST_TIMEOUT = 1.0
FAILS_DOWN = 3
SUPPLY = {0: "disabled", 1: "armed", 2: "enabled"}
RADIOS = {
    "znp": ("zigpy_znp.zigbee.application", "zigpy-znp"),
    "ezsp": ("bellows.zigbee.application", "bellows"),
}


def application_class(radio: str, device: str) -> type:
    """The zigpy ControllerApplication for ``radio`` (imported lazily)."""
    if radio == "sim":
        return medium_application_class()
    if radio not in RADIOS:
        raise AdapterError(f"device {device}: adapter.radio '{radio}' is not one of sim, {', '.join(RADIOS)}")
    module, package = RADIOS[radio]
    try:
        import importlib

        return importlib.import_module(module).ControllerApplication
    except ImportError:
        raise AdapterError(f"device {device}: adapter.radio '{radio}' needs the '{package}' package: "
                           f"pip install {package}") from None


def _nwk_for(eui: str) -> int:
    """A stable NWK short address for a device on the simulated medium."""
    return 0x0001 + int.from_bytes(hashlib.sha256(eui.encode()).digest()[:2], "big") % 0xFFF0


class MediumRadio(Protocol):
    """A radio on the bench's simulated HAN, as the bridge uses it."""

    on_frame: Callable[[Any], None] | None

    def send(self, dst: str, cluster_id: int, zcl: bytes, done: Callable[[bool], None] | None = None) -> Any: ...

    def stop(self) -> None: ...


class SimulatedMedium(Protocol):
    """``radio: sim``: the bench's simulated HAN as the bridge joins it
    (:class:`rig.sim.simulated_han.SimulatedHan`, handed over by the simulated
    world; the bridge never imports the simulation)."""

    def open_radio(self, name: str, eui64: str, band: str, poll_period: float | None = 7.5) -> MediumRadio: ...

    def radio_name(self, eui64: str, besides: object = None) -> str | None: ...


# ----------------------------------------------------------------------------- zigpy applications
class BridgeMixin:
    """Mixed into a radio's ControllerApplication: every received packet is
    shown to the bridge (RSSI/LQI, Smart Energy frames) before zigpy sees it."""

    rig_bridge: "HanBridge | None" = None

    def packet_received(self, packet) -> None:  # noqa: ANN001 - zigpy's type
        bridge = self.rig_bridge
        if bridge is not None and bridge.on_packet(packet):
            return
        super().packet_received(packet)  # type: ignore[misc]


@functools.lru_cache(maxsize=1)
def medium_application_class() -> type:
    """``radio: sim``: a zigpy ControllerApplication on the simulated medium."""
    import zigpy.application

    class _MediumApplication(zigpy.application.ControllerApplication):
        """A zigpy radio that is one node of the simulated 802.15.4 medium."""

        rig_radio: Any = None
        rig_nwk: dict[int, str] = {}

        async def connect(self) -> None:
            if self.rig_radio is None:
                raise AdapterError("radio: sim has no simulated HAN to join (run the adapter inside `rig sim`)")
            loop = asyncio.get_running_loop()
            self.rig_radio.on_frame = lambda frame: loop.call_soon_threadsafe(self._from_medium, frame)

        def _from_medium(self, frame) -> None:  # noqa: ANN001
            import zigpy.types as t

            nwk = next((n for n, name in self.rig_nwk.items() if name == frame.src), None)
            if nwk is None:
                return
            self.packet_received(t.ZigbeePacket(
                src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(nwk)), src_ep=SE_ENDPOINT,
                dst=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(0x0000)), dst_ep=SE_ENDPOINT,
                tsn=frame.zcl[1] if len(frame.zcl) > 1 else 0, profile_id=SE_PROFILE, cluster_id=frame.cluster_id,
                data=t.SerializableBytes(frame.zcl), lqi=frame.lqi,
                rssi=int(frame.rssi) if frame.rssi is not None else None))

        async def send_packet(self, packet) -> None:  # noqa: ANN001
            import zigpy.exceptions

            name = self.rig_nwk.get(int(packet.dst.address))
            if name is None:
                raise zigpy.exceptions.DeliveryError(f"no device 0x{int(packet.dst.address):04X} on the medium")
            loop = asyncio.get_running_loop()
            acked: asyncio.Future = loop.create_future()
            def settle(ok: bool) -> None:
                if not acked.done():
                    acked.set_result(ok)

            self.rig_radio.send(name, packet.cluster_id, packet.data.serialize(),
                                done=lambda ok: loop.call_soon_threadsafe(settle, ok))
            if not await acked:
                raise zigpy.exceptions.DeliveryError(f"{name} did not acknowledge (HAN link down?)")

        async def disconnect(self) -> None:
            if self.rig_radio is not None:
                self.rig_radio.on_frame = None

        async def start_network(self) -> None:
            pass

        async def force_remove(self, dev) -> None:  # noqa: ANN001
            pass

        async def add_endpoint(self, descriptor) -> None:  # noqa: ANN001
            pass

        async def permit_ncp(self, time_s: int = 60) -> None:
            pass

        async def permit_with_link_key(self, node, link_key, time_s: int = 60) -> None:  # noqa: ANN001
            pass

        async def write_network_info(self, *, network_info, node_info) -> None:  # noqa: ANN001
            pass

        async def load_network_info(self, *, load_devices: bool = False) -> None:
            pass

        async def reset_network_info(self) -> None:
            pass

    return _MediumApplication


# ----------------------------------------------------------------------------- the bridge
class ReadArgs(BaseModel):
    attributes: list[str] | None = None


class LinkTestArgs(BaseModel):
    peer: str | None = Field(None, description="the bridged device (the only peer a bridge has)")
    band: str | None = Field(None, description="the radio's band (a bridge radio has one)")
    frames: int = Field(50, ge=1, le=1000)


class HanBridge:
    """One real device on the bus through a zigpy radio."""

    def __init__(self, lab: Any, bench: str, name: str, device: Any, endpoint: Any, clock: Any,
                 medium: SimulatedMedium | None = None):
        self.lab, self.bench, self.name, self.cfg = lab, bench, name, device
        self.clock = clock
        opts = dict(device.adapter)
        self.radio_kind = str(opts.get("radio", "sim"))
        self.poll_period = float(opts.get("poll_period", 30.0))
        self.band = str(opts.get("band") or ("868MHz" if device.han.band == "868MHz" else "2.4GHz"))
        self.opts = opts
        self.medium = medium
        self._sim_radio: MediumRadio | None = None
        self.node = Node(bench, "device", name)
        self.bus = Bus(endpoint, client_id=f"zigpy-{bench}-{name}-{uuid.uuid4().hex[:6]}", clock=clock,
                       presence=self.node, presence_info={"kind": device.kind})
        self.values: dict[str, Any] = {}
        self.rssi: float | None = None
        self.lqi: int = 0
        self.attempts: deque = deque(maxlen=32)
        self.failures = 0
        self.packets = 0
        self.updated: float | None = None
        self._pending: dict[tuple[int, int], asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"zigpy:{bench}/{name}", daemon=True)
        self._stop = threading.Event()
        self.app: Any = None
        self.device: Any = None
        self._poller: threading.Thread | None = None
        application_class(self.radio_kind, name)   # fail early, with the package to install

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HanBridge":
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_app(), self._loop).result(30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self.bus.connect()
        self.bus.serve(self.node, "read", self._read_op, ReadArgs)
        self.bus.serve(self.node, "status", lambda _a, _c: self.state())
        self.bus.serve(self.node, "link_test", self._link_test_op, LinkTestArgs)
        self.publish()
        self._poller = threading.Thread(target=self._poll_loop, name=f"zigpy-poll:{self.name}", daemon=True)
        self._poller.start()
        return self

    async def _start_app(self) -> None:
        import zigpy.config as conf
        import zigpy.types as t

        base = application_class(self.radio_kind, self.name)
        mixed: Any = type(f"Bridged{base.__name__}", (BridgeMixin, base), {})
        config: dict[str, Any] = {conf.CONF_DEVICE: {conf.CONF_DEVICE_PATH: str(self.opts.get("path", "sim://medium"))},
                  conf.CONF_DATABASE: self.opts.get("database")}
        if "baudrate" in self.opts:
            config[conf.CONF_DEVICE][conf.CONF_DEVICE_BAUDRATE] = int(self.opts["baudrate"])
        ieee = t.EUI64.convert(self.cfg.id)
        if self.radio_kind == "sim":
            if self.medium is None:
                raise AdapterError(f"device {self.name}: adapter.radio 'sim' needs the bench's simulated HAN "
                                   "(run it inside `rig sim`)")
            radio = self.medium.open_radio(f"{self.name}-zigpy", _bridge_eui(self.cfg.id), self.band, poll_period=7.5)
            self._sim_radio = radio
            target = self.medium.radio_name(self.cfg.id, besides=radio)
            if target is None:
                raise AdapterError(f"device {self.name}: no device {self.cfg.id} on the simulated HAN")
            app = mixed(config)
            app.rig_radio = radio
            nwk = _nwk_for(self.cfg.id)
            app.rig_nwk = {nwk: target}
            app.rig_bridge = self
            await app.connect()
            app.state.node_info.nwk = t.NWK(0x0000)
            app.state.node_info.ieee = t.EUI64.convert(_bridge_eui(self.cfg.id))
            device = app.add_device(ieee, nwk)
        else:
            try:
                app = await mixed.new(config, auto_form=False, start_radio=True)
            except Exception as exc:  # noqa: BLE001 - report the radio problem in one line
                raise AdapterError(f"device {self.name}: radio {self.radio_kind} at {self.opts.get('path')}: "
                                   f"{type(exc).__name__}: {exc}") from None
            app.rig_bridge = self
            device = app.devices.get(ieee)
            if device is None:
                raise AdapterError(f"device {self.name} ({self.cfg.id}) has not joined the network of radio "
                                   f"{self.opts.get('path')}: permit joining and join it first")
        self.app, self.device = app, device

    def stop(self) -> None:
        self._stop.set()
        try:
            if self.app is not None:
                asyncio.run_coroutine_threadsafe(self.app.disconnect(), self._loop).result(10)
        except Exception:  # noqa: BLE001 - stopping must finish
            log.exception("%s: disconnecting the radio", self.name)
        if self._sim_radio is not None:
            self._sim_radio.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.bus.close()

    # ------------------------------------------------------------------ packets (on the asyncio loop)
    def on_packet(self, packet) -> bool:  # noqa: ANN001
        """Every packet the radio hands zigpy; True when the bridge consumed it."""
        if self.device is None or packet.src is None or int(packet.src.address) != int(self.device.nwk):
            return False
        self.packets += 1
        if packet.rssi is not None:
            self.rssi = float(packet.rssi)
        if packet.lqi is not None:
            self.lqi = int(packet.lqi)
        data = packet.data.serialize()
        if self.bus.connected:
            self.bus.publish_event(self.node, "packet", {"band": self.band, "rssi": self.rssi, "lqi": self.lqi,
                                                         "cluster": f"0x{packet.cluster_id:04X}", "octets": len(data)})
        if packet.profile_id != SE_PROFILE:
            return False
        fut = self._pending.pop((int(packet.src.address), data[1] if len(data) > 1 else -1), None)
        if fut is not None and not fut.done():
            fut.set_result(data)
        return True

    async def _read(self, cluster: Any, names: list[str], timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        tsn = self.app.get_sequence()
        frame = zcl.read_attributes(cluster, names, tsn=tsn)
        fut = self._loop.create_future()
        self._pending[(int(self.device.nwk), tsn)] = fut
        try:
            await self.app.request(self.device, SE_PROFILE, cluster.cluster_id, SE_ENDPOINT, SE_ENDPOINT, tsn, frame,
                                   expect_reply=True)
            data = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop((int(self.device.nwk), tsn), None)
        return zcl.parse(cluster, data).attributes()

    async def read_all(self) -> dict[str, Any]:
        values = await self._read(zcl.Metering, ["supply_status", "instantaneous_demand", "current_summ_delivered",
                                                 "status"])
        if self.cfg.kind == "esme":
            values.update(await self._read(zcl.Prepayment, ["credit_remaining", "credit_status"]))
        return values

    # ------------------------------------------------------------------ polling (own thread)
    def poll(self) -> bool:
        try:
            values = asyncio.run_coroutine_threadsafe(self.read_all(), self._loop).result(READ_TIMEOUT * 3)
        except (Exception, FutureTimeout) as exc:  # noqa: BLE001 - a missed read is a link fact, not a crash
            log.info("%s: read failed: %s", self.name, exc)
            self.attempts.append(0)
            self.failures += 1
            self.publish()
            return False
        self.attempts.append(1)
        self.failures = 0
        self.values = {k: int(v) for k, v in values.items()}
        self.updated = self.clock.now()
        self.publish()
        return True

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.clock.wall_seconds(self.poll_period))

    async def link_test(self, frames: int) -> dict[str, Any]:
        """``frames`` Metering reads in turn; the share unanswered and the
        RSSI/LQI of the answers (the radio's MAC retries included)."""
        answered, rssi, lqi = 0, [], []
        started = self.clock.now()
        for _ in range(frames):
            try:
                await asyncio.wait_for(self._read(zcl.Metering, ["current_summ_delivered"], LINK_TEST_TIMEOUT),
                                       LINK_TEST_TIMEOUT * 2)
            except Exception:  # noqa: BLE001 - a lost frame (timeout, delivery error) is what is counted
                continue
            answered += 1
            if self.rssi is not None:
                rssi.append(self.rssi)
            lqi.append(self.lqi)
        return {"peer": self.name, "band": self.band, "frames": frames, "acked": answered,
                "per": round(1 - answered / frames, 4), "rssi": round(sum(rssi) / len(rssi), 1) if rssi else None,
                "lqi": round(sum(lqi) / len(lqi), 1) if lqi else 0, "psdu_octets": None, "retries": None,
                "method": "zcl_round_trip", "lab_seconds": round(self.clock.now() - started, 4)}

    def _link_test_op(self, args: LinkTestArgs, _ctx: CommandContext) -> dict:
        if args.peer not in (None, self.name):
            raise Refused(f"{self.name}: a zigpy bridge tests only its own device, not '{args.peer}'", code="invalid")
        if args.band not in (None, self.band):
            raise Refused(f"{self.name}: the bridge radio works on {self.band}, not {args.band} (adapter.band)",
                          code="invalid")
        wall = args.frames * LINK_TEST_TIMEOUT * 2 + 10
        return asyncio.run_coroutine_threadsafe(self.link_test(args.frames), self._loop).result(wall)

    def _read_op(self, _args: ReadArgs, _ctx: CommandContext) -> dict:
        if not self.poll():
            raise Refused(f"{self.name} did not answer over radio {self.radio_kind}", code="timeout")
        return self.state()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        v = self.values
        supply = SUPPLY.get(v["supply_status"]) if "supply_status" in v else None
        per = round(1 - sum(self.attempts) / len(self.attempts), 3) if self.attempts else None
        out: dict[str, Any] = {
            "kind": self.cfg.kind, "eui64": self.cfg.id, "backend": "zigpy", "radio": self.radio_kind,
            "firmware": self.cfg.firmware,
            "summary": (f"{supply}, " if supply else "") + f"{v.get('instantaneous_demand', '?')} W via zigpy",
            "han": {self.band: {"rssi": self.rssi, "lqi": self.lqi, "per": per,
                                "up": bool(self.attempts) and self.failures < FAILS_DOWN and self.attempts[-1] == 1}},
            "packets": self.packets, "updated": self.updated,
            "metrology": {"power": v.get("instantaneous_demand"),
                          "energy_kwh": v["current_summ_delivered"] / 1000 if "current_summ_delivered" in v else None},
        }
        if supply is not None:
            out["supply"] = supply
        if "credit_remaining" in v:
            out["prepayment"] = {"credit": v["credit_remaining"] / 100}
        return out

    def publish(self) -> None:
        if self.bus.connected:
            self.bus.publish_state(self.node, self.state())


def _bridge_eui(device_eui: str) -> str:
    """The bridge radio's own EUI-64 (derived, so it never collides with the device's)."""
    digest = hashlib.sha256(f"bridge:{device_eui}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (b"\x02" + digest[:7]))
