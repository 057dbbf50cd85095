"""The HAN itself (HAN-1, HAN-2, HAN-7), as the HAN tap sees it on the air.

* HAN-1: the HAN speaks ZigBee Smart Energy: every application frame on the
  air is a ZCL frame of a Smart Energy (or foundation) cluster.
* HAN-2: the comms hub is the coordinator: traffic between two devices goes
  through it, and every device of the bench talks on the HAN.
* HAN-7: the hub mirrors the battery gas meter, which pushes its registers
  every 30 minutes (the requirement's period, the ``reference`` fixture).

A bench without a HAN tap skips these, with the reason.
"""

from __future__ import annotations

import pytest

from .observe import wait_until

#: ZCL clusters of the Smart Energy profile the HAN carries (and the foundation frames on them)
SE_CLUSTERS = {"0x0700": "Price", "0x0701": "Demand Response and Load Control", "0x0702": "Metering",
               "0x0703": "Messaging", "0x0704": "Tunneling", "0x0705": "Prepayment", "0x0708": "Device Management",
               "0x0709": "Events", "0x070A": "MDU Pairing", "0x0B01": "Meter Identification", "0x0000": "Basic",
               "0x000A": "Time", "0xFF52": "Load Limit (manufacturer-specific)"}
#: lab seconds of HAN traffic HAN-1 and HAN-2 look at
WINDOW = 60.0
#: how far one gas mirror push may be from the 30-minute period, lab seconds
MIRROR_TOLERANCE = 60.0


def _window(bench, han_tap, clock):
    t0 = clock.now()
    wait_until(bench, t0 + WINDOW)
    return han_tap.journal(since=t0)


@pytest.mark.requirement("HAN-1")
@pytest.mark.detects("speaks_proprietary")
def test_the_han_speaks_zigbee_smart_energy(bench, powered, han_tap, clock, measure, step):
    """HAN-1: a minute of the bench's HAN traffic, every application frame a
    ZCL frame the tap decodes, on a Smart Energy cluster."""
    with step("a minute of HAN traffic", lab_seconds=WINDOW):
        frames = _window(bench, han_tap, clock)
    not_zcl = [f for f in frames if f["command"] is None]
    other = sorted({f["cluster"] for f in frames if f["cluster"] not in SE_CLUSTERS})
    measure("han.frames_seen", len(frames), "frames", low=1, requirement="HAN-1", observed_by="han_tap")
    measure("han.frames_not_zcl", len(not_zcl), "frames", equals=0, requirement="HAN-1", observed_by="han_tap")
    measure("han.non_se_clusters", len(other), "clusters", equals=0, requirement="HAN-1", clusters=other,
            observed_by="han_tap")


@pytest.mark.requirement("HAN-2")
@pytest.mark.detects("talks_past_the_hub")
def test_the_hub_is_the_coordinator(bench, powered, han_tap, clock, measure, step):
    """HAN-2: frames between two devices go through the comms hub (their
    first hop is the hub), and every device of the bench is heard."""
    hub = bench.cfg.device_of_kind("comms_hub")
    if hub is None:
        pytest.skip(f"bench {bench.name} has no comms hub")
    with step("a minute of HAN traffic", lab_seconds=WINDOW):
        frames = _window(bench, han_tap, clock)
    direct = [f for f in frames if hub not in (f["src"], f["dst"]) and f.get("hop") not in (hub, None)]
    measure("han.frames_not_through_the_hub", len(direct), "frames", equals=0, requirement="HAN-2",
            pairs=sorted({f"{f['src']}->{f['dst']}" for f in direct}), observed_by="han_tap")
    sleepy = {n for n, d in bench.cfg.devices.items() if d.kind == "gsme"}   # wakes every 30 minutes
    talking = {f["src"] for f in frames}
    silent = sorted(set(bench.cfg.devices) - talking - sleepy - {hub})
    measure("han.devices_not_heard", len(silent), "devices", equals=0, requirement="HAN-2", devices=silent,
            observed_by="han_tap")


@pytest.mark.requirement("HAN-7")
@pytest.mark.detects("misses_mirror_sync")
def test_the_gas_meter_pushes_its_mirror_every_half_hour(bench, powered, han_tap, clock, reference, measure, step):
    """HAN-7: the gas meter's pushes to the hub's mirror (ZCL Report
    Attributes, gas meter to hub) come every 30 minutes: from the last push
    the tap has seen, each of the next two must come within the period and
    its tolerance of the one before (sooner is allowed: a push the hub
    missed is retried).  Two, because a meter that misses every other push
    makes one of any two intervals long, but maybe not the first."""
    gas = bench.cfg.device_of_kind("gsme")
    hub = bench.cfg.device_of_kind("comms_hub")
    if gas is None or hub is None:
        pytest.skip(f"bench {bench.name} has no gas meter and hub")
    period = reference.gas_mirror_period

    def pushes(since=None):
        return [f for f in han_tap.journal(since=since, src=gas, dst=hub) if f["command"] == "Report_Attributes"]

    seen = pushes()
    if not seen:
        with step("wait for the gas meter's first push", lab_seconds=period + MIRROR_TOLERANCE):
            bench.wait(lambda: pushes(clock.now() - period - MIRROR_TOLERANCE), period + MIRROR_TOLERANCE,
                       "a gas mirror push")
            seen = pushes()
    last = float(seen[-1]["ts"])
    # two intervals, not one: a meter that skips every other push has one of any two long
    with step("watch for the next two pushes", lab_seconds=2 * (period + MIRROR_TOLERANCE)):
        wait_until(bench, last + 2 * (period + MIRROR_TOLERANCE))
        after = [float(f["ts"]) for f in pushes(last + 1.0)]
    times = [last, *after[:2]]
    intervals = [round(b - a, 1) for a, b in zip(times, times[1:])]
    measure("han.gas_mirror_interval", max(intervals) if len(intervals) == 2 else None, "s",
            low=0.0, high=period + MIRROR_TOLERANCE, requirement="HAN-7", intervals=intervals,
            observed_by="han_tap", **reference.attrs("gas_mirror_period"))
