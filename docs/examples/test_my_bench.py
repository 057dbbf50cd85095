"""Two tests a lab engineer writes with the rig's pytest plugin alone.

Run them against the default simulated lab (the plugin brings it up):

    pytest docs/examples/test_my_bench.py --lab lab.yaml

or against a lab that is already up (`rig up`), or a real bench:

    pytest docs/examples/test_my_bench.py --lab lab.yaml --rig-broker mqtt://127.0.0.1:18830

Fixtures name the parts of the bench; every one is returned to its safe
state after the test, pass or fail.  Timeouts are lab seconds.
"""

import pytest


@pytest.mark.requirement("OUT-1")
def test_the_meter_logs_a_two_second_interruption(esme, mains, clock, measure):
    mains.relay.wait_switchable()      # the relay's minimum switching interval (LAB-2)
    t0 = clock.now()
    mains.off()
    esme.wait_state(lambda s: not s["powered"], timeout=10, what="meter sees the supply gone")
    mains.relay.wait_switchable()
    mains.on()
    esme.wait_state(lambda s: s["powered"], timeout=30, what="meter powered again")
    log = esme.event_log(since=t0)
    lost = [e for e in log if e["event"] == "supply_lost"]
    back = [e for e in log if e["event"] == "supply_restored"]
    assert lost and back, f"meter log since the interruption: {[e['event'] for e in log]}"
    measure("outage.logged_interruption", back[0]["ts"] - lost[0]["ts"], "s", low=0, high=10,
            requirement="OUT-1")


@pytest.mark.requirement("SUP-2")
def test_my_ppmid_enables_an_armed_supply(esme, ppmid, dcc, load, analyser):
    load.draw(amps=8)
    dcc.disable()
    analyser.wait_for(lambda r: r.current < 0.5, timeout=30)
    dcc.arm()
    esme.wait_supply("armed")
    ppmid.enable()
    reading = analyser.wait_for(lambda r: r.current > 7, timeout=30)
    assert reading.voltage > 200
