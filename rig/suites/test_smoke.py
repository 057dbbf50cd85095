"""Smoke: the bench answers, its mains relay switches and the agent reports it."""

import pytest


@pytest.mark.requirement("LAB-1", "LAB-3")
def test_mains_relay_switches_and_agent_confirms(bench):
    mains = bench.relay("mains")
    assert not mains.is_on, "the bench must start in its safe state"
    bench.wait(lambda: ((bench.status or {}).get("lease") or {}).get("holder") == bench.lab.holder, 10,
               "the agent reports the lease held by this run")
    mains.on()
    assert mains.state["state"] == "on" and mains.state["reason"].startswith("command")
    mains.wait_switchable()
    mains.off()
    assert mains.state["state"] == "off"
