"""The outage checks give the same verdicts at clock scale 1 as at 60
(issue 5, issue 9, DESIGN principle 5: verdicts are the same at every scale).

The short interruption, the long outage and a two-point sweep (one length
that must not alert, one that must) run against the default simulated lab,
healthy and with two timing faults (a restoration alert a minute late, an
outage alert 15 s early), each once at scale 1 and once at 60, side by side,
each in its own pytest with its own lab on a free port.  Every test verdict
and every judged measurement must agree between the scales; the healthy lab
passes and each faulty one fails.  Slow: at scale 1 a three-minute outage
takes three minutes (about 13 wall minutes in all); deselect with
``-m "not slow"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
SUITE = ROOT / "rig" / "suites" / "test_outage.py"
CHECKS = "short_interruption or long_outage or threshold_sweep"
#: one length the period's tolerance says must not alert, one that must (default lab: 180 s +- 10 s)
SWEEP = [170.0, 190.0]
SCALES = (1.0, 60.0)
#: case -> (device, fault): the healthy lab and two timing faults
CASES = {"healthy": None, "late_restore": ("esme", "late_restore_alert"), "early_outage": ("comms_hub", "outage_alert_early")}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _start(tmp_path: Path, case: str, scale: float) -> tuple[subprocess.Popen, Path]:
    lab = yaml.safe_load((ROOT / "lab.yaml").read_text())
    lab.setdefault("suites", {}).setdefault("outage", {})["sweep"] = SWEEP
    if CASES[case]:
        device, fault = CASES[case]
        lab["benches"]["bench-1"]["devices"][device]["faults"] = [fault]
    tag = f"{case}-x{scale:g}"
    lab_path = tmp_path / f"lab-{tag}.yaml"
    lab_path.write_text(yaml.safe_dump(lab))
    ini = tmp_path / f"pytest-{tag}.ini"
    ini.write_text("[pytest]\n")
    run_dir = tmp_path / f"run-{tag}"
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-c", str(ini), "--rootdir", str(SUITE.parent),
           "-p", "no:cacheprovider", "-q", "--lab", str(lab_path), "--clock-scale", f"{scale:g}", "-k", CHECKS,
           "--rig-run-dir", str(run_dir), "--rig-no-seal"]
    log = (tmp_path / f"pytest-{tag}.log").open("w")
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT), run_dir


def _verdicts(run_dir: Path) -> dict[str, dict]:
    """Per test: its verdict and the outcome of each judged measurement."""
    record = json.loads((run_dir / "run.json").read_text())
    out = {}
    for test in record["tests"]:
        judged = [(m["name"], m["attrs"].get("nominal_s"), m["outcome"]) for m in test["measurements"]
                  if m["outcome"] != "info"]
        out[test["name"]] = {"verdict": test["verdict"], "measurements": judged,
                             "values": {m["name"]: m["value"] for m in test["measurements"]}}
    return out


@pytest.mark.requirement("OUT-2", "OUT-3", "OUT-4")
def test_outage_verdicts_are_the_same_at_scale_1_and_60(tmp_path):
    started = time.monotonic()
    runs = {(case, scale): _start(tmp_path, case, scale) for case in CASES for scale in SCALES}
    for proc, _ in runs.values():
        proc.wait(timeout=1700)
    wall = time.monotonic() - started
    results = {}
    for (case, scale), (proc, run_dir) in runs.items():
        log = (tmp_path / f"pytest-{case}-x{scale:g}.log").read_text()
        assert (proc.returncode == 0) == (case == "healthy"), \
            f"{case} at scale {scale:g}: exit {proc.returncode}:\n{log[-4000:]}"
        results[case, scale] = _verdicts(run_dir)
    for case in CASES:
        slow, fast = (results[case, s] for s in SCALES)
        assert set(slow) == set(fast) and len(slow) == 3, (case, sorted(slow), sorted(fast))
        for name in slow:
            if case == "healthy":
                assert slow[name]["verdict"] == "passed", (name, slow[name])
            assert slow[name]["verdict"] == fast[name]["verdict"], (case, name, slow[name], fast[name])
            assert slow[name]["measurements"] == fast[name]["measurements"], (case, name)
        assert any(v["verdict"] == "failed" for v in slow.values()) == (case != "healthy"), (case, slow)
    # the healthy sweep's threshold lies between its two probes at both scales
    for scale in SCALES:
        threshold = results["healthy", scale]["test_outage_alert_threshold_sweep"]["values"]["outage.threshold"]
        assert SWEEP[0] < threshold < SWEEP[1]
    print(f"\noutage checks, healthy and two timing faults, at scales {', '.join(f'{s:g}' for s in SCALES)}: "
          f"{wall:.0f} wall s")
