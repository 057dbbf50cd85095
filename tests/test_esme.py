"""The simulated ESME through the bus (rig.lab / rig.devices), with the twins
running in-process on tests/labs/devices.yaml.  Each fault profile that
breaks a check here is shown to make that check fail."""

from __future__ import annotations

import pytest

from rig.bus import CommandError
from rig.contract import Node

pytestmark = pytest.mark.timeout(120)


def _armed(b) -> None:
    b.dcc.disable()
    b.dcc.arm()
    b.esme.wait_supply("armed")


def _load_on(sim, amps: float = 10.0) -> None:
    sim.physics.set_load(on=True, mode="current", setpoint=amps)


# ----------------------------------------------------------------------------- state on the bus
def test_every_device_publishes_state_with_han_links(device_bench):
    sim = device_bench()
    b = sim.bench
    assert b.esme.wait_state(lambda s: s.get("supply") == "enabled")["contactor"] == "closed"
    for name in ("esme", "gsme", "comms_hub", "ppmid", "ihd"):
        d = b.device(name)
        d.wait_state(lambda s: s.get("han") and all(v.get("up") for v in s["han"].values()), 30, "HAN links up")
        for band, link in d.han.items():
            assert band in ("2.4GHz", "868MHz") and set(link) >= {"rssi", "lqi", "per", "up"}
        assert d.online and d.state["eui64"] == sim.cfg.bench("bench-1").devices[name].id
    assert set(b.ppmid.han) == {"2.4GHz", "868MHz"} and set(b.ihd.han) == {"2.4GHz"}


# ----------------------------------------------------------------------------- SUP-1, SUP-2
@pytest.mark.requirement("SUP-1", "SUP-2")
def test_disable_arm_then_only_a_local_action_closes(device_bench):
    sim = device_bench()
    b = sim.bench
    _load_on(sim)
    assert sim.physics.read_load_side().current == pytest.approx(10.0)
    assert b.dcc.disable()["supply"] == "disabled"
    assert sim.physics.read_load_side().current == 0.0
    assert b.dcc.arm()["supply"] == "armed"
    t0 = b.clock.now()
    with pytest.raises(CommandError) as exc:
        b.dcc.enable()
    assert exc.value.code == "refused" and exc.value.error.requirement == "SUP-2"
    assert "armed" in exc.value.reason
    assert sim.physics.read_load_side().current == 0.0 and b.esme.supply == "armed"
    refused = b.esme.event_log(since=t0, event="remote_enable_refused")
    assert refused and refused[0]["role"] == "supplier"
    out = b.ppmid.enable()
    assert out["delivered"] and out["accepted"] and out["supply"] == "enabled"
    b.esme.wait_supply("enabled")
    assert sim.physics.read_load_side().current == pytest.approx(10.0)
    b.dcc.wait_alert("0x8154", since=t0)


@pytest.mark.requirement("SUP-1")
def test_a_remote_enable_of_a_disabled_supply_arms_it_at_most(device_bench):
    sim = device_bench()
    sim.bench.dcc.disable()
    assert sim.bench.dcc.enable()["supply"] == "armed"     # a person must still enable it locally
    assert not sim.physics.contactor


def test_a_meter_declared_to_refuse_remote_enable_refuses_it(device_bench):
    sim = device_bench(settings={"esme": {"remote_enable": "refused"}})
    sim.bench.dcc.disable()
    with pytest.raises(CommandError, match="refuses a remote enable"):
        sim.bench.dcc.enable()
    assert not sim.physics.contactor


@pytest.mark.safety
def test_a_meter_declared_to_close_on_remote_enable_does_so(device_bench):
    """The declaration `remote_enable: closes` makes the twin what the lab says
    its meters are (the safety suite then reports the deviation)."""
    sim = device_bench(settings={"esme": {"remote_enable": "closes"}})
    sim.bench.dcc.disable()
    assert sim.bench.dcc.enable()["supply"] == "enabled" and sim.physics.contactor


@pytest.mark.safety
def test_fault_closes_on_remote_enable_when_armed_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["closes_on_remote_enable_when_armed"]})
    _armed(sim.bench)
    sim.bench.dcc.enable()                        # the faulty meter does not refuse
    assert sim.physics.contactor                  # and a remote command closed the contactor


