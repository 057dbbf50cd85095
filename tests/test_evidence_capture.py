"""The bus capture and the identities it feeds the record, on a real broker:
a pytest run given ``--rig-broker`` captures the lab's traffic, adopts its
clock and records instrument ``*IDN?`` and device versions from the bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from rig.bus import Bus
from rig.clock import LabClock
from rig.contract import Node
from rig.evidence.capture import BusCapture, read_capture
from rig.evidence.inventory import from_bus
from rig.evidence.record import load_run
from rig.evidence.timeline import build_tracks, timeline_for

IDN = "YOKOGAWA,WT310E,C2PH12345,F1.03"


@pytest.fixture
def own_broker():
    """A broker of this test's own: it asserts on *every* message captured,
    which retained leftovers of other tests on the shared broker would spoil."""
    from rig.broker import Broker
    from rig.config import BrokerConfig

    with Broker.start(BrokerConfig(kind="amqtt", port=0)) as endpoint:
        yield endpoint.as_user("admin", keep_store=True)


def test_capture_writes_every_message_with_lab_and_wall_time(own_broker, tmp_path):
    amqtt_broker = own_broker
    clock = LabClock(scale=60)
    with Bus(amqtt_broker, clock=clock) as pub:
        node = Node("bench-e", "instrument", "analyser")
        pub.publish(node.state, {"identity": IDN, "summary": "idle"}, retain=True)  # before the capture starts
        cap = BusCapture(amqtt_broker, tmp_path / "bus.jsonl", clock).start(adopt_clock_within=None)
        assert cap.wait_for(lambda latest: node.state in latest, timeout=60)
        pub.publish_event(Node("bench-e", "dcc", "dcc"), "alert", {"code": "0x8F35"})
        assert cap.wait_for(lambda latest: "rig/v1/bench-e/dcc/dcc/event/alert" in latest, timeout=60)
        cap.stop()
        pub.clear_retained(node.state)
    lines = list(read_capture(tmp_path / "bus.jsonl"))
    topics = [m["topic"] for m in lines]
    assert topics == [node.state, "rig/v1/bench-e/dcc/dcc/event/alert"]
    assert lines[0]["payload"]["identity"] == IDN and lines[1]["payload"]["code"] == "0x8F35"
    for m in lines:
        assert abs(m["wall"] - time.time()) < 30
        assert m["ts"] > m["wall"]  # lab time runs 60x ahead of wall time since the anchor
    with open(tmp_path / "bus.jsonl", "a") as f:
        f.write('{"topic": "rig/v1/torn')  # a kill mid-line
    assert len(list(read_capture(tmp_path / "bus.jsonl"))) == 2


def test_identities_come_from_retained_state_and_presence():
    assert from_bus("rig/v1/b/instrument/ac/state", {"identity": "CHROMA,61504", "address": "TCPIP::x"}) == {
        "instruments": {"b/ac": {"identity": "CHROMA,61504", "resource": "TCPIP::x"}}}
    assert from_bus("rig/v1/b/device/esme/presence", {"online": True, "version": "twin-0.1.0"}) == {
        "devices": {"b/esme": {"version": "twin-0.1.0"}}}
    assert from_bus("rig/v1/b/device/esme/event/alert", {"version": "x"}) is None
    assert from_bus("rig/v1/b/instrument/ac/state", {"summary": "no identity yet"}) is None


SUITE = '''
import os

from rig.broker import Endpoint
from rig.bus import Bus
from rig.clock import LabClock
from rig.contract import Node
from rig.lab import adopt_clock


def test_lab_traffic(step, measure):
    with Bus(Endpoint.from_url(os.environ["EVIDENCE_BROKER"])) as bus:
        bus.clock = LabClock(anchor=adopt_clock(bus))  # as every part of a lab does
        mains, esme = Node("bench-ev", "relay", "mains"), Node("bench-ev", "device", "esme")
        watch = bus.watch("rig/v1/bench-ev/dcc/dcc/event/#")
        bus.publish(esme.presence, {"online": True, "version": "esme-twin 0.3.1"}, retain=True)
        step("mains off")
        bus.publish_state(mains, {"state": "off"})
        bus.publish_state(esme, {"supply": "disabled"})
        bus.publish_event(Node("bench-ev", "dcc", "dcc"), "alert", {"code": "0x8F35"})
        assert watch.wait_for(lambda p: p.get("code") == "0x8F35", timeout=60)
        step("mains on")
        bus.publish_state(mains, {"state": "on"})
        supply = bus.watch(esme.state)
        bus.publish_state(esme, {"supply": "enabled"})
        # confirm delivery before closing: a close can drop QoS 1 messages still in flight
        assert supply.wait_for(lambda p: p.get("supply") == "enabled", timeout=60)
        measure("outage.alert_latency", 184.0, "s", low=180, high=190)
'''

LAB = """
lab: {name: capture-test}
benches:
  bench-ev:
    relays: {mains: {pin: 17, safe_state: "off"}}
    instruments:
      analyser: {kind: power_analyser, driver: yokogawa_wt310, address: sim}
    devices:
      esme: {kind: esme, id: "00:0d:6f:00:00:00:00:01"}
    wiring: {mains_relay: mains, meter: esme, analyser: analyser}
