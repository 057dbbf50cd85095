"""``rig selftest``: show that every safety and outage check can fail.

A check that cannot fail proves nothing.  Each check in the suites names,
with ``@pytest.mark.detects(...)``, the device fault profiles that break the
property it checks (rig/faults.py).  The self-test

1. runs every such check on the healthy lab: each must pass;
2. for each fault profile, brings the lab up with that fault on its device
   and runs the checks that claim to detect it: each must fail;
3. lists any safety check that names no fault (a defect: nothing shows it
   can fail), and any fault profile no check detects;

and writes a run folder whose record carries every result as a self-check
entry (the safety evidence pack shows them), sealed like any run.

The checks run with fewer repeats (``suites.safety.trials`` from
``--trials``, default 2; the outage sweep's two ends; two flickers): a fault
profile breaks its property on the first trial.  Each lab runs in processes
of its own (broker, agent, world, pytest), ``--jobs`` at a time (default 1:
at clock scale 60 a loaded machine's scheduling jitter is lab seconds).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .config import LabConfig, OutageSuite, load_lab_text
from .faults import BREAKS, FAULTS
from .launch import LabUp
from .runner import SUITES_DIR, new_run_dir

#: the suites whose checks the self-test exercises
CHECKED_SUITES = ("safety", "outage")


@dataclass
class Check:
    nodeid: str
    name: str
    detects: list[str]
    requirements: list[str]
    safety: list[int]


@dataclass(eq=False)  # pytest keeps plugin objects in sets: they must stay hashable
class Collected:
    """A pytest plugin object that records each collected check's markers."""

    checks: dict[str, Check] = field(default_factory=dict)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            detects = [f for m in item.iter_markers("detects") for f in m.args]
            reqs = [r for m in item.iter_markers("requirement") for r in m.args]
            safety = [int(p) for m in item.iter_markers("safety") for p in m.args if str(p).isdigit()]
            key = f"{Path(str(item.fspath)).stem}::{item.name}"
            self.checks[key] = Check(key, item.name, detects, reqs, safety)


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """``{"<module>::<test>": (verdict, reason)}`` from a JUnit XML file."""
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for case in ElementTree.parse(path).iter("testcase"):
        key = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            message = (bad.get("message") or bad.text or "").strip()
            out[key] = ("failed", message.splitlines()[0][:300] if message else "")
        elif case.find("skipped") is not None:
            out[key] = ("skipped", "")
        else:
            out[key] = ("passed", "")
    return out


def _files() -> list[str]:
    return [str(SUITES_DIR / f"test_{s}.py") for s in CHECKED_SUITES if (SUITES_DIR / f"test_{s}.py").exists()]


def _pytest_args(ini: Path) -> list[str]:
    return _files() + ["-c", str(ini), "--rootdir", str(SUITES_DIR), "-p", "no:cacheprovider", "-rfE"]


class CollectionError(RuntimeError):
    """The suites could not be collected: the self-test would prove nothing."""


def collect(lab_path: Path, ini: Path) -> dict[str, Check]:
    plugin = Collected()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main(_pytest_args(ini) + ["--collect-only", "--lab", str(lab_path)], plugins=[plugin])
    if code != 0 or not plugin.checks:
        raise CollectionError(f"collecting the {', '.join(CHECKED_SUITES)} suites failed (pytest exit {int(code)}, "
                              f"{len(plugin.checks)} checks found):\n{out.getvalue()[-3000:]}")
    return plugin.checks


def run_checks(label: str, text: str, fault: str | None, bench: str, tmpdir: Path, log_dir: Path,
               ini: Path) -> dict[str, tuple[str, str]]:
    """Bring a lab up from ``text`` and run, in a pytest process of their own,
    the checks that detect ``fault`` (every check when None)."""
    path = tmpdir / f"{label}.yaml"
    path.write_text(text)
    lab = load_lab_text(text, str(path))
    log_dir.mkdir(parents=True, exist_ok=True)
    junit = log_dir / "junit.xml"
    with LabUp(lab, port=0, lab_path=str(path), log_dir=log_dir) as up:
        env = dict(os.environ)
        with open(log_dir / "pytest.txt", "w") as out:
            subprocess.run([sys.executable, "-m", "pytest", *_pytest_args(ini), "--lab", str(path),
                            "--rig-broker", up.endpoint.as_user("orchestrator").url, "--bench", bench, "--rig-detects", fault or "ANY",
                            "--junitxml", str(junit)], stdout=out, stderr=subprocess.STDOUT, env=env,
                           cwd=tmpdir, check=False)
    return junit_outcomes(junit)


