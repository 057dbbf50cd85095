"""The VISA session every SCPI driver shares: open, write, query, timeouts, names.

A driver talks to its instrument through pyvisa with the pure-Python
``@py`` backend (pyvisa-py), so the same code reaches a real LAN instrument
at ``TCPIP::10.0.0.5::5025::SOCKET`` and a simulated one at
``TCPIP::127.0.0.1::40123::SOCKET``.  Every failure is an
:class:`~instruments.errors.InstrumentError` that names the instrument and
its address; a query that gets no answer within the instrument's timeout
(lab.yaml ``timeout``, wall seconds) is an
:class:`~instruments.errors.InstrumentTimeout`.  After a timeout the
session is dropped (a late answer must not be read as the answer to the next
query) and reopened on the next use.

Example::

    with YokogawaWT310("analyser", "TCPIP::10.0.0.7::5025::SOCKET") as wt:
        print(wt.identity)          # YOKOGAWA,WT310,C2XX00000,F1.03
        print(wt.read())            # Reading(voltage=230.1, current=9.98, ...)
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from rig.config import InstrumentLimits

from .errors import InstrumentError, InstrumentTimeout
from .settings import Setting, settings_of

log = logging.getLogger(__name__)

#: pyvisa's resource managers share one library object per backend (closing
#: one closes the sessions of all), and its session table is not safe to
#: change from two threads at once: the drivers share one ``@py`` resource
#: manager, and opening and closing sessions is serialised (I/O is not)
_SESSIONS = threading.Lock()
_shared_rm = None


def resource_manager():
    """The process's pyvisa-py resource manager."""
    global _shared_rm
    import pyvisa

    with _SESSIONS:
        if _shared_rm is None:
            _shared_rm = pyvisa.ResourceManager("@py")
        return _shared_rm


def _scpi_bool(text: str) -> bool:
    """SCPI booleans come back as 1/0 or ON/OFF depending on the firmware."""
    t = text.strip().upper()
    if t in ("1", "ON"):
        return True
    if t in ("0", "OFF"):
        return False
    raise ValueError(f"not a SCPI boolean: {text!r}")


