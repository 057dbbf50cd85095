"""``rig verify``, ``rig history``, ``rig report`` and ``rig evidence safety``:
the run folder as evidence (rig.evidence, docs/evidence.md).

::

    rig verify runs/20261123T093000Z-ab12cd          # exit 0: every file matches its manifest
    rig history --last 10                            # pass rates, duration trends, flaky tests
    rig report runs/20261123T093000Z-ab12cd          # rebuild report.html
    rig evidence safety --run runs/20261123T093000Z-ab12cd --pdf
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text  # test ids are text: a parametrised id's [armed] is not rich markup

console = Console()
if not console.is_terminal:  # logs and CI: do not squeeze test ids into 80 columns
    console = Console(width=160)
err = Console(stderr=True)

evidence_app = typer.Typer(name="evidence", help="Evidence documents built from a run folder.",
                           no_args_is_help=True, add_completion=False)

_SPARK = "▁▂▃▄▅▆▇█"


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)  # SystemExit: typer.Exit's code is lost under rig.cli.main (standalone_mode=False)


# ----------------------------------------------------------------------------- verify
def verify(run: Path = typer.Argument(..., help="the run folder, e.g. runs/20261123T093000Z-ab12cd")) -> None:
    """Check a run folder against its MANIFEST.sha256.

    Exit 0 when every file matches; 1 naming each changed, missing or extra
    file; 2 when the folder was never sealed."""
    from .evidence.manifest import ManifestError, run_hash
    from .evidence.manifest import verify as check

    try:
        v = check(run)
    except ManifestError as exc:
        _fail(str(exc))
    if v.intact:
        console.print(f"[green]{run}: intact[/green], {v.checked} files match MANIFEST.sha256 "
                      f"(run hash {run_hash(run)})", highlight=False)
        return
    for line in v.lines():
        console.print(f"[red]{line}[/red]", highlight=False)
    err.print(f"[red]{run}: NOT intact[/red]: {len(v.changed)} changed, {len(v.missing)} missing, "
              f"{len(v.extra)} extra", highlight=False)
    sys.exit(1)


# ----------------------------------------------------------------------------- report
def report(
    run: Path = typer.Argument(..., help="the run folder"),
    out: Optional[Path] = typer.Option(None, help="where to write (default: RUN/report.html)"),
) -> None:
    """Rebuild a run's HTML report.

    A sealed run keeps its manifest intact: if the new report differs from
    the sealed one it is written beside the folder."""
    import hashlib

    from .evidence import MANIFEST_FILE, REPORT_FILE
    from .evidence.manifest import read_manifest
    from .evidence.record import RecordError
    from .evidence.report import render

    try:
        text = render(run)
    except RecordError as exc:
        _fail(str(exc))
    if out is None:
        out = run / REPORT_FILE
        manifest = run / MANIFEST_FILE
        if manifest.exists():
            sealed = read_manifest(manifest).get(REPORT_FILE)
            if sealed == hashlib.sha256(text.encode("utf-8")).hexdigest():
                console.print(f"{out}: unchanged (matches the sealed run)")
                return
            out = run.with_name(f"{run.name}.report.html")
            console.print(f"{run} is sealed: writing the rebuilt report beside it, so the run still verifies")
    out.write_text(text, encoding="utf-8")
    console.print(f"report: {out}")


# ----------------------------------------------------------------------------- evidence safety
def _say_which_selftest(run: Path, selftest: Optional[Path]) -> None:
    """Before building the pack: which self-test vouches for the run's checks,
    in red what is wrong with it, and the lab's deviations."""
    from rich.markup import escape

    from .evidence.record import RecordError, load_run
    from .evidence.safety_pack import resolve_selftest

    if selftest is not None and not (selftest / "run.json").exists() and not (selftest / "journal.jsonl").exists():
        _fail(f"--selftest {selftest}: not a run folder (no run.json); give the folder `rig selftest` printed")
    try:
        rec = load_run(run)
        st = resolve_selftest(run, rec, selftest)
    except RecordError as exc:
        _fail(str(exc))
    if st["run"]:
        console.print(f"self-checks from {st['run']['id']} ({st['run']['where']})", highlight=False)
    for problem in st["problems"]:
        console.print(f"[red]{escape(problem)}[/red]", highlight=False)
    if rec.get("deviations"):
        console.print(f"[red]the lab declares {len(rec['deviations'])} deviation(s) from the requirement values[/red]")


