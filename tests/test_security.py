"""Security of the bus (issue 10): who may do what on the broker, and a
lease that cannot be stolen from it.

Each property is shown against a client that breaks it: an anonymous
client, an observer, a client that read the bus (the lease id, a heartbeat,
a command) and replays or forges it, another client giving the holder's
name, a host whose clock stepped, an orchestrator whose work hung while its
heartbeat thread ran on.  Every test runs on both brokers.
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from rig.agent import Agent
from rig.broker import Broker, BrokerError, Endpoint
from rig.bus import Bus, BusError, CommandError
from rig.clock import LabClock
from rig.config import BrokerConfig, ConfigError, TlsConfig, load_lab_text
from rig.contract import Node, agent_node
from rig.lab import Bench, Lab
from rig.security import Acl, filters_intersect, hash_password, principals, topic_matches, verify_password

MAINS = Node("bench-1", "relay", "mains")
AGENT = agent_node("bench-1")


@pytest.fixture
def agent(broker, minimal_lab):
    with Agent(minimal_lab, "bench-1", broker, LabClock(scale=60)) as a:
        yield a


@pytest.fixture
def lab(broker, minimal_lab, agent):
    lab = Lab.open(minimal_lab, endpoint=broker, holder="the-holder")
    yield lab
    lab.close()


class Recorder:
    """Everything a client receives, by topic (raw payloads)."""

    def __init__(self, bus: Bus, topic_filter: str = "rig/v1/#"):
        self.messages: list[tuple[str, object]] = []
        self.cond = threading.Condition()
        bus.subscribe(topic_filter, self._on)
        assert bus.wait_subscribed(10.0), f"the broker did not acknowledge the subscription to {topic_filter}"

    def _on(self, topic, payload):
        with self.cond:
            self.messages.append((topic, payload))
            self.cond.notify_all()

    def wait_for(self, pred, wall: float = 10.0):
        with self.cond:
            return self.cond.wait_for(lambda: any(pred(t, p) for t, p in self.messages), wall)

    def text(self) -> str:
        with self.cond:
            return "\n".join(f"{t} {json.dumps(p)}" for t, p in self.messages)


# ----------------------------------------------------------------------------- endpoint
def test_endpoint_url_round_trips_tls_credentials_and_kind(tmp_path):
    ep = Endpoint("broker.lab", 8883, "mosquitto",
                  TlsConfig(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem", key_file=tmp_path / "c.key"),
                  username="agent-bench-3", password_env="RIG_MQTT_PASSWORD", keepalive=30)
    back = Endpoint.from_url(ep.url)
    assert back == ep and back.url == ep.url
    assert back.tls.cert_file == tmp_path / "c.pem"
    pw_file = Endpoint("127.0.0.1", 1883, "amqtt", username="observer", password_file=str(tmp_path / "o.pw"),
                       store=str(tmp_path))
    assert Endpoint.from_url(pw_file.url) == pw_file
    assert Endpoint.from_url("mqtt://10.0.0.5").port == 1883 and Endpoint.from_url("mqtts://h").port == 8883


def test_endpoint_never_holds_or_shows_a_password(tmp_path, monkeypatch):
    monkeypatch.setenv("RIG_T_PW", "s3cret-value")
    ep = Endpoint("h", 1883, username="u", password_env="RIG_T_PW")
    assert ep.password() == "s3cret-value"
    assert "s3cret" not in ep.url + str(ep) + repr(ep)
    with pytest.raises(BrokerError, match="password does not go in the URL") as info:
        Endpoint.from_url("mqtt://u:s3cret-value@h:1883")
    assert "s3cret" not in str(info.value)
    with pytest.raises(BrokerError, match="unknown parameter"):
        Endpoint.from_url("mqtt://h:1/?password=x")
    with pytest.raises(BrokerError, match="not set"):
        Endpoint("h", 1, username="u", password_env="RIG_T_UNSET_VAR").password()


# ----------------------------------------------------------------------------- ACL model
def test_acl_matching_and_passwords():
    assert topic_matches("rig/v1/+/+/+/#", "rig/v1/b/relay/mains/state")
    assert not topic_matches("rig/v1/+/+/+/#", "rig/v1/_reply/orch-1")
    assert filters_intersect("rig/v1/#", "rig/v1/+/+/+/state") and not filters_intersect("rig/v1/a/#", "rig/v1/b/#")
    acl = Acl(principals())
    assert acl.may_receive("orchestrator", "orch-1", "rig/v1/_reply/orch-1")
    assert not acl.may_receive("orchestrator", "orch-1", "rig/v1/_reply/orch-2")
    assert not acl.may_publish("observer", "o", "rig/v1/bench-1/relay/mains/cmd/set")
    assert not acl.may_receive("observer", "o", "rig/v1/bench-1/agent/controller/heartbeat")
    assert not acl.may_publish("sim", "s", "rig/v1/bench-1/relay/mains/cmd/set")
    assert acl.may_publish("agent", "a", "rig/v1/bench-1/relay/mains/state")
    assert not acl.may_receive(None, "x", "rig/v1/_lab/clock")
    h = hash_password("pw")
    assert h.startswith("$7$") and verify_password("pw", h) and not verify_password("px", h)


# ----------------------------------------------------------------------------- authentication
def test_an_anonymous_client_is_refused(broker):
    anon = Endpoint(broker.host, broker.port, broker.kind)
    with pytest.raises(BusError, match="refused an anonymous client"):
        Bus(anon, client_id="anon").connect(timeout=10)
    wrong = Endpoint(broker.host, broker.port, broker.kind, username="orchestrator", password_env="RIG_T_WRONG")
    import os

    os.environ["RIG_T_WRONG"] = "not-the-password"
    try:
        with pytest.raises(BusError, match="refused user orchestrator"):
            Bus(wrong, client_id="guess").connect(timeout=10)
    finally:
        del os.environ["RIG_T_WRONG"]


def test_an_observer_cannot_switch_mains_and_sees_no_secret(broker, lab, agent):
    """The acceptance test, in-process: the observer's relay command is
    dropped by the broker (the agent never sees it), it reads state but
    neither heartbeats, commands nor replies, and no lease key anywhere."""
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    with Bus(broker.as_user("observer"), client_id="observer-1") as obs:
        seen = Recorder(obs)
        assert seen.wait_for(lambda t, p: t == MAINS.state and p and p.get("state") == "on")
        forged = {"id": "obs-1", "reply_to": "rig/v1/_reply/observer-1", "sender": "observer-1", "expires": 1e18,
                  "args": {"state": "off"}}
        obs.publish(MAINS.cmd("set"), forged)
        obs.publish(AGENT.heartbeat, {"lease": bench.lease_id, "seq": 10**9, "wall": time.time(), "mac": "0" * 64})
        obs.flush()
        bench.relay("mains").wait_switchable()
        bench.relay("mains").off()                        # a marker that the broker has passed what came before
        assert seen.wait_for(lambda t, p: t == MAINS.state and p and p.get("state") == "off")
        text = seen.text()
    assert "command from observer-1" not in text and "obs-1" not in text     # never reached the agent
    assert not any("/cmd/" in t or t.endswith("/heartbeat") or "/_reply/" in t for t, _ in seen.messages)
    key = bench._key
    assert key.hex() not in text and key.hex() not in json.dumps(agent.status())


# ----------------------------------------------------------------------------- the lease
def test_the_holders_name_from_another_client_does_not_get_the_lease(broker, lab, minimal_lab):
    lab.bench("bench-1").relay("mains").on()
    with Lab.open(minimal_lab, endpoint=broker, holder=lab.holder) as thief:
        with pytest.raises(CommandError) as info:
            thief.bench("bench-1")
    assert info.value.error.requirement == "LAB-3" and "leased by the-holder" in info.value.reason


def test_a_stolen_lease_id_or_a_replayed_command_does_not_switch(broker, lab, agent):
    """An orchestrator-role client reads the bench's traffic: the lease id is
    public, the holder's commands are on the bus.  Neither lets it command."""
    bench = lab.bench("bench-1")
    with Bus(broker.as_user("orchestrator"), client_id="eve", clock=lab.clock) as eve:
        seen = Recorder(eve, f"{MAINS.base}/cmd/+")
        bench.relay("mains").on()
        assert seen.wait_for(lambda t, p: p["args"] == {"state": "on"})
        captured = next(p for t, p in seen.messages if p["args"] == {"state": "on"})
        assert captured["lease"]["id"] == bench.lease_id and "token" not in json.dumps(captured)
        bench.relay("mains").wait_switchable()
        bench.relay("mains").off()
        bench.relay("mains").wait_switchable()
        # the id alone, with a made-up proof
        with pytest.raises(CommandError) as info:
            eve.request(MAINS, "set", {"state": "on"}, lease=lambda _t, _c: {"id": bench.lease_id, "mac": "0" * 64})
        assert info.value.code == "not_leased"
        # the holder's own proof on a command of its own making
        with pytest.raises(CommandError) as info:
            eve.request(MAINS, "set", {"state": "on"}, lease=lambda _t, _c: captured["lease"])
        assert info.value.code == "not_leased"
        # the captured command itself, replayed: answered from the reply cache, never executed again
        replay = dict(captured, reply_to=eve.reply_topic)
        eve.publish(MAINS.cmd("set"), replay)
        eve.flush()
        bench.wait(lambda: agent.bus._replies_cache.get(captured["id"]) is not None, 60, "the reply is cached")
    assert not agent.relays["mains"].is_on
    assert [e for e in agent.safe_events if "eve" in e["reason"]] == []


