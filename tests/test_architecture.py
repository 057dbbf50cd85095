"""The shape of the code, checked from its source (docs/architecture.md).

The import graph of ``rig``, ``instruments`` and the pytest plugin
(``rig_fixtures``, folder ``fixtures/``) is read with :mod:`ast`: every
import counts, at module level, inside a function or under
``TYPE_CHECKING`` (a cycle there is still two modules that cannot be
understood one without the other).

* no import cycles;
* the simulation (``rig.sim``, ``instruments.sim``) is imported only by
  itself and by the launcher that starts it (``rig.launch``): the real
  adapters, the coverage study, the client API, the agent and the plugin
  stand on their own, as they do on a real bench;
* the client side (rig scripts, the suites, the plugin) imports neither the
  agent nor the instrument drivers: a script talks to the bench over the bus
  only.

``ROOT`` is the tree checked; ``RIG_ARCH_ROOT`` points the test at another
checkout (to show it failing on one that breaks the rules).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT as REPO

ROOT = Path(os.environ.get("RIG_ARCH_ROOT", REPO))
#: import package -> source folder
PACKAGES = {"rig": "rig", "instruments": "instruments", "rig_fixtures": "fixtures"}
SIMULATION = ("rig.sim", "instruments.sim")
#: the one module outside the simulation that may import it: it starts the simulated parts (`rig sim`)
LAUNCHER = "rig.launch"
CLIENT = ("rig.lab", "rig.devices", "instruments.handles", "rig.suites", "rig_fixtures")
AGENT_SIDE = ("rig.agent", "rig.relay", "instruments.service", "instruments.ac_source", "instruments.load_bank",
              "instruments.power_analyser", "instruments.attenuator", "instruments.optical_probe", "instruments.visa")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module of the three packages: name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for package, folder in PACKAGES.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([package, *parts])] = (path, is_package)
        found.setdefault(package, (base, True))   # a folder without __init__ is still its package
    return found


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports(root: Path = ROOT) -> Iterator[Import]:
    """Every import between the modules of the tree."""
    modules = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for module, (path, is_package) in modules.items():
        if path.is_dir():
            continue
        package = module if is_package else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import mod` imports the module; `from mod import name`, the module
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                imported = resolve(target)
                if imported is not None and imported != module:
                    yield Import(module, imported, node.lineno)


def cycles(edges: list[Import]) -> list[list[str]]:
    """The import cycles (strongly connected components of two or more modules), each as one cycle path."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    def path(component: set[str]) -> list[str]:
        start = min(component)
        seen, trail = {start: None}, [start]
        while trail:                               # breadth-first back to the start
            nxt = []
            for v in trail:
                for w in sorted(graph[v] & component):
                    if w == start:
                        out = [v]
                        while seen[out[-1]] is not None:
                            out.append(seen[out[-1]])
                        return list(reversed(out)) + [start]
                    if w not in seen:
                        seen[w] = v
                        nxt.append(w)
            trail = nxt
        return sorted(component)

    return [path(c) for c in components]


EDGES = list(imports())


def test_the_graph_is_read():
    """The reader sees the tree (a broken reader would pass every rule)."""
    names = {e.importer for e in EDGES}
    assert {"rig.lab", "rig.agent", "instruments.service", "rig_fixtures.plugin", "rig.sim.world"} <= names
    assert "rig.bus" in {e.imported for e in EDGES if e.importer == "rig.lab"}


def test_no_import_cycles():
    found = cycles(EDGES)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_only_the_launcher_imports_the_simulation():
    wrong = sorted({f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
                    if _within(e.imported, SIMULATION) and not _within(e.importer, SIMULATION)
                    and e.importer != LAUNCHER})
    assert not wrong, "outside the simulation packages:\n" + "\n".join(wrong)


def test_the_client_side_imports_neither_the_agent_nor_a_driver():
    wrong = sorted({f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
                    if _within(e.importer, CLIENT) and _within(e.imported, AGENT_SIDE)})
    assert not wrong, "a rig script must run against a real bench over the bus only:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", ["rig.protocol.zcl", "rig.propagation"])
def test_protocol_and_radio_model_are_shared_not_simulated(module):
    """The twins and the real side use the same definitions."""
    users = {e.importer for e in EDGES if e.imported == module}
    assert any(_within(u, SIMULATION) for u in users), users
    assert any(not _within(u, SIMULATION) for u in users), users
