"""What can go wrong with a bench instrument, phrased for the person at the bench.

Every error names the instrument (its lab.yaml name) and the address it was
reached at, so ``rig`` can print it as one line::

    instrument analyser at TCPIP::10.0.0.7::5025::SOCKET: no answer to ':NUM:NORM:VAL?' within 2 s

A :class:`LimitError` is raised *before* anything reaches the wire: the
setpoint broke a rating of the instrument or a ``limits:`` entry of lab.yaml.
"""

from __future__ import annotations


class InstrumentError(RuntimeError):
    """The instrument could not be reached, or answered something unusable."""

    def __init__(self, name: str, address: str, message: str):
        self.name, self.address, self.detail = name, address, message
        super().__init__(f"instrument {name} at {address}: {message}")


class InstrumentTimeout(InstrumentError):
    """The instrument did not answer within its timeout (lab.yaml ``timeout``)."""


class LimitError(ValueError):
    """A setpoint outside a rating or a lab.yaml limit; nothing was sent."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"instrument {name}: {message}")
