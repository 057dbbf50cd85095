"""Security of the bus: who may do what on it, generated credentials, and the
lease proof.

The bus switches mains, so the lab's broker authenticates every client and an
ACL generated from ``lab.yaml`` gives each role only its topics
(docs/bus.md, "Security"):

============  ==============================  ===========================================
role          user                            may
============  ==============================  ===========================================
orchestrator  ``orchestrator``                read every node topic; send commands and the
                                              lease holder's heartbeat; publish the lab clock
agent         ``agent-<bench>``               read its bench; publish the state, presence,
                                              events and errors of its agent, relays and
                                              instruments; reply to anyone; the lab clock
device        ``sim-<bench>`` (a simulated    read its bench; publish for its devices (a
              world), ``device-<bench>-<n>``  real adapter: one device), replies
observer      ``observer``                    read state, presence, events, errors and the
                                              lab clock; nothing else, write nothing
admin         ``admin``                       everything (a lab ``rig up`` started, for its
                                              own tools and tests; never in a real lab)
============  ==============================  ===========================================

Every client may read its own reply topic ``rig/v1/_reply/<client id>``.

Secrets never travel on the bus.  The bench lease is proved, never shown:
``lease.acquire`` carries the orchestrator's ephemeral X25519 public key, the
agent answers with its own, and each side derives the lease key (HKDF-SHA256
over the shared secret, bound to the bench, the holder, the lease id and both
public keys).  An eavesdropper (an observer, the run's bus capture, anyone
reading the reply topic) sees two public keys and learns nothing.  Heartbeats
and lease-bearing commands carry an HMAC-SHA256 under that key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .contract import ROOT

if TYPE_CHECKING:  # pragma: no cover
    from .config import LabConfig

ROLES = ("orchestrator", "agent", "device", "observer", "admin")
REPLY_RULE_PATTERN = f"{ROOT}/_reply/%c"


class SecurityError(RuntimeError):
    """A credential, ACL or state-directory problem, phrased for the user."""


# --------------------------------------------------------------------------- topics
def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT matching of a concrete ``topic`` against a filter ``pattern``."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(p) == len(t)


def filters_intersect(a: str, b: str) -> bool:
    """Whether some topic matches both filters (a subscription ``a`` may
    receive something rule ``b`` allows)."""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        u = x[i] if i < len(x) else None
        v = y[i] if i < len(y) else None
        if u == "#" or v == "#":
            return True
        if u is None or v is None:
            return False
        if u != "+" and v != "+" and u != v:
            return False
    return True


# --------------------------------------------------------------------------- roles and rules
@dataclass(frozen=True)
class Rule:
    access: str      # read | write | readwrite
    pattern: str     # an MQTT filter; %c is the client id, %u the user name

    def allows(self, action: str) -> bool:
        return self.access == "readwrite" or self.access == action


@dataclass(frozen=True)
class Principal:
    user: str
    role: str
    rules: tuple[Rule, ...]
    bench: str | None = None


def _node_writes(bench: str, kinds: Iterable[str], name: str = "+") -> list[Rule]:
    out = []
    for kind in kinds:
        base = f"{ROOT}/{bench}/{kind}/{name}"
        out += [Rule("write", f"{base}/state"), Rule("write", f"{base}/presence"),
                Rule("write", f"{base}/event/+"), Rule("write", f"{base}/error")]
    return out


def orchestrator() -> Principal:
    return Principal("orchestrator", "orchestrator", (
        Rule("read", f"{ROOT}/+/+/+/#"),
        Rule("read", f"{ROOT}/_lab/#"),
        Rule("write", f"{ROOT}/+/+/+/cmd/+"),
        Rule("write", f"{ROOT}/+/agent/controller/heartbeat"),
        Rule("write", f"{ROOT}/_lab/clock"),
        Rule("readwrite", f"{ROOT}/_capture/#"),   # the run capture's drain marker
    ))


def observer() -> Principal:
    return Principal("observer", "observer", (
        Rule("read", f"{ROOT}/+/+/+/state"),
        Rule("read", f"{ROOT}/+/+/+/presence"),
        Rule("read", f"{ROOT}/+/+/+/event/#"),
        Rule("read", f"{ROOT}/+/+/+/error"),
        Rule("read", f"{ROOT}/+/instrument/+/address"),
        Rule("read", f"{ROOT}/_lab/#"),
    ))


def admin() -> Principal:
    return Principal("admin", "admin", (Rule("readwrite", f"{ROOT}/#"),))


def agent(bench: str) -> Principal:
    user = "agent" if bench == "+" else f"agent-{bench}"
    return Principal(user, "agent", (
        Rule("read", f"{ROOT}/{bench}/#"),
        Rule("read", f"{ROOT}/_lab/#"),
        *_node_writes(bench, ("agent", "relay", "instrument", "actuator")),
        Rule("write", f"{ROOT}/_reply/+"),
        Rule("write", f"{ROOT}/_lab/clock"),
    ), None if bench == "+" else bench)


SIM_KINDS = ("device", "dcc", "han", "sim")


def sim(bench: str, devices: Iterable[str] | None = None) -> Principal:
    """A bench's simulated world: its device twins, DCC, HAN medium.
    ``devices``: the only device nodes it may speak on (a bench with sealed
    twins names the others, so that no sealed twin's node can say anything:
    docs/devices.md, backend ``sealed``); None: every device node."""
    user = "sim" if bench == "+" else f"sim-{bench}"
    kinds = SIM_KINDS if devices is None else tuple(k for k in SIM_KINDS if k != "device")
    names = [] if devices is None else list(devices)
    return Principal(user, "device", (
        Rule("read", f"{ROOT}/{bench}/#"),
        Rule("read", f"{ROOT}/_lab/#"),
        *_node_writes(bench, kinds),
        *[Rule("write", f"{ROOT}/{bench}/{k}/+/cmd/+") for k in kinds],
        *[r for n in names for r in _node_writes(bench, ("device",), n)],
        *[Rule("write", f"{ROOT}/{bench}/device/{n}/cmd/+") for n in names],
        Rule("write", f"{ROOT}/{bench}/instrument/+/address"),   # where a simulated instrument listens
        Rule("write", f"{ROOT}/_reply/+"),
    ), None if bench == "+" else bench)


def device(bench: str, name: str) -> Principal:
    """A real device's adapter: that device's node only."""
    base = f"{ROOT}/{bench}/device/{name}"
    return Principal(f"device-{bench}-{name}", "device", (
        Rule("read", f"{base}/#"),
        Rule("read", f"{ROOT}/_lab/#"),
        *_node_writes(bench, ("device",), name),
        Rule("write", f"{ROOT}/_reply/+"),
    ), bench)


def principals(lab: "LabConfig | None" = None, with_admin: bool = True) -> list[Principal]:
    """Every client a lab has.  Without a lab (a broker for tests), one
    agent and one simulated-world user serve every bench (``agent``, ``sim``)."""
    out = [orchestrator(), observer()]
    if lab is None:
        out += [agent("+"), sim("+")]
    else:
        for name, bench in lab.benches.items():
            out.append(agent(name))
            if any(d.simulated for d in bench.devices.values()) or \
                    any(i.simulated for i in bench.instruments.values()) or bench.controller.pin_factory == "mock":
                sealed = any(d.sealed for d in bench.devices.values())
                out.append(sim(name, [d for d, dev in bench.devices.items() if not dev.sealed] if sealed else None))
            out += [device(name, d) for d, dev in bench.devices.items() if not dev.simulated]
    if with_admin:
        out.append(admin())
    return out


def user_for(role: str, bench: str | None = None, name: str | None = None) -> list[str]:
    """The user names a component of ``role`` goes by, most specific first."""
    if role == "agent":
        return [f"agent-{bench}", "agent"]
    if role == "sim":
        return [f"sim-{bench}", "sim"]
    if role == "device":
        return [f"device-{bench}-{name}", f"sim-{bench}", "sim"]
    return [role]


def _substitute(pattern: str, user: str | None, client_id: str | None) -> str | None:
    for token, value in (("%c", client_id), ("%u", user)):
        if token in pattern:
            if not value or any(ch in value for ch in "/+#"):
                return None   # as mosquitto: no substitution of an unusable id
            pattern = pattern.replace(token, value)
    return pattern


GLOBAL_RULES = (Rule("read", REPLY_RULE_PATTERN),)


class Acl:
    """The access rules of a lab, checked the way the mosquitto ACL file
    generated from them is: a publish needs a write rule matching the topic,
    a delivery a read rule matching it, a subscription a read rule its filter
    can meet (deliveries are then checked one by one)."""

    def __init__(self, principals_: Iterable[Principal]):
        self.by_user = {p.user: p for p in principals_}

    def rules(self, user: str | None, client_id: str | None) -> list[Rule]:
        p = self.by_user.get(user or "")
        found = list(p.rules) if p else []
        if p is None:
            return []
        out = []
        for r in (*found, *GLOBAL_RULES):
            pat = _substitute(r.pattern, user, client_id)
            if pat is not None:
                out.append(Rule(r.access, pat))
        return out

    def may_publish(self, user: str | None, client_id: str | None, topic: str) -> bool:
        return any(r.allows("write") and topic_matches(r.pattern, topic) for r in self.rules(user, client_id))

    def may_receive(self, user: str | None, client_id: str | None, topic: str) -> bool:
        return any(r.allows("read") and topic_matches(r.pattern, topic) for r in self.rules(user, client_id))

    def may_subscribe(self, user: str | None, client_id: str | None, topic_filter: str) -> bool:
        return any(r.allows("read") and filters_intersect(topic_filter, r.pattern) for r in self.rules(user, client_id))

    def mosquitto(self) -> str:
        lines = ["# generated by rig from lab.yaml: one section per client of the lab (docs/bus.md)", ""]
        for p in self.by_user.values():
            lines.append(f"# role {p.role}")
            lines.append(f"user {p.user}")
            lines += [f"topic {r.access} {r.pattern}" for r in p.rules]
            lines.append("")
        lines.append("# every client reads its own replies")
        lines += [f"pattern {r.access} {r.pattern}" for r in GLOBAL_RULES]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {u: {"role": p.role, "bench": p.bench, "rules": [[r.access, r.pattern] for r in p.rules]}
                for u, p in self.by_user.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Acl":
        return cls(Principal(u, v["role"], tuple(Rule(a, pat) for a, pat in v["rules"]), v.get("bench"))
                   for u, v in data.items())


# --------------------------------------------------------------------------- passwords
PBKDF2_ITERATIONS = 101   # mosquitto_passwd's default for its $7$ (PBKDF2-SHA512) hashes


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A mosquitto password-file hash (``$7$``: PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def new_password() -> str:
    return secrets.token_urlsafe(24)


# --------------------------------------------------------------------------- private files
def private_dir(path: Path) -> Path:
    """Create (or check) a directory only this user can enter."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise SecurityError(f"{path} belongs to another user: refusing to keep lab credentials there "
                            "(set RIG_STATE_DIR to a directory of your own)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write a file readable by this user only (0600 from its creation)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def state_root() -> Path:
    """Where a running lab keeps its generated credentials: ``RIG_STATE_DIR``,
    else ``$XDG_RUNTIME_DIR/rig``, else ``/tmp/rig-<uid>``; always 0700."""
    env = os.environ.get("RIG_STATE_DIR")
    if env:
        return private_dir(Path(env))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return private_dir(Path(xdg) / "rig")
    return private_dir(Path(tempfile.gettempdir()) / f"rig-{os.geteuid()}")


