"""The simulated HAN: link budget, ZCL frames, and the medium (no broker)."""

from __future__ import annotations

import threading

import pytest

from rig.clock import LabClock
from rig.config import HanConfig, Premises, load_lab
from rig import propagation as prop
from rig.protocol import zcl
from rig.sim.event_loop import EventLoop
from rig.sim.han import HanMedium, HanRadio

from pathlib import Path

LABS = Path(__file__).parent / "labs"

BANDS = HanConfig().bands
HOME = Premises(distance_m=8, walls=2, floors=0)


# ----------------------------------------------------------------------------- link budget
def test_path_loss_follows_p1238_with_walls():
    b = BANDS["2.4GHz"]
    # 20 log10(2440) + 30 log10(8) - 28 + 2 walls x 7 dB
    assert prop.path_loss_db(b, HOME) == pytest.approx(67.748 + 27.093 - 28 + 14, abs=0.01)
    more = prop.path_loss_db(b, Premises(distance_m=8, walls=2, floors=1))
    assert more - prop.path_loss_db(b, HOME) == pytest.approx(b.floor_loss_db)
    cab = prop.path_loss_db(b, Premises(distance_m=8, walls=2, metal_cabinet=True))
    assert cab - prop.path_loss_db(b, HOME) == pytest.approx(b.metal_cabinet_loss_db)


def test_sensitivity_is_where_a_20_octet_frame_sees_one_percent_per():
    for name, b in BANDS.items():
        at_sens = prop.link_budget(name, b, HOME, attenuation_db=0)
        att = at_sens.rx_dbm - b.sensitivity_dbm          # attenuation that puts rx on sensitivity
        lb = prop.link_budget(name, b, HOME, attenuation_db=att)
        assert lb.margin_db == pytest.approx(0, abs=1e-9)
        assert lb.per(20) == pytest.approx(0.01, rel=0.02)


def test_lqi_and_per_degrade_monotonically_with_attenuation():
    b = BANDS["2.4GHz"]
    lqis, pers = [], []
    for att in range(0, 40, 2):
        lb = prop.link_budget("2.4GHz", b, HOME, att)
        lqis.append(lb.lqi())
        pers.append(lb.per(64))
    assert lqis == sorted(lqis, reverse=True) and lqis[0] > 150 and lqis[-1] == 0
    assert pers == sorted(pers) and pers[0] < 1e-6 and pers[-1] > 0.99
    assert prop.link_budget("2.4GHz", b, HOME, 60).rssi is None      # not even detected


@pytest.mark.requirement("HAN-3", "HAN-4")
def test_868_reaches_further_than_2g4_for_the_same_premises():
    drop24 = prop.max_attenuation_db(BANDS["2.4GHz"], HOME)
    drop868 = prop.max_attenuation_db(BANDS["868MHz"], HOME)
    assert 20 < drop24 < drop868 - 20
    far = Premises(distance_m=25, walls=4, floors=1)
    assert prop.coverage(BANDS["868MHz"], far) > prop.coverage(BANDS["2.4GHz"], far)


def test_air_time_from_the_band_data_rate():
    assert prop.air_time(BANDS["2.4GHz"], 127) == pytest.approx(133 * 8 / 250e3)
    assert prop.air_time(BANDS["868MHz"], 127) == pytest.approx(133 * 8 / 100e3)
    assert prop.fragments(10) == [10 + prop.STACK_OVERHEAD_OCTETS]
    assert len(prop.fragments(300)) == 4 and max(prop.fragments(300)) <= prop.MAX_PSDU_OCTETS