@pytest.mark.requirement("SUP-7")
def test_meter_button_needs_a_press_then_a_long_enough_hold(device_bench):
    sim = device_bench()
    b = sim.bench
    _armed(b)
    assert not b.esme.hold("enable", 3.0)["actioned"]            # hold alone: no prompt
    b.esme.press("enable")
    short = b.esme.hold("enable", 1.0)
    assert not short["actioned"] and "less than" in short["reason"]
    assert b.esme.supply == "armed" and not sim.physics.contactor
    assert b.esme.local_enable()["actioned"]
    assert b.esme.wait_supply("enabled") and sim.physics.contactor


@pytest.mark.safety
def test_a_local_action_never_enables_a_disabled_supply(device_bench):
    sim = device_bench()
    sim.bench.dcc.disable()
    assert not sim.bench.ppmid.enable()["accepted"]
    assert not sim.bench.esme.local_enable()["actioned"]
    assert sim.bench.esme.supply == "disabled" and not sim.physics.contactor


@pytest.mark.safety
def test_fault_skips_arm_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["skips_arm"]})
    sim.bench.dcc.disable()
    assert sim.bench.ppmid.enable()["accepted"]
    assert sim.physics.contactor                  # disabled -> enabled without armed


# ----------------------------------------------------------------------------- SUP-6
@pytest.mark.requirement("SUP-6")
def test_one_party_cannot_lift_anothers_disablement(device_bench):
    """Seed 002:1903-1905: the supplier disabled for debt, the network operator
    for the network; the operator lifting its own leaves the supplier's."""
    sim = device_bench()
    b = sim.bench
    b.dcc.disable(role="supplier")
    b.dcc.disable(role="dno")
    assert b.dcc.arm(role="dno")["supply"] == "disabled"                 # the dno's lifted, the supplier's kept
    assert b.esme.wait_state(lambda s: s["disabled_by"] == ["supplier"])["supply"] == "disabled"
    with pytest.raises(CommandError) as exc:                               # the dno holds nothing now
        b.dcc.enable(role="dno")
    assert exc.value.error.requirement == "SUP-6" and b.esme.state["disabled_by"] == ["supplier"]
    assert b.dcc.arm(role="supplier")["supply"] == "armed"
    sequence = [e["event"] for e in b.esme.event_log()
                if e["event"].startswith(("supply", "remote_enable", "remote_arm", "disablement"))]
    assert sequence == ["supply_disabled", "supply_disable", "disablement_lifted", "remote_enable_refused",
                        "supply_armed"]


@pytest.mark.safety
def test_fault_dno_overridden_by_supplier_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["dno_overridden_by_supplier"]})
    sim.bench.dcc.disable(role="dno")
    assert sim.bench.dcc.arm(role="supplier")["supply"] == "armed"


@pytest.mark.safety
def test_fault_supplier_overridden_by_dno_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["supplier_overridden_by_dno"]})
    sim.bench.dcc.disable(role="supplier")
    sim.bench.dcc.disable(role="dno")
    assert sim.bench.dcc.arm(role="dno")["supply"] == "armed"     # the supplier's debt disablement went with it


# ----------------------------------------------------------------------------- SUP-10, SEC
@pytest.mark.requirement("SUP-10")
def test_a_command_for_other_premises_is_refused(device_bench):
    sim = device_bench()
    t0 = sim.bench.clock.now()
    with pytest.raises(CommandError) as exc:
        sim.bench.dcc.disable(premises="MPAN-9999999999999")
    assert exc.value.error.requirement == "SUP-10"
    assert sim.physics.contactor
    sim.bench.dcc.wait_alert("0x8F53", since=t0)


def test_fault_ignores_premises_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["ignores_premises"]})
    sim.bench.dcc.disable(premises="MPAN-9999999999999")
    assert not sim.physics.contactor


@pytest.mark.requirement("SEC-1", "SEC-4")
def test_forged_and_unauthorised_commands_are_refused_and_alerted(device_bench):
    sim = device_bench()
    b = sim.bench
    t0 = b.clock.now()
    with pytest.raises(CommandError, match="signature") as exc:
        b.dcc.disable(authentic=False)
    assert exc.value.error.requirement == "SEC-1"
    b.dcc.wait_alert("0x8F3D", since=t0)
    with pytest.raises(CommandError, match="may not"):
        b.dcc.service_request("esme", "add_credit", "dno", amount=5)
    b.dcc.wait_alert("0x8F30", since=t0)
    assert sim.physics.contactor


