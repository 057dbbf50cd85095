"""``rig``: the command line of the smart-metering HIL rig.

Every command takes ``--lab PATH`` (default ``lab.yaml``).  Errors are one
line that says what to do, never a traceback (``RIG_DEBUG=1`` shows them).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from instruments.address import AddressError
from instruments.errors import InstrumentError

from .broker import BrokerError
from .bus import BusError, CommandError
from .cli_broker import broker_app
from .cli_common import Exit, LabOpt, console, err, hold_lease, load, setup_logging
from .cli_evidence import evidence_app, history, report, verify
from .cli_instrument import instrument_app
from .cli_probe import probe
from .config import ConfigError, LabConfig, UnknownPart
from .version import __version__

app = typer.Typer(
    name="rig",
    help=(
        "Hardware-in-the-loop rig for GB smart-metering (SMETS2) test labs.\n\n"
        "Start the default simulated lab with `rig up`, look at it with `rig status`, "
        "switch a relay with `rig relay bench-1 mains on`, run the nightly suite with `rig run`."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


# ----------------------------------------------------------------------------- check
@app.command()
def check(lab: Path = LabOpt) -> None:
    """Validate a lab file; print what it describes."""
    cfg = load(lab)
    console.print(f"[green]{lab}: valid[/green]  lab '{cfg.lab.name}', clock scale {cfg.lab.clock.scale:g}, "
                  f"broker {cfg.broker.kind}")
    for name, bench in cfg.benches.items():
        console.print(f"  bench [bold]{name}[/bold]: {len(bench.relays)} relays, {len(bench.instruments)} instruments, "
                      f"{len(bench.devices)} devices, {len(bench.rf_paths)} RF paths, "
                      f"pin factory {bench.controller.pin_factory}")


# ----------------------------------------------------------------------------- up
@app.command()
def up(
    lab: Path = LabOpt,
    port: Optional[int] = typer.Option(None, help="broker port (default: lab.yaml broker.port; 0: any free port)"),
    clock_scale: Optional[float] = typer.Option(None, "--clock-scale", help="lab seconds per wall second"),
    once: bool = typer.Option(False, help="start, print the status once and stop (a smoke test)"),
    power: bool = typer.Option(False, "--power", help="also lease every bench and switch its mains on while up "
                               "(a run cannot lease a powered bench until rig up stops)"),
) -> None:
    """Start the lab on this machine and stay up: broker, each bench's controller
    agent and its simulated parts.  Ctrl-C stops everything (outputs safe)."""
    from .launch import LabUp, lab_is_up

    cfg = load(lab)
    if port is None and lab_is_up(cfg):
        raise Exit(f"a broker already listens on {cfg.broker.host}:{cfg.broker.port}: the lab is probably up "
                   "(`rig status`); stop it first or pass --port")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with console.status("starting broker, agents and simulated parts..."):
        up_ = LabUp(cfg, port=port, clock_scale=clock_scale, lab_path=str(lab)).start()
    up_bus = up_.bus
    assert up_bus is not None      # start() connected it
    powered = None
    try:
        console.print(f"[green]lab '{cfg.lab.name}' up[/green]: broker {up_.endpoint}, "
                      f"clock x{up_.clock.scale:g}")
        for c in up_.describe():
            console.print(f"  {c['name']:<22} pid {c['pid']:<7} log {c['log']}")
        console.print(f"other shells: [bold]rig status --lab {lab}[/bold]; Ctrl-C stops the lab")
        from .lab import Lab, snapshot

        if power:
            powered = Lab.open(cfg, endpoint=up_.endpoint, holder=f"rig up --power ({os.getpid()})")
            for bname in cfg.benches:
                bench_ = powered.bench(bname)
                bench_.mains.on()
                if bench_.cfg.wiring.meter:
                    from .suites.observe import meter

                    meter(bench_).wait_answering(60)
                console.print(f"  {bname}: mains [yellow]on[/yellow], lease held by rig up")

        if once:
            console.print(render_status(cfg, snapshot(up_bus)))
            return
        with Live(render_status(cfg, snapshot(up_bus)), console=console, refresh_per_second=2) as live:
            while not stop.wait(2.0):
                if powered is not None:
                    for bname in cfg.benches:
                        powered.bench(bname).progress()   # rig up is alive: its leases stay
                dead = [c for c in up_.children if c.proc.poll() is not None]
                if dead:
                    raise Exit(f"{dead[0].name} stopped (code {dead[0].proc.returncode}):\n{dead[0].tail()}")
                live.update(render_status(cfg, snapshot(up_bus, quiet=0.2, limit=1.0)))
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping: every output to its safe state..."):
            if powered is not None:
                powered.close()      # releases the leases: mains off
            up_.stop()
        console.print("lab stopped")


# ----------------------------------------------------------------------------- status
def _age(presence: dict | None) -> str:
    if not presence:
        return "[dim]unknown[/dim]"
    if not presence.get("online"):
        return f"[red]offline[/red] ({presence.get('reason', '')})"
    wall, interval = presence.get("wall"), presence.get("heartbeat_interval") or 1.0
    if wall is not None and time.time() - wall > 3 * interval + 1:
        return f"[red]stale[/red] (last heartbeat {time.time() - wall:.0f} s ago)"
    return "[green]online[/green]"


def render_status(cfg: LabConfig, seen: dict[str, Any]) -> Table:
    """One table per lab: every bench's agent, relays, instruments, devices."""
    from .contract import ROOT

    table = Table(title=f"lab {cfg.lab.name}", expand=False, show_lines=False)
    notes: list[str] = []
    for col in ("bench", "part", "presence", "state", "detail"):
        table.add_column(col)
    for bname, bench in cfg.benches.items():
        def get(kind: str, name: str, channel: str) -> Any:
            return seen.get(f"{ROOT}/{bname}/{kind}/{name}/{channel}")

        agent = get("agent", "controller", "state") or {}
        lease = agent.get("lease")
        estop = (agent.get("estop") or {}).get("latched")
        table.add_row(bname, "agent", _age(get("agent", "controller", "presence")),
                      "[red]E-STOP[/red]" if estop else ("leased" if lease else "idle"),
                      f"lease: {lease['holder']}" if lease else "")
        if any(k.startswith(f"{ROOT}/{bname}/sim/") for k in seen):
            table.add_row("", "simulated world", _age(get("sim", "world", "presence")), "", "")
        for rname in bench.relays:
            s = get("relay", rname, "state") or {}
            state = s.get("state", "?")
            colour = "yellow" if state == "on" else "cyan"
            table.add_row("", f"relay {rname}", "", f"[{colour}]{state}[/{colour}]",
                          f"safe: {s.get('safe_state', '?')}; {s.get('reason', '')}")
        for dname, buttons in bench.actuators.items():
            s = get("actuator", dname, "state") or {}
            down = [b for b, v in (s.get("buttons") or {}).items() if isinstance(v, dict) and v.get("pressed")]
            state = f"[yellow]pressed: {', '.join(down)}[/yellow]" if down else ("released" if s else "?")
            table.add_row("", f"actuators {dname}", "", state, ", ".join(buttons))
        for iname, inst in bench.instruments.items():
            s = get("instrument", iname, "state") or {}
            detail = s.get("address") or inst.address
            table.add_row("", f"{inst.kind} {iname}", _age(get("instrument", iname, "presence")) if
                          get("instrument", iname, "presence") else "", _short(s.get("summary") or s.get("state")),
                          str(detail))
        for dname, dev in bench.devices.items():
            if dev.sealed:
                wired = ", ".join(bench.actuators.get(dname) or {}) or "none"
                table.add_row("", f"{dev.kind} {dname}", "sealed", "[dim]black box[/dim]",
                              f"reached through its actuators ({wired}), optical port, HAN and the head end")
                continue
            s = get("device", dname, "state") or {}
            meter = s.get("paired_meter")
            summary = escape(_short(s.get("supply") or s.get("summary") or "")) + \
                _pairing_note(dname, meter, get("device", meter, "state") if meter else None)
            table.add_row("", f"{dev.kind} {dname}", _age(get("device", dname, "presence")), summary,
                          _links(s.get("han")))
        relay = bench.wiring.mains_relay
        if relay and (get("relay", relay, "state") or {}).get("state") == "off" and bench.devices:
            notes.append(f"mains is off on {bname}: its meter and hub are unpowered, so the HAN is down; "
                         f"`rig mains {bname} on` powers it")
    if notes:
        table.caption = "\n".join(notes)
    return table


