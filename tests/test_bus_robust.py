"""The bus under bad input and faults (issue 10, items 4 and 5), on both
brokers: every payload validated before anything acts, bounded queues,
replies cached before they are sent, side effects published whatever
becomes of the reply, safe-direction commands never refused for age and
never behind the command queue, and no thread that dies silently."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from pydantic import BaseModel

import rig.bus as busmod
from rig.bus import MAX_PAYLOAD, Bus, BusError, CommandError
from rig.clock import LabClock
from rig.contract import MAX_PACKET, Node

from netfault import RawClient as Raw, TcpProxy

NODE = Node("bench-r", "device", "probe")
REPLIES = "rig/v1/_reply/raw-robust"


class EchoArgs(BaseModel):
    text: str


def command(cmd_id: str, expires: str | float, reply_to: str = REPLIES, args: str = '{"text": "hi"}') -> bytes:
    """A command as raw JSON text, so that NaN and Infinity can be written."""
    return (f'{{"id": "{cmd_id}", "reply_to": {json.dumps(reply_to)}, "sender": "raw", '
            f'"expires": {expires}, "args": {args}}}').encode()


@pytest.fixture
def rig_server(broker):
    """A node with an echo op, a slow op (blocks until released), a
    safe-direction op and an op with a side effect; and a rig client."""
    clock = LabClock(scale=60)
    server = Bus(broker, client_id="srv-robust", clock=clock, presence=NODE).connect(announce=False)
    client = Bus(broker, client_id="cli-robust", clock=clock).connect()
    calls: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def echo(args: EchoArgs, _ctx):
        calls.append(args.text)
        return {"echo": args.text}

    def slow(_args, _ctx):
        calls.append("slow")
        started.set()
        assert release.wait(30), "the test never released the slow op"
        return {}

    def to_safe(_args, ctx):
        calls.append(f"safe:{ctx.id}")
        return {"safe": True}

    def big(_args, _ctx):
        calls.append("big")
        server.publish_state(NODE, {"did": "big"})
        return {"blob": "x" * (MAX_PAYLOAD + 10)}

    server.serve(NODE, "echo", echo, EchoArgs)
    server.serve(NODE, "slow", slow)
    server.serve(NODE, "safe", to_safe, safe=True)
    server.serve(NODE, "big", big)
    server.announce()
    raw = Raw(broker)
    raw.subscribe(REPLIES)
    raw.subscribe(NODE.error)
    ns = type("Server", (), {})()
    ns.server, ns.client, ns.calls, ns.raw, ns.release, ns.started, ns.clock = (
        server, client, calls, raw, release, started, clock)
    yield ns
    release.set()
    raw.close()
    client.close()
    server.close()


def reply_for(raw: Raw, cmd_id: str) -> dict:
    got = raw.wait(lambda m: m[0] == REPLIES and json.loads(m[1]).get("id") == cmd_id)
    assert got is not None, f"no reply to {cmd_id}"
    return json.loads(got[1])


def error_on_channel(raw: Raw, text: str) -> dict:
    got = raw.wait(lambda m: m[0] == NODE.error and text in m[1].decode("utf-8", "replace"))
    assert got is not None, f"no error about {text!r} on {NODE.error}: {raw.messages}"
    return json.loads(got[1])


# ----------------------------------------------------------------------------- item 4: validation
@pytest.mark.parametrize("expires", ["NaN", "Infinity", "-Infinity", "1e18", '"soon"', "true", "null"])
def test_an_expiry_that_is_not_a_finite_near_time_is_invalid_and_never_runs(rig_server, expires):
    s = rig_server
    s.raw.publish(NODE.cmd("echo"), command("exp-1", expires))
    reply = reply_for(s.raw, "exp-1")
    assert reply["ok"] is False and reply["error"]["code"] == "invalid", reply
    assert "expires" in reply["error"]["message"]
    assert s.client.request(NODE, "echo", {"text": "after"}) == {"echo": "after"}
    assert s.calls == ["after"]          # the bad one never ran


@pytest.mark.parametrize("reply_to", [
    "rig/v1/_reply/+", "rig/v1/_reply/#", "rig/v1/#",
    NODE.cmd("echo"),                     # a reply reflected onto a command topic
    "rig/v1/_reply/a/b", "elsewhere/topic", "",
])
def test_a_reply_to_that_is_not_a_reply_topic_is_rejected_before_the_handler(rig_server, reply_to):
    s = rig_server
    s.raw.publish(NODE.cmd("echo"), command("rt-1", s.clock.now() + 600, reply_to=reply_to,
                                            args='{"text": "must not run"}'))
    err = error_on_channel(s.raw, "reply_to")
    assert err["error"]["code"] == "invalid"
    assert s.client.request(NODE, "echo", {"text": "after"}) == {"echo": "after"}
    assert s.calls == ["after"]


def test_a_retained_command_is_never_executed(broker):
    """A retained command would run again on every (re)subscription."""
    node = Node("bench-r", "device", "retained")
    clock = LabClock(scale=60)
    raw = Raw(broker, "raw-retained")
    raw.publish(node.cmd("echo"), command("ret-1", clock.now() + 600, args='{"text": "retained"}'), retain=True)
    calls = []
    server = Bus(broker, client_id="srv-retained", clock=clock).connect()
    client = Bus(broker, client_id="cli-retained", clock=clock).connect()
    try:
        server.serve(node, "echo", lambda a, _c: calls.append(a.text) or {"echo": a.text}, EchoArgs)
        assert server.wait_subscribed(5)
        # commands run in arrival order: once this one is answered, the retained one was seen
        assert client.request(node, "echo", {"text": "live"}) == {"echo": "live"}
        assert calls == ["live"]
    finally:
        raw.publish(node.cmd("echo"), b"", retain=True)
        raw.close()
        client.close()
        server.close()


def test_retained_heartbeats_and_commands_are_not_delivered_to_subscribers(broker):
    heartbeat = "rig/v1/bench-r/agent/controller/heartbeat"
    state_a, state_b = "rig/v1/bench-r/agent/controller/state", "rig/v1/bench-r/relay/mains/state"
    raw = Raw(broker, "raw-hb")
    raw.publish(state_a, b'{"a": 1}', retain=True)
    raw.publish(heartbeat, b'{"lease": "stale", "seq": 1, "wall": 0}', retain=True)
    raw.publish(NODE.cmd("set"), b'{"stale": true}', retain=True)
    raw.publish(state_b, b'{"b": 2}', retain=True)
    got: list[tuple[str, object]] = []
    seen = threading.Condition()

    def on(topic, payload):
        with seen:
            got.append((topic, payload))
            seen.notify_all()

    bus = Bus(broker, client_id="sub-hb").connect()
    try:
        bus.subscribe("rig/v1/bench-r/#", on)
        assert bus.wait_subscribed(5)
        raw.publish(heartbeat, b'{"lease": "live", "seq": 2, "wall": 0}')
        with seen:
            assert seen.wait_for(lambda: {state_a, state_b} <= {t for t, _ in got}
                                 and any(p == {"lease": "live", "seq": 2, "wall": 0} for _, p in got), 10), got
        assert [p for t, p in got if t == heartbeat] == [{"lease": "live", "seq": 2, "wall": 0}]
        assert not [t for t, _ in got if "/cmd/" in t]
    finally:
        for topic in (state_a, heartbeat, NODE.cmd("set"), state_b):
            raw.publish(topic, b"", retain=True)
        raw.close()
        bus.close()


def test_payload_size_limit_on_the_client_and_the_broker(rig_server, broker):
    s = rig_server
    with pytest.raises(BusError, match="over the bus limit"):
        s.client.publish(NODE.event("huge"), b"x" * (MAX_PAYLOAD + 1))
    big = command("big-1", s.clock.now() + 600, args=json.dumps({"text": "y" * MAX_PACKET}))
    sender = Raw(broker, "raw-big")
    try:
        sender.c.publish(NODE.cmd("echo"), big, qos=1)
        if broker.kind == "mosquitto":
            # the broker refuses the packet: max_packet_size disconnects its sender
            assert sender.disconnected.wait(10), "mosquitto accepted a packet over the limit"
        else:
            # amqtt has no limit of its own: the node drops it before decoding
            assert error_on_channel(s.raw, "over the bus limit")["error"]["code"] == "invalid"
    finally:
        sender.close()
    assert s.client.request(NODE, "echo", {"text": "after"}) == {"echo": "after"}
    assert s.calls == ["after"]


def test_deep_json_neither_deafens_a_client_nor_stops_a_server(rig_server):
    """Deeply nested JSON raised RecursionError out of paho's network thread,
    leaving the process up but deaf."""
    s = rig_server
    deep = b"[" * 100_000 + b"]" * 100_000
    s.raw.publish(s.client.reply_topic, deep)                 # at a client, on its reply topic
    s.raw.publish(NODE.cmd("echo"), deep)                     # at a server, on a command topic
    assert error_on_channel(s.raw, "deeper")["error"]["code"] == "invalid"
    nested = '{"text": "x", "n": ' + "[" * 40 + "]" * 40 + "}"  # parses, but deeper than the bus allows
    s.raw.publish(NODE.cmd("echo"), command("deep-1", s.clock.now() + 600, args=nested))
    error_on_channel(s.raw, "nests deeper")
    assert s.client.request(NODE, "echo", {"text": "still hears"}, timeout=600) == {"echo": "still hears"}
    assert s.calls == ["still hears"]


def test_a_full_command_queue_answers_busy_and_runs_nothing_twice(broker, monkeypatch):
    monkeypatch.setattr(busmod, "CMD_QUEUE_MAX", 3)
    clock = LabClock(scale=60)
    node = Node("bench-r", "device", "queue")
    server = Bus(broker, client_id="srv-queue", clock=clock).connect()
    calls, release, started = [], threading.Event(), threading.Event()

    def slow(_a, _c):
        started.set()
        assert release.wait(30)
        return {}

    server.serve(node, "slow", slow)
    server.serve(node, "echo", lambda a, _c: calls.append(a.text) or {}, EchoArgs)
    raw = Raw(broker, "raw-queue")
    raw.subscribe(REPLIES)
    try:
        assert server.wait_subscribed(5)
        raw.publish(node.cmd("slow"), command("q-slow", clock.now() + 3000, args="{}"))
        assert started.wait(10)
        for i in range(5):               # three fit in the queue, two do not
            raw.publish(node.cmd("echo"), command(f"q-{i}", clock.now() + 3000, args=f'{{"text": "{i}"}}'))
        busy = [reply_for(raw, f"q-{i}") for i in (3, 4)]
        assert all(r["error"]["code"] == "busy" for r in busy), busy
        release.set()
        assert all(reply_for(raw, f"q-{i}")["ok"] for i in (0, 1, 2))
        assert calls == ["0", "1", "2"]
        # busy is not remembered: the same id sent again runs, once
        raw.publish(node.cmd("echo"), command("q-4", clock.now() + 3000, args='{"text": "4"}'))
        assert raw.wait(lambda m: m[0] == REPLIES and json.loads(m[1]) .get("id") == "q-4"
                        and json.loads(m[1])["ok"]) is not None
        raw.publish(node.cmd("echo"), command("q-4", clock.now() + 3000, args='{"text": "4"}'))
        assert raw.wait(lambda m: sum(1 for t, p, _ in raw.messages if t == REPLIES
                                      and json.loads(p).get("id") == "q-4" and json.loads(p)["ok"]) == 2)
        assert calls == ["0", "1", "2", "4"]
    finally:
        release.set()
        raw.close()
        server.close()


def test_the_reply_is_cached_and_side_effects_published_when_the_reply_cannot_go(rig_server):
    """A result over the size limit cannot be sent: the caller gets `failed`
    (the op did run), its state publish still goes out, and a redelivery
    is answered from the cache without running the handler again."""
    s = rig_server
    state = s.client.watch(NODE.state)
    with pytest.raises(CommandError) as info:
        s.client.request(NODE, "big")
    assert info.value.code == "failed" and "did run" in info.value.reason
    assert state.wait_for(lambda v: v.get("did") == "big", timeout=600, min_wall=2)
    cmd = command("big-again", s.clock.now() + 600, args="{}")
    s.raw.publish(NODE.cmd("big"), cmd)
    first = reply_for(s.raw, "big-again")
    s.raw.publish(NODE.cmd("big"), cmd)
    assert s.raw.wait(lambda m: sum(1 for t, p, _ in s.raw.messages
                                    if t == REPLIES and json.loads(p).get("id") == "big-again") == 2)
    assert s.raw.json(REPLIES)[-1] == first
    assert s.calls == ["big", "big"]


# ----------------------------------------------------------------------------- item 4: safe direction
def test_a_safe_direction_command_is_never_refused_as_expired(rig_server):
    s = rig_server
    assert s.client.request(NODE, "safe", expires=s.clock.now() - 3600) == {"safe": True}
    with pytest.raises(CommandError) as info:
        s.client.request(NODE, "echo", {"text": "late"}, expires=s.clock.now() - 1)
    assert info.value.code == "expired"
    assert len(s.calls) == 1 and s.calls[0].startswith("safe:")


def test_a_safe_direction_command_overtakes_the_queue_and_what_it_overtakes_does_not_run(rig_server):
    s = rig_server
    s.raw.publish(NODE.cmd("slow"), command("o-slow", s.clock.now() + 3000, args="{}"))
    assert s.started.wait(10)
    s.raw.publish(NODE.cmd("echo"), command("o-echo", s.clock.now() + 3000, args='{"text": "queued"}'))
    s.raw.publish(NODE.cmd("safe"), command("o-safe", s.clock.now() + 3000, args="{}"))
    assert reply_for(s.raw, "o-safe")["ok"]              # answered while the slow op still holds the lane
    assert not [m for m in s.raw.json(REPLIES) if m["id"] in ("o-slow", "o-echo")]
    s.release.set()
    overtaken = reply_for(s.raw, "o-echo")
    assert overtaken["error"]["code"] == "refused" and "superseded" in overtaken["error"]["message"]
    assert s.calls == ["slow", "safe:o-safe"]
    assert s.client.request(NODE, "echo", {"text": "after"}) == {"echo": "after"}   # later ones run


# ----------------------------------------------------------------------------- faults between client and broker
def test_a_reply_lost_with_the_connection_still_reaches_the_caller_and_nothing_runs_twice(broker):
    """The node ran the command and replied, but the connection to the caller
    dropped with the reply in it: after reconnecting, the caller sends the
    command again with the same id and gets the cached reply."""
    clock = LabClock(scale=60)
    node = Node("bench-r", "device", "lossy")
    with TcpProxy((broker.host, broker.port)) as proxy:
        client = Bus(replace(broker, port=proxy.port, keepalive=60), client_id="cli-lossy", clock=clock).connect()
        server = Bus(broker, client_id="srv-lossy", clock=clock).connect()
        calls = []

        def op(args, _ctx):
            calls.append(args.text)
            # the caller's broker has acknowledged the command: now the partition
            assert clock.wait_for(lambda: all(e[3] is not None and e[3].is_published()
                                              for e in client._pending.values()), 600)
            proxy.pause()
            return {"echo": args.text}

        server.serve(node, "echo", op, EchoArgs)
        try:
            assert server.wait_subscribed(5)
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(
                value=client.request(node, "echo", {"text": "once"}, timeout=1200)))
            t.start()
            assert clock.wait_for(lambda: calls, 600), "the command never reached the node"
            proxy.cut()          # the reply dies with the connection
            proxy.resume()
            t.join(30)
            assert result.get("value") == {"echo": "once"}
            assert calls == ["once"]
        finally:
            proxy.resume()
            client.close()
            server.close()