@pytest.mark.requirement("HAN-6")
def test_a_cad_may_read_but_not_switch(device_bench):
    sim = device_bench()
    b = sim.bench
    assert b.dcc.read(role="cad")["supply"] == "enabled"
    b.dcc.disable()
    t0 = b.clock.now()
    with pytest.raises(CommandError) as exc:
        b.dcc.enable(role="cad")
    assert exc.value.error.requirement == "HAN-6"
    assert not sim.physics.contactor
    b.dcc.wait_alert("0x8F3E", since=t0)


@pytest.mark.safety
def test_fault_accepts_cad_command_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["accepts_cad_command"]})
    sim.bench.dcc.disable()
    sim.bench.dcc.enable(role="cad")
    assert sim.physics.contactor                  # a CAD closed the contactor


# ----------------------------------------------------------------------------- property 4
def _replay_enable(b):
    return b.request(Node(b.name, "han", "medium"), "replay",
                     {"src": "ppmid", "dst": "esme", "cluster": 0x0705, "command": 0x01})


def _refused_enable_then_armed(b) -> None:
    """A genuine PPMID enable the meter refuses (not armed: its frame counter is
    spent), then the supplier arms."""
    b.dcc.disable()
    assert not b.ppmid.enable()["accepted"]
    b.dcc.arm()
    b.esme.wait_supply("armed")


@pytest.mark.safety
def test_a_replayed_ppmid_enable_is_dropped_unanswered(device_bench):
    sim = device_bench()
    b = sim.bench
    _refused_enable_then_armed(b)
    t0 = b.clock.now()
    assert b.han_tap.replay("ppmid", "esme", cluster=0x0705, command=0x01)["replayed"]
    with pytest.raises(TimeoutError):
        b.esme.wait_supply("enabled", timeout=10)
    assert not sim.physics.contactor
    assert not b.esme.event_log(since=t0, event="ppmid_enable")
    assert not [f for f in b.han_tap.journal(since=t0, src="esme", dst="ppmid", cluster=0x0705)
                if f["to_client"] and not f["general"]]


@pytest.mark.safety
def test_fault_accepts_replayed_ppmid_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["accepts_replayed_ppmid"]})
    b = sim.bench
    _refused_enable_then_armed(b)
    t0 = b.clock.now()
    b.han_tap.replay("ppmid", "esme", cluster=0x0705, command=0x01)
    answered = b.han_tap.journal(since=t0, src="esme", dst="ppmid", cluster=0x0705)
    b.esme.wait_event("log", lambda e: e.get("event") == "ppmid_enable" and e.get("replayed"), 10, since=t0)
    assert answered or b.han_tap.journal(since=t0, src="esme", dst="ppmid", cluster=0x0705)


@pytest.mark.safety
def test_fault_replay_window_resets_on_reboot_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["replay_window_resets_on_reboot"]})
    b = sim.bench
    b.dcc.disable()
    assert not b.ppmid.enable()["accepted"]
    b.han_tap.delay("ppmid", "esme", 10.0)             # keep the PPMID quiet: the replay is the first it hears
    sim.physics.set_mains_relay(False)                 # the meter reboots, its counters in RAM gone
    b.esme.wait_state(lambda s: not s["powered"], 10)
    sim.physics.set_mains_relay(True)
    b.esme.wait_state(lambda s: s["powered"], 10)
    t0 = b.clock.now()
    b.han_tap.replay("ppmid", "esme", cluster=0x0705, command=0x01)
    b.esme.wait_event("log", lambda e: e.get("event") == "ppmid_enable" and e.get("replayed"), 10, since=t0)


@pytest.mark.safety
@pytest.mark.parametrize("faults,closes", [({}, False), ({"esme": ["accepts_forged_frames"]}, True)])
def test_a_forged_ppmid_enable_is_dropped_and_the_fault_that_accepts_it_is_caught(device_bench, faults, closes):
    sim = device_bench(faults=faults)
    b = sim.bench
    _refused_enable_then_armed(b)
    out = b.han_tap.forge("ppmid", "esme", cluster=0x0705, command=0x01)
    assert out["forged"]
    if closes:
        b.esme.wait_supply("enabled", timeout=10)
    else:
        with pytest.raises(TimeoutError):
            b.esme.wait_supply("enabled", timeout=10)
    assert sim.physics.contactor is closes


