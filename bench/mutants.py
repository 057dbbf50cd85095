#!/usr/bin/env python3
"""Mutation run of the meter's supply and alert logic: do the suites catch
defects nobody planned for?

The fault profiles (rig/faults.py) are defects the project wrote down; a
mutant is one nobody did.  This script makes small edits to the logic a
meter's safety and outage behaviour rests on (rig/supply.py, the ESME
twin's outage, alert, freshness and contactor code, the WAN's outage
timer): a comparison turned round, ``and`` for ``or``, a condition negated,
one enum member for another, a number nudged, a statement dropped.  For
each mutant it brings up the default simulated lab with the mutated code
(a copy of the ``rig`` package first on PYTHONPATH, which the lab's agent
and simulated bench processes inherit) and runs the safety, outage, HAN and
metrology suites with few repeats, stopping at the first failing check.  A mutant is
*killed* when a check fails, *survives* when every check passes.

Survivors that cannot change behaviour (equivalent mutants) are listed in
``bench/mutants_equivalent.yaml`` with the reason, and so are survivors that
change only what is neither a safety nor an outage behaviour (their reason
starts ``outside:``, e.g. a low-credit alert); neither is scored, and the
summary counts them apart.  Every other survivor is a gap in the suites.
Prints a table and the kill score::

    python bench/mutants.py                    # every mutant, 2 at a time
    python bench/mutants.py --list             # the mutants, without running them
    python bench/mutants.py --only 12,40       # some of them
    python bench/mutants.py --jobs 1 --json mutants.json

It takes a while (each mutant is a lab and a pytest run; most die within
seconds, a survivor runs the whole suites, about a minute and a half).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "rig" / "suites"
EQUIVALENT = Path(__file__).resolve().parent / "mutants_equivalent.yaml"
#: the import packages copied with each mutant (first on PYTHONPATH, so the lab's processes run them):
#: import name -> source folder (the pytest plugin's folder is fixtures/, its import name rig_fixtures)
PACKAGES = {"rig": "rig", "instruments": "instruments", "rig_fixtures": "fixtures"}

#: the code under mutation: file -> the functions (None: the whole module)
TARGETS: dict[str, set[str] | None] = {
    "rig/supply.py": {"apply", "_lift", "_lift_own", "_disable", "_refuse_arm_enabled", "_arm", "_stay",
                      "_remote_enable_armed", "_remote_enable_disabled", "_local_enable_armed",
                      "_local_enable_disabled", "_local_enable_enabled", "_credit_exhausted", "_credit_restored",
                      "_load_limit_trip", "_load_limit_restore", "_mains_return", "_han_command", "_no_change",
                      "TABLE"},
    "rig/sim/esme.py": {"freshness", "apply", "alert", "_drive_contactor", "_actual", "_supply_lost",
                        "_supply_restored", "_stale", "_ppmid_command", "_local_enable", "button_input", "_hold_action",
                        "_press_action",
                        "_check_credit", "_lift_credit_disablement", "_load_limit_due", "_load_limit_restore"},
    "rig/sim/twin.py": {"raise_alert", "_send_alert"},
    "rig/sim/wan.py": {"hub_lost_power", "hub_power_restored", "_outage_due", "routes"},
}

COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
ENUM_SWAPS = {
    "Supply": {"DISABLED": "ARMED", "ARMED": "ENABLED", "ENABLED": "ARMED"},
    "Party": {"SUPPLIER": "DNO", "DNO": "SUPPLIER", "CREDIT": "SUPPLIER"},
    "ArmCause": {"REMOTE": "LOAD_LIMIT", "LOAD_LIMIT": "REMOTE", "CREDIT": "EMERGENCY_CREDIT",
                 "EMERGENCY_CREDIT": "CREDIT"},
    "AlertCode": {"SUPPLY_OUTAGE_RESTORED": "SUPPLY_OUTAGE_RESTORED_LONG",
                  "SUPPLY_OUTAGE_RESTORED_LONG": "SUPPLY_OUTAGE_RESTORED",
                  "SUPPLY_ARMED": "LOAD_LIMIT_ARMED", "EMERGENCY_CREDIT_ARMED": "SUPPLY_ARMED",
                  "LOAD_LIMIT_ARMED": "SUPPLY_ARMED", "LOAD_LIMIT_RESTORED": "SUPPLY_ARMED",
                  "SUPPLY_INTERRUPTED": "SUPPLY_OUTAGE_RESTORED"},
}


@dataclass
class Mutant:
    id: int
    file: str
    line: int
    function: str
    kind: str
    before: str
    after: str
    source: str = ""


# ----------------------------------------------------------------------------- making mutants
class _Sites(ast.NodeVisitor):
    """Every mutable site of a module, in a stable order: (path of child indices, kind)."""

    def __init__(self, functions: set[str] | None):
        self.functions, self.sites, self._stack, self._fn = functions, [], [], []

    def generic_visit(self, node: ast.AST) -> None:
        for i, child in enumerate(ast.iter_child_nodes(node)):
            self._stack.append(i)
            self.visit(child)
            self._stack.pop()

    def _scoped(self, name: str, node: ast.AST) -> None:
        self._fn.append(name)
        self.generic_visit(node)
        self._fn.pop()

    def _fault_only(self, node: ast.If) -> None:
        """A branch taken only by a fault profile or a declared non-default policy: its condition is
        mutated (a healthy meter taking it must be caught), not its body (code the healthy meter never
        runs: every mutant of it would survive as an equivalent)."""
        self._stack.append(0)
        self.visit(node.test)
        self._stack.pop()
        for i, child in enumerate(ast.iter_child_nodes(node)):
            if child is node.test or child in node.body:
                continue
            self._stack.append(i)
            self.visit(child)
            self._stack.pop()

    def _in_scope(self) -> bool:
        if self.functions is None:
            return True
        return any(f in self.functions for f in self._fn)

    def _add(self, node: ast.AST, kind: str, detail: object = None) -> None:
        if self._in_scope() and not _docstring_like(node):
            self.sites.append((tuple(self._stack), kind, detail, self._fn[-1] if self._fn else "<module>"))

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return self._scoped(node.name, node)
        if _only_bookkeeping(node, self._fn[-1] if self._fn else ""):
            return      # what the device writes in its own log or on the bus about itself: no check judges it
        if isinstance(node, ast.If) and _mentions_fault(node.test):
            if self._in_scope() and not isinstance(node.test, (ast.UnaryOp, ast.Compare, ast.BoolOp)):
                self._add(node, "negate")
            return self._fault_only(node)
        if not self._fn and isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name):          # a module-level table: TABLE = {...}
                return self._scoped(target.id, node)
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in COMPARE_SWAPS:
                    self._add(node, "compare", k)
        elif isinstance(node, ast.BoolOp):
            self._add(node, "boolop")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._add(node, "not")
        elif isinstance(node, (ast.If, ast.While)) \
                and not isinstance(node.test, (ast.UnaryOp, ast.Compare, ast.BoolOp)):
            self._add(node, "negate")     # a comparison or and/or is mutated by its own operators
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            self._add(node, "bool")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            self._add(node, "number")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.attr in ENUM_SWAPS.get(node.value.id, {}):
            self._add(node, "enum")
        elif isinstance(node, (ast.Expr, ast.Return, ast.Raise, ast.Assign, ast.AugAssign)) \
                and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) \
                and not _bookkeeping(node, self._fn[-1] if self._fn else ""):
            self._add(node, "drop")
        self.generic_visit(node)


#: calls whose loss only changes what a device says of itself (its event log, its bus events, its logging):
#: the suites judge none of it, except the outage log (OUT-1) of these functions
_QUIET = {"event", "publish", "info", "warning", "debug", "exception"}
_LOGGED = {"_supply_lost", "_supply_restored", "_late_loss_log"}


def _bookkeeping(node: ast.AST, function: str) -> bool:
    call = node.value if isinstance(node, ast.Expr) else None
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return False
    return call.func.attr in _QUIET or (call.func.attr == "record" and function not in _LOGGED)


#: names that mark a branch for a fault profile or a declared non-default policy
_FAULT_NAMES = {"quirks", "rules", "policy", "faults"}


def _mentions_fault(test: ast.AST) -> bool:
    return any((isinstance(n, ast.Attribute) and n.attr in _FAULT_NAMES) or (isinstance(n, ast.Name) and n.id in
               _FAULT_NAMES) for n in ast.walk(test))


def _only_bookkeeping(node: ast.AST, function: str) -> bool:
    """A statement that only keeps the device's own books: a bookkeeping call, or
    an ``if`` whose branches hold nothing else."""
    if isinstance(node, ast.Expr):
        return _bookkeeping(node, function)
    if isinstance(node, ast.If):
        return all(_only_bookkeeping(n, function) for n in node.body + node.orelse)
    return False


def _docstring_like(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _at(tree: ast.AST, path: tuple[int, ...]) -> tuple[ast.AST, ast.AST | None, int]:
    parent, index, node = None, -1, tree
    for i in path:
        parent, index = node, i
        node = list(ast.iter_child_nodes(node))[i]
    return node, parent, index


def _replace_child(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return


def mutate(tree: ast.Module, site) -> tuple[ast.Module, str, str] | None:
    path, kind, detail, _fn = site
    tree = copy.deepcopy(tree)
    node, parent, _ = _at(tree, path)
    before = ast.unparse(node).splitlines()[0][:100]
    if kind == "compare":
        node.ops[detail] = COMPARE_SWAPS[type(node.ops[detail])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "not":
        _replace_child(parent, node, node.operand)
        node = node.operand
    elif kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind == "bool":
        node.value = not node.value
    elif kind == "number":
        node.value = 0 if node.value not in (0, 0.0) else 1
    elif kind == "enum":
        node.attr = ENUM_SWAPS[node.value.id][node.attr]
    elif kind == "drop":
        if not isinstance(parent, (ast.FunctionDef, ast.If, ast.For, ast.While, ast.With, ast.Try, ast.Module,
                                   ast.ExceptHandler)):
            return None
        body = next((v for _n, v in ast.iter_fields(parent) if isinstance(v, list) and node in v), None)
        if body is None:
            return None
        body[body.index(node)] = ast.Pass()
    ast.fix_missing_locations(tree)
    after = "pass" if kind == "drop" else ast.unparse(node).splitlines()[0][:100]
    return tree, before, after


def mutants() -> list[Mutant]:
    out: list[Mutant] = []
    for rel, functions in TARGETS.items():
        source = (ROOT / rel).read_text()
        tree = ast.parse(source)
        finder = _Sites(functions)
        finder.visit(tree)
        for site in finder.sites:
            made = mutate(tree, site)
            if made is None:
                continue
            mutated, before, after = made
            node, _p, _i = _at(tree, site[0])
            try:
                text = ast.unparse(mutated)
                compile(text, rel, "exec")
            except (SyntaxError, ValueError):
                continue
            if text == ast.unparse(tree):
                continue
            out.append(Mutant(len(out) + 1, rel, getattr(node, "lineno", 0), site[3], site[1], before, after, text))
    return out


# ----------------------------------------------------------------------------- running one
def lab_file(tmp: Path) -> Path:
    lab = yaml.safe_load((ROOT / "lab.yaml").read_text())
    lab["broker"]["port"] = 0
    suites = lab.setdefault("suites", {})
    suites["safety"] = {"trials": 1, "link_trials": 1}
    suites["outage"] = {**(suites.get("outage") or {}), "sweep": [170.0, 178.0, 182.0, 190.0], "flickers": 2}
    path = tmp / "lab.yaml"
    path.write_text(yaml.safe_dump(lab, sort_keys=False))
    return path


def _passed(stdout: str) -> int:
    """How many checks passed, from pytest's summary line ("38 passed, 2 skipped in 95.1s")."""
    for line in reversed(stdout.splitlines()):
        if " passed" in line and " in " in line:
            words = line.replace(",", " ").split()
            return next((int(words[i - 1]) for i, w in enumerate(words) if w == "passed" and i > 0
                         and words[i - 1].isdigit()), 0)
    return 0


