"""Run records and safety evidence (DESIGN principle 6, REQUIREMENTS LAB-4).

Every ``rig run`` leaves a run folder ``runs/<UTC timestamp>-<id>/``::

    runs/20261123T093000Z-ab12cd/
        run.json          the run record (rewritten atomically while the run goes)
        journal.jsonl     every record event as it happened (survives a kill)
        junit.xml         for CI
        bus.jsonl         every message on rig/v1/# with lab and wall time
        lab.yaml          the lab file as used
        logs/             the run's own log and the lab's child processes' logs
        report.html       self-contained report (opens offline)
        MANIFEST.sha256   sha256sum of every other file

The parts, one module each:

* :mod:`.measurement`: ``measure(...)``/``step(...)``: values with units and
  limits, judged by the framework (OpenHTF-style);
* :mod:`.record`: the record as a fold over its journal; writer and loader;
* :mod:`.capture`: the bus traffic capture;
* :mod:`.inventory`: software versions, instrument identities, device versions;
* :mod:`.manifest`: write and verify ``MANIFEST.sha256``;
* :mod:`.catalogue`: the requirements catalogue shipped in ``rig/data``;
* :mod:`.timeline`, :mod:`.plots`, :mod:`.report`: the HTML report;
* :mod:`.safety_pack`: the PPMID enable-supply safety evidence pack;
* :mod:`.store`: the results store behind ``rig history``;
* :mod:`.seal`: close a run folder (report, manifest, store).

The pytest side (fixtures ``measure``, ``step``, ``evidence``; option
``--rig-run-dir``) is ``fixtures/evidence.py``.  See ``docs/evidence.md``.
"""

RECORD_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
CAPTURE_FILE = "bus.jsonl"
MANIFEST_FILE = "MANIFEST.sha256"
REPORT_FILE = "report.html"
JUNIT_FILE = "junit.xml"
LAB_FILE = "lab.yaml"
LOG_DIR = "logs"
