"""The outage checks give the same verdicts at clock scale 1 as at 60
(issue 5, DESIGN principle 5: verdicts are the same at every scale).

The short interruption, the long outage and a two-point sweep (one length
that must not alert, one that must) run against the default simulated lab,
once at scale 1 and once at 60, side by side, each in its own pytest with
its own lab on a free port.  Every test verdict and every judged
measurement must agree.  Slow: at scale 1 a three-minute outage takes three
minutes (about 13 wall minutes in all); deselect with ``-m "not slow"``.
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _start(tmp_path: Path, scale: float) -> tuple[subprocess.Popen, Path]:
    lab = yaml.safe_load((ROOT / "lab.yaml").read_text())
    lab.setdefault("suites", {}).setdefault("outage", {})["sweep"] = SWEEP
    lab_path = tmp_path / f"lab-x{scale:g}.yaml"
    lab_path.write_text(yaml.safe_dump(lab))
    ini = tmp_path / f"pytest-x{scale:g}.ini"
    ini.write_text("[pytest]\n")
    run_dir = tmp_path / f"run-x{scale:g}"
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-c", str(ini), "--rootdir", str(SUITE.parent),
           "-p", "no:cacheprovider", "-q", "--lab", str(lab_path), "--clock-scale", f"{scale:g}", "-k", CHECKS,
           "--rig-run-dir", str(run_dir), "--rig-no-seal"]
    log = (tmp_path / f"pytest-x{scale:g}.log").open("w")
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
    runs = {scale: _start(tmp_path, scale) for scale in SCALES}
    for scale, (proc, _) in runs.items():
        proc.wait(timeout=1700)
    wall = time.monotonic() - started
    results = {}
    for scale, (proc, run_dir) in runs.items():
        log = (tmp_path / f"pytest-x{scale:g}.log").read_text()
        assert proc.returncode == 0, f"outage checks at scale {scale:g} failed (exit {proc.returncode}):\n{log[-4000:]}"
        results[scale] = _verdicts(run_dir)
    slow, fast = (results[s] for s in SCALES)
    assert set(slow) == set(fast) and len(slow) == 3, (sorted(slow), sorted(fast))
    for name in slow:
        assert slow[name]["verdict"] == fast[name]["verdict"] == "passed", (name, slow[name], fast[name])
        assert slow[name]["measurements"] == fast[name]["measurements"], name
    # the sweep's threshold lies between its two probes at both scales
    for res in results.values():
        assert SWEEP[0] < res["test_outage_alert_threshold_sweep"]["values"]["outage.threshold"] < SWEEP[1]
    print(f"\noutage checks at scales {', '.join(f'{s:g}' for s in SCALES)}: {wall:.0f} wall s; thresholds "
          + ", ".join(f"x{s:g}: {results[s]['test_outage_alert_threshold_sweep']['values']['outage.threshold']}"
                      for s in SCALES))