# ----------------------------------------------------------------------------- ZCL with zigpy
def test_prepayment_commands_are_real_zcl_frames():
    data = zcl.command(zcl.Prepayment, "change_supply", tsn=9, provider_id=1, request_date_time=zcl.to_utc(1.8e9),
                       implementation_date_time=0, proposed_supply_status=zcl.SupplyStatus.Supply_On,
                       originator_id_supply_control_bits=0)
    # frame control: cluster specific, client to server; TSN 9; command 0x01
    assert data[:3] == bytes([0x01, 9, 0x01])
    f = zcl.parse(zcl.Prepayment, data)
    assert f.name == "change_supply" and f.args["proposed_supply_status"] == zcl.SupplyStatus.Supply_On
    assert zcl.from_utc(f.args["request_date_time"]) == 1.8e9
    top = zcl.command(zcl.Prepayment, "consumer_top_up", tsn=1, originating_device=zcl.OriginatingDevice.Meter,
                      top_up_code=b"12345678901234567890")
    assert zcl.parse(zcl.Prepayment, top).args["top_up_code"] == b"12345678901234567890"
    rsp = zcl.command(zcl.Prepayment, "consumer_top_up_response", tsn=1, result_type=zcl.TopUpResult.Accepted,
                      top_up_value=1000, source_of_top_up=0, credit_remaining=2500)
    assert rsp[0] & 0x08 and zcl.parse(zcl.Prepayment, rsp).name == "consumer_top_up_response"


def test_tunneling_direction_is_chosen_explicitly():
    up = zcl.command(zcl.Tunneling, "transfer_data", tsn=1, tunnel_id=0, data=b"x")
    down = zcl.command(zcl.Tunneling, "transfer_data", tsn=1, to_client=True, tunnel_id=0, data=b"x")
    assert not zcl.parse(zcl.Tunneling, up).to_client and zcl.parse(zcl.Tunneling, down).to_client


def test_metering_read_attributes_round_trip():
    req = zcl.read_attributes(zcl.Metering, ["supply_status", "current_summ_delivered"], tsn=4)
    ids = zcl.parse(zcl.Metering, req).requested()
    rsp = zcl.read_attributes_response(zcl.Metering, ids + [0x7777], {"supply_status": 1,
                                                                      "current_summ_delivered": 1234}, tsn=4)
    got = zcl.parse(zcl.Metering, rsp)
    assert got.attributes() == {"supply_status": 1, "current_summ_delivered": 1234}
    assert got.args["status_records"][-1].status == zcl.Status.UNSUPPORTED_ATTRIBUTE


def test_garbage_is_a_clear_error():
    with pytest.raises(zcl.ZclError, match="Prepayment"):
        zcl.parse(zcl.Prepayment, bytes([0x01, 0x01, 0x7F]))


def test_utrn_is_bound_to_one_meter_and_authenticated():
    key = zcl.meter_key("lab", "00:0d:6f:00:00:00:00:01")
    code = zcl.make_utrn(key, "00:0d:6f:00:00:00:00:01", 1500, 3)
    assert len(code) == 20 and zcl.read_utrn(key, "00:0d:6f:00:00:00:00:01", code) == (1500, 3)
    forged = code[:-1] + str((int(code[-1]) + 1) % 10)
    with pytest.raises(zcl.UtrnError) as exc:
        zcl.read_utrn(key, "00:0d:6f:00:00:00:00:01", forged)
    assert exc.value.alert == 0x8F63
    other = zcl.meter_key("lab", "00:0d:6f:00:00:00:00:09")
    with pytest.raises(zcl.UtrnError):
        zcl.read_utrn(other, "00:0d:6f:00:00:00:00:09", code)


def test_signed_requests_verify_only_with_the_role_key():
    req = zcl.RemoteRequest(kind=zcl.TunnelKind.request, request_id=1, role=zcl.RemoteRole.supplier,
                            target=zcl.eui64("00:0d:6f:00:00:00:00:01"), cluster=0x0702, premises="P",
                            issued=0, zcl=b"\x01\x02", signature=b"")
    req.signature = zcl.sign(req, zcl.role_key("lab", "supplier"))
    assert zcl.verify(req, zcl.role_key("lab", "supplier"))
    assert not zcl.verify(req, zcl.role_key("lab", "dno"))
    req.premises = "Q"
    assert not zcl.verify(req, zcl.role_key("lab", "supplier"))