def test_replayed_heartbeats_do_not_keep_a_lease(broker, lab, agent):
    """The holder dies (its heartbeat stops); a client that captured its
    heartbeats replays them: stale seqs, so the watchdog still ends the lease."""
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    with Bus(broker.as_user("orchestrator"), client_id="replayer") as eve:
        beats = Recorder(eve, AGENT.heartbeat)
        assert beats.wait_for(lambda t, p: p["seq"] >= 3)
        bench._hb_stop.set()                                   # the holder is gone
        captured = [p for _t, p in beats.messages]
        stop = threading.Event()

        def replay():
            while not stop.wait(0.05):
                for p in captured:
                    eve.publish(AGENT.heartbeat, p)
                eve.publish(AGENT.heartbeat, dict(captured[-1], seq=captured[-1]["seq"] + 1))  # forged seq: bad mac

        t = threading.Thread(target=replay, daemon=True)
        t.start()
        try:
            state = bench.watch(MAINS.state)
            off = state.wait_for(lambda s: s["state"] == "off", timeout=600, min_wall=10)
        finally:
            stop.set()
            t.join(5)
    assert off is not None and "heartbeat lost" in off["reason"]
    assert agent.lease is None
    bench._key = None


def test_estop_reset_needs_the_lease_holder(broker, lab, agent, minimal_lab):
    holder = lab.bench("bench-1")
    holder.estop("test")
    with Lab.open(minimal_lab, endpoint=broker, holder="someone-else") as other:
        with pytest.raises(CommandError) as info:
            other.bench("bench-1", lease=False).reset_estop()
        assert info.value.code == "not_leased"
    assert agent.estop_latched
    holder.reset_estop()
    assert not agent.estop_latched