@pytest.mark.safety
@pytest.mark.parametrize("faults,closes", [({}, False), ({"esme": ["long_freshness_window"]}, True)])
def test_a_ppmid_enable_held_back_by_the_tap_arrives_late_and_stale(device_bench, faults, closes):
    """The tap's delay: the PPMID's enable reaches the meter 8 lab s late; the
    healthy meter refuses it as stale, the 30 s window fault carries it out."""
    sim = device_bench(faults=faults)
    b = sim.bench
    _armed(b)
    t0 = b.clock.now()
    b.han_tap.delay("ppmid", "esme", 8.0, cluster=0x0705, command=0x01)
    out = b.ppmid.enable()
    frames = b.han_tap.journal(since=t0, src="ppmid", cluster=0x0705)
    held = [f for f in frames if f["injected"] == "held"]
    late = [f for f in frames if f["injected"] == "delayed"]
    assert held and late and late[0]["ts"] - held[0]["ts"] == pytest.approx(8.0, abs=0.5)
    assert bool(out["accepted"]) is closes and sim.physics.contactor is closes


def _press_during_outage_then_restore(sim, wait: float) -> dict:
    b = sim.bench
    _armed(b)
    sim.physics.set_attenuation("attenuator_ppmid", 90)
    b.ppmid.wait_state(lambda s: not any(v["up"] for v in s["han"].values()), 60, "PPMID link down")
    out = b.ppmid.enable()
    assert not out["delivered"]
    b.dwell(wait)                                  # the consumer walks away
    sim.physics.set_attenuation("attenuator_ppmid", 0)
    b.ppmid.wait_state(lambda s: any(v["up"] for v in s["han"].values()), 60, "PPMID link up")
    return out


@pytest.mark.safety
def test_a_press_made_while_the_link_is_down_is_not_carried_out_later(device_bench):
    sim = device_bench(faults={"ppmid": ["queues_presses"]})
    out = _press_during_outage_then_restore(sim, 60)
    assert out.get("kept_for_later")               # the faulty PPMID kept it ...
    b = sim.bench
    late = b.ppmid.wait_event("command", lambda e: e.get("queued_send"), 30)
    assert late["delivered"] and not late["accepted"]   # ... and the meter refused it as stale
    assert b.esme.supply == "armed" and not sim.physics.contactor
    stale = b.esme.event_log(event="ppmid_enable")[-1]
    assert "older than" in stale["reason"]


@pytest.mark.safety
def test_fault_accepts_stale_ppmid_is_caught(device_bench):
    sim = device_bench(faults={"ppmid": ["queues_presses"], "esme": ["accepts_stale_ppmid"]})
    _press_during_outage_then_restore(sim, 60)
    sim.bench.esme.wait_supply("enabled", 30)
    assert sim.physics.contactor


def _with_second_ppmid(cfg):
    from rig.config import DeviceConfig

    bench = cfg.bench("bench-1")
    bench.devices["ppmid2"] = DeviceConfig(kind="ppmid", id="00:0d:6f:00:00:00:00:06", han={"band": "2.4GHz"},
                                          settings={"paired_meter": "esme"})


@pytest.mark.safety
def test_an_unpaired_ppmid_cannot_enable(device_bench):
    sim = device_bench(edit=_with_second_ppmid)
    b = sim.bench
    _armed(b)
    out = b.device("ppmid2").enable()
    assert out["delivered"] and not out["accepted"]
    assert b.esme.supply == "armed" and not sim.physics.contactor


@pytest.mark.safety
def test_fault_accepts_unpaired_ppmid_is_caught(device_bench):
    sim = device_bench(edit=_with_second_ppmid, faults={"esme": ["accepts_unpaired_ppmid"]})
    _armed(sim.bench)
    assert sim.bench.device("ppmid2").enable()["accepted"]
    assert sim.physics.contactor


