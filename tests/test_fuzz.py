"""Fuzzing through the real broker (issue 10, item 7): generated topics,
payloads and flags thrown at the controller agent (relays, E-stop, lease),
its instrument services, and the device twins, the head end and the HAN.

For every message: a command with a usable ``reply_to`` and ``id`` gets a
reply (ok or an error), anything else is ignored or answered on the node's
``error`` channel; no command id runs twice on a node; no thread dies; and
after every example the bench is in a state its interlocks allow.

The ``ci`` hypothesis profile (the default, tests/conftest.py) runs a fixed
set of examples in well under a minute; ``RIG_HYPOTHESIS_PROFILE=long`` hunts
with thousands of random ones."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import re
import threading
import typing
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the test extras)")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rig.bus import MAX_DEPTH, MAX_PAYLOAD, Bus, _depth_ok  # noqa: E402
from rig.contract import is_reply_topic  # noqa: E402

from netfault import RawClient  # noqa: E402

pytestmark = pytest.mark.timeout(600)

REPLY_TOPIC = "rig/v1/_reply/fuzzer"
_ids = itertools.count(1)
REUSE = re.compile(rb"@reuse:(\d+)")
#: wall seconds a node may take to answer one fuzzed command (a link test, a
#: button hold, a head-end request over the HAN are the slow ones)
ANSWER_WITHIN = 60.0

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)
# a topic level paho will publish: no wildcard, no NUL; '/' makes a deeper topic no node serves
LEVEL = st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",)), min_size=1, max_size=24)


class Probe:
    """What the servers did: executions per (bus, command id), and errors
    logged by the rig (a handler that raised, a thread that died)."""

    def __init__(self, buses: list[Bus]):
        self.executed: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        for bus in buses:
            execute = bus._execute

            def counting(job, bus=bus, execute=execute):
                with self._lock:
                    self.executed[(bus.client_id, job.cmd.id)] += 1
                return execute(job)

            bus._execute = counting
        self.buses = buses
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = self._log
        logging.getLogger("rig").addHandler(self.handler)
        logging.getLogger("instruments").addHandler(self.handler)

    def _log(self, record: logging.LogRecord) -> None:
        self.errors.append(f"{record.name}: {record.getMessage()}" + (
            f" ({record.exc_info[0].__name__})" if record.exc_info else ""))

    def close(self) -> None:
        logging.getLogger("rig").removeHandler(self.handler)
        logging.getLogger("instruments").removeHandler(self.handler)

    def twice(self) -> list:
        with self._lock:
            return [key for key, n in self.executed.items() if n > 1]

    def idle(self) -> bool:
        return all(lane.queue.empty() for bus in self.buses for lane in (bus._lane, *bus._express.values())) \
            and not any(bus._inflight for bus in self.buses)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, in proportion to its weight (st.one_of picks
    evenly, and a derandomized run leans to the first)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def served_ops(buses: list[Bus]) -> dict[str, dict[str, Any]]:
    """Every command topic the buses serve, with its op's args model fields."""
    out = {}
    for bus in buses:
        for base, (_node, ops) in bus._ops.items():
            for op_name, op in ops.items():
                out[f"{base}/cmd/{op_name}"] = dict(op.args_model.model_fields) if op.args_model else {}
    return dict(sorted(out.items()))


NAMES = st.sampled_from(["esme", "ppmid", "gsme", "comms_hub", "ihd", "mains", "ac_source", "nobody"])
ODD = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), JSON_SCALARS)


def value_for(field) -> st.SearchStrategy:
    """Values near what an args field accepts (its Literal choices, numbers
    around its range, device names), and now and then anything at all."""
    ann = field.annotation
    kinds = (ann,) if typing.get_origin(ann) is typing.Literal else (typing.get_args(ann) or (ann,))
    near = []
    for kind in kinds:
        if typing.get_origin(kind) is typing.Literal:
            near.append(st.sampled_from(typing.get_args(kind)))
        elif kind in (float, int):
            near.append(st.one_of(st.integers(-2, 120), st.floats(-5, 300)))
        elif kind is bool:
            near.append(st.booleans())
        elif kind is str:
            near.append(st.one_of(NAMES, st.text(max_size=12)))
        elif kind is type(None):
            near.append(st.none())
    return weighted((4, st.one_of(*near)), (1, ODD)) if near else ODD


