"""Each driver against a pyvisa-sim dialogue (the exact SCPI it sends) and
against its simulated instrument (what it does), plus the failure paths:
limits refused before the wire, timeouts and unreachable addresses named."""

from __future__ import annotations

import os
import socket
import threading
import time
import tty
from pathlib import Path

import pytest
import pyvisa

from instruments.ac_source import Chroma61500
from instruments.attenuator import Keysight11713, MiniCircuitsRCDAT
from instruments.errors import InstrumentError, InstrumentTimeout, LimitError
from instruments.load_bank import Chroma63800
from instruments.optical_probe import ETX, STX, OpticalProbe, bcc, data_message
from instruments.power_analyser import YokogawaWT310
from instruments.sim.ac_source import SimulatedChroma61500
from instruments.sim.attenuator import SimulatedKeysight11713, SimulatedRCDAT
from instruments.sim.load_bank import SimulatedChroma63800
from instruments.sim.optical_port import SimulatedOpticalPort, physics_registers
from instruments.sim.power_analyser import SimulatedWT310
from rig.clock import LabClock
from rig.config import InstrumentLimits
from rig.sim.physics import PhysicalBench

DIALOGUES = Path(__file__).parent / "dialogues"
NO_ERROR = '0,"No error"'

SOURCE_LIMITS = InstrumentLimits(voltage_max=264, frequency_min=45, frequency_max=65)
LOAD_LIMITS = InstrumentLimits(current_max=60, power_max=14000)


@pytest.fixture
def dialogue(tmp_path):
    """A pyvisa-sim resource manager on a dialogue file.  pyvisa keeps one
    simulated library (and its instruments' state) per file path, so each
    test gets its own copy of the file."""
    def rm(name: str) -> pyvisa.ResourceManager:
        copy = tmp_path / f"{name}.yaml"
        copy.write_text((DIALOGUES / f"{name}.yaml").read_text())
        return pyvisa.ResourceManager(f"{copy}@sim")
    return rm


def assert_only_listed_commands(driver) -> None:
    """Every string the driver sent was in the dialogue (else pyvisa-sim queued an error)."""
    assert driver.query("SYST:ERR?") == NO_ERROR


@pytest.fixture
def physics():
    return PhysicalBench(LabClock(scale=60))


@pytest.fixture
def twin(physics):
    started = []

    def start(part):
        started.append(part.start())
        return part

    yield start
    for part in started:
        part.stop()


# ----------------------------------------------------------------------------- AC source
def test_ac_source_sends_the_chroma_commands(dialogue):
    with Chroma61500("ac_source", "TCPIP::10.0.0.5::2101::SOCKET", limits=SOURCE_LIMITS,
                     resource_manager=dialogue("chroma_61500")) as src:
        assert src.identity == "Chroma ATE,61505,123456,1.00"
        assert src.set(voltage=230, frequency=50) == {"voltage": 230.0, "frequency": 50.0}
        assert src.on() is True
        assert src.dip(depth=0.5, duration=0.2) == {"level": 115.0, "duration": 0.2}
        assert src.measure() == {"voltage": 229.95, "current": 10.012, "power": 2302.2, "frequency": 50.0}
        assert src.safe() is True and src.is_on is False
        assert_only_listed_commands(src)


def test_ac_source_limits_are_checked_before_the_wire(dialogue):
    with Chroma61500("ac_source", "TCPIP::10.0.0.5::2101::SOCKET", limits=SOURCE_LIMITS,
                     resource_manager=dialogue("chroma_61500")) as src:
        with pytest.raises(LimitError, match=r"voltage 270 V is above 264 V \(lab.yaml limits.voltage_max\)"):
            src.set(voltage=270, frequency=50)
        with pytest.raises(LimitError, match=r"frequency 40 Hz is below 45 Hz \(lab.yaml limits.frequency_min\)"):
            src.set(voltage=230, frequency=40)
        with pytest.raises(LimitError, match="a dip needs the output on"):
            src.dip(0.5, 0.2)
        # neither refused set sent its other, valid, setpoint
        assert src.setpoints() == {"voltage": 0.0, "frequency": 60.0}
        assert_only_listed_commands(src)


