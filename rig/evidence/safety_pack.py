"""The safety evidence pack for PPMID enable-supply (SUP-2..SUP-6, SUP-4's question).

``rig evidence safety --run RUN`` turns one sealed run into a printable
document about the six safety properties of REQUIREMENTS.md: for each, the
trials run, passes and failures, and the self-check results that show its
checks can fail; the worst enable latency; the stale-command and replay
results; and the SHA-256 of the run's manifest it was built from, after
checking the run folder against that manifest.

How tests feed it (docs/evidence.md):

* ``@pytest.mark.safety(4)`` names the properties a test checks;
* a test is one trial, unless it records ``safety.trial`` measurements (one
  per trial: then each is a trial, failed when out of limits);
* ``safety.enable_latency`` (s, with ``high=`` the bound): the worst is quoted;
* tests with ``stale`` or ``replay`` in their id, and measurements
  ``safety.stale_command`` / ``safety.replay``, form the stale/replay table;
* self-check entries (``evidence.selftest(..., safety_property=4)``) prove
  the checks can fail.

::

    rig evidence safety --run runs/20261123T093000Z-ab12cd --out safety.html [--pdf]
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .catalogue import Catalogue
from .manifest import ManifestError, run_hash, verify
from .record import load_run
from .report import FAILED, environment


def _trials(test: dict[str, Any]) -> tuple[int, int]:
    """(trials, failed trials) of one test."""
    trials = [m for m in test.get("measurements", []) if m.get("name") == "safety.trial"]
    if trials:
        failed = sum(1 for m in trials if m.get("outcome") == "fail")
        if test.get("verdict") in FAILED and not failed:
            failed = 1  # the test failed for another reason: count it
        return len(trials), failed
    if test.get("verdict") in ("skipped", "xfailed", "running"):
        return 0, 0
    return 1, 1 if test.get("verdict") in FAILED else 0


def property_rows(rec: dict[str, Any], catalogue: Catalogue) -> list[dict[str, Any]]:
    rows = []
    tests = rec.get("tests", [])
    for number, text in sorted(catalogue.safety_properties.items()):
        checks = [t for t in tests if number in (t.get("safety_properties") or [])]
        trials = failures = 0
        for t in checks:
            n, f = _trials(t)
            trials, failures = trials + n, failures + f
        # a self-check names its property, or the check: a test id, with or without its parameters
        check_ids = {t["nodeid"] for t in checks} | {t["nodeid"].split("[")[0] for t in checks}
        selftest = [s for s in rec.get("selftest", []) if s.get("property") == number or s.get("check") in check_ids]
        shown_can_fail = any(s.get("ok") and s.get("fault") and s.get("verdict") == "failed" for s in selftest)
        broken = [s for s in selftest if not s.get("ok")]
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
                     "selftest": selftest, "broken": broken, "verdict": verdict})
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


def context(run_dir: Path, rec: dict[str, Any], selftest_dir: Path | None = None) -> dict[str, Any]:
    """The pack's content.  With ``selftest_dir`` (a ``rig selftest`` run) the
    self-check results come from that run, whose hash the pack quotes too."""
    catalogue = Catalogue.load()
    digest, integrity = _sealed(run_dir)
    selftest_run = None
    if selftest_dir is not None:
        other = load_run(selftest_dir)
        st_digest, st_integrity = _sealed(selftest_dir)
        selftest_run = {"id": other.get("id"), "digest": st_digest, "integrity": st_integrity,
                        "status": other.get("status")}
        rec = {**rec, "selftest": other.get("selftest", [])}
    rows = property_rows(rec, catalogue)
    return {"rec": rec, "rows": rows, "digest": digest, "integrity": integrity, "selftest_run": selftest_run,
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
    out = []
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