def args_for(fields: dict[str, Any]) -> st.SearchStrategy:
    if not fields:
        return st.one_of(st.just({}), st.just({}), st.dictionaries(st.text(max_size=8), JSON, max_size=3))
    names = list(fields)
    return weighted(
        (3, st.fixed_dictionaries({n: value_for(f) for n, f in fields.items() if f.is_required()},
                                  optional={n: value_for(f) for n, f in fields.items() if not f.is_required()})),
        (1, st.fixed_dictionaries({}, optional={n: value_for(f) for n, f in fields.items()})),
        (1, st.dictionaries(st.sampled_from(names + ["bogus"]), ODD, max_size=3)),
    )


def messages(buses: list[Bus], clock, token, focus: tuple[str, ...] = ()):
    """A strategy of (topic, payload bytes, qos, retain, duplicate): half of
    the payloads well-formed commands with args near the op's own, the rest
    mutated envelopes, other JSON, bytes and deep nesting."""
    ops = served_ops(buses)
    topics = list(ops)
    bases = sorted({t.rpartition("/cmd/")[0] for t in topics})
    fresh_id = st.builds(lambda: f"fz-{next(_ids)}")   # unique (hypothesis would repeat simple uuids)

    def command(topic: str):
        good = st.fixed_dictionaries({
            # "@reuse:k" becomes an id sent before (strategies may not read the test's state)
            "id": weighted((9, fresh_id), (1, st.integers(0, 50).map(lambda k: f"@reuse:{k}"))),
            "reply_to": st.just(REPLY_TOPIC), "sender": st.just("fuzzer"),
            "expires": st.floats(10, 600).map(lambda d: clock.now() + d),
            "args": args_for(ops.get(topic, {})),
        } | ({"lease": st.just("@prove")} if token is not None else {}))
        bad = st.fixed_dictionaries(
            {"id": st.one_of(fresh_id, st.text(max_size=140), st.integers(), st.none()),
             "reply_to": st.one_of(st.just(REPLY_TOPIC), st.sampled_from(
                 ["rig/v1/_reply/+", "rig/v1/_reply/#", "rig/v1/#", REPLY_TOPIC + "/x", "", topic]),
                 st.text(max_size=30), st.integers())},
            optional={"sender": st.one_of(st.just("fuzzer"), st.text(max_size=210), st.integers()),
                      "expires": st.one_of(st.floats(0, 600).map(lambda d: clock.now() - d), st.just(1e18),
                                           st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                                           st.booleans(), st.none()),
                      "args": st.one_of(args_for(ops.get(topic, {})), JSON),
                      "lease": st.one_of(st.none(), st.text(max_size=40), st.integers()),
                      "extra": JSON})
        return weighted((2, good), (1, bad)).map(lambda c: json.dumps(c, allow_nan=True).encode())

    def payload_for(topic: str):
        return weighted(
            (12, command(topic)),
            (1, JSON.map(lambda v: json.dumps(v, allow_nan=True).encode())),
            (1, st.binary(max_size=200)),
            (1, st.integers(1, 200).map(lambda n: b'{"id": "fz-deep", "reply_to": "' + REPLY_TOPIC.encode()
                                        + b'", "args": ' + b"[" * n + b"]" * n + b"}")),
        )

    focused = [t for f in focus for t in topics if f in t]   # a name given twice weighs twice
    topic = weighted((9, st.sampled_from(topics)), *([(9, st.sampled_from(focused))] if focused else []),
                     (1, st.builds(lambda b, op: f"{b}/cmd/{op}", st.sampled_from(bases), LEVEL)))
    return topic.flatmap(lambda t: st.tuples(st.just(t), payload_for(t), st.sampled_from([1, 1, 1, 0]),
                                             st.sampled_from([False] * 9 + [True]),
                                             st.sampled_from([False, False, True])))


