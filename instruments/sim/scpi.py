"""Just enough SCPI for the simulated instruments to accept what real ones accept.

Headers are declared as in the vendors' manuals: long form with the short
form in capitals, optional nodes in brackets, ``#`` for a numeric suffix, a
trailing ``?`` for a query::

    dev.add("[:SOURce]:VOLTage[:LEVel]:AC", set_voltage)     # :SOUR:VOLT:AC 230.0, SOURCE:VOLTAGE:AC 230
    dev.add(":NUMeric[:NORMal]:ITEM#", set_item)             # :NUM:NORM:ITEM3 P,1  (call.nums == [3])
    dev.add("*IDN?", lambda call: "MAKER,MODEL,SERIAL,FW")

Several commands on one line are separated by ``;``.  An unknown header or
a bad parameter is not executed: it is queued as an IEEE 488.2 error and
read with ``SYST:ERR?`` (``-113,"Undefined header"``); an unknown query
gets no answer, so the client times out, as with a real instrument.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class ScpiError(Exception):
    """A command the instrument rejects; queued on its error queue."""

    def __init__(self, code: int, message: str):
        super().__init__(f'{code},"{message}"')
        self.code, self.message = code, message


@dataclass
class Call:
    """One received command: its header as sent, parameters, numeric suffixes."""

    header: str
    args: list[str] = field(default_factory=list)
    nums: list[int] = field(default_factory=list)

    def text(self, i: int = 0) -> str:
        if i >= len(self.args):
            raise ScpiError(-109, "Missing parameter")
        return self.args[i]

    def number(self, i: int = 0) -> float:
        try:
            return float(self.text(i))
        except ValueError:
            raise ScpiError(-104, "Data type error") from None

    def boolean(self, i: int = 0) -> bool:
        t = self.text(i).upper()
        if t in ("1", "ON"):
            return True
        if t in ("0", "OFF"):
            return False
        raise ScpiError(-224, "Illegal parameter value")


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool
    numbered: bool

    def match(self, got: str) -> str | None:
        """The numeric suffix ('' if none) when ``got`` names this node."""
        text, digits = got.upper(), ""
        if self.numbered:
            m = re.fullmatch(r"(.*?)(\d*)", text)
            assert m is not None          # the pattern matches every string
            text, digits = m.group(1), m.group(2)
        return digits if text in (self.short, self.long) else None


def _nodes(pattern: str) -> list[_Node]:
    nodes = []
    for opt, name, num in re.findall(r"(\[)?:?([*A-Za-z]+)(#)?\]?", pattern):
        capitals = re.match(r"[A-Z]*", name)
        short = name if name.startswith("*") else ((capitals.group(0) if capitals else "") or name)
        nodes.append(_Node(short.upper(), name.upper(), bool(opt), bool(num)))
    return nodes


def _match(pattern: list[_Node], got: list[str]) -> list[int] | None:
    if not pattern:
        return [] if not got else None
    node = pattern[0]
    if got:
        suffix = node.match(got[0])
        if suffix is not None:
            rest = _match(pattern[1:], got[1:])
            if rest is not None:
                return ([int(suffix or 1)] if node.numbered else []) + rest
    if node.optional:
        rest = _match(pattern[1:], got)
        if rest is not None:
            return ([1] if node.numbered else []) + rest
    return None


Handler = Callable[[Call], "str | None"]


class ScpiDevice:
    """A simulated SCPI instrument: a table of headers and an error queue.

    ``handle(line)`` is called by the server for every line received and
    returns the answer (or None); calls are serialised, so several clients
    may talk to one instrument at once.
    """

    identity = "RIG,SIMULATED,0,0"

    def __init__(self) -> None:
        self._table: list[tuple[list[_Node], bool, Handler]] = []
        self.errors: deque[str] = deque(maxlen=32)
        self.received: deque[str] = deque(maxlen=1000)
        self.lock = threading.RLock()
        self.add("*IDN?", lambda _c: self.identity)
        self.add("*CLS", lambda _c: self.errors.clear())
        self.add("*OPC?", lambda _c: "1")
        self.add(":SYSTem:ERRor[:NEXT]?", lambda _c: self.errors.popleft() if self.errors else '0,"No error"')

    def add(self, pattern: str, handler: Handler) -> None:
        self._table.append((_nodes(pattern.rstrip("?")), pattern.endswith("?"), handler))

    def split(self, command: str) -> tuple[str, list[str]]:
        """Header and parameters of one command (``HEADER p1,p2``)."""
        header, _, rest = command.partition(" ")
        return header, [a.strip() for a in rest.split(",")] if rest.strip() else []

    def handle(self, line: str) -> str | None:
        answers = []
        with self.lock:
            for command in (c.strip() for c in line.split(";")):
                if not command:
                    continue
                self.received.append(command)
                try:
                    answer = self._dispatch(command)
                except ScpiError as exc:
                    self.errors.append(str(exc))
                    continue
                if answer is not None:
                    answers.append(answer)
        return ";".join(answers) if answers else None

    def _dispatch(self, command: str) -> str | None:
        header, args = self.split(command)
        query = header.endswith("?")
        got = [n for n in header.rstrip("?").split(":") if n]
        for nodes, is_query, handler in self._table:
            if is_query != query:
                continue
            nums = _match(nodes, got)
            if nums is not None:
                return handler(Call(header, args, nums))
        raise ScpiError(-113, "Undefined header")
