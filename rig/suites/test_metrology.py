"""What the meter keeps and reports (DATA-2), against the rig's own instrument.

DATA-2: "a 100 W load for 24 h is 2.4 kWh on the register and in the remote
read".  The load bank draws a steady load; the rig integrates the power
analyser's samples over the same interval that two remote reads of the
meter's register (through the head end) bracket, and the two energies must
agree within the meter's accuracy class.
"""

from __future__ import annotations

import pytest

from .observe import LIVE_A, analyser_name

#: lab seconds of steady load the register is judged over
INTERVAL = 1200.0
#: amps the load bank draws (2.3 kW at 230 V)
AMPS = 10.0
#: how far register and analyser may differ: class 1 (IEC 62053-21) and the register's 1 Wh resolution
ACCURACY = 0.01


@pytest.mark.requirement("DATA-2")
@pytest.mark.detects("register_runs_fast")
def test_the_energy_register_agrees_with_the_analyser(bench, esme, dcc, load, analyser, clock, measure, step):
    """A 2.3 kW load for 20 lab minutes: the register's advance, as the head end
    reads it remotely, against the energy the rig integrates from the
    analyser's power samples over the same interval."""
    load.draw(amps=AMPS)
    analyser.wait_for(lambda r: r.current > LIVE_A, 30, "load drawing")
    with step("first remote read of the register"):
        t0 = clock.now()
        before = float(dcc.read()["energy_kwh"])
        t0 = (t0 + clock.now()) / 2
    samples = [analyser.read()]

    def sample() -> bool:
        samples.append(analyser.read())
        return False

    with step("steady load; the analyser sampled", lab_seconds=INTERVAL):
        clock.wait_for(sample, max(0.0, t0 + INTERVAL - clock.now()), poll=5.0)
    with step("second remote read of the register"):
        t1 = clock.now()
        after = float(dcc.read()["energy_kwh"])
        t1 = (t1 + clock.now()) / 2
        samples.append(analyser.read())
    points = [(t0, samples[0].power)] + [(s.ts, s.power) for s in samples if t0 < s.ts < t1] + [(t1, samples[-1].power)]
    wh = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:])) / 3600.0
    register_wh = (after - before) * 1000.0
    measure("metrology.analyser_energy", round(wh, 2), "Wh", low=1.0, requirement="DATA-2",
            observed_by=analyser_name(bench), samples=len(points), lab_seconds=round(t1 - t0, 2))
    measure("metrology.register_energy", round(register_wh, 2), "Wh", requirement="DATA-2", observed_by="dcc")
    resolution = 2.0 / max(wh, 1e-9)       # the register reads whole Wh: one at each end
    measure("metrology.register_error", round((register_wh - wh) / wh, 5) if wh > 0 else None, low=-(ACCURACY + resolution),
            high=ACCURACY + resolution, requirement="DATA-2", observed_by=["dcc", analyser_name(bench)])