def expects_reply(topic: str, payload: bytes, retain: bool, served: set[str]) -> str | None:
    """The id a node must answer (to the fuzzer's reply topic), if any."""
    base, sep, op = topic.rpartition("/cmd/")
    if retain or not sep or base not in served or "/" in op or len(payload) > MAX_PAYLOAD:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not _depth_ok(data, MAX_DEPTH):
        return None
    cmd_id = data.get("id")
    if data.get("reply_to") != REPLY_TOPIC or not is_reply_topic(REPLY_TOPIC) or not isinstance(cmd_id, str) \
            or not 0 < len(cmd_id) <= 128:
        return None
    return cmd_id


def fuzz(data, buses, clock, raw: RawClient, probe: Probe, used_ids: list[str], token, invariants,
         focus: tuple[str, ...] = ()) -> None:
    served = {base for bus in buses for base in bus._ops}
    batch = data.draw(st.lists(messages(buses, clock, token, focus), min_size=1, max_size=4), label="messages")
    want: dict[str, int] = {}
    before = len(raw.messages)
    retained = []
    for topic, payload, qos, retain, duplicate in batch:
        # a repeat of a recent id: a node keeps at least its last REPLY_CACHE replies (an id reused
        # after that, with a new expiry, is a new command as far as it can know)
        recent = used_ids[-500:]
        payload = REUSE.sub(lambda m: (recent[int(m[1]) % len(recent)] if recent else f"fz-{next(_ids)}")
                            .encode(), payload)
        if b'"@prove"' in payload:     # a well-formed command of the lease holder: prove it as the holder does
            cmd = json.loads(payload)
            cmd["lease"] = token(topic, cmd)
            payload = json.dumps(cmd, allow_nan=True).encode()
        for _ in range(2 if duplicate else 1):
            raw.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)
        if retain:
            retained.append(topic)
        cmd_id = expects_reply(topic, payload, retain, served)
        if cmd_id is not None and qos == 1:
            want[cmd_id] = want.get(cmd_id, 0) + 1
    for topic in retained:      # no fuzzed command stays on the broker for the next subscriber
        raw.c.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)

    def answered() -> bool:
        got = collections.Counter()
        for t, p, _r in raw.messages[before:]:
            if t == REPLY_TOPIC:
                try:
                    got[json.loads(p).get("id")] += 1
                except ValueError:
                    pass
        return all(got[i] >= 1 for i in want)

    with raw.cond:
        ok = raw.cond.wait_for(answered, ANSWER_WITHIN)
    assert ok, f"no reply to {sorted(set(want))} within {ANSWER_WITHIN} s"
    for t, p, _r in raw.messages[before:]:
        if t == REPLY_TOPIC:
            reply = json.loads(p)
            assert set(reply) <= {"id", "ok", "ts", "result", "error"} and isinstance(reply["ok"], bool), reply
            if not reply["ok"]:
                assert reply["error"]["code"] != "failed", f"a handler raised: {reply}"
    used_ids.extend(i for i in want if i not in used_ids)
    assert not probe.twice(), f"executed twice: {probe.twice()}"
    assert not probe.errors, probe.errors
    invariants()


@pytest.fixture
def fuzzer(request):
    def start(endpoint, buses):
        raw = RawClient(endpoint, "fuzzer")
        raw.subscribe(REPLY_TOPIC)
        probe = Probe(buses)
        request.addfinalizer(probe.close)
        request.addfinalizer(raw.close)
        return raw, probe
    return start


def settle(clock, probe: Probe) -> None:
    """Every lane idle: the last fuzzed command has run (or been refused)."""
    assert clock.wait_for(probe.idle, clock.lab_seconds(ANSWER_WITHIN)), "a node never finished its commands"


