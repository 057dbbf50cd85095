"""Every driver's conversation with its instrument, pinned in order
(:func:`instruments.testing.expected_protocol`, after pymeasure's).

The pyvisa-sim dialogues (tests/test_instrument_drivers.py) hold a set of
strings an instrument understands; these hold the sequence: a setting is
sent and then read back, both of two settings are checked before either is
sent, and the Keysight 11713 raises attenuation before it lowers it.
"""

from __future__ import annotations

import os
import threading
import tty

import pytest

from instruments.ac_source import Chroma61500
from instruments.attenuator import Keysight11713, MiniCircuitsRCDAT
from instruments.errors import LimitError
from instruments.load_bank import Chroma63800
from instruments.optical_probe import ACK, OpticalProbe, data_message
from instruments.power_analyser import YokogawaWT310
from instruments.testing import ProtocolMismatch, expected_protocol
from rig.config import InstrumentLimits

SOURCE_LIMITS = InstrumentLimits(voltage_max=264, frequency_min=45, frequency_max=65)
LOAD_LIMITS = InstrumentLimits(current_max=60, power_max=14000)
IDN = ("*IDN?", "MAKER,MODEL,1,1.0")


# ----------------------------------------------------------------------------- AC source
def test_ac_source_sets_reads_back_and_dips_in_order():
    with expected_protocol(Chroma61500, [
        IDN,
        (":SOUR:VOLT:LIM:AC 264.0", None),                  # open: the source's own limit, from lab.yaml
        (":SOUR:VOLT:AC 230.0", None), (":SOUR:VOLT:AC?", "230.0"),
        (":SOUR:FREQ 50.00", None), (":SOUR:FREQ?", "50.00"),
        (":SOUR:VOLT:AC?", "230.0"), (":SOUR:FREQ?", "50.00"),  # the setpoints returned
        (":OUTP ON", None), (":OUTP?", "1"),
        (":OUTP?", "ON"), (":SOUR:VOLT:AC?", "230.0"),          # a dip needs the output on; from this voltage
        (":PULS:VOLT:AC 115.0", None), (":PULS:PER 200.0", None), (":PULS:DCYC 100", None),
        (":PULS:COUN 1", None), (":OUTP:MODE PULSE", None), (":TRIG ON", None), ("*OPC?", "1"),
        (":OUTP OFF", None), (":OUTP?", "0"),                   # safe
    ], limits=SOURCE_LIMITS) as src:
        assert src.set(voltage=230, frequency=50) == {"voltage": 230.0, "frequency": 50.0}
        assert src.on() is True
        assert src.dip(depth=0.5, duration=0.2) == {"level": 115.0, "duration": 0.2}
        assert src.safe() is True


def test_ac_source_checks_both_setpoints_before_sending_either():
    with expected_protocol(Chroma61500, [IDN, (":SOUR:VOLT:LIM:AC 264.0", None)], limits=SOURCE_LIMITS) as src:
        with pytest.raises(LimitError, match="frequency 40 Hz is below 45 Hz"):
            src.set(voltage=230, frequency=40)
        with pytest.raises(LimitError, match="voltage 270 V is above 264 V"):
            src.set(voltage=270)


# ----------------------------------------------------------------------------- load bank
def test_load_bank_sends_mode_and_setpoint_then_reads_both_back():
    with expected_protocol(Chroma63800, [
        IDN,
        ("MODE CC", None), ("CURR 10.000", None), ("MODE?", "CC"), ("CURR?", "10.000"),
        ("LOAD ON", None), ("LOAD?", "ON"),
        ("MODE CP", None), ("POW 2300.000", None), ("MODE?", "CP"), ("POW?", "2300.000"),
        ("MEAS:VOLT?", "229.8"), ("MEAS:CURR?", "10.0"), ("MEAS:POW?", "2298.0"),
        ("LOAD OFF", None), ("LOAD?", "OFF"),
    ], limits=LOAD_LIMITS) as load:
        assert load.draw(amps=10) == {"mode": "current", "setpoint": 10.0, "on": True}
        assert load.set(watts=2300) == {"mode": "power", "setpoint": 2300.0}
        assert load.measure() == {"voltage": 229.8, "current": 10.0, "power": 2298.0}
        assert load.safe() is True


def test_load_bank_refuses_before_the_wire():
    with expected_protocol(Chroma63800, [IDN], limits=LOAD_LIMITS) as load:
        with pytest.raises(LimitError, match=r"current 61 A is above 60 A \(lab.yaml limits.current_max\)"):
            load.draw(amps=61)


# ----------------------------------------------------------------------------- analyser
def test_analyser_programs_its_items_then_reads_them():
    with expected_protocol(YokogawaWT310, [
        ("*IDN?", "YOKOGAWA,WT310,1,F1.03"),
        (":NUM:FORM ASC", None), (":NUM:NORM:NUM 4", None),
        (":NUM:NORM:ITEM1 U,1", None), (":NUM:NORM:ITEM2 I,1", None), (":NUM:NORM:ITEM3 P,1", None),
        (":NUM:NORM:ITEM4 FU,1", None),
        (":NUM:NORM:VAL?", "2.3012E+02,1.0003E+01,2.3019E+03,5.0001E+01"),
    ]) as wt:
        r = wt.read()
        assert (r.voltage, r.current, r.power, r.frequency) == (230.12, 10.003, 2301.9, 50.001)


