"""Command round trip through the rig vs a bare paho round trip, same broker, same run.

    python bench/bus_latency.py [--n 2000] [--broker amqtt|mosquitto|both]

rig:  orchestrator ``bus.request(relay, "set")`` -> broker -> agent process
      (``rig agent``: validate, lease check, interlock, switch the GPIO relay,
      reply, publish its state) -> broker -> reply back to the orchestrator.
bare: a paho client publishes a QoS 1 message, an echo process's on_message
      publishes it back (QoS 1), the first client's on_message wakes the
      waiting thread.  Two broker hops and two processes, as in the rig.

Both clients set TCP_NODELAY (as the rig's Bus does), so the comparison is
of the rig's own work, not of Nagle's algorithm.  Target (issue 2): the rig
adds at most 50% to the bare round trip.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import statistics
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rig.broker import Broker, mosquitto_path  # noqa: E402
from rig.config import BrokerConfig, load_lab_text  # noqa: E402
from rig.contract import Node, agent_node  # noqa: E402
from rig.lab import Lab  # noqa: E402

LAB = """
lab: {name: latency, clock: {scale: 1}}
broker: {kind: amqtt, port: 0}
benches:
  bench-1:
    controller: {pin_factory: mock, heartbeat_timeout: 5}
    relays:
      mains: {pin: 17, safe_state: "off", min_interval: 0}
"""


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=100, method="inclusive")
    return s[len(s) // 2] * 1e3, q[98] * 1e3, statistics.fmean(s) * 1e3


def nodelay(client, _userdata, sock) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


ECHO = """
import socket, sys, threading
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-echo", protocol=mqtt.MQTTv311)
c.on_socket_open = lambda cl, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("rig/v1/_bench/ping", qos=1)
c.on_subscribe = lambda *a: print("ready", flush=True)
c.on_message = lambda cl, u, m: cl.publish("rig/v1/_bench/pong", m.payload, qos=1)
c.username_pw_set(sys.argv[3], open(sys.argv[4]).read().strip())   # the broker admits no anonymous client
c.connect(sys.argv[1], int(sys.argv[2]))
c.loop_forever()
"""


class BarePath:
    """A paho client and an echo process: one bare round trip per call."""

    def __init__(self, endpoint):
        ep = endpoint.as_user("admin", keep_store=True)
        host, port = ep.host, ep.port
        self.echo = subprocess.Popen([sys.executable, "-c", ECHO, host, str(port), ep.username, ep.password_file],
                                     stdout=subprocess.PIPE, text=True)
        assert self.echo.stdout.readline().strip() == "ready"
        self.ping = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-ping", protocol=mqtt.MQTTv311)
        self.got = threading.Event()
        subscribed = threading.Event()
        self.ping.on_socket_open = nodelay
        self.ping.on_message = lambda c, u, m: self.got.set()
        self.ping.on_subscribe = lambda *a: subscribed.set()
        self.ping.on_connect = lambda cl, u, f, rc, p: cl.subscribe("rig/v1/_bench/pong", qos=1)
        self.ping.username_pw_set(ep.username, ep.password())
        self.ping.connect(host, port)
        self.ping.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bare client did not subscribe")
        self.payload = b'{"id":"0123456789abcdef0123456789abcdef","args":{"state":"on"}}'

    def round_trip(self) -> float:
        self.got.clear()
        t0 = time.perf_counter()
        self.ping.publish("rig/v1/_bench/ping", self.payload, qos=1)
        if not self.got.wait(5):
            raise RuntimeError("bare echo lost a message")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.ping.loop_stop()
        self.ping.disconnect()
        self.echo.terminate()
        self.echo.wait()


class RigPath:
    """``rig agent`` in its own process and an orchestrator holding the
    bench's lease: one relay command round trip per call."""

    def __init__(self, endpoint, tmp: Path):
        lab_cfg = load_lab_text(LAB, "bench-latency.yaml")
        lab_file = tmp / "lab.yaml"
        lab_file.write_text(LAB)
        env = dict(os.environ, RIG_BROKER_URL=endpoint.url)
        self.agent = subprocess.Popen([sys.executable, "-m", "rig", "agent", "--bench", "bench-1", "--lab",
                                       str(lab_file)], env=env)
        self.lab = Lab.open(lab_cfg, endpoint=endpoint)
        presence = self.lab.bus.watch(agent_node("bench-1").presence)
        if not presence.wait_for(lambda p: p.get("online"), 20):
            self.close()
            raise RuntimeError("agent did not come online")
        self.bench = self.lab.bench("bench-1")
        self.node = Node("bench-1", "relay", "mains")
        self.i = 0

    def round_trip(self) -> float:
        self.i += 1
        t0 = time.perf_counter()
        self.bench.request(self.node, "set", {"state": "on" if self.i % 2 else "off"})
        return time.perf_counter() - t0

    def close(self) -> None:
        self.lab.close()
        self.agent.terminate()
        self.agent.wait()


def measure(kind: str, n: int, warmup: int) -> None:
    with Broker.start(BrokerConfig(kind=kind, port=0)) as ep, tempfile.TemporaryDirectory() as tmp:
        bare_path, rig_path = BarePath(ep), RigPath(ep, Path(tmp))
        try:
            # alternate single round trips, so that machine noise hits both paths alike
            bare, rig = [], []
            for i in range(n + warmup):
                b, r = bare_path.round_trip(), rig_path.round_trip()
                if i >= warmup:
                    bare.append(b)
                    rig.append(r)
        finally:
            rig_path.close()
            bare_path.close()
    b50, b99, bmean = percentiles(bare)
    r50, r99, rmean = percentiles(rig)
    print(f"{kind:>9}  bare paho round trip  p50 {b50:6.3f} ms  p99 {b99:6.3f} ms  mean {bmean:6.3f} ms  (n={len(bare)})")
    print(f"{kind:>9}  rig command round trip p50 {r50:6.3f} ms  p99 {r99:6.3f} ms  mean {rmean:6.3f} ms  (n={len(rig)})")
    verdict = "within" if r50 <= 1.5 * b50 else "OVER"
    print(f"{kind:>9}  rig adds {100 * (r50 / b50 - 1):+.0f}% at p50, {100 * (r99 / b99 - 1):+.0f}% at p99 "
          f"({verdict} the +50% target at p50)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="round trips per path (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="round trips per path not counted (default 200)")
    ap.add_argument("--broker", choices=["amqtt", "mosquitto", "both"], default="both")
    args = ap.parse_args()
    kinds = ["amqtt", "mosquitto"] if args.broker == "both" else [args.broker]
    for kind in kinds:
        if kind == "mosquitto" and mosquitto_path() is None:
            print("mosquitto: not installed, skipped (apt-get install mosquitto)")
            continue
        measure(kind, args.n, args.warmup)


if __name__ == "__main__":
    main()
