"""docs/asyncapi.yaml says what the code does: the envelopes' fields and the
error codes are the same in both, so the document cannot drift silently."""

import typing
from pathlib import Path

import pytest
import yaml

from rig import contract

from conftest import ROOT

SPEC = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())


def test_is_asyncapi_3():
    assert SPEC["asyncapi"].startswith("3.")
    for name, channel in SPEC["channels"].items():
        assert channel["address"].startswith("rig/v1/"), name


def test_error_codes_match_the_code():
    doc = SPEC["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert set(doc) == set(typing.get_args(contract.ErrorCode))


@pytest.mark.parametrize("message, model", [
    ("Command", contract.Command),
    ("Reply", contract.Reply),
    ("Presence", contract.Presence),
    ("Heartbeat", contract.Heartbeat),
])
def test_envelope_fields_match_the_models(message, model):
    payload = SPEC["components"]["messages"][message]["payload"]
    assert set(payload["properties"]) == set(model.model_fields)
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert set(payload.get("required", [])) == required


def test_topics_in_the_document_are_the_topics_the_code_uses():
    node = contract.Node("bench-1", "relay", "mains")
    channels = SPEC["channels"]
    assert channels["state"]["address"].format(bench="bench-1", kind="relay", name="mains") == node.state
    assert channels["command"]["address"].format(bench="bench-1", kind="relay", name="mains", op="set") == node.cmd("set")
    assert channels["heartbeat"]["address"].format(bench="bench-1") == contract.agent_node("bench-1").heartbeat
    assert channels["clock"]["address"] == contract.LAB_CLOCK
    assert channels["reply"]["address"].format(client="c1") == contract.reply_topic("c1")


def test_the_architecture_documents_name_modules_that_exist():
    """docs/architecture.md and docs/extending.md point at modules and files:
    each must still be there."""
    import re

    for doc in ("architecture.md", "extending.md"):
        text = (ROOT / "docs" / doc).read_text()
        for path in set(re.findall(r"`((?:rig|instruments|fixtures|tests)/[\w/]+\.py)`", text)):
            assert (ROOT / path).exists(), f"docs/{doc} names {path}"
        for module in set(re.findall(r"`((?:rig|instruments)(?:\.\w+)+)`", text)):
            head = Path(*module.split(".")[:2])          # rig.sim.world, rig.supply.Rules: rig/sim, rig/supply.py
            assert (ROOT / head).is_dir() or (ROOT / head).with_suffix(".py").exists(), f"docs/{doc} names {module}"