def device_for(cfg: LabConfig, bench: str, fault: str) -> str | None:
    """The device of the bench that the fault profile belongs on."""
    kind = next((k for k, names in FAULTS.items() if fault in names), None)
    b = cfg.bench(bench)
    if kind == "esme" and b.wiring.meter:
        return b.wiring.meter
    if kind == "ppmid":
        meter = b.devices.get(b.wiring.meter or "")
        paired = getattr(getattr(meter, "settings", None), "paired_ppmid", None)
        if paired:
            return paired
    return b.device_of_kind(kind) if kind else None


def parts(fault: str) -> list[str]:
    """A compound profile ``a+b`` is several faults at once, each on its own
    device: for a property only their combination breaks (the PPMID keeps a
    stale press *and* the meter accepts it)."""
    return [f for f in fault.split("+") if f]


def lab_text(base: dict[str, Any], bench: str, trials: int, faults: dict[str, str] | None = None) -> str:
    """The lab file with lowered trial counts and ``faults`` ({fault: device}) injected."""
    data = copy.deepcopy(base)
    suites = data.setdefault("suites", {})
    safety = suites.setdefault("safety", {})
    safety["trials"] = trials
    safety["link_trials"] = max(trials, 2)
    # the outage sweep's two ends: a fault that moves or loses the alert shows there
    outage = suites.setdefault("outage", {})
    sweep = outage.get("sweep") or OutageSuite().sweep
    outage["sweep"] = sorted({min(sweep), max(sweep)})
    outage["flickers"] = min(int(outage.get("flickers", 2)), 2)
    data.setdefault("broker", {})["port"] = 0
    for fault, device in (faults or {}).items():
        dev = data["benches"][bench]["devices"][device]
        dev["faults"] = sorted(set(dev.get("faults") or []) | {fault})
    return yaml.safe_dump(data, sort_keys=False)


def run_selftest(lab_path: Path, bench: str | None = None, trials: int = 2, only_fault: str | None = None,
                 results_dir: Path | None = None, console: Console | None = None, jobs: int = 1) -> int:
    from .evidence.recorder import RunRecorder
    from .evidence.seal import seal_run

    console = console or Console()
    base_text = Path(lab_path).read_text()
    cfg = load_lab_text(base_text, str(lab_path))
    bench = bench or next(iter(cfg.benches))
    base = yaml.safe_load(base_text)
    with tempfile.TemporaryDirectory(prefix="rig-selftest-") as tmp:
        tmpdir = Path(tmp)
        ini = tmpdir / "pytest.ini"
        ini.write_text("[pytest]\n")
        healthy_path = tmpdir / "healthy.yaml"
        healthy_path.write_text(lab_text(base, bench, trials))
        checks = {k: c for k, c in collect(healthy_path, ini).items() if c.detects or c.safety}
        if not checks:
            raise CollectionError(f"no check in the {', '.join(CHECKED_SUITES)} suites names a fault or a safety "
                                  "property: nothing to self-test")
        run_dir = new_run_dir(Path(results_dir or cfg.lab.results.dir))
        console.print(f"self-test run folder: {run_dir}")
        faults = sorted({f for c in checks.values() for f in c.detects})
        if only_fault:
            faults = [f for f in faults if f == only_fault]
        recorder = RunRecorder(run_dir, lab_path=lab_path, bench=bench, store_url=cfg.lab.results.store,
                               junit=None).start()
        results: dict[str, dict[str | None, tuple[str, str]]] = {k: {} for k in checks}
        runs: list[tuple[str, str, str | None]] = [("healthy", healthy_path.read_text(), None)]
        for fault in faults:
            placed = {f: device_for(cfg, bench, f) for f in parts(fault)}
            missing = [f for f, d in placed.items() if d is None]
            if missing:
                console.print(f"  [yellow]{fault}: no device for {', '.join(missing)} on {bench}; not run[/yellow]")
                continue
            runs.append((fault, lab_text(base, bench, trials, placed), fault))
        console.print(f"{len(checks)} checks; the healthy lab and {len(runs) - 1} fault profiles, {jobs} at a time")

        def report(label: str, fault: str | None, outcomes: dict[str, tuple[str, str]]) -> None:
            ran = [k for k in outcomes if k in results]
            for key in ran:
                results[key][fault] = outcomes[key]
            expected = "passed" if fault is None else "failed"
            good = sum(1 for k in ran if outcomes[k][0] == expected)
            colour = "green" if good == len(ran) and ran else "red"
            console.print(f"  {label:<40} [{colour}]{good}/{len(ran)} checks {expected}[/{colour}]")

        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                futures = {pool.submit(run_checks, label, text, fault, bench, tmpdir, run_dir / "logs" / label,
                                       ini): (label, fault) for label, text, fault in runs}
                for fut in as_completed(futures):
                    label, fault = futures[fut]
                    report(label, fault, fut.result())
        except BaseException:
            recorder.finish(status="interrupted", exit_code=2, complete=False)
            raise
        failures = record_results(recorder, checks, results, cfg, bench, only_fault)
        status = "passed" if not failures else "failed"
        recorder.finish(status=status, exit_code=0 if not failures else 1)
    sealed = seal_run(run_dir, store_url=cfg.lab.results.store)
    console.print(matrix(checks, results))
    undetected = sorted(set(BREAKS) - {p for c in checks.values() for f in c.detects for p in parts(f)})
    if undetected:
        console.print(f"[yellow]fault profiles no check claims to detect: {', '.join(undetected)}[/yellow]")
    for line in failures:
        console.print(f"[red]SELF-TEST FAILED[/red] {escape(line)}", highlight=False)
    verdict = "[green]PASSED[/green]" if not failures else "[red]FAILED[/red]"
    console.print(f"{verdict}  self-test: {run_dir}  report: {sealed.report}")
    return 0 if not failures else 1


