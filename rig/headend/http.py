"""A lab's test head end over HTTP (lab.yaml ``head_end: {kind: http, ...}``).

Commands are HTTP requests built from the templates in lab.yaml
(``requests.<op>``: method, path, query, JSON body, headers; ``{name}``
placeholders), sent with the standard library's ``urllib`` over HTTP or
HTTPS.  Alerts come back on a **webhook the rig serves** (``webhook``: a
``ThreadingHTTPServer`` in the rig's process, HTTP or HTTPS), each stamped
with the rig's lab time the moment its POST arrived (``received``, what
alert latencies are measured to).

**Authentication, both ways** (``auth``):

* a shared secret (``hmac_secret_env`` names the environment variable that
  holds it, never lab.yaml): every request the rig sends and every webhook
  the head end posts carries ``X-Rig-Timestamp`` (the sender's wall clock)
  and ``X-Rig-Signature: sha256=<hex>``, the HMAC-SHA256 under the secret of
  ``<timestamp>.<METHOD>.<path>.`` followed by the body (path with its query
  string).  A webhook whose signature does not verify, or whose timestamp is
  more than ``max_age`` seconds off, is refused (401) and counted, never
  recorded;
* and/or mutual TLS: the rig presents ``cert_file``/``key_file`` to the head
  end and checks it against ``ca_file``; its webhook serves HTTPS and
  requires the head end's certificate, signed by ``webhook.client_ca_file``.

**What happens when things go wrong.**  A request that gets no answer
within ``timeout`` wall seconds raises :class:`rig.bus.CommandError` with
code ``timeout`` naming the head end; it is not sent again (a command that
may have been carried out is never repeated blindly: its ``request_id`` is
the head end's idempotency key, for whoever sends it again).  A refusal
(``refused_status``, default 403, 409, 422) is code ``refused`` with the
reason at the ``reason`` pointer.  A lost webhook is an alert the rig never
received: a wait for it times out, unless the head end offers its alert
list (``requests.alerts``), where the rig finds it when it asks and stamps
it received then (``via: "poll"``): late, as it was to the rig.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ..bus import CommandError
from ..contract import ErrorBody
from . import DEFAULT_TIMEOUT, HeadEnd, HeadEndError, LabPort

if TYPE_CHECKING:  # pragma: no cover
    from ..config import HttpHeadEndConfig, HttpRequest

log = logging.getLogger(__name__)

#: the largest webhook body the rig reads (bytes)
MAX_BODY = 256 * 1024


# ----------------------------------------------------------------------------- signatures
def signature(secret: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<METHOD>.<path>.`` + body."""
    msg = f"{timestamp}.{method.upper()}.{path}.".encode() + body
    return "sha256=" + hmac.new(secret, msg, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str | None, given: str | None, method: str, path: str, body: bytes,
           max_age: float, now: float | None = None) -> str | None:
    """Why a signed message is not acceptable, or None when it is."""
    if not timestamp or not given:
        return "unsigned (no timestamp or signature header)"
    try:
        age = (time.time() if now is None else now) - float(timestamp)
    except ValueError:
        return f"timestamp {timestamp!r} is not a number"
    if abs(age) > max_age:
        return f"timestamp {age:+.0f} s off (limit {max_age:g} s): stale or replayed"
    if not hmac.compare_digest(signature(secret, timestamp, method, path, body), given.strip()):
        return "signature does not verify"
    return None


