"""The requirements catalogue shipped in the package matches REQUIREMENTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.evidence.catalogue import DATA, Catalogue, parse_markdown, render_yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "REQUIREMENTS.md"


def test_catalogue_has_every_group_and_the_six_safety_properties():
    cat = Catalogue.load()
    groups = {r.id.split("-")[0] for r in cat}
    assert {"OUT", "SUP", "HAN", "DATA", "SEC", "LAB"} <= groups
    assert cat["OUT-2"].source == "002:1671-1675" and "3 minutes" in cat["OUT-2"].text
    assert sorted(cat.safety_properties) == [1, 2, 3, 4, 5, 6]
    assert "armed" in cat.safety_properties[1]
    assert cat.get("OUT-99") is None


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/REQUIREMENTS.md is not beside this checkout")
def test_shipped_copy_is_up_to_date_with_requirements_md():
    expected = render_yaml(parse_markdown(SHARED.read_text(encoding="utf-8")), "REQUIREMENTS.md")
    assert DATA.read_text(encoding="utf-8") == expected, "run: python docs/gen_requirements.py"


def test_parser_reads_tables_headings_and_properties():
    text = """## OUT: outages

| id | requirement | source |
|---|---|---|
| OUT-1 | Logs every loss. | 002:1 |

Safety properties the rig checks:
1. First property.
2. Second property.

## LAB: own

| id | requirement |
|---|---|
| LAB-1 | Safe state. |
"""
    data = parse_markdown(text)
    assert data["requirements"] == [
        {"id": "OUT-1", "group": "OUT: outages", "text": "Logs every loss.", "source": "002:1"},
        {"id": "LAB-1", "group": "LAB: own", "text": "Safe state.", "source": ""}]
    assert [p["number"] for p in data["safety_properties"]] == [1, 2]
