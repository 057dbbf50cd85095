"""The HTTP head end (rig/headend/http.py) against a small test head end over
real HTTP (tests/headend_emulator.py): commands from lab.yaml's templates,
alerts on the rig's webhook with the rig's receive time, both directions
signed (HMAC) or under mutual TLS; and what a lab's head end does wrong: a
lost alert webhook, a slow head end, a bad signature.  Head ends from other
packages plug in through an entry point."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest
import yaml

from headend_emulator import ALERTS_TEMPLATE, FIELDS, TEMPLATES, HeadEndEmulator
from rig.bus import CommandError
from rig.clock import LabClock
from rig.config import ConfigError, load_lab_text
from rig.headend import HeadEndError
from rig.headend.http import HttpHeadEnd, signature, verify
from rig.lab import Lab

SECRET = "s3cret-shared-with-the-head-end"
EUI = "00:0d:6f:00:00:00:00:01"


def lab_text(base_url: str, extra: dict | None = None, requests: dict | None = None, auth: dict | None = None,
             webhook: dict | None = None) -> str:
    head_end = {"kind": "http", "base_url": base_url, "timeout": 2.0,
                "auth": auth if auth is not None else {"hmac_secret_env": "RIG_TEST_HEADEND_SECRET"},
                "requests": requests if requests is not None else TEMPLATES,
                "webhook": {"listen": "127.0.0.1:0", "path": "/rig/alerts", "fields": FIELDS, **(webhook or {})},
                **(extra or {})}
    lab = {"lab": {"name": "http-head-end", "clock": {"scale": 1}},
           "benches": {"bench-1": {
               "controller": {"pin_factory": "mock"},
               "devices": {"esme": {"kind": "esme", "id": EUI, "backend": "sealed"}},
               "wiring": {"meter": "esme"},
               "head_end": head_end}}}
    return yaml.safe_dump(lab, sort_keys=False)


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("RIG_TEST_HEADEND_SECRET", SECRET)
    return SECRET.encode()


@pytest.fixture
def emulator(secret):
    emu = HeadEndEmulator(secret)
    yield emu
    emu.close()


def open_head_end(text: str) -> HttpHeadEnd:
    cfg = load_lab_text(text, "lab.yaml")
    lab = Lab(cfg, bus=None, clock=LabClock(scale=1))    # an HTTP head end needs no broker
    he = lab.head_end("bench-1")
    assert isinstance(he, HttpHeadEnd)
    return he


@pytest.fixture
def head_end(emulator):
    he = open_head_end(lab_text(emulator.url))
    emulator.webhook_url = he.webhook_url
    yield he
    he.close()


# ----------------------------------------------------------------------------- commands
def test_commands_are_the_lab_yaml_templates_signed(head_end, emulator):
    result = head_end.disable()
    assert result["supply"] == "disabled" and result["op"] == "disable" and result["device"] == "esme"
    req = emulator.requests[-1]
    assert req["method"] == "POST" and req["path"] == f"/api/meters/{EUI}/supply" and req["verified"]
    assert req["body"]["target"] == "disabled" and req["body"]["role"] == "supplier"
    assert req["body"]["premises"] == "MPAN-1000000000001"           # the meter's own, from lab.yaml
    assert req["body"]["authentic"] is True                             # a lone placeholder keeps its type
    assert len(req["body"]["requestId"]) == 32 and result["request_id"] == req["body"]["requestId"]
    assert head_end.arm(role="dno")["supply"] == "armed"
    read = head_end.read(what="prepayment")
    assert read["credit"] == 20.0 and read["supply"] == "armed"
    assert emulator.requests[-1]["method"] == "GET" and "what=prepayment" in emulator.requests[-1]["path"]
    assert head_end.add_credit(5.0)["credit"] == 25.0
    assert head_end.issue_utrn(5.0) == "1" * 20
    assert head_end.probe()[0]


def test_a_refusal_carries_the_head_ends_reason_and_requirement(head_end, emulator):
    head_end.disable()
    head_end.arm()
    with pytest.raises(CommandError) as exc:
        head_end.enable()
    assert exc.value.code == "refused" and "armed supply is refused" in exc.value.reason
    assert exc.value.error.requirement == "SUP-2"
    with pytest.raises(CommandError) as forged:
        head_end.disable(authentic=False)
    assert forged.value.code == "refused" and forged.value.error.requirement == "SEC-1"


def test_a_request_under_the_wrong_secret_is_refused_by_the_head_end(emulator, monkeypatch):
    monkeypatch.setenv("RIG_TEST_HEADEND_SECRET", "not-the-secret")
    he = open_head_end(lab_text(emulator.url))
    try:
        with pytest.raises(CommandError) as exc:
            he.disable()
        assert "401" in exc.value.reason and not emulator.requests[-1]["verified"]
    finally:
        he.close()


def test_a_slow_head_end_times_out_and_the_command_is_not_sent_again(head_end, emulator):
    emulator.delay = 4.0                      # the rig waits 2 wall s (lab.yaml timeout)
    t0 = time.monotonic()
    with pytest.raises(CommandError) as exc:
        head_end.disable()
    took = time.monotonic() - t0
    assert exc.value.code == "timeout" and "not sent again" in exc.value.reason
    assert 1.9 <= took < 3.9, took          # its own deadline, with room for a loaded machine
    assert len(emulator.requests) == 1      # once: a command that may have run is never repeated blindly


def test_an_unreachable_head_end_is_named(secret):
    he = open_head_end(lab_text("http://127.0.0.1:9"))      # discard port: nothing listens
    try:
        with pytest.raises(CommandError) as exc:
            he.disable()
        assert "127.0.0.1:9" in str(exc.value) and exc.value.code in ("failed", "timeout")
        ok, detail = he.probe()
        assert not ok and "127.0.0.1:9" in detail
    finally:
        he.close()


# ----------------------------------------------------------------------------- alerts
def test_an_alert_arrives_on_the_webhook_stamped_with_the_rigs_receive_time(head_end, emulator):
    head_end.disable()
    t0 = head_end.clock.now()
    head_end.arm()
    alert = head_end.wait_alert("0x8F32", timeout=10, since=t0)
    assert alert["device"] == "esme" and alert["inbox"] == "supplier" and alert["via"] == "webhook"
    assert t0 <= alert["received"] <= head_end.clock.now()
    assert alert["eui64"] == EUI and alert["seq"] == emulator.alerts[-1]["sequence"]
    assert emulator.wait_posts(1)[-1]["status"] == 200
    emulator.post(emulator.alerts[-1])                        # the head end sends it again: kept once
    assert len(head_end.fetch_alerts(since=t0, code="0x8F32")) == 1


def test_a_webhook_with_a_bad_signature_is_refused_and_not_recorded(head_end, emulator):
    t0 = head_end.clock.now()
    alert = {"alertCode": "0x8F35", "deviceName": "esme", "recipient": "dno", "sequence": 99, "raisedAt": time.time()}
    assert emulator.post(alert, secret=b"wrong") == 401
    assert emulator.post(alert, ts=f"{time.time() - 3600:.3f}") == 401          # signed, but an hour old: a replay
    assert head_end.fetch_alerts(since=t0) == []
    reasons = [r["reason"] for r in head_end.rejected]
    assert any("does not verify" in r for r in reasons) and any("stale or replayed" in r for r in reasons)
    assert emulator.post(alert) == 200
    assert [a["code"] for a in head_end.fetch_alerts(since=t0)] == ["0x8F35"]


def test_a_lost_webhook_is_a_missing_alert_not_a_pass(head_end, emulator):
    emulator.drop_webhooks = 1
    head_end.disable()
    t0 = head_end.clock.now()
    head_end.arm()
    assert emulator.alerts and emulator.alerts[-1]["alertCode"] == "0x8F32"   # raised at the head end ...
    with pytest.raises(TimeoutError, match="no alert 0x8F32"):                # ... never received by the rig
        head_end.wait_alert("0x8F32", timeout=2, since=t0)


def test_a_lost_webhook_is_found_when_the_head_end_keeps_an_alert_list_and_is_stamped_late(emulator, secret):
    he = open_head_end(lab_text(emulator.url, requests={**TEMPLATES, "alerts": ALERTS_TEMPLATE}))
    emulator.webhook_url = he.webhook_url
    try:
        emulator.drop_webhooks = 1
        he.disable()
        t0 = he.clock.now()
        he.arm()                                 # the head end raises 0x8F32 while it answers this
        asked = he.clock.now()
        found = he.wait_alert("0x8F32", timeout=5, since=t0)
        assert found["via"] == "poll" and found["received"] >= asked   # received when the rig asked, not earlier
        assert len(he.fetch_alerts(since=t0, code="0x8F32")) == 1
    finally:
        he.close()


# ----------------------------------------------------------------------------- mutual TLS
def test_mutual_tls_both_ways(pki, monkeypatch):
    emu = HeadEndEmulator(b"unused", tls=pki)
    auth = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    hook = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca)}
    he = open_head_end(lab_text(emu.url.replace("127.0.0.1", "localhost"), auth=auth, webhook=hook))
    emu.webhook_url = he.webhook_url.replace("127.0.0.1", "localhost")
    emu.secret = emu.webhook_secret = b"x"            # no HMAC: the emulator checks nothing but TLS here
    try:
        emu.requests.clear()
        emu.answer("POST", f"/api/meters/{EUI}/supply", {"target": "disabled"})
        status, doc = emu.answer("POST", f"/api/meters/{EUI}/supply", {"target": "armed"})
        assert status == 200
        alert = he.wait_alert("0x8F32", timeout=10)
        assert alert["via"] == "webhook"
        # a client without a certificate does not get through the rig's webhook
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with pytest.raises((ssl.SSLError, OSError)):
            urllib.request.urlopen(urllib.request.Request(emu.webhook_url, data=b"{}", method="POST"), timeout=5,
                                   context=ctx).read()
    finally:
        he.close()
        emu.close()


# ----------------------------------------------------------------------------- signatures and lab.yaml
def test_signature_round_trip_and_tamper():
    sig = signature(b"k", "1700000000.000", "POST", "/rig/alerts", b'{"a":1}')
    assert verify(b"k", "1700000000.000", sig, "POST", "/rig/alerts", b'{"a":1}', 300, now=1700000001) is None
    assert "does not verify" in verify(b"k", "1700000000.000", sig, "POST", "/rig/alerts", b'{"a":2}', 300,
                                       now=1700000001)
    assert "does not verify" in verify(b"k", "1700000000.000", sig, "POST", "/other", b'{"a":1}', 300,
                                       now=1700000001)
    assert "unsigned" in verify(b"k", None, None, "POST", "/", b"", 300)


def test_an_unauthenticated_http_head_end_is_refused_by_name_and_line():
    text = lab_text("http://127.0.0.1:8000", auth={})
    with pytest.raises(ConfigError) as exc:
        load_lab_text(text, "lab.yaml")
    assert "benches.bench-1.head_end.auth" in str(exc.value) and "authenticated both ways" in str(exc.value)
    assert exc.value.line > 0


def test_a_missing_secret_is_named(monkeypatch):
    monkeypatch.delenv("RIG_TEST_HEADEND_SECRET", raising=False)
    cfg = load_lab_text(lab_text("http://127.0.0.1:8000"), "lab.yaml")
    with pytest.raises(HeadEndError, match="RIG_TEST_HEADEND_SECRET"):
        Lab(cfg, bus=None, clock=LabClock()).head_end("bench-1")


# ----------------------------------------------------------------------------- plugins
def test_other_head_ends_plug_in_through_an_entry_point(tmp_path, monkeypatch):
    """A package that declares an entry point of group rig.headends is a head
    end kind lab.yaml may name (a real installed distribution's metadata)."""
    (tmp_path / "acme_headend.py").write_text(textwrap.dedent('''
        from rig.headend import HeadEnd

        class AcmeHeadEnd(HeadEnd):
            kind = "acme"

            def service_request(self, device, op, role="supplier", timeout=60.0, **args):
                return {"device": device, "op": op, "supply": "disabled", "options": self.cfg.options}

            def probe(self):
                return True, "acme"
    '''))
    dist = tmp_path / "acme_headend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-headend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rig.headends]\nacme = acme_headend:AcmeHeadEnd\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = lab_text("http://unused").replace("kind: http", "kind: acme")
    data = yaml.safe_load(text)
    data["benches"]["bench-1"]["head_end"] = {"kind": "acme", "options": {"url": "https://hes.example"}}
    cfg = load_lab_text(yaml.safe_dump(data), "lab.yaml")
    he = Lab(cfg, bus=None, clock=LabClock()).head_end("bench-1")
    assert he.disable() == {"device": "esme", "op": "disable", "supply": "disabled",
                            "options": {"url": "https://hes.example"}}
    data["benches"]["bench-1"]["head_end"] = {"kind": "nonesuch"}
    with pytest.raises(ConfigError, match="unknown head end kind 'nonesuch'.*acme"):
        load_lab_text(yaml.safe_dump(data), "lab.yaml")
    assert "acme_headend" in sys.modules or True
    json.dumps(cfg.bench("bench-1").head_end.model_dump())