def _pairing_note(device: str, meter: str | None, meter_state: Any) -> str:
    """A device that names a meter it is paired with (a PPMID) believes so;
    the meter's own ``paired_ppmid`` decides (safety property 4)."""
    if not meter or not isinstance(meter_state, dict) or "paired_ppmid" not in meter_state:
        return ""
    pairs = meter_state["paired_ppmid"]
    if pairs == device:
        return ""
    return f" [red](not accepted: {escape(meter)} pairs {escape(str(pairs or 'no PPMID'))})[/red]"


def _links(han: Any) -> str:
    """Per band: RSSI and LQI of the link, or that there is none."""
    if not isinstance(han, dict):
        return str(han or "")
    out = []
    for band, v in han.items():
        if not isinstance(v, dict) or band == "joined":
            continue
        if v.get("rssi") is None or not v.get("up", True):
            out.append(f"{band}: no link")
        else:
            out.append(f"{band}: RSSI {v['rssi']:.0f} dBm, LQI {v.get('lqi', '?')}")
    return "; ".join(out)


def _short(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in list(value.items())[:4])
    return str(value)


@app.command()
def status(
    lab: Path = LabOpt,
    as_json: bool = typer.Option(False, "--json", help="print the retained bus state as JSON"),
    bench: Optional[str] = typer.Option(None, help="only this bench"),
) -> None:
    """Benches, agents, relays, instruments and devices, as the bus reports them."""
    from .broker import endpoint_for
    from .bus import Bus
    from .lab import endpoint_from_env, snapshot

    cfg = load(lab)
    ep = (endpoint_from_env() or endpoint_for(cfg.broker)).for_role("observer")
    with Bus(ep, client_id=f"status-{os.getpid()}") as bus:
        seen = snapshot(bus, bench)
    if as_json:
        print(json.dumps(seen, indent=2, sort_keys=True))
        return
    console.print(render_status(cfg, seen))