# ----------------------------------------------------------------------------- faults: clock step, hung holder
def test_a_clock_stepped_by_minutes_is_refused_the_lease(lab, agent):
    """NTP stepped the orchestrator's clock 5 minutes ahead (the lab clock,
    pinned at start, would never show it): detected, reported, refused."""
    bench = Bench(lab, "bench-1", lease=False)
    bench.wall_source = lambda: time.time() + 300
    events = bench.watch(AGENT.event("clock"))
    with pytest.raises(CommandError) as info:
        bench.acquire()
    assert "clock skew" in info.value.reason and info.value.error.requirement == "LAB-3"
    assert agent.lease is None
    report = events.wait_for(lambda e: e.get("skew", 0) > 290, timeout=60, min_wall=5)
    assert report is not None and report["holder"] == "the-holder"
    assert agent.status()["clock"]["skew"] > 290


def test_a_clock_step_during_a_lease_ends_it(lab, agent):
    bench = lab.bench("bench-1")
    bench.relay("mains").on()
    bench.wall_source = lambda: time.time() - 240          # stepped back 4 minutes mid-lease
    off = bench.watch(MAINS.state).wait_for(lambda s: s["state"] == "off", timeout=600, min_wall=10)
    assert off is not None and "clock skew" in off["reason"]
    assert agent.lease is None and agent.status()["clock"]["skew"] < -230
    bench._key = None


def _short_lease(lab_cfg, term: float):
    lab_cfg.bench("bench-1").controller.lease_term = term
    return lab_cfg