class VisaInstrument:
    """Base of the SCPI drivers: one pyvisa session with named errors.

    ``resource_manager`` is for tests (a pyvisa-sim ``ResourceManager``
    pinning the exact strings sent); by default the process's shared
    ``pyvisa.ResourceManager("@py")`` (:func:`resource_manager`).
    """

    #: the instrument family this driver follows, for messages and limits
    model: str = "SCPI instrument"
    read_termination: ClassVar[str] = "\n"
    write_termination: ClassVar[str] = "\n"

    def __init__(self, name: str, address: str, timeout: float = 2.0, limits: InstrumentLimits | None = None,
                 resource_manager: Any = None):
        self.name, self.address, self.timeout = name, address, float(timeout)
        self.limits = limits or InstrumentLimits()
        self.identity: str | None = None
        self._rm = resource_manager
        self._session: Any = None     # a pyvisa resource while open
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ session
    def open(self) -> "VisaInstrument":
        """Open the session, read the identity and apply the driver's setup."""
        with self._lock:
            self._connect()
            self.identity = self.identify()
            self.configure()
        return self

    def _connect(self) -> None:
        import pyvisa

        rm = self._rm or resource_manager()
        ms = max(1, int(self.timeout * 1000))
        try:
            pyvisa.rname.parse_resource_name(self.address)
        except pyvisa.rname.InvalidResourceName:
            raise InstrumentError(self.name, self.address, "not a VISA resource name (e.g. "
                                  "TCPIP::10.0.0.5::5025::SOCKET, ASRL/dev/ttyUSB0::INSTR)") from None
        try:
            with _SESSIONS:
                self._session = rm.open_resource(self.address, read_termination=self.read_termination,
                                                 write_termination=self.write_termination, timeout=ms,
                                                 open_timeout=ms)
        except pyvisa.errors.VisaIOError as exc:
            raise InstrumentError(self.name, self.address, f"cannot open: {exc.description}") from None
        except Exception as exc:  # noqa: BLE001 - pyvisa-py raises bare Exception on connect failures
            raise InstrumentError(self.name, self.address, f"not reachable: {exc}") from None

    def configure(self) -> None:
        """Driver hook: put the instrument in the mode the driver expects."""

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                with _SESSIONS:
                    session.close()
            except Exception:  # noqa: BLE001 - it is being dropped because it is broken
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "VisaInstrument":
        return self.open()

    def __exit__(self, *exc) -> None:
        try:
            self.safe()
        finally:
            self.close()

    # ------------------------------------------------------------------ I/O
    def _io(self, command: str, query: bool) -> str | None:
        import pyvisa

        with self._lock:
            if self._session is None:
                self._connect()
            try:
                if query:
                    return self._session.query(command).strip()
                self._session.write(command)
                return None
            except pyvisa.errors.VisaIOError as exc:
                self._drop()
                if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                    raise InstrumentTimeout(self.name, self.address,
                                            f"no answer to {command!r} within {self.timeout:g} s") from None
                raise InstrumentError(self.name, self.address, f"{command!r}: {exc.description}") from None
            except (OSError, EOFError) as exc:
                self._drop()
                raise InstrumentError(self.name, self.address, f"not reachable ({command!r}): "
                                      f"{getattr(exc, 'strerror', None) or exc}") from None

    def write(self, command: str) -> None:
        """Send one command (no answer expected)."""
        log.debug("%s <- %s", self.name, command)
        self._io(command, query=False)

    def query(self, command: str) -> str:
        """Send a query and return its answer, stripped."""
        answer = self._io(command, query=True)
        log.debug("%s -> %s = %s", self.name, command, answer)
        assert answer is not None          # a query always has its answer (or raised)
        return answer

    def query_float(self, command: str) -> float:
        answer = self.query(command)
        try:
            return float(answer)
        except ValueError:
            raise InstrumentError(self.name, self.address, f"{command!r} answered {answer!r}, not a number") from None

    def query_bool(self, command: str) -> bool:
        answer = self.query(command)
        try:
            return _scpi_bool(answer)
        except ValueError:
            raise InstrumentError(self.name, self.address, f"{command!r} answered {answer!r}, not ON/OFF") from None

    # ------------------------------------------------------------------ declared settings
    def setting(self, name: str) -> Setting:
        """The declared setting ``name`` (instruments/settings.py)."""
        found = settings_of(type(self)).get(name)
        if found is None:
            raise KeyError(f"{type(self).__name__} declares no setting '{name}'")
        return found

    def rating_of(self, setting: Setting) -> tuple[float | None, float | None]:
        """This instrument's rating for a setting: the declared one (a driver
        that reads its model's rating from the instrument overrides this)."""
        return setting.rating

    def check(self, name: str, value: Any) -> Any:
        """A value of setting ``name`` as it would be sent: quantised and
        inside the rating and the lab.yaml limits, else LimitError."""
        return self.setting(name).check(self, value)

    def confirm(self, what: str, wanted: Any, got: Any) -> None:
        """Raise if a read-back disagrees with what was just set."""
        same = abs(float(wanted) - float(got)) < 1e-6 if isinstance(wanted, (int, float)) and not isinstance(
            wanted, bool) else wanted == got
        if not same:
            raise InstrumentError(self.name, self.address, f"{what} set to {wanted} but reads back {got}")

    # ------------------------------------------------------------------ lab verbs every driver has
    def identify(self) -> str:
        """The instrument's identity (``*IDN?``: maker, model, serial, firmware)."""
        return self.query("*IDN?")

    def safe(self) -> bool:
        """Put the instrument in its safe state; True if that changed an output.
        Instruments with nothing to de-energise return False."""
        return False
