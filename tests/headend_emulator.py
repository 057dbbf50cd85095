"""A small test head end over real HTTP, for tests/test_headend_http.py.

It holds one meter's supply state and prepayment credit, answers the
requests the rig's HTTP head end sends (the templates of
:data:`TEMPLATES`), checks their HMAC signature, and posts the alerts its
commands raise to the rig's webhook, signed.  Knobs for the faults a real
head end has: ``delay`` (seconds before each answer: a slow head end),
``drop_webhooks`` (that many alert posts are never sent: a lost webhook),
``webhook_secret`` (the secret it signs alerts with: a wrong one is a bad
signature), ``tls`` (HTTPS, requiring a client certificate; posts with its
own).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: lab.yaml ``head_end.requests`` for this emulator
TEMPLATES: dict[str, Any] = {
    "disable": {"method": "POST", "path": "/api/meters/{eui64}/supply",
                "body": {"target": "disabled", "role": "{role}", "requestId": "{request_id}", "premises": "{premises}",
                         "authentic": "{authentic}"},
                "result": {"supply": "/supplyState", "request_id": "/requestId"}},
    "arm": {"method": "POST", "path": "/api/meters/{eui64}/supply",
            "body": {"target": "armed", "role": "{role}", "requestId": "{request_id}"},
            "result": {"supply": "/supplyState", "request_id": "/requestId"}},
    "enable": {"method": "POST", "path": "/api/meters/{eui64}/supply",
               "body": {"target": "enabled", "role": "{role}", "requestId": "{request_id}"},
               "result": {"supply": "/supplyState", "request_id": "/requestId"}},
    "add_credit": {"method": "POST", "path": "/api/meters/{eui64}/credit",
                   "body": {"amount": "{amount}", "requestId": "{request_id}"}, "result": {"credit": "/credit"}},
    "read": {"method": "GET", "path": "/api/meters/{eui64}/registers", "query": {"what": "{what}"},
             "result": {"supply": "/supplyState", "credit": "/credit", "energy_kwh": "/energyKwh"}},
    "issue_utrn": {"method": "POST", "path": "/api/meters/{eui64}/utrns", "body": {"amount": "{amount}"},
                   "result": {"utrn": "/utrn"}},
    "probe": {"method": "GET", "path": "/api/health"},
}
ALERTS_TEMPLATE = {"method": "GET", "path": "/api/alerts", "query": {"since": "{since}"}}
#: lab.yaml ``head_end.webhook.fields``: the emulator's alert body -> the rig's record
FIELDS = {"code": "/alertCode", "device": "/deviceName", "eui64": "/deviceId", "inbox": "/recipient",
          "seq": "/sequence", "raised": "/raisedAt"}


def sign(secret: bytes, ts: str, method: str, path: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{ts}.{method}.{path}.".encode() + body, hashlib.sha256).hexdigest()


class HeadEndEmulator:
    def __init__(self, secret: bytes, device: str = "esme", eui64: str = "00:0d:6f:00:00:00:00:01",
                 tls: Any = None):
        self.secret, self.device, self.eui64 = secret, device, eui64
        self.webhook_secret = secret
        self.webhook_url: str | None = None
        self.delay = 0.0
        self.drop_webhooks = 0
        self.supply = "enabled"
        self.credit = 20.0
        self.seq = 0
        self.requests: list[dict[str, Any]] = []       # every request it got, verified or not
        self.alerts: list[dict[str, Any]] = []          # every alert it raised (posted or not)
        self.posts: list[dict[str, Any]] = []           # every webhook post and the rig's answer
        self.tls = tls
        self._lock = threading.Lock()
        self._posted = threading.Condition()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass            # the rig gave up waiting (a slow head end): nobody to answer

            def _handle(self) -> None:
                body = self._body()
                ts, sig = self.headers.get("X-Rig-Timestamp"), self.headers.get("X-Rig-Signature")
                ok = bool(ts and sig) and hmac.compare_digest(
                    sign(emulator.secret, ts or "", self.command, self.path, body), sig or "")
                emulator.requests.append({"method": self.command, "path": self.path, "verified": ok,
                                          "body": json.loads(body) if body else None, "at": time.monotonic()})
                if emulator.delay:
                    time.sleep(emulator.delay)
                if not ok:
                    self._send(401, {"error": {"message": "signature does not verify"}})
                    return
                status, doc = emulator.answer(self.command, self.path, json.loads(body) if body else {})
                self._send(status, doc)

            do_GET = do_POST = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(tls.ca))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ the meter behind it
    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if parts.path == "/api/health":
            return 200, {"status": "ok"}
        if parts.path == "/api/alerts":
            since = float(query.get("since") or 0)
            return 200, {"alerts": [a for a in self.alerts if a["raisedAt"] >= since]}
        if not parts.path.startswith(f"/api/meters/{self.eui64}/"):
            return 404, {"error": {"message": f"no meter at {parts.path}"}}
        what = parts.path.rsplit("/", 1)[1]
        if what == "supply":
            target = body.get("target")
            if body.get("authentic") is False:
                return 403, {"error": {"message": "signature check failed at the meter"}, "requirement": "SEC-1"}
            if target == "disabled":
                self.supply = "disabled"
            elif target in ("armed", "enabled"):
                if self.supply == "armed" and target == "enabled":
                    return 409, {"error": {"message": "a remote enable of an armed supply is refused"},
                                 "requirement": "SUP-2"}
                if self.supply == "disabled":
                    self.supply = "armed"
                    self.raise_alert("0x8F32", "supplier")
                elif target == "armed":
                    return 409, {"error": {"message": "nothing to arm"}, "requirement": "SUP-1"}
            return 200, {"supplyState": self.supply, "requestId": body.get("requestId")}
        if what == "credit":
            self.credit += float(body.get("amount") or 0)
            return 200, {"credit": self.credit}
        if what == "registers":
            return 200, {"supplyState": self.supply, "credit": self.credit, "energyKwh": 12.5, "what": query.get("what")}
        if what == "utrns":
            return 200, {"utrn": "1" * 20}
        return 404, {"error": {"message": f"unknown {what}"}}

    def raise_alert(self, code: str, inbox: str) -> None:
        with self._lock:
            self.seq += 1
            alert = {"alertCode": code, "deviceName": self.device, "deviceId": self.eui64, "recipient": inbox,
                     "sequence": self.seq, "raisedAt": time.time()}
            self.alerts.append(alert)
            drop = self.drop_webhooks > 0
            if drop:
                self.drop_webhooks -= 1
        if not drop and self.webhook_url:
            threading.Thread(target=self.post, args=(alert,), daemon=True).start()

    def post(self, alert: dict[str, Any], secret: bytes | None = None, ts: str | None = None) -> int:
        """POST one alert to the rig's webhook, signed; the HTTP status it got."""
        body = json.dumps(alert).encode()
        ts = ts or f"{time.time():.3f}"
        path = urllib.parse.urlsplit(self.webhook_url).path
        req = urllib.request.Request(self.webhook_url, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("X-Rig-Timestamp", ts)
        req.add_header("X-Rig-Signature", sign(secret or self.webhook_secret, ts, "POST", path, body))
        ctx = None
        if self.webhook_url.startswith("https://"):
            ctx = ssl.create_default_context(cafile=str(self.tls.ca))
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        with self._posted:
            self.posts.append({"alert": alert, "status": status})
            self._posted.notify_all()
        return status

    def wait_posts(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The webhook posts made so far, once there are ``count`` (wall-second deadline)."""
        with self._posted:
            assert self._posted.wait_for(lambda: len(self.posts) >= count, timeout), self.posts
            return list(self.posts)