# ----------------------------------------------------------------------------- relay, mains, estop
@app.command()
def relay(
    bench: str = typer.Argument(..., help="bench name, e.g. bench-1"),
    name: str = typer.Argument(..., help="relay name, e.g. mains"),
    state: str = typer.Argument(..., help="on or off"),
    lab: Path = LabOpt,
    hold: Optional[float] = typer.Option(
        None, help="lab seconds to hold the lease after switching; default: until Ctrl-C"),
) -> None:
    """Switch a relay.  Switching *to* its safe state needs no lease and returns at
    once; switching away from it leases the bench and holds the lease (and the
    heartbeat that keeps the output on) until --hold passes or Ctrl-C: then the
    bench goes back to its safe state."""
    from .lab import Lab

    if state not in ("on", "off"):
        raise Exit("state must be 'on' or 'off'", 2)
    cfg = load(lab)
    rcfg = cfg.bench(bench).relays.get(name)
    if rcfg is None:
        raise UnknownPart(f"bench {bench} has no relay '{name}'; relays: "
                          f"{', '.join(cfg.bench(bench).relays) or 'none'}")
    with Lab.open(cfg) as lab_:
        if state == rcfg.safe_state:
            b = lab_.bench(bench, lease=False)
            b.relay(name).set(state == "on")
            console.print(f"{bench}/{name}: [cyan]{state}[/cyan] (its safe state)")
            return
        b = lab_.bench(bench)
        b.relay(name).set(state == "on")
        console.print(f"{bench}/{name}: [yellow]{state}[/yellow], confirmed by the agent")
        hold_lease(lab_.clock, hold, f"{bench}/{name} {state}")
    console.print(f"lease released: {bench} is in its safe state")


