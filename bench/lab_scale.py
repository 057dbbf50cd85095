"""How the rig scales with the lab: benches at once, and clock scale.

Two tables, each from real ``rig run`` processes (broker, one agent and one
simulated world per bench, one pytest-xdist worker per bench):

1. the nightly suite on 1, 2, 4 and 8 simulated benches at once (copies of
   the default lab's bench), at the lab's clock scale: wall time, CPU
   (every process of the run, in core-seconds and as a share of the
   machine), and verdict agreement: each bench's verdict of each check
   against the one-bench run's;
2. the suite on one bench at clock scales 60, 300 and 600 (``--scales``),
   each check's verdict compared with a scale-1 run: made here with
   ``--run-scale-1`` (about 75 minutes of wall time), or read from a saved
   run folder with ``--scale-1 RUN``.

::

    python bench/lab_scale.py                                   # both tables
    python bench/lab_scale.py --benches 1,2,4 --scales ""       # benches only
    python bench/lab_scale.py --benches "" --scales 60,300,600,1200 --scale-1 runs/20261201T023204Z-ea6932
    python bench/lab_scale.py -k "outage"                       # a subset of the suite (pytest -k)

It prints figures; it passes or fails nothing.  The run folders stay under
``--out`` (default a temporary folder) for a closer look.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAB = ROOT / "lab.yaml"


def lab_with_benches(base: dict, n: int, out: Path, port: int) -> Path:
    """The lab with its (first) bench copied ``n`` times: bench-1 .. bench-n."""
    data = json.loads(json.dumps(base))
    name, bench = next(iter(base["benches"].items()))
    data["benches"] = {f"bench-{i}": json.loads(json.dumps(bench)) for i in range(1, n + 1)}
    data["broker"] = {**data.get("broker", {}), "port": port}
    data["lab"]["results"] = {"dir": str(out / "runs"), "store": f"sqlite:///{out / 'runs' / 'history.sqlite'}"}
    path = out / f"lab-{n}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (role, CPU seconds)} of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
            fields = rest.split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        info[pid] = (_role(cmd), (int(fields[11]) + int(fields[12])) / TICK)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in info:
            out[pid] = info[pid]
        todo += children.get(pid, [])
    return out


def _role(cmd: str) -> str:
    if "mosquitto" in cmd:
        return "broker"
    if " sim " in cmd:
        return "sim worlds"
    if " agent " in cmd:
        return "agents"
    if "execnet" in cmd or "exec(eval(sys.stdin" in cmd:
        return "pytest workers"
    if " run " in cmd:
        return "orchestrator"
    return "other"


class CpuSampler:
    """Samples the CPU of every process of a run (they exit before the run
    does, so their last sample is their total, to within the interval)."""

    def __init__(self, root: int, interval: float = 0.5):
        import threading

        self.root, self.interval = root, interval
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for pid, (role, cpu) in _tree_cpu(self.root).items():
                if role == "other" and pid in self.last:
                    role = self.last[pid][0]   # an exiting process has no command line left
                self.last[pid] = (role, cpu)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        by_role: dict[str, float] = {}
        for role, cpu in self.last.values():
            by_role[role] = by_role.get(role, 0.0) + cpu
        return by_role


def run(lab: Path, cwd: Path, scale: float | None, keyword: str | None) -> dict:
    """One ``rig run``: wall time, CPU of all its processes, the run record."""
    cmd = [sys.executable, "-m", "rig", "run", "--lab", str(lab)]
    if scale is not None:
        cmd += ["--clock-scale", f"{scale:g}"]
    if keyword:
        cmd += ["-k", keyword]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIG_CLOCK", "RIG_BROKER_URL"))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(cwd / "rig-run.out", "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        sampler = CpuSampler(proc.pid)
        proc.wait()
    wall = time.monotonic() - t0
    roles = sampler.stop()
    output = (cwd / "rig-run.out").read_text(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r"run folder: (\S+)", output)
    rec = json.loads((Path(m.group(1)) / "run.json").read_text()) if m else {}
    return {"wall": wall, "cpu": cpu, "code": proc.returncode, "record": rec, "run_dir": m.group(1) if m else None,
            "tail": output[-3000:], "roles": roles}


def verdicts(rec: dict) -> dict[tuple[str, str], str]:
    """{(bench, check without its bench parameter): verdict}."""
    out = {}
    for t in rec.get("tests", []):
        bench = t.get("bench") or rec.get("bench") or "?"
        name = t["nodeid"].replace(f"[{bench}]", "").replace(f"[{bench}-", "[")
        out[(bench, name)] = t.get("verdict")
    return out


def agreement(rec: dict, reference: dict) -> tuple[int, int, list[str]]:
    """(agreeing, compared, differences) of every bench's verdicts against the
    reference run's (one bench)."""
    ref = {name: v for (_b, name), v in verdicts(reference).items()}
    agree = total = 0
    diffs = []
    for (bench, name), v in sorted(verdicts(rec).items()):
        if name not in ref:
            continue
        total += 1
        if v == ref[name]:
            agree += 1
        else:
            diffs.append(f"{bench}: {name}: {v} (reference {ref[name]})")
    return agree, total, diffs


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpus} cores ({model}), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lab", type=Path, default=DEFAULT_LAB, help="lab whose first bench is copied (default lab.yaml)")
    ap.add_argument("--benches", default="1,2,4,8", help="bench counts to run at once (empty: none)")
    ap.add_argument("--scales", default="60,300,600", help="clock scales for the one-bench comparison (empty: none)")
    ap.add_argument("--scale-1", type=Path, default=None, help="a saved scale-1 run folder to compare verdicts with")
    ap.add_argument("--run-scale-1", action="store_true", help="make the scale-1 run now (about 75 min)")
    ap.add_argument("--repeat", type=int, default=1, help="runs at each clock scale (verdicts can flip by chance)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k: a subset of the suite")
    ap.add_argument("--out", type=Path, default=None, help="where the labs and run folders go (default: a temp dir)")
    ap.add_argument("--port", type=int, default=18960, help="broker port written into the generated labs")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="rig-lab-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(args.lab.read_text())
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}; runs under {out}")
    print(f"suite: {'-k ' + repr(args.keyword) if args.keyword else 'the whole nightly suite'}, "
          f"lab {args.lab} (clock x{base['lab']['clock']['scale']:g})\n")

    counts = [int(n) for n in args.benches.split(",") if n.strip()]
    if counts:
        print("benches at once (one pytest-xdist worker, agent and simulated world per bench)")
        print(f"{'benches':>7} {'wall s':>8} {'x 1-bench':>9} {'CPU s':>8} {'CPU %':>7} {'checks':>7} "
              f"{'agree':>11} {'exit':>4}  benches")
        reference = None
        base_wall = None
        for n in counts:
            lab = lab_with_benches(base, n, out, args.port)
            r = run(lab, out, None, args.keyword)
            rec = r["record"]
            if reference is None:
                reference, base_wall = rec, r["wall"]
            agree, total, diffs = agreement(rec, reference)
            statuses = ", ".join(f"{b} {s.get('status')}" for b, s in (rec.get("benches") or {}).items())
            print(f"{n:>7} {r['wall']:>8.1f} {r['wall'] / base_wall:>9.2f} {r['cpu']:>8.1f} "
                  f"{100 * r['cpu'] / r['wall'] / cores:>6.0f}% {len(rec.get('tests', [])):>7} "
                  f"{agree:>5}/{total:<5} {r['code']:>4}  {statuses if n <= 2 else _status_counts(rec)}",
                  flush=True)
            for d in diffs[:10]:
                print(f"{'':>9}differs: {d}")
            print(f"{'':>9}CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                        sorted(r["roles"].items(), key=lambda kv: -kv[1])))
            if not rec:
                print(r["tail"])
        print(f"\nCPU %: every process of the run (broker, agents, worlds, pytest) over the wall time, "
              f"as a share of {cores} cores\n")

    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    if scales:
        one = lab_with_benches(base, 1, out, args.port + 1)
        reference, ref_label = None, ""
        if args.scale_1 is not None:
            from rig.evidence.record import load_run

            reference, ref_label = load_run(args.scale_1), f"saved run {args.scale_1.name}"
        elif args.run_scale_1:
            r1 = run(one, out, 1.0, args.keyword)
            reference, ref_label = r1["record"], f"run now: {r1['wall']:.0f} s wall"
        print(f"clock scale, one bench; verdicts against scale 1 ({ref_label or 'no scale-1 run: --scale-1 RUN'})")
        print(f"{'scale':>6} {'wall s':>8} {'CPU s':>8} {'checks':>7} {'passed':>7} {'agree':>11}  differences")
        for scale in (sc for sc in scales for _ in range(args.repeat)):
            r = run(one, out, scale, args.keyword)
            rec = r["record"]
            s = rec.get("summary") or {}
            if reference is not None:
                agree, total, diffs = agreement(rec, reference)
                cell = f"{agree:>5}/{total:<5}"
            else:
                cell, diffs = f"{'—':>11}", []
            print(f"{scale:>6g} {r['wall']:>8.1f} {r['cpu']:>8.1f} {s.get('total', 0):>7} {s.get('passed', 0):>7} "
                  f"{cell}  {len(diffs)}", flush=True)
            for d in diffs[:12]:
                print(f"{'':>8}differs: {d}")
            if not rec:
                print(r["tail"])
    return 0


def _status_counts(rec: dict) -> str:
    counts: dict[str, int] = {}
    for s in (rec.get("benches") or {}).values():
        counts[s.get("status")] = counts.get(s.get("status"), 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


if __name__ == "__main__":
    sys.exit(main())