# ----------------------------------------------------------------------------- the medium
class Attenuation:
    def __init__(self):
        self.db: dict[str, float] = {}

    def __call__(self, name):
        return self.db.get(name, 0.0) if name else 0.0


@pytest.fixture
def medium():
    """The default lab's hub, ESME and PPMID radios on a medium, no bus."""
    cfg = load_lab(LABS.parent.parent / "lab.yaml")
    clock = LabClock(scale=600)
    loop = EventLoop(clock).start()
    att = Attenuation()
    m = HanMedium(cfg.han, cfg.bench("bench-1"), att, clock, loop)
    radios = {}
    for name in ("comms_hub", "esme", "ppmid"):
        d = cfg.bench("bench-1").devices[name]
        r = HanRadio(name, d.id, d.han.band, loop, clock, coordinator=name == "comms_hub")
        m.attach(r)
        radios[name] = r
    for r in radios.values():
        r.start()
    yield m, radios, att, clock
    loop.stop()


def _wait(clock, pred, timeout=120):
    assert clock.wait_for(pred, timeout), "condition not met"


def test_frames_are_routed_through_the_coordinator(medium):
    m, radios, _att, clock = medium
    got = []
    radios["esme"].on_frame = got.append
    hops = []
    m.listeners.append(lambda _k, f, d: hops.append((d["from"], d["to"])) if f.kind == "data" else None)
    _wait(clock, lambda: radios["ppmid"].link("comms_hub", "2.4GHz").up)
    radios["ppmid"].send("esme", zcl.Metering.cluster_id, zcl.read_attributes(zcl.Metering, ["status"], tsn=1))
    _wait(clock, lambda: got)
    assert hops[:2] == [("ppmid", "comms_hub"), ("comms_hub", "esme")]
    assert got[0].src == "ppmid" and got[0].hops == ["ppmid", "comms_hub"]
    assert got[0].rssi is not None and 0 < got[0].lqi <= 255


def test_attenuation_degrades_lqi_then_drops_2g4_before_868(medium):
    m, radios, att, clock = medium
    ppmid = radios["ppmid"]
    _wait(clock, lambda: ppmid.link("comms_hub", "2.4GHz").up and ppmid.link("comms_hub", "868MHz").up)
    clear = ppmid.link("comms_hub", "2.4GHz").lqi
    att.db["attenuator_ppmid"] = 20
    _wait(clock, lambda: 0 < ppmid.link("comms_hub", "2.4GHz").lqi < clear - 40)
    att.db["attenuator_ppmid"] = 40
    _wait(clock, lambda: not ppmid.link("comms_hub", "2.4GHz").up)
    assert ppmid.link("comms_hub", "868MHz").up
    # application traffic fails over to the band that is still up
    assert ppmid.band_to("comms_hub") == "868MHz"
    att.db["attenuator_ppmid"] = 75
    _wait(clock, lambda: not ppmid.link("comms_hub", "868MHz").up)
    att.db["attenuator_ppmid"] = 0
    _wait(clock, lambda: ppmid.link("comms_hub", "2.4GHz").up and ppmid.link("comms_hub", "868MHz").up)


def test_retries_and_losses_are_counted_near_sensitivity(medium):
    m, radios, att, clock = medium
    # just above the 2.4 GHz drop point: many attempts need a retry
    att.db["attenuator_ppmid"] = prop.max_attenuation_db(m.han.bands["2.4GHz"], HOME) - 0.5
    before = dict(m.stats["2.4GHz"])
    _wait(clock, lambda: m.stats["2.4GHz"]["attempts"] - before["attempts"] > 200, timeout=3000)
    assert m.stats["2.4GHz"]["retries"] > before["retries"]