def test_ac_source_drives_the_simulated_supply(twin, physics):
    sim = twin(SimulatedChroma61500("ac_source", physics))
    with Chroma61500("ac_source", sim.address, limits=SOURCE_LIMITS) as src:
        src.set(voltage=240, frequency=60)
        assert physics.supply_voltage() == 0.0          # output still off
        src.on()
        assert (physics.supply_voltage(), physics.source.frequency) == (240.0, 60.0)
        assert sim.voltage_limit == 264.0               # the source's own limit, set at open
        samples = []
        physics.listen(lambda _what: samples.append(physics.supply_voltage()))
        src.dip(depth=1.0, duration=0.3)                # lab seconds
        assert samples[0] == 0.0
        assert LabClock(60).wait_for(lambda: physics.supply_voltage() == 240.0, timeout=30)
        src.off()
        assert physics.supply_voltage() == 0.0


def test_simulated_ac_source_refuses_above_its_programmed_limit(twin, physics):
    sim = twin(SimulatedChroma61500("ac_source", physics))
    # a driver with a looser lab limit than the source's programmed one
    with Chroma61500("ac_source", sim.address, limits=SOURCE_LIMITS) as src:
        src.write(":SOUR:VOLT:LIM:AC 250.0")
        with pytest.raises(InstrumentError, match="voltage set to 260.0 but reads back"):
            src.set(voltage=260)
        assert src.query("SYST:ERR?") == '-222,"Data out of range"'


# ----------------------------------------------------------------------------- load bank
def test_load_bank_sends_the_chroma_commands(dialogue):
    with Chroma63800("load", "TCPIP::10.0.0.6::2101::SOCKET", limits=LOAD_LIMITS,
                     resource_manager=dialogue("chroma_63800")) as load:
        assert load.identity.startswith("Chroma ATE,63804")
        assert load.draw(amps=10) == {"mode": "current", "setpoint": 10.0, "on": True}
        assert load.set(watts=2300) == {"mode": "power", "setpoint": 2300.0}
        assert load.measure() == {"voltage": 229.8, "current": 10.0, "power": 2298.0}
        assert load.safe() is True and load.is_on is False
        assert_only_listed_commands(load)


def test_load_bank_limits_are_checked_before_the_wire(dialogue):
    with Chroma63800("load", "TCPIP::10.0.0.6::2101::SOCKET", limits=LOAD_LIMITS,
                     resource_manager=dialogue("chroma_63800")) as load:
        with pytest.raises(LimitError, match=r"current 61 A is above 60 A \(lab.yaml limits.current_max\)"):
            load.draw(amps=61)
        with pytest.raises(LimitError, match=r"power 15000 W is above 14000 W"):
            load.draw(watts=15000)
        assert load.is_on is False and load.setpoint() == {"mode": "current", "setpoint": 0.0}
        assert_only_listed_commands(load)


def test_a_load_bank_without_a_current_limit_is_not_driven():
    with pytest.raises(LimitError, match="needs limits.current_max"):
        Chroma63800("load", "TCPIP::10.0.0.6::2101::SOCKET", limits=InstrumentLimits())


def test_load_bank_draws_only_from_a_live_load_side(twin, physics):
    sim = twin(SimulatedChroma63800("load", physics))
    with Chroma63800("load", sim.address, limits=LOAD_LIMITS) as load:
        load.draw(amps=10)
        assert physics.load.on and load.measure()["current"] == 0.0     # no supply yet
        physics.set_source(output=True)
        physics.set_mains_relay(True)
        physics.set_contactor(True)
        assert load.measure() == {"voltage": 230.0, "current": 10.0, "power": 2300.0}
        load.draw(watts=1150)
        assert load.measure()["current"] == pytest.approx(5.0)
        load.off()
        assert physics.load_current() == 0.0


# ----------------------------------------------------------------------------- analyser
def test_analyser_sends_the_wt310_numeric_commands(dialogue):
    with YokogawaWT310("analyser", "TCPIP::10.0.0.7::10001::SOCKET", resource_manager=dialogue("yokogawa_wt310")) as wt:
        assert wt.identity == "YOKOGAWA,WT310,C2XX00001,F1.03"
        r = wt.read()
        assert (r.voltage, r.current, r.power, r.frequency) == (230.12, 10.003, 2301.9, 50.001)
        assert_only_listed_commands(wt)


def test_analyser_reads_no_frequency_without_voltage_and_refuses_over_range(dialogue):
    rm = dialogue("yokogawa_wt310")
    with YokogawaWT310("analyser", "TCPIP::10.0.0.17::10001::SOCKET", resource_manager=rm) as wt:
        assert wt.read().as_dict() == {"voltage": 0.0, "current": 0.0, "power": 0.0, "frequency": None}
    with YokogawaWT310("analyser", "TCPIP::10.0.0.27::10001::SOCKET", resource_manager=rm) as wt:
        with pytest.raises(InstrumentError, match="voltage reads INF: over range"):
            wt.read()


