"""What ran, on what: software versions, the lab file, instrument identities
and device versions, for the run record.

Identities come from the bus, never from lab.yaml alone: an instrument's
retained state ``rig/v1/<bench>/instrument/<name>/state`` carries
``identity`` (its ``*IDN?`` answer) and a device's retained presence
``rig/v1/<bench>/device/<name>/presence`` carries ``version`` (firmware of a
real meter, twin version of a simulated one).  lab.yaml supplies what each
part is meant to be (kind, driver, address, EUI-64, backend, fault profiles).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..contract import ROOT
from ..version import __version__

#: distributions whose versions go into every record
KEY_PACKAGES = ("smartmeter-rig", "paho-mqtt", "amqtt", "pydantic", "pyyaml", "pyvisa", "pyvisa-py", "pyserial",
                "gpiozero", "zigpy", "pytest", "jinja2", "matplotlib", "typer")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def software() -> dict[str, Any]:
    """rig, Python, platform, key packages, and the rig's git commit when it
    runs from a checkout (``dirty`` if it has uncommitted changes)."""
    packages: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    src = Path(__file__).resolve().parents[2]
    git = None
    commit = _git(["rev-parse", "HEAD"], src)
    if commit:
        status = _git(["status", "--porcelain", "--untracked-files=no"], src)
        git = {"commit": commit, "dirty": bool(status)}
    return {"rig": __version__, "python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "git": git, "packages": packages}


SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


def suites_section(suites_dir: Path = SUITES_DIR) -> dict[str, Any]:
    """The SHA-256 of each of the rig's suite files (``rig/suites/*.py``) and
    of them all: a self-test vouches for the suites it ran, and the safety
    pack compares these with a nightly run's to tell whether it still does."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(suites_dir).glob("*.py"))}
    total = hashlib.sha256("".join(f"{h}  {n}\n" for n, h in files.items()).encode()).hexdigest()
    return {"files": files, "sha256": total}


def lab_section(lab_path: str | Path | None, cfg: Any | None, error: str | None = None) -> dict[str, Any]:
    """The lab file as used: its text, its hash, the resolved model."""
    text = None
    if lab_path is not None and Path(lab_path).is_file():
        text = Path(lab_path).read_text(encoding="utf-8", errors="replace")
    out: dict[str, Any] = {
        "source": str(Path(lab_path).resolve()) if lab_path else None,
        "text": text,
        "sha256": hashlib.sha256(text.encode()).hexdigest() if text is not None else None,
        "name": None, "model": None, "faults": {}, "error": error,
    }
    if cfg is not None:
        out["name"] = cfg.lab.name
        out["model"] = json.loads(cfg.model_dump_json())
        out["faults"] = faults_of(cfg)
    return out


def faults_of(cfg: Any) -> dict[str, list[str]]:
    """``{"bench-1/esme": ["skips_arm"]}``: the fault profiles a lab gives its devices."""
    return {f"{b}/{d}": list(dev.faults) for b, bench in cfg.benches.items()
            for d, dev in bench.devices.items() if dev.faults}


def configured_hardware(cfg: Any, bench: str | list[str] | None) -> dict[str, dict[str, Any]]:
    """The instruments and devices lab.yaml gives the bench(es) (one name, a
    list, or None for every bench), identity unknown yet."""
    instruments: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    wanted = None if bench is None else ({bench} if isinstance(bench, str) else set(bench))
    for bname, b in cfg.benches.items():
        if wanted is not None and bname not in wanted:
            continue
        for name, inst in b.instruments.items():
            instruments[f"{bname}/{name}"] = {"bench": bname, "name": name, "kind": inst.kind,
                                              "driver": inst.driver, "address": inst.address, "identity": None}
        for name, dev in b.devices.items():
            devices[f"{bname}/{name}"] = {"bench": bname, "name": name, "kind": dev.kind, "id": dev.id,
                                          "backend": dev.backend, "firmware": dev.firmware,
                                          "faults": list(dev.faults), "version": None}
    return {"instruments": instruments, "devices": devices}


def from_bus(topic: str, payload: Any) -> dict[str, dict[str, Any]] | None:
    """The hardware facts one bus message carries (None when it carries none).

    >>> from_bus("rig/v1/bench-1/instrument/analyser/state", {"identity": "YOKOGAWA,WT310,..."})
    {'instruments': {'bench-1/analyser': {'identity': 'YOKOGAWA,WT310,...'}}}
    """
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != ROOT or not isinstance(payload, dict):
        return None
    _root, _v, bench, kind, name, channel = parts
    key = f"{bench}/{name}"
    if kind == "instrument" and channel == "state" and payload.get("identity"):
        info = {"identity": payload["identity"]}
        if payload.get("address"):
            info["resource"] = payload["address"]
        return {"instruments": {key: info}}
    if kind == "device" and channel in ("presence", "state"):
        info = {}
        for field in ("version", "firmware"):
            if payload.get(field):
                info["version" if field == "version" else "firmware_reported"] = payload[field]
        if info:
            return {"devices": {key: info}}
    return None


def fingerprints(rec: dict[str, Any]) -> tuple[str, str]:
    """(software, firmware) fingerprints of a record: two runs with equal
    fingerprints ran the same code on the same firmware and fault profiles,
    so a test that passes in one and fails in the other is flaky."""
    sw = rec.get("software") or {}
    software_key = {"rig": sw.get("rig"), "git": (sw.get("git") or {}).get("commit"), "python": sw.get("python"),
                    "packages": sw.get("packages")}
    hw = rec.get("hardware") or {}
    firmware_key = {
        "devices": {k: [v.get("version"), v.get("firmware"), v.get("firmware_reported"), sorted(v.get("faults") or [])]
                    for k, v in sorted((hw.get("devices") or {}).items())},
        "instruments": {k: v.get("identity") for k, v in sorted((hw.get("instruments") or {}).items())},
        "faults": (rec.get("lab") or {}).get("faults") or {},
    }

    def h(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return h(software_key), h(firmware_key)
