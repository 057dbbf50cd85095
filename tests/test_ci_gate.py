""".ci/run fails on a lint or a type error.

.ci/run runs .ci/lint (ruff, then mypy, with pyproject.toml's settings)
before the tests, under ``set -e``.  These tests run .ci/lint on a copy of
the tree with one error put in: an unused import, then a wrong return type.
The clean tree passing it is .ci/run's own first step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(300)


def test_ci_runs_the_gate_before_the_tests():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "set -euo pipefail" in script
    gate = next(i for i, line in enumerate(script) if line.strip().startswith(("bash .ci/lint", ".ci/lint")))
    tests = next(i for i, line in enumerate(script) if line.strip() == "python3 -m pytest")
    assert gate < tests


def _tree_with(tmp_path: Path, module: str, extra: str) -> Path:
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", ".mypy_cache", ".ruff_cache")
    for name in ("rig", "instruments", "fixtures", ".ci"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / module
    target.write_text(target.read_text() + extra)
    return copy


def _gate(tree: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(tree / ".ci" / "lint")], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=280)


def test_a_lint_error_fails_the_gate(tmp_path):
    run = _gate(_tree_with(tmp_path, "rig/version.py", "\nimport os\n"))
    assert run.returncode != 0
    assert "F401" in run.stdout + run.stderr and "rig/version.py" in run.stdout + run.stderr


def test_a_type_error_fails_the_gate(tmp_path):
    run = _gate(_tree_with(tmp_path, "rig/version.py", '\n\ndef major() -> int:\n    return __version__\n'))
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "All checks passed" in out                      # ruff had nothing to say: mypy failed it
    assert 'rig/version.py:' in out and "[return-value]" in out
