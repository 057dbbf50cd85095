"""Button actuators: the controller agent's outputs wired across a device's buttons.

A lab presses a meter's or a PPMID's buttons the way a person would, with a
GPIO output of the bench controller wired across each button: an
opto-isolated contact closure in parallel with the switch, or a solenoid
finger on it (lab.yaml ``actuators:``, per device and button; the wiring is
in docs/devices.md, "Wiring a real bench").  The agent owns them like its
relays:

* their safe state is **released**: every button goes up at start, at exit,
  on SIGTERM, on a crash, on E-stop, on ``safe`` and when the lease is lost
  (the agent's ``all_safe``); a release is always accepted;
* pressing needs the bench lease (the command's lease proof) and no latched
  E-stop, and passes the interlocks: one actuation of a device at a time (a
  finger cannot press two things at once), a hold no longer than the
  button's ``max_hold`` (a solenoid's duty limit);
* the agent **time-stamps every edge** with the lab clock: when each button
  went down and came up.  Those are the rig's own action times: an enable
  latency is measured from the release the agent stamped, never from when a
  command was sent.

Bus node ``rig/v1/<bench>/actuator/<device>`` (one per device):

===========  ==============================================  =====================================
op           args                                            result
===========  ==============================================  =====================================
``press``    ``button``                                      ``{id, steps, pressed, due}``: pressed for the
                                                             button's ``press_seconds``
``hold``     ``button``, ``seconds`` (lab)                   the same, held ``seconds``
``type``     ``keys`` (digits), ``enter`` (default true)     a sequence: each key, then ``key_enter``
``release``  (none)                                          every button of the device up now (no lease)
===========  ==============================================  =====================================

An actuation runs on a timer thread of the actuator, not on the command
lane: the op returns at once with the actuation's ``id`` and how long it
will take; every edge is in the retained ``state`` as it happens
(``buttons.<b>.pressed``, ``changed``), and the whole actuation, each edge
stamped, in ``last`` when it ends.  States are published in the order the
edges happened, by one publisher thread (never behind a command's reply).
:class:`ActuatorHandle` (``bench.actuator("esme")``) waits for it and returns an :class:`Actuation`.

The simulated bench follows the same retained state and drives a gpiozero
mock pin of its own to which the twin's button input is wired
(:mod:`rig.sim.buttons`), as it follows the mains relay.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from .bus import MIN_WALL_TIMEOUT, CommandContext, Refused
from .config import ButtonActuator, UnknownPart, normalise_pin
from .contract import Node

if TYPE_CHECKING:  # pragma: no cover
    from .bench_port import BenchPort
    from .bus import Bus
    from .clock import LabClock
    from .config import BenchConfig


class ActuatorAgent(Protocol):
    """The controller agent as its actuators see it (rig/agent.py)."""

    bench_name: str
    cfg: BenchConfig
    clock: LabClock
    factory: Any
    bus: Bus
    actuators: dict[str, DeviceActuator]
    _lock: threading.RLock

    def guard(self, ctx: CommandContext, towards_safe: bool) -> None: ...

log = logging.getLogger(__name__)

#: the most presses one ``type`` may make (a 20-digit UTRN and its enter key, with room)
MAX_KEYS = 40


class PressArgs(BaseModel):
    button: str = Field(..., min_length=1, max_length=40)


class HoldArgs(PressArgs):
    seconds: float = Field(..., gt=0, description="lab seconds the button is held down")


class TypeArgs(BaseModel):
    keys: str = Field(..., min_length=1, max_length=MAX_KEYS, pattern=r"^[0-9]+$")
    enter: bool = True


def actuator_node(bench: str, device: str) -> Node:
    return Node(bench, "actuator", device)


@dataclass
class _Step:
    button: str
    seconds: float
    gap: float
    pressed: float | None = None
    released: float | None = None

    def record(self) -> dict[str, Any]:
        return {"button": self.button, "pressed": self.pressed, "released": self.released,
                "held": None if self.pressed is None or self.released is None
                else round(self.released - self.pressed, 4)}


class DeviceActuator:
    """The buttons of one device: GPIO outputs of the agent, released at rest.

    An output of the agent (``force_safe``, ``close``).  Actuations run one at
    a time on a timer thread of their own; ``force_safe`` cancels the one
    running and releases every button at once."""

    def __init__(self, bench: str, device: str, buttons: dict[str, ButtonActuator], clock: "LabClock", factory,
                 publish: Callable[[Node, dict[str, Any]], object] | None = None):
        from gpiozero import OutputDevice

        self.bench, self.name, self.cfg, self.clock = bench, device, buttons, clock
        self.node = actuator_node(bench, device)
        self._publish = publish
        self._outbox: queue.Queue = queue.Queue()
        self._publisher: threading.Thread | None = None
        self._lock = threading.RLock()
        # every button exists, released, before anything can command it
        self._outputs = {b: OutputDevice(c.pin, active_high=c.active_high, initial_value=False, pin_factory=factory)
                         for b, c in buttons.items()}
        self._changed: dict[str, float | None] = {b: None for b in buttons}
        self._running: dict[str, Any] | None = None     # the actuation in progress
        self._cancel = threading.Event()
        self.last: dict[str, Any] | None = None
        self.count = 0

    # ------------------------------------------------------------------ outputs
    def is_pressed(self, button: str) -> bool:
        out = self._outputs[button]
        return False if out.closed else bool(out.value)

    @property
    def is_safe(self) -> bool:
        return not any(self.is_pressed(b) for b in self._outputs)

    def _drive(self, button: str, down: bool) -> float:
        """Drive one output; the edge's lab time, stamped at once."""
        out = self._outputs[button]
        if down:
            out.on()
        else:
            out.off()
        at = self.clock.now()
        self._changed[button] = at
        return at

    def state(self) -> dict[str, Any]:
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        return {
                "device": self.name,
                "buttons": {b: {"pressed": self.is_pressed(b), "changed": self._changed[b],
                                "pin": normalise_pin(c.pin), "mechanism": c.mechanism,
                                "press_seconds": c.press_seconds, "max_hold": c.max_hold}
                            for b, c in self.cfg.items()},
                "busy": dict(self._running) if self._running else None,
                "last": self.last,
                "safe": self.is_safe,
                "actuations": self.count,
            }

    def _changed_now(self) -> None:
        """Queue the state as it is now for publishing: snapshots are taken
        under the lock, so they go out in the order the edges happened."""
        if self._publish is None:
            return
        with self._lock:
            self._outbox.put(self._state())
            if self._publisher is None:
                self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                                   name=f"actuator-state:{self.bench}/{self.name}")
                self._publisher.start()

    def _publish_loop(self) -> None:
        while True:
            state = self._outbox.get()
            if state is None:
                return
            publish = self._publish
            if publish is None:
                return
            try:
                publish(self.node, state)
            except Exception:  # noqa: BLE001 - the next state must still go
                log.exception("actuator %s/%s: state not published", self.bench, self.name)

    # ------------------------------------------------------------------ actuations
    def _button(self, button: str) -> ButtonActuator:
        cfg = self.cfg.get(button)
        if cfg is None:
            raise Refused(f"no actuator on {self.name}'s button '{button}'; actuators: {', '.join(self.cfg)} "
                          "(lab.yaml actuators)", code="invalid")
        return cfg

    def steps_for(self, op: str, args: Any) -> list[_Step]:
        if op == "press":
            c = self._button(args.button)
            return [_Step(args.button, c.press_seconds, c.gap_seconds)]
        if op == "hold":
            c = self._button(args.button)
            if args.seconds > c.max_hold:
                raise Refused(f"{self.name} {args.button}: a hold of {args.seconds:g} s is longer than its "
                              f"max_hold {c.max_hold:g} s (lab.yaml)", requirement="LAB-2")
            return [_Step(args.button, args.seconds, c.gap_seconds)]
        keys = [f"key_{k}" for k in args.keys] + (["key_enter"] if args.enter else [])
        steps = []
        for key in keys:
            c = self._button(key)
            steps.append(_Step(key, c.press_seconds, c.gap_seconds))
        return steps

    def start(self, op: str, steps: list[_Step], sender: str) -> dict[str, Any]:
        """Start an actuation on the timer thread.  The caller has checked the
        lease and the E-stop under the agent's lock; anything that makes the
        bench safe after that cancels it before its first edge."""
        with self._lock:
            if self._running is not None:
                raise Refused(f"{self.name}: actuation {self._running['id']} ({self._running['op']}) is still "
                              "running: one at a time per device", code="busy")
            seconds = sum(s.seconds + s.gap for s in steps) - steps[-1].gap
            actuation = {"id": uuid.uuid4().hex[:12], "op": op, "sender": sender,
                         "buttons": [s.button for s in steps], "seconds": round(seconds, 4),
                         "started": self.clock.now()}
            self._cancel.clear()
            self._cancel_reason = None
            self._running = actuation
            self.count += 1
        threading.Thread(target=self._run, args=(actuation, steps), name=f"actuator:{self.bench}/{self.name}",
                         daemon=True).start()
        return {"id": actuation["id"], "op": op, "seconds": actuation["seconds"], "buttons": actuation["buttons"]}

    def _run(self, actuation: dict[str, Any], steps: list[_Step]) -> None:
        reason = None
        try:
            for i, step in enumerate(steps):
                if i > 0 and self.clock.wait_event(self._cancel, steps[i - 1].gap):
                    break
                with self._lock:
                    if self._cancel.is_set():
                        break
                    step.pressed = self._drive(step.button, True)
                self._changed_now()
                if self.clock.wait_event(self._cancel, max(0.0, step.pressed + step.seconds - self.clock.now())):
                    break
                with self._lock:
                    if self._cancel.is_set():
                        break
                    step.released = self._drive(step.button, False)
                self._changed_now()
        except Exception as exc:  # noqa: BLE001 - the buttons go up whatever happened
            log.exception("actuator %s/%s failed", self.bench, self.name)
            reason = f"actuation failed: {type(exc).__name__}: {exc}"
        finally:
            self._finish(actuation, steps, reason)

    def _finish(self, actuation: dict[str, Any], steps: list[_Step], reason: str | None) -> None:
        with self._lock:
            for step in steps:
                if step.pressed is not None and step.released is None:
                    if self.is_pressed(step.button):
                        step.released = self._drive(step.button, False)
                    else:
                        step.released = self._changed[step.button]
            interrupted = reason or (self._cancel_reason if self._cancel.is_set() else None)
            records = [s.record() for s in steps if s.pressed is not None]
            self.last = {"id": actuation["id"], "op": actuation["op"], "sender": actuation["sender"],
                         "steps": records, "pressed": records[0]["pressed"] if records else None,
                         "released": records[-1]["released"] if records else None,
                         "complete": interrupted is None and len(records) == len(steps),
                         "interrupted": interrupted}
            if self._running is actuation:
                self._running = None
        self._changed_now()

    _cancel_reason: str | None = None

    # ------------------------------------------------------------------ output protocol
    def force_safe(self, reason: str) -> bool:
        """Every button up now (cancelling an actuation); True if any was down."""
        with self._lock:
            self._cancel_reason = reason
            self._cancel.set()
            changed = False
            for b in self._outputs:
                if self.is_pressed(b):
                    self._drive(b, False)
                    changed = True
        if changed:
            log.warning("actuator %s/%s released: %s", self.bench, self.name, reason)
            self._changed_now()
        return changed

    def close(self) -> None:
        """Release, then free the pins (they float: the wiring holds the opto off)."""
        with self._lock:
            self._cancel.set()
            for out in self._outputs.values():
                if not out.closed:
                    out.off()
                    out.close()
            self._outbox.put(None)


