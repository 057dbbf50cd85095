"""``rig selftest``: show that every safety and outage check can fail.

A check that cannot fail proves nothing.  Each check in the suites names,
with ``@pytest.mark.detects(...)``, the device fault profiles that break the
property it checks (rig/faults.py).  The self-test

1. runs the checks on the healthy lab: each must pass;
2. for each fault profile, brings the lab up with that fault on its device
   and runs the checks that claim to detect it: each must fail;
3. lists every safety or outage check that names no fault, and every fault
   profile of rig/faults.py that no check claims to detect: either fails a
   full self-test (nothing would show the check can fail, or nothing would
   catch the fault);

and writes a run folder (``"kind": "selftest"``) whose record carries every
result as a self-check entry (the report and the safety evidence pack show
them), sealed like any run.  It can never pass by doing nothing: a lab whose
pytest ran 0 of its checks is an error naming the end of that lab's log, and
a check that was not run against a fault it names, or not run healthy, fails
the self-test.

``--faults a,b`` runs only those fault profiles, and healthy only the checks
that claim to detect them (a short self-test: the project's own tests run
one); the coverage gaps of step 3 are then listed but judged only by a full
run.  The checks run with fewer repeats (``suites.safety.trials`` from
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
from typing import Any, Iterable
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

#: the suites every check of which must name the faults it detects
CHECKED_SUITES = ("safety", "outage", "han", "metrology")
#: lines of a lab's pytest log quoted when it ran no check
LOG_TAIL_LINES = 25


@dataclass
class Check:
    nodeid: str                      # "<module>::<test name>", e.g. "test_safety::test_a_utrn_is_accepted_once"
    name: str
    detects: list[str]
    requirements: list[str]
    safety: list[int]
    suite: str = ""                  # "safety", "outage", ... (the file test_<suite>.py)
    path: str = ""                   # what pytest is given to run it: "/.../test_safety.py::test_x[armed]"

    @property
    def required(self) -> bool:
        """A check that must name a fault: every safety or outage check, and
        any check marked ``safety``."""
        return self.suite in CHECKED_SUITES or bool(self.safety)


@dataclass(eq=False)  # pytest keeps plugin objects in sets: they must stay hashable
class Collected:
    """A pytest plugin object that records each collected check's markers."""

    checks: dict[str, Check] = field(default_factory=dict)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            detects = [str(f) for m in item.iter_markers("detects") for f in m.args]
            reqs = [r for m in item.iter_markers("requirement") for r in m.args]
            safety = [int(p) for m in item.iter_markers("safety") for p in m.args if str(p).isdigit()]
            stem = Path(str(item.fspath)).stem
            key = f"{stem}::{item.name}"
            inner = "::".join(item.nodeid.split("::")[1:]) or item.name
            self.checks[key] = Check(key, item.name, detects, reqs, safety, stem.removeprefix("test_"),
                                     f"{Path(str(item.fspath))}::{inner}")


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """``{"<module>::<test>": (verdict, reason)}`` from a JUnit XML file
    (empty when the file is missing or unreadable)."""
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    try:
        cases = list(ElementTree.parse(path).iter("testcase"))
    except ElementTree.ParseError:
        return out
    for case in cases:
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
    """Every suite file: checks in any of them may claim faults (only the
    safety and outage ones must)."""
    return [str(p) for p in sorted(SUITES_DIR.glob("test_*.py"))]


def _pytest_args(ini: Path) -> list[str]:
    return ["-c", str(ini), "--rootdir", str(SUITES_DIR), "-p", "no:cacheprovider", "-rfE"]


def _run_args(checks: list[Check]) -> list[str]:
    """The checks a lab's pytest runs, by node id."""
    return [c.path for c in checks]


class CollectionError(RuntimeError):
    """The suites could not be collected: the self-test would prove nothing."""


class SelftestUsageError(ValueError):
    """Bad arguments (an unknown fault, a bench the lab lacks): the message says what to give."""


