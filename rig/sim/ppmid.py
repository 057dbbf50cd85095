"""The simulated PPMID: the prepayment display and buttons on the HAN (SUP-3).

Buttons (bus ops of the device node)::

    press("enable")                 the enable prompt shows
    hold("enable", 2.5)             held >= its own hold_time while the
                                    prompt shows: send "enable supply"
    press("emergency_credit")       ask the meter for emergency credit
    press("utrn", code="0100...")   send a top-up code the consumer typed
    press("display")                next display page

Each command goes to the paired ESME through the hub as a Prepayment cluster
frame stamped with the moment of the press (``request_date_time``; for the
enable, the moment the hold ends), sent once, at once, and the reply says
whether it was delivered and what the meter answered.  When the HAN link is
down or the meter does not answer, the command fails and the display says
so: a correct PPMID never keeps a press to send later, and never sends an
enable nobody held (SUP-7, safety property 4).

Fault profiles (read once, :class:`Quirks`): ``queues_presses`` (keeps a
press made with the link down and sends it, with its original time, when
the link returns), ``queues_presses_across_outage`` (keeps a press the
meter did not answer, e.g. while it had no mains, and sends it re-stamped
when the meter answers again), ``enables_without_hold`` (a press of enable
sends it), ``auto_enables_when_armed`` (sends enable by itself when its
display shows the supply armed), ``slow_to_send`` (sends the enable
:data:`SLOW_SEND` lab seconds after the hold, with the hold's time),
``talks_past_the_hub`` (sends to the meter directly, not through the
coordinator: HAN-2).

The display mirrors the meter's prepayment items (credit, emergency credit,
low credit, supply state), read from the meter every
:data:`REFRESH_PERIOD` lab seconds; it shows "NO SIGNAL" when the reads fail.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..bus import CommandContext, Refused
from ..protocol import zcl
from .han import HanFrame
from .twin import FaultFlags, Twin

log = logging.getLogger(__name__)

REFRESH_PERIOD = 10.0
PROMPT_SECONDS = 30.0
#: slow_to_send: lab seconds between the end of the hold and the enable going out
SLOW_SEND = 8.0
#: lab seconds the PPMID waits for the meter's answer
RESPONSE_TIMEOUT = 10.0
SUPPLY = {0: "disabled", 1: "armed", 2: "enabled"}


@dataclass(frozen=True)
class Quirks(FaultFlags):
    """The PPMID's fault profiles, read once from lab.yaml."""

    queues_presses: bool = False
    queues_presses_across_outage: bool = False
    enables_without_hold: bool = False
    auto_enables_when_armed: bool = False
    slow_to_send: bool = False
    talks_past_the_hub: bool = False



class PressArgs(BaseModel):
    button: Literal["enable", "emergency_credit", "utrn", "display"]
    code: str | None = Field(None, max_length=40, description="utrn: the 20-digit code")


class HoldArgs(BaseModel):
    button: Literal["enable", "emergency_credit", "utrn", "display"]
    seconds: float = Field(..., gt=0, le=60)


