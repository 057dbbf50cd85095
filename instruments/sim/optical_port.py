"""A simulated meter optical port: IEC 62056-21 mode C on a pty.

The world opens a pseudo-terminal pair (``os.openpty``); the driver opens
the slave side (``/dev/pts/N``) with pyserial exactly as it would open
``/dev/ttyUSB0``, and this twin answers on the master side as a meter
would: identification after a sign-on at 300 baud, the data message after
the acknowledgement, at the baud rate the acknowledgement selected.

A pty carries bytes at any speed, but the speed the driver programmed is
visible on the master side, so the twin checks it: a sign-on sent at a speed
other than 300 baud is not understood (ignored), and a data message sent
while the driver has not switched to the agreed rate arrives garbled, as on
a real port.

The data block comes from one function, :attr:`SimulatedOpticalPort.provider`
(``() -> [(address, "value*unit"), ...]``).  By default it reads the bench
physics (:func:`physics_registers`: energy register, voltage, current,
frequency); a meter twin can replace it with its own registers::

    port.provider = esme_twin.optical_registers
"""

from __future__ import annotations

import logging
import os
import re
import select
import termios
import threading
import time
import tty
from collections.abc import Callable

from rig.sim.bench import SimBench
from rig.sim.physics import PhysicalBench

from ..optical_probe import ACK, BAUD_RATES, data_message
from .base import SimulatedInstrument

log = logging.getLogger(__name__)

Registers = list[tuple[str, str]]
#: wall seconds a meter waits for the acknowledgement before it gives up
ACK_TIMEOUT = 2.0
#: wall seconds the twin allows the driver to switch baud rate
SWITCH_TIMEOUT = 1.0
_SIGN_ON = re.compile(rb"/\?([^!]*)!\r\n")


def energy_wh(physics: PhysicalBench) -> float:
    """Load-side energy up to now (the physics integrates on every change)."""
    return physics.energy_wh_now()


def physics_registers(physics: PhysicalBench, meter_id: str) -> Callable[[], Registers]:
    """The default data block: what a meter on this bench would register."""

    def registers() -> Registers:
        return [
            ("0.0.0", meter_id),
            ("1.8.0", f"{energy_wh(physics) / 1000.0:010.3f}*kWh"),
            ("32.7.0", f"{physics.line_voltage():05.1f}*V"),
            ("31.7.0", f"{physics.load_current():06.2f}*A"),
            ("14.7.0", f"{physics.frequency():05.2f}*Hz"),
            ("F.F", "00000000"),
        ]

    return registers


class SimulatedOpticalPort(SimulatedInstrument):
    """The optical port of a simulated meter, on a pty."""

    MANUFACTURER = "RIG"
    BAUD_CHAR = "5"          # offers 9600 baud

    @classmethod
    def on_bench(cls, world: SimBench, name: str) -> SimulatedOpticalPort:
        """The optical port of the meter the probe is on (its ``device:``, else
        the wiring's meter, else the bench's only ESME)."""
        cfg = world.cfg
        inst = cfg.instruments.get(name)
        meter = (inst.device if inst is not None else None) or cfg.wiring.meter or cfg.device_of_kind("esme")
        dev = cfg.devices.get(meter) if meter else None
        meter_id = dev.id.replace(":", "") if dev is not None else "0000000000000000"
        return cls(name, meter_id, physics_registers(world.physics, meter_id))

    def __init__(self, name: str, meter_id: str, provider: Callable[[], Registers]):
        super().__init__(name)
        self.meter_id = meter_id
        self.provider = provider
        #: whether the meter behind the port is alive: a meter without supply does not answer
        self.answering: Callable[[], bool] = lambda: True
        self._master = self._slave = -1
        self.path = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return self.path

    @property
    def identification(self) -> str:
        return f"{self.MANUFACTURER}{self.BAUD_CHAR}{self.meter_id}"

    def start(self) -> "SimulatedOpticalPort":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)       # no echo, no line editing until pyserial configures it
        self.path = os.ttyname(self._slave)
        self._thread = threading.Thread(target=self._run, name=f"optical:{self.name}", daemon=True)
        self._thread.start()
        return self

    # ------------------------------------------------------------------ line
    def _speed(self) -> int:
        return termios.tcgetattr(self._master)[5]

    def _read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self._master, 4096)
        except OSError:
            return b""

    def _send(self, data: bytes, baud: int) -> None:
        if self._speed() != getattr(termios, f"B{baud}"):
            data = bytes(b ^ 0x55 for b in data)      # the far end samples at the wrong rate
        self._release_line()
        os.write(self._master, data)

    def _release_line(self) -> None:
        """Put the pty back to a neutral 38400 baud.

        Some kernels refuse (EINVAL) to re-apply 7E1 settings to a pty at an
        unchanged speed, so after every message the twin leaves the line at
        a speed the driver never uses: its next 300-baud sign-on or baud
        switch is then always a change, as it is on a real port."""
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = termios.B38400
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)

    # ------------------------------------------------------------------ protocol
    def _run(self) -> None:
        buffer = b""
        waiting_ack_since: float | None = None
        while not self._stop.is_set():
            chunk = self._read(0.05)
            if waiting_ack_since is not None and time.monotonic() - waiting_ack_since > ACK_TIMEOUT:
                waiting_ack_since, buffer = None, b""
                self._release_line()
            if not chunk:
                continue
            buffer = (buffer + chunk)[-512:]
            try:
                buffer, waiting_ack_since = self._on_input(buffer, waiting_ack_since)
            except Exception:  # noqa: BLE001 - keep the port alive
                log.exception("simulated optical port %s", self.name)
                buffer, waiting_ack_since = b"", None

    def _on_input(self, buffer: bytes, waiting_ack_since: float | None) -> tuple[bytes, float | None]:
        sign_on = _SIGN_ON.search(buffer)
        if sign_on:
            rest = buffer[sign_on.end():]
            address = sign_on.group(1).decode("ascii", errors="replace")
            if self._speed() != termios.B300 or address not in ("", self.meter_id) or not self.answering():
                self._release_line()
                return rest, None              # not understood, or another meter's address
            self._send(f"/{self.identification}\r\n".encode("ascii"), 300)
            return rest, time.monotonic()
        if waiting_ack_since is not None and buffer.startswith(ACK) and buffer.endswith(b"\r\n"):
            option = buffer[1:].strip().decode("ascii", errors="replace")
            if len(option) == 3 and option[0] == "0" and option[2] == "0" and option[1] <= self.BAUD_CHAR:
                baud = BAUD_RATES[option[1]]
                self._wait_for_speed(baud)
                self._send(data_message(self.provider()), baud)
            return b"", None
        return buffer, waiting_ack_since

    def _wait_for_speed(self, baud: int) -> None:
        """Give the driver time to switch after its acknowledgement."""
        want = getattr(termios, f"B{baud}")
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while self._speed() != want and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.002)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