@app.command()
def mains(
    bench: str = typer.Argument(..., help="bench name, e.g. bench-1"),
    state: str = typer.Argument(..., help="on or off"),
    lab: Path = LabOpt,
    hold: Optional[float] = typer.Option(None, help="lab seconds to keep mains on; default: until Ctrl-C"),
) -> None:
    """Power a bench: AC source output on, then the mains relay closed (as the wiring
    in lab.yaml says); `off` opens the relay (a bench with a supply and no relay: switches the
    supply's output off).  `on` holds the bench lease until --hold
    passes or Ctrl-C, then the bench goes back to its safe state (mains off)."""
    from .lab import Lab

    if state not in ("on", "off"):
        raise Exit("state must be 'on' or 'off'", 2)
    with Lab.open(load(lab)) as lab_:
        if state == "off":
            b = lab_.bench(bench, lease=False)
            b.mains.off()          # the relay open, or on a bench with no relay the supply's output off
            console.print(f"{bench}: mains [cyan]off[/cyan] (its safe state)")
            return
        b = lab_.bench(bench)
        b.mains.on()
        console.print(f"{bench}: mains [yellow]on[/yellow] (supply and relay confirmed by the agent)")
        hold_lease(lab_.clock, hold, f"{bench} mains on")
    console.print(f"lease released: {bench} is in its safe state")


@app.command()
def estop(
    bench: str = typer.Argument(..., help="bench name"),
    action: str = typer.Argument("trip", help="trip (latch the E-stop: every output safe) or reset"),
    lab: Path = LabOpt,
) -> None:
    """Trip or reset a bench's software E-stop (the GPIO input trips it too)."""
    from .lab import Lab

    with Lab.open(load(lab)) as lab_:
        if action not in ("trip", "reset"):
            raise Exit("action must be trip or reset", 2)
        # a trip needs no lease (towards safe); a reset needs the bench's lease
        b = lab_.bench(bench, lease=action == "reset")
        if action == "trip":
            b.estop("rig estop (command line)")
            console.print(f"[red]{bench}: E-stop latched[/red]; every output is safe. "
                          f"`rig estop {bench} reset` to clear")
        elif action == "reset":
            b.reset_estop()
            console.print(f"{bench}: E-stop reset (outputs stay safe until commanded)")
        else:
            raise Exit("action must be trip or reset", 2)


# ----------------------------------------------------------------------------- agent, sim
def _child_endpoint(cfg: LabConfig, broker: Optional[str]):
    """``--broker URL`` (an Endpoint URL: TLS and credentials included), else
    ``RIG_BROKER_URL``, else lab.yaml's broker."""
    from .broker import Endpoint, endpoint_for
    from .lab import endpoint_from_env

    if broker:
        return Endpoint.from_url(broker)
    return endpoint_from_env() or endpoint_for(cfg.broker)


