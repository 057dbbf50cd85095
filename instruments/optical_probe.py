"""Optical probe on the meter's optical port: IEC 62056-21 mode C readout over pyserial.

Follows IEC 62056-21:2002 ("Direct local data exchange"), clause 6.3
(protocol mode C) and 6.3.14 (data readout):

1. sign-on at 300 baud, 7 data bits, even parity, 1 stop bit:
   ``/?<device address>!CR LF`` (an empty address asks any meter);
2. the meter identifies itself: ``/XXXZ<identification>CR LF``, where
   ``XXX`` is the manufacturer and ``Z`` the highest baud rate it offers
   (``0``..``6`` = 300..19200 baud);
3. acknowledgement/option select: ``ACK 0 Z 0 CR LF`` (normal protocol, that
   baud rate, data readout mode); both sides switch to the new baud rate;
4. the data message: ``STX <data block> ! CR LF ETX BCC``, where each data
   line is ``<address>(<value>[*<unit>])`` and BCC is the XOR of every
   byte after STX up to and including ETX.

The address is a serial device (``/dev/ttyUSB0``), a pyserial URL
(``rfc2217://host:port``) or a VISA-style ``ASRL/dev/ttyUSB0::INSTR``.
Nothing to de-energise: reading is passive.

Example::

    with OpticalProbe("optical", "/dev/ttyUSB0") as probe:
        readout = probe.read()
        print(readout.identification)           # RIG5ESME-000d6f0000000001
        print(readout.value("1.8.0"), readout.registers["1.8.0"].unit)    # 12.345 kWh
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rig.config import InstrumentLimits

from .errors import InstrumentError, InstrumentTimeout

SOH, STX, ETX, ACK, NAK = b"\x01", b"\x02", b"\x03", b"\x06", b"\x15"
#: mode C baud rate characters (IEC 62056-21, 6.3.14 item 13)
BAUD_RATES = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
_LINE = re.compile(r"^([^()]+)\(([^()*]*)(?:\*([^()]*))?\)")
_GROUPS = re.compile(r"\(([^()]*)\)")
#: the logbook (event log) data set: one line per entry, ``P.98(<YYMMDDhhmmss>)(<code>)(<event>)``
LOGBOOK = "P.98"


def bcc(data: bytes) -> int:
    """Block check character: XOR of the bytes given."""
    out = 0
    for b in data:
        out ^= b
    return out


def data_message(lines: "Sequence[tuple[str, str | list[str] | tuple[str, ...]]]") -> bytes:
    """``STX <lines> ! CR LF ETX BCC`` for ``[(address, "value*unit"), ...]``;
    a line of several values (a logbook entry) gives them as a list."""
    def line(address: str, value: "str | list[str] | tuple[str, ...]") -> str:
        values = [value] if isinstance(value, str) else list(value)
        return address + "".join(f"({v})" for v in values) + "\r\n"

    body = "".join(line(a, v) for a, v in lines).encode("ascii") + b"!\r\n" + ETX
    return STX + body + bytes([bcc(body)])


def timestamp(text: str) -> float | None:
    """A ``YYMMDDhhmmss`` time (UTC, as the rig's meters log it) as seconds since the epoch."""
    import calendar
    import time as _time

    try:
        return float(calendar.timegm(_time.strptime(text.strip(), "%y%m%d%H%M%S")))
    except ValueError:
        return None


def stamp(t: float) -> str:
    """Seconds since the epoch as ``YYMMDDhhmmss`` (UTC, whole seconds, truncated)."""
    import time as _time

    return _time.strftime("%y%m%d%H%M%S", _time.gmtime(int(t)))


@dataclass(frozen=True)
class Register:
    address: str
    value: str
    unit: str | None = None

    @property
    def number(self) -> float:
        return float(self.value)


@dataclass
class Readout:
    """A meter's identification and its data block, register by register;
    ``lines`` keeps every line with all its values (a logbook has many
    lines of one address, each of several values)."""

    identification: str
    baud: int
    registers: dict[str, Register] = field(default_factory=dict)
    lines: list[tuple[str, list[str]]] = field(default_factory=list)

    def value(self, address: str) -> float:
        return self.registers[address].number

    def logbook(self) -> list[dict[str, Any]]:
        """The logbook entries (``P.98``) in the readout, oldest first:
        ``{"ts", "code", "event"}`` (``ts`` seconds since the epoch, whole)."""
        out = []
        for address, values in self.lines:
            if address != LOGBOOK or not values:
                continue
            entry: dict[str, Any] = {"ts": timestamp(values[0]), "raw": values}
            if len(values) > 1 and values[1]:
                entry["code"] = values[1]
            if len(values) > 2:
                entry["event"] = values[2]
            out.append(entry)
        return out

    def as_dict(self) -> dict[str, Any]:
        out = {"identification": self.identification, "baud": self.baud,
               "registers": {a: {"value": r.value, "unit": r.unit} for a, r in self.registers.items()
                             if a != LOGBOOK}}
        book = self.logbook()
        if book:
            out["logbook"] = book
        return out


def parse_data_block(text: str) -> dict[str, Register]:
    registers: dict[str, Register] = {}
    for line in text.split("\r\n"):
        m = _LINE.match(line.strip())
        if m:
            registers[m.group(1)] = Register(m.group(1), m.group(2), m.group(3))
    return registers


def parse_lines(text: str) -> list[tuple[str, list[str]]]:
    """Every data line as (address, [values ...])."""
    out = []
    for line in text.split("\r\n"):
        line = line.strip()
        head = line.find("(")
        if head > 0:
            out.append((line[:head], _GROUPS.findall(line[head:])))
    return out


class OpticalProbe:
    """An IEC 62056-21 optical probe (mode C, data readout) over pyserial."""

    model = "IEC 62056-21 optical probe"

    def __init__(self, name: str, address: str, timeout: float = 2.0, limits: InstrumentLimits | None = None,
                 device_address: str = ""):
        self.name, self.address, self.timeout = name, address, float(timeout)
        self.limits = limits or InstrumentLimits()
        self.device_address = device_address
        self.identity: str | None = None
        self._port: Any = None        # a pyserial port while open
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ port
    def _url(self) -> str:
        m = re.fullmatch(r"ASRL(.+)::INSTR", self.address)
        return m.group(1) if m else self.address

    def open(self) -> "OpticalProbe":
        """Open the port and ask the meter who it is.  A meter that does not
        answer (no supply: a bench rests de-energised) leaves ``identity``
        None: the probe is there, the meter is dark."""
        with self._lock:
            self._connect()
            try:
                self.identity = self.identify()
            except InstrumentTimeout:
                self.identity = None
        return self

    def _connect(self) -> None:
        import serial

        try:
            self._port = serial.serial_for_url(self._url(), baudrate=300, bytesize=serial.SEVENBITS,
                                               parity=serial.PARITY_EVEN, stopbits=serial.STOPBITS_ONE,
                                               timeout=self.timeout, write_timeout=self.timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise InstrumentError(self.name, self.address, f"cannot open the serial port: {exc}") from None

    def close(self) -> None:
        with self._lock:
            port, self._port = self._port, None
            if port is not None:
                port.close()

    def __enter__(self) -> "OpticalProbe":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_until(self, end: bytes, what: str) -> bytes:
        data = self._port.read_until(end)
        if not data.endswith(end):
            self.close()  # a half-read message must not be read as the next answer
            raise InstrumentTimeout(self.name, self.address, f"no {what} within {self.timeout:g} s "
                                    f"(got {data[:40]!r})")
        return data

    def _line(self, baud: int) -> None:
        """Switch the port's baud rate (7E1 stays); a no-op when already there."""
        if self._port.baudrate != baud:
            self._port.baudrate = baud

    # ------------------------------------------------------------------ lab verbs
    def read(self) -> Readout:
        """Sign on, switch baud rate, read the data block, check its BCC."""
        import serial

        with self._lock:
            if self._port is None:
                self._connect()
            port = self._port
            try:
                self._line(300)
                port.reset_input_buffer()
                port.write(f"/?{self.device_address}!\r\n".encode("ascii"))
                port.flush()
                ident = self._read_until(b"\r\n", "identification after sign-on").strip()
                if len(ident) < 5 or not ident.startswith(b"/"):
                    raise InstrumentError(self.name, self.address, f"not an identification message: {ident!r}")
                z = chr(ident[4])
                baud = BAUD_RATES.get(z)
                if baud is None:
                    raise InstrumentError(self.name, self.address,
                                          f"baud rate character {z!r} is not mode C: not supported")
                port.write(ACK + f"0{z}0\r\n".encode("ascii"))
                port.flush()
                self._line(baud)
                message = self._read_until(ETX, "data message after the acknowledgement")
                check = port.read(1)
            except serial.SerialException as exc:
                self.close()
                raise InstrumentError(self.name, self.address, f"serial port: {exc}") from None
            start = message.find(STX)
            if start < 0:
                raise InstrumentError(self.name, self.address, "data message without STX")
            body = message[start + 1:]
            if len(check) != 1 or bcc(body) != check[0]:
                raise InstrumentError(self.name, self.address, "data message failed its block check (BCC)")
            text = body[:-1].decode("ascii", errors="replace")
            return Readout(ident[1:].decode("ascii", errors="replace"), baud, parse_data_block(text),
                           parse_lines(text))

    def identify(self) -> str:
        """The meter's identification message (``RIG5ESME-...``: maker,
        baud rate character, identification)."""
        return self.read().identification

    def safe(self) -> bool:
        return False