# ----------------------------------------------------------------------------- templates
class _Values(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def fill(template: Any, values: dict[str, Any]) -> Any:
    """A JSON template with ``{name}`` placeholders filled; a string that is
    exactly one placeholder takes the value's own type."""
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template.count("{") == 1:
            name = template[1:-1]
            if name in values:
                return values[name]
        return template.format_map(_Values({k: "" if v is None else v for k, v in values.items()}))
    if isinstance(template, dict):
        return {fill(k, values): fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    return template


def pointer(doc: Any, ptr: str) -> Any:
    """The value at a JSON pointer (RFC 6901), or None."""
    if ptr in ("", "/"):
        return doc
    node = doc
    for raw in ptr.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


# ----------------------------------------------------------------------------- the webhook
class _Webhook(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    head_end: "HttpHeadEnd"


class _Handler(BaseHTTPRequestHandler):
    server: _Webhook
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the rig logs what matters
        log.debug("webhook: " + fmt, *args)

    def _answer(self, status: int, text: str = "") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        he = self.server.head_end
        received = he.clock.now()      # the rig's receive time: taken first
        if urllib.parse.urlsplit(self.path).path != he.cfg.webhook.path:
            self._answer(404, "not the rig's webhook")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(413, f"a webhook body is at most {MAX_BODY} bytes")
            return
        body = self.rfile.read(length)
        status, text = he.webhook_received(self.command, self.path, dict(self.headers), body, received)
        self._answer(status, text)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405, "POST alerts here")


# ----------------------------------------------------------------------------- the head end
class HttpHeadEnd(HeadEnd):
    kind = "http"
    cfg: "HttpHeadEndConfig"

    def __init__(self, lab: LabPort, bench: str, cfg: "HttpHeadEndConfig"):
        super().__init__(lab, bench, cfg)
        auth = cfg.auth
        self.secret: bytes | None = None
        if auth.hmac_secret_env:
            value = os.environ.get(auth.hmac_secret_env)
            if not value:
                raise HeadEndError(f"bench {bench}: head end {cfg.base_url}: the shared secret is not set "
                                   f"(environment variable {auth.hmac_secret_env})")
            self.secret = value.encode()
        self.rejected: list[dict[str, Any]] = []     # webhooks refused, with why
        self.requests_sent = 0
        self._client_ctx = self._client_context()
        self._server = self._serve_webhook()

    # ------------------------------------------------------------------ TLS
    def _client_context(self) -> ssl.SSLContext | None:
        a = self.cfg.auth
        if not self.cfg.base_url.startswith("https://"):
            return None
        ctx = ssl.create_default_context(cafile=str(a.ca_file) if a.ca_file else None)
        if a.cert_file:
            ctx.load_cert_chain(str(a.cert_file), str(a.key_file))
        return ctx

    def _serve_webhook(self) -> _Webhook:
        hook = self.cfg.webhook
        host, port = hook.listen.rsplit(":", 1)
        try:
            server = _Webhook((host, int(port)), _Handler)
        except OSError as exc:
            raise HeadEndError(f"bench {self.bench_name}: cannot serve the head end's webhook on {hook.listen}: "
                               f"{exc.strerror or exc}") from None
        if hook.cert_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(hook.cert_file), str(hook.key_file))
            if hook.client_ca_file:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(hook.client_ca_file))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.head_end = self
        threading.Thread(target=server.serve_forever, name=f"headend-webhook:{self.bench_name}",
                         daemon=True).start()
        return server

    @property
    def webhook_url(self) -> str:
        """Where the head end must post alerts (give it this URL)."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        scheme = "https" if self.cfg.webhook.cert_file else "http"
        return f"{scheme}://{host}:{port}{self.cfg.webhook.path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ alerts in
    def webhook_received(self, method: str, path: str, headers: dict[str, str], body: bytes,
                         received: float) -> tuple[int, str]:
        """One POST on the webhook: verify, decode, stamp, record; the HTTP answer."""
        a = self.cfg.auth
        low = {k.lower(): v for k, v in headers.items()}
        if self.secret is not None:
            why = verify(self.secret, low.get(a.timestamp_header.lower()), low.get(a.signature_header.lower()),
                         method, path, body, a.max_age)
            if why:
                self.rejected.append({"received": received, "reason": why, "bytes": len(body)})
                log.warning("head end webhook on %s refused: %s", self.bench_name, why)
                return 401, why
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.rejected.append({"received": received, "reason": f"not JSON: {exc}", "bytes": len(body)})
            return 400, "not JSON"
        items = data if isinstance(data, list) else [data]
        kept = 0
        for item in items:
            if not isinstance(item, dict):
                continue
            if self.record(self._alert(item, received, "webhook")) is not None:
                kept += 1
        return 200, f"{kept} alerts recorded"

    def _alert(self, item: dict[str, Any], received: float, via: str) -> dict[str, Any]:
        fields = self.cfg.webhook.fields
        record = (dict(item) if not fields
                  else {**{k: pointer(item, p) for k, p in fields.items()}, "source_record": item})
        record["received"] = received
        record["via"] = via
        return record

    def ask_alerts(self, since: float | None) -> list[dict[str, Any]] | None:
        if "alerts" not in self.cfg.requests:
            return None
        got = self._call("alerts", {"since": since})
        items = got if isinstance(got, list) else (pointer(got, "/alerts") if isinstance(got, dict) else None)
        now = self.clock.now()
        fresh = []
        for item in items or []:
            if isinstance(item, dict):
                alert = self._alert(item, now, "poll")
                with self.cond:
                    known = self.key(alert) in self._keys
                if not known:
                    fresh.append(alert)
        return fresh

    # ------------------------------------------------------------------ commands out
    def _values(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {"op": op, "request_id": uuid.uuid4().hex, "authentic": True, **args}
        device = args.get("device")
        dev = self.bench_cfg.devices.get(device) if device else None
        if dev is not None:
            values.setdefault("eui64", dev.id)
            values["premises"] = args.get("premises") or getattr(dev.settings, "premises_id", "")
        return values

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        tpl: HttpRequest | None = self.cfg.requests.get(op)
        if tpl is None:
            raise CommandError(self._where(op), op, ErrorBody(code="invalid", message=(
                f"the head end of {self.bench_name} has no request template for '{op}' (lab.yaml "
                f"head_end.requests.{op})")))
        values = self._values(op, args)
        if values.get("authentic") is False and not _uses(tpl, "authentic"):
            raise CommandError(self._where(op), op, ErrorBody(code="invalid", message=(
                f"the head end's '{op}' template has no {{authentic}}: it cannot send a forged command")))
        try:
            path = fill(tpl.path, values)
            query = {k: fill(v, values) for k, v in tpl.query.items()}
            headers = {k: str(fill(v, values)) for k, v in tpl.headers.items()}
        except KeyError as exc:
            raise CommandError(self._where(op), op, ErrorBody(code="invalid", message=(
                f"head_end.requests.{op}: no value for {{{exc.args[0]}}}"))) from None
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(
                {k: json.dumps(v) if isinstance(v, (dict, list, bool)) else v for k, v in query.items()
                 if v is not None and v != ""})
        body = b"" if tpl.body is None or tpl.method == "GET" else json.dumps(fill(tpl.body, values)).encode()
        return self._send(op, tpl, path, body, headers)

    def _where(self, op: str) -> str:
        return f"head end {self.cfg.base_url}"

    def _send(self, op: str, tpl: "HttpRequest", path: str, body: bytes, headers: dict[str, str]) -> Any:
        url = self.cfg.base_url + path
        full_path = urllib.parse.urlsplit(url).path + (("?" + urllib.parse.urlsplit(url).query)
                                                        if urllib.parse.urlsplit(url).query else "")
        req = urllib.request.Request(url, data=body if body else None, method=tpl.method)
        req.add_header("Accept", "application/json")
        if body:
            req.add_header("Content-Type", "application/json")
        for k, v in headers.items():
            req.add_header(k, v)
        if self.secret is not None:
            ts = f"{time.time():.3f}"
            req.add_header(self.cfg.auth.timestamp_header, ts)
            req.add_header(self.cfg.auth.signature_header, signature(self.secret, ts, tpl.method, full_path, body))
        self._progress()
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout, context=self._client_ctx) as resp:
                raw = resp.read(MAX_BODY + 1)
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(MAX_BODY + 1), exc.code
        except (TimeoutError, socket.timeout):
            raise CommandError(self._where(op), op, ErrorBody(code="timeout", message=(
                f"no answer from the head end within {self.cfg.timeout:g} wall s ({tpl.method} {path}); not sent "
                "again: it may have been carried out"))) from None
        except urllib.error.URLError as exc:
            why = exc.reason
            code = "timeout" if isinstance(why, (TimeoutError, socket.timeout)) else "failed"
            raise CommandError(self._where(op), op, ErrorBody(code=code, message=(
                f"head end unreachable at {self.cfg.base_url}: {getattr(why, 'strerror', None) or why}"))) \
                from None
        try:
            doc = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            doc = {"text": raw.decode("utf-8", errors="replace")[:500]}
        if status in tpl.refused_status:
            reason: Any = pointer(doc, tpl.reason) or doc.get("text") if isinstance(doc, dict) else None
            raise CommandError(self._where(op), op, ErrorBody(code="refused", message=str(
                reason or f"HTTP {status}"), requirement=(doc.get("requirement") if isinstance(doc, dict) else None)))
        if status >= 400:
            code = "invalid" if 400 <= status < 500 else "failed"
            raise CommandError(self._where(op), op, ErrorBody(code=code, message=(
                f"HTTP {status} from {tpl.method} {path}: {str(doc)[:300]}")))
        return doc

    def service_request(self, device: str, op: str, role: str = "supplier", timeout: float = DEFAULT_TIMEOUT,
                        **args: Any) -> dict[str, Any]:
        key = op
        if op not in self.cfg.requests and op == "read":
            key = "read"
        values = {"device": device, "role": role, **{k: v for k, v in args.items() if v is not None}}
        doc = self._call(key, values)
        tpl = self.cfg.requests[key]
        result = {k: pointer(doc, p) for k, p in tpl.result.items()} if tpl.result else \
            (dict(doc) if isinstance(doc, dict) else {"response": doc})
        return {"role": role, "device": device, "op": op, "ok": True, **result}

    def issue_utrn(self, amount: float, device: str | None = None) -> str:
        doc = self._call("issue_utrn", {"device": self.meter(device), "amount": amount})
        tpl = self.cfg.requests["issue_utrn"]
        utrn = pointer(doc, tpl.result.get("utrn", "/utrn")) if isinstance(doc, (dict, list)) else None
        if not utrn:
            raise CommandError(self._where("issue_utrn"), "issue_utrn", ErrorBody(
                code="failed", message=f"the head end's answer has no UTRN: {str(doc)[:200]}"))
        return str(utrn)

    def probe(self) -> tuple[bool, str]:
        if "probe" in self.cfg.requests:
            try:
                self._call("probe", {})
            except CommandError as exc:
                return False, f"{self.cfg.base_url}: {exc.reason}"
            return True, f"{self.cfg.base_url} answers; webhook at {self.webhook_url}"
        parts = urllib.parse.urlsplit(self.cfg.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=min(self.cfg.timeout, 5.0)).close()
        except OSError as exc:
            return False, f"{self.cfg.base_url}: {exc.strerror or exc}"
        return True, f"{self.cfg.base_url} accepts connections (no probe template); webhook at {self.webhook_url}"


def _uses(tpl: "HttpRequest", name: str) -> bool:
    text = json.dumps([tpl.path, tpl.query, tpl.body, tpl.headers])
    return "{" + name + "}" in text
