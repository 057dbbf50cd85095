"""How much the simulated HAN and devices cost: frames per second and CPU per device.

Two measurements:

1. **Medium alone.**  Two radios on the medium, frames sent back to back
   (each waits for the previous one's ACK/retries), no bus: the frames per
   wall second one bench's HAN loop can carry.
2. **A running bench.**  The lab's bench (default ``lab.yaml``, bench-1),
   its simulated world with every twin, an embedded broker, for
   ``--seconds`` wall seconds at ``--scale``: frames carried, the process's
   CPU time, and each device's share (from the CPU time of the threads
   named after it, /proc/self/task; the shared HAN loop and the world's
   own threads are split evenly over the devices).

Run::

    python bench/han_throughput.py                   # lab.yaml, scale 60, 10 s
    python bench/han_throughput.py --scale 600 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rig.broker import Broker  # noqa: E402
from rig.clock import LabClock  # noqa: E402
from rig.config import BrokerConfig, load_lab  # noqa: E402
from rig.sim.event_loop import EventLoop  # noqa: E402
from rig.sim.han import HanMedium, HanRadio  # noqa: E402
from rig.protocol import zcl  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of every thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        name = names.get(int(tid), f"tid-{tid}")
        out[name] = out.get(name, 0.0) + cpu
    return out


def medium_alone(lab, frames: int) -> tuple[float, float]:
    clock = LabClock(scale=1000.0)
    loop = EventLoop(clock).start()
    medium = HanMedium(lab.han, lab.bench(next(iter(lab.benches))), lambda _n: 0.0, clock, loop)
    hub = HanRadio("comms_hub", "00:0d:6f:00:00:00:00:03", "dual", loop, clock, coordinator=True)
    dev = HanRadio("esme", "00:0d:6f:00:00:00:00:01", "dual", loop, clock, poll_period=None)
    medium.attach(hub)
    medium.attach(dev)
    payload = zcl.read_attributes(zcl.Metering, ["supply_status", "current_summ_delivered"], tsn=1)
    done = threading.Event()
    count = [0]

    def next_frame(_ok: bool = True) -> None:
        count[0] += 1
        if count[0] >= frames:
            done.set()
            return
        dev.send("comms_hub", zcl.Metering.cluster_id, payload, done=next_frame)

    cpu0, t0 = time.process_time(), time.perf_counter()
    loop.call_soon(next_frame)
    done.wait(120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    loop.stop()
    return count[0] / wall, cpu / count[0]


def running_bench(lab, bench: str, scale: float, seconds: float) -> None:
    from rig.sim.world import World

    broker = Broker.start(BrokerConfig(kind="amqtt", port=0))
    clock = LabClock(scale=scale)
    try:
        with World(lab, bench, broker.endpoint, clock) as world:
            world.physics.set_source(output=True)   # no agent here: mains on, as the agent would
            world.physics.set_mains_relay(True)
            han = next(p for p in world.parts if type(p).__name__ == "SimulatedHan")
            devices = [n for n, d in lab.bench(bench).devices.items() if d.simulated]
            time.sleep(1.0)                          # let the devices join
            before_frames = sum(s["frames"] for s in han.medium.stats.values())
            threads0, cpu0, t0, lab0 = thread_cpu(), time.process_time(), time.perf_counter(), clock.now()
            time.sleep(seconds)                      # measuring a duration: nothing to wait for
            threads1, cpu1, t1, lab1 = thread_cpu(), time.process_time(), time.perf_counter(), clock.now()
            frames = sum(s["frames"] for s in han.medium.stats.values()) - before_frames
            stats = {b: dict(s) for b, s in han.medium.stats.items()}
    finally:
        broker.stop()
    wall = t1 - t0
    delta = {n: threads1.get(n, 0.0) - threads0.get(n, 0.0) for n in threads1}
    own = {d: sum(v for n, v in delta.items() if f"-{d}-" in n or n.endswith(f"/{d}")) for d in devices}
    shared = (cpu1 - cpu0) - sum(own.values())
    print(f"\nrunning bench {bench} of {lab.source}: {len(devices)} simulated devices, clock x{scale:g}, "
          f"{wall:.1f} wall s = {lab1 - lab0:.0f} lab s")
    print(f"  frames on the HAN:   {frames} ({frames / wall:.0f} per wall s, {frames / (lab1 - lab0):.2f} per lab s)")
    for band, s in stats.items():
        print(f"    {band:>7}: {s['frames']:.0f} frames, {s['retries']:.0f} retries, {s['lost']:.0f} lost, "
              f"{s['air_time']:.3f} s on air")
    print(f"  process CPU:         {cpu1 - cpu0:.2f} s in {wall:.1f} s ({100 * (cpu1 - cpu0) / wall:.1f} % of one core)")
    print(f"  shared (HAN loop, world, broker): {shared:.2f} s")
    print("  CPU per device (own threads + an even share of the shared part), % of one core:")
    for d in devices:
        total = own[d] + shared / len(devices)
        print(f"    {d:<12} {100 * total / wall:5.1f} %   (own threads {100 * own[d] / wall:4.1f} %)")
    print(f"  mean per device:     {100 * (cpu1 - cpu0) / wall / len(devices):.1f} % of one core at clock x{scale:g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", default=str(ROOT / "lab.yaml"))
    p.add_argument("--bench", default=None)
    p.add_argument("--scale", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=5000)
    args = p.parse_args()
    lab = load_lab(args.lab)
    bench = args.bench or next(iter(lab.benches))
    rate, cpu_per_frame = medium_alone(lab, args.frames)
    print(f"medium alone: {rate:.0f} frames per wall s, {1e6 * cpu_per_frame:.0f} us CPU per frame "
          f"(back to back, ACK and retries modelled)")
    running_bench(lab, bench, args.scale, args.seconds)


if __name__ == "__main__":
    main()
