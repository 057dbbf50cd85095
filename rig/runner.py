"""``rig run``: bring the lab up if needed, run the suites with pytest, keep
everything in a run folder, seal it, and say what failed and why.

Every bench of the lab by default (``--bench`` selects some): one
pytest-xdist worker per bench, each leasing its own bench, all writing into
one run folder whose ``run.json`` has a section per bench.  A bench that
cannot run (agent offline, leased by someone else, E-stop) is reported as
not run with the reason; the others go on.

Exit codes: 0 every bench ran and passed; 1 a check failed; 2 interrupted;
5 no checks selected; 6 what ran passed but a bench did not run or was cut
short (``partial``).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from rich.console import Console
from rich.markup import escape

from .config import LabConfig, UnknownPart
from .launch import LabUp, lab_is_up

SUITES_DIR = Path(__file__).parent / "suites"


def available_suites() -> dict[str, Path]:
    return {p.stem.removeprefix("test_"): p for p in sorted(SUITES_DIR.glob("test_*.py"))}


def suite_files(suites: str | None) -> list[Path]:
    available = available_suites()
    if not suites:
        return list(available.values())
    chosen = []
    for name in (s.strip() for s in suites.split(",") if s.strip()):
        if name not in available:
            raise UnknownPart(f"no suite '{name}'; suites: {', '.join(available)}")
        chosen.append(available[name])
    return chosen


def new_run_dir(results_dir: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = results_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def pytest_args(files: list[Path], run_dir: Path, lab_path: Path, broker_url: str, store: str,
                bench: str | None, keyword: str | None, extra: list[str], workers: int = 0) -> list[str]:
    ini = run_dir / "pytest.ini"
    ini.write_text("[pytest]\n")
    args = [str(f) for f in files] + [
        "-c", str(ini), "--rootdir", str(SUITES_DIR), "-p", "no:cacheprovider",
        "--lab", str(lab_path), "--rig-broker", broker_url,
        "--junitxml", str(run_dir / "junit.xml"), "-v", "-rfE",
        "--rig-run-dir", str(run_dir), "--rig-no-seal", "--rig-store", store,
    ]
    if bench:
        args += ["--bench", bench]
    if workers > 1:
        # one worker per bench (fixtures/bench_scheduling.py)
        args += ["-n", str(workers)]
    if keyword:
        args += ["-k", keyword]
    return args + list(extra)


def explain_failures(run_dir: Path, console: Console) -> None:
    """One line per failed test: its requirement ids and the safety property it checks."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return
    for test in record.get("tests", []):
        if test.get("verdict") not in ("failed", "error"):
            continue
        reqs = ", ".join(test.get("requirements") or []) or "no requirement id"
        props = ", ".join(f"safety property {p}" for p in test.get("safety_properties") or [])
        reason = (test.get("failure") or {}).get("message", "") if isinstance(test.get("failure"), dict) \
            else str(test.get("failure") or "")
        reason = reason.strip().splitlines()[0][:200] if reason.strip() else ""
        name = str(test.get("name", test.get("nodeid")))
        cites = f"[{reqs}{'; ' + props if props else ''}]"
        # text, not markup: a parametrised test's [armed] and the cited ids must show as they are
        console.print(f"  [red]FAILED[/red] {escape(f'{name} {cites} {reason}')}", highlight=False)