# ----------------------------------------------------------------------------- prepayment (SUP-3, SUP-5)
@pytest.mark.requirement("SUP-5")
def test_a_utrn_is_accepted_once(device_bench):
    sim = device_bench()
    b = sim.bench
    code = b.dcc.issue_utrn(10.0)
    first = b.ppmid.enter_utrn(code)
    assert first["accepted"] and first["amount"] == 10.0 and first["credit"] == pytest.approx(30.0, abs=0.01)
    second = b.esme.enter_utrn(code)
    assert not second["accepted"] and second["result"] == "Rejected_Duplicate_Top_Up"
    assert b.esme.wait_state(lambda s: s["prepayment"]["credit"] < 30.01)["prepayment"]["credit"] > 29.9
    forged = code[:-1] + str((int(code[-1]) + 1) % 10)
    assert b.esme.enter_utrn(forged)["result"] == "Rejected_Invalid_Top_Up"


def test_fault_utrn_reuse_is_caught(device_bench):
    sim = device_bench(faults={"esme": ["utrn_reuse"]})
    code = sim.bench.dcc.issue_utrn(10.0)
    assert sim.bench.esme.enter_utrn(code)["accepted"]
    assert sim.bench.esme.enter_utrn(code)["accepted"]


@pytest.mark.requirement("SUP-3", "SUP-8")
def test_credit_runs_out_emergency_credit_then_rearm(device_bench):
    sim = device_bench(settings={"esme": {"credit": 3.0, "low_credit_threshold": 2.0, "emergency_credit": 1.0,
                                          "tariff": 100.0}})
    b = sim.bench
    t0 = b.clock.now()
    _load_on(sim, 10.0)                            # 2.3 kW at 100 GBP/kWh: 0.064 GBP per lab second
    b.dcc.wait_alert("0x810D", since=t0, timeout=60)
    b.esme.wait_state(lambda s: s["prepayment"]["emergency_credit"]["state"] == "available", 60)
    b.esme.wait_supply("disabled", 60)
    assert b.esme.state["disabled_by"] == ["credit"] and not sim.physics.contactor
    b.ppmid.wait_state(lambda s: s["display"].get("credit_exhausted"), 60, "PPMID shows credit exhausted")
    assert b.ppmid.emergency_credit()["accepted"]
    b.esme.wait_supply("armed")
    b.dcc.wait_alert("0x8168", since=t0)
    assert not sim.physics.contactor              # armed: still a local action to close
    assert b.ppmid.enable()["accepted"] and sim.physics.contactor
    b.dcc.wait_alert("0x81AA", since=t0, timeout=60)   # the emergency credit runs out in turn
    b.esme.wait_supply("disabled")


@pytest.mark.requirement("SUP-9", "SUP-8")
def test_load_limit_interrupts_then_restores(device_bench):
    sim = device_bench(scale=120)
    b = sim.bench
    b.dcc.service_request("esme", "set_load_limit", threshold_kw=1.0, period=30)
    t0 = b.clock.now()
    _load_on(sim, 10.0)                            # 2.3 kW, over the 1 kW limit
    b.esme.wait_supply("armed", 90)
    assert not sim.physics.contactor and b.esme.state["arm_cause"] == "load_limit"
    tripped = b.dcc.wait_alert("0x8F33", since=t0)
    assert tripped["raised"] - t0 == pytest.approx(30, abs=5)
    b.esme.wait_supply("enabled", 90)
    b.dcc.wait_alert("0x8F34", since=t0)


# ----------------------------------------------------------------------------- property 6
@pytest.mark.safety
def test_fault_reports_closed_when_open_is_only_seen_by_the_load_side(device_bench):
    sim = device_bench(faults={"esme": ["reports_closed_when_open"]})
    b = sim.bench
    _load_on(sim)
    _armed(b)
    assert b.ppmid.enable()["accepted"]
    assert b.esme.wait_supply("enabled")["contactor"] == "closed"     # what the meter says ...
    assert sim.physics.read_load_side().current == 0.0                # ... and what is on the wires


@pytest.mark.safety
@pytest.mark.parametrize("scale", [1, 60])
def test_same_verdicts_at_clock_scale_1_and_60(device_bench, scale):
    sim = device_bench(scale=scale)
    b = sim.bench
    _armed(b)
    with pytest.raises(CommandError) as exc:
        b.dcc.enable()
    assert exc.value.error.requirement == "SUP-2" and not sim.physics.contactor
    b.esme.press("enable")
    assert not b.esme.hold("enable", 1.0)["actioned"]          # shorter than hold_time, in lab seconds
    assert b.ppmid.enable()["accepted"] and sim.physics.contactor