# ----------------------------------------------------------------------------- attenuators
def test_rcdat_reads_its_model_then_steps_and_reads_back():
    with expected_protocol(MiniCircuitsRCDAT, [
        (":MN?", "MN=RCDAT-6000-90"), (":SN?", "SN=11904280012"),
        (":ATT?", "10.00"), (":SETATT=40.00", "1"), (":ATT?", "40.00"),
    ], limits=InstrumentLimits(attenuation_max=95)) as att:
        assert att.range.high.value == 90.0                 # the model's 90 dB is tighter than lab.yaml's 95
        assert att.set(40.1) == 40.0                        # rounded to its 0.25 dB step
        with pytest.raises(LimitError, match=r"attenuation 91 dB is above 90 dB"):
            att.set(91)                                     # refused before the wire


KEYSIGHT_39_TO_40_TO_31 = [
    ("*IDN?", "Agilent Technologies,11713C,1,1.2"),
    ("ATT:BANK1:X?", "9"), ("ATT:BANK1:Y?", "30"),      # now: 39 dB
    ("ATT:BANK1:X?", "9"), ("ATT:BANK1:Y?", "30"),      # the sections before switching
    ("ATT:BANK1:Y 40", None), ("ATT:BANK1:X 0", None),  # 40 dB: raise Y first (49 dB), then lower X
    ("ATT:BANK1:X?", "0"), ("ATT:BANK1:Y?", "40"),      # read back
    ("ATT:BANK1:X?", "0"), ("ATT:BANK1:Y?", "40"),
    ("ATT:BANK1:X?", "0"), ("ATT:BANK1:Y?", "40"),
    ("ATT:BANK1:X 1", None), ("ATT:BANK1:Y 30", None),  # 31 dB: raise X first (41 dB), then lower Y
    ("ATT:BANK1:X?", "1"), ("ATT:BANK1:Y?", "30"),
]


def test_keysight_raises_attenuation_before_lowering_it():
    with expected_protocol(Keysight11713, KEYSIGHT_39_TO_40_TO_31) as att:
        assert att.set(40) == 40.0
        assert att.set(31) == 31.0


def test_the_protocol_test_catches_a_lower_before_raise_driver():
    """The ordered test is the one that can fail: a driver that writes the
    sections in table order (lowering X to 0 first: 30 dB on the way from
    39 to 40) sends the right strings in the wrong order."""

    class TableOrder(Keysight11713):
        def _apply(self, target: float, now: float) -> None:
            (x, y), (old_x, old_y) = self.split(target), self.sections()
            for delta, command in ((x - old_x, f"ATT:BANK1:X {x}"), (y - old_y, f"ATT:BANK1:Y {y}")):
                if delta:
                    self.write(command)

    with pytest.raises(ProtocolMismatch, match="expected 'ATT:BANK1:Y 40', sent 'ATT:BANK1:X 0'"):
        with expected_protocol(TableOrder, KEYSIGHT_39_TO_40_TO_31) as att:
            att.set(40)


def test_keysight_step_limit_is_checked_after_reading_where_it_is():
    with expected_protocol(Keysight11713, [
        ("*IDN?", "Agilent Technologies,11713C,1,1.2"),
        ("ATT:BANK1:X?", "9"), ("ATT:BANK1:Y?", "30"),
    ], limits=InstrumentLimits(step_max=20)) as att:
        with pytest.raises(LimitError, match="a step from 39 to 70 dB is 31 dB, larger than 20 dB"):
            att.set(70)


# ----------------------------------------------------------------------------- optical probe (serial, on a pty)
METER = "000d6f0000000001"
IDENT = f"/RIG5{METER}\r\n".encode()
BLOCK = data_message([("0.0.0", METER), ("1.8.0", "0000012.345*kWh")])


class ScriptedMeter:
    """The far end of a pty that expects the probe's bytes in order and answers each."""

    def __init__(self, script: list[tuple[bytes, bytes]]):
        self.script = list(script)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.received: list[bytes] = []
        self.mismatch: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        while self.script and not self._stop.is_set():
            try:
                buffer += os.read(self.master, 256)
            except OSError:
                return
            want, reply = self.script[0]
            if len(buffer) < len(want):
                continue
            got, buffer = buffer[:len(want)], buffer[len(want):]
            self.received.append(got)
            if got != want:
                self.mismatch = f"expected {want!r}, got {got!r}"
                return
            self.script.pop(0)
            os.write(self.master, reply)

    def close(self) -> None:
        self._stop.set()
        os.close(self.slave)
        os.close(self.master)
        self._thread.join(2)


def test_optical_probe_signs_on_acknowledges_then_reads_the_block():
    meter = ScriptedMeter([
        (b"/?!\r\n", IDENT), (ACK + b"050\r\n", BLOCK),     # open: the identification is a readout
        (b"/?!\r\n", IDENT), (ACK + b"050\r\n", BLOCK),     # read
    ])
    try:
        with OpticalProbe("optical", meter.path, timeout=2.0) as probe:
            assert probe.identity == f"RIG5{METER}"
            assert probe.read().value("1.8.0") == 12.345
        assert meter.mismatch is None and not meter.script, (meter.mismatch, meter.received)
    finally:
        meter.close()
