"""The bus contract on both brokers: request/response, expiry in lab time,
idempotence, malformed payloads, retained state, presence."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import paho.mqtt.client as mqtt
import pytest
from pydantic import BaseModel

from rig.bus import Bus, CommandError, Refused
from rig.clock import LabClock
from rig.contract import Node

NODE = Node("bench-t", "device", "probe")


class EchoArgs(BaseModel):
    text: str


@pytest.fixture
def pair(broker):
    clock = LabClock(scale=60)
    server = Bus(broker, client_id="srv", clock=clock, presence=NODE,
                 presence_info={"kind": "probe"}).connect(announce=False)
    client = Bus(broker, client_id="cli", clock=clock).connect()
    calls = []

    def echo(args: EchoArgs, ctx):
        calls.append((args.text, ctx.sender))
        return {"echo": args.text}

    def refuse(_args, _ctx):
        raise Refused("interlock says no", requirement="LAB-2")

    def crash(_args, _ctx):
        raise ZeroDivisionError("boom")

    server.serve(NODE, "echo", echo, EchoArgs)
    server.serve(NODE, "refuse", refuse)
    server.serve(NODE, "crash", crash)
    server.announce()   # online only once its operations are subscribed
    yield server, client, calls
    client.close()
    server.close()


def raw_publish(endpoint, topic, payload: bytes):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw", protocol=mqtt.MQTTv311)
    c.username_pw_set(endpoint.username, endpoint.password())
    c.connect(endpoint.host, endpoint.port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_request_reply_round_trip(pair):
    _server, client, calls = pair
    assert client.request(NODE, "echo", {"text": "hi"}) == {"echo": "hi"}
    assert calls == [("hi", "cli")]


def test_refusal_carries_reason_and_requirement(pair):
    _server, client, _ = pair
    with pytest.raises(CommandError) as info:
        client.request(NODE, "refuse")
    assert info.value.code == "refused"
    assert info.value.error.requirement == "LAB-2"
    assert "interlock says no" in str(info.value)


def test_expired_command_is_refused_and_never_executed(pair):
    _server, client, calls = pair
    with pytest.raises(CommandError) as info:
        client.request(NODE, "echo", {"text": "late"}, expires=client.clock.now() - 1.0)
    assert info.value.code == "expired"
    assert calls == []


def test_duplicate_delivery_executes_once(pair, broker):
    """QoS 1 may deliver a command twice: back to back (the repeat comes while
    the first still runs, and shares its reply) or later (answered from the
    cache).  Either way the handler runs once, and every delivery is answered."""
    server, client, calls = pair
    replies: list = []
    cond = threading.Condition()

    def on_reply(_t, payload):
        with cond:
            replies.append(payload)
            cond.notify_all()

    def wait_replies(n):
        with cond:
            return cond.wait_for(lambda: len(replies) >= n, 5)

    watcher = Bus(broker, client_id="dup-watch", clock=client.clock).connect()
    watcher.subscribe("rig/v1/_reply/dup-watch-replies", on_reply)
    assert watcher.wait_subscribed()
    cmd = {"id": "same-id-1", "reply_to": "rig/v1/_reply/dup-watch-replies", "sender": "dup",
           "expires": client.clock.now() + 600, "args": {"text": "once"}}
    watcher.publish(NODE.cmd("echo"), cmd)
    watcher.publish(NODE.cmd("echo"), cmd)          # back to back
    assert wait_replies(1), replies
    watcher.publish(NODE.cmd("echo"), cmd)          # after it ran: from the cache
    assert wait_replies(len(replies) + 1), replies   # one more than so far: the cached answer
    watcher.close()
    assert calls == [("once", "dup")]
    assert all(r == replies[0] for r in replies)


def test_malformed_payload_gets_an_error_and_the_server_keeps_running(pair, broker):
    server, client, calls = pair
    errors = client.watch(NODE.error)
    raw_publish(broker, NODE.cmd("echo"), b"{not json")
    err = errors.wait_for(lambda e: e["error"]["code"] == "invalid", timeout=60, min_wall=2)
    assert err is not None and "not JSON" in err["error"]["message"]
    # a JSON payload missing fields but with a reply_to gets an error reply
    replies = client.watch("rig/v1/_reply/raw-replies")
    raw_publish(broker, NODE.cmd("echo"), json.dumps({"id": "x1", "reply_to": "rig/v1/_reply/raw-replies"}).encode())
    reply = replies.wait_for(lambda r: r.get("id") == "x1", timeout=60, min_wall=2)
    assert reply is not None and reply["ok"] is False and reply["error"]["code"] == "invalid"
    # bad args, unknown op, a crashing handler: each answered, none fatal
    with pytest.raises(CommandError) as info:
        client.request(NODE, "echo", {"text": 42})
    assert info.value.code == "invalid" and "args.text" in info.value.reason
    with pytest.raises(CommandError) as info:
        client.request(NODE, "nope")
    assert info.value.code == "unknown_op"
    with pytest.raises(CommandError) as info:
        client.request(NODE, "crash")
    assert info.value.code == "failed" and "boom" in info.value.reason
    assert client.request(NODE, "echo", {"text": "still here"}) == {"echo": "still here"}


def test_retained_state_reaches_a_late_subscriber(pair, broker):
    server, _client, _ = pair
    server.publish_state(NODE, {"supply": "armed"})
    late = Bus(broker, client_id="late", clock=server.clock).connect()
    try:
        w = late.watch(NODE.state)
        state = w.wait_for(lambda s: "supply" in s, timeout=60, min_wall=2)
        assert state["supply"] == "armed" and "ts" in state and "seq" in state
    finally:
        late.close()


def test_presence_goes_offline_on_close(broker):
    node = Node("bench-t", "device", "closer")
    observer = Bus(broker, client_id="obs-close").connect()
    w = observer.watch(node.presence)
    b = Bus(broker, client_id="closer", presence=node).connect()
    assert w.wait_for(lambda p: p["online"], timeout=5, min_wall=2)
    b.close("test over")
    p = w.wait_for(lambda p: not p["online"], timeout=5, min_wall=2)
    observer.close()
    assert p is not None and p["reason"] == "test over"


def test_presence_goes_offline_when_the_process_is_killed(broker):
    """The Last Will: SIGKILL sends no DISCONNECT, the broker publishes the will."""
    node = Node("bench-t", "device", "victim")
    observer = Bus(broker, client_id="obs-kill").connect()
    w = observer.watch(node.presence)
    code = textwrap.dedent(f"""
        import sys, threading
        from rig.broker import Endpoint
        from rig.bus import Bus
        from rig.contract import Node
        b = Bus(Endpoint.from_url({broker.url!r}), client_id="victim",
                presence=Node("bench-t", "device", "victim")).connect()
        print("up", flush=True)
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert w.wait_for(lambda p: p["online"], timeout=5, min_wall=5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        p = w.wait_for(lambda p: not p["online"], timeout=10, min_wall=10)
        assert p is not None and p["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
        observer.close()


def test_heartbeat_republishes_presence(broker):
    node = Node("bench-t", "device", "beating")
    observer = Bus(broker, client_id="obs-beat").connect()
    w = observer.watch(node.presence)
    b = Bus(broker, client_id="beating", presence=node, heartbeat_interval=0.05).connect()
    try:
        first = w.wait_for(lambda p: p["online"], timeout=5, min_wall=2)
        later = w.wait_for(lambda p: p["seq"] >= first["seq"] + 3, timeout=5, min_wall=2)
        assert later is not None and later["wall"] > first["wall"]
    finally:
        b.close()
        observer.close()
