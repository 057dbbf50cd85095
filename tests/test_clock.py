"""The lab clock: scaled time shared by every process of a lab."""

import threading

import pytest

from rig.clock import ClockAnchor, LabClock, Timer


def test_lab_time_runs_scale_times_faster_than_wall_time():
    clock = LabClock(scale=60)
    w0, l0 = clock.wall(), clock.now()
    ev = threading.Event()
    ev.wait(0.05)  # let some wall time pass: the quantity under test
    dw, dl = clock.wall() - w0, clock.now() - l0
    assert dl == pytest.approx(dw * 60, rel=0.02)


def test_conversions_round_trip():
    clock = LabClock(scale=60)
    t = clock.now()
    assert clock.to_lab(clock.to_wall(t)) == pytest.approx(t)
    assert clock.wall_seconds(180) == pytest.approx(3.0)
    assert clock.lab_seconds(3.0) == pytest.approx(180)


def test_children_share_the_anchor_through_the_environment(monkeypatch):
    parent = LabClock(scale=60)
    for key, value in parent.env().items():
        monkeypatch.setenv(key, value)
    child = LabClock.from_env()
    assert child.anchor == parent.anchor
    assert child.now() == pytest.approx(parent.now(), abs=60 * 0.01)


def test_anchor_encoding():
    a = ClockAnchor(wall=1.7e9 + 0.123456, scale=60.0)
    assert ClockAnchor.decode(a.encode()) == a


def test_scale_one_is_wall_time():
    clock = LabClock(scale=1)
    assert clock.now() == pytest.approx(clock.wall(), abs=1e-3)


def test_wait_for_wakes_on_notify_and_times_out_in_lab_time():
    clock = LabClock(scale=100)
    cond = threading.Condition()
    box = []

    def later():
        with cond:
            box.append(1)
            cond.notify_all()

    threading.Timer(0.02, later).start()
    assert clock.wait_for(lambda: bool(box), timeout=60, condition=cond)   # 0.6 wall s at most
    t0 = clock.now()
    assert not clock.wait_for(lambda: False, timeout=5, condition=cond)    # 5 lab s = 50 ms wall
    assert clock.now() - t0 >= 5


def test_timer_fires_after_its_lab_duration_and_can_be_cancelled():
    clock = LabClock(scale=1000)
    fired = threading.Event()
    t0 = clock.now()
    Timer(clock, 30, fired.set).start()
    assert clock.wait_event(fired, 300)
    assert clock.now() - t0 >= 30
    cancelled = threading.Event()
    t = Timer(clock, 30, cancelled.set).start()
    t.cancel()
    assert not clock.wait_event(cancelled, 60)


def test_bad_scale_is_refused():
    with pytest.raises(ValueError):
        LabClock(scale=0)