class Ppmid(Twin):
    kind = "ppmid"

    def __init__(self, world, han, name, cfg):
        super().__init__(world, han, name, cfg)
        bench = world.cfg
        self.meter = cfg.settings.paired_meter or next(
            (n for n, d in bench.devices.items() if d.kind == "esme"), None)
        self.hold_time = cfg.settings.hold_time
        self.quirks = Quirks.of(self.faults)
        self.radio.direct = self.quirks.talks_past_the_hub
        self._auto_sent_for: float | None = None
        self.prompt_until = float("-inf")
        self.page = 0
        self.mirror: dict[str, Any] = {}
        self.updated: float | None = None
        self.signal = False
        self.message = ""
        self.queue: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self._pushes: dict[str, tuple[float, bool]] = {}   # button -> (down at, a hold)
        self._keypad = ""
        self._ui: queue.Queue | None = None

    def serve(self) -> None:
        self.bus.serve(self.node, "press", self._press, PressArgs)
        self.bus.serve(self.node, "hold", self._hold, HoldArgs)

    def started(self) -> None:
        self.every(REFRESH_PERIOD, self._refresh_soon, first=2.0)
        self.radio.on_link_change = self._link_changed

    # ------------------------------------------------------------------ display mirror (SUP-3)
    def _refresh_soon(self) -> None:
        self.background(self.refresh)   # reads wait for their answer: off the HAN loop

    def refresh(self) -> bool:
        if self.meter is None:
            return False
        values: dict[str, Any] = {}
        for cluster, names in ((zcl.Prepayment, ["credit_remaining", "emergency_credit_remaining", "credit_status"]),
                               (zcl.Metering, ["supply_status", "instantaneous_demand"])):
            tsn = self.radio.next_tsn()
            answer = self.radio.request(self.meter, cluster.cluster_id,
                                        zcl.read_attributes(cluster, names, tsn=tsn), tsn, RESPONSE_TIMEOUT)
            if answer is None:
                with self.lock:
                    self.signal = False
                self.publish()
                return False
            values.update(zcl.parse(cluster, answer.zcl).attributes())
        with self.lock:
            status = int(values.get("credit_status", 0))
            self.mirror = {
                "credit": int(values.get("credit_remaining", 0)) / 100.0,
                "emergency_credit": int(values.get("emergency_credit_remaining", 0)) / 100.0,
                "low_credit": bool(status & zcl.CreditStatus.Low_Credit),
                "emergency_credit_available": bool(status & zcl.CreditStatus.Emergency_Credit_Available),
                "emergency_credit_in_use": bool(status & zcl.CreditStatus.Emergency_Credit_In_Use),
                "credit_exhausted": bool(status & zcl.CreditStatus.Credit_Exhausted),
                "supply": SUPPLY.get(int(values.get("supply_status", 2))),
                "power_w": int(values.get("instantaneous_demand", 0)),
            }
            self.updated = self.clock.now()
            self.signal = True
            kept = [c for c in self.queue if c.get("restamp")]
        self.publish()
        if kept:
            self._flush_queue(restamped_only=True)   # fault queues_presses_across_outage: the meter answers again
        if self.quirks.auto_enables_when_armed and self.mirror.get("supply") == "armed" \
                and self._auto_sent_for is None:
            self._auto_sent_for = self.clock.now()
            self._send("enable", self.clock.now())   # fault: nobody pressed anything
        elif self.mirror.get("supply") != "armed":
            self._auto_sent_for = None
        return True

    def _link_changed(self, _link) -> None:
        parent = self.radio.parent()
        up = any(self.radio.link(parent, b).up for b in self.radio.bands) if parent else False
        if up and any(not c.get("restamp") for c in self.queue):
            self.background(self._flush_queue)   # fault queues_presses: the kept press goes now
        self.publish()

    def _flush_queue(self, restamped_only: bool = False) -> None:
        with self.lock:
            queued = [c for c in self.queue if c.get("restamp") or not restamped_only]
            self.queue = [c for c in self.queue if c not in queued]
        for cmd in queued:
            pressed = self.clock.now() if cmd.get("restamp") else cmd["pressed"]
            self._send(cmd["what"], pressed, cmd.get("code"), queued=True)

    # ------------------------------------------------------------------ buttons
    def _press(self, args: PressArgs, _ctx: CommandContext) -> dict:
        now = self.clock.now()
        if args.button == "enable":
            with self.lock:
                self.prompt_until = now + PROMPT_SECONDS
                self.message = f"HOLD TO ENABLE SUPPLY ({self.hold_time:g} s)"
            self.publish()
            if self.quirks.enables_without_hold:
                return self._send("enable", now)   # fault: the press alone sends it
            return {"display": self.message, "prompt_until": self.prompt_until}
        if args.button == "display":
            with self.lock:
                self.page = (self.page + 1) % 3
            self.publish()
            return {"display": self.display()}
        if args.button == "utrn":
            if not args.code:
                raise Refused("press('utrn') needs the code the consumer typed", code="invalid")
            return self._send("utrn", now, args.code)
        return self._send("emergency_credit", now)

    def _hold(self, args: HoldArgs, _ctx: CommandContext) -> dict:
        start = self.clock.now()
        with self.lock:
            prompt = args.button == "enable" and self.prompt_until >= start
        self.clock.sleep(args.seconds)   # the consumer holds the button
        if args.button != "enable":
            return {"sent": False, "reason": f"holding '{args.button}' does nothing"}
        if not prompt:
            return {"sent": False, "reason": "hold without the enable prompt: press 'enable' first (SUP-7)"}
        if args.seconds < self.hold_time:
            return {"sent": False, "reason": f"held {args.seconds:g} s, less than {self.hold_time:g} s (SUP-7)"}
        with self.lock:
            self.prompt_until = float("-inf")
        released = self.clock.now()
        if self.quirks.slow_to_send:
            self.clock.sleep(SLOW_SEND)
        return self._send("enable", released)

    # ------------------------------------------------------------------ buttons on GPIO (rig/sim/buttons.py)
    def button_input(self, button: str, down: bool, at: float) -> None:
        """An edge of one of the PPMID's buttons as its input pin saw it, ``at``
        the lab time of the edge (the bench's actuator stamp).  A push of
        ``enable`` that starts while the prompt shows is a hold, judged by
        how long it lasted (the enable is stamped with the moment it ended);
        any other push is a press.  Keypad digits gather until ``key_enter``
        sends them as a UTRN.  Commands go out on the PPMID's own worker, as
        they would from its firmware's main loop."""
        with self.lock:
            if down:
                self._pushes[button] = (at, button == "enable" and self.prompt_until >= at)
                return
            start, hold = self._pushes.pop(button, (None, False))
            if start is None:
                return
            if button.startswith("key_"):
                key = button.removeprefix("key_")
                if key != "enter":
                    self._keypad = (self._keypad + key)[-40:]
                    return
                code, self._keypad = self._keypad, ""
        if button == "key_enter":
            self._later(lambda: self._send("utrn", start, code))
        elif hold:
            held = at - start
            if held < self.hold_time:
                return      # too short: nothing is sent (SUP-7)
            with self.lock:
                self.prompt_until = float("-inf")

            def enable() -> None:
                if self.quirks.slow_to_send:
                    self.clock.sleep(SLOW_SEND)
                self._send("enable", at)
            self._later(enable)
        elif button == "enable":
            with self.lock:
                self.prompt_until = self.clock.now() + PROMPT_SECONDS
                self.message = f"HOLD TO ENABLE SUPPLY ({self.hold_time:g} s)"
            self.publish()
            if self.quirks.enables_without_hold:
                self._later(lambda: self._send("enable", start))   # fault: the press alone sends it
        elif button == "emergency_credit":
            self._later(lambda: self._send("emergency_credit", start))
        elif button == "display":
            with self.lock:
                self.page = (self.page + 1) % 3
            self.publish()

    def _later(self, fn) -> None:
        """Run a button's command on the PPMID's user-interface worker: it waits
        for the meter's answer, and must not wait behind a display refresh."""
        with self.lock:
            if self._ui is None:
                self._ui = queue.Queue()
                threading.Thread(target=self._ui_loop, name=f"ppmid-ui:{self.bench}/{self.name}", daemon=True).start()
        self._ui.put(fn)

    def _ui_loop(self) -> None:
        ui = self._ui
        assert ui is not None       # made before the loop starts
        while True:
            fn = ui.get()
            if fn is None or self._stopped:
                return
            try:
                fn()
            except Exception:  # noqa: BLE001 - the PPMID keeps running
                log.exception("%s: button command failed", self.name)

    # ------------------------------------------------------------------ commands to the meter
    def _frame(self, what: str, pressed: float, code: str | None, tsn: int) -> tuple[int, bytes]:
        if what == "enable":
            return zcl.Prepayment.cluster_id, zcl.command(
                zcl.Prepayment, "change_supply", tsn=tsn, provider_id=0, request_date_time=zcl.to_utc(pressed),
                implementation_date_time=0, proposed_supply_status=zcl.SupplyStatus.Supply_On,
                originator_id_supply_control_bits=0)
        if what == "emergency_credit":
            return zcl.Prepayment.cluster_id, zcl.command(
                zcl.Prepayment, "select_available_emergency_credit", tsn=tsn,
                command_issue_date_time=zcl.to_utc(pressed), originating_device=zcl.OriginatingDevice.In_Home_Display)
        return zcl.Prepayment.cluster_id, zcl.command(
            zcl.Prepayment, "consumer_top_up", tsn=tsn, originating_device=zcl.OriginatingDevice.In_Home_Display,
            top_up_code=(code or "").encode())

    def _send(self, what: str, pressed: float, code: str | None = None, queued: bool = False) -> dict:
        if self.meter is None:
            raise Refused(f"{self.name} is not paired with a meter (settings.paired_meter)")
        tsn = self.radio.next_tsn()
        cluster, frame = self._frame(what, pressed, code, tsn)
        answer = self.radio.request(self.meter, cluster, frame, tsn, RESPONSE_TIMEOUT)
        result: dict[str, Any] = {"command": what, "pressed": pressed, "sent_at": self.clock.now(),
                                  "delivered": answer is not None, "queued_send": queued}
        if answer is None:
            result.update(accepted=False, reason="no answer from the meter: HAN link down?")
            with self.lock:
                self.message = "COMMAND FAILED - NO SIGNAL"
                if (self.quirks.queues_presses or self.quirks.queues_presses_across_outage) and not queued:
                    self.queue.append({"what": what, "pressed": pressed, "code": code,
                                       "restamp": self.quirks.queues_presses_across_outage})
                    result["kept_for_later"] = True
        else:
            result.update(self._answer(what, answer))
        with self.lock:
            self.commands.append(result)
            del self.commands[:-50]
        self.event("command", **result)
        self.publish()
        return result

    def _answer(self, what: str, answer: HanFrame) -> dict[str, Any]:
        parsed = zcl.parse(zcl.cluster_by_id(answer.cluster_id), answer.zcl)
        if parsed.name == "supply_status_response":
            supply = SUPPLY.get(int(parsed.args["supply_status"]))
            ok = supply == "enabled"
            with self.lock:
                self.message = "SUPPLY ENABLED" if ok else "SUPPLY NOT ENABLED"
                self.mirror["supply"] = supply
            return {"accepted": ok, "supply": supply}
        if parsed.name == "consumer_top_up_response":
            result = zcl.TopUpResult(parsed.args["result_type"])
            ok = result.name.startswith("Accepted")
            with self.lock:
                self.message = "CREDIT ACCEPTED" if ok else f"CODE REJECTED ({result.name.replace('_', ' ')})"
                self.mirror["credit"] = int(parsed.args["credit_remaining"]) / 100.0
            return {"accepted": ok, "result": result.name, "amount": int(parsed.args["top_up_value"]) / 100.0,
                    "credit": int(parsed.args["credit_remaining"]) / 100.0}
        status = parsed.args.get("status")
        ok = status == zcl.Status.SUCCESS
        with self.lock:
            self.message = "EMERGENCY CREDIT ON" if ok and what == "emergency_credit" else \
                ("DONE" if ok else "NOT ACCEPTED")
        return {"accepted": ok, "status": zcl.Status(status).name if status is not None else None}

    # ------------------------------------------------------------------ state
    def display(self) -> str:
        if not self.signal:
            return "NO SIGNAL"
        if self.prompt_until >= self.clock.now():
            return self.message
        m = self.mirror
        pages = [f"CREDIT GBP {m.get('credit', 0):.2f}", f"SUPPLY {str(m.get('supply', '?')).upper()}",
                 f"EMERGENCY GBP {m.get('emergency_credit', 0):.2f}"]
        return pages[self.page % len(pages)]

    def stop(self) -> None:
        if self._ui is not None:
            self._ui.put(None)
        super().stop()

    def state(self) -> dict[str, Any]:
        return {
            "summary": f"paired with {self.meter}; {self.display()}",
            "paired_meter": self.meter,
            "display": {"text": self.display(), "message": self.message, "signal": self.signal,
                        "updated": self.updated, **self.mirror},
            "queued": len(self.queue),
            "last_command": self.commands[-1] if self.commands else None,
        }
