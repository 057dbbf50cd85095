"""``rig probe``: bench bring-up.  Does every part lab.yaml declares answer?

The first thing to run on a new bench.  For each bench it asks, over the
bus and nothing else:

* the **controller agent**: presence, then ``status`` (version, pin factory,
  the relays and actuators it serves);
* each **relay** and each device's **actuators**: their retained state as the
  agent publishes it (every button released at rest);
* each **instrument**: ``identify`` through the agent (``*IDN?``; for an
  optical probe the meter's identification message), checked against what
  the declared driver's instrument says it is (its ``identity`` in rig/parts.py);
  a failure names the instrument and its address;
* the **HAN tap** (``links``), the simulated world, each device with a
  node of its own (presence), a **zigpy radio** (its bridge's ``status``);
* the **head end** (:meth:`rig.headend.HeadEnd.probe`).

Every check has a deadline of a few wall seconds; nothing is switched.  A
meter on a de-energised bench does not answer its optical port: the probe
says so and counts the probe as answering, unless ``--power`` is given, in
which case it leases the bench, switches mains on, reads the meter's
identification and lets the bench go safe again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .bus import Bus, BusError, CommandError
from .config import LabConfig
from .contract import Node, agent_node

#: wall seconds a part gets to show its presence
PRESENCE_WAIT = 1.5
#: lab seconds (at least 2 wall s) a part's answer may take
ANSWER_TIMEOUT = 5.0


@dataclass
class Row:
    bench: str
    part: str
    kind: str
    address: str
    ok: bool
    detail: str
    seconds: float = 0.0


class Prober:
    def __init__(self, lab: Any, bench: str):
        self.lab, self.bench = lab, bench
        self.cfg = lab.cfg.bench(bench)
        self.bus: Bus = lab.bus
        self.rows: list[Row] = []

    def row(self, part: str, kind: str, address: str, ok: bool, detail: str, t0: float) -> Row:
        r = Row(self.bench, part, kind, address, ok, detail, round(time.monotonic() - t0, 2))
        self.rows.append(r)
        return r

    def presence(self, node: Node) -> dict[str, Any] | None:
        w = self.bus.watch(node.presence)
        try:
            return w.wait_for(lambda p: p.get("online"), 0.0, topic=node.presence, min_wall=PRESENCE_WAIT)
        finally:
            w.close()

    def retained(self, node: Node) -> dict[str, Any] | None:
        w = self.bus.watch(node.state)
        try:
            return w.wait_for(lambda s: bool(s), 0.0, topic=node.state, min_wall=PRESENCE_WAIT)
        finally:
            w.close()

    def ask(self, node: Node, op: str, args: dict[str, Any] | None = None, timeout: float = ANSWER_TIMEOUT) -> dict:
        return self.bus.request(node, op, args or {}, timeout=timeout)

    # ------------------------------------------------------------------ parts
    def agent(self) -> bool:
        t0 = time.monotonic()
        node = agent_node(self.bench)
        host = self.cfg.controller.host
        if not self.presence(node):
            self.row("controller", "agent", host, False, f"not online: is `rig agent --bench {self.bench}` running "
                     f"on {host}?", t0)
            return False
        try:
            status = self.ask(node, "status")
        except CommandError as exc:
            self.row("controller", "agent", host, False, f"online but does not answer: {exc.reason}", t0)
            return False
        lease = status.get("lease")
        estop = (status.get("estop") or {}).get("latched")
        self.row("controller", "agent", host, True, f"rig {status.get('version')}, pin factory "
                 f"{status.get('pin_factory')}" + (f", leased by {lease['holder']}" if lease else "")
                 + (", E-STOP LATCHED" if estop else ""), t0)
        return True

    def relays(self) -> None:
        for name, rc in self.cfg.relays.items():
            t0 = time.monotonic()
            state = self.retained(Node(self.bench, "relay", name))
            where = f"GPIO {rc.pin}"
            if not state:
                self.row(name, "relay", where, False, "no state from the agent", t0)
            else:
                self.row(name, "relay", where, True, f"{state.get('state')} (safe state {state.get('safe_state')})", t0)

    def actuators(self) -> None:
        from .actuator import actuator_node

        for device, buttons in self.cfg.actuators.items():
            t0 = time.monotonic()
            where = ", ".join(f"{b} GPIO {c.pin}" for b, c in buttons.items())
            try:
                state = self.ask(actuator_node(self.bench, device), "status")
            except CommandError as exc:
                self.row(f"{device} buttons", "actuators", where, False, exc.reason, t0)
                continue
            served = set((state.get("buttons") or {}))
            missing = sorted(set(buttons) - served)
            pressed = sorted(b for b, v in (state.get("buttons") or {}).items() if v.get("pressed"))
            ok = not missing
            detail = (f"{len(served)} button{'' if len(served) == 1 else 's'}"
                      + (f", missing {', '.join(missing)}" if missing else "")
                      + (f", pressed now: {', '.join(pressed)}" if pressed else ", all released"))
            self.row(f"{device} buttons", "actuators", where if len(where) < 60 else f"{len(buttons)} GPIO outputs",
                     ok, detail, t0)

    def instruments(self) -> None:
        from . import parts

        for name, ic in self.cfg.instruments.items():
            t0 = time.monotonic()
            node = Node(self.bench, "instrument", name)
            state = self.retained(node) or {}
            address = state.get("address") or ic.address
            kind = f"{ic.kind} ({ic.driver})"
            try:
                identity = self.ask(node, "identify", timeout=max(ANSWER_TIMEOUT, self.lab.clock.lab_seconds(
                    3 * ic.timeout + 2.0)))["identity"]
            except CommandError as exc:
                if ic.kind == "optical_probe" and exc.code == "timeout":
                    meter = ic.device or self.cfg.wiring.meter or "the meter"
                    self.row(name, kind, address, True, f"port open; {meter} does not answer it: no supply? "
                             "(`rig probe --power` reads its identification)", t0)
                else:
                    self.row(name, kind, address, False, exc.reason, t0)
                continue
            pattern = parts.instrument_kind(ic.kind).driver(ic.driver).identity
            if pattern and not re.search(pattern, identity or "", re.IGNORECASE):
                self.row(name, kind, address, False, f"answers {identity!r}, not a {ic.driver} "
                         f"(expected /{pattern}/)", t0)
            else:
                self.row(name, kind, address, True, identity, t0)

    def devices(self) -> None:
        for name, dev in self.cfg.devices.items():
            if dev.sealed:
                continue        # a black box: its actuators, optical port and the HAN tap are probed instead
            t0 = time.monotonic()
            node = Node(self.bench, "device", name)
            kind = f"{dev.kind} ({dev.backend})"
            where = dev.id if dev.backend != "zigpy" else str(dev.adapter.get("path") or dev.adapter.get("radio"))
            if not self.presence(node):
                self.row(name, kind, where, False, "no presence on the bus" + (
                    " (is `rig sim` running?)" if dev.backend == "sim" else
                    f" (is its adapter running: `python -m rig.adapters --bench {self.bench}`?)"), t0)
                continue
            if dev.backend == "zigpy":
                try:
                    status = self.ask(node, "status", timeout=10.0)
                except CommandError as exc:
                    self.row(name, "zigpy radio", where, False, exc.reason, t0)
                    continue
                self.row(name, "zigpy radio", where, True, str(status.get("summary") or "answers"), t0)
            else:
                self.row(name, kind, where, True, "online", t0)

    def han_tap(self) -> None:
        t0 = time.monotonic()
        node = Node(self.bench, "han", "medium")
        if not self.presence(node):
            if self.cfg.devices:
                self.row("han tap", "HAN tap", node.base, True, "none on this bench (its checks will skip)", t0)
            return
        try:
            links = self.ask(node, "links").get("links") or {}
        except CommandError as exc:
            self.row("han tap", "HAN tap", node.base, False, exc.reason, t0)
            return
        self.row("han tap", "HAN tap", node.base, True, f"{len(links)} links seen", t0)

    def world(self) -> None:
        from .launch import bench_has_sim, sim_node

        if not bench_has_sim(self.lab.cfg, self.bench):
            return
        t0 = time.monotonic()
        node = sim_node(self.bench)
        ok = bool(self.presence(node))
        self.row("simulated world", "sim", node.base, ok, "online" if ok else
                 f"not online: is `rig sim --bench {self.bench}` running?", t0)

    def head_end(self) -> None:
        t0 = time.monotonic()
        he_cfg = self.cfg.head_end
        try:
            he = self.lab.head_end(self.bench)
            ok, detail = he.probe()
        except Exception as exc:  # noqa: BLE001 - a head end that cannot be made is a finding, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        address = getattr(he_cfg, "base_url", None) or f"rig/v1/{self.bench}/dcc/headend"
        self.row("head end", f"head end ({he_cfg.kind})", address, ok, detail, t0)

    def power_and_identify(self) -> None:
        """Lease the bench, mains on, read each optical probe's meter, release."""
        from .lab import Bench

        t0 = time.monotonic()
        probes = [n for n, i in self.cfg.instruments.items() if i.kind == "optical_probe"]
        if not probes or not (self.cfg.wiring.mains_relay or self.cfg.wiring.supply):
            return
        bench = Bench(self.lab, self.bench, lease=True)
        try:
            bench.mains.on()
            for name in probes:
                node = Node(self.bench, "instrument", name)
                deadline = time.monotonic() + 10.0
                identity, why = None, ""
                while identity is None and time.monotonic() < deadline:
                    try:
                        identity = self.ask(node, "identify")["identity"]
                    except CommandError as exc:
                        why = exc.reason
                ic = self.cfg.instruments[name]
                before = next((i for i, r in enumerate(self.rows) if r.part == name), None)
                row = self.row(name, f"{ic.kind} ({ic.driver})",
                               self.rows[before].address if before is not None else ic.address,
                               identity is not None, identity or f"no answer with mains on: {why}", t0)
                if before is not None:      # in place of the row that said the meter was dark
                    self.rows.pop()
                    self.rows[before] = row
        finally:
            bench.close()   # the lease goes: every output safe


def probe(lab: Any, benches: list[str] | None = None, power: bool = False) -> list[Row]:
    """Probe every part of the lab's benches; one row per part."""
    rows: list[Row] = []
    for name in benches or list(lab.cfg.benches):
        p = Prober(lab, name)
        if p.agent():
            p.relays()
            p.actuators()
            p.instruments()
        p.world()
        p.han_tap()
        p.devices()
        p.head_end()
        if power and all(r.ok for r in p.rows):
            p.power_and_identify()
        rows += p.rows
    return rows


def connect(cfg: LabConfig, endpoint: Any = None) -> Any:
    """A Lab on the lab's broker, or a BusError saying the broker is not there."""
    from .lab import Lab

    return Lab.open(cfg, endpoint=endpoint)


__all__ = ["Row", "probe", "connect", "BusError"]
