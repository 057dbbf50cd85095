"""Adapters for real devices, run here without hardware: the zigpy bridge on
the simulated medium, the optical adapter on a simulated optical port (pty)."""

from __future__ import annotations

import pytest

from rig.adapters import AdapterError, adapter_class, start_adapter
from rig.config import DeviceConfig

pytestmark = pytest.mark.timeout(120)


def _bridged_esme(cfg):
    bench = cfg.bench("bench-1")
    esme = bench.devices["esme"]
    bench.devices["esme-z"] = DeviceConfig(kind="esme", id=esme.id, backend="zigpy", han={"band": "2.4GHz"},
                                         adapter={"radio": "sim", "poll_period": 5})


def test_zigpy_bridge_reads_a_meter_and_reports_every_packet(device_bench):
    sim = device_bench(edit=_bridged_esme)
    b = sim.bench
    z = b.device("esme-z")
    state = z.wait_state(lambda s: s.get("supply") == "enabled", 60, "bridged meter read")
    assert state["backend"] == "zigpy" and state["prepayment"]["credit"] == pytest.approx(20.0, abs=0.1)
    link = state["han"]["2.4GHz"]
    assert link["up"] and link["rssi"] is not None and 0 < link["lqi"] <= 255
    packet = z.wait_event("packet")
    assert packet["cluster"] in ("0x0702", "0x0705") and packet["lqi"] > 0
    b.dcc.disable()
    assert z.request("read")["supply"] == "disabled"            # the same meter, seen through zigpy


def test_unknown_backend_and_missing_radio_package_are_one_line_errors():
    with pytest.raises(AdapterError, match="unknown backend 'lora'"):
        adapter_class("lora", "esme")
    pytest.importorskip("zigpy.application")
    try:
        import zigpy_znp  # noqa: F401
        pytest.skip("zigpy-znp is installed here")
    except ImportError:
        pass
    from rig.adapters.zigpy_bridge import application_class

    with pytest.raises(AdapterError, match="pip install zigpy-znp"):
        application_class("znp", "esme")


def test_sim_radio_needs_the_simulated_han(amqtt_broker, device_bench):
    sim = device_bench()
    dev = DeviceConfig(kind="esme", id="00:0d:6f:00:00:00:00:01", backend="zigpy", adapter={"radio": "sim"})

    class NoHan:
        lab, bench_name, endpoint, clock = sim.cfg, "bench-1", amqtt_broker, sim.clock

    with pytest.raises(AdapterError, match="simulated HAN"):
        start_adapter(NoHan(), "lonely", dev, medium=None)


def test_optical_adapter_reads_registers_through_a_pty(device_bench, amqtt_broker):
    port_mod = pytest.importorskip("instruments.sim.optical_port")
    sim = device_bench()
    esme = sim.part("Esme")
    port = port_mod.SimulatedOpticalPort("probe", "000d6f0000000001", esme.optical_registers).start()
    try:
        dev = DeviceConfig(kind="esme", id="00:0d:6f:00:00:00:00:31", backend="optical",
                         adapter={"port": port.path, "poll_period": 600})

        class World:
            lab, bench_name, endpoint, clock = sim.cfg, "bench-1", amqtt_broker, sim.clock

        adapter = start_adapter(World(), "meter-optical", dev)
        try:
            state = adapter.state()
            assert state["supply"] == "enabled" and state["metrology"]["voltage"] == pytest.approx(230.0)
            assert state["registers"]["96.3.10"] == "1"
            sim.bench.dcc.disable()
            assert adapter.read() and adapter.state()["supply"] == "disabled"
        finally:
            adapter.stop()
    finally:
        port.stop()
