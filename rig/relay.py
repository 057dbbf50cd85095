"""GPIO relays and the E-stop input of a bench controller, through gpiozero.

The pin factory is the backend: ``mock`` (gpiozero's MockFactory, for the
simulated lab and tests) or ``lgpio`` on a Raspberry Pi.  Nothing above
:func:`pin_factory` knows which one it got.

A relay always has a declared safe state, is put in it when created, and
refuses to switch twice within its minimum interval (LAB-2) unless the agent
forces it safe.  Software is the second line of defence: gpiozero releases a
pin as a floating input when it closes, so the first line on a real bench is
the wiring (normally-open contacts, a pull resistor on the driver input).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from gpiozero import Button, OutputDevice

from .bus import Refused
from .clock import LabClock
from .config import EStopConfig, RelayConfig


def pin_factory(name: str):
    """The gpiozero pin factory lab.yaml names (``controller.pin_factory``)."""
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    try:
        if name == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if name == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if name == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        if name == "native":
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
    except (ImportError, OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"GPIO pin factory '{name}' is not usable on this machine ({exc}); "
            "on a Raspberry Pi install python3-lgpio, elsewhere set controller.pin_factory: mock"
        ) from None
    raise ValueError(f"unknown pin factory '{name}'")


class Relay:
    """One GPIO-driven relay with a safe state and a minimum switching interval.

    >>> relay.is_on
    False
    >>> relay.set(True)        # raises Refused if switched too recently
    """

    def __init__(self, name: str, cfg: RelayConfig, clock: LabClock, factory,
                 on_change: Callable[["Relay", str], None] | None = None):
        self.name, self.cfg, self.clock = name, cfg, clock
        self.safe_on = cfg.safe_state == "on"
        self._on_change = on_change
        self._lock = threading.Lock()
        self._device = OutputDevice(cfg.pin, active_high=cfg.active_high, initial_value=self.safe_on,
                                    pin_factory=factory)
        self.last_change: float | None = None
        self.reason = "start: safe state"

    @property
    def is_on(self) -> bool:
        if self._device.closed:       # closed: it was left in its safe state
            return self.safe_on
        return bool(self._device.value)

    @property
    def is_safe(self) -> bool:
        return self.is_on == self.safe_on

    @property
    def pin(self):
        return self._device.pin

    def state(self) -> dict:
        on = self.is_on   # one read of the pin: state and safe agree
        return {
            "state": "on" if on else "off",
            "safe_state": self.cfg.safe_state,
            "safe": on == self.safe_on,
            "changed": self.last_change,
            "reason": self.reason,
            "min_interval": self.cfg.min_interval,
        }

    def set(self, on: bool, reason: str = "command") -> bool:
        """Switch, honouring the minimum interval; returns True if it changed."""
        with self._lock:
            if self.is_on == on:
                return False
            now = self.clock.now()
            if self.last_change is not None and now - self.last_change < self.cfg.min_interval:
                raise Refused(
                    f"relay {self.name} switched {now - self.last_change:.2f} lab s ago; "
                    f"its minimum switching interval is {self.cfg.min_interval:g} s",
                    requirement="LAB-2",
                )
            self._switch(on, reason, now)
            return True

    def force_safe(self, reason: str) -> bool:
        """Go to the safe state now, whatever the interval; True if it changed."""
        with self._lock:
            if self.is_safe:
                return False
            self._switch(self.safe_on, reason, self.clock.now())
            return True

    def _switch(self, on: bool, reason: str, now: float) -> None:
        if on:
            self._device.on()
        else:
            self._device.off()
        self.last_change, self.reason = now, reason
        if self._on_change is not None:
            self._on_change(self, reason)

    def close(self) -> None:
        """Leave the relay safe, then release the pin (it floats: see module doc)."""
        if not self._device.closed:
            self._device.value = self.safe_on
            self._device.close()


class EStop:
    """The E-stop input: a pressed button trips the agent, which latches."""

    def __init__(self, cfg: EStopConfig, factory, on_press: Callable[[], None]):
        kwargs = {"pull_up": cfg.pull_up, "bounce_time": cfg.bounce_time, "pin_factory": factory}
        if cfg.pull_up is None:
            kwargs["active_state"] = cfg.active_state
        self._button = Button(cfg.pin, **kwargs)
        self._button.when_pressed = on_press

    @property
    def is_pressed(self) -> bool:
        return bool(self._button.is_pressed)

    @property
    def pin(self):
        return self._button.pin

    def close(self) -> None:
        self._button.close()
