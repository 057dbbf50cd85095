"""The bench's button actuators wired to the twins' buttons, through GPIO.

On a real bench an actuator output of the controller closes a contact
across a meter's button, and the meter's own input pin sees the button go
down.  The simulated bench does the same with gpiozero mock pins: the world
follows each actuator's retained state from the bus (as it follows the
mains relay, :mod:`rig.sim.world`) and drives a mock pin of its own; a
gpiozero :class:`~gpiozero.Button` on that pin is the twin's button input,
whose edges reach the twin's ``button_input(button, down, at)``.  ``at`` is
the edge's lab time as the agent stamped it (the wire changes at once; the
simulation hears of it a bus hop later), unless the stamp is older than the
hop can explain.

When the agent is gone (presence offline or silent) its outputs fall to
their safe state, released, as the wiring of a real bench makes them: every
pressed button goes up.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..contract import ROOT

if TYPE_CHECKING:  # pragma: no cover
    from .bench import SimBench

log = logging.getLogger(__name__)

#: wall seconds an edge may take to reach the simulation and still be dated by the agent's stamp
MAX_HOP = 2.0


class ButtonWiring:
    """The twins' button inputs on mock GPIO pins, driven by the agent's actuators."""

    def __init__(self, world: "SimBench", twins: dict[str, Any]):
        from gpiozero import Button
        from gpiozero.pins.mock import MockFactory

        self.world, self.clock = world, world.clock
        self.factory = MockFactory()
        self._lock = threading.Lock()
        self._stamp: dict[tuple[str, str], float] = {}
        self._pins: dict[tuple[str, str], Any] = {}
        self._inputs: list[Any] = []
        for device, buttons in world.cfg.actuators.items():
            twin = twins.get(device)
            if twin is None or not hasattr(twin, "button_input"):
                continue      # a real device: the actuator's wire goes to its own button
            for button, cfg in buttons.items():
                inp = Button(cfg.pin, pull_up=False, bounce_time=None, pin_factory=self.factory)
                inp.when_pressed = functools.partial(self._edge, twin, device, button, True)
                inp.when_released = functools.partial(self._edge, twin, device, button, False)
                self._inputs.append(inp)
                self._pins[(device, button)] = inp.pin
        self.topic = f"{ROOT}/{world.bench_name}/actuator/+/state"

    @property
    def wired(self) -> list[tuple[str, str]]:
        return sorted(self._pins)

    def start(self) -> "ButtonWiring":
        if self._pins:
            self.world.bus.subscribe(self.topic, self._on_state)
            self.world.on_agent_change.append(self._agent_changed)
        return self

    def stop(self) -> None:
        if self._pins:
            self.world.bus.unsubscribe(self.topic, self._on_state)
        for inp in self._inputs:
            inp.close()

    # ------------------------------------------------------------------ edges
    def _edge(self, twin: Any, device: str, button: str, down: bool) -> None:
        at = self._stamp.get((device, button), self.clock.now())
        try:
            twin.button_input(button, down, at)
        except Exception:  # noqa: BLE001 - a twin's fault must not stop the wiring
            log.exception("%s: button %s %s", device, button, "down" if down else "up")

    def _drive(self, device: str, button: str, down: bool, changed: Any) -> None:
        pin = self._pins.get((device, button))
        if pin is None or bool(pin.state) == down:
            return
        now = self.clock.now()
        at = float(changed) if isinstance(changed, (int, float)) else None
        if at is None or not now - self.clock.lab_seconds(MAX_HOP) <= at <= now:
            at = now
        self._stamp[(device, button)] = at
        if down:
            pin.drive_high()
        else:
            pin.drive_low()

    def _on_state(self, topic: str, payload: Any) -> None:
        if not isinstance(payload, dict) or not self.world.agent_online:
            return
        device = topic.split("/")[-2]
        with self._lock:
            for button, b in (payload.get("buttons") or {}).items():
                if isinstance(b, dict) and isinstance(b.get("pressed"), bool):
                    self._drive(device, button, b["pressed"], b.get("changed"))

    def _agent_changed(self, online: bool) -> None:
        """The agent is gone: its outputs fall released (the wiring's pull resistors)."""
        if online:
            return
        with self._lock:
            for device, button in self._pins:
                self._drive(device, button, False, None)