def broker_state_dir(host: str, port: int) -> Path:
    """The credential store of the broker ``rig up`` runs on host:port."""
    return state_root() / f"broker-{host.replace(':', '_')}-{port}"


@dataclass
class CredentialStore:
    """A lab's generated credentials: ``<user>.pw`` (0600) per client, the
    mosquitto ``passwd`` and ``acl`` files and ``acl.json`` (the same rules,
    for the embedded broker).  Handed to the processes of ``rig up`` as file
    paths, never on the bus."""

    path: Path
    acl: Acl = field(repr=False)

    @classmethod
    def generate(cls, path: Path, principals_: list[Principal]) -> "CredentialStore":
        path = private_dir(path)
        acl = Acl(principals_)
        passwords = {p.user: new_password() for p in principals_}
        for user, pw in passwords.items():
            write_private(path / f"{user}.pw", pw + "\n")
        write_private(path / "passwd", "".join(f"{u}:{hash_password(pw)}\n" for u, pw in passwords.items()))
        write_private(path / "acl", acl.mosquitto())
        write_private(path / "acl.json", json.dumps(acl.to_json(), indent=1))
        return cls(path, acl)

    @classmethod
    def open(cls, path: Path) -> "CredentialStore":
        path = Path(path)
        try:
            acl = Acl.from_json(json.loads((path / "acl.json").read_text()))
        except (OSError, ValueError) as exc:
            raise SecurityError(f"credential store {path} is unreadable: {exc}") from None
        return cls(path, acl)

    def password_file(self, user: str) -> Path:
        return self.path / f"{user}.pw"

    def has(self, user: str) -> bool:
        return self.password_file(user).is_file()