def test_replayed_frames_are_dropped_by_the_frame_counter(medium):
    m, radios, _att, clock = medium
    got = []
    radios["esme"].on_frame = got.append
    _wait(clock, lambda: radios["ppmid"].link("comms_hub", "2.4GHz").up)
    radios["ppmid"].send("esme", zcl.Metering.cluster_id, zcl.read_attributes(zcl.Metering, ["status"], tsn=2))
    _wait(clock, lambda: got)
    assert m.replay("ppmid", "esme", zcl.Metering.cluster_id) is not None
    _wait(clock, lambda: radios["esme"].replays_dropped == 1)
    assert len(got) == 1
    radios["esme"].accept_replays = True          # what fault accepts_replayed_ppmid does
    m.replay("ppmid", "esme")
    _wait(clock, lambda: len(got) == 2)
    assert got[1].replayed and got[1].counter == got[0].counter


@pytest.mark.parametrize("lost", [False, True], ids=["delay", "jam"])
def test_a_hold_releases_its_frames_late_and_a_jam_loses_them(medium, lost):
    """The tap's ``delay`` holds the next frame (and those behind it) and sends
    them on later; its ``jam`` loses them: the sender's MAC sees no ACK either
    way, and after the jam the link carries frames again."""
    m, radios, _att, clock = medium
    got, acks = [], []
    radios["esme"].on_frame = got.append
    _wait(clock, lambda: radios["ppmid"].link("comms_hub", "2.4GHz").up)
    hold = m.hold_next("ppmid", "esme", zcl.Metering.cluster_id, None, 30.0, lost=lost)
    for tsn in (3, 4):
        radios["ppmid"].send("esme", zcl.Metering.cluster_id, zcl.read_attributes(zcl.Metering, ["status"], tsn=tsn),
                             done=acks.append)
    _wait(clock, lambda: len(acks) == 2)
    assert acks == [False, False] and not got
    _wait(clock, lambda: hold.released is not None)
    held = [e["injected"] for e in m.journal if e["src"] == "ppmid" and e["injected"] in ("held", "jammed")]
    assert held == ["jammed" if lost else "held"] * 2
    radios["ppmid"].send("esme", zcl.Metering.cluster_id, zcl.read_attributes(zcl.Metering, ["status"], tsn=5),
                         done=acks.append)
    _wait(clock, lambda: len(acks) == 3)
    assert acks[2] is True
    _wait(clock, lambda: len(got) == (1 if lost else 3))
    tsns = [f.zcl[1] for f in got]
    assert sorted(tsns) == ([5] if lost else [3, 4, 5])
    assert lost or tsns.index(3) < tsns.index(4)          # the held frames go on in their order


def test_request_must_not_block_the_loop(medium):
    m, radios, _att, clock = medium
    failure = []

    def on_loop():
        try:
            radios["ppmid"].request("esme", 0x0702, b"\x00\x01\x00", 1, 1)
        except RuntimeError as exc:
            failure.append(exc)

    radios["ppmid"].loop.call_soon(on_loop)
    _wait(clock, lambda: failure)
    assert "not the HAN loop" in str(failure[0])


def test_same_seed_same_outcomes():
    cfg = load_lab(LABS.parent.parent / "lab.yaml")

    def run() -> list[bool]:
        clock = LabClock(scale=1000)
        loop = EventLoop(clock).start()
        m = HanMedium(cfg.han, cfg.bench("bench-1"), lambda n: 29.3 if n else 0.0, clock, loop)
        a = HanRadio("comms_hub", "00:0d:6f:00:00:00:00:03", "dual", loop, clock, coordinator=True)
        b = HanRadio("ppmid", "00:0d:6f:00:00:00:00:04", "2.4GHz", loop, clock, poll_period=None)
        m.attach(a)
        m.attach(b)
        out: list[bool] = []
        done = threading.Event()

        def send(i=0):
            if i == 40:
                done.set()
                return
            f = b.send("comms_hub", 0x0702, b"\x00\x01\x00" * 10,
                       done=lambda ok, i=i: (out.append(ok), send(i + 1)))
            return f

        loop.call_soon(send)
        done.wait(10)
        loop.stop()
        return out

    first, second = run(), run()
    assert len(first) == 40 and first == second and 0 < sum(first) < 40
