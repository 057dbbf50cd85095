"""The rig's bus: paho-mqtt 2.x (callback API v2) speaking the contract.

One :class:`Bus` is one MQTT connection with one identity.  It can

* keep a node's presence (retained, Last Will offline, republished every
  ``heartbeat_interval`` wall seconds as an application-level heartbeat that
  does not depend on the broker firing Last Wills);
* publish retained state and events, stamped with lab time and a sequence;
* serve commands: validate the envelope, refuse expired ones, answer
  duplicates from a cache (QoS 1 may deliver twice: commands are idempotent),
  run the handler on a worker thread and reply; a malformed payload gets an
  error reply (or, with no ``reply_to``, an ``error`` message) and a log line,
  and the server keeps running;
* send commands and wait for their reply (:meth:`request`);
* follow retained state and events with waits in lab time (:class:`Watch`).

Everything is QoS 1 and MQTT 3.1.1, so the embedded amqtt and mosquitto
behave the same.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ValidationError

from . import __version__
from .broker import Endpoint
from .clock import LabClock
from .contract import LAB_CLOCK, Command, ErrorBody, Node, Presence, Reply, reply_topic

log = logging.getLogger(__name__)

#: network and instrument I/O does not run faster in a simulation: a request
#: waits at least this many wall seconds whatever the clock scale
MIN_WALL_TIMEOUT = 2.0


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
    def __init__(self, node: Node | str, op: str, seconds: float):
        super().__init__(node, op, ErrorBody(
            code="timeout",
            message=f"no reply within {seconds:.3g} wall s: is the node online? (`rig status`)",
        ))


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

    @property
    def topic(self) -> str:
        return self.node.cmd(self.op)


Handler = Callable[[Any, CommandContext], dict[str, Any] | None]


@dataclass
class _Op:
    handler: Handler
    args_model: type[BaseModel] | None
    inline: bool = False


def _decode(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


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
            value = self.values.get(topic) if topic else (next(iter(self.values.values()), None) if self.values else None)
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
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._subs: dict[str, list[Callable[[str, Any], None]]] = {}
        self._subs_lock = threading.RLock()
        self._ops: dict[str, tuple[Node, dict[str, _Op]]] = {}
        self._pending: dict[str, Future] = {}
        self._replies_cache: OrderedDict[str, dict] = OrderedDict()
        self._connected = threading.Event()
        self._refused: str | None = None      # why the broker refused this client, if it did
        self._connect_done = threading.Event()
        self._closing = threading.Event()
        self._cmd_queue: queue.Queue = queue.Queue()
        self._msg_queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._announced = threading.Event()
        self._unacked: collections.deque = collections.deque(maxlen=256)   # recent QoS 1 publishes
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
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(0.2, 2.0)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        self._client = c

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
            self._client.loop_stop()
            if self._refused is not None:
                who = f"user {self.endpoint.username}" if self.endpoint.username else "an anonymous client"
                raise BusError(f"the MQTT broker at {self.endpoint} refused {who}: {self._refused}")
            raise BusError(f"MQTT broker at {self.endpoint} did not accept the connection within {timeout:g} s")
        for target, name in ((self._command_worker, "cmd"), (self._message_worker, "msg")):
            t = threading.Thread(target=target, name=f"bus-{name}:{self.client_id}", daemon=True)
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
            if rc == mqtt.MQTT_ERR_SUCCESS:
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
        if self._announced.is_set() and self._connected.is_set():
            info = self._client.publish(self.presence_node.presence, encode(
                Presence(online=False, client=self.client_id, ts=self.clock.now(), reason=reason).model_dump()),
                qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._cmd_queue.put(None)
        self._msg_queue.put(None)
        self.flush(2.0)
        self._client.disconnect()
        self._client.loop_stop()
        for fut in list(self._pending.values()):
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
            if info.is_published() or info.rc != mqtt.MQTT_ERR_SUCCESS:
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
        for node, _ops in self._ops.values():
            filters.add(f"{node.base}/cmd/+")
        for f in filters:
            self._subscribe(f)
        if self._announced.is_set():   # a reconnection: say so again
            self._publish_presence()
        self._connected.set()
        self._connect_done.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._closing.is_set():
            log.warning("%s lost the broker at %s (%s); reconnecting", self.client_id, self.endpoint, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self.reply_topic:
            self._on_reply(msg.payload)
            return
        if "/cmd/" in topic:
            for base, (node, ops) in self._ops.items():
                if topic.startswith(base + "/cmd/"):
                    op = ops.get(topic[len(base) + 5:])
                    if op is not None and op.inline:
                        self._run_command(node, ops, topic, msg.payload)
                    else:
                        self._cmd_queue.put((node, ops, topic, msg.payload))
                    return
        self._msg_queue.put((topic, msg.payload, msg.retain))

    # ------------------------------------------------------------------ publishing
    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def publish(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> None:
        data = payload if isinstance(payload, (bytes, bytearray)) else encode(payload)
        held = getattr(self._defer, "items", None)
        if held is not None:
            # a handler's side effects (state, events) go out after its reply
            held.append((topic, data, retain, qos))
            return
        self._send(topic, data, retain, qos)

    def _send(self, topic: str, data: bytes, retain: bool, qos: int) -> None:
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if qos:
            self._unacked.append(info)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise BusError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")

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
        p = Presence(online=True, ts=self.clock.now(), wall=self.clock.wall(), seq=self.next_seq(),
                     client=self.client_id, version=__version__,
                     heartbeat_interval=self.heartbeat_interval, **self.presence_info)
        self._client.publish(self.presence_node.presence, encode(p.model_dump()), qos=1, retain=True)

    def _heartbeat_loop(self) -> None:
        while not self._closing.wait(self.heartbeat_interval):
            if self._connected.is_set():
                self._publish_presence()

    # ------------------------------------------------------------------ subscribing
    def subscribe(self, topic_filter: str, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(topic, payload)`` for every message matching the
        filter (on the bus's message thread).  Payloads are decoded JSON;
        an empty payload (a cleared retained topic) arrives as None."""
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
            topic, payload, _retain = item
            with self._subs_lock:
                matching = [cb for f, cbs in self._subs.items() if mqtt.topic_matches_sub(f, topic) for cb in cbs]
            if not matching:
                continue
            if payload == b"":
                data = None
            else:
                try:
                    data = _decode(payload)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    log.warning("%s: ignoring non-JSON payload on %s: %s", self.client_id, topic, exc)
                    continue
            for cb in matching:
                try:
                    cb(topic, data)
                except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the bus
                    log.exception("%s: subscriber of %s failed", self.client_id, topic)

    # ------------------------------------------------------------------ serving commands
    def serve(self, node: Node, op: str, handler: Handler, args: type[BaseModel] | None = None,
              inline: bool = False) -> None:
        """Serve ``op`` on ``node``.  The handler gets the validated args (a
        model instance, or the dict when no model is given) and a
        :class:`CommandContext`; it returns a result dict or raises
        :class:`Refused`.

        Handlers run one at a time on the bus's command thread.  ``inline``
        runs a handler on the network thread instead, saving two thread
        hand-offs: only for handlers that never block (a GPIO write, a lease
        table) and never wait on the bus themselves."""
        base = node.base
        if base not in self._ops:
            self._ops[base] = (node, {})
            if self._connected.is_set():
                self._subscribe(f"{base}/cmd/+")
        self._ops[base][1][op] = _Op(handler, args, inline)

    def _reject(self, node: Node, topic: str, reply_to: str | None, cmd_id: str | None, code: str,
                message: str) -> None:
        log.warning("%s: rejected %s: %s: %s", node, topic, code, message)
        body = ErrorBody(code=code, message=message)
        if reply_to and cmd_id:
            self._send_reply(reply_to, cmd_id, None, body)
        else:
            self.publish(node.error, {"ts": self.clock.now(), "topic": topic, "error": body.model_dump()})

    def _command_worker(self) -> None:
        while True:
            item = self._cmd_queue.get()
            if item is None:
                return
            self._run_command(*item)

    def _run_command(self, node: Node, ops: dict[str, _Op], topic: str, payload: bytes) -> None:
        try:
            self._handle_command(node, ops, topic, payload)
        except Exception:  # noqa: BLE001 - the server keeps running
            log.exception("%s: command on %s failed outside its handler", node, topic)

    def _handle_command(self, node: Node, ops: dict[str, _Op], topic: str, payload: bytes) -> None:
        op_name = topic.rsplit("/", 1)[1]
        received = self.clock.now()
        try:
            raw = _decode(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._reject(node, topic, None, None, "invalid", f"payload is not JSON: {exc}")
            return
        reply_to = raw.get("reply_to") if isinstance(raw, dict) and isinstance(raw.get("reply_to"), str) else None
        cmd_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        try:
            cmd = Command.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "payload"
            self._reject(node, topic, reply_to, cmd_id, "invalid", f"{where}: {err['msg']}")
            return
        cached = self._replies_cache.get(cmd.id)
        if cached is not None:  # a redelivery: answer again, never act twice
            self.publish(cmd.reply_to, cached)
            return
        op = ops.get(op_name)
        if op is None:
            self._reply_error(cmd, "unknown_op", f"{node} has no operation '{op_name}'; it has: {', '.join(sorted(ops))}")
            return
        if self.clock.now() > cmd.expires:
            self._reply_error(cmd, "expired",
                              f"command expired {self.clock.now() - cmd.expires:.3f} lab s before it could run; not executed")
            return
        args: Any = cmd.args
        if op.args_model is not None:
            try:
                args = op.args_model.model_validate(cmd.args)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "args"
                self._reply_error(cmd, "invalid", f"args.{where}: {err['msg']}")
                return
        ctx = CommandContext(node, op_name, cmd.id, cmd.sender, cmd.lease, cmd.expires, received, cmd.args)
        held: list[tuple[str, bytes, bool, int]] = []
        self._defer.items = held
        try:
            result = op.handler(args, ctx) or {}
        except Refused as exc:
            self._defer.items = None
            self._reply_error(cmd, exc.code, exc.message, exc.requirement)
        except Exception as exc:  # noqa: BLE001 - reported, the server keeps running
            self._defer.items = None
            log.exception("%s %s failed", node, op_name)
            self._reply_error(cmd, "failed", f"{type(exc).__name__}: {exc}")
        else:
            self._defer.items = None
            self._remember(cmd.id, self._send_reply(cmd.reply_to, cmd.id, result, None))
        finally:
            self._defer.items = None
        if held:
            self._write_now()
        for topic, data, retain, qos in held:
            self._send(topic, data, retain, qos)

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

    def _reply_error(self, cmd: Command, code: str, message: str, requirement: str | None = None) -> None:
        log.info("%s refused %s: %s", cmd.sender, code, message)
        self._remember(cmd.id, self._send_reply(cmd.reply_to, cmd.id, None,
                                                 ErrorBody(code=code, message=message, requirement=requirement)))

    def _remember(self, cmd_id: str, reply: dict) -> None:
        self._replies_cache[cmd_id] = reply
        while len(self._replies_cache) > 2000:
            self._replies_cache.popitem(last=False)

    def _send_reply(self, reply_to: str, cmd_id: str, result: dict | None, error: ErrorBody | None) -> dict:
        data: dict[str, Any] = {"id": cmd_id, "ok": error is None, "ts": self.clock.now()}
        if error is None:
            data["result"] = result
        else:
            data["error"] = error.model_dump(exclude_none=True)
        self._send(reply_to, encode(data), False, 1)
        return data

    # ------------------------------------------------------------------ sending commands
    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = Reply.model_validate(_decode(payload))
        except (ValueError, ValidationError) as exc:
            log.warning("%s: malformed reply ignored: %s", self.client_id, exc)
            return
        fut = self._pending.pop(reply.id, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def request(self, node: Node, op: str, args: dict[str, Any] | None = None, timeout: float = 5.0,
                lease: Callable[[str, dict[str, Any]], Any] | None = None,
                expires: float | None = None) -> dict[str, Any]:
        """Send ``op`` to ``node`` and wait for its reply.

        ``timeout`` is lab seconds (at least :data:`MIN_WALL_TIMEOUT` wall
        seconds); the command expires at the same instant unless ``expires``
        (lab time) says otherwise, so a command that reaches the node late is
        refused rather than executed late.  ``lease`` proves the bench lease:
        called with the command's topic and payload, it returns the proof
        (rig/lab.py; the lease key itself never goes on the bus).  Raises :class:`CommandError` on an
        error reply, :class:`CommandTimeout` when nothing answers."""
        wall_wait = max(self.clock.wall_seconds(timeout), MIN_WALL_TIMEOUT)
        if expires is None:
            expires = self.clock.now() + self.clock.lab_seconds(wall_wait)
        cmd_id = f"{self.client_id}-{next(self._ids)}"
        cmd = {"id": cmd_id, "reply_to": self.reply_topic, "sender": self.client_id, "expires": expires,
               "args": args or {}}
        if lease is not None:
            cmd["lease"] = lease(node.cmd(op), cmd)
        fut: Future = Future()
        self._pending[cmd_id] = fut
        self.publish(node.cmd(op), cmd)
        try:
            reply: Reply = fut.result(wall_wait)
        except TimeoutError:
            self._pending.pop(cmd_id, None)
            raise CommandTimeout(node, op, wall_wait) from None
        if not reply.ok:
            raise CommandError(node, op, reply.error or ErrorBody(code="failed", message="error without a body"))
        return reply.result or {}