def record_results(recorder, checks: dict[str, Check], results, cfg: LabConfig, bench: str,
                   only_fault: str | None = None) -> list[str]:
    """One record test per check, its self-check entries inside; returns the
    problems (a check that passed against its fault, failed healthy, or
    names no fault)."""
    problems: list[str] = []
    for key, check in checks.items():
        recorder.test_started({"nodeid": f"selftest::{key}", "name": check.name,
                               "requirements": check.requirements, "safety_properties": check.safety})
        ev = recorder.evidence_for(f"selftest::{key}")
        ok = True
        if not check.detects:
            problems.append(f"{check.name}: a safety check with no detects(...): nothing shows it can fail")
            ok = False
        for fault, (verdict, reason) in results[key].items():
            if verdict == "skipped":
                continue
            expected = "passed" if fault is None else "failed"
            device = ",".join(filter(None, (device_for(cfg, bench, f) for f in parts(fault)))) if fault else None
            # one entry per safety property the check checks: the safety pack counts them per property
            entries = [ev.selftest(check.name, fault, verdict, expected, device=device,
                                   requirement=check.requirements, safety_property=prop, detail=reason)
                       for prop in (check.safety or [None])]
            entry = entries[0]
            if not entry["ok"]:
                ok = False
                problems.append(f"{check.name} against {fault or 'the healthy device'}: {verdict}, expected "
                                f"{expected}{(': ' + reason) if reason and fault is None else ''}")
        for fault in check.detects:
            if fault not in results[key] and (only_fault is None or fault == only_fault):
                ok = False
                problems.append(f"{check.name}: not run against {fault}")
        recorder.test_finished({"nodeid": f"selftest::{key}", "verdict": "passed" if ok else "failed",
                                **ev.entries()})
    return problems


def matrix(checks: dict[str, Check], results) -> Table:
    table = Table(title="self-test: every check against the healthy lab and the faults that break it")
    table.add_column("check")
    table.add_column("healthy")
    table.add_column("faults it must fail against")
    for key, check in checks.items():
        healthy = results[key].get(None, ("not run", ""))[0]
        hcol = "green" if healthy == "passed" else "red"
        cells = []
        for fault in check.detects:
            v = results[key].get(fault, ("not run", ""))[0]
            cells.append(f"[{'green' if v == 'failed' else 'red'}]{fault}: {v}[/]")
        table.add_row(Text(check.name), f"[{hcol}]{healthy}[/{hcol}]", "\n".join(cells) or "[red]none named[/red]")
    return table