def collect(lab_path: Path, ini: Path) -> dict[str, Check]:
    plugin = Collected()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # importlib: a suite module of the same name collected before in this process is not reused
        code = pytest.main(_files() + _pytest_args(ini) + ["--collect-only", "--import-mode=importlib",
                                                           "--lab", str(lab_path)], plugins=[plugin])
    if code != 0 or not plugin.checks:
        raise CollectionError(f"collecting the suites ({', '.join(Path(f).name for f in _files()) or 'none found'}) "
                              f"failed (pytest exit {int(code)}, {len(plugin.checks)} checks found):\n"
                              f"{out.getvalue()[-3000:]}")
    return plugin.checks


def fault_catalogue() -> set[str]:
    """Every fault profile of rig/faults.py (FAULTS and BREAKS)."""
    return set(BREAKS) | {f for names in FAULTS.values() for f in names}


def parts(fault: str) -> list[str]:
    """A compound profile ``a+b`` is several faults at once, each on its own
    device: for a property only their combination breaks (the PPMID keeps a
    stale press *and* the meter accepts it)."""
    return [f for f in fault.split("+") if f]


@dataclass
class Coverage:
    """What the suites' ``detects`` markers leave uncovered."""

    unclaimed_checks: list[Check]            # safety/outage checks that name no fault
    unclaimed_faults: list[str]              # fault profiles no check claims to detect
    unknown_faults: dict[str, list[str]]     # check name -> the faults it names that rig/faults.py lacks

    @property
    def complete(self) -> bool:
        return not (self.unclaimed_checks or self.unclaimed_faults or self.unknown_faults)

    def problems(self) -> list[str]:
        return [f"{c.name}: a safety or outage check with no detects(...): nothing shows it can fail"
                for c in self.unclaimed_checks] + self.fault_problems()

    def fault_problems(self) -> list[str]:
        out = [f"fault profile {f}: no check claims to detect it (detects({f!r}))" for f in self.unclaimed_faults]
        out += [f"{name}: names fault profile(s) {', '.join(fs)} that rig/faults.py does not define"
                for name, fs in self.unknown_faults.items()]
        return out


def coverage(checks: Iterable[Check], catalogue: Iterable[str] | None = None) -> Coverage:
    checks = list(checks)
    catalogue = set(fault_catalogue() if catalogue is None else catalogue)
    claimed = {p for c in checks for f in c.detects for p in parts(f)}
    unknown = {c.name: sorted({p for f in c.detects for p in parts(f)} - catalogue) for c in checks}
    return Coverage([c for c in checks if c.required and not c.detects], sorted(catalogue - claimed),
                    {k: v for k, v in unknown.items() if v})


@dataclass
class LabResult:
    """One lab of the self-test: the checks it was to run and what pytest said."""

    label: str
    fault: str | None
    expected: list[str]                                  # check keys
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    exit_code: int | None = None
    log: Path | None = None
    error: str | None = None                             # the lab did not come up, pytest did not start...

    @property
    def ran(self) -> list[str]:
        return [k for k in self.expected if k in self.outcomes]

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log is None:
            return ""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log: {self.log} was not written)"
        return "\n".join(text[-lines:])

    def nothing_ran(self) -> str | None:
        """Why this lab proves nothing (None when it ran checks)."""
        if self.ran:
            return None
        why = self.error or f"pytest exit {self.exit_code}"
        tail = self.tail()
        return (f"lab {self.label}: ran 0 of its {len(self.expected)} checks ({why}); "
                f"the end of {self.log}:\n{tail}" if tail else
                f"lab {self.label}: ran 0 of its {len(self.expected)} checks ({why})")