"""


def test_run_with_a_broker_records_identities_clock_and_traffic(amqtt_broker, tmp_path):
    lab_clock = LabClock(scale=60)
    analyser = Node("bench-ev", "instrument", "analyser")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_lab.py").write_text(SUITE)
    (tmp_path / "lab.yaml").write_text(LAB)
    run_dir = tmp_path / "runs" / "20261123T000000Z-bus001"
    with Bus(amqtt_broker, clock=lab_clock) as lab:
        lab.publish_clock()
        lab.publish(analyser.state, {"identity": IDN, "address": "TCPIP::127.0.0.1::5025::SOCKET"}, retain=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIG_")}
        env.update(EVIDENCE_BROKER=amqtt_broker.url)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "test_lab.py", "-c", "pytest.ini", "--rootdir", str(tmp_path), "-q",
             "-p", "no:cacheprovider", "-p", "rig_fixtures.evidence", "--lab", "lab.yaml",
             "--rig-broker", amqtt_broker.url, "--rig-run-dir", str(run_dir),
             "--rig-store", f"sqlite:///{tmp_path / 'h.sqlite'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        for topic in (analyser.state, "rig/v1/_lab/clock", "rig/v1/bench-ev/device/esme/presence",
                      "rig/v1/bench-ev/device/esme/state", "rig/v1/bench-ev/relay/mains/state"):
            lab.clear_retained(topic)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = load_run(run_dir)
    assert rec["clock"]["source"] == "bus" and rec["clock"]["scale"] == 60
    assert rec["clock"]["anchor_wall"] == lab_clock.anchor.wall
    assert rec["hardware"]["instruments"]["bench-ev/analyser"]["identity"] == IDN
    assert rec["hardware"]["instruments"]["bench-ev/analyser"]["driver"] == "yokogawa_wt310"
    assert rec["hardware"]["devices"]["bench-ev/esme"]["version"] == "esme-twin 0.3.1"
    assert rec["files"]["bus_capture"] == "bus.jsonl"

    lines = [json.loads(x) for x in (run_dir / "bus.jsonl").read_text().splitlines()]
    assert {"topic", "ts", "wall", "payload"} == set(lines[0])
    assert any(m["topic"] == "rig/v1/bench-ev/dcc/dcc/event/alert" for m in lines)
    [test] = rec["tests"]
    tl = timeline_for(test, build_tracks(rec, lines))
    assert [v for _a, _b, v in tl.segments["mains"]] == ["off", "on"]
    assert [v for _a, _b, v in tl.segments["supply"]] == ["disabled", "enabled"]
    assert [v for _t, v in tl.markers["alerts"]] == ["0x8F35"]
    assert [v for _t, v in tl.markers["steps"]] == ["mains off", "mains on"]
    html = (run_dir / "report.html").read_text()
    assert 'class="timeline"' in html and IDN in html