def build_actuators(agent: ActuatorAgent) -> dict[str, DeviceActuator]:
    """The bench's actuators, every button released (the agent makes them
    with its relays, before anything can command them)."""
    return {device: DeviceActuator(agent.bench_name, device, buttons, agent.clock, agent.factory,
                                   publish=agent.bus.publish_state)
            for device, buttons in agent.cfg.actuators.items()}


def serve_actuators(agent: ActuatorAgent) -> None:
    """Serve the actuators' ops on the agent's bus and publish their state."""
    for act in agent.actuators.values():

        def actuate(op: str, a: DeviceActuator = act):
            def handler(args: Any, ctx: CommandContext) -> dict[str, Any]:
                steps = a.steps_for(op, args)
                with agent._lock:   # the guard and the first edge as one: an E-stop cannot fall between
                    agent.guard(ctx, towards_safe=False)
                    return a.start(op, steps, ctx.sender)
            return handler

        s = agent.bus.serve
        s(act.node, "press", actuate("press"), PressArgs)
        s(act.node, "hold", actuate("hold"), HoldArgs)
        s(act.node, "type", actuate("type"), TypeArgs)
        def release(_args: Any, ctx: CommandContext, a: DeviceActuator = act) -> dict[str, Any]:
            return {"changed": a.force_safe(f"release requested by {ctx.sender}")}

        s(act.node, "release", release, inline=True, safe=True)
        def status(_args: Any, _ctx: CommandContext, a: DeviceActuator = act) -> dict[str, Any]:
            return a.state()

        s(act.node, "status", status, inline=True)
        agent.bus.publish_state(act.node, act.state())


