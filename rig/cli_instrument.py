"""``rig instrument``: the bench instruments from the command line.

::

    rig instrument list                                  # every instrument, its address in use, its identity
    rig instrument bench-1 analyser query                # one reading
    rig instrument bench-1 attenuator_ppmid set 40       # dB (leases the bench for the command)
    rig instrument bench-1 ac_source set voltage=230 frequency=50
    rig instrument bench-1 ac_source set on --hold 60    # output on, held for 60 lab s, then safe
    rig instrument bench-1 load draw amps=10             # needs the AC source on (requires_supply)
    rig instrument bench-1 ac_source dip depth=0.5 duration=0.2
    rig instrument bench-1 load off                      # towards safe: no lease needed

A refused command (an interlock, the E-stop, a lease held by someone else,
an instrument that does not answer) prints ``refused: <reason>`` and exits
with code 4.  Leaving an output away from its safe state (source output
on, load on) holds the lease, and the heartbeat that keeps the output on,
until ``--hold`` lab seconds pass or Ctrl-C: then the bench goes safe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from . import parts
from .cli_common import Exit, LabOpt, console, hold_lease, load
from .config import InstrumentConfig, LabConfig, UnknownPart
from .contract import ROOT

#: ops that change nothing (no lease)
READS = {"query", "identify", "read"}


class _InstrumentGroup(TyperGroup):
    """``rig instrument list`` or ``rig instrument BENCH NAME ACTION ...``."""

    def resolve_command(self, ctx: Any, args: list[str]):
        if args and args[0] not in self.commands:
            return "call", self.commands["call"], args
        return super().resolve_command(ctx, args)


instrument_app = typer.Typer(
    cls=_InstrumentGroup, no_args_is_help=True, add_completion=False,
    help="Bench instruments: `rig instrument list`, `rig instrument BENCH NAME query|identify|set|read|... ARGS`.",
)


# ----------------------------------------------------------------------------- list
def _retained(cfg: LabConfig, bench: str | None, quiet: float = 0.3, limit: float = 3.0) -> dict[str, Any]:
    """Every retained instrument topic (state and address announcements)."""
    import time

    from .broker import endpoint_for
    from .bus import Bus
    from .lab import endpoint_from_env

    ep = (endpoint_from_env() or endpoint_for(cfg.broker)).for_role("observer")
    with Bus(ep) as bus:
        watch = bus.watch(f"{ROOT}/{bench or '+'}/instrument/#")
        start = time.monotonic()
        last_change, last_count = start, 0
        with watch.cond:
            while time.monotonic() - start < limit:
                if len(watch.history) != last_count:
                    last_count, last_change = len(watch.history), time.monotonic()
                elif time.monotonic() - last_change > quiet:
                    break
                watch.cond.wait(0.05)
            values = dict(watch.values)
        watch.close()
    return values


def _rows(cfg: LabConfig, seen: dict[str, Any], bench: str | None) -> list[dict[str, Any]]:
    rows = []
    for bname, b in cfg.benches.items():
        if bench and bname != bench:
            continue
        for name, inst in b.instruments.items():
            base = f"{ROOT}/{bname}/instrument/{name}"
            state = seen.get(f"{base}/state") or {}
            announced = seen.get(f"{base}/address") or {}
            rows.append({
                "bench": bname, "name": name, "kind": inst.kind, "driver": inst.driver,
                "address": state.get("address") or announced.get("address") or inst.address,
                "simulated": inst.simulated, "identity": state.get("identity"),
                "online": state.get("online") if state else None, "fault": state.get("fault"),
                "summary": state.get("summary"),
            })
    return rows


@instrument_app.command("list")
def list_(
    lab: Path = LabOpt,
    bench: Optional[str] = typer.Option(None, help="only this bench"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Every instrument: kind, driver, the address in use (as the agent and the
    simulated world publish it on the bus) and its identity."""
    cfg = load(lab)
    if bench:
        cfg.bench(bench)
    rows = _rows(cfg, _retained(cfg, bench), bench)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    cols = ("bench", "name", "kind", "driver", "address", "identity")
    table = [[str(r[c] if r[c] is not None else ("(not served)" if c == "identity" else "")) for c in cols]
             for r in rows]
    for r, line in zip(rows, table):
        if r["fault"]:
            line[-1] = f"FAULT: {r['fault']}"
    widths = [max(len(c), *(len(line[i]) for line in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


# ----------------------------------------------------------------------------- one instrument
def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def parse_action(name: str, inst: InstrumentConfig, action: str, values: list[str]) -> tuple[str, dict[str, Any]]:
    """The bus op and args for ``ACTION VALUES...`` (``set 40``, ``set on``,
    ``dip depth=0.5 duration=0.2``); what a bare number or on/off sets, and
    what ``query`` asks, come from the kind's declaration (rig/parts.py)."""
    kind = parts.instrument_kind(inst.kind)
    op = kind.query if action == "query" else action
    args: dict[str, Any] = {}
    for value in values:
        if "=" in value:
            key, _, text = value.partition("=")
            args[key.strip()] = _number(text.strip())
        elif value.lower() in ("on", "off"):
            key = (kind.switch or "state") if op == "set" else "state"
            args[key] = value.lower()
        elif isinstance(_number(value), float) and op == "set" and kind.number:
            args[kind.number] = float(value)
        else:
            raise Exit(f"{name} {action}: cannot read {value!r}: give key=value"
                       f"{f', a number ({kind.number})' if kind.number else ''} or on/off", 2)
    if op == "set" and not args:
        raise Exit(f"{name} set: nothing to set, e.g. `set {kind.number or 'key'}=...`", 2)
    return op, args


def towards_safe(op: str, args: dict[str, Any]) -> bool:
    """Commands that only take an instrument towards its safe state (no lease)."""
    if op in READS or op == "safe":
        return True
    if op == "off":
        return True
    return set(args) <= {"output", "state"} and all(v == "off" for v in args.values()) and bool(args)


def _show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    for key, value in result.items():
        if key != "state":
            console.print(f"{key}: {value}", highlight=False)


@instrument_app.command("call", hidden=True, context_settings={"ignore_unknown_options": True})
def call(
    bench: str = typer.Argument(..., help="bench name, e.g. bench-1"),
    name: str = typer.Argument(..., help="instrument name, e.g. attenuator_ppmid"),
    action: str = typer.Argument(..., help="query, identify, set, read, safe, or a kind's op (draw, off, dip, output)"),
    values: Optional[list[str]] = typer.Argument(None, help="a number, on/off, or key=value pairs"),
    lab: Path = LabOpt,
    hold: Optional[float] = typer.Option(
        None, help="lab seconds to hold the lease when an output is left on; default: until Ctrl-C"),
    as_json: bool = typer.Option(False, "--json", help="print the whole reply as JSON"),
) -> None:
    """One command to one instrument."""
    from .lab import Lab

    cfg = load(lab)
    inst = cfg.bench(bench).instruments.get(name)
    if inst is None:
        raise UnknownPart(f"bench {bench} has no instrument '{name}'; instruments: "
                          f"{', '.join(cfg.bench(bench).instruments) or 'none'}")
    op, args = parse_action(name, inst, action, values or [])
    with Lab.open(cfg) as lab_:
        leased = not towards_safe(op, args)
        b = lab_.bench(bench, lease=leased)
        result = b.instrument(name).request(op, **args)
        _show(result, as_json)
        if not leased or (result.get("state") or {}).get("safe", True):
            return
        hold_lease(lab_.clock, hold, f"{bench}/{name} is away from its safe state")
    console.print(f"lease released: {bench} is in its safe state")