def test_a_hung_orchestrator_loses_its_lease(broker, minimal_lab):
    """The script's main thread hangs (a deadlock) while its heartbeat thread
    runs on: heartbeats alone do not keep the lease past its term."""
    cfg = _short_lease(minimal_lab, 2.0)
    with Agent(cfg, "bench-1", broker, LabClock(scale=60)) as agent, \
            Lab.open(cfg, endpoint=broker, holder="hung") as lab:
        leased, hang = threading.Event(), threading.Event()

        def script():
            bench = lab.bench("bench-1")
            bench.relay("mains").on()
            leased.set()
            hang.wait()                    # hung: no command, no wait on the lab clock

        worker = threading.Thread(target=script, daemon=True)
        worker.start()
        try:
            assert leased.wait(30)
            bench = lab._benches["bench-1"]
            with Bus(broker.as_user("observer"), client_id="watcher") as obs:
                off = obs.watch(MAINS.state).wait_for(lambda s: s["state"] == "off", timeout=600, min_wall=30)
            assert off is not None and "no progress" in off["reason"], off
            assert bench._hb_thread.is_alive()       # it was the work that stopped, not the heartbeat
            assert agent.lease is None
        finally:
            hang.set()
            worker.join(5)
        bench._key = None


def test_a_working_orchestrator_keeps_its_lease_past_the_term(broker, minimal_lab):
    """The other side of the term: a script that is busy waiting on the lab
    clock (a long dwell) is making progress and keeps its lease."""
    cfg = _short_lease(minimal_lab, 3.0)
    with Agent(cfg, "bench-1", broker, LabClock(scale=60)) as agent, \
            Lab.open(cfg, endpoint=broker) as lab:
        bench = lab.bench("bench-1")
        bench.relay("mains").on()
        bench.dwell(lab.clock.lab_seconds(3 * 3.0))       # three terms of wall time, in one dwell
        assert agent.lease is not None and agent.relays["mains"].is_on


# ----------------------------------------------------------------------------- what the rig refuses to start
def test_a_real_bench_needs_tls_and_credentials(tmp_path):
    text = """
broker: {kind: external, url: "mqtt://mqtt.lab.example:1883"}
benches:
  bench-3:
    controller: {pin_factory: lgpio}
    relays: {mains: {pin: 17, safe_state: "off"}}
"""
    with pytest.raises(ConfigError) as info:
        load_lab_text(text, "lab.yaml")
    assert info.value.key == "benches.bench-3.controller.pin_factory" and "TLS" in info.value.message
    with pytest.raises(ConfigError, match="credentials"):
        load_lab_text(text.replace('"mqtt://mqtt.lab.example:1883"}', '"mqtts://mqtt.lab.example"}'), "lab.yaml")
    ok = text.replace('"mqtt://mqtt.lab.example:1883"}',
                      '"mqtts://mqtt.lab.example", username_env: U, password_env: P}')
    assert load_lab_text(ok, "lab.yaml").benches["bench-3"].controller.pin_factory == "lgpio"


def test_the_agent_refuses_a_real_bench_on_an_open_endpoint(minimal_lab):
    minimal_lab.bench("bench-1").controller.pin_factory = "lgpio"
    with pytest.raises(BrokerError, match="without TLS and credentials"):
        Agent(minimal_lab, "bench-1", Endpoint("127.0.0.1", 1883, username="agent-bench-1", password_env="X"))


def test_the_embedded_broker_serves_loopback_only():
    with pytest.raises(BrokerError, match="loopback only"):
        Broker.start(BrokerConfig(kind="amqtt", host="0.0.0.0", port=0))
    with pytest.raises(BrokerError, match="needs TLS"):
        Broker.start(BrokerConfig(kind="mosquitto", host="0.0.0.0", port=0))


def test_a_last_will_may_go_only_where_the_client_may_publish(broker):
    """A will is a publish the broker makes for the client: an observer may
    not leave one on a relay's command topic (amqtt does not check wills by
    itself; mosquitto drops what the ACL denies)."""
    with Bus(broker.as_user("admin"), client_id="will-watch") as watcher:
        seen = Recorder(watcher, MAINS.cmd("set"))
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sly", protocol=mqtt.MQTTv311)
        obs = broker.as_user("observer")
        c.username_pw_set(obs.username, obs.password())
        c.will_set(MAINS.cmd("set"), b'{"will": true}', qos=1)
        answered, codes = threading.Event(), []
        c.on_connect = lambda _c, _u, _f, rc, _p: (codes.append(rc), answered.set())
        c.reconnect_delay_set(60, 60)
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert answered.wait(10)
        if broker.kind == "amqtt":
            assert codes[0].is_failure      # the rig's amqtt refuses the connection outright
        sock = c.socket()
        if sock is not None:
            sock.close()           # an abnormal end: the broker would publish the will (mosquitto drops it)
        c.loop_stop()
        marker = f"{MAINS.base}/state"
        markers = Recorder(watcher, marker)
        watcher.publish(marker, {"marker": True})
        assert markers.wait_for(lambda t, p: p and p.get("marker"))
    assert not seen.messages