# ----------------------------------------------------------------------------- rig scripts
class ActuationError(RuntimeError):
    """An actuation was cancelled before it pressed anything (safe, E-stop, lease lost)."""


@dataclass(frozen=True)
class Actuation:
    """What the agent did, every edge stamped by it (lab time): ``pressed``
    (the first button down), ``released`` (the last up), each step's
    ``{button, pressed, released, held}``; ``interrupted`` says why it
    stopped early (safe, E-stop, lease lost), else None."""

    id: str
    op: str
    pressed: float
    released: float
    steps: tuple[dict[str, Any], ...]
    interrupted: str | None = None

    @property
    def held(self) -> float:
        return self.released - self.pressed


class ActuatorHandle:
    """The actuators on one device's buttons (``bench.actuator("ppmid")``).

    ::

        act = bench.actuator("esme")
        act.press("enable")                 # the enable prompt shows
        done = act.hold("enable", 2.5)      # returns after the agent released it
        done.released                       # the agent's stamp: enable latencies run from here
        bench.actuator("ppmid").type("12345678901234567890")   # a UTRN on the keypad, then enter

    Each call returns when the agent reports the actuation finished, with
    its own time stamps; it needs the bench lease."""

    def __init__(self, bench: BenchPort, device: str):
        buttons = bench.cfg.actuators.get(device)
        if not buttons:
            raise UnknownPart(f"bench {bench.name} has no actuator on {device}'s buttons (lab.yaml actuators)")
        self.bench, self.device, self.buttons = bench, device, buttons
        self.node = actuator_node(bench.name, device)
        self._state = bench.watch(self.node.state)

    def has(self, button: str) -> bool:
        return button in self.buttons

    @property
    def state(self) -> dict[str, Any]:
        return self._state.get(self.node.state) or {}

    def _run(self, op: str, args: dict[str, Any], seconds: float) -> Actuation:
        started = self.bench.request(self.node, op, args, timeout=10.0)
        ident = started["id"]
        wait = float(started.get("seconds") or seconds) + 10.0
        state = self._state.wait_for(lambda s: (s.get("last") or {}).get("id") == ident, wait, topic=self.node.state,
                                     min_wall=MIN_WALL_TIMEOUT)
        if state is None:
            raise TimeoutError(f"{self.bench.name}: actuator {self.device} {op} {ident} not reported finished within "
                               f"{wait:g} lab s")
        last = state["last"]
        if not last.get("steps"):
            raise ActuationError(f"{self.bench.name}: actuator {self.device} {op} {ident} pressed nothing: "
                                 f"{last.get('interrupted') or 'cancelled'}")
        self.bench.progress()
        return Actuation(ident, op, float(last["pressed"]), float(last["released"]), tuple(last["steps"]),
                         last.get("interrupted"))

    def press(self, button: str) -> Actuation:
        """Press ``button`` for its ``press_seconds`` and let go."""
        return self._run("press", {"button": button}, self.buttons[button].press_seconds if button in self.buttons
                         else 0.0)

    def hold(self, button: str, seconds: float) -> Actuation:
        """Hold ``button`` down ``seconds`` lab seconds."""
        return self._run("hold", {"button": button, "seconds": seconds}, seconds)

    def type(self, keys: str, enter: bool = True) -> Actuation:
        """Press each digit of ``keys`` on the keypad, then ``key_enter``."""
        return self._run("type", {"keys": keys, "enter": enter}, 0.0)

    def release(self) -> bool:
        """Every button of the device up now (no lease needed)."""
        return bool(self.bench.request(self.node, "release").get("changed"))

    def __repr__(self) -> str:
        return f"<actuators {self.bench.name}/{self.device}: {', '.join(self.buttons)}>"
