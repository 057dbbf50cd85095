"""``python -m rig.adapters --lab lab.yaml --bench bench-1 [--device esme]``:
serve the bench's real devices (backend other than ``sim``) on the bus until
SIGTERM/Ctrl-C, on the machine their radio or probe is plugged into."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    from rig.broker import endpoint_for
    from rig.clock import LabClock
    from rig.config import ConfigError, load_lab
    from rig.lab import endpoint_from_env

    from . import AdapterError, adapter_class

    p = argparse.ArgumentParser(prog="python -m rig.adapters", description=__doc__)
    p.add_argument("--lab", default="lab.yaml")
    p.add_argument("--bench", required=True)
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument("-v", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.v else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_lab(args.lab)
        bench = cfg.bench(args.bench)
    except (ConfigError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    real = {n: d for n, d in bench.devices.items() if not d.simulated and (not args.device or n in args.device)}
    if not real:
        print(f"error: bench {args.bench} has no device with a real backend to serve", file=sys.stderr)
        return 2
    endpoint = endpoint_from_env() or endpoint_for(cfg.broker)
    clock = LabClock.from_env(cfg.lab.clock.scale)
    started = []
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for name, dev in real.items():
            adapter = adapter_class(dev.backend, name)
            started.append(adapter(cfg, args.bench, name, dev, endpoint.for_role("device", args.bench, name),
                                   clock).start())
        stop.wait()
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        for part in reversed(started):
            part.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
