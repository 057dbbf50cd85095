"""The bus contract: topic names and payload envelopes (see docs/bus.md).

Every participant (controller agent, simulated twin, real-device adapter,
orchestrator) is addressed as a *node* ``rig/v1/<bench>/<kind>/<name>`` and
speaks on these channels under it:

========================  ========  ==========================================
channel                   retained  payload
========================  ========  ==========================================
``state``                 yes       the node's current state, ``{"ts", "seq", ...}``
``presence``              yes       ``{"online", "ts", "wall", "seq", ...}``; Last Will
                                    ``{"online": false}``; republished as a heartbeat
``event/<name>``          no        something that happened, ``{"ts", "seq", ...}``
``cmd/<op>``              no        a :class:`Command`; the reply goes to its ``reply_to``
``error``                 no        a payload this node could not accept
========================  ========  ==========================================

Lab-wide topics: ``rig/v1/_lab/clock`` (retained clock anchor),
``rig/v1/_reply/<client-id>`` (replies), and the lease holder's heartbeat
``rig/v1/<bench>/agent/controller/heartbeat``.

Kinds: ``agent`` (name ``controller``), ``relay``, ``instrument``,
``device``, ``dcc``, ``han``.  Ops sit in the topic, not only the payload, so a
broker ACL can grant a role one op (a PPMID adapter may publish
``device/ppmid/cmd/press`` and nothing else).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROOT = "rig/v1"
#: the largest payload the rig sends or accepts (bytes); the mosquitto the
#: rig starts refuses larger packets (``max_packet_size``: the payload plus
#: room for the topic and header)
MAX_PAYLOAD = 256 * 1024
MAX_PACKET = MAX_PAYLOAD + 4096
LAB_CLOCK = f"{ROOT}/_lab/clock"
REPLY_ROOT = f"{ROOT}/_reply"
_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+$")
#: a reply topic: ``rig/v1/_reply/<client>``, one level, no wildcard, no control character
_REPLY = re.compile(r"^rig/v1/_reply/[^/+#\x00-\x1f\x7f]{1,128}$")


def reply_topic(client_id: str) -> str:
    return f"{REPLY_ROOT}/{client_id}"


def is_reply_topic(topic: object) -> bool:
    """Whether ``topic`` is a topic a node may send a reply to."""
    return isinstance(topic, str) and _REPLY.match(topic) is not None


@dataclass(frozen=True)
class Node:
    """One addressable participant on the bus."""

    bench: str
    kind: str
    name: str

    def __post_init__(self) -> None:
        for level in (self.bench, self.kind, self.name):
            if not _LEVEL.match(level):
                raise ValueError(f"'{level}' cannot be an MQTT topic level (letters, digits, '_', '-', '.')")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.bench}/{self.kind}/{self.name}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def presence(self) -> str:
        return f"{self.base}/presence"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    def event(self, name: str) -> str:
        return f"{self.base}/event/{name}"

    def cmd(self, op: str) -> str:
        return f"{self.base}/cmd/{op}"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    @classmethod
    def parse(cls, topic: str) -> tuple["Node", str]:
        """Split ``rig/v1/b/k/n/channel...`` into the node and the channel."""
        parts = topic.split("/")
        if len(parts) < 6 or "/".join(parts[:2]) != ROOT:
            raise ValueError(f"not a node topic: {topic}")
        return cls(parts[2], parts[3], parts[4]), "/".join(parts[5:])

    def __str__(self) -> str:
        return f"{self.bench}/{self.kind}/{self.name}"


def agent_node(bench: str) -> Node:
    """The bench's controller agent (relays, instruments, lease, E-stop)."""
    return Node(bench, "agent", "controller")


def dcc_node(bench: str) -> Node:
    """The bench's head end (DCC): remote commands and the alert sink."""
    return Node(bench, "dcc", "headend")


def han_node(bench: str) -> Node:
    """The bench's HAN tap (on a simulated bench, the simulated medium)."""
    return Node(bench, "han", "medium")


def sim_node(bench: str) -> Node:
    """The bench's simulated world (`rig sim`), when the bench has one."""
    return Node(bench, "sim", "world")


# ----------------------------------------------------------------------------- payloads
class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Command(Envelope):
    """A request.  ``expires`` is lab time: a command that arrives, or would
    start, after it is refused with ``expired`` and never executed."""

    id: str = Field(..., min_length=1, max_length=128)
    reply_to: str = Field(..., min_length=1, max_length=256,
                          description="rig/v1/_reply/<client>: one topic level, no wildcard")
    sender: str = Field(..., min_length=1, max_length=200)
    expires: float = Field(..., description="lab time after which the command must not run; finite")
    args: dict[str, Any] = Field(default_factory=dict)
    lease: "LeaseProof | None" = Field(None, description="proof of the bench lease, for ops that need one")

    @field_validator("reply_to")
    @classmethod
    def _reply_topic(cls, v: str) -> str:
        if not is_reply_topic(v):
            raise ValueError("must be a reply topic rig/v1/_reply/<client> (one level, no wildcard + or #)")
        return v

    @field_validator("expires", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        # NaN or Infinity would never expire; a bool or a string is not a time
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number (lab time, seconds since the epoch)")
        if not math.isfinite(v):
            raise ValueError(f"must be a finite lab time, not {v}")
        return v


ErrorCode = Literal[
    "invalid",      # payload did not validate
    "unknown_op",   # no such operation on this node
    "expired",      # arrived or would start after its expiry
    "refused",      # an interlock or a rule said no; message says which
    "not_leased",   # needs the bench lease and the sender does not hold it
    "estop",        # E-stop is latched
    "timeout",      # the hardware behind the node did not answer
    "failed",       # the handler raised unexpectedly
    "busy",         # the node's command queue is full; not executed, send it again later
]


class ErrorBody(Envelope):
    code: ErrorCode
    message: str
    requirement: str | None = Field(None, description="requirement id the refusal enforces, e.g. LAB-2")


class Reply(Envelope):
    id: str
    ok: bool
    ts: float = Field(..., description="lab time of the reply")
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None


class Presence(Envelope):
    online: bool
    ts: float | None = None
    wall: float | None = None
    seq: int = 0
    client: str | None = None
    kind: str | None = None
    version: str | None = None
    heartbeat_interval: float | None = None
    reason: str | None = None


class LeaseProof(Envelope):
    """A command's proof that its sender holds the bench lease: the lease id
    (public) and an HMAC-SHA256, under the lease key, of the command's topic,
    id, sender, expiry and args (rig/security.py).  The key never travels."""

    id: str = Field(..., min_length=1, max_length=64)
    mac: str = Field(..., min_length=64, max_length=64)


class Heartbeat(Envelope):
    """The lease holder's heartbeat to a bench agent: ``seq`` strictly
    increases, ``wall`` is the holder's system clock (the agent compares it
    with its own), ``progress`` counts the holder's main work (a hung holder's
    stays put), ``mac`` is the HMAC of all of them under the lease key."""

    lease: str = Field(..., min_length=1, max_length=64, description="the lease id (public)")
    seq: int
    wall: float
    progress: int = 0
    mac: str = Field(..., min_length=64, max_length=64)


Command.model_rebuild()
