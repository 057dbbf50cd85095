"""Which head-end implementations exist: the two the rig ships and any an
installed package plugs in as an entry point of group ``rig.headends``.

A plugin names a class taking ``(lab, bench, config)`` (a
:class:`rig.lab.Lab`, the bench's name and its lab.yaml ``head_end``
section, whose ``options`` are the plugin's own) and implementing
:class:`rig.headend.HeadEnd`::

    # the plugin's pyproject.toml
    [project.entry-points."rig.headends"]
    acme = "acme_rig.headend:AcmeHeadEnd"

    # lab.yaml
    head_end: {kind: acme, options: {url: "https://hes.lab.example"}}

Only names are read here (no import of a plugin), so validating a lab file
stays cheap; :func:`load` imports the one a lab uses.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

GROUP = "rig.headends"
BUILTIN = {
    "simulated": "rig.headend.simulated:SimulatedHeadEnd",
    "http": "rig.headend.http:HttpHeadEnd",
}


class HeadEndError(RuntimeError):
    """A head end cannot be made or reached; the message says which and why."""


def installed() -> dict[str, metadata.EntryPoint]:
    """The head ends installed packages plug in, by name (builtins excluded)."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP) if ep.name not in BUILTIN}


def load(kind: str) -> type:
    """The class implementing head-end ``kind``."""
    if kind in BUILTIN:
        import importlib

        module, cls = BUILTIN[kind].split(":")
        return getattr(importlib.import_module(module), cls)
    ep = installed().get(kind)
    if ep is None:
        raise HeadEndError(f"no head end '{kind}': known {', '.join([*BUILTIN, *installed()])}")
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
        raise HeadEndError(f"head end '{kind}' ({ep.value}) could not be loaded: {type(exc).__name__}: {exc}") \
            from None


def make(lab: Any, bench: str, cfg: Any) -> Any:
    """The head end of ``bench`` as lab.yaml declares it."""
    return load(cfg.kind)(lab, bench, cfg)
