"""Seal a run folder: build its report, hash every file, record the final
status in the results store.

Call it once the run has stopped writing (for ``rig run``: after the lab is
stopped, so the children's logs are complete)::

    from rig.evidence.seal import seal_run
    sealed = seal_run(run_dir, store_url=cfg.lab.results.store)
    print(sealed.manifest_sha256)

After this, ``rig verify RUN`` checks the folder; any later change to any
file shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import REPORT_FILE
from .manifest import run_hash, write_manifest
from .record import load_run

log = logging.getLogger(__name__)


@dataclass
class Sealed:
    run_dir: Path
    record: dict[str, Any]
    manifest_sha256: str
    report: Path | None
    store_error: str | None = None
    report_error: str | None = None


def seal_run(run_dir: str | Path, store_url: str | None = None, report: bool = True) -> Sealed:
    """Report (``report.html``), manifest (``MANIFEST.sha256``), store update.

    ``store_url`` defaults to the store the run recorded itself in.  A store
    that cannot be reached is logged and named in the result; the folder is
    sealed regardless (``rig history`` imports it later)."""
    run_dir = Path(run_dir)
    rec = load_run(run_dir)
    report_path = None
    report_error = None
    if report:
        from .report import write_report

        try:
            report_path = write_report(run_dir, rec, run_dir / REPORT_FILE)
        except Exception as exc:  # noqa: BLE001 - a broken report must not leave the run unsealed
            report_error = f"{type(exc).__name__}: {exc}"
            log.exception("report for %s not written (the run is sealed without it; `rig report` retries)",
                          run_dir.name)
    write_manifest(run_dir)
    digest = run_hash(run_dir)
    url = store_url or rec.get("store_url")
    store_error = None
    if url:
        from .store import ResultsStore, StoreError

        try:
            with ResultsStore.open(url) as store:
                if not store.import_run(rec, run_dir.resolve(), digest):
                    store.finish_run(rec, digest)
        except StoreError as exc:
            store_error = str(exc)
            log.warning("run %s sealed but not stored: %s", run_dir.name, exc)
    return Sealed(run_dir, rec, digest, report_path, store_error, report_error)
