"""Meters in bulk: thousands of lightweight outage-alert twins on the lab's bus.

Not a bench: no HAN, no instruments, no supply logic beyond what an outage
storm needs.  Each meter is a few fields; a fleet process serves a range of
them over a handful of MQTT connections (``--per-connection`` meters share
one, as meters share a feeder's WAN).  They all hang off one feeder relay:
when ``rig/v1/<bench>/relay/<relay>/state`` says ``off``, every powered meter
loses mains at that instant, and each one that stays without mains for its
alert period (lab seconds, ``--alert-period``, 180 by default as OUT-2
says) raises its outage alert::

    rig/v1/<bench>/device/<meter>/event/alert
    {"code": "AD1", "device": "m000042", "id": "m000042-1", "lost_at": <lab s>, "ts": <lab s>, "seq": 1}

QoS 1, like every event of the rig.  Mains back before the period cancels
the alert (a short interruption).  The process announces itself, retained,
on ``rig/v1/<bench>/fleet/<name>/presence`` once every connection is up
and subscribed, so a driver knows when the fleet is ready::

    python -m rig.sim.fleet --broker mqtt://127.0.0.1:1883 --first 0 --count 5000 --name f0

The lab clock comes from ``RIG_CLOCK`` (as a child of ``rig up`` gets it).
``bench/outage_storm.py`` drives it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from ..clock import LabClock
from ..contract import ROOT

log = logging.getLogger(__name__)
OUTAGE_ALERT = "AD1"


@dataclass
class Meter:
    name: str
    client: int                      # index of the connection it speaks through
    powered: bool = True
    lost_at: float | None = None
    alerts: int = 0


@dataclass(order=True)
class _Due:
    wall: float
    meter: int = field(compare=False)
    lost_at: float = field(compare=False)


class Fleet:
    """``count`` meters named ``m<first>``.. on ``connections`` MQTT connections."""

    def __init__(self, url: str, clock: LabClock, first: int, count: int, bench: str = "fleet",
                 relay: str = "feeder", per_connection: int = 250, alert_period: float = 180.0,
                 jitter: float = 0.0, name: str | None = None, qos: int = 1):
        from ..broker import Endpoint

        self.endpoint = Endpoint.from_url(url)   # user, password file or variable, TLS: as any rig client
        self.clock, self.bench, self.relay = clock, bench, relay
        self.alert_period, self.jitter, self.qos = alert_period, jitter, qos
        self.name = name or f"fleet-{uuid.uuid4().hex[:6]}"
        self.meters = [Meter(f"m{i:06d}", (i - first) // per_connection) for i in range(first, first + count)]
        n_clients = (count + per_connection - 1) // per_connection
        self.clients = [self._client(i) for i in range(n_clients)]
        self._due: list[_Due] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._subscribed = threading.Semaphore(0)
        self.published = 0

    # ------------------------------------------------------------------ MQTT
    def _client(self, index: int) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.name}-{index}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        ep = self.endpoint
        if ep.username:
            c.username_pw_set(ep.username, ep.password())
        if ep.tls is not None:
            c.tls_set(ca_certs=str(ep.tls.ca_file) if ep.tls.ca_file else None,
                      certfile=str(ep.tls.cert_file) if ep.tls.cert_file else None,
                      keyfile=str(ep.tls.key_file) if ep.tls.key_file else None)
            c.tls_insecure_set(bool(ep.tls.insecure))
        if index == 0:
            c.will_set(self.presence_topic, json.dumps({"online": False, "reason": "connection lost"}), qos=1,
                       retain=True)
            c.on_connect = lambda cl, *_a: cl.subscribe(self.relay_topic, qos=1)
            c.on_subscribe = lambda *_a: self._subscribed.release()
            c.on_message = self._on_relay
        return c

    @property
    def relay_topic(self) -> str:
        return f"{ROOT}/{self.bench}/relay/{self.relay}/state"

    @property
    def presence_topic(self) -> str:
        return f"{ROOT}/{self.bench}/fleet/{self.name}/presence"

    def alert_topic(self, meter: Meter) -> str:
        return f"{ROOT}/{self.bench}/device/{meter.name}/event/alert"

    # ------------------------------------------------------------------ the meters
    def _on_relay(self, _client, _userdata, msg) -> None:
        try:
            state = json.loads(msg.payload).get("state")
        except (ValueError, AttributeError):
            return
        if state == "off":
            self.mains_lost(self.clock.now())
        elif state == "on":
            self.mains_back(self.clock.now())

    def mains_lost(self, at: float) -> None:
        """Every powered meter loses mains at lab time ``at``."""
        with self._cond:
            base = self.clock.to_wall(at + self.alert_period)
            step = self.clock.wall_seconds(self.jitter) / max(1, len(self.meters))
            for i, m in enumerate(self.meters):
                if m.powered:
                    m.powered, m.lost_at = False, at
                    heapq.heappush(self._due, _Due(base + i * step, i, at))
            self._cond.notify()

    def mains_back(self, at: float) -> None:
        with self._cond:
            for m in self.meters:
                m.powered, m.lost_at = True, None
            self._due.clear()   # an interruption shorter than the period: no alert

    def _alerts(self) -> None:
        """Raise each alert when its meter's period has passed without mains."""
        while not self._stop.is_set():
            with self._cond:
                now = time.time()
                batch = []
                while self._due and self._due[0].wall <= now:
                    batch.append(heapq.heappop(self._due))
                if not batch:
                    wait = (self._due[0].wall - now) if self._due else 0.5
                    self._cond.wait(min(max(wait, 0.0), 0.5))
                    continue
            for due in batch:
                m = self.meters[due.meter]
                if m.lost_at != due.lost_at:
                    continue   # mains came back (and maybe went again) meanwhile
                m.alerts += 1
                payload = {"code": OUTAGE_ALERT, "device": m.name, "id": f"{m.name}-{m.alerts}",
                           "lost_at": due.lost_at, "ts": self.clock.now(), "seq": m.alerts}
                self.clients[m.client].publish(self.alert_topic(m), json.dumps(payload, separators=(",", ":")),
                                               qos=self.qos)
                self.published += 1

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> "Fleet":
        for c in self.clients:
            c.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
            c.loop_start()
        if not self._subscribed.acquire(timeout=timeout):
            raise RuntimeError(f"{self.name}: not subscribed to {self.relay_topic} within {timeout:g} s")
        deadline = time.monotonic() + timeout
        while not all(c.is_connected() for c in self.clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not every connection up within {timeout:g} s")
            time.sleep(0.01)
        threading.Thread(target=self._alerts, name=f"{self.name}-alerts", daemon=True).start()
        self.clients[0].publish(self.presence_topic, json.dumps({"online": True, "meters": len(self.meters),
                                                                 "connections": len(self.clients)}),
                                qos=1, retain=True)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        info = self.clients[0].publish(self.presence_topic, json.dumps({"online": False, "reason": "stopped",
                                                                        "published": self.published}),
                                       qos=1, retain=True)
        try:
            info.wait_for_publish(2.0)
        except (RuntimeError, ValueError):
            pass
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="serve a range of lightweight outage-alert meters on the lab's bus")
    ap.add_argument("--broker", required=True, help="the broker's URL (mqtt://user@host:port/?password_file=...)")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--bench", default="fleet", help="the topic level the meters sit under")
    ap.add_argument("--relay", default="feeder", help="the relay all meters hang off")
    ap.add_argument("--per-connection", type=int, default=250, help="meters sharing one MQTT connection")
    ap.add_argument("--alert-period", type=float, default=180.0, help="lab seconds without mains before the alert")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="lab seconds the meters' alerts are spread over (0: all at the same instant)")
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    from ..launch import die_with_parent

    die_with_parent()
    fleet = Fleet(args.broker, LabClock.from_env(), args.first, args.count, args.bench, args.relay,
                  args.per_connection, args.alert_period, args.jitter, args.name, args.qos).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
