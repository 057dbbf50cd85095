"""rig run's failure summary: one line per failed test, with what it cites."""

import io
import json

from rich.console import Console

from rig.runner import explain_deviations, explain_failures


def test_failure_lines_name_the_test_its_requirements_and_property(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"tests": [
        {"name": "test_outage_keeps_the_supply_off[armed]", "verdict": "failed", "requirements": ["SUP-2"],
         "safety_properties": [5], "failure": {"message": "load side live [230 V]\nmore"}},
        {"name": "test_fine", "verdict": "passed"},
    ]}))
    out = io.StringIO()
    explain_failures(tmp_path, Console(file=out, width=300))
    assert out.getvalue().strip() == ("FAILED test_outage_keeps_the_supply_off[armed] [SUP-2; safety property 5] "
                                      "load side live [230 V]")


def test_the_summary_names_the_labs_deviations(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"tests": [], "deviations": [
        {"key": "outage_alert_period", "requirement": "OUT-2", "reference": 180.0, "value": 170.0, "units": "s"}]}))
    out = io.StringIO()
    explain_deviations(tmp_path, Console(file=out, width=300))
    assert out.getvalue().strip() == ("lab deviations from the requirement values: outage_alert_period = 170.0 s "
                                      "(OUT-2: requirement value 180.0 s)")
    (tmp_path / "run.json").write_text(json.dumps({"tests": [], "deviations": []}))
    out = io.StringIO()
    explain_deviations(tmp_path, Console(file=out, width=300))
    assert out.getvalue() == ""
