"""``rig probe``: does every part of the lab answer?  (rig/probe.py)

::

    rig probe                          # every bench of lab.yaml
    rig probe --bench bench-3 --power  # also switch mains on to read the meter's identification

A table of what answers, what does not and why; exit code 1 if anything
does not answer, 2 if the broker itself cannot be reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .cli_common import Exit, LabOpt, console, load


def probe(
    lab: Path = LabOpt,
    bench: Optional[list[str]] = typer.Option(None, "--bench", "-b", help="only this bench (repeatable)"),
    broker: Optional[str] = typer.Option(None, help="broker URL (default: RIG_BROKER_URL, else lab.yaml broker)"),
    power: bool = typer.Option(False, "--power", help="lease each bench and switch its mains on to read the "
                               "meter's identification through its optical probe; the bench goes safe after"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """Bench bring-up: ask every part lab.yaml declares (agent, relays, actuators,
    each instrument's *IDN? against its driver, the optical probe, the HAN tap,
    zigpy radios, the head end) whether it answers; non-zero exit if one does not."""
    import time

    from .broker import Endpoint, endpoint_for
    from .bus import BusError
    from .lab import Lab, endpoint_from_env
    from .probe import probe as run_probe

    cfg = load(lab)
    for name in bench or []:
        cfg.bench(name)
    ep = Endpoint.from_url(broker) if broker else (endpoint_from_env() or endpoint_for(cfg.broker))
    t0 = time.monotonic()
    try:
        the_lab = Lab.open(cfg, endpoint=ep)
    except BusError as exc:
        raise Exit(f"broker: {exc}", code=2) from None
    try:
        rows = run_probe(the_lab, bench or None, power=power)
    finally:
        the_lab.close()
    took = time.monotonic() - t0
    bad = [r for r in rows if not r.ok]
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        table = Table(title=f"rig probe: {cfg.source}, broker {ep}", title_justify="left")
        for col in ("bench", "part", "kind", "address", "answers", "detail", "s"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.bench, r.part, r.kind, escape(r.address), "[green]yes[/green]" if r.ok else "[red]NO[/red]",
                          escape(r.detail), f"{r.seconds:.2f}")
        console.print(table)
        if bad:
            console.print(f"[red]{len(bad)} of {len(rows)} parts do not answer[/red] ({took:.1f} s): "
                          + "; ".join(escape(f"{r.bench}/{r.part} at {r.address}: {r.detail}") for r in bad),
                          highlight=False)
        else:
            console.print(f"[green]every part answers[/green] ({len(rows)} parts, {took:.1f} s)")
    if bad:
        raise typer.Exit(1)