@evidence_app.command("safety")
def safety(
    run: Path = typer.Option(..., "--run", help="the run folder"),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: RUN.safety.html beside the run); "
                                       "for a run of several benches, the folder the packs go to"),
    pdf: bool = typer.Option(False, "--pdf", help="also print it to PDF with headless Chromium"),
    selftest: Optional[Path] = typer.Option(
        None, "--selftest", help="a `rig selftest` run folder: its self-checks prove the checks can fail"),
    bench: Optional[str] = typer.Option(None, "--bench", help="only this bench's pack (comma-separated: several)"),
) -> None:
    """Build the PPMID enable-supply safety evidence pack of a run: one per
    device under test (a run of several benches gives RUN.safety.<bench>.html
    for each bench, from that bench's checks and devices only).

    Per safety property: the trials observed, the instruments that observed
    them, the faults the checks were shown to detect (self-checks from
    --selftest, else from the latest sealed self-test of the lab), the lab's
    deviations from the requirement values.

    The six safety properties: trials, failures, worst enable latency, stale
    and replay results, self-checks, and the hash of the run it came from."""
    from .evidence.record import RecordError, load_run
    from .evidence.safety_pack import build, build_all, devices_under_test

    _say_which_selftest(run, selftest)
    try:
        several = len(devices_under_test(load_run(run))) > 1
        if several:
            if out is not None and out.suffix == ".html":
                _fail(f"{run.name} has several benches: --out names a folder for their packs, not one file")
            packs = build_all(run, out, pdf=pdf, selftest_dir=selftest,
                              benches=[b.strip() for b in bench.split(",")] if bench else None)
        else:
            packs = [(None, *build(run, out, pdf=pdf, selftest_dir=selftest))]
    except RecordError as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        _fail(str(exc), 1)
    for name, html_path, pdf_path in packs:
        where = f" ({name})" if name else ""
        console.print(f"safety pack{where}: {html_path}" + (f" and {pdf_path}" if pdf_path else ""), highlight=False)


# ----------------------------------------------------------------------------- history
def _spark(values: list[Any]) -> str:
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums:
        return ""
    lo, hi = min(nums), max(nums)
    out = []
    for v in values:
        if not isinstance(v, (int, float)):
            out.append(" ")
        else:
            out.append(_SPARK[0 if hi == lo else int((v - lo) / (hi - lo) * (len(_SPARK) - 1))])
    return "".join(out)


_MARK = {"passed": "[green]✓[/green]", "failed": "[red]✗[/red]", "error": "[red]E[/red]", "skipped": "[dim]s[/dim]",
         "xfailed": "[dim]x[/dim]", "xpassed": "[red]X[/red]"}


def history(
    lab: Path = typer.Option(Path("lab.yaml"), "--lab", "-l", help="the lab file (its results store and folder)",
                             envvar="RIG_LAB"),
    last: int = typer.Option(20, "--last", "-n", min=1, help="how many runs to look at"),
    test: Optional[str] = typer.Option(None, "--test", "-t", help="only tests whose id contains this"),
    store: Optional[str] = typer.Option(None, help="store URL (default: lab.yaml lab.results.store)"),
    results: Optional[Path] = typer.Option(None, help="run folders to import (default: lab.yaml lab.results.dir)"),
    as_json: bool = typer.Option(False, "--json", help="print runs and trends as JSON"),
) -> None:
    """Show runs and per-test trends from the results store.

    Pass rate, verdicts and durations over the last runs, the tests that
    changed since the previous run, flaky tests (passed and failed on the
    same software and firmware), incomplete runs marked as such."""
    from .config import ConfigError, load_lab
    from .evidence.store import ResultsStore, StoreError, sync_run_folders

    lab_name = None
    if store is None or results is None:
        try:
            cfg = load_lab(lab)
        except ConfigError as exc:
            if store is None:
                _fail(f"{exc} (or give --store and --results)")
            cfg = None
        if cfg is not None:
            store = store or cfg.lab.results.store
            results = results or cfg.lab.results.dir
            lab_name = cfg.lab.name
    assert store is not None          # given, or from the lab file (or _fail ended the command)
    try:
        with ResultsStore.open(store) as st:
            if results is not None:
                sync_run_folders(st, results)
            runs = st.runs(last, lab_name)
            trends = st.test_trends(last, lab_name, test)
    except StoreError as exc:
        _fail(str(exc))
    changes = _changes(runs, trends)
    if as_json:
        print(json.dumps({"runs": runs, "changes": changes,
                          "tests": [{"nodeid": t.nodeid, "bench": t.bench, "verdicts": t.verdicts,
                                     "durations": t.durations,
                                     "run_ids": t.run_ids, "pass_rate": t.pass_rate, "flaky": t.flaky,
                                     "flaky_on": t.flaky_on} for t in trends]}, indent=2, default=str))
        return
    if not runs:
        console.print(f"no runs in {store} yet: `rig run` makes one")
        return
    _print_runs(runs)
    _print_trends(trends, len(runs))
    if changes:
        t = Table(title=f"changed since the previous run ({runs[1]['id']} -> {runs[0]['id']})", title_justify="left")
        for col in ("test", "before", "now"):
            t.add_column(col)
        for c in changes:
            t.add_row(Text(c["nodeid"]), _MARK.get(c["before"], c["before"] or "—") + f" {c['before'] or 'not run'}",
                      _MARK.get(c["now"], c["now"] or "—") + f" {c['now'] or 'not run'}")
        console.print(t)