def run_suites(overlay: Path | None, tmp: Path, timeout: float, baseline: int = 0) -> tuple[str, str, float, int]:
    """(verdict killed|survived|error, the first failing check or the error, wall seconds, checks passed).
    A run that passes fewer checks than the unmutated code's ``baseline`` (some were skipped: a tap or
    a device that did not answer in time) is an error, not a survivor: it did not run every check."""
    tmp.mkdir(parents=True, exist_ok=True)
    ini = tmp / "pytest.ini"
    ini.write_text("[pytest]\n")
    env = dict(os.environ)
    if overlay is not None:
        env["PYTHONPATH"] = str(overlay) + os.pathsep + env.get("PYTHONPATH", "")
    suites = overlay / "rig" / "suites" if overlay is not None else SUITES   # the suites of the code under test
    files = [str(suites / f"test_{s}.py") for s in ("safety", "outage", "han", "metrology")]
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *files, "-c", str(ini), "--rootdir", str(suites),
                               "-p", "no:cacheprovider", "-x", "-q", "--lab", str(lab_file(tmp)), "-rfs"],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"timed out after {timeout:g} s (the mutant hangs the bench)", time.monotonic() - started, 0
    wall = time.monotonic() - started
    failed = [line.split(" ", 2)[1].split("::")[-1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    passed = _passed(proc.stdout)
    if proc.returncode == 0:
        if passed < baseline:
            skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
            return "error", (f"only {passed} of the {baseline} checks the unmutated code passes ran: "
                             + " | ".join(skipped)[:400]), wall, passed
        return "survived", "", wall, passed
    if proc.returncode == 1 and failed:
        return "killed", failed[0], wall, passed
    if proc.returncode in (1, 2, 3) and ("ERROR " in proc.stdout or "error" in proc.stdout.lower()):
        # the mutated code broke the bench itself (a twin that cannot start, a lab that does not come up):
        # the run fails, so the mutant is caught; the detail says how
        tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-1:]
        return ("killed", "the bench could not run: " + (tail[0][:120] if tail else f"pytest exit {proc.returncode}"),
                wall, passed)
    return "error", (proc.stdout + proc.stderr)[-600:].strip().replace("\n", " | "), wall, passed


def run_mutant(m: Mutant, work: Path, timeout: float, baseline: int) -> dict:
    overlay = work / f"m{m.id}" / "overlay"
    shutil.copytree(work / "base", overlay)
    (overlay / m.file).write_text(m.source)
    verdict, detail, wall, _passed_checks = run_suites(overlay, work / f"m{m.id}" / "run", timeout, baseline)
    shutil.rmtree(work / f"m{m.id}", ignore_errors=True)
    return {**{k: v for k, v in asdict(m).items() if k != "source"}, "verdict": verdict, "detail": detail,
            "wall_s": round(wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--only", default="", help="comma-separated mutant ids")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once (each is a lab and a pytest)")
    ap.add_argument("--timeout", type=float, default=600.0, help="wall seconds per mutant")
    ap.add_argument("--json", default="", help="write every result to this file")
    args = ap.parse_args()
    all_mutants = mutants()
    chosen = [m for m in all_mutants if not args.only or str(m.id) in args.only.split(",")]
    if args.list:
        for m in chosen:
            print(f"{m.id:4d} {m.file}:{m.line} {m.function} [{m.kind}] {m.before!r} -> {m.after!r}")
        print(f"{len(chosen)} mutants")
        return 0
    equivalent = yaml.safe_load(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    equivalent = {str(k): v for k, v in (equivalent or {}).items()}
    work = Path(tempfile.mkdtemp(prefix="rig-mutants-"))
    # one snapshot of the packages (the rig, its instruments and its pytest plugin): every mutant is one edit of
    # the same code, even if the tree changes meanwhile
    for package, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder, work / "base" / package, ignore=shutil.ignore_patterns("__pycache__"))
    for m in chosen:
        if (ROOT / m.file).read_text() != (work / "base" / m.file).read_text():
            print(f"{m.file} changed while the mutants were being made: run again")
            return 2
    print(f"{len(chosen)} mutants of {', '.join(TARGETS)}; the safety, outage, HAN and metrology suites on the default lab "
          f"(trials 1), {args.jobs} at a time; work in {work}", flush=True)
    started = time.monotonic()
    base = run_suites(work / "base", work / "unmutated", args.timeout)
    if base[0] != "survived":
        print(f"the unmutated code does not pass the suites ({base[0]}: {base[1]}): nothing to measure")
        return 2
    print(f"unmutated code: every check passes ({base[3]} checks, {base[2]:.0f} s)", flush=True)
    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_mutant, m, work, args.timeout, base[3]): m for m in chosen}
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            key = f"{r['file']}:{r['function']}:{r['before']}->{r['after']}"
            r["equivalent"] = equivalent.get(key) if r["verdict"] == "survived" else None
            results.append(r)
            mark = {"killed": "killed  ", "survived": "SURVIVED", "error": "ERROR   "}[r["verdict"]]
            print(f"[{i:3d}/{len(chosen)}] {mark} #{r['id']:<4d} {r['file']}:{r['line']} {r['function']} "
                  f"{r['before']!r} -> {r['after']!r}  {r['detail'][:80]}"
                  + (f"  (equivalent: {r['equivalent']})" if r["equivalent"] else ""), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: r["id"])
    killed = sum(r["verdict"] == "killed" for r in results)
    equiv = [r for r in results if r["verdict"] == "survived" and r["equivalent"]]
    outside = [r for r in equiv if str(r["equivalent"]).startswith("outside:")]
    gaps = [r for r in results if r["verdict"] == "survived" and not r["equivalent"]]
    errors = [r for r in results if r["verdict"] == "error"]
    scored = len(results) - len(equiv) - len(errors)
    print()
    print(f"mutants: {len(results)}; killed {killed}; equivalent (listed, with reasons) {len(equiv) - len(outside)}; "
          f"outside safety and outage (listed, with reasons) {len(outside)}; survived {len(gaps)}; "
          f"errors {len(errors)}")
    print(f"kill score: {killed}/{scored} = {100.0 * killed / max(1, scored):.1f} % of the non-equivalent mutants "
          f"({time.monotonic() - started:.0f} s wall)")
    for r in gaps:
        print(f"  SURVIVED #{r['id']} {r['file']}:{r['line']} {r['function']}: {r['before']!r} -> {r['after']!r}")
    for r in errors:
        print(f"  ERROR #{r['id']} {r['file']}:{r['line']}: {r['detail'][:200]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if not gaps and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