def test_analyser_reads_the_load_side(twin, physics):
    sim = twin(SimulatedWT310("analyser", physics))
    with YokogawaWT310("analyser", sim.address) as wt:
        assert wt.read().voltage == 0.0
        physics.set_source(output=True)
        physics.set_mains_relay(True)
        assert wt.read().voltage == 0.0                  # contactor open: load side dead
        physics.set_contactor(True)
        physics.set_load(on=True, mode="current", setpoint=12.5)
        r = wt.read()
        assert (r.voltage, r.current, r.power, r.frequency) == (230.0, 12.5, 2875.0, 50.0)


# ----------------------------------------------------------------------------- attenuators
def test_rcdat_sends_the_telnet_commands_and_rounds_to_its_step(dialogue):
    with MiniCircuitsRCDAT("att", "TCPIP::10.0.0.8::23::SOCKET", limits=InstrumentLimits(attenuation_max=95),
                           resource_manager=dialogue("minicircuits_rcdat")) as att:
        assert att.identity == "Mini-Circuits,RCDAT-6000-90,11904280012"
        assert att.range.high.value == 90.0 and "RCDAT-6000-90" in att.range.high.source   # model is tighter
        assert att.set(40.1) == 40.0
        assert att.db == 40.0
        with pytest.raises(LimitError, match=r"attenuation 91 dB is above 90 dB \(rating of the Mini-Circuits"):
            att.set(91)
        assert_only_listed_commands(att)


def test_attenuator_step_limit_is_checked_before_the_wire(dialogue):
    with MiniCircuitsRCDAT("att", "TCPIP::10.0.0.8::23::SOCKET", limits=InstrumentLimits(step_max=20),
                           resource_manager=dialogue("minicircuits_rcdat")) as att:
        with pytest.raises(LimitError, match="a step from 10 to 40 dB is 30 dB, larger than 20 dB"):
            att.set(40)
        assert att.db == 10.0
        assert att.set(30) == 30.0
        assert_only_listed_commands(att)


def test_keysight_sends_bank_settings_raising_attenuation_first(dialogue):
    with Keysight11713("att", "TCPIP::10.0.0.9::5025::SOCKET", resource_manager=dialogue("keysight_11713")) as att:
        assert att.identity.startswith("Agilent Technologies,11713C")
        assert att.db == 39.0
        assert att.set(40) == 40.0 and att.sections() == (0, 40)
        assert att.set(81) == 81.0 and att.sections() == (11, 70)
        with pytest.raises(LimitError, match=r"above 81 dB \(rating of the Keysight 11713"):
            att.set(82)
        assert_only_listed_commands(att)


def test_keysight_path_never_passes_below_either_end(twin, physics):
    sim = twin(SimulatedKeysight11713("att", physics))
    seen = []
    physics.listen(lambda what: "attenuation" in what and seen.append(physics.attenuation("att")))
    with Keysight11713("att", sim.address) as att:
        att.set(39)
        seen.clear()
        att.set(40)             # X 9 -> 0, Y 30 -> 40: Y first
        assert seen == [49.0, 40.0]
        seen.clear()
        att.set(31)             # X 0 -> 1, Y 40 -> 30: X first
        assert seen == [41.0, 31.0]


def test_rcdat_sets_the_rf_path_attenuation(twin, physics):
    sim = twin(SimulatedRCDAT("attenuator_ppmid", physics))
    with MiniCircuitsRCDAT("attenuator_ppmid", sim.address, limits=InstrumentLimits(attenuation_max=95)) as att:
        assert att.range.high.value == 95.0              # lab.yaml is tighter than the 110 dB model
        assert att.set(62.3) == 62.25
        assert physics.attenuation("attenuator_ppmid") == 62.25


# ----------------------------------------------------------------------------- optical probe
METER = "000d6f0000000001"


def test_optical_probe_reads_the_meter_over_a_pty(twin, physics):
    port = twin(SimulatedOpticalPort("optical", METER, physics_registers(physics, METER)))
    physics.set_source(output=True)
    physics.set_mains_relay(True)
    with OpticalProbe("optical", port.address) as probe:
        assert probe.identity == f"RIG5{METER}"
        first = probe.read()
        assert first.baud == 9600
        assert first.registers["0.0.0"].value == METER
        assert (first.value("32.7.0"), first.registers["32.7.0"].unit) == (230.0, "V")
        assert first.value("31.7.0") == 0.0
        physics.set_contactor(True)
        physics.set_load(on=True, mode="current", setpoint=8)
        assert probe.read().value("31.7.0") == 8.0        # a second session on the same port