# ----------------------------------------------------------------------------- the agent and its instruments
def test_fuzz_the_agent_and_its_instruments(sim_bench, sim_lab, fuzzer):
    agent, physics, clock = sim_bench.agent, sim_bench.physics, sim_bench.clock
    bench = sim_lab.bench("bench-1")
    raw, probe = fuzzer(sim_bench.endpoint, [agent.bus])
    mains = agent.relays["mains"]
    switched: list[tuple[float, bool, bool, bool]] = []   # (lab time, on, forced, E-stop latched)
    set_, force = mains.set, mains.force_safe

    def recording_set(on, reason="command"):
        changed = set_(on, reason)
        if changed:
            switched.append((mains.last_change, on, False, agent.estop_latched))
        return changed

    def recording_force(reason):
        changed = force(reason)
        if changed:
            switched.append((mains.last_change, mains.is_on, True, agent.estop_latched))
        return changed

    mains.set, mains.force_safe = recording_set, recording_force
    limits = {name: cfg.limits for name, cfg in sim_bench.cfg.bench("bench-1").instruments.items()}

    def invariants() -> None:
        # LAB-2: away from its safe state a relay switches only after its minimum interval, never while latched
        for (t0, _on0, _f0, _l0), (t1, on1, forced1, latched1) in zip(switched, switched[1:]):
            if on1 and not forced1:
                assert t1 - t0 >= mains.cfg.min_interval - 1e-9, switched
                assert not latched1, switched
        if agent.estop_latched:      # latched: every output safe
            assert not mains.is_on and not physics.source.output and not physics.load.on
        src, load = physics.source, physics.load
        if load.on:
            assert src.output, "the load is on without supply (requires_supply)"
            lim = limits["load"]
            amps = load.setpoint if load.mode == "current" else load.setpoint / max(src.voltage, 1e-9)
            watts = load.setpoint if load.mode == "power" else load.setpoint * src.voltage
            assert amps <= lim.current_max + 1e-9 and watts <= lim.power_max + 1e-6, (load, src)
        assert src.voltage <= limits["ac_source"].voltage_max
        assert limits["ac_source"].frequency_min <= src.frequency <= limits["ac_source"].frequency_max
        for name in ("attenuator_ppmid", "attenuator_gas"):
            db = physics.attenuation(name)
            assert limits[name].attenuation_min <= db <= limits[name].attenuation_max

    used: list[str] = []

    def token(topic: str, cmd: dict) -> dict | None:
        bench.progress()           # the fuzz is the bench's work: the lease lasts while it goes on
        return bench.prove(topic, cmd)

    @given(data=st.data())
    def run(data):
        if agent.lease is None or bench.lease_id is None or agent.lease.id != bench.lease_id:
            bench.release()          # the fuzz released or lost the lease: take it again
            bench.acquire()
        fuzz(data, [agent.bus], clock, raw, probe, used, token, invariants,
             focus=("/relay/", "/relay/", "/relay/", "/relay/", "/agent/controller/cmd/estop",
                    "/agent/controller/cmd/safe", "/agent/controller/cmd/lease",
                    "/ac_source/cmd/output", "/ac_source/cmd/set", "/load/cmd/draw"))   # what energises the bench

    run()
    settle(clock, probe)
    assert not probe.twice() and not probe.errors, (probe.twice(), probe.errors)
    invariants()
    # every node still answers
    status = sim_lab.bus.request(agent.node, "status")
    assert status["bench"] == "bench-1"
    assert sim_lab.bus.request(sim_bench.world.bus.presence_node.__class__("bench-1", "instrument", "analyser"),
                               "read")["ts"]
    assert agent.bus.connected and agent.fatal is None


# ----------------------------------------------------------------------------- the device twins
def test_fuzz_the_device_twins(device_bench, fuzzer):
    sim = device_bench()
    buses = [part.bus for part in sim.world.parts if isinstance(getattr(part, "bus", None), Bus)
             and part.bus._ops]
    assert len(buses) >= 6, [b.client_id for b in buses]     # five twins, the head end, the HAN medium
    raw, probe = fuzzer(sim.world.endpoint, buses)
    used: list[str] = []

    esme = sim.part("Esme")

    def invariants() -> None:
        # SUP-1/SUP-2: whatever arrives on the bus, a disabled or armed supply keeps the contactor open
        with esme.lock:
            supply, closed = esme.supply, sim.physics.contactor
        if supply in ("disabled", "armed"):
            assert not closed, f"contactor closed with the supply {supply}"

    @given(data=st.data())
    def run(data):
        fuzz(data, buses, sim.clock, raw, probe, used, None, invariants)

    run()
    settle(sim.clock, probe)
    assert not probe.twice() and not probe.errors, (probe.twice(), probe.errors)
    for name in sim.cfg.bench("bench-1").devices:
        assert sim.bench.device(name).request("status")["kind"]     # every twin still answers
