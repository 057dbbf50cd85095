"""The examples in docs/ run as written: a lab engineer's tests against the
default simulated lab through the plugin alone (issue 5), and the rig
script against a lab brought up the way `rig up` does."""

import os
import subprocess
import sys

from rig.config import load_lab
from rig.launch import LabUp

from conftest import ROOT


def test_tests_written_from_the_docs_pass_against_the_simulated_lab(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--lab", str(ROOT / "lab.yaml"),
         str(ROOT / "docs" / "examples" / "test_my_bench.py"), "--rootdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


def test_the_example_script_runs(tmp_path):
    cfg = load_lab(ROOT / "lab.yaml")
    with LabUp(cfg, port=0, lab_path=str(ROOT / "lab.yaml"), log_dir=tmp_path / "logs") as up:
        env = dict(os.environ, RIG_BROKER_URL=up.endpoint.url)
        proc = subprocess.run([sys.executable, str(ROOT / "docs" / "example_script.py")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "supply back" in proc.stdout
