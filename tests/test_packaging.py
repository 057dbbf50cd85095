"""The rig's import names do not clash with the package index's.

The pytest plugin's folder is ``fixtures/`` but its import name is
``rig_fixtures``: ``fixtures`` is the import name of testing-cabal's
``fixtures`` distribution (used by testtools and OpenStack tooling).  These
tests install that distribution beside the rig (``pip install --target``
into a folder put first on ``PYTHONPATH``) and show that pytest, the rig's
plugin and the index's ``fixtures`` all work in one interpreter.  They need
the package index (``RIG_REQUIRE_INDEX=1``, set by .ci/run, turns the skip
into a failure).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_list_names_every_package_folder():
    """pyproject lists the import packages (the plugin's folder is mapped):
    a new sub-package folder must be added there, or a wheel would lack it."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("rig", "instruments")
             for p in (ROOT / top).rglob("__init__.py")}
    assert listed - {"rig_fixtures"} == found
    assert setuptools["package-dir"] == {"rig_fixtures": "fixtures"}
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {"rig": "rig_fixtures.plugin"}


def test_the_plugin_folder_is_not_a_package_named_fixtures():
    """No ``fixtures/__init__.py``: from the checkout's root (on sys.path with
    ``python -m``), ``import fixtures`` must not find the rig's folder ahead
    of the index's package."""
    assert not (ROOT / "fixtures" / "__init__.py").exists()
    assert (ROOT / "fixtures" / "plugin.py").exists()


@pytest.fixture(scope="module")
def index_fixtures(tmp_path_factory) -> Path:
    """testing-cabal's ``fixtures`` from the package index, in a folder of its own."""
    target = tmp_path_factory.mktemp("index-fixtures")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--no-input", "--target", str(target), "fixtures"],
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0 or not (target / "fixtures" / "__init__.py").exists():
        message = f"cannot install 'fixtures' from the package index: {run.stderr.strip()[-500:]}"
        if os.environ.get("RIG_REQUIRE_INDEX") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def test_the_index_fixtures_and_the_rig_plugin_import_side_by_side(index_fixtures, tmp_path):
    probe = (
        "import fixtures, rig_fixtures.plugin, importlib.metadata as md\n"
        "assert fixtures.Fixture and fixtures.TempDir, 'the index fixtures API'\n"
        "print(fixtures.__file__)\n"
        "print(rig_fixtures.plugin.__file__)\n"
        "print(md.version('fixtures'))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(index_fixtures),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    index_file, plugin_file, version = run.stdout.split()
    assert Path(index_file).is_relative_to(index_fixtures)
    assert Path(plugin_file).resolve() == (ROOT / "fixtures" / "plugin.py").resolve()
    assert version


def test_pytest_runs_the_rig_plugin_and_the_index_fixtures_together(index_fixtures, tmp_path):
    """One pytest session: a test uses the index's ``fixtures`` (a TempDir)
    and the rig plugin's ``measure`` and ``reference`` fixtures."""
    (tmp_path / "test_both.py").write_text(
        "import os\n"
        "import fixtures\n"
        "import pytest\n\n"
        "@pytest.mark.requirement('OUT-2')\n"
        "def test_both(measure, reference):\n"
        "    with fixtures.TempDir() as tmp:\n"
        "        assert os.path.isdir(tmp.path)\n"
        "    assert measure('x', 1.0, units='s', low=0, high=2).passed\n"
        "    assert reference.value('outage_alert_period') == 180\n"
    )
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "--lab", str(ROOT / "lab.yaml"), "test_both.py"],
                         cwd=tmp_path, env=_env(index_fixtures), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