def test_optical_port_ignores_a_sign_on_at_the_wrong_speed(twin, physics):
    import serial

    port = twin(SimulatedOpticalPort("optical", METER, physics_registers(physics, METER)))
    with serial.Serial(port.address, 9600, timeout=0.3) as raw:
        raw.write(b"/?!\r\n")
        assert raw.read(64) == b""
    with OpticalProbe("optical", port.address, timeout=1.0) as probe:    # at 300 baud it answers
        assert probe.identity.startswith("RIG5")


def _meter_on_pty(answer):
    """A pty whose far end is played by ``answer(request_bytes) -> reply``."""
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                data = os.read(master, 256)
            except OSError:
                return
            reply = answer(data)
            if reply:
                os.write(master, reply)

    threading.Thread(target=run, daemon=True).start()
    return os.ttyname(slave), (stop, master, slave)


def _close_meter(handles):
    stop, master, slave = handles
    stop.set()
    os.close(slave)
    os.close(master)


def test_optical_probe_rejects_a_bad_block_check():
    def meter(data: bytes) -> bytes:
        if data.startswith(b"/?"):
            return b"/XYZ5BADMETER\r\n"
        if data.startswith(b"\x06"):
            good = data_message([("1.8.0", "000001.000*kWh")])
            return good[:-1] + bytes([good[-1] ^ 0xFF])
        return b""

    path, handles = _meter_on_pty(meter)
    try:
        probe = OpticalProbe("optical", path, timeout=1.0)
        probe._connect()
        with pytest.raises(InstrumentError, match=rf"instrument optical at {path}: .*block check \(BCC\)"):
            probe.read()
        probe.close()
    finally:
        _close_meter(handles)


def test_optical_probe_times_out_naming_the_port():
    """A meter that does not answer (no supply: a bench rests de-energised)
    leaves the probe open with no identity; a read then times out naming
    the port."""
    path, handles = _meter_on_pty(lambda _data: b"")
    try:
        t0 = time.monotonic()
        probe = OpticalProbe("optical", path, timeout=0.3).open()
        assert probe.identity is None
        import termios

        attrs = termios.tcgetattr(handles[2])   # the line back at a neutral speed, as a meter's port leaves it
        attrs[4] = attrs[5] = termios.B38400   # (some kernels refuse to re-apply 7E1 at an unchanged speed)
        termios.tcsetattr(handles[2], termios.TCSANOW, attrs)
        with pytest.raises(InstrumentTimeout, match=rf"instrument optical at {path}: no identification"):
            probe.read()
        assert time.monotonic() - t0 < 2.0
        probe.close()
    finally:
        _close_meter(handles)


def test_data_message_framing():
    msg = data_message([("1.8.0", "1*kWh")])
    assert msg.startswith(STX) and msg[-2:-1] == ETX
    assert msg[-1] == bcc(msg[1:-1])


def test_optical_probe_names_a_missing_port():
    with pytest.raises(InstrumentError, match="instrument optical at /dev/nonexistent-probe: cannot open"):
        OpticalProbe("optical", "/dev/nonexistent-probe").open()


# ----------------------------------------------------------------------------- failures named
def test_a_silent_instrument_times_out_naming_it_and_its_address(silent_instrument):
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout) as err:
        YokogawaWT310("analyser", silent_instrument, timeout=0.3).open()
    assert str(err.value) == f"instrument analyser at {silent_instrument}: no answer to '*IDN?' within 0.3 s"
    assert time.monotonic() - t0 < 1.5


def test_an_unreachable_address_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    address = f"TCPIP::127.0.0.1::{port}::SOCKET"
    with pytest.raises(InstrumentError, match=rf"instrument load at {address}: not reachable"):
        Chroma63800("load", address, limits=LOAD_LIMITS).open()


def test_a_bad_resource_name_is_named():
    with pytest.raises(InstrumentError, match="instrument analyser at 10.0.0.7:5025: not a VISA resource name"):
        YokogawaWT310("analyser", "10.0.0.7:5025").open()


def test_a_simulated_instrument_serves_several_clients_at_once(twin, physics):
    sim = twin(SimulatedWT310("analyser", physics))
    errors = []

    def client():
        try:
            with YokogawaWT310("analyser", sim.address) as wt:
                for _ in range(50):
                    assert wt.read().voltage == 0.0
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sum(1 for c in sim.received if c.startswith(":NUM:NORM:VAL?")) == 200
