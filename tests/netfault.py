"""Network faults for tests: a TCP proxy between a client and a server that
a test can pause (a partition: nothing flows, nothing is lost, as when a
firewall drops packets and TCP retransmits) or cut (every connection reset,
as when a switch port or the server host goes away).

::

    with TcpProxy(("127.0.0.1", broker.port)) as proxy:
        bus = Bus(Endpoint("127.0.0.1", proxy.port))   # through the proxy
        proxy.pause()      # partition
        proxy.resume()     # healed: what was held flows on
        proxy.cut()        # every connection reset now; new ones are accepted

Real sockets, real TCP: the client and the server cannot tell the proxy is
there until a fault is injected.

:class:`RawClient` is a plain paho client that sends any bytes with any
flags, for payloads and topics the rig's own Bus would refuse to send.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

import paho.mqtt.client as mqtt


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1"):
        self.upstream = upstream
        self._server = socket.create_server((host, 0))
        self.host, self.port = host, self._server.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, name=f"proxy:{self.port}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    # ------------------------------------------------------------------ faults
    def pause(self) -> None:
        """A partition: bytes stop flowing both ways; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """The partition heals: held bytes flow on."""
        self._flowing.set()

    def cut(self) -> None:
        """Reset every open connection (new ones are still accepted)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                _close(s)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        _close(self._server)
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._flowing.wait()      # while partitioned, a new connection gets nowhere either
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append((client, server))
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name=f"proxy:{self.port}:pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # read just before a pause: held, not lost
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class KillableBroker:
    """A broker of either kind as a process of its own on a fixed port, so a
    test can SIGKILL it and start it again where the clients expect it, with
    the same credential store.  (The session ``broker`` fixture's amqtt runs
    in a thread of the test process, which cannot be killed.)  ``endpoint``
    logs in as the store's admin, as the test fixtures' clients do."""

    def __init__(self, kind: str):
        import shutil
        import subprocess

        from rig.broker import Broker, Endpoint, free_port, mosquitto_path
        from rig.config import BrokerConfig
        from rig.security import CredentialStore, broker_state_dir, principals

        self.kind, self.host, self.port = kind, "127.0.0.1", free_port()
        if kind == "mosquitto":
            started = Broker.start(BrokerConfig(kind="mosquitto", port=self.port))
            self._store, self._proc = started.store.path, started.proc
            started._log.close()
            self._argv = [mosquitto_path(), "-c", str(self._store / "mosquitto.conf")]
        else:
            self._store = CredentialStore.generate(broker_state_dir(self.host, self.port), principals(None)).path
            code = ("import threading; from rig.broker import AmqttBroker, Endpoint; "
                    "from rig.security import CredentialStore; "
                    f"s = CredentialStore.open({str(self._store)!r}); "
                    f"AmqttBroker(Endpoint({self.host!r}, {self.port}, 'amqtt', store=str(s.path)), s); "
                    "threading.Event().wait()")
            self._argv, self._proc = [sys.executable, "-c", code], None
        self._rmtree, self._popen = shutil.rmtree, subprocess.Popen
        self.endpoint = Endpoint(self.host, self.port, kind, store=str(self._store)).as_user("admin", keep_store=True)
        if self._proc is None:
            self.start()

    def start(self) -> None:
        import subprocess

        from rig.broker import _wait_listening

        self._proc = self._popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.host, self.port, 20, self.kind, self._proc)

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client, every retained message gone."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._rmtree(self._store, ignore_errors=True)

    def __enter__(self) -> "KillableBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RawClient:
    """A plain paho client: sends any bytes, collects what comes back."""

    def __init__(self, endpoint, client_id: str = "raw-robust"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.disconnected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.c.on_message = self._on_message
        self.c.on_disconnect = lambda *_a: self.disconnected.set()
        if endpoint.username:
            self.c.username_pw_set(endpoint.username, endpoint.password())
        self.c.connect(endpoint.host, endpoint.port)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def wait(self, predicate, seconds: float = 10.0):
        """Wait (wall seconds: this client has no lab clock) for a message."""
        with self.cond:
            found = self.cond.wait_for(lambda: next((m for m in self.messages if predicate(m)), None), seconds)
        return found

    def json(self, topic: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p, _r in self.messages if t == topic and p]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
