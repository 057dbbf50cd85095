"""``MANIFEST.sha256``: the SHA-256 of every file of a run folder.

The format is GNU ``sha256sum``'s, so a run checks without the rig too::

    cd runs/20261123T093000Z-ab12cd && sha256sum -c MANIFEST.sha256

``rig verify RUN`` does the same and also names files added since::

    $ rig verify runs/20261123T093000Z-ab12cd
    changed: report.html
    missing: bus.jsonl
    extra:   notes.txt

The hash of the manifest itself (:func:`run_hash`) identifies the whole run:
the safety pack quotes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from . import MANIFEST_FILE

_CHUNK = 1 << 20


class ManifestError(Exception):
    """A manifest that cannot be read; the message names the file and line."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def run_files(run_dir: Path) -> list[str]:
    """Every regular file under ``run_dir`` (POSIX relative paths, sorted),
    the manifest itself excepted."""
    run_dir = Path(run_dir)
    out = []
    for p in run_dir.rglob("*"):
        if p.is_file():
            rel = p.relative_to(run_dir).as_posix()
            if rel != MANIFEST_FILE:
                out.append(rel)
    return sorted(out)


def _escape(name: str) -> tuple[str, str]:
    if "\\" in name or "\n" in name or "\r" in name:
        return "\\", name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "", name


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def write_manifest(run_dir: Path) -> Path:
    """Hash every file of the run folder into ``MANIFEST.sha256``; returns its path."""
    run_dir = Path(run_dir)
    lines = []
    for rel in run_files(run_dir):
        prefix, name = _escape(rel)
        lines.append(f"{prefix}{sha256_file(run_dir / rel)}  {name}\n")
    path = run_dir / MANIFEST_FILE
    tmp = run_dir / f".{MANIFEST_FILE}.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(path: Path) -> dict[str, str]:
    """{relative path: sha256} from a sha256sum-format file."""
    entries: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        escaped = raw.startswith("\\")
        line = raw[1:] if escaped else raw
        digest, sep, name = line.partition(" ")
        if len(digest) != 64 or not sep or not name or name[0] not in " *":
            raise ManifestError(f"{path}:{lineno}: not a sha256sum line: {raw[:80]!r}")
        try:
            int(digest, 16)
        except ValueError:
            raise ManifestError(f"{path}:{lineno}: not a SHA-256 digest: {digest!r}") from None
        name = name[1:]
        entries[_unescape(name) if escaped else name] = digest.lower()
    return entries


@dataclass
class Verification:
    """The outcome of checking a run folder against its manifest."""

    run_dir: Path
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def lines(self) -> list[str]:
        """One line per problem, naming the file."""
        return ([f"changed: {n}" for n in self.changed] + [f"missing: {n}" for n in self.missing]
                + [f"extra:   {n}" for n in self.extra])


def verify(run_dir: Path) -> Verification:
    """Check every file against ``MANIFEST.sha256``.  Raises
    :class:`ManifestError` when the folder has no (readable) manifest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ManifestError(f"{run_dir}: no such run folder")
    path = run_dir / MANIFEST_FILE
    if not path.exists():
        raise ManifestError(f"{path}: missing: the run was never sealed (killed, or still running?)")
    expected = read_manifest(path)
    present = set(run_files(run_dir))
    v = Verification(run_dir)
    for name, digest in sorted(expected.items()):
        if name not in present:
            v.missing.append(name)
            continue
        v.checked += 1
        if sha256_file(run_dir / name) != digest:
            v.changed.append(name)
    v.extra = sorted(present - set(expected))
    return v


def run_hash(run_dir: Path) -> str:
    """SHA-256 of the run's manifest: one hash that stands for every file."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        raise ManifestError(f"{path}: missing: seal the run first")
    return sha256_file(path)
