"""The safety evidence pack for PPMID enable-supply (SUP-2..SUP-6, SUP-4's question).

``rig evidence safety --run RUN`` turns one sealed run into a printable
document about the six safety properties of REQUIREMENTS.md: for each, the
trials run, passes and failures, and the self-check results that show its
checks can fail; the worst enable latency; the stale-command and replay
results; and the SHA-256 of the run's manifest it was built from, after
checking the run folder against that manifest.

How tests feed it (docs/evidence.md):

* ``@pytest.mark.safety(4)`` names the properties a test checks;
* a test is one trial, unless its measurements carry a ``trial=``
  attribute: then each distinct ``trial`` value is one trial (whatever the
  measurement names), failed when any of its measurements is out of limits;
* a measurement's ``observed_by=`` attribute (a part of lab.yaml, or a list
  of them) names what observed it: the pack lists those parts per property
  with their identities; a measurement without it is "not attributed";
* the run record's ``deviations`` (``RunRecorder.set_deviations``) and
  measurements with ``deviation=True`` (and ``reference=``) are shown in red;
* ``safety.enable_latency`` (s, with ``high=`` the bound): the worst is quoted;
* tests with ``stale`` or ``replay`` in their id, and measurements
  ``safety.stale_command`` / ``safety.replay``, form the stale/replay table;
* self-check entries (``evidence.selftest(..., safety_property=4)``) prove
  the checks can fail.  A nightly run has none of its own: the pack takes
  them from ``--selftest RUN``, else from the latest sealed ``rig selftest``
  run of the same lab in the run's results folder or results store,
  preferring one that ran the same suites (SHA-256 of the suite files in
  both records).  None found, or one that ran other suites, is said in red,
  and then no property "holds" on its strength.

::

    rig evidence safety --run runs/20261123T093000Z-ab12cd --out safety.html [--pdf]
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from . import MANIFEST_FILE, RECORD_FILE
from .catalogue import Catalogue
from .manifest import ManifestError, run_hash, verify
from .record import load_run
from .report import FAILED, _base, detections, environment


def _trials(test: dict[str, Any]) -> tuple[int, int]:
    """(trials, failed trials) of one test: one per distinct ``trial``
    attribute among its measurements (any name), failed when any of that
    trial's measurements is out of limits; one for the whole test when none
    carries ``trial``.  A test that failed for another reason (an exception,
    a measurement outside every trial) counts one failed trial."""
    if test.get("verdict") in ("skipped", "xfailed", "running"):
        return 0, 0
    groups: dict[str, bool] = {}
    for m in test.get("measurements", []):
        attrs = m.get("attrs") or {}
        if "trial" in attrs:
            key = json.dumps(attrs["trial"], sort_keys=True, default=str)
            groups[key] = groups.get(key, False) or m.get("outcome") == "fail"
    if groups:
        failed = sum(groups.values())
        if test.get("verdict") in FAILED and not failed:
            failed = 1
        return len(groups), failed
    return 1, 1 if test.get("verdict") in FAILED else 0


def part_identity(rec: dict[str, Any], part: str, bench: str | None) -> dict[str, Any]:
    """What the run's inventory says of a part named in ``observed_by``:
    ``{"part", "kind", "identity", "known"}`` (identity: an instrument's
    *IDN?, a device's version or firmware, as reported on the bus)."""
    bench = bench or rec.get("bench")
    if "/" in part:
        bench, name = part.split("/", 1)
    else:
        name = part
    key = f"{bench}/{name}"
    hw = rec.get("hardware") or {}
    inst = (hw.get("instruments") or {}).get(key)
    if inst is not None:
        return {"part": key, "kind": f"instrument ({inst.get('kind') or '?'}, {inst.get('driver') or '?'})",
                "identity": inst.get("identity"), "known": True}
    dev = (hw.get("devices") or {}).get(key)
    if dev is not None:
        return {"part": key, "kind": f"device ({dev.get('kind') or '?'})", "known": True,
                "identity": dev.get("version") or dev.get("firmware_reported") or dev.get("firmware")}
    model = ((rec.get("lab") or {}).get("model") or {}).get("benches", {}).get(bench) or {}
    relay = (model.get("relays") or {}).get(name)
    if relay is not None:
        return {"part": key, "kind": f"relay (GPIO {relay.get('pin', '?')}, the bench's controller agent)",
                "identity": None, "known": True}
    for section, items in model.items():
        if isinstance(items, dict) and isinstance(items.get(name), dict):
            return {"part": key, "kind": f"{section} ({items[name].get('kind') or section})", "identity": None,
                    "known": True}
    if name in RIG_PARTS:
        return {"part": key, "kind": RIG_PARTS[name], "identity": (rec.get("software") or {}).get("rig"),
                "known": True}
    return {"part": key, "kind": "not in the run's inventory", "identity": None, "known": False}


#: observers that are the rig's own parts, not lab.yaml entries (identity: the rig's version)
RIG_PARTS = {
    "dcc": "head end: service-request answers and the alert sink's receive times (rig/v1/<bench>/dcc/headend)",
    "han_tap": "HAN tap: the frames on the air as a sniffer saw them; replayed, delayed and forged frames it sent",
    "rig": "the rig's own timing: the lab clock when it sent a command, and each button's press and release as "
           "the bench agent's actuator stamped them",
    "meter event log": "the meter's own event log, its logbook read through its optical port (the device's report "
                       "of itself)",
    "ppmid display": "the PPMID's own answer to a button (the device's report of itself)",
    "meter keypad answer": "the meter's own answer to its keypad (the device's report of itself)",
}


def observers(rec: dict[str, Any], tests: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(the parts that observed the tests' measurements, each with its
    identity and how many measurements it observed; {measurement name:
    count} of those with no ``observed_by``)."""
    parts: dict[str, dict[str, Any]] = {}
    unattributed: dict[str, int] = {}
    for t in tests:
        for m in t.get("measurements", []):
            attrs = m.get("attrs") or {}
            seen = attrs.get("observed_by")
            if not seen:
                unattributed[m.get("name", "?")] = unattributed.get(m.get("name", "?"), 0) + 1
                continue
            for part in (seen if isinstance(seen, list) else [seen]):
                info = part_identity(rec, str(part), attrs.get("bench") or t.get("bench"))
                row = parts.setdefault(info["part"], {**info, "measurements": 0, "names": []})
                row["measurements"] += 1
                if m.get("name") not in row["names"]:
                    row["names"].append(m.get("name"))
    return sorted(parts.values(), key=lambda p: p["part"]), unattributed


def _requirements_of(tests: list[dict[str, Any]]) -> set[str]:
    ids = {r for t in tests for r in t.get("requirements") or []}
    return ids | {r for t in tests for m in t.get("measurements", []) for r in m.get("requirements") or []}


def property_rows(rec: dict[str, Any], catalogue: Catalogue, selftest_valid: bool = True) -> list[dict[str, Any]]:
    """One row per safety property.  ``selftest_valid`` False: the self-checks
    are shown but prove nothing here (they ran other suites), so no property
    "holds" on their strength."""
    rows = []
    tests = rec.get("tests", [])
    shown_by_check = {d["check"]: d for d in detections(rec.get("selftest") or [])}
    deviations = rec.get("deviations") or []
    for number, text in sorted(catalogue.safety_properties.items()):
        checks = [t for t in tests if number in (t.get("safety_properties") or [])]
        trials = failures = 0
        for t in checks:
            n, f = _trials(t)
            trials, failures = trials + n, failures + f
        # a self-check names its property, or the check: a test id, with or without its parameters
        check_ids = {t["nodeid"] for t in checks} | {t["nodeid"].split("[")[0] for t in checks}
        selftest = [s for s in rec.get("selftest", []) if s.get("property") == number or s.get("check") in check_ids]
        shown_can_fail = selftest_valid and any(s.get("ok") and s.get("fault") and s.get("verdict") == "failed"
                                                for s in selftest)
        broken = [s for s in selftest if not s.get("ok")] if selftest_valid else []
        per_check = []
        for t in checks:
            names = {t.get("name") or _base(t["nodeid"]), _base(t["nodeid"]), t["nodeid"]}
            found = [d for c, d in shown_by_check.items() if c in names or _base(c) in names]
            per_check.append({"test": t, "shown": sorted({f for d in found for f in d["shown"]}),
                              "not_shown": sorted({f for d in found for f in d["not_shown"] + d["not_run"]})})
        faults_shown = sorted({s["fault"] for s in selftest if s.get("ok") and s.get("fault")
                               and s.get("verdict") == "failed"})
        parts, unattributed = observers(rec, checks)
        reqs = _requirements_of(checks)
        deviating = [{**m, "test": t["nodeid"]} for t in checks for m in t.get("measurements", [])
                     if (m.get("attrs") or {}).get("deviation")]
        if failures:
            verdict = "violated"
        elif not trials:
            verdict = "not shown"
        elif broken:
            verdict = "check broken"
        elif shown_can_fail:
            verdict = "holds"
        else:
            verdict = "holds, check unproven"
        rows.append({"number": number, "text": text, "tests": checks, "trials": trials, "passes": trials - failures,
                     "failures": failures, "failed_tests": [t for t in checks if t.get("verdict") in FAILED],
                     "selftest": selftest, "broken": broken, "verdict": verdict,
                     "per_check": per_check, "faults_shown": faults_shown, "observed_by": parts,
                     "unattributed": unattributed,
                     "deviations": [d for d in deviations if d.get("requirement") in reqs],
                     "deviating": deviating})
    return rows


def worst_latency(rec: dict[str, Any]) -> dict[str, Any] | None:
    worst = None
    for t in rec.get("tests", []):
        for m in t.get("measurements", []):
            if m.get("name") == "safety.enable_latency" and isinstance(m.get("value"), (int, float)):
                if worst is None or m["value"] > worst["value"]:
                    worst = {**m, "test": t["nodeid"]}
    return worst


def stale_and_replay(rec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for t in rec.get("tests", []):
        ms = [m for m in t.get("measurements", []) if m.get("name") in ("safety.stale_command", "safety.replay")]
        nodeid = t["nodeid"].lower()
        if ms or "stale" in nodeid or "replay" in nodeid:
            kind = "stale" if "stale" in nodeid or any(m["name"] == "safety.stale_command" for m in ms) else "replay"
            rows.append({"kind": kind, "test": t, "measurements": ms})
    return rows


def _sealed(run_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """(run hash, integrity) of a run folder, checked against its manifest."""
    try:
        v = verify(run_dir)
        return run_hash(run_dir), {"intact": v.intact, "problems": v.lines(), "checked": v.checked}
    except ManifestError as exc:
        return None, {"intact": False, "problems": [str(exc)], "checked": 0}


def is_selftest_run(rec: dict[str, Any]) -> bool:
    return rec.get("kind") == "selftest" or any(str(t.get("nodeid", "")).startswith("selftest::")
                                                for t in rec.get("tests", []))


def suites_match(rec: dict[str, Any], selftest: dict[str, Any]) -> tuple[bool | None, str]:
    """Did the self-test run the same suites as ``rec``?  (True, False, or
    None when a record holds no suites hash), with a sentence saying so."""
    mine = (rec.get("suites") or {}).get("files")
    theirs = (selftest.get("suites") or {}).get("files")
    if not mine:
        return None, ("this run records no SHA-256 of its suites (an older rig): nothing shows the self-test ran the "
                      "same checks")
    if not theirs:
        return None, ("the self-test records no SHA-256 of its suites (an older rig): nothing shows it ran the "
                      "same checks")
    files = (selftest.get("selftest_run") or {}).get("suite_files") or sorted(theirs)
    differ = [f for f in files if mine.get(f) != theirs.get(f)]
    if differ:
        return False, (f"the suites differ from the ones the self-test ran ({', '.join(differ)}): it does not vouch "
                       "for this run's checks; run `rig selftest` again")
    return True, f"the same suites as this run ({', '.join(files)}: equal SHA-256)"


def why_selftest_failed(st: dict[str, Any]) -> str:
    """What a failed self-test run's record says went wrong, in a sentence."""
    reasons = []
    broken = sorted({f"{e.get('check')} against {e.get('fault') or 'the healthy device'}"
                     for e in st.get("selftest") or [] if not e.get("ok")})
    if broken:
        reasons.append(f"{len(broken)} self-check(s) did not give their expected verdict ({'; '.join(broken[:5])}"
                       f"{'; ...' if len(broken) > 5 else ''})")
    scope = st.get("selftest_run") or {}
    empty = [label for label, lab in (scope.get("labs") or {}).items() if not lab.get("ran")]
    if empty:
        reasons.append(f"lab(s) {', '.join(empty)} ran no check")
    cover = scope.get("coverage") or {}
    if cover.get("unclaimed_checks") and not scope.get("partial"):
        reasons.append(f"checks naming no fault: {', '.join(cover['unclaimed_checks'])}")
    if cover.get("unclaimed_faults") and not scope.get("partial"):
        reasons.append(f"fault profiles no check claims: {', '.join(cover['unclaimed_faults'])}")
    if cover.get("unknown_faults") and not scope.get("partial"):
        named = sorted({f for fs in cover["unknown_faults"].values() for f in fs})
        reasons.append(f"unknown fault profiles named: {', '.join(named)}")
    return "; ".join(reasons) or "see its report"


def _store_path(url: str, cwd: str | None) -> Path | None:
    """The SQLite file of a store URL, relative to where the run was made."""
    from .store import _sqlite_path

    try:
        path = _sqlite_path(url)
    except Exception:  # noqa: BLE001 - not a SQLite URL we can read
        return None
    if not path.is_absolute() and not path.exists() and cwd:
        path = Path(cwd) / path
    return path if path.exists() else None


def selftest_candidates(run_dir: Path, rec: dict[str, Any]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Sealed run folders that may be self-tests of this run's lab: every
    sealed sibling of the run folder, and the self-test runs the results
    store knows; with notes on places that could not be searched."""
    out: dict[Path, str] = {}
    notes: list[str] = []
    parent = run_dir.resolve().parent
    for p in sorted(parent.iterdir(), reverse=True):
        if p.is_dir() and p != run_dir.resolve() and (p / MANIFEST_FILE).exists() and (p / RECORD_FILE).exists():
            out.setdefault(p.resolve(), f"the results folder {parent}")
    url = rec.get("store_url")
    if url:
        from .store import ResultsStore, StoreError

        if url.startswith("sqlite:"):
            path = _store_path(url, rec.get("cwd"))
            url = f"sqlite:///{path}" if path is not None else None
            if url is None:
                notes.append(f"results store {rec.get('store_url')}: not found from here")
        if url:
            try:
                with ResultsStore.open(url) as store:
                    for row in store.selftest_runs((rec.get("lab") or {}).get("name")):
                        p = Path(row.get("run_dir") or "")
                        if row.get("run_dir") and (p / MANIFEST_FILE).exists():
                            out.setdefault(p.resolve(), f"the results store {store.url}")
            except StoreError as exc:
                notes.append(str(exc))
    return list(out.items()), notes


def find_selftest(run_dir: Path, rec: dict[str, Any]) -> tuple[Path | None, str, list[str]]:
    """The latest sealed, complete ``rig selftest`` run of the same lab,
    preferring one that ran the same suites: (folder or None, where it was
    found, notes)."""
    lab = (rec.get("lab") or {}).get("name")
    candidates, notes = selftest_candidates(run_dir, rec)
    found: list[tuple[float, Path, str, bool]] = []
    for path, where in candidates:
        try:
            other = json.loads((path / RECORD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not is_selftest_run(other) or not other.get("complete") or (other.get("lab") or {}).get("name") != lab:
            continue
        found.append((float((other.get("started") or {}).get("wall") or 0), path, where,
                      suites_match(rec, other)[0] is True))
    if not found:
        return None, "", notes
    found.sort(key=lambda f: f[0], reverse=True)
    best = next((f for f in found if f[3]), found[0])
    return best[1], best[2], notes


def resolve_selftest(run_dir: Path, rec: dict[str, Any], selftest_dir: Path | None = None,
                     search: bool = True) -> dict[str, Any]:
    """Which self-test vouches for ``rec``'s checks, and what is wrong with it.

    ``selftest_dir`` given: that run.  Else a run with self-checks of its own
    (a self-test run) uses them; a run with none (a nightly run) takes the
    latest sealed self-test of its lab (``search``).  Returns ``{"run"``: the
    self-test's id, hash, integrity, status, where it was found, whether it
    ran the same suites ... or None; ``"entries"``: its self-check entries or
    None (use the run's own); ``"problems"``: sentences for the red box;
    ``"notes"``; ``"valid"``: False when its self-checks prove nothing here}."""
    out: dict[str, Any] = {"run": None, "entries": None, "problems": [], "notes": [], "valid": True}
    problems = out["problems"]
    where = "given with --selftest"
    lab = (rec.get("lab") or {}).get("name")
    if selftest_dir is None and search and not rec.get("selftest"):
        selftest_dir, where, out["notes"] = find_selftest(Path(run_dir), rec)
        if selftest_dir is None:
            out["valid"] = False
            searched = f"the results folder {Path(run_dir).resolve().parent}" + (
                f" or the results store {rec.get('store_url')}" if rec.get("store_url") else "")
            problems.append(f"no sealed self-test run of lab {lab or '?'} in {searched}: nothing shows these checks "
                            "can fail; run `rig selftest` and build the pack again (or give --selftest RUN)")
    if selftest_dir is None:
        return out
    other = load_run(selftest_dir)
    st_digest, st_integrity = _sealed(Path(selftest_dir))
    match, match_text = suites_match(rec, other)
    scope = other.get("selftest_run") or {}
    out["run"] = {"id": other.get("id"), "digest": st_digest, "integrity": st_integrity,
                  "status": other.get("status"), "where": where, "path": str(selftest_dir),
                  "started": (other.get("started") or {}).get("wall"), "suites_match": match,
                  "suites_text": match_text, "partial": scope.get("partial"), "faults": scope.get("faults"),
                  "lab": (other.get("lab") or {}).get("name")}
    out["entries"] = other.get("selftest", [])
    if not is_selftest_run(other):
        problems.append(f"{selftest_dir} is not a `rig selftest` run")
        out["valid"] = False
    if match is not True:
        problems.append(match_text)
        out["valid"] = out["valid"] and match is None
    if not st_integrity["intact"]:
        problems.append(f"the self-test run {other.get('id')} does not match its manifest")
        out["valid"] = False
    if other.get("status") != "passed":
        problems.append(f"the self-test run {other.get('id')} {other.get('status')}: {why_selftest_failed(other)}")
    if out["run"]["lab"] != lab:
        problems.append(f"the self-test ran lab {out['run']['lab']}, this run lab {lab}")
    if scope.get("partial"):
        problems.append(f"a partial self-test: fault profiles {', '.join(scope.get('faults') or [])} only")
    return out


def context(run_dir: Path, rec: dict[str, Any], selftest_dir: Path | None = None,
            search: bool = True) -> dict[str, Any]:
    """The pack's content.  With ``selftest_dir`` (a ``rig selftest`` run) the
    self-check results come from that run, whose hash the pack quotes too;
    without it, a run with no self-checks of its own takes them from the
    latest sealed self-test of its lab (``search``; :func:`resolve_selftest`)."""
    catalogue = Catalogue.load()
    digest, integrity = _sealed(run_dir)
    st = resolve_selftest(run_dir, rec, selftest_dir, search)
    selftest_run, selftest_problems, notes, selftest_valid = st["run"], st["problems"], st["notes"], st["valid"]
    if st["entries"] is not None:
        rec = {**rec, "selftest": st["entries"]}
    rows = property_rows(rec, catalogue, selftest_valid)
    return {"rec": rec, "rows": rows, "digest": digest, "integrity": integrity, "selftest_run": selftest_run,
            "selftest_problems": selftest_problems, "selftest_notes": notes,
            "deviations": rec.get("deviations") or [],
            "worst": worst_latency(rec),
            "stale_replay": stale_and_replay(rec), "catalogue": catalogue,
            "sup": [catalogue.get(r) for r in ("SUP-2", "SUP-3", "SUP-4", "SUP-5", "SUP-6") if catalogue.get(r)],
            "overall": ("violated" if any(r["verdict"] == "violated" for r in rows) else
                        "incomplete" if any(r["verdict"] in ("not shown", "check broken") for r in rows) else
                        "holds" if all(r["verdict"] == "holds" for r in rows) else "holds, checks unproven")}


def devices_under_test(rec: dict[str, Any]) -> list[str]:
    """The benches of a run, each one device under test (its meter and PPMID)."""
    return list(rec.get("benches") or {}) or ([rec["bench"]] if rec.get("bench") else [])


def build_all(run_dir: str | Path, out_dir: str | Path | None = None, pdf: bool = False,
              selftest_dir: str | Path | None = None, benches: list[str] | None = None
              ) -> list[tuple[str | None, Path, Path | None]]:
    """One pack per device under test: a run of several benches gives
    ``RUN.safety.<bench>.html`` for each (or those named), each built from
    that bench's checks, devices and instruments only; a one-bench run gives
    ``RUN.safety.html``.  Returns (bench, html, pdf) for each."""
    run_dir = Path(run_dir)
    rec = load_run(run_dir)
    names = devices_under_test(rec)
    if benches:
        unknown = [b for b in benches if b not in names]
        if unknown:
            from .record import RecordError

            raise RecordError(f"{run_dir.name}: no bench {', '.join(unknown)} in this run; benches: "
                              f"{', '.join(names) or 'none recorded'}")
        names = [b for b in names if b in benches]
    if len(devices_under_test(rec)) <= 1:
        target = Path(out_dir) / f"{run_dir.name}.safety.html" if out_dir else None
        html_path, pdf_path = build(run_dir, target, pdf, selftest_dir)
        return [(names[0] if names else None, html_path, pdf_path)]
    out: list[tuple[str | None, Path, Path | None]] = []
    for bench in names:
        where = Path(out_dir) if out_dir else run_dir.parent
        html_path, pdf_path = build(run_dir, where / f"{run_dir.name}.safety.{bench}.html", pdf, selftest_dir,
                                    bench=bench)
        out.append((bench, html_path, pdf_path))
    return out


def build(run_dir: str | Path, out: str | Path | None = None, pdf: bool = False,
          selftest_dir: str | Path | None = None, bench: str | None = None) -> tuple[Path, Path | None]:
    """Write the pack (HTML, and PDF through headless Chromium if ``pdf``);
    default ``out``: ``<run folder>.safety.html`` beside the run folder, so
    the sealed folder itself is not changed.  ``selftest_dir``: the
    ``rig selftest`` run whose self-checks prove the checks can fail.
    ``bench``: the pack of that bench's device under test only (a run of
    several benches)."""
    from .record import bench_record

    run_dir = Path(run_dir)
    rec = load_run(run_dir)
    if bench is not None:
        rec = bench_record(rec, bench)
    out = Path(out) if out else run_dir.with_name(f"{run_dir.name}.safety.html")
    ctx = context(run_dir, rec, Path(selftest_dir) if selftest_dir else None)
    out.write_text(environment().get_template("safety.html.j2").render(**ctx), encoding="utf-8")
    pdf_path = None
    if pdf:
        pdf_path = out.with_suffix(".pdf")
        print_pdf(out, pdf_path)
    return out, pdf_path


def print_pdf(html_path: Path, pdf_path: Path, chromium: str = "chromium") -> None:
    """Print an HTML file to PDF with headless Chromium (Debian: apt-get install chromium)."""
    import shutil

    exe = shutil.which(chromium) or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise RuntimeError("PDF output needs Chromium (apt-get install chromium); the HTML pack prints too")
    with tempfile.TemporaryDirectory(prefix="rig-pdf-") as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--no-pdf-header-footer",
             f"--print-to-pdf={pdf_path}", Path(html_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not pdf_path.exists():
        raise RuntimeError(f"Chromium could not print {html_path} to PDF: {proc.stderr.strip()[-300:]}")
