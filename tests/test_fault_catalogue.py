"""Every fault profile a lab can name does something: each is a field of its
device's flags (or a rule of the meter's supply logic), read once, and each
flag is in the catalogue (rig/faults.py) with what it breaks."""

from __future__ import annotations

from dataclasses import fields

import pytest

from rig.faults import BREAKS, FAULTS
from rig.supply import Rules


def _flags(kind: str) -> set[str]:
    from rig.sim import comms_hub, esme, ihd, ppmid

    if kind == "esme":
        return {f.name for f in fields(esme.Quirks)} | set(Rules.FAULTS)
    if kind == "gsme":
        return {"misses_mirror_sync"}
    module = {"comms_hub": comms_hub, "ppmid": ppmid, "ihd": ihd}[kind]
    return {f.name for f in fields(module.Quirks)}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_of_a_kind_is_one_of_its_flags_and_every_flag_is_catalogued(kind):
    assert set(FAULTS[kind]) == _flags(kind)


def test_every_fault_says_what_it_breaks():
    names = {f for kind in FAULTS.values() for f in kind}
    assert names == set(BREAKS)
    assert all(BREAKS[f] for f in names)
