"""The lab's MQTT broker: start one for a simulated lab, or find the lab's own.

``kind`` in lab.yaml (with ``auto``, ``RIG_BROKER=amqtt|mosquitto`` in the
environment chooses):

* ``auto``: mosquitto when it is installed, else the embedded amqtt;
* ``amqtt``: the pure-Python broker, in a thread of this process (MQTT 3.1.1;
  it does not fire a Last Will on keepalive expiry, which is why the rig's
  safety rests on its own heartbeat, never on the broker);
* ``mosquitto``: a ``mosquitto`` child process on 127.0.0.1;
* ``external``: the lab's broker at ``url`` (TLS and credentials from env).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .config import BrokerConfig, TlsConfig
from .contract import MAX_PACKET

log = logging.getLogger(__name__)
ENV_KIND = "RIG_BROKER"


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """How a client reaches the broker."""

    host: str
    port: int
    kind: str = "external"
    tls: TlsConfig | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    keepalive: int = 10

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.url} ({self.kind})"


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve_kind(cfg: BrokerConfig) -> str:
    """The broker an ``auto`` lab gets: ``RIG_BROKER`` (amqtt or mosquitto)
    if set, else mosquitto when installed, else the embedded amqtt."""
    if cfg.kind != "auto":
        return cfg.kind
    choice = os.environ.get(ENV_KIND)
    if choice:
        if choice not in ("amqtt", "mosquitto"):
            raise BrokerError(f"{ENV_KIND}={choice}: expected amqtt or mosquitto")
        return choice
    return "mosquitto" if mosquitto_path() else "amqtt"


def endpoint_for(cfg: BrokerConfig, port: int | None = None) -> Endpoint:
    """Where the lab's broker is, as lab.yaml says (for clients)."""
    user, pw = cfg.credentials()
    if resolve_kind(cfg) == "external" or cfg.url:
        u = urlparse(cfg.url)
        tls = cfg.tls or (TlsConfig() if u.scheme == "mqtts" else None)
        return Endpoint(u.hostname or "localhost", u.port or (8883 if tls else 1883), "external", tls, user, pw, cfg.keepalive)
    return Endpoint(cfg.host, port or cfg.port, resolve_kind(cfg), None, user, pw, cfg.keepalive)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_listening(host: str, port: int, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.02)
    raise BrokerError(f"{what} did not listen on {host}:{port} within {seconds:g} s")


class Broker:
    """A broker this process started (``with Broker.start(cfg) as ep: ...``)."""

    endpoint: Endpoint

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Endpoint:
        return self.endpoint

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def start(cfg: BrokerConfig, port: int | None = None) -> "Broker":
        """Start the broker lab.yaml asks for; ``port=0`` picks a free one."""
        kind = resolve_kind(cfg)
        if kind == "external":
            raise BrokerError("broker kind 'external' is not started by the rig: connect to its url")
        port = cfg.port if port is None else port
        if port == 0:
            port = free_port(cfg.host)
        if port_open(cfg.host, port):
            raise BrokerError(
                f"port {cfg.host}:{port} is already in use: is the lab already up (`rig status`)? "
                "Otherwise choose another broker.port in lab.yaml"
            )
        if kind == "mosquitto":
            return MosquittoBroker(cfg.host, port, cfg.keepalive)
        return AmqttBroker(cfg.host, port, cfg.keepalive)


class _SnapshotDict(dict):
    """A dict whose iteration walks a copy of its keys."""

    def __iter__(self):
        return iter(list(super().keys()))


class AmqttBroker(Broker):
    """amqtt in a daemon thread with its own event loop."""

    def __init__(self, host: str, port: int, keepalive: int = 10):
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.endpoint = Endpoint(host, port, "amqtt", keepalive=keepalive)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"amqtt:{port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise BrokerError(f"embedded amqtt broker did not start on {host}:{port}")
        if self._error:
            raise BrokerError(f"embedded amqtt broker failed on {host}:{port}: {self._error}")
        log.info("embedded amqtt broker on %s:%d", host, port)

    def _run(self) -> None:
        from amqtt.broker import Broker as _Amqtt

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.endpoint.host}:{self.endpoint.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            broker = _Amqtt(config)
            # amqtt 0.11/0.12 iterates its subscription table across an await when a
            # client connects; a subscription made meanwhile raises "dictionary
            # changed size during iteration" and drops that client.  Iterating a
            # snapshot is the fix; the table itself is unchanged.
            broker._subscriptions = _SnapshotDict(broker._subscriptions)
            try:
                await broker.start()
            except BaseException as exc:  # noqa: BLE001 - reported to the starter
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await broker.shutdown()

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


class MosquittoBroker(Broker):
    """A mosquitto child process listening on 127.0.0.1 only (anonymous:
    fine for a simulated lab on one machine; a real lab's broker has TLS,
    passwords and ACLs, see docs/bus.md)."""

    def __init__(self, host: str, port: int, keepalive: int = 10):
        exe = mosquitto_path()
        if exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto), or use broker.kind: amqtt")
        self.endpoint = Endpoint(host, port, "mosquitto", keepalive=keepalive)
        self._dir = tempfile.TemporaryDirectory(prefix="rig-mosquitto-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nset_tcp_nodelay true\n"
            f"max_packet_size {MAX_PACKET}\n"   # a bigger packet disconnects its sender (the rig's limit)
        )
        self._log = open(Path(self._dir.name) / "mosquitto.log", "w")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(host, port, 10, "mosquitto", self.proc)
        except BrokerError:
            self.stop()
            raise
        log.info("mosquitto broker on %s:%d (pid %d)", host, port, self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._dir.cleanup()
