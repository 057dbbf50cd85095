"""The HTML report of a run: one self-contained file that opens offline.

Inline CSS, plots as inline SVG, no script and no external reference, so it
can be mailed, archived with the run and opened years later.  Sections:
summary; failures first (with their failed measurements and timelines);
requirement traceability (every catalogue requirement, its source, the tests
that cite it and their verdicts); propagation, coverage and outage sweep
plots; every test with its steps, measurements and timeline; self-check
results; what ran on what (software, instruments' ``*IDN?``, device
versions, lab file); the files of the run.

::

    rig report runs/20261123T093000Z-ab12cd       # rebuild report.html
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import CAPTURE_FILE, MANIFEST_FILE, REPORT_FILE
from .catalogue import Catalogue
from .manifest import run_files
from .record import load_run

TEMPLATES = Path(__file__).resolve().parent / "templates"
FAILED = ("failed", "error", "xpassed")
#: timelines drawn for passing tests (failures always get theirs)
MAX_PASSING_TIMELINES = 40


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined)
    env.filters["iso"] = iso
    env.filters["num"] = num
    env.filters["seconds"] = seconds
    return env


def _missing(v: Any) -> bool:
    import jinja2

    return v is None or isinstance(v, jinja2.Undefined)


def iso(t: float | None) -> str:
    if t is None or _missing(t):
        return "—"
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def num(v: Any) -> str:
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def seconds(v: float | None) -> str:
    if v is None or _missing(v):
        return "—"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def test_sort_key(t: dict[str, Any]) -> int:
    return 0 if t.get("verdict") in FAILED else 1 if t.get("verdict") == "running" else 2


def traceability(rec: dict[str, Any], catalogue: Catalogue) -> list[dict[str, Any]]:
    """One row per requirement: its text and source, the tests citing it
    (by marker or by a measurement's ``requirement``) and an overall verdict."""
    cited: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in rec.get("tests", []):
        ids = list(t.get("requirements") or [])
        for m in t.get("measurements", []):
            ids += [r for r in m.get("requirements") or [] if r not in ids]
        for rid in ids:
            cited[rid].append(t)
    rows = []
    known = [r.id for r in catalogue]
    for rid in known + sorted(set(cited) - set(known)):
        req = catalogue.get(rid)
        tests = cited.get(rid, [])
        verdicts = [t.get("verdict") for t in tests]
        if not tests:
            overall = "not tested"
        elif any(v in FAILED for v in verdicts):
            overall = "failed"
        elif any(v == "running" for v in verdicts):
            overall = "incomplete"
        elif any(v == "passed" for v in verdicts):
            overall = "passed"
        else:
            overall = "skipped"
        rows.append({"id": rid, "text": req.text if req else "not in the requirements catalogue",
                     "source": req.source if req else "", "group": req.group if req else "unknown",
                     "known": req is not None, "tests": tests, "verdict": overall})
    return rows


def _base(check: str) -> str:
    """A check's id without its module and parameters: ``test_x`` of ``test_safety.py::test_x[armed]``."""
    return check.split("::")[-1].split("[")[0]


def detections(selftests: list[dict[str, Any]], tests: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per check, from self-check entries: the healthy verdict, the faults it
    was shown to detect (it failed against them, as it must), the faults it
    was not (it passed against them), and the faults it names (a self-test
    record's ``detects``) that were never run against it."""
    rows: dict[str, dict[str, Any]] = {}
    named: dict[str, list[str]] = {}
    for t in tests or []:
        if t.get("detects") is not None:
            named[t.get("name") or _base(t["nodeid"])] = list(t["detects"])
    for s in selftests:
        check = s.get("check") or "?"
        row = rows.setdefault(check, {"check": check, "healthy": None, "shown": [], "not_shown": [],
                                      "requirements": [], "properties": []})
        for r in s.get("requirements") or []:
            if r not in row["requirements"]:
                row["requirements"].append(r)
        if s.get("property") is not None and s["property"] not in row["properties"]:
            row["properties"].append(s["property"])
        fault = s.get("fault")
        if fault is None:
            if row["healthy"] != "failed":
                row["healthy"] = s.get("verdict")
        elif s.get("ok") and s.get("verdict") == "failed":
            if fault not in row["shown"]:
                row["shown"].append(fault)
        elif fault not in row["not_shown"]:
            row["not_shown"].append(fault)
    for check, faults in named.items():
        rows.setdefault(check, {"check": check, "healthy": None, "shown": [], "not_shown": [],
                                "requirements": [], "properties": []})
    for check, row in rows.items():
        seen = set(row["shown"]) | set(row["not_shown"])
        row["named"] = named.get(check)
        row["not_run"] = [f for f in named.get(check) or [] if f not in seen]
        row["ok"] = (row["healthy"] == "passed" and bool(row["shown"]) and not row["not_shown"]
                     and not row["not_run"])
    return sorted(rows.values(), key=lambda r: (r["ok"], r["check"]))


def build_timelines(run_dir: Path, rec: dict[str, Any], tests: list[dict[str, Any]]) -> dict[str, str]:
    """{nodeid: inline SVG} for failed tests and up to MAX_PASSING_TIMELINES others."""
    from .capture import read_capture
    from .timeline import build_tracks, render_svg, timeline_for

    capture = run_dir / ((rec.get("files") or {}).get("bus_capture") or CAPTURE_FILE)
    if not capture.exists():
        return {}
    benches = list(rec.get("benches") or {}) or [None]
    by_bench = {b: build_tracks(rec, read_capture(capture), bench=b) for b in benches}
    if not any(t.changes for tracks in by_bench.values() for t in tracks.values()):
        return {}
    out: dict[str, str] = {}
    passing = 0
    for t in tests:
        failed = t.get("verdict") in FAILED
        if not failed and passing >= MAX_PASSING_TIMELINES:
            continue
        tracks = by_bench.get(t.get("bench")) or by_bench[benches[0]]
        tl = timeline_for(t, tracks)
        if tl is None or tl.empty:
            continue
        out[t["nodeid"]] = render_svg(tl)
        passing += 0 if failed else 1
    return out


def capture_count(run_dir: Path, rec: dict[str, Any]) -> int | None:
    path = run_dir / ((rec.get("files") or {}).get("bus_capture") or CAPTURE_FILE)
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def context(run_dir: Path, rec: dict[str, Any], catalogue: Catalogue | None = None) -> dict[str, Any]:
    from . import plots

    catalogue = catalogue or Catalogue.load()
    tests = sorted(rec.get("tests", []), key=test_sort_key)
    measurements = [m for t in tests for m in t.get("measurements", [])]
    files = [(name, (run_dir / name).stat().st_size) for name in run_files(run_dir)
             if name not in (REPORT_FILE, MANIFEST_FILE)]
    trace = traceability(rec, catalogue)
    benches = rec.get("benches") or {}
    groups: dict[Any, list[dict[str, Any]]] = {name: [] for name in benches}
    for t in tests:
        groups.setdefault(t.get("bench"), []).append(t)
    test_groups = [(name, ts) for name, ts in groups.items() if ts or name in benches]
    return {
        "benches": benches, "test_groups": test_groups,
        "anchors": {t["nodeid"]: i for i, t in enumerate(tests, 1)},
        "cut_short": [name for name, b in benches.items() if b.get("status") in ("not_run", "incomplete")],
        "rec": rec, "tests": tests, "failures": [t for t in tests if t.get("verdict") in FAILED],
        "trace": trace, "trace_counts": {v: sum(1 for r in trace if r["verdict"] == v)
                                         for v in ("passed", "failed", "incomplete", "skipped", "not tested")},
        "plots": {"propagation": plots.propagation(measurements), "coverage": plots.coverage(measurements),
                  "outage": plots.outage_sweep(measurements)},
        "timelines": build_timelines(run_dir, rec, tests),
        "files": files, "bus_messages": capture_count(run_dir, rec),
        "catalogue": catalogue, "escape": html.escape,
        "detections": detections(rec.get("selftest") or [], rec.get("tests")),
        "deviations": rec.get("deviations") or [],
    }


def render(run_dir: Path, rec: dict[str, Any] | None = None) -> str:
    run_dir = Path(run_dir)
    rec = rec if rec is not None else load_run(run_dir)
    return environment().get_template("report.html.j2").render(**context(run_dir, rec))


def write_report(run_dir: Path, rec: dict[str, Any] | None = None, out: Path | None = None) -> Path:
    """Render the report into ``out`` (default ``RUN/report.html``)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    out.write_text(render(run_dir, rec), encoding="utf-8")
    return out