def run_checks(label: str, text: str, fault: str | None, bench: str, tmpdir: Path, log_dir: Path,
               ini: Path, checks: list[Check]) -> LabResult:
    """Bring a lab up from ``text`` and run ``checks`` in a pytest process of
    their own, with ``fault`` on its device (None: the healthy lab).

    Every path handed to that pytest is absolute: it runs in ``tmpdir``, not
    in the caller's working directory."""
    log_dir = Path(log_dir).resolve()
    path = (tmpdir / f"{label}.yaml").resolve()
    path.write_text(text)
    log_dir.mkdir(parents=True, exist_ok=True)
    junit = log_dir / "junit.xml"
    log = log_dir / "pytest.txt"
    result = LabResult(label, fault, [c.nodeid for c in checks], log=log)
    try:
        lab = load_lab_text(text, str(path))
        with LabUp(lab, port=0, lab_path=str(path), log_dir=log_dir) as up:
            env = dict(os.environ)
            with open(log, "w") as out:
                proc = subprocess.run([sys.executable, "-m", "pytest", *_run_args(checks), *_pytest_args(ini),
                                       "--lab", str(path), "--rig-broker", up.endpoint.as_user("orchestrator").url,
                                       "--bench", bench,
                                       "--junitxml", str(junit)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                      cwd=tmpdir, check=False)
            result.exit_code = proc.returncode
    except Exception as exc:  # noqa: BLE001 - a lab that fails to come up is a self-test failure, not a crash
        result.error = f"{type(exc).__name__}: {exc}"
    result.outcomes = junit_outcomes(junit)
    return result


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


def choose_faults(checks: dict[str, Check], wanted: Iterable[str] | None) -> list[str]:
    """The fault profiles to run: every one a check names, or ``wanted``
    (each must be named by some check; a bad name is a SelftestUsageError
    naming the ones that are)."""
    named = sorted({f for c in checks.values() for f in c.detects})
    if wanted is None:
        return named
    chosen: list[str] = []
    for fault in wanted:
        if fault in chosen:
            continue
        if fault not in named:
            catalogue = fault_catalogue()
            if all(p in catalogue for p in parts(fault)):
                compound = [f for f in named if set(parts(fault)) <= set(parts(f))]
                hint = f"; it is detected only together with others: {', '.join(compound)}" if compound else ""
                raise SelftestUsageError(f"no check claims to detect fault profile '{fault}' (detects(...)), so "
                                         f"the self-test has nothing to run against it{hint}")
            raise SelftestUsageError(f"unknown fault profile '{fault}'; the checks name: {', '.join(named)}")
        chosen.append(fault)
    if not chosen:
        raise SelftestUsageError(f"no fault profile given; the checks name: {', '.join(named)}")
    return chosen


def split_faults(values: Iterable[str | None]) -> list[str] | None:
    """``--fault a --faults b,c`` -> ["a", "b", "c"]; None when none was given."""
    out = [f.strip() for v in values if v for f in v.split(",") if f.strip()]
    return out or None


def run_selftest(lab_path: Path, bench: str | None = None, trials: int = 2, only_fault: str | None = None,
                 results_dir: Path | None = None, console: Console | None = None, jobs: int = 1,
                 faults: Iterable[str] | None = None) -> int:
    """Run the self-test; returns the exit code (0 passed, 1 failed).

    ``faults`` (or ``only_fault``): only those fault profiles, and healthy
    only the checks that detect them.  Raises CollectionError when the
    suites cannot be collected and SelftestUsageError on bad arguments."""
    from .evidence.recorder import RunRecorder
    from .evidence.seal import seal_run

    console = console or Console()
    if trials < 1:
        raise SelftestUsageError(f"--trials must be 1 or more, got {trials}")
    base_text = Path(lab_path).read_text()
    cfg = load_lab_text(base_text, str(lab_path))
    if bench is not None and bench not in cfg.benches:
        raise SelftestUsageError(f"no bench '{bench}' in {lab_path}; benches: {', '.join(cfg.benches)}")
    bench = bench or next(iter(cfg.benches))
    base = yaml.safe_load(base_text)
    wanted = split_faults([only_fault, *(faults or [])])
    # the pytest of each lab runs in a temporary folder: everything it is given must be absolute
    results = Path(results_dir or cfg.lab.results.dir).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="rig-selftest-") as tmp:
        tmpdir = Path(tmp).resolve()
        ini = tmpdir / "pytest.ini"
        ini.write_text("[pytest]\n")
        healthy_text = lab_text(base, bench, trials)
        healthy_path = tmpdir / "healthy.yaml"
        healthy_path.write_text(healthy_text)
        collected = collect(healthy_path, ini)
        cover = coverage(collected.values())
        checks = {k: c for k, c in collected.items() if c.detects or c.required}
        if not checks:
            raise CollectionError("no check in the suites names a fault or is a safety or outage check: "
                                  "nothing to self-test")
        chosen = choose_faults(checks, wanted)
        partial = wanted is not None
        healthy_checks = [c for c in checks.values() if not partial or set(c.detects) & set(chosen)]
        # a partial self-test records (and judges) only the checks it ran
        recorded = checks if not partial else {c.nodeid: c for c in healthy_checks}
        run_dir = new_run_dir(results)
        console.print(f"self-test run folder: {run_dir}")
        recorder = RunRecorder(run_dir, lab_path=lab_path, bench=bench, store_url=cfg.lab.results.store,
                               junit=None).start()
        labs: list[tuple[str, str, str | None, list[Check]]] = [("healthy", healthy_text, None, healthy_checks)]
        placement_problems: list[str] = []
        catalogue = fault_catalogue()
        for fault in chosen:
            if not set(parts(fault)) <= catalogue:
                continue  # a name rig/faults.py lacks: the coverage problems name it
            placed = {f: device_for(cfg, bench, f) for f in parts(fault)}
            missing = [f for f, d in placed.items() if d is None]
            if missing:
                placement_problems.append(f"fault profile {fault}: no device of its kind for {', '.join(missing)} "
                                          f"on {bench}; not run")
                continue
            devices = {f: d for f, d in placed.items() if d is not None}
            labs.append((fault, lab_text(base, bench, trials, devices), fault,
                         [c for c in checks.values() if fault in c.detects]))
        recorder.set_selftest({"faults": chosen, "partial": partial, "trials": trials, "bench": bench,
                               "checks": sorted(c.name for c in recorded.values()),
                               "suite_files": sorted({Path(c.path.split("::")[0]).name for c in recorded.values()}),
                               "coverage": {"complete": cover.complete,
                                            "unclaimed_checks": [c.name for c in cover.unclaimed_checks],
                                            "unclaimed_faults": cover.unclaimed_faults,
                                            "unknown_faults": cover.unknown_faults}})
        what = (f"fault profiles {', '.join(chosen)} and the {len(healthy_checks)} checks that claim them"
                if partial else f"{len(checks)} checks, the healthy lab and {len(labs) - 1} fault profiles")
        console.print(f"self-test of {what}; {len(labs)} labs, {jobs} at a time")

        results_by_check: dict[str, dict[str | None, tuple[str, str]]] = {k: {} for k in checks}
        lab_results: list[LabResult] = []

        def report(res: LabResult) -> None:
            lab_results.append(res)
            for key in res.ran:
                results_by_check[key][res.fault] = res.outcomes[key]
            expected = "passed" if res.fault is None else "failed"
            good = sum(1 for k in res.ran if res.outcomes[k][0] == expected)
            colour = "green" if good == len(res.expected) and res.ran else "red"
            extra = f" (ran {len(res.ran)} of {len(res.expected)})" if len(res.ran) != len(res.expected) else ""
            console.print(f"  {escape(res.label):<40} "
                          f"[{colour}]{good}/{len(res.ran)} checks {expected}{extra}[/{colour}]")

        try:
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                futures = [pool.submit(run_checks, label, text, fault, bench, tmpdir, run_dir / "logs" / label,
                                       ini, lab_checks) for label, text, fault, lab_checks in labs]
                for fut in as_completed(futures):
                    report(fut.result())
        except BaseException:
            recorder.finish(status="interrupted", exit_code=2, complete=False)
            raise
        lab_results.sort(key=lambda r: [x[0] for x in labs].index(r.label))
        recorder.set_selftest({"labs": {r.label: {"fault": r.fault, "expected": len(r.expected), "ran": len(r.ran),
                                                  "pytest_exit": r.exit_code, "error": r.error}
                                        for r in lab_results}})
        empty = [why for r in lab_results if (why := r.nothing_ran())]
        failures = record_results(recorder, recorded, results_by_check, cfg, bench, chosen,
                                  healthy={c.nodeid for c in healthy_checks})
        gaps = cover.problems()
        # a full self-test fails on every gap (record_results names the checks that name no fault)
        failures = empty + placement_problems + failures + (cover.fault_problems() if not partial else [])
        status = "passed" if not failures else "failed"
        recorder.finish(status=status, exit_code=0 if not failures else 1)
    sealed = seal_run(run_dir, store_url=cfg.lab.results.store)
    console.print(matrix(checks, results_by_check, chosen if partial else None))
    if gaps and partial:
        console.print("[yellow]not judged by this partial self-test, but a full `rig selftest` fails on:[/yellow]")
        for line in gaps:
            console.print(f"  [yellow]{escape(line)}[/yellow]", highlight=False)
    for line in failures:
        console.print(f"[red]SELF-TEST FAILED[/red] {escape(line)}", highlight=False)
    verdict = "[green]PASSED[/green]" if not failures else "[red]FAILED[/red]"
    scope = f" (partial: {', '.join(chosen)})" if partial else ""
    console.print(f"{verdict}  self-test{escape(scope)}: {run_dir}  report: {sealed.report}", highlight=False)
    return 0 if not failures else 1


