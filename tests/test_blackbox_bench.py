"""The acceptance of issue 12: on labs/blackbox.yaml the meter and the PPMIDs
are sealed twins with nothing of their own on the bus, and

* the safety, outage and HAN suites pass there, every check run (none
  skipped for want of a twin's help), and the run's bus capture (bus.jsonl)
  holds not one message on a sealed twin's node: the suites sent no
  sim-only operation and read no twin's state;
* ``rig selftest`` there shows checks failing against the faults of the
  twins behind the black boxes (meter, PPMID) and of the simulated hub.

Both run the lab in processes of its own, as a user does (a few minutes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from rig.selftest import lab_text

SEALED = re.compile(r"^rig/v1/bench-1/device/(esme|ppmid|ppmid-neighbour)/")
#: faults of the twins behind the black boxes and of the hub: a meter button, a PPMID button and the tap, an alert
FAULTS = ("ignores_hold_time", "enables_without_hold", "no_restore_alert")


def _lab(tmp_path, trials: int = 1) -> str:
    data = yaml.safe_load((ROOT / "labs" / "blackbox.yaml").read_text())
    text = yaml.safe_load(lab_text(data, "bench-1", trials))
    text["lab"]["results"] = {"dir": str(tmp_path / "runs"), "store": f"sqlite:///{tmp_path / 'history.sqlite'}"}
    path = tmp_path / "blackbox.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return str(path)


def test_the_suites_pass_on_the_black_box_bench_without_one_sim_only_message(tmp_path):
    lab = _lab(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rig", "run", "--lab", lab, "--suite", "safety,outage,han"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").exists()]
    record = json.loads((run / "run.json").read_text())
    verdicts = {t["name"]: t["verdict"] for t in record["tests"]}
    assert verdicts and set(verdicts.values()) == {"passed"}, {k: v for k, v in verdicts.items() if v != "passed"}
    assert len(verdicts) >= 28
    topics = [json.loads(line)["topic"] for line in (run / "bus.jsonl").read_text().splitlines() if line.strip()]
    assert len(topics) > 1000                                       # the capture saw the run
    assert any(t.startswith("rig/v1/bench-1/actuator/esme/") for t in topics)     # the rig pressed buttons
    assert any(t.startswith("rig/v1/bench-1/instrument/optical/") for t in topics)
    sealed = sorted({t for t in topics if SEALED.match(t)})
    assert sealed == [], sealed


def test_the_selftest_shows_checks_failing_against_faults_behind_the_black_boxes(tmp_path):
    lab = _lab(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "rig", "selftest", "--lab", lab, "--faults", ",".join(FAULTS),
                           "--trials", "1"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    [run] = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").exists()]
    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "selftest" and record["status"] == "passed"
    entries = record["selftest"]
    assert entries and all(e["ok"] for e in entries), [e for e in entries if not e["ok"]]
    for fault in FAULTS:
        assert any(e["fault"] == fault and e["verdict"] == "failed" for e in entries), fault
