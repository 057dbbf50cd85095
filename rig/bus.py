"""The rig's bus: paho-mqtt 2.x (callback API v2) speaking the contract.

One :class:`Bus` is one MQTT connection with one identity.  It can

* keep a node's presence (retained, Last Will offline, republished every
  ``heartbeat_interval`` wall seconds as an application-level heartbeat that
  does not depend on the broker firing Last Wills);
* publish retained state and events, stamped with lab time and a sequence;
* serve commands: validate the envelope before anything acts (size, depth,
  JSON, a finite and capped ``expires``, a ``reply_to`` that is a reply
  topic), ignore retained commands, refuse expired ones, answer duplicates
  from a cache (QoS 1 may deliver twice: commands are idempotent), run the
  handler and reply; a malformed payload gets an error reply (or, with no
  usable ``reply_to``, an ``error`` message) and a log line, and the server
  keeps running;
* send commands and wait for their reply (:meth:`request`), sending them
  again with the same id after a reconnection (the node answers a repeat
  from its cache, so nothing runs twice and a reply lost with the broker is
  not lost to the caller);
* follow retained state and events with waits in lab time (:class:`Watch`).

Commands run on one of three paths: ``inline`` handlers on the network
thread (GPIO, lease table: they never block), safe-direction handlers
(``safe=``: every output safe, E-stop trip, an instrument to its safe state)
on an express lane of their own, and everything else on the command lane in
arrival order.  A safe-direction command is never refused as expired and
never waits behind instrument I/O queued before it; a command queued before
it that has not started yet is refused (it would otherwise undo it).

No thread dies silently: every paho callback, worker and heartbeat catches
and logs what it raises, and if paho's network loop itself ends, the bus
says so (``on_fatal``): the agent then makes the bench safe and exits.

Everything is QoS 1 and MQTT 3.1.1, so the embedded amqtt and mosquitto
behave the same.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
import typing
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from .broker import Endpoint
from .clock import LabClock
from .contract import (
    LAB_CLOCK,
    MAX_PAYLOAD,
    Command,
    ErrorBody,
    ErrorCode,
    Node,
    Presence,
    Reply,
    is_reply_topic,
    reply_topic,
)
from .version import __version__

log = logging.getLogger(__name__)

#: network and instrument I/O does not run faster in a simulation: a request
#: waits at least this many wall seconds whatever the clock scale
MIN_WALL_TIMEOUT = 2.0
#: the deepest JSON nesting a payload may have (the rig's own are < 10 deep)
MAX_DEPTH = 32
#: how far ahead a command's ``expires`` may be: one lab hour, or five wall
#: minutes on a clock so fast that a lab hour is shorter
MAX_EXPIRES_AHEAD = 3600.0
MAX_EXPIRES_AHEAD_WALL = 300.0
#: commands waiting for the command lane / the express lane; a command that
#: finds its lane full is answered ``busy`` and not executed
CMD_QUEUE_MAX = 256
EXPRESS_QUEUE_MAX = 256
#: workers of each express lane: safe-direction commands run side by side, so
#: one stuck on an instrument that does not answer does not hold the next
EXPRESS_WORKERS = 2
#: received messages waiting for subscribers; more are dropped with an error log
MSG_QUEUE_MAX = 20000
#: publishes paho may hold while the broker is away; more raise BusError
MAX_QUEUED_PUBLISHES = 10000
#: wall seconds after which a request with no reply is sent again (same id),
#: doubling up to RESEND_MAX: a broker drops a command whose node was away
RESEND_AFTER = 1.0
RESEND_MAX = 4.0
#: replies remembered for answering a repeated command id: at least this
#: many, and every one whose command has not expired up to REPLY_CACHE_MAX
REPLY_CACHE = 2000
REPLY_CACHE_MAX = 50000

# channels that are never retained: a retained copy is ignored (it would
# otherwise run again on every (re)subscription)
_NEVER_RETAINED = re.compile(r"^rig/v1/(_reply/|[^/]+/[^/]+/[^/]+/(cmd/|heartbeat$))")


class BusError(RuntimeError):
    """The bus is unreachable or a message could not be sent."""


class CommandError(RuntimeError):
    """A command was answered with an error (refused, expired, invalid ...)."""

    def __init__(self, node: Node | str, op: str, error: ErrorBody):
        self.node, self.op, self.error = node, op, error
        self.code, self.reason = error.code, error.message
        req = f" [{error.requirement}]" if error.requirement else ""
        super().__init__(f"{node} {op}: {error.code}: {error.message}{req}")


class CommandTimeout(CommandError):
    def __init__(self, node: Node | str, op: str, seconds: float, why: str | None = None):
        super().__init__(node, op, ErrorBody(
            code="timeout",
            message=f"no reply within {seconds:.3g} wall s: {why or 'is the node online? (`rig status`)'}",
        ))


class BusLoopDied(BusError):
    """paho's network loop ended on its own: this bus is deaf and mute."""


class Refused(Exception):
    """Raised by a command handler to refuse with a reason (sent back as the
    error reply); ``code`` is one of the contract's error codes."""

    def __init__(self, message: str, code: str = "refused", requirement: str | None = None):
        super().__init__(message)
        self.code, self.message, self.requirement = code, message, requirement