def record_results(recorder, checks: dict[str, Check], results, cfg: LabConfig, bench: str,
                   chosen: Iterable[str] | None = None, healthy: set[str] | None = None) -> list[str]:
    """One record test per check, its self-check entries inside; returns the
    problems: a check that passed against its fault, failed healthy, was
    not run healthy or against a fault it names (of ``chosen``, default all),
    or is a safety check that names no fault."""
    problems: list[str] = []
    chosen = None if chosen is None else set(chosen)
    for key, check in checks.items():
        recorder.test_started({"nodeid": f"selftest::{key}", "name": check.name, "detects": check.detects,
                               "requirements": check.requirements, "safety_properties": check.safety})
        ev = recorder.evidence_for(f"selftest::{key}")
        ok = True
        if not check.detects and check.required:
            problems.append(f"{check.name}: a safety or outage check with no detects(...): nothing shows it can fail")
            ok = False
        for fault, (verdict, reason) in results[key].items():
            if verdict == "skipped":
                continue
            expected = "passed" if fault is None else "failed"
            device = ",".join(filter(None, (device_for(cfg, bench, f) for f in parts(fault)))) if fault else None
            # one entry per safety property the check checks: the safety pack counts them per property
            entries = [ev.selftest(check.name, fault, verdict, expected, device=device,
                                   requirement=check.requirements, safety_property=prop, detail=reason)
                       for prop in (list[int | None](check.safety) or [None])]
            entry = entries[0]
            if not entry["ok"]:
                ok = False
                problems.append(f"{check.name} against {fault or 'the healthy device'}: {verdict}, expected "
                                f"{expected}{(': ' + reason) if reason and fault is None else ''}")
        if (healthy is None or key in healthy) and results[key].get(None, ("",))[0] not in ("passed", "failed",
                                                                                         "skipped"):
            ok = False
            problems.append(f"{check.name}: not run on the healthy lab")
        for fault in check.detects:
            if fault not in results[key] and (chosen is None or fault in chosen):
                ok = False
                problems.append(f"{check.name}: not run against {fault}")
        recorder.test_finished({"nodeid": f"selftest::{key}", "verdict": "passed" if ok else "failed",
                                **ev.entries()})
    return problems


def matrix(checks: dict[str, Check], results, chosen: list[str] | None = None) -> Table:
    title = "self-test: every check against the healthy lab and the faults that break it"
    table = Table(title=title + (" (partial)" if chosen is not None else ""))
    table.add_column("check")
    table.add_column("healthy")
    table.add_column("faults it must fail against")
    for key, check in checks.items():
        faults = [f for f in check.detects if chosen is None or f in chosen]
        if chosen is not None and not faults:
            continue
        healthy = results[key].get(None, ("not run", ""))[0]
        hcol = "green" if healthy == "passed" else "red"
        cells = []
        for fault in faults:
            v = results[key].get(fault, ("not run", ""))[0]
            cells.append(f"[{'green' if v == 'failed' else 'red'}]{escape(fault)}: {v}[/]")
        table.add_row(Text(check.name), f"[{hcol}]{healthy}[/{hcol}]", "\n".join(cells) or "[red]none named[/red]")
    return table
