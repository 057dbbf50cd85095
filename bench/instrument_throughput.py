"""Queries per second on the simulated SCPI path, beside a bare socket, same server, same run.

    python bench/instrument_throughput.py [--seconds 2] [--clients 4]

pyvisa: the rig's driver path: ``pyvisa.ResourceManager("@py")`` session
        (pyvisa-py, ``TCPIP::127.0.0.1::PORT::SOCKET``) querying the simulated
        WT310 (``:NUM:NORM:VAL?``: parse, sample the bench physics, format).
driver: the same through :class:`instruments.power_analyser.YokogawaWT310`
        (``read()``: query, then parse four numbers into a Measurement).
bare:   a plain TCP socket to the same simulated analyser, writing the same
        line and reading the answer line: the floor set by the simulated
        instrument and the loopback, without pyvisa.

Also prints the aggregate rate of several concurrent pyvisa clients on the
one simulated instrument (the agent, `rig instrument` and a lab engineer's
session may all be connected).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyvisa  # noqa: E402

from instruments.power_analyser import YokogawaWT310  # noqa: E402
from instruments.sim.power_analyser import SimulatedWT310  # noqa: E402
from rig.clock import LabClock  # noqa: E402
from rig.sim.physics import PhysicalBench  # noqa: E402

QUERY = ":NUM:NORM:VAL?"


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls of ``fn`` per second over ``seconds`` (after a short warm-up)."""
    for _ in range(20):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / (time.perf_counter() - start), n


def bare_socket(host: str, port: int):
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")

    def query() -> bytes:
        sock.sendall(QUERY.encode() + b"\n")
        return reader.readline()

    return sock, query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="wall seconds per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per path (median reported)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent pyvisa clients for the last line")
    args = ap.parse_args()

    physics = PhysicalBench(LabClock(scale=60))
    physics.set_source(output=True)
    physics.set_mains_relay(True)
    physics.set_contactor(True)
    physics.set_load(on=True, mode="current", setpoint=10.0)
    twin = SimulatedWT310("analyser", physics).start()
    host, port = twin.server.host, twin.server.port
    try:
        sock, bare = bare_socket(host, port)
        rm = pyvisa.ResourceManager("@py")
        session = rm.open_resource(twin.address, read_termination="\n", write_termination="\n", timeout=2000)
        wt = YokogawaWT310("analyser", twin.address).open()
        paths = {"bare": bare, "visa": lambda: session.query(QUERY), "driver": wt.read}
        # interleaved rounds, median per path: the machine's load drifts during a run
        rounds: dict[str, list[tuple[float, int]]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for key, fn in paths.items():
                rounds[key].append(rate(fn, args.seconds / args.rounds))
        (bare_rate, bare_n), (visa_rate, visa_n), (driver_rate, driver_n) = (
            (statistics.median(r for r, _ in rounds[k]), sum(n for _, n in rounds[k])) for k in paths)
        sock.close()
        session.close()
        wt.close()

        counts = [0] * args.clients

        def client(i: int) -> None:
            s = rm.open_resource(twin.address, read_termination="\n", write_termination="\n", timeout=2000)
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                s.query(QUERY)
                counts[i] += 1
            s.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        many_rate = sum(counts) / (time.perf_counter() - t0)
    finally:
        twin.stop()

    print(f"simulated WT310 at {twin.address}, query {QUERY!r}, {args.seconds:g} s per path "
          f"in {args.rounds} interleaved rounds (median)")
    print(f"{'path':<34}{'queries/s':>12}{'us/query':>11}{'n':>9}")
    for label, r, n in (("bare socket (floor)", bare_rate, bare_n),
                        ("pyvisa-py @py session", visa_rate, visa_n),
                        ("driver YokogawaWT310.read()", driver_rate, driver_n),
                        (f"pyvisa-py, {args.clients} clients (aggregate)", many_rate, sum(counts))):
        print(f"{label:<34}{r:>12.0f}{1e6 / r:>11.1f}{n:>9}")
    print(f"pyvisa-py costs {1e6 / visa_rate - 1e6 / bare_rate:.1f} us per query over the bare socket "
          f"({visa_rate / bare_rate:.0%} of its rate)")


if __name__ == "__main__":
    main()