@dataclass
class CommandContext:
    node: Node
    op: str
    id: str
    sender: str
    lease: Any
    expires: float
    received: float
    args: Any = None          # the command's args as received (a lease proof covers them)
    lease_checked: str | None = None   # the lease that the agent found proven for it

    @property
    def topic(self) -> str:
        return self.node.cmd(self.op)


Handler = Callable[[Any, CommandContext], dict[str, Any] | None]
#: ``serve(safe=...)``: True for an op that only ever goes towards the safe
#: state, or a function of the validated args saying whether this call does
SafeRule = bool | Callable[[Any], bool]


@dataclass
class _Op:
    handler: Handler
    args_model: type[BaseModel] | None
    inline: bool = False
    safe: SafeRule = False
    supersedes: str = "node"   # what a safe-direction command overtakes: "node" or "all"

    def towards_safe(self, args: Any) -> bool:
        return bool(self.safe(args)) if callable(self.safe) else bool(self.safe)


@dataclass
class _Job:
    """A validated command on its way to its handler."""

    node: Node
    op: _Op
    op_name: str
    cmd: Command
    args: Any
    safe: bool
    received: float
    seq: int
    held: list = field(default_factory=list)


class _Lane:
    """Worker threads (started on first use) behind a bounded queue."""

    def __init__(self, name: str, run: Callable[[_Job], None], workers: int, maxsize: int):
        self.name, self._run, self._workers = name, run, workers
        self.queue: queue.Queue = queue.Queue(maxsize)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def put(self, job: _Job) -> bool:
        """Queue a job; False when the lane is full."""
        with self._lock:
            if not self._threads:
                for i in range(self._workers):
                    t = threading.Thread(target=self._loop, name=f"{self.name}-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except BaseException:  # noqa: BLE001 - a lane never dies
                log.exception("%s: command %s on %s failed outside its handler", self.name, job.op_name, job.node)

    def stop(self) -> None:
        with self._lock:
            running, self._workers = len(self._threads), 0   # no new workers after a stop
            self._threads.append(None)  # type: ignore[arg-type]  # marks the lane started
        for _ in range(running):
            try:
                self.queue.put(None, timeout=1.0)
            except queue.Full:
                break


class PayloadError(ValueError):
    """A payload the bus will not decode (too big, too deep, not JSON)."""


def _depth_ok(data: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return False
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return True


def _decode(payload: bytes | bytearray) -> Any:
    """JSON from a payload, or :class:`PayloadError` saying why not.  Never
    raises anything else: deep nesting would otherwise raise RecursionError
    out of whichever thread decodes it."""
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes is over the bus limit of {MAX_PAYLOAD} bytes")
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError(f"payload nests deeper than {MAX_DEPTH} levels") from None
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH and not _depth_ok(data):
        raise PayloadError(f"payload nests deeper than {MAX_DEPTH} levels")
    return data


def _acked(info: Any) -> bool:
    """Whether the broker acknowledged a QoS 1 publish.  (paho's
    ``is_published()`` raises for a message first queued while disconnected,
    even once it has gone: its ``rc`` keeps the first attempt's error.)"""
    if info is None:
        return False
    published = getattr(info, "_published", None)
    if published is not None:
        return bool(published)
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


class Watch:
    """The latest retained payload of every topic matching a filter, with
    waits.  ``watch.wait_for(lambda s: s.get("state") == "on", timeout=5)``
    blocks (lab seconds) until a payload satisfies the predicate."""

    def __init__(self, bus: "Bus", topic_filter: str):
        self.bus, self.filter = bus, topic_filter
        self.values: dict[str, Any] = {}
        self.cond = threading.Condition()
        self.history: list[tuple[str, Any]] = []

    def _update(self, topic: str, payload: Any) -> None:
        with self.cond:
            self.values[topic] = payload
            self.history.append((topic, payload))
            if len(self.history) > 10000:
                del self.history[:5000]
            self.cond.notify_all()

    def get(self, topic: str | None = None, default: Any = None) -> Any:
        with self.cond:
            if topic is None:
                return next(iter(self.values.values()), default) if len(self.values) <= 1 else dict(self.values)
            return self.values.get(topic, default)

    def wait_for(self, predicate: Callable[[Any], object], timeout: float, topic: str | None = None,
                 min_wall: float = 0.0) -> Any:
        """Wait (lab seconds, at least ``min_wall`` wall seconds) until the
        predicate holds for the payload of ``topic`` (or, with one topic
        watched, its only payload).  Returns the payload, or None on timeout."""
        clock = self.bus.clock
        lab_timeout = max(timeout, clock.lab_seconds(min_wall))

        def check() -> Any:
            if topic:
                value = self.values.get(topic)
            else:
                value = next(iter(self.values.values()), None) if self.values else None
            return value if value is not None and predicate(value) else None

        return clock.wait_for(check, lab_timeout, condition=self.cond)

    def close(self) -> None:
        self.bus.unsubscribe(self.filter, self._update)


class Bus:
    """One MQTT connection speaking the rig's contract."""

    def __init__(
        self,
        endpoint: Endpoint,
        client_id: str | None = None,
        clock: LabClock | None = None,
        presence: Node | None = None,
        presence_info: dict[str, Any] | None = None,
        heartbeat_interval: float = 1.0,
    ):
        self.endpoint = endpoint
        self.client_id = client_id or f"rig-{uuid.uuid4().hex[:10]}"
        self.clock = clock or LabClock()
        self.presence_node = presence
        self.presence_info = presence_info or {}
        self.heartbeat_interval = heartbeat_interval
        #: called (on a thread of its own) with the reason if paho's network loop ends by itself
        self.on_fatal: Callable[[str], None] | None = None
        self.fatal: str | None = None
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._subs: dict[str, list[Callable[[str, Any], None]]] = {}
        self._subs_lock = threading.RLock()
        self._ops: dict[str, tuple[Node, dict[str, _Op]]] = {}
        self._pending: dict[str, tuple[Future, str, bytes, Any]] = {}   # id -> (future, topic, payload, info)
        self._replies_cache: OrderedDict[str, dict] = OrderedDict()
        self._cache_until: dict[str, float] = {}   # id -> its command's expiry (lab time)
        self._inflight: dict[str, list[str]] = {}   # id -> reply topics of repeats that came meanwhile
        self._cmd_lock = threading.Lock()       # the reply cache and the in-flight ids
        self._job_seq = itertools.count(1)
        self._barrier_all = 0                   # the newest safe-direction command of the whole bus that ran
        self._barrier_node: dict[str, int] = {}
        self._connected = threading.Event()
        self._ever_connected = False
        self._lost_at: float | None = None      # monotonic time the broker was lost
        self._refused: str | None = None      # why the broker refused this client, if it did
        self._connect_done = threading.Event()
        self._closing = threading.Event()
        self._lane = _Lane(f"bus-cmd:{self.client_id}", self._run_queued, 1, CMD_QUEUE_MAX)
        # safe-direction commands: those of the whole bus (every output safe, E-stop)
        # and those of one node (an instrument to its safe state) on lanes of their own
        self._express = {scope: _Lane(f"bus-safe-{scope}:{self.client_id}", self._run_express, EXPRESS_WORKERS,
                                      EXPRESS_QUEUE_MAX) for scope in ("all", "node")}
        self._msg_queue: queue.Queue = queue.Queue(MSG_QUEUE_MAX)
        self._dropped = 0
        self._threads: list[threading.Thread] = []
        self._announced = threading.Event()
        self._unacked: collections.deque = collections.deque(maxlen=256)   # recent QoS 1 publishes
        self._retained: dict[str, bytes] = {}   # the last retained payload this bus published, per topic
        self._suback = threading.Condition()
        self._pending_subs: set[int] = set()
        self.reply_topic = reply_topic(self.client_id)
        self._ids = itertools.count(1)
        self._defer = threading.local()   # .items: publishes a running handler holds until its reply is out

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv311, clean_session=True)
        if endpoint.username:
            c.username_pw_set(endpoint.username, endpoint.password())
        if endpoint.tls is not None:
            t = endpoint.tls
            c.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                      certfile=str(t.cert_file) if t.cert_file else None,
                      keyfile=str(t.key_file) if t.key_file else None)
            c.tls_insecure_set(bool(t.insecure))
        if presence is not None:
            c.will_set(presence.presence, encode(Presence(online=False, client=self.client_id,
                                                          reason="connection lost").model_dump()), qos=1, retain=True)
        # every callback is guarded: an exception must never leave paho's network thread
        c.on_connect = self._guard(self._on_connect)
        c.on_disconnect = self._guard(self._on_disconnect)
        c.on_message = self._guard(self._on_message)
        c.on_socket_open = self._guard(self._on_socket_open)
        c.on_subscribe = self._guard(self._on_subscribe)
        c.reconnect_delay_set(0.2, 2.0)  # type: ignore[arg-type]  # paho sleeps float delays; it annotates int
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(MAX_QUEUED_PUBLISHES)
        # loop_start() runs loop_forever() on paho's thread: watch it end
        c.loop_forever = self._loop_forever  # type: ignore[method-assign]  # to see paho's loop thread end
        self._client = c

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - logged; the network thread carries on
                log.exception("%s: %s failed", self.client_id, callback.__name__)
        return guarded

    def _loop_forever(self, *args: Any, **kwargs: Any) -> Any:
        error = None
        try:
            return mqtt.Client.loop_forever(self._client, *args, **kwargs)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.critical("%s: the MQTT network loop died: %s", self.client_id, error, exc_info=True)
            raise
        finally:
            if not self._closing.is_set():
                self._loop_died(error or "the network loop returned")

    def _loop_died(self, reason: str) -> None:
        self.fatal = reason
        self._connected.clear()
        log.critical("%s: lost its MQTT network loop (%s): it can no longer hear or speak", self.client_id, reason)
        for fut, *_ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(BusLoopDied(f"{self.client_id}: the MQTT network loop died ({reason})"))
        if self.on_fatal is not None:
            threading.Thread(target=self._call_fatal, args=(reason,), name=f"bus-fatal:{self.client_id}",
                             daemon=True).start()

    def _call_fatal(self, reason: str) -> None:
        if self.on_fatal is None:
            return
        try:
            self.on_fatal(reason)
        except Exception:  # noqa: BLE001
            log.exception("%s: on_fatal failed", self.client_id)

    # ------------------------------------------------------------------ lifecycle
    def connect(self, timeout: float = 5.0, announce: bool = True) -> "Bus":
        """Connect (wall-second timeout) and start the network loop.

        A bus that keeps a presence announces itself online at once, unless
        ``announce=False``: a server then calls :meth:`announce` after it has
        registered its operations, so nobody sees it online before it can
        take commands."""
        try:
            self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=self.endpoint.keepalive)
        except ssl.SSLError as exc:
            raise BusError(f"TLS with the MQTT broker at {self.endpoint} failed: {exc.reason or exc} "
                           "(check broker.tls: ca_file, cert_file, key_file)") from None
        except OSError as exc:
            raise BusError(
                f"cannot reach the MQTT broker at {self.endpoint}: {exc.strerror or exc}. "
                "Is the lab up? Start it with `rig up --lab LAB.yaml` (or check broker: in lab.yaml)"
            ) from None
        self._client.loop_start()
        self._connect_done.wait(timeout)
        if self._refused is not None or not self._connected.is_set():
            self._closing.set()
            self._client.loop_stop()
            if self._refused is not None:
                who = f"user {self.endpoint.username}" if self.endpoint.username else "an anonymous client"
                raise BusError(f"the MQTT broker at {self.endpoint} refused {who}: {self._refused}")
            raise BusError(f"MQTT broker at {self.endpoint} did not accept the connection within {timeout:g} s")
        t = threading.Thread(target=self._message_worker, name=f"bus-msg:{self.client_id}", daemon=True)
        t.start()
        self._threads.append(t)
        if announce and self.presence_node is not None:
            self.announce()
        return self

    def announce(self, timeout: float = 5.0) -> None:
        """Publish presence online once every subscription is acknowledged by
        the broker, and keep it fresh with the heartbeat."""
        if self.presence_node is None or self._announced.is_set():
            return
        self.wait_subscribed(timeout)
        self._announced.set()
        self._publish_presence()
        t = threading.Thread(target=self._heartbeat_loop, name=f"bus-hb:{self.client_id}", daemon=True)
        t.start()
        self._threads.append(t)

    def _subscribe(self, topic_filter: str) -> None:
        with self._suback:
            rc, mid = self._client.subscribe(topic_filter, qos=1)
            if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._pending_subs.add(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._suback:
            self._pending_subs.discard(mid)
            self._suback.notify_all()

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Block (wall seconds) until the broker has acknowledged every
        subscription made so far."""
        with self._suback:
            return self._suback.wait_for(lambda: not self._pending_subs, timeout)

    def close(self, reason: str = "stopped") -> None:
        """Publish presence offline (if this bus keeps one) and disconnect."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._announced.is_set() and self._connected.is_set() and self.presence_node is not None:
            info = self._client.publish(self.presence_node.presence, encode(
                Presence(online=False, client=self.client_id, ts=self.clock.now(), reason=reason).model_dump()),
                qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        for lane in (self._lane, *self._express.values()):
            lane.stop()
        try:
            self._msg_queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self.flush(2.0)
        if self.fatal:
            # no network loop to say goodbye: drop the connection, so that the
            # broker publishes the Last Will (offline) at once
            sock = self._client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        else:
            self._client.disconnect()
        self._client.loop_stop()
        for fut, *_ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(BusError("bus closed"))

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait (wall seconds) until the broker has acknowledged the recent
        QoS 1 publishes, so that nothing said just before a close is lost."""
        deadline = time.monotonic() + timeout
        while self._unacked:
            info = self._unacked[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected.is_set():
                return False
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                pass
            if _acked(info) or info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._unacked.popleft()
            else:
                return False
        return True

    def __enter__(self) -> "Bus":
        return self.connect() if not self._connected.is_set() else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------------ paho callbacks
    def _on_socket_open(self, client, userdata, sock) -> None:
        # Without TCP_NODELAY a QoS 1 round trip through amqtt stalls ~40 ms
        # on Nagle + delayed ACK (measured: 44 ms vs 0.7 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused %s: %s", self.endpoint, self.client_id, reason_code)
            if not self._connected.is_set() and not self._announced.is_set():
                self._refused = str(reason_code)
                self._connect_done.set()
            return
        filters = {self.reply_topic}
        with self._subs_lock:
            filters.update(self._subs)
        for node, _ops in list(self._ops.values()):
            filters.add(f"{node.base}/cmd/+")
        for f in filters:
            self._subscribe(f)
        reconnected = self._ever_connected
        self._ever_connected, self._lost_at = True, None
        if reconnected:
            self._after_reconnect()
        self._connected.set()
        self._connect_done.set()

    def _after_reconnect(self) -> None:
        """A broker that restarted has forgotten the retained state and
        anything in flight: say it all again.  Retained state is this bus's
        latest per topic; a command still waiting for its reply goes again
        with the same id (the node answers a repeat from its cache)."""
        log.warning("%s reconnected to %s: republishing %d retained topics, %d pending commands",
                    self.client_id, self.endpoint, len(self._retained), len(self._pending))
        # state before presence: whoever follows this node sees its current
        # state before it sees it online again
        for topic, data in list(self._retained.items()):
            self._client.publish(topic, data, qos=1, retain=True)
        if self._announced.is_set():
            self._publish_presence()
        for _fut, topic, data, info in list(self._pending.values()):
            if info is None or _acked(info):   # unacknowledged ones paho sends again itself
                self._client.publish(topic, data, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        if not self._closing.is_set():
            log.warning("%s lost the broker at %s (%s); reconnecting", self.client_id, self.endpoint, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if msg.retain and _NEVER_RETAINED.match(topic):
            # a retained command or heartbeat would act again on every resubscription
            log.warning("%s: ignored a retained message on %s (commands, replies and heartbeats are never "
                        "retained; clear it with an empty retained publish)", self.client_id, _short(topic))
            return
        if topic == self.reply_topic:
            self._on_reply(msg.payload)
            return
        if "/cmd/" in topic:
            for base, (node, ops) in list(self._ops.items()):
                if topic.startswith(base + "/cmd/"):
                    self._accept(node, ops, topic, msg.payload)
                    return
        try:
            self._msg_queue.put_nowait((topic, msg.payload, msg.retain))
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("%s: %d messages dropped: %d wait for the subscribers already (the bus limit); "
                          "latest on %s", self.client_id, self._dropped, MSG_QUEUE_MAX, _short(topic))

    # ------------------------------------------------------------------ publishing
    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def publish(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> None:
        data = payload if isinstance(payload, (bytes, bytearray)) else encode(payload)
        if len(data) > MAX_PAYLOAD:
            raise BusError(f"not published to {topic}: {len(data)} bytes is over the bus limit of {MAX_PAYLOAD} bytes")
        held = getattr(self._defer, "items", None)
        if held is not None:
            # a handler's side effects (state, events) go out after its reply
            held.append((topic, data, retain, qos))
            return
        self._send(topic, data, retain, qos)

    def _send(self, topic: str, data: bytes | bytearray, retain: bool, qos: int) -> Any:
        if len(data) > MAX_PAYLOAD:   # the broker would drop the connection over it
            raise BusError(f"not published to {_short(topic)}: {len(data)} bytes is over the bus limit of "
                           f"{MAX_PAYLOAD} bytes")
        if retain:
            # remembered before sending: a broker that restarts gets it again
            if data:
                self._retained[topic] = bytes(data)
            else:
                self._retained.pop(topic, None)
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if qos:
            self._unacked.append(info)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise BusError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def stamp(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"ts": self.clock.now(), "seq": self.next_seq(), **data}

    def publish_state(self, node: Node, state: dict[str, Any]) -> dict[str, Any]:
        """Publish a node's state (retained); returns the stamped payload."""
        payload = self.stamp(state)
        self.publish(node.state, payload, retain=True)
        return payload

    def publish_event(self, node: Node, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = self.stamp(data or {})
        self.publish(node.event(name), payload)
        return payload

    def clear_retained(self, topic: str) -> None:
        self.publish(topic, b"", retain=True)

    def publish_clock(self) -> None:
        a = self.clock.anchor
        self.publish(LAB_CLOCK, {"wall": a.wall, "scale": a.scale}, retain=True)

    def _publish_presence(self) -> None:
        if self.presence_node is None:
            return
        p = Presence(online=True, ts=self.clock.now(), wall=self.clock.wall(), seq=self.next_seq(),
                     client=self.client_id, version=__version__,
                     heartbeat_interval=self.heartbeat_interval, **self.presence_info)
        self._client.publish(self.presence_node.presence, encode(p.model_dump()), qos=1, retain=True)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.heartbeat_interval):
            if self._connected.is_set():
                try:
                    self._publish_presence()
                except Exception:  # noqa: BLE001 - the next beat tries again
                    log.exception("%s: presence heartbeat not sent", self.client_id)

    # ------------------------------------------------------------------ subscribing
    def subscribe(self, topic_filter: str, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(topic, payload)`` for every message matching the
        filter (on the bus's message thread).  Payloads are decoded JSON;
        an empty payload (a cleared retained topic) arrives as None.  A
        retained copy of a command, reply or heartbeat is never delivered."""
        with self._subs_lock:
            new = topic_filter not in self._subs
            self._subs.setdefault(topic_filter, []).append(callback)
        if new and self._connected.is_set():
            self._subscribe(topic_filter)

    def unsubscribe(self, topic_filter: str, callback: Callable | None = None) -> None:
        with self._subs_lock:
            cbs = self._subs.get(topic_filter, [])
            if callback in cbs:
                cbs.remove(callback)
            if not cbs or callback is None:
                self._subs.pop(topic_filter, None)
                self._client.unsubscribe(topic_filter)

    def watch(self, topic_filter: str) -> Watch:
        w = Watch(self, topic_filter)
        self.subscribe(topic_filter, w._update)
        return w

    def _message_worker(self) -> None:
        while True:
            item = self._msg_queue.get()
            if item is None:
                return
            try:
                self._deliver(*item)
            except Exception:  # noqa: BLE001 - the worker never dies
                log.exception("%s: message on %s not delivered", self.client_id, _short(str(item[0])))

    def _deliver(self, topic: str, payload: bytes, _retain: bool) -> None:
        with self._subs_lock:
            matching = [cb for f, cbs in self._subs.items() if mqtt.topic_matches_sub(f, topic) for cb in cbs]
        if not matching:
            return
        if payload == b"":
            data = None
        else:
            try:
                data = _decode(payload)
            except PayloadError as exc:
                log.warning("%s: ignoring a payload on %s: %s", self.client_id, _short(topic), exc)
                return
        for cb in matching:
            try:
                cb(topic, data)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the bus
                log.exception("%s: subscriber of %s failed", self.client_id, topic)

    # ------------------------------------------------------------------ serving commands
    def serve(self, node: Node, op: str, handler: Handler, args: type[BaseModel] | None = None,
              inline: bool = False, safe: SafeRule = False, supersedes: str = "node") -> None:
        """Serve ``op`` on ``node``.  The handler gets the validated args (a
        model instance, or the dict when no model is given) and a
        :class:`CommandContext`; it returns a result dict or raises
        :class:`Refused`.

        Handlers run one at a time on the bus's command lane, in arrival
        order.  ``inline`` runs a handler on the network thread instead,
        saving two thread hand-offs: only for handlers that never block (a
        GPIO write, a lease table) and never wait on the bus themselves.

        ``safe`` marks a safe-direction operation (True, or a function of
        the args saying whether this call goes towards the safe state): it
        is never refused as expired and, unless inline, runs on the express
        lane, never behind the command lane; a command of the same node
        (``supersedes="all"``: of any node of this bus) that arrived before
        it and has not started is refused rather than run after it."""
        if supersedes not in ("node", "all"):
            raise ValueError("supersedes is 'node' or 'all'")
        base = node.base
        if base not in self._ops:
            self._ops[base] = (node, {})
            if self._connected.is_set():
                self._subscribe(f"{base}/cmd/+")
        self._ops[base][1][op] = _Op(handler, args, inline, safe, supersedes)

    def _reject(self, node: Node, topic: str, reply_to: str | None, cmd_id: str | None, code: str,
                message: str) -> None:
        """Answer a command that could not be read: to its ``reply_to`` when
        it has a usable one, else on the node's ``error`` channel."""
        log.warning("%s: rejected %s: %s: %s", node, _short(topic), code, message)
        body = ErrorBody(code=code, message=message)
        if reply_to and cmd_id and is_reply_topic(reply_to):
            self._send(reply_to, encode(self._reply_payload(cmd_id, None, body)), False, 1)
        else:
            self._send(node.error, encode({"ts": self.clock.now(), "topic": _short(topic, 200),
                                           "error": body.model_dump(exclude_none=True)}), False, 1)

    def _accept(self, node: Node, ops: dict[str, _Op], topic: str, payload: bytes | bytearray) -> None:
        """On the network thread: validate a command completely before
        anything acts, then run it (inline) or queue it on its lane."""
        op_name = topic[len(node.base) + 5:]
        received = self.clock.now()
        try:
            raw = _decode(payload)
        except PayloadError as exc:
            self._reject(node, topic, None, None, "invalid", str(exc))
            return
        reply_to = raw.get("reply_to") if isinstance(raw, dict) and is_reply_topic(raw.get("reply_to")) else None
        cmd_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) and \
            0 < len(raw["id"]) <= 128 else None
        try:
            cmd = Command.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "payload"
            message = err["msg"].removeprefix("Value error, ")
            self._reject(node, topic, reply_to, cmd_id, "invalid", f"{where}: {message}")
            return
        ahead = max(MAX_EXPIRES_AHEAD, self.clock.lab_seconds(MAX_EXPIRES_AHEAD_WALL))
        if cmd.expires - received > ahead:
            self._reject(node, topic, cmd.reply_to, cmd.id, "invalid",
                         f"expires: {cmd.expires!r} is {cmd.expires - received:.6g} lab s ahead; a command may be "
                         f"valid for at most {ahead:g} lab s")
            return
        with self._cmd_lock:
            cached = self._replies_cache.get(cmd.id)
            duplicate = cached is None and cmd.id in self._inflight
            if duplicate:       # every delivery is answered once, as a delivery after the end is
                self._inflight[cmd.id].append(cmd.reply_to)
            elif cached is None:
                self._inflight[cmd.id] = []
        if cached is not None:   # a redelivery: answer again, never act twice
            self._send(cmd.reply_to, encode(cached), False, 1)
            return
        if duplicate:            # a redelivery of one still queued or running: answered when it ends
            log.info("%s: %s is already queued or running; the repeat gets its reply", node, cmd.id)
            return
        op = ops.get(op_name)
        if op is None:
            self._finish(cmd, None, ErrorBody(code="unknown_op", message=(
                f"{node} has no operation '{_short(op_name, 40)}'; it has: {', '.join(sorted(ops))}")))
            return
        args: Any = cmd.args
        if op.args_model is not None:
            try:
                args = op.args_model.model_validate(cmd.args)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "args"
                self._finish(cmd, None, ErrorBody(code="invalid", message=f"args.{where}: {err['msg']}"))
                return
        try:
            safe = op.towards_safe(args)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot decide is not safe-direction
            log.warning("%s %s: safe rule failed (%s); treated as not safe-direction", node, op_name, exc)
            safe = False
        if not safe and received > cmd.expires:
            self._finish(cmd, None, self._expired(cmd))
            return
        job = _Job(node, op, op_name, cmd, args, safe, received, next(self._job_seq))
        if op.inline:
            self._execute(job)
            return
        lane = self._express[op.supersedes] if safe else self._lane
        if not lane.put(job):
            with self._cmd_lock:
                self._inflight.pop(cmd.id, None)   # not cached: the same id may run once later
            log.error("%s: %s queue full (%d commands waiting); %s %s answered busy", node, lane.name,
                      lane.queue.maxsize, op_name, cmd.id)
            self._send(cmd.reply_to, encode(self._reply_payload(cmd.id, None, ErrorBody(
                code="busy", message=f"{node} has {lane.queue.maxsize} commands waiting already; "
                                     f"'{op_name}' not executed: send it again later"))), False, 1)

    def _expired(self, cmd: Command) -> ErrorBody:
        late = self.clock.now() - cmd.expires
        return ErrorBody(code="expired", message=f"command expired {late:.3f} lab s before it could run; not executed")

    def _run_queued(self, job: _Job) -> None:
        """The command lane: in arrival order, one at a time."""
        if not job.safe:
            barrier = max(self._barrier_all, self._barrier_node.get(job.node.base, 0))
            if job.seq < barrier:
                self._finish(job.cmd, None, ErrorBody(code="refused", message=(
                    f"superseded: a safe-direction command to {job.node} arrived after this '{job.op_name}' and "
                    "ran first; not executed")))
                return
            if self.clock.now() > job.cmd.expires:
                self._finish(job.cmd, None, self._expired(job.cmd))
                return
        self._execute(job)

    def _run_express(self, job: _Job) -> None:
        """The express lane: safe-direction commands, never behind the command lane."""
        with self._cmd_lock:
            if job.op.supersedes == "all":
                self._barrier_all = max(self._barrier_all, job.seq)
            else:
                self._barrier_node[job.node.base] = max(self._barrier_node.get(job.node.base, 0), job.seq)
        self._execute(job)

    def _execute(self, job: _Job) -> None:
        cmd = job.cmd
        ctx = CommandContext(job.node, job.op_name, cmd.id, cmd.sender, cmd.lease, cmd.expires, job.received,
                             cmd.args)
        held: list[tuple[str, bytes, bool, int]] = []
        self._defer.items = held
        result, error = None, None
        try:
            result = job.op.handler(job.args, ctx) or {}
        except Refused as exc:
            error = ErrorBody(code=exc.code if exc.code in _CODES else "refused", message=exc.message,
                              requirement=exc.requirement)
            log.info("%s %s refused %s: %s", job.node, job.op_name, cmd.sender, exc.message)
        except Exception as exc:  # noqa: BLE001 - reported, the server keeps running
            log.exception("%s %s failed", job.node, job.op_name)
            error = ErrorBody(code="failed", message=f"{type(exc).__name__}: {exc}")
        finally:
            self._defer.items = None
        try:
            self._finish(cmd, result, error)
        finally:
            # the handler's side effects go out whatever became of its reply:
            # retained state must never disagree with the hardware
            if held:
                try:
                    self._write_now()
                except Exception:  # noqa: BLE001
                    log.exception("%s: reply not written before the side effects", self.client_id)
            for topic, data, retain, qos in held:
                try:
                    self._send(topic, data, retain, qos)
                except Exception:  # noqa: BLE001 - the next one must still go
                    log.exception("%s: side effect of %s %s not published on %s", self.client_id, job.node,
                                  job.op_name, topic)

    def _finish(self, cmd: Command, result: dict | None, error: ErrorBody | None) -> None:
        """Remember the reply, then send it: a redelivery is answered from
        the cache even if this send fails."""
        reply = self._reply_payload(cmd.id, result, error)
        data = encode(reply)
        if len(data) > MAX_PAYLOAD:
            log.error("%s: reply to %s is %d bytes, over the bus limit", self.client_id, cmd.id, len(data))
            reply = self._reply_payload(cmd.id, None, ErrorBody(code="failed", message=(
                f"the result is {len(data)} bytes, over the bus limit of {MAX_PAYLOAD} bytes; the command did run")))
            data = encode(reply)
        with self._cmd_lock:
            self._replies_cache[cmd.id] = reply
            self._replies_cache.move_to_end(cmd.id)
            self._cache_until[cmd.id] = cmd.expires
            now = self.clock.now()
            # the oldest go first, but not while their command may still be sent
            # again (until it expires), unless the cache is at its hard limit
            while len(self._replies_cache) > REPLY_CACHE:
                oldest = next(iter(self._replies_cache))
                if self._cache_until.get(oldest, 0.0) > now and len(self._replies_cache) <= REPLY_CACHE_MAX:
                    break
                self._replies_cache.popitem(last=False)
                self._cache_until.pop(oldest, None)
            repeats = self._inflight.pop(cmd.id, [])
        for reply_to in [cmd.reply_to, *repeats]:
            try:
                self._send(reply_to, data, False, 1)
            except Exception:  # noqa: BLE001 - cached: a repeat of the command gets it
                log.exception("%s: reply to %s not sent", self.client_id, cmd.id)

    def _write_now(self) -> None:
        """On the network thread (an inline handler), put the queued reply on
        the wire before the handler's side effects are encoded and queued,
        instead of after the callback returns: the caller waits on the reply,
        nobody waits on the state.  paho's loop_write is the network thread's
        own write step; it is only called from that thread, and never with an
        on_publish callback set (paho would take its callback lock, which the
        running on_message holds)."""
        client = self._client
        if threading.current_thread() is getattr(client, "_thread", None) and client.on_publish is None:
            client.loop_write()

    def _reply_payload(self, cmd_id: str, result: dict | None, error: ErrorBody | None) -> dict:
        data: dict[str, Any] = {"id": cmd_id, "ok": error is None, "ts": self.clock.now()}
        if error is None:
            data["result"] = result
        else:
            data["error"] = error.model_dump(exclude_none=True)
        return data

    # ------------------------------------------------------------------ sending commands
    def _on_reply(self, payload: bytes | bytearray) -> None:
        try:
            reply = Reply.model_validate(_decode(payload))
        except (PayloadError, ValidationError) as exc:
            log.warning("%s: malformed reply ignored: %s", self.client_id, _short(str(exc), 300))
            return
        entry = self._pending.pop(reply.id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(reply)

    def request(self, node: Node, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
                lease: Callable[[str, dict[str, Any]], Any] | None = None,
                expires: float | None = None) -> dict[str, Any]:
        """Send ``op`` to ``node`` and wait for its reply.

        ``timeout`` is lab seconds (at least :data:`MIN_WALL_TIMEOUT` wall
        seconds); the command expires at the same instant unless ``expires``
        (lab time) says otherwise, so a command that reaches the node late is
        refused rather than executed late.  ``lease`` proves the bench lease:
        called with the command's topic and payload, it returns the proof
        (rig/lab.py; the lease key itself never goes on the bus).  If no reply
        comes, the command goes again with the same id (and the same proof):
        the node never runs an id twice.  Raises :class:`CommandError` on an
        error reply, :class:`CommandTimeout` when nothing answers (saying
        whether the broker was reachable), :class:`BusError` on a closed bus."""
        if self._closing.is_set() or self.fatal:
            raise BusError(f"{self.client_id}: the bus is closed" + (f" ({self.fatal})" if self.fatal else ""))
        wall_wait = max(self.clock.wall_seconds(timeout), MIN_WALL_TIMEOUT)
        if expires is None:
            expires = self.clock.now() + self.clock.lab_seconds(wall_wait)
        cmd_id = f"{self.client_id}-{next(self._ids)}"
        cmd = {"id": cmd_id, "reply_to": self.reply_topic, "sender": self.client_id, "expires": expires,
               "args": args or {}}
        if lease is not None:
            cmd["lease"] = lease(node.cmd(op), cmd)
        data = encode(cmd)
        if len(data) > MAX_PAYLOAD:
            raise BusError(f"{node} {op}: command of {len(data)} bytes is over the bus limit of {MAX_PAYLOAD} bytes")
        fut: Future = Future()
        topic = node.cmd(op)
        self._pending[cmd_id] = (fut, topic, data, None)
        try:
            info = self._send(topic, data, False, 1)
        except BusError:
            self._pending.pop(cmd_id, None)
            raise
        if cmd_id in self._pending:
            self._pending[cmd_id] = (fut, topic, data, info)
        deadline = time.monotonic() + wall_wait
        resend, sends = RESEND_AFTER, 1
        next_send = time.monotonic() + resend
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._pending.pop(cmd_id, None)
                raise CommandTimeout(node, op, wall_wait, self._silence(info, sends)) from None
            try:
                reply: Reply = fut.result(min(remaining, max(0.0, next_send - time.monotonic())))
                break
            except TimeoutError:
                pass
            if time.monotonic() >= next_send:
                if self._connected.is_set():
                    # no reply yet: the broker may have taken the command while
                    # the node was away (it is then dropped: clean sessions), or
                    # the reply may be lost.  Again, with the same id: the node
                    # answers a repeat from its cache and never runs it twice
                    log.info("%s: no reply yet to %s %s (%s); sending it again", self.client_id, node, op, cmd_id)
                    info, sends = self._client.publish(topic, data, qos=1), sends + 1
                    if cmd_id in self._pending:
                        self._pending[cmd_id] = (fut, topic, data, info)
                resend = min(resend * 2, RESEND_MAX)
                next_send = time.monotonic() + resend
        if not reply.ok:
            raise CommandError(node, op, reply.error or ErrorBody(code="failed", message="error without a body"))
        return reply.result or {}

    def _silence(self, info: Any, sends: int) -> str | None:
        """Why a request may have had no reply, as far as this bus can tell."""
        if not self._connected.is_set():
            since = f" for {time.monotonic() - self._lost_at:.1f} wall s" if self._lost_at else ""
            return (f"the MQTT broker at {self.endpoint} is unreachable{since}; the command was "
                    f"{'delivered to the broker before it went' if _acked(info) else 'not delivered'}"
                    " and will not run after its expiry")
        if info is not None and not _acked(info):
            return f"the MQTT broker at {self.endpoint} did not acknowledge the command"
        if sends > 1:
            return f"sent {sends} times; is the node online? (`rig status`)"
        return None


_CODES = set(typing.get_args(ErrorCode))
