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
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .config import BrokerConfig, ServerTls, TlsConfig
from .contract import MAX_PACKET
from .security import (
    Acl,
    CredentialStore,
    SecurityError,
    broker_state_dir,
    hash_password,
    new_password,
    principals,
    private_dir,
    user_for,
    write_private,
)

if TYPE_CHECKING:  # pragma: no cover
    from .config import LabConfig

log = logging.getLogger(__name__)
ENV_KIND = "RIG_BROKER"


class BrokerError(RuntimeError):
    pass


ENDPOINT_PARAMS = ("kind", "ca_file", "cert_file", "key_file", "insecure", "password_env", "password_file",
                   "store", "keepalive")


@dataclass(frozen=True)
class Endpoint:
    """How a client reaches the broker, and as whom.

    The one form in which a broker is passed on (``RIG_BROKER_URL``,
    ``--rig-broker``, ``rig agent --broker``, the run record): :attr:`url`
    and :meth:`from_url` round-trip every field.  A password is never a
    field: it is named (``password_env``: an environment variable;
    ``password_file``: a file only this user can read), so the URL can be
    logged and recorded.  ``store`` is a lab's generated credential store
    (rig/security.py): a component then logs in as its own role's user
    (:meth:`for_role`)::

        mqtts://agent-bench-3@mqtt.lab.example:8883/?ca_file=/etc/rig/ca.pem&password_env=RIG_MQTT_PASSWORD
    """

    host: str
    port: int
    kind: str = "external"
    tls: TlsConfig | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    store: str | None = None
    keepalive: int = 10

    # -- the URL form -------------------------------------------------------------
    @property
    def url(self) -> str:
        query: list[tuple[str, str]] = []
        if self.kind != "external":
            query.append(("kind", self.kind))
        if self.tls is not None:
            for key in ("ca_file", "cert_file", "key_file"):
                value = getattr(self.tls, key)
                if value is not None:
                    query.append((key, str(value)))
            if self.tls.insecure:
                query.append(("insecure", "1"))
        for key in ("password_env", "password_file", "store"):
            value = getattr(self, key)
            if value:
                query.append((key, str(value)))
        if self.keepalive != 10:
            query.append(("keepalive", str(self.keepalive)))
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        tail = f"/?{urlencode(query)}" if query else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}{tail}"

    @classmethod
    def from_url(cls, url: str) -> "Endpoint":
        """Parse :attr:`url` (or a plain ``mqtt://host:port``); raises
        :class:`BrokerError` naming what is wrong, never echoing a password."""
        try:
            u = urlsplit(url)
            port = u.port
        except ValueError as exc:
            raise BrokerError(f"broker URL: {exc}") from None
        if u.scheme not in ("mqtt", "mqtts"):
            raise BrokerError(f"broker URL must start mqtt:// or mqtts://, not {u.scheme or 'nothing'}://")
        if u.password is not None:
            raise BrokerError("broker URL: a password does not go in the URL (it would be logged and recorded): "
                              "name an environment variable (password_env=) or a file (password_file=)")
        if not u.hostname:
            raise BrokerError("broker URL has no host")
        if u.path not in ("", "/"):
            raise BrokerError(f"broker URL: unexpected path {u.path!r}")
        params: dict[str, str] = {}
        for key, value in parse_qsl(u.query, keep_blank_values=True, strict_parsing=False):
            if key not in ENDPOINT_PARAMS:
                raise BrokerError(f"broker URL: unknown parameter {key!r} (known: {', '.join(ENDPOINT_PARAMS)})")
            params[key] = value
        tls = None
        if u.scheme == "mqtts":
            tls = TlsConfig(ca_file=params.get("ca_file") or None, cert_file=params.get("cert_file") or None,
                            key_file=params.get("key_file") or None,
                            insecure=params.get("insecure", "") in ("1", "true", "yes"))
        elif any(k in params for k in ("ca_file", "cert_file", "key_file", "insecure")):
            raise BrokerError("broker URL: TLS settings need an mqtts:// URL")
        try:
            keepalive = int(params.get("keepalive", 10))
        except ValueError:
            raise BrokerError("broker URL: keepalive must be whole seconds") from None
        return cls(u.hostname, port or (8883 if tls else 1883), params.get("kind", "external"), tls,
                   unquote(u.username) if u.username else None, params.get("password_env") or None,
                   params.get("password_file") or None, params.get("store") or None, keepalive)

    def __str__(self) -> str:
        who = f"{self.username}@" if self.username else ""
        extra = ", TLS" if self.tls else ""
        if self.tls is not None and self.tls.cert_file:
            extra += " with client certificate"
        return f"{'mqtts' if self.tls else 'mqtt'}://{who}{self.host}:{self.port} ({self.kind}{extra})"

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r})"

    # -- credentials -----------------------------------------------------------------
    def password(self) -> str | None:
        """The password, read now from the environment variable or file named."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise BrokerError(f"the broker password is in environment variable {self.password_env}, "
                                  "which is not set")
            return value
        if self.password_file:
            try:
                return Path(self.password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise BrokerError(f"cannot read the broker password file {self.password_file}: "
                                  f"{exc.strerror or exc}") from None
        return None

    @property
    def authenticated(self) -> bool:
        """Whether a client of this endpoint logs in (password or client certificate)."""
        return bool(self.username and (self.password_env or self.password_file)) or \
            bool(self.tls is not None and self.tls.cert_file)

    def as_user(self, user: str, keep_store: bool = False) -> "Endpoint":
        """This endpoint as ``user`` of its credential store (the store is
        dropped unless ``keep_store``: a child process gets its own password
        file only)."""
        if not self.store:
            raise BrokerError(f"{self} has no credential store to take user {user} from")
        pw = Path(self.store) / f"{user}.pw"
        if not pw.is_file():
            raise BrokerError(f"the lab's credential store {self.store} has no user {user}")
        return replace(self, username=user, password_env=None, password_file=str(pw),
                       store=self.store if keep_store else None)

    def for_role(self, role: str, bench: str | None = None, name: str | None = None) -> "Endpoint":
        """The endpoint a component of ``role`` uses: with a credential store,
        its own user (``agent-<bench>``, ``sim-<bench>``, ``orchestrator``,
        ``observer``); without one, this endpoint as it is (a real lab's host
        has its own credentials)."""
        if not self.store:
            return self

        for user in user_for(role, bench, name):
            if (Path(self.store) / f"{user}.pw").is_file():
                return self.as_user(user, keep_store=True)
        raise BrokerError(f"the lab's credential store {self.store} has no user for {role}"
                          + (f" of {bench}" if bench else ""))


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
    """Where the lab's broker is, as lab.yaml says (for clients).

    An external broker: its URL, TLS and the credentials lab.yaml names
    (``username_env``'s value; the password stays in ``password_env``).  A
    broker ``rig up`` started on this machine: its generated credential store
    when the lab is up (the orchestrator's user; :meth:`Endpoint.for_role`
    picks another)."""
    if resolve_kind(cfg) == "external" or cfg.url:
        u = urlsplit(cfg.url or "")
        tls = cfg.tls or (TlsConfig() if u.scheme == "mqtts" else None)
        user = None
        if cfg.username_env:
            user = os.environ.get(cfg.username_env)
            if user is None:
                raise BrokerError(f"lab.yaml names {cfg.username_env} for the broker user, which is not set")
        return Endpoint(u.hostname or "localhost", u.port or (8883 if tls else 1883), "external", tls, user,
                        cfg.password_env, None, None, cfg.keepalive)
    port = port or cfg.port
    tls = (cfg.tls or TlsConfig()) if cfg.server_tls is not None else cfg.tls
    ep = Endpoint(cfg.host, port, resolve_kind(cfg), tls, keepalive=cfg.keepalive)

    try:
        store = broker_state_dir(cfg.host, port)
    except SecurityError as exc:
        raise BrokerError(str(exc)) from None
    if (store / "orchestrator.pw").is_file():
        ep = replace(ep, store=str(store)).as_user("orchestrator", keep_store=True)
    return ep


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """A broker this process started (``with Broker.start(cfg) as ep: ...``).

    Secure by default: no anonymous clients; every client logs in as a user of
    a credential store generated for this broker (rig/security.py: one user
    per role, an ACL per user, from ``lab``, or role-wide users without one),
    kept in a private directory and removed when the broker stops.  Off
    loopback it also needs TLS (``broker.server_tls``), which only mosquitto
    serves."""

    endpoint: Endpoint
    store: "CredentialStore"

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Endpoint:
        return self.endpoint

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def start(cfg: BrokerConfig, port: int | None = None, lab: "LabConfig | None" = None) -> "Broker":
        """Start the broker lab.yaml asks for; ``port=0`` picks a free one."""

        kind = resolve_kind(cfg)
        if kind == "external":
            raise BrokerError("broker kind 'external' is not started by the rig: connect to its url")
        if not is_loopback(cfg.host):
            if kind == "amqtt":
                raise BrokerError(f"broker.host {cfg.host}: the embedded amqtt broker serves loopback only "
                                  "(a simulated lab on this machine); a lab's broker on the network is mosquitto "
                                  "with TLS (broker.kind: mosquitto, broker.server_tls)")
            if cfg.server_tls is None:
                raise BrokerError(f"broker.host {cfg.host} is off loopback: the broker needs TLS there "
                                  "(broker.server_tls: cert_file, key_file; see README 'Securing a real lab')")
        if cfg.server_tls is not None and kind == "amqtt":
            raise BrokerError("broker.server_tls: the embedded amqtt broker does not serve TLS; use mosquitto")
        port = cfg.port if port is None else port
        if port == 0:
            port = free_port(cfg.host)
        if port_open(cfg.host, port):
            raise BrokerError(
                f"port {cfg.host}:{port} is already in use: is the lab already up (`rig status`)? "
                "Otherwise choose another broker.port in lab.yaml"
            )
        try:
            store = CredentialStore.generate(broker_state_dir(cfg.host, port), principals(lab))
        except (SecurityError, OSError) as exc:
            raise BrokerError(f"cannot write the lab's credentials: {exc}") from None
        tls = (cfg.tls or TlsConfig()) if cfg.server_tls is not None else None
        endpoint = Endpoint(cfg.host, port, kind, tls, keepalive=cfg.keepalive, store=str(store.path))
        endpoint = endpoint.as_user("orchestrator", keep_store=True)
        try:
            if kind == "mosquitto":
                return MosquittoBroker(endpoint, store, cfg)
            return AmqttBroker(endpoint, store)
        except BaseException:
            shutil.rmtree(store.path, ignore_errors=True)
            raise

    def _forget_store(self) -> None:
        shutil.rmtree(self.store.path, ignore_errors=True)


class _SnapshotDict(dict):
    """A dict whose iteration walks a copy of its keys."""

    def __iter__(self):
        return iter(list(super().keys()))


class AmqttBroker(Broker):
    """amqtt in a daemon thread with its own event loop, with the lab's
    passwords and ACL (rig/amqtt_plugins.py)."""

    def __init__(self, endpoint: Endpoint, store: "CredentialStore"):
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.endpoint, self.store = endpoint, store
        host, port = endpoint.host, endpoint.port
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
        log.info("embedded amqtt broker on %s:%d (authenticated, ACL)", host, port)

    def _run(self) -> None:
        from amqtt.broker import Broker as _Amqtt
        from amqtt.contexts import Action

        class _Checked(_Amqtt):
            # amqtt 0.12 sends the retained messages matching a new
            # subscription without asking the topic plugins (it asks for
            # live messages only): ask them for every retained one too.
            async def _publish_retained_messages_for_subscription(self, subscription, session):
                topic_filter, qos = subscription
                handler = self._get_handler(session)
                tasks = []
                for topic, retained in list(self._retained_messages.items()):
                    if self._matches(topic, topic_filter) and handler and \
                            await self._topic_filtering(session, topic, Action.RECEIVE):
                        tasks.append(asyncio.ensure_future(handler.mqtt_publish(
                            retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)))
                if tasks:
                    await asyncio.wait(tasks)

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            store = str(self.store.path)
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.endpoint.host}:{self.endpoint.port}"}},
                "plugins": {"rig.amqtt_plugins.RigAuthPlugin": {"store": store},
                            "rig.amqtt_plugins.RigTopicPlugin": {"store": store}},
            }
            broker = _Checked(config)
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
        self._forget_store()


class MosquittoBroker(Broker):
    """A mosquitto child process: ``allow_anonymous false``, the generated
    password and ACL files, TLS when ``broker.server_tls`` says."""

    def __init__(self, endpoint: Endpoint, store: "CredentialStore", cfg: BrokerConfig):
        exe = mosquitto_path()
        if exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto), or use broker.kind: amqtt")
        self.endpoint, self.store = endpoint, store
        host, port = endpoint.host, endpoint.port
        d = store.path
        conf = d / "mosquitto.conf"
        write_private(conf, mosquitto_conf(host, port, d / "passwd", d / "acl", cfg) + "log_dest stderr\n")
        self._log = open(d / "mosquitto.log", "w")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(host, port, 10, "mosquitto", self.proc)
        except BrokerError as exc:
            text = (d / "mosquitto.log").read_text(errors="replace").strip().splitlines()[-3:]
            self.stop()
            raise BrokerError(f"{exc}: {' / '.join(text)}") from None
        log.info("mosquitto broker on %s:%d (pid %d, authenticated, ACL%s)", host, port, self.proc.pid,
                 ", TLS" if cfg.server_tls else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._forget_store()


def mosquitto_conf(host: str | None, port: int, passwd: Path, acl: Path, cfg: BrokerConfig,
                   service: bool = False) -> str:
    """A mosquitto listener with the lab's passwords, ACL and (``server_tls``)
    TLS; ``service``: for a lab's broker run as the system's mosquitto service."""
    lines = [f"listener {port}{' ' + host if host else ''}", "allow_anonymous false",
             f"password_file {passwd}", f"acl_file {acl}", "set_tcp_nodelay true",
             "log_type error", "log_type warning",
             f"max_packet_size {MAX_PACKET}"]   # a bigger packet disconnects its sender (the bus's size limit)
    if not service:
        lines.append("persistence false")
    if os.geteuid() == 0 and not service:
        # started as root, mosquitto drops to user mosquitto, who cannot read the 0600 credentials
        lines.append("user root")
    st = cfg.server_tls
    if st is not None:
        ca = cfg.tls.ca_file if cfg.tls else None
        if ca:
            lines.append(f"cafile {ca}")
        lines += [f"certfile {st.cert_file}", f"keyfile {st.key_file}",
                  f"require_certificate {'true' if st.require_certificate else 'false'}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- a real lab's broker
def write_broker_config(lab: "LabConfig", out: Path, port: int, cert_file: Path, key_file: Path,
                        ca_file: Path | None, require_certificate: bool) -> dict[str, Path]:
    """``rig broker config``: the mosquitto configuration of a real lab's
    broker (TLS listener, no anonymous clients, password file, ACL) and one
    credentials file per client (``credentials/<user>.env``, 0600: the
    ``RIG_MQTT_USER``/``RIG_MQTT_PASSWORD`` that host's lab.yaml names).
    No admin user: a real lab has none."""
    out = private_dir(out)
    creds = private_dir(out / "credentials")
    found = [p for p in (out / "passwd", out / "acl", out / "mosquitto.conf") if p.exists()]
    if found:
        raise SecurityError(f"{found[0]} exists: choose an empty directory (its passwords would be replaced)")
    people = principals(lab, with_admin=False)
    acl = Acl(people)
    passwords = {p.user: new_password() for p in people}
    for p in people:
        write_private(creds / f"{p.user}.env",
                      f"# role {p.role}{' of ' + p.bench if p.bench else ''}: give this file to that host only\n"
                      f"RIG_MQTT_USER={p.user}\nRIG_MQTT_PASSWORD={passwords[p.user]}\n")
    write_private(out / "passwd", "".join(f"{u}:{hash_password(pw)}\n" for u, pw in passwords.items()))
    write_private(out / "acl", acl.mosquitto())
    cfg = BrokerConfig(kind="mosquitto", server_tls=ServerTls(cert_file=cert_file, key_file=key_file,
                                                               require_certificate=require_certificate),
                       tls=TlsConfig(ca_file=ca_file) if ca_file else None)
    conf = ("# mosquitto configuration of lab " + lab.lab.name + ", generated by `rig broker config`\n"
            "# the files are 0600: make them readable by the broker's user (chown mosquitto)\n"
            + mosquitto_conf(None, port, (out / "passwd").resolve(), (out / "acl").resolve(), cfg, service=True))
    write_private(out / "mosquitto.conf", conf)
    return {"conf": out / "mosquitto.conf", "passwd": out / "passwd", "acl": out / "acl", "credentials": creds}
