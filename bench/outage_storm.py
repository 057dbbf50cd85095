"""Outage storm: N meters lose mains at once; does every alert reach the DCC side?

N lightweight meter twins (rig/sim/fleet.py: no HAN, no instruments, a few
fields each) hang off one feeder relay on the lab's bus, served by a few
fleet processes over shared MQTT connections.  The feeder opens; every meter
raises its outage alert (AD1) when its alert period (180 lab s) has passed
without mains; a sink subscribed where the DCC would be stamps each alert with
its wall receive time.  Per N it prints: alerts delivered, duplicates, lost,
and when the last one arrived after the alert period ended, in wall seconds,
with the median and 99th percentile of each alert's delay past its period.

::

    python bench/outage_storm.py                          # N = 100, 1000, 10000 on mosquitto, clock x60
    python bench/outage_storm.py --meters 10000 --scale 1 # the alert period in real time (3 min)
    python bench/outage_storm.py --bridge 2               # two edge brokers bridged to a core broker
    python bench/outage_storm.py --broker mqtt://broker.lab:1883   # the lab's own (external) broker

``--bridge E`` starts a mosquitto bridge topology: E edge brokers, each
bridging ``rig/v1/#`` both ways to one core broker; the fleet processes
connect to the edges, the feeder switch and the sink to the core.  The rig
needs no change for it: a lab file's ``broker: {kind: external, url: ...}``
names the core (or an edge) like any broker.

It prints figures; it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rig.broker import free_port, mosquitto_path, port_open  # noqa: E402
from rig.clock import LabClock  # noqa: E402


class Mosquitto:
    """A mosquitto process on 127.0.0.1 with extra configuration lines (a bridge)."""

    def __init__(self, port: int, extra: str = "", workdir: Path | None = None, name: str = "broker"):
        exe = mosquitto_path()
        if exe is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix=f"storm-{name}-", dir=workdir))
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\nset_tcp_nodelay true\n"
                        "max_queued_messages 0\nmax_inflight_messages 0\n" + extra)
        self.log = open(self.dir / "mosquitto.log", "w")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto on {port} did not start: {(self.dir / 'mosquitto.log').read_text()}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def bridge_conf(core_port: int, name: str) -> str:
    return (f"connection {name}\naddress 127.0.0.1:{core_port}\ntopic rig/v1/# both 1\n"
            "cleansession true\nbridge_protocol_version mqttv311\ntry_private true\n"
            "notifications false\nstart_type automatic\n")


class Sink:
    """The DCC side: every alert with its wall receive time (stamped on arrival)."""

    def __init__(self, url: str, topic: str):
        from urllib.parse import urlparse

        u = urlparse(url)
        self.got: list[tuple[float, bytes]] = []
        self.count = 0
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"storm-sink-{os.getpid()}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        self.c.max_inflight_messages_set(1000)
        ready = threading.Event()
        self.c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *_a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect(u.hostname, u.port, keepalive=30)
        self.c.loop_start()
        if not ready.wait(10):
            raise SystemExit("the sink could not subscribe")

    def _on_message(self, _c, _u, msg) -> None:
        self.got.append((time.time(), msg.payload))
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def publish(self, topic: str, payload: dict, retain: bool = False) -> None:
        self.c.publish(topic, json.dumps(payload), qos=1, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_fleet(url: str, bench: str, names: list[str], timeout: float = 120.0) -> None:
    from urllib.parse import urlparse

    u = urlparse(url)
    online: dict[str, bool] = {}
    cond = threading.Condition()

    def on_message(_c, _u, msg):
        try:
            p = json.loads(msg.payload)
        except ValueError:
            return
        with cond:
            online[msg.topic.split("/")[-2]] = bool(p.get("online"))
            cond.notify_all()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.on_connect = lambda cl, *_a: cl.subscribe(f"rig/v1/{bench}/fleet/+/presence", qos=1)
    c.on_message = on_message
    c.connect(u.hostname, u.port)
    c.loop_start()
    with cond:
        ok = cond.wait_for(lambda: all(online.get(n) for n in names), timeout)
    c.disconnect()
    c.loop_stop()
    if not ok:
        raise SystemExit(f"fleet processes not online within {timeout:g} s: "
                         f"{[n for n in names if not online.get(n)]}")


def storm(n: int, args, core_url: str, edge_urls: list[str], clock: LabClock) -> dict:
    bench = f"storm-{n}-{os.getpid()}"
    relay_topic = f"rig/v1/{bench}/relay/feeder/state"
    sink = Sink(core_url, f"rig/v1/{bench}/device/+/event/alert")
    sink.publish(relay_topic, {"state": "on", "ts": clock.now()}, retain=True)
    procs, names = [], []
    per = (n + args.processes - 1) // args.processes
    env = dict(os.environ, **clock.env(), PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(args.processes):
        count = min(per, n - i * per)
        if count <= 0:
            break
        name = f"f{i}"
        names.append(name)
        url = edge_urls[i % len(edge_urls)] if edge_urls else core_url
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rig.sim.fleet", "--broker", url, "--first", str(i * per), "--count", str(count),
             "--bench", bench, "--per-connection", str(args.per_connection), "--alert-period",
             str(args.alert_period), "--jitter", str(args.jitter), "--name", name],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        wait_fleet(core_url, bench, names)
        t_off = time.time()
        sink.publish(relay_topic, {"state": "off", "ts": clock.now()}, retain=True)
        period_end = t_off + clock.wall_seconds(args.alert_period)
        deadline = period_end + args.timeout
        with sink.cond:
            sink.cond.wait_for(lambda: sink.count >= n, max(0.0, deadline - time.time()))
        # duplicates arrive after the last original, if at all: give them a moment
        time.sleep(args.settle)
    finally:
        for p in procs:
            p.terminate()
        errors = [p.communicate(timeout=20)[1] for p in procs]
        sink.publish(relay_topic, {}, retain=False)
        sink.c.publish(relay_topic, b"", qos=1, retain=True).wait_for_publish(5)
        sink.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    ids: dict[str, int] = {}
    delays, arrivals = [], []
    for wall, payload in sink.got:
        a = json.loads(payload)
        ids[a["id"]] = ids.get(a["id"], 0) + 1
        if ids[a["id"]] == 1:
            arrivals.append(wall)
            delays.append(wall - clock.to_wall(a["lost_at"] + args.alert_period))
    unique = len(ids)
    delays.sort()
    return {
        "n": n, "delivered": unique, "duplicates": sum(v - 1 for v in ids.values()), "lost": n - unique,
        "last_after_period": (max(arrivals) - period_end) if arrivals else None,
        "first_after_period": (min(arrivals) - period_end) if arrivals else None,
        "p50": statistics.median(delays) if delays else None,
        "p99": delays[min(len(delays) - 1, int(0.99 * len(delays)))] if delays else None,
        "fleet_cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "sink_cpu": (self_after.ru_utime - self_before.ru_utime) + (self_after.ru_stime - self_before.ru_stime),
        "errors": [e.strip()[-500:] for e in errors if e and e.strip()],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", default="100,1000,10000", help="fleet sizes, comma-separated")
    ap.add_argument("--scale", type=float, default=60.0, help="lab clock scale (the alert period is 180 lab s)")
    ap.add_argument("--alert-period", type=float, default=180.0, help="lab seconds (OUT-2: 180)")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="lab seconds the alerts are spread over (0: every meter at the same instant)")
    ap.add_argument("--processes", type=int, default=2, help="fleet processes (the meters are split between them)")
    ap.add_argument("--per-connection", type=int, default=250, help="meters sharing one MQTT connection")
    ap.add_argument("--broker", default=None, help="an external broker URL (default: start mosquitto)")
    ap.add_argument("--bridge", type=int, default=0, help="start E edge brokers bridged to a core broker")
    ap.add_argument("--timeout", type=float, default=60.0, help="wall seconds after the period to wait for alerts")
    ap.add_argument("--settle", type=float, default=1.0, help="wall seconds to wait for duplicates")
    args = ap.parse_args(argv)
    clock = LabClock(scale=args.scale)
    brokers: list[Mosquitto] = []
    edge_urls: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="rig-storm-"))
    try:
        if args.broker:
            core_url, topology = args.broker, f"external broker {args.broker}"
        else:
            core = Mosquitto(free_port(), workdir=work, name="core")
            brokers.append(core)
            core_url = core.url
            topology = "one mosquitto"
            for e in range(args.bridge):
                edge = Mosquitto(free_port(), bridge_conf(core.port, f"edge{e}"), workdir=work, name=f"edge{e}")
                brokers.append(edge)
                edge_urls.append(edge.url)
            if args.bridge:
                topology = f"mosquitto bridge: {args.bridge} edge brokers -> 1 core (rig/v1/# both ways, QoS 1)"
                time.sleep(1.0)  # bridges connect in the background; mosquitto has no readiness signal for them
        load = os.getloadavg()
        print(f"outage storm: {topology}; clock x{args.scale:g}, alert period {args.alert_period:g} lab s "
              f"= {clock.wall_seconds(args.alert_period):.2f} wall s; {args.processes} fleet processes, "
              f"{args.per_connection} meters per MQTT connection, QoS 1; alerts spread over {args.jitter:g} lab s")
        print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
        print(f"{'meters':>7} {'delivered':>9} {'dup':>5} {'lost':>5} {'first s':>8} {'last s':>8} "
              f"{'p50 s':>7} {'p99 s':>7} {'fleet CPU s':>11} {'sink CPU s':>10} {'broker CPU s':>12}")
        for n in (int(x) for x in args.meters.split(",") if x.strip()):
            cpu0 = sum(b.cpu() for b in brokers)
            r = storm(n, args, core_url, edge_urls, clock)
            cpu1 = sum(b.cpu() for b in brokers)

            def f(v):
                return f"{v:8.3f}" if isinstance(v, float) else f"{'—':>8}"
            print(f"{n:>7} {r['delivered']:>9} {r['duplicates']:>5} {r['lost']:>5} {f(r['first_after_period'])} "
                  f"{f(r['last_after_period'])} {f(r['p50'])[1:]} {f(r['p99'])[1:]} {r['fleet_cpu']:>11.2f} "
                  f"{r['sink_cpu']:>10.2f} {cpu1 - cpu0:>12.2f}", flush=True)
            for e in r["errors"]:
                print(f"        fleet error: {e}")
        print("first/last s: wall seconds from the end of the alert period (feeder opened + 180 lab s) to the "
              "first/last alert at the sink; p50/p99: each alert's delay past its own meter's period; "
              "CPU: the fleet processes, this script (the sink, its JSON decoding included), the broker(s)")
    finally:
        for b in reversed(brokers):
            b.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
