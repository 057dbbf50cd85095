"""Which benches a run uses, and whether each can run now.

A lab run (``rig run``) goes to every bench of the lab unless ``--bench``
names some.  Before it starts, each bench is asked on the bus whether it can
take a run: its controller agent must be online (a fresh heartbeat), not
leased by someone else and not E-stopped.  A bench that cannot run is
reported as *not run* with that reason; the others go ahead.

::

    benches = select_benches(cfg, "bench-1,bench-2")      # or None / "all": every bench
    reasons = preflight(endpoint, benches)               # {"bench-2": "agent offline (...)"}

While a run goes, :class:`AgentWatch` follows each agent's presence, so a
bench whose agent disappears is cut short (its remaining checks are *not
run*) instead of failing check after check on timeouts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .config import LabConfig, UnknownPart
from .contract import agent_node

#: a presence heartbeat older than this many intervals (plus a second) is stale
STALE_INTERVALS = 3


def select_benches(cfg: LabConfig, spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The benches named by ``spec`` (comma-separated names, a list, or
    None/``all`` for every bench of the lab), in lab.yaml order, checked."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(cfg.benches)
    names = spec.split(",") if isinstance(spec, str) else [n for s in spec for n in str(s).split(",")]
    chosen: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name == "all":
            return list(cfg.benches)
        cfg.bench(name)  # UnknownPart naming the lab's benches
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise UnknownPart(f"no bench named; benches of {cfg.source}: {', '.join(cfg.benches)}")
    return [b for b in cfg.benches if b in chosen]


def bench_of_nodeid(nodeid: str, benches: list[str]) -> str | None:
    """The bench a test id carries (``test_x[bench-2]``, ``test_x[bench-2-armed]``)."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    params = nodeid[nodeid.rindex("[", 0, len(nodeid)) + 1:-1]
    # the bench is the first parameter (fixtures/plugin.py puts it there)
    for bench in sorted(benches, key=len, reverse=True):
        if params == bench or params.startswith(bench + "-"):
            return bench
    return None


def presence_problem(presence: Any, now_wall: float | None = None) -> str | None:
    """Why an agent's presence payload does not show it online (None: it does)."""
    if not isinstance(presence, dict):
        return "agent offline: it has never announced itself on the bus (is `rig agent` running?)"
    if not presence.get("online"):
        why = presence.get("reason") or "offline"
        return f"agent offline ({why})"
    wall, interval = presence.get("wall"), float(presence.get("heartbeat_interval") or 1.0)
    now_wall = time.time() if now_wall is None else now_wall
    if wall is not None and now_wall - float(wall) > STALE_INTERVALS * interval + 1:
        return f"agent silent: last heartbeat {now_wall - float(wall):.0f} s ago"
    return None


def state_problem(state: Any, holder_prefix: str | None = None) -> str | None:
    """Why an agent's retained state bars a run (leased by another, E-stop)."""
    if not isinstance(state, dict):
        return None
    estop = state.get("estop") or {}
    if estop.get("latched"):
        return f"E-stop latched ({estop.get('reason') or 'no reason given'}): reset it with `rig estop BENCH reset`"
    lease = state.get("lease")
    if lease and not (holder_prefix and str(lease.get("holder", "")).startswith(holder_prefix)):
        since = lease.get("since")
        when = ""
        if since is not None:
            from .clock import LabClock

            when = f" since {LabClock.iso(float(since))} (lab time)"
        return f"leased by {lease.get('holder', 'someone')}{when}"
    return None


def preflight(endpoint, benches: list[str], wait: float = 3.5) -> dict[str, str]:
    """``{bench: reason}`` for each bench that cannot take a run now.

    Reads each agent's retained presence and state; an agent whose retained
    presence looks stale is given ``wait`` wall seconds to send a fresh
    heartbeat (clocks of two hosts may disagree; a new message cannot)."""
    from .bus import Bus

    if not benches:
        return {}
    got: dict[str, dict[str, Any]] = {b: {} for b in benches}
    fresh: dict[str, int] = {b: 0 for b in benches}
    cond = threading.Condition()
    topics = {}
    for b in benches:
        node = agent_node(b)
        topics[node.presence] = (b, "presence")
        topics[node.state] = (b, "state")

    def on_msg(topic: str, payload: Any) -> None:
        where = topics.get(topic)
        if where is None:
            return
        with cond:
            got[where[0]][where[1]] = payload
            if where[1] == "presence":
                fresh[where[0]] += 1
            cond.notify_all()

    reasons: dict[str, str] = {}
    client_id = f"preflight-{threading.get_ident() % 100000}-{int(time.time() * 1000) % 100000}"
    with Bus(endpoint, client_id=client_id) as bus:
        for topic in topics:
            bus.subscribe(topic, on_msg)
        bus.wait_subscribed(5.0)
        deadline = time.monotonic() + wait
        with cond:
            # retained messages arrive right after the subscription (presence and
            # state of a live agent): wait for both of every agent, briefly
            cond.wait_for(lambda: all(fresh[b] >= 1 and "state" in got[b] for b in benches), timeout=min(1.0, wait))
            for b in benches:
                if presence_problem(got[b].get("presence")) is None:
                    continue
                # stale or missing: a live agent will say so within a few heartbeats
                seen = fresh[b]
                cond.wait_for(lambda: fresh[b] > seen and presence_problem(got[b].get("presence")) is None,
                              timeout=max(0.0, deadline - time.monotonic()))
        for b in benches:
            problem = presence_problem(got[b].get("presence")) or state_problem(got[b].get("state"))
            if problem:
                reasons[b] = problem
    return reasons


class AgentWatch:
    """Follows the agents of the benches a worker runs on: ``lost(bench)`` is
    the reason a bench can no longer run (agent gone, E-stop), sticky once
    set: a bench cut short stays cut short for the rest of the run."""

    def __init__(self, bus, benches: list[str], not_run: dict[str, str] | None = None):
        self.bus = bus
        self._reasons: dict[str, str] = dict(not_run or {})
        self._watches = {b: bus.watch(agent_node(b).presence) for b in benches}
        self._lock = threading.Lock()

    def reason(self, bench: str) -> str | None:
        """Why ``bench`` cannot run now, or None."""
        with self._lock:
            if bench in self._reasons:
                return self._reasons[bench]
        watch = self._watches.get(bench)
        if watch is None:
            return None
        presence = watch.get(agent_node(bench).presence)
        if presence is None:
            return None  # not heard yet: the lease request will tell
        problem = presence_problem(presence)
        if problem:
            self.lose(bench, problem)
        return problem

    def lose(self, bench: str, reason: str) -> None:
        with self._lock:
            self._reasons.setdefault(bench, reason)

    def close(self) -> None:
        for w in self._watches.values():
            w.close()