def load_passwd(path: Path) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if ":" in line and not line.startswith("#"):
            user, hashed = line.split(":", 1)
            out[user] = hashed.strip()
    return out


# --------------------------------------------------------------------------- the lease proof
def system_wall() -> float:
    """This host's wall clock as the operating system has it now (an NTP
    step included: unlike :meth:`rig.clock.LabClock.wall`, which is pinned at
    process start)."""
    return time.time()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise SecurityError(f"not base64: {exc}") from None


def _derive(shared: bytes, bench: str, holder: str, lease_id: str, orch_pub: bytes, agent_pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = json.dumps(["rig lease v1", bench, holder, lease_id, _b64(orch_pub), _b64(agent_pub)]).encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=lease_id.encode(), info=info).derive(shared)


class KeyExchange:
    """One side's ephemeral X25519 key for one lease."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._private = X25519PrivateKey.generate()
        self.public_bytes = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = _b64(self.public_bytes)

    def shared(self, peer_public: str) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        raw = _unb64(peer_public)
        if len(raw) != 32:
            raise SecurityError("an X25519 public key is 32 bytes")
        return self._private.exchange(X25519PublicKey.from_public_bytes(raw))

    def orchestrator_key(self, agent_public: str, bench: str, holder: str, lease_id: str) -> bytes:
        return _derive(self.shared(agent_public), bench, holder, lease_id, self.public_bytes, _unb64(agent_public))

    def agent_key(self, orch_public: str, bench: str, holder: str, lease_id: str) -> bytes:
        return _derive(self.shared(orch_public), bench, holder, lease_id, _unb64(orch_public), self.public_bytes)


def mac(key: bytes, *fields: Any) -> str:
    """HMAC-SHA256 over the canonical JSON of ``fields``."""
    msg = json.dumps(list(fields), sort_keys=True, separators=(",", ":"), default=str).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def mac_ok(key: bytes, given: Any, *fields: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(mac(key, *fields), given)


def heartbeat_fields(bench: str, lease_id: str, seq: int, wall: float, progress: int) -> tuple:
    return ("heartbeat", bench, lease_id, seq, wall, progress)


def command_fields(topic: str, cmd_id: str, sender: str, expires: float, args: Any) -> tuple:
    return ("command", topic, cmd_id, sender, expires, args)