@app.command()
def agent(
    bench: str = typer.Option(..., "--bench", "-b", help="the bench this controller drives"),
    lab: Path = LabOpt,
    broker: Optional[str] = typer.Option(None, help="broker URL, e.g. mqtts://agent-bench-3@host:8883/?ca_file=..."
                                         "&password_env=VAR (default: lab.yaml broker)"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Run a bench's controller agent (on the bench's Raspberry Pi; `rig up` starts
    one per bench).  Outputs go safe at start, exit, SIGTERM and lost heartbeat."""
    from .agent import Agent
    from .launch import child_clock, die_with_parent

    die_with_parent()
    setup_logging(verbose)
    cfg = load(lab)
    cfg.bench(bench)
    endpoint = _child_endpoint(cfg, broker)
    Agent(cfg, bench, endpoint, child_clock(cfg, endpoint, "agent")).run()


@app.command()
def sim(
    bench: str = typer.Option(..., "--bench", "-b", help="the bench whose simulated parts to serve"),
    lab: Path = LabOpt,
    broker: Optional[str] = typer.Option(None, help="mqtt://host:port (default: lab.yaml broker)"),
    verbose: bool = typer.Option(False, "-v"),
) -> None:
    """Serve a bench's simulated parts: physics, instruments, device twins, HAN
    (`rig up` starts it for benches with simulated parts)."""
    from .launch import die_with_parent, serve_simulated_bench

    die_with_parent()
    setup_logging(verbose)
    cfg = load(lab)
    cfg.bench(bench)
    serve_simulated_bench(cfg, bench, _child_endpoint(cfg, broker))


# ----------------------------------------------------------------------------- run
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    lab: Path = LabOpt,
    suite: Optional[str] = typer.Option(None, help="comma-separated suites (default: all)"),
    k: Optional[str] = typer.Option(None, "-k", help="pytest -k expression"),
    bench: Optional[str] = typer.Option(None, help="benches to run on, comma-separated (default: every bench "
                                        "of the lab, side by side: one pytest-xdist worker per bench)"),
    clock_scale: Optional[float] = typer.Option(None, "--clock-scale", help="override lab.yaml's clock scale"),
    results: Optional[Path] = typer.Option(None, help="results directory (default: lab.yaml results.dir)"),
) -> None:
    """Run the nightly suite on every bench of the lab (bringing a simulated lab
    up if it is not up), write one run folder and exit non-zero on any failure.

    Each bench runs on its own worker, which leases it; in a lab of several
    benches a check's id carries its bench as its first parameter.  A bench whose agent
    is offline, E-stopped or leased by someone else is reported as not run,
    with the reason, and the others go on; a check needing a part its bench
    lacks is skipped with the reason.  Exit: 0 passed; 1 a check failed;
    6 what ran passed but a bench did not run or was cut short.  Extra
    arguments go to pytest."""
    from .runner import run_suites

    cfg = load(lab)
    code = run_suites(cfg, lab_path=lab, suites=suite, keyword=k, bench=bench, clock_scale=clock_scale,
                      results_dir=results, extra=list(ctx.args), console=console)
    raise typer.Exit(code)


@app.command()
def selftest(
    lab: Path = LabOpt,
    bench: Optional[str] = typer.Option(None, help="the bench to run on (default: the first)"),
    trials: int = typer.Option(2, min=1, help="suites.safety.trials during the self-test"),
    fault: Optional[str] = typer.Option(None, help="only this fault profile (and, healthy, the checks that claim it)"),
    faults: Optional[str] = typer.Option(None, help="only these fault profiles, comma-separated, e.g. "
                                         "skips_arm,utrn_reuse (and, healthy, the checks that claim them)"),
    results: Optional[Path] = typer.Option(None, help="results directory (default: lab.yaml results.dir)"),
    jobs: int = typer.Option(1, min=1, help="labs run at once (each is a broker, an agent, a simulated bench and "
                             "pytest); more is faster, but at clock scale 60 a loaded machine's jitter is lab seconds"),
) -> None:
    """Show that every safety and outage check fails against the device fault that breaks it.

    Runs each check on the healthy lab (it must pass), then brings the lab up with
    each fault profile its checks name (detects) and runs them (each must fail).
    Writes a sealed run folder; exits 1 if any check cannot be shown to fail, if a
    lab ran no check, or (full run) if a safety or outage check names no fault or a
    fault profile of rig/faults.py is claimed by no check; 2 on bad arguments."""
    from .selftest import CollectionError, SelftestUsageError, run_selftest

    load(lab)
    try:
        code = run_selftest(lab, bench=bench, trials=trials, only_fault=fault, results_dir=results, console=console,
                            jobs=jobs, faults=[faults] if faults else None)
    except SelftestUsageError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except CollectionError as exc:
        console.print(f"[red]self-test cannot run:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


# ----------------------------------------------------------------------------- the other modules' commands
# Every sub-app and command defined outside this module is registered here, and only here.
SUB_APPS: dict[str, typer.Typer] = {"instrument": instrument_app, "evidence": evidence_app, "broker": broker_app}
for _name, _sub in SUB_APPS.items():
    app.add_typer(_sub, name=_name)
for _command in (verify, history, report, probe):
    app.command(_command.__name__)(_command)


@app.command()
def version() -> None:
    """Print the rig's version."""
    console.print(f"rig {__version__}")


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
        # standalone_mode=False returns a command's typer.Exit code instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except SystemExit:
        raise
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exit as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.code)
    except (BusError, BrokerError, InstrumentError, AddressError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except CommandError as exc:
        err.print(f"[red]refused:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(4)
    except UnknownPart as exc:
        err.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("RIG_DEBUG"):
            raise
        from .launch import LaunchError

        if isinstance(exc, LaunchError):
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(3)
        # click's exceptions (bundled inside typer since 0.20): usage errors, abort
        code = getattr(exc, "exit_code", None)
        if hasattr(exc, "show") and isinstance(code, int):
            exc.show()
            sys.exit(code)
        if isinstance(exc, typer.Abort):
            sys.exit(130)
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc} (RIG_DEBUG=1 for the traceback)",
                  highlight=False, soft_wrap=True)
        sys.exit(1)