def _changes(runs: list[dict[str, Any]], trends: list[Any]) -> list[dict[str, Any]]:
    """Tests whose verdict differs between the last two runs."""
    if len(runs) < 2:
        return []
    now_id, before_id = runs[0]["id"], runs[1]["id"]
    out = []
    for t in trends:
        by_run = dict(zip(t.run_ids, t.verdicts))
        before, now = by_run.get(before_id), by_run.get(now_id)
        if before != now:
            out.append({"nodeid": t.nodeid, "before": before, "now": now})
    return out


def _print_runs(runs: list[dict[str, Any]]) -> None:
    from .evidence.report import iso

    t = Table(title="runs (newest first)", title_justify="left")
    for col in ("run", "started (UTC)", "state", "status", "benches", "tests", "passed", "failed", "clock",
                "fault profiles"):
        t.add_column(col)
    for r in runs:
        state = {"complete": "[green]complete[/green]", "running": "[yellow]running[/yellow]"}.get(
            r["state"], "[red]INCOMPLETE[/red]")
        status = r.get("status") or ""
        colour = "green" if status == "passed" else "red" if status in ("failed", "internal_error") else "yellow"
        faults = json.loads(r.get("faults") or "{}")
        t.add_row(r["id"], iso(r.get("started_wall"))[:19], state, f"[{colour}]{status}[/{colour}]",
                  _bench_cell(r), str(r.get("total") if r.get("total") is not None else "?"), str(r.get("passed") or 0),
                  str((r.get("failed") or 0) + (r.get("errors") or 0)), f"x{r.get('clock_scale') or 0:g}",
                  "; ".join(f"{k}: {', '.join(v)}" for k, v in faults.items()) or "none")
    console.print(t)


_BENCH_COLOUR = {"passed": "green", "failed": "red", "not_run": "yellow", "incomplete": "yellow",
                 "running": "yellow"}


def _bench_cell(run: dict[str, Any]) -> Text:
    """Each bench of a run with its status (and why, when it did not run)."""
    try:
        benches = json.loads(run.get("benches") or "null")
    except ValueError:
        benches = None
    if not benches:
        return Text(run.get("bench") or "—")
    out = Text()
    for i, (name, b) in enumerate(benches.items()):
        status = (b or {}).get("status") or "?"
        if i:
            out.append("\n")
        out.append(f"{name} ")
        out.append(status.replace("_", " "), style=_BENCH_COLOUR.get(status, ""))
        if (b or {}).get("reason") and status in ("not_run", "incomplete"):
            out.append(f" ({b['reason'][:60]})", style="dim")
    return out


def _print_trends(trends: list[Any], nruns: int) -> None:
    """One table per bench (a lab run's tests carry their bench), oldest to newest."""
    groups: dict[str | None, list[Any]] = {}
    for tr in trends:
        groups.setdefault(tr.bench, []).append(tr)
    for bench, group in groups.items():
        where = f" on {bench}" if bench and len(groups) > 1 else ""
        _print_trend_table(group, nruns, f"tests{where} over the last {nruns} runs (oldest to newest)")


def _print_trend_table(trends: list[Any], nruns: int, title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("test", "pass rate", "verdicts", "duration (wall s)", "last", "flaky"):
        t.add_column(col)
    for tr in trends:
        rate = "—" if tr.pass_rate is None else f"{tr.pass_rate:.0%} ({tr.passed}/{tr.runs})"
        last = next((d for d in reversed(tr.durations) if d is not None), None)
        t.add_row(Text(tr.nodeid), rate, "".join(_MARK.get(v, "?") for v in tr.verdicts), _spark(tr.durations),
                  "—" if last is None else f"{last:.2f}",
                  "[red]FLAKY[/red] (same software and firmware)" if tr.flaky else "")
    console.print(t)