def explain_benches(run_dir: Path, console: Console) -> None:
    """One line per bench of a lab run: its verdict, counts, and why it did
    not run or was cut short."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return
    benches = record.get("benches") or {}
    if len(benches) < 2 and not any(sec.get("reason") for sec in benches.values()):
        return
    colours = {"passed": "green", "failed": "red", "not_run": "yellow", "incomplete": "yellow"}
    for name, sec in benches.items():
        status = sec.get("status", "?")
        s = sec.get("summary") or {}
        counts = (f"{s.get('passed', 0)} passed, {s.get('failed', 0) + s.get('error', 0)} failed, "
                  f"{s.get('skipped', 0)} skipped" if s.get("total") else "no checks ran")
        reason = f": {sec['reason']}" if sec.get("reason") else ""
        colour = colours.get(status, "white")
        console.print(f"  bench {escape(name)}: [{colour}]{status.upper().replace('_', ' ')}[/{colour}] "
                      f"({counts}){escape(reason)}", highlight=False, soft_wrap=True)


def xdist_available() -> bool:
    """Whether pytest-xdist is installed (found, not imported: pytest must
    import its plugins itself to rewrite their asserts)."""
    import importlib.util

    return importlib.util.find_spec("xdist") is not None


def run_suites(cfg: LabConfig, lab_path: Path, suites: str | None = None, keyword: str | None = None,
               bench: str | None = None, clock_scale: float | None = None, results_dir: Path | None = None,
               extra: list[str] | None = None, console: Console | None = None) -> int:
    from .benches import select_benches

    console = console or Console()
    files = suite_files(suites)
    benches = select_benches(cfg, bench)
    run_dir = new_run_dir(Path(results_dir or cfg.lab.results.dir))
    store = cfg.lab.results.store
    console.print(f"run folder: {run_dir}")
    workers = len(benches) if len(benches) > 1 and xdist_available() else 0
    if len(benches) > 1:
        how = f"{workers} workers, one per bench" if workers else "one after another (pytest-xdist not installed)"
        console.print(f"benches: {', '.join(benches)} ({how})")
    up = None
    if lab_is_up(cfg):
        from .broker import endpoint_for

        ep = endpoint_for(cfg.broker)
        # the orchestrator's credentials (the lab's generated store, or lab.yaml's) and TLS, in one URL
        url = (ep.as_user("orchestrator") if ep.store else ep).url
        console.print(f"using the lab that is up at {ep}")
        if clock_scale:
            console.print("[yellow]--clock-scale ignored: the running lab keeps its own clock[/yellow]")
    else:
        with console.status("bringing the simulated lab up..."):
            up = LabUp(cfg, port=0, clock_scale=clock_scale, lab_path=str(lab_path),
                       log_dir=run_dir / "logs", benches=benches).start()
        url = up.endpoint.as_user("orchestrator").url
        console.print(f"lab up: broker {up.endpoint}, clock x{up.clock.scale:g}")
    try:
        code = int(pytest.main(pytest_args(files, run_dir, lab_path, url, store, ",".join(benches), keyword,
                                           extra or [], workers)))
    finally:
        if up is not None:
            with console.status("stopping the lab (every output safe)..."):
                up.stop()
    from .evidence.seal import seal_run

    sealed = seal_run(run_dir, store_url=store)
    verdict = ("[green]PASSED[/green]" if code == 0 else "[yellow]PARTIAL[/yellow]" if code == 6
               else "[red]FAILED[/red]")
    explain_benches(run_dir, console)
    if code != 0:
        explain_failures(run_dir, console)
    console.print(f"{verdict}  results: {run_dir}")
    explain_deviations(run_dir, console)
    console.print(f"  report: {sealed.report}  run hash: {sealed.manifest_sha256}")
    if sealed.report_error:
        console.print(f"  [yellow]report not written: {sealed.report_error}[/yellow]")
    if sealed.store_error:
        console.print(f"  [yellow]results store not updated: {sealed.store_error}[/yellow]")
    return code


def explain_deviations(run_dir: Path, console: Console) -> None:
    """One red line naming the lab's declared deviations from the requirement values, if any."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return
    devs = [d for d in record.get("deviations") or [] if isinstance(d, dict)]
    if not devs:
        return

    def one(d: dict) -> str:
        units = f" {d['units']}" if d.get("units") else ""
        req = f"{d['requirement']}: " if d.get("requirement") else ""
        return f"{d.get('key')} = {d.get('value')}{units} ({req}requirement value {d.get('reference')}{units})"

    console.print(f"  [red]lab deviations from the requirement values:[/red] {escape('; '.join(one(d) for d in devs))}",
                  highlight=False)
