"""Pin the exact conversation a driver has with its instrument, in order.

pymeasure's ``expected_protocol`` for the rig's VISA drivers: the driver
runs against a session that expects a list of (command, answer) pairs, one
after the other (``answer`` None: a write).  The first string out of place,
a pair never reached or an answer asked for that is not in the list fails
the test; nothing talks to an instrument::

    from instruments.testing import expected_protocol

    def test_source_sets_then_reads_back():
        with expected_protocol(Chroma61500, [
            ("*IDN?", "Chroma ATE,61505,1,1.0"),
            (":SOUR:VOLT:AC 230.0", None),
            (":SOUR:VOLT:AC?", "230.0"),
            ...
        ]) as src:
            src.set(voltage=230)

A driver's behaviour against a stateful instrument is tested with its
simulated twin (:mod:`instruments.sim`); this pins what goes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from .visa import VisaInstrument

Pair = tuple[str, "str | None"]
D = TypeVar("D", bound=VisaInstrument)


class ProtocolMismatch(AssertionError):
    """The driver sent something other than the next expected command."""


class ProtocolSession:
    """A pyvisa session stand-in that checks each command against the next pair."""

    def __init__(self, pairs: Sequence[Pair]):
        self.pairs = list(pairs)
        self.index = 0
        self.sent: list[str] = []

    def _next(self, command: str, query: bool) -> str | None:
        self.sent.append(command)
        if self.index >= len(self.pairs):
            raise ProtocolMismatch(f"sent {command!r} after the last expected pair; sent so far: {self.sent}")
        want, answer = self.pairs[self.index]
        if command != want:
            raise ProtocolMismatch(f"pair {self.index}: expected {want!r}, sent {command!r}; sent so far: {self.sent}")
        if query and answer is None:
            raise ProtocolMismatch(f"pair {self.index}: {command!r} was queried but is listed as a write")
        if not query and answer is not None:
            raise ProtocolMismatch(f"pair {self.index}: {command!r} was written but is listed with answer {answer!r}")
        self.index += 1
        return answer

    def write(self, command: str) -> None:
        self._next(command, query=False)

    def query(self, command: str) -> str:
        answer = self._next(command, query=True)
        assert answer is not None
        return answer

    def close(self) -> None:
        pass


class ProtocolResourceManager:
    """Hands the driver its :class:`ProtocolSession` (the ``resource_manager`` seam of VisaInstrument)."""

    def __init__(self, session: ProtocolSession):
        self.session = session

    def open_resource(self, address: str, **_kwargs: Any) -> ProtocolSession:
        return self.session


@contextmanager
def expected_protocol(driver: type[D], pairs: Sequence[Pair], name: str = "instrument",
                      address: str = "TCPIP::192.0.2.1::5025::SOCKET", **kwargs: Any) -> Iterator[D]:
    """The driver, opened (its identity query and setup are part of the
    pairs), on a session that expects ``pairs`` in order; on leaving the
    block every pair must have been used."""
    session = ProtocolSession(pairs)
    instrument = driver(name, address, resource_manager=ProtocolResourceManager(session), **kwargs)
    instrument.open()
    yield instrument
    if session.index != len(session.pairs):
        raise ProtocolMismatch(f"pairs never reached: {session.pairs[session.index:]}; sent: {session.sent}")
