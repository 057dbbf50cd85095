"""Propagation suite (HAN-3, HAN-4, HAN-5, HAN-8): how far each HAN band
reaches on this bench, and what share of GB premises that serves.

Run it::

    rig run --suite propagation
    pytest --lab lab.yaml rig/suites/test_propagation.py      # while developing

**Attenuation sweeps.**  For every RF path of the bench (lab.yaml
``rf_paths``) that has an attenuator, the HAN tap's injector sends test
frames from the hub's place to the device at the other end on the path's
band (``han_tap.link_test``: real ZCL frames under the hub's address, each
sent once with no MAC retries, counted by the device's MAC
acknowledgements) while the attenuator steps up; a bench without a tap
uses the device's HAN bridge, if it has one (rig/suites/observe.py
``link_test``), and skips otherwise.  Each step records ``propagation.per``, ``propagation.rssi`` and
``propagation.lqi`` (attributes ``band``, ``attenuation_db``, ``path``).
Steps: ``4 x step_db`` from the attenuator's minimum until the link is lost
(PER >= 50 %), then ``step_db / 2`` from the last clean coarse step through
the edge; ``frames_per_step`` frames each (lab.yaml ``suites.propagation``).

**Link margin** (``propagation.link_margin``, dB of attenuation): the
largest attenuation at which PER stays below :data:`PER_THRESHOLD` (1 %),
every lower step included.  1 % because IEEE 802.15.4 defines receiver
sensitivity as the input power giving a PER below 1 % (2006 edition,
6.5.3.3, and likewise for its other PHYs), and a single attempt per frame
is what that definition counts: the margin is then the bench's own sensitivity point, comparable
across benches and with the link budgets behind the published coverage
figures.  1 % cannot be told from 0 % in 50 frames, so the edge step is
confirmed over :data:`CONFIRM_FRAMES` frames (three expected errors at the
threshold); if it fails there, the step below it is confirmed instead.
From the RSSI readings the sweep also derives the receiver's measured
sensitivity (RSSI at the edge) and the largest path loss the band's radios
tolerate (``propagation.max_path_loss`` = the devices' transmit power,
lab.yaml ``han.bands``, minus that sensitivity).

**Coverage study** (``coverage.share``): the measured max path loss per
band against the property library (:mod:`rig.coverage`,
``rig/data/property_types.yaml``): the share of each property type served,
the stock-weighted share beside the published figure (about 70 % at
2.4 GHz, over 95 % at 868 MHz), the extra loss at which the library would
give the published figure, and the reason for the gap.

These are characterisations; their limits fail a test only when the rig
or a device is clearly broken: a link that does not work at the
attenuator's minimum or never drops, RSSI that does not follow the
attenuator, or 868 MHz reaching less far than 2.4 GHz over the same
premises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from rig.coverage import LibraryError, load_library, loss_for_share, study

from .observe import bands, link_test, wait_link

#: PER at the link edge: 802.15.4's sensitivity criterion (see the module text)
PER_THRESHOLD = 0.01
#: PER at or above which the link counts as lost (the sweep stops there)
PER_LOST = 0.5
#: frames that confirm the edge: three expected errors at PER_THRESHOLD
CONFIRM_FRAMES = math.ceil(3 / PER_THRESHOLD)
#: the coarse step is this many times step_db; the fine step is step_db / 2
COARSE_STEPS = 4
#: RSSI must fall by this many dB per dB of attenuation (an energy reading
#: accurate to +/- 6 dB, 802.15.4-2006 6.9.7, keeps a 20 dB sweep inside)
RSSI_SLOPE = (-1.5, -0.5)
#: lab seconds a device gets to come back on the HAN after a sweep
RECOVERY = 60.0
BANDS = ("2.4GHz", "868MHz")


# ----------------------------------------------------------------------------- one sweep
@dataclass
class Point:
    """Everything measured at one attenuator setting."""

    attenuation: float
    frames: int = 0
    acked: int = 0
    rssi_sum: float = 0.0
    rssi_frames: int = 0
    lqi_sum: float = 0.0
    method: str = ""

    def add(self, result: dict) -> None:
        frames, acked = int(result["frames"]), int(result["acked"])
        self.frames += frames
        self.acked += acked
        if result.get("rssi") is not None and acked:
            self.rssi_sum += float(result["rssi"]) * acked
            self.rssi_frames += acked
        self.lqi_sum += float(result.get("lqi") or 0) * acked
        self.method = str(result.get("method", ""))

    @property
    def per(self) -> float:
        return 1.0 - self.acked / self.frames if self.frames else 1.0

    @property
    def rssi(self) -> float | None:
        return self.rssi_sum / self.rssi_frames if self.rssi_frames else None

    @property
    def lqi(self) -> float:
        return self.lqi_sum / self.acked if self.acked else 0.0


@dataclass
class Sweep:
    """One RF path swept: its points, its edge and what follows from it."""

    path: str
    band: str
    peer: str
    attenuator: str
    floor: float
    ceiling: float
    points: dict[float, Point] = field(default_factory=dict)
    margin: float | None = None           # dB of attenuation at the edge (None: never below the threshold)
    lost_at: float | None = None          # first setting with PER >= PER_LOST (None: never lost)

    def ordered(self) -> list[Point]:
        return [self.points[a] for a in sorted(self.points)]

    def rssi_fit(self) -> tuple[float, float] | None:
        """Least-squares RSSI = intercept + slope x attenuation over the
        points that heard the peer; None with fewer than three."""
        pts = [(p.attenuation, p.rssi) for p in self.ordered() if p.rssi is not None]
        if len(pts) < 3:
            return None
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx == 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        return my - slope * mx, slope

    def rssi_at_zero(self) -> float | None:
        """RSSI the path would give with no attenuation (dBm): the median of
        RSSI + attenuation over the settings that heard the peer."""
        clean = sorted(p.rssi + p.attenuation for p in self.ordered() if p.rssi is not None)
        return clean[len(clean) // 2] if len(clean) >= 3 else None

    def sensitivity(self) -> float | None:
        """RSSI at the edge (dBm): the receiver's measured sensitivity."""
        zero = self.rssi_at_zero()
        return None if zero is None or self.margin is None else zero - self.margin


def _peer(bench, between: tuple[str, str]) -> tuple[str, str] | None:
    """(hub, peer) of a path, or None when neither end is a comms hub."""
    kinds = {name: bench.cfg.devices[name].kind for name in between}
    hubs = [n for n in between if kinds[n] == "comms_hub"]
    if not hubs:
        return None
    return hubs[0], next(n for n in between if n != hubs[0])


def sweep(bench, name: str, settings) -> Sweep:
    """Sweep one RF path of the bench (see the module text)."""
    cfg = bench.cfg.rf_paths[name]
    ends = _peer(bench, cfg.between)
    assert ends is not None, f"rf_path {name} joins no comms hub: the hub runs the link test"
    _hub, peer = ends
    att = bench.attenuators[cfg.attenuator]
    limits = bench.cfg.instruments[cfg.attenuator].limits
    floor = limits.attenuation_min or 0.0
    ceiling = limits.attenuation_max if limits.attenuation_max is not None else 120.0
    step_max = limits.step_max or math.inf
    s = Sweep(name, cfg.band, peer, cfg.attenuator, floor, ceiling)
    frames = settings.frames_per_step
    fine, coarse = settings.step_db / 2, settings.step_db * COARSE_STEPS
    now = [float(att.db)]

    def move(db: float) -> float:
        """Set the attenuator, in steps no larger than its step_max."""
        target = min(max(db, floor), ceiling)
        while abs(target - now[0]) > step_max:
            now[0] = att.set(now[0] + math.copysign(step_max, target - now[0]))
        now[0] = att.set(target)
        return round(now[0], 4)

    def probe(db: float, n: int) -> Point:
        got = move(db)
        point = s.points.setdefault(got, Point(got))
        left = n
        while left > 0:                       # the link test takes at most 1000 frames a call
            take = min(left, 1000)
            point.add(link_test(bench, peer, cfg.band, frames=take))
            left -= take
        return point

    # coarse, until the link is lost or the attenuator runs out
    db, clean = floor, None
    while True:
        point = probe(db, frames)
        if point.per < PER_THRESHOLD:
            clean = point.attenuation
        if point.per >= PER_LOST or db >= ceiling:
            break
        db = min(db + coarse, ceiling)
    # fine, from the last clean coarse step through the edge
    if clean is not None:
        db = clean + fine
        while db <= ceiling + 1e-9:
            if round(db, 4) not in s.points:
                if probe(db, frames).per >= PER_LOST:
                    break
            elif s.points[round(db, 4)].per >= PER_LOST:
                break
            db += fine
    s.lost_at = next((p.attenuation for p in s.ordered() if p.per >= PER_LOST), None)
    # the edge: the highest setting with every setting up to it below the threshold,
    # confirmed over CONFIRM_FRAMES frames
    candidates: list[float] = []
    for p in s.ordered():
        if p.per >= PER_THRESHOLD:
            break
        candidates.append(p.attenuation)
    for a in reversed(candidates):
        point = s.points[a]
        if point.frames < CONFIRM_FRAMES:
            probe(a, CONFIRM_FRAMES - point.frames)
        if point.per < PER_THRESHOLD:
            s.margin = a
            break
    move(floor)
    return s


def _why(text: str) -> dict:
    """A failure's explanation as a measurement attribute (none when it passed)."""
    return {"why": text} if text else {}


def _record(s: Sweep, measure, tx_power: float) -> None:
    """The sweep's measurements, in attenuation order."""
    common = {"band": s.band, "path": s.path}
    for p in s.ordered():
        attrs = {**common, "attenuation_db": p.attenuation, "frames": p.frames, "peer": s.peer, "method": p.method}
        measure("propagation.per", round(p.per, 4), requirement="HAN-3", **attrs)
        if p.rssi is not None:
            measure("propagation.rssi", round(p.rssi, 1), "dBm", requirement="HAN-3", **attrs)
        measure("propagation.lqi", round(p.lqi, 1), requirement="HAN-3", **attrs)
    fit = s.rssi_fit()
    measure("propagation.rssi_slope", round(fit[1], 3) if fit else float("nan"), "dB/dB",
            low=RSSI_SLOPE[0], high=RSSI_SLOPE[1], requirement="HAN-3", **common,
            **_why("" if fit else "fewer than three settings heard the peer"))
    measure("propagation.link_margin", s.margin if s.margin is not None else float("nan"), "dB",
            low=s.floor, requirement=["HAN-3", "HAN-4"], **common, per_threshold=PER_THRESHOLD,
            confirm_frames=CONFIRM_FRAMES, attenuator=s.attenuator,
            **_why("" if s.margin is not None else
                   f"PER is {PER_THRESHOLD:.0%} or more already at the attenuator's minimum ({s.floor:g} dB): "
                   "the link does not work on this bench"))
    measure("propagation.link_lost_at", s.lost_at if s.lost_at is not None else float("inf"), "dB",
            high=s.ceiling, requirement="HAN-3", **common, per_lost=PER_LOST,
            **_why("" if s.lost_at is not None else
                   f"PER stayed below {PER_LOST:.0%} up to the attenuator's maximum ({s.ceiling:g} dB): the "
                   "attenuator is not in the path, or RF leaks around it"))
    zero, sens = s.rssi_at_zero(), s.sensitivity()
    if zero is not None:
        measure("propagation.path_loss", round(tx_power - zero, 1), "dB", **common, tx_power_dbm=tx_power,
                note="transmit power minus the RSSI at 0 dB attenuation: the bench path's own loss")
    if sens is not None:
        measure("propagation.sensitivity", round(sens, 1), "dBm", requirement="HAN-3", **common,
                note="RSSI at the link margin")
        measure("propagation.max_path_loss", round(tx_power - sens, 1), "dB", requirement="HAN-3", **common,
                tx_power_dbm=tx_power, note="transmit power (lab.yaml han.bands) minus the measured sensitivity")


def _paths(bench, band: str | None = None) -> list[str]:
    return [n for n, p in bench.cfg.rf_paths.items()
            if p.attenuator and (band is None or p.band == band) and _peer(bench, p.between) is not None]


def _links(bench, peer: str) -> dict[str, bool]:
    """Which of the peer's bands carry its link now (a short link test each)."""
    return {b: _per(link_test(bench, peer, b, 10)) < 0.5 for b in bands(bench, peer)}


def _per(result: dict) -> float:
    return 1.0 if result.get("per") is None else float(result["per"])


def _leave_links_as_found(bench, peer: str, before: dict[str, bool]) -> None:
    """Wait until every band that was up before the sweep is up again."""
    was_up = [b for b, up in before.items() if up]
    if was_up and not bench.clock.wait_for(lambda: all(_links(bench, peer)[b] for b in was_up), RECOVERY,
                                           poll=bench.clock.lab_seconds(0.01)):
        raise TimeoutError(f"{peer} not back on the HAN ({', '.join(was_up)}) within {RECOVERY:g} lab s of the sweep")


def measured(bench, name: str, settings, sweeps: dict, measure, step) -> Sweep:
    """The sweep of a path: from earlier in this session, or done now."""
    key = (bench.name, name)
    if key not in sweeps:
        cfg = bench.cfg.rf_paths[name]
        peer = _peer(bench, cfg.between)[1]  # type: ignore[index]  # a swept path has the hub at one end
        before = _links(bench, peer)
        with step(f"sweep {name}", band=cfg.band, path=name, attenuator=cfg.attenuator):
            s = sweep(bench, name, settings)
        _record(s, measure, bench.lab.cfg.han.bands[cfg.band].tx_power_dbm)
        _leave_links_as_found(bench, peer, before)
        sweeps[key] = s
    return sweeps[key]


@pytest.fixture(scope="session")
def sweeps() -> dict:
    """Sweeps done in this session, so later tests use the measured edges."""
    return {}


@pytest.fixture
def hub_ready(comms_hub):
    """Mains on (the ``powered`` baseline), and every device the sweeps talk
    to on the HAN (a link test finds its link up)."""
    bench = comms_hub.bench
    # every swept path has the hub at one end
    for name in sorted({_peer(bench, bench.cfg.rf_paths[p].between)[1] for p in _paths(bench)}):  # type: ignore[index]
        wait_link(bench, name, True, RECOVERY)
    return comms_hub


# ----------------------------------------------------------------------------- the tests
@pytest.mark.requirement("HAN-3", "HAN-4")
@pytest.mark.parametrize("band", BANDS)
def test_attenuation_sweep_finds_the_link_margin(band, hub_ready, settings, sweeps, measure, step):
    """Every attenuated RF path of this band: PER, RSSI and LQI against
    attenuation, and the link margin at 1 % PER."""
    bench = hub_ready.bench
    names = _paths(bench, band)
    if not names:
        pytest.skip(f"no RF path with an attenuator on {band} on bench {bench.name}")
    for name in names:
        measured(bench, name, settings.propagation, sweeps, measure, step)


@pytest.mark.requirement("HAN-3", "HAN-4")
def test_868_keeps_its_link_further_than_2g4_over_the_same_premises(hub_ready, settings, sweeps, measure, step):
    """The same devices over the same premises on both bands: 868 MHz must
    keep its link to a higher attenuation than 2.4 GHz (lower frequency,
    less loss per wall; HAN-3's 95 % against 70 %)."""
    bench = hub_ready.bench
    pairs = []
    for a in _paths(bench, "2.4GHz"):
        pa = bench.cfg.rf_paths[a]
        for b in _paths(bench, "868MHz"):
            pb = bench.cfg.rf_paths[b]
            if set(pa.between) == set(pb.between) and pa.premises == pb.premises:
                pairs.append((a, b))
    if not pairs:
        pytest.skip("no two RF paths join the same devices over the same premises on both bands")
    fine = settings.propagation.step_db / 2
    for a, b in pairs:
        sa = measured(bench, a, settings.propagation, sweeps, measure, step)
        sb = measured(bench, b, settings.propagation, sweeps, measure, step)
        if sa.margin is None or sb.margin is None:
            pytest.fail(f"no link margin on {a if sa.margin is None else b}: see its sweep")
        measure("propagation.band_advantage", round(sb.margin - sa.margin, 2), "dB", low=fine,
                requirement=["HAN-3", "HAN-4"], paths=f"{b} vs {a}", margin_868=sb.margin, margin_2g4=sa.margin,
                note="868 MHz link margin minus 2.4 GHz link margin, same devices and premises")


@pytest.mark.requirement("HAN-3", "HAN-5", "HAN-8")
def test_coverage_study_from_the_measured_link_budget(hub_ready, settings, sweeps, measure, step):
    """The share of GB premises each band serves, from the max path loss
    this bench measured and the property library, beside the published
    figures, with the reason for any gap."""
    bench = hub_ready.bench
    where = settings.propagation.property_library
    try:
        library = load_library(where)
    except LibraryError as exc:
        pytest.fail(f"property library: {exc}")
    budget: dict[str, tuple[float, str]] = {}
    for band in BANDS:
        for name in _paths(bench, band):
            s = measured(bench, name, settings.propagation, sweeps, measure, step)
            sens = s.sensitivity()
            if sens is None:
                continue
            mapl = bench.lab.cfg.han.bands[band].tx_power_dbm - sens
            if band not in budget or mapl < budget[band][0]:
                budget[band] = (mapl, name)       # the weakest radio measured on the band
    if not budget:
        pytest.fail("no RF path gave a link margin and sensitivity to study coverage from")

    studies = {}
    with step("coverage study", library=library.file, correlation=library.study.link_correlation,
              served_when=", ".join(library.study.served_when)):
        for band, (mapl, path) in sorted(budget.items()):
            result = studies[band] = study(library, band, mapl)
            for t in result.types:
                measure("coverage.share", round(t.share, 4), band=band, property_type=t.label, weight=round(t.weight, 4),
                        requirement="HAN-3", **{f"{k}_loss_db": v for k, v in t.link_losses.items()},
                        sigma_db=t.sigma_db)
            _record_overall(result, library, mapl, path, measure)

    if set(studies) == set(BANDS):
        low, high = studies["2.4GHz"], studies["868MHz"]
        for t24, t868 in zip(low.types, high.types):
            measure("coverage.band_advantage", round(t868.share - t24.share, 4), low=0.0,
                    requirement=["HAN-3", "HAN-4"], property_type=t24.label,
                    note="share served at 868 MHz minus at 2.4 GHz, same premises")


def _record_overall(result, library, mapl: float, path: str, measure) -> None:
    band = result.band
    gap_reason = _gap_reason(result, library, mapl)
    measure("coverage.share", round(result.share, 4), band=band, property_type="all",
            published=result.published, published_source=result.published_source, max_path_loss_db=round(mapl, 1),
            measured_on=path, correlation=result.correlation, why=gap_reason, requirement=["HAN-3", "HAN-5"])
    # HAN-5: how much the correlation of the gas and IHD links matters
    measure("coverage.share_independent_links", round(result.share_independent, 4), band=band,
            requirement="HAN-5", note="gas and IHD links independent")
    measure("coverage.share_correlated_links", round(result.share_correlated, 4), band=band,
            requirement="HAN-5", note="gas and IHD links fully correlated (the published figures' assumption)")
    for link in ("gas", "ihd", "ppmid"):
        share = result.link_share(link)
        if share is not None:
            measure("coverage.link_share", round(share, 4), band=band, link=link, requirement="HAN-5",
                    note="share of the premises that have this link where it alone closes")
    weakest = result.weakest()
    measure("coverage.weakest_type", round(weakest.share, 4), band=band, property_type=weakest.label,
            requirement="HAN-8")
    if result.published is not None:
        measure("coverage.gap", round(result.share - result.published, 4), band=band,
                published=result.published, why=gap_reason, requirement="HAN-3")


def _gap_reason(result, library, mapl: float) -> str:
    """Why the study and the published figure differ, in numbers first."""
    band, share, pub = result.band, result.share, result.published
    if pub is None:
        return "no published figure for this band in the library"
    extra = loss_for_share(library, band, mapl, pub)
    weakest = sorted(result.types, key=lambda t: t.share)[:2]
    where = ", ".join(f"{t.label} {t.share:.0%}" for t in weakest)
    if band == "868MHz" and share >= pub:
        return (f"consistent: the published figure is a floor ('over {pub:.0%}'); the bench's measured max path loss "
                f"{mapl:.0f} dB serves {share:.1%} of the library's stock (weakest: {where}), and would still serve "
                f"{pub:.0%} with {extra:.0f} dB more loss on every link")
    direction = "more loss (or less link budget)" if extra > 0 else "less loss (or more link budget)"
    return (f"the study serves {share:.1%} against the published {pub:.0%}: the published figure corresponds to "
            f"{abs(extra):.1f} dB {direction} on every link than this bench's measured max path loss ({mapl:.0f} dB) "
            f"with this library (weakest: {where}).  Candidate causes, not measured here: real meters' integrated "
            f"antennas inside meter enclosures, foil-backed insulation and furniture that the library's wall and "
            f"floor values leave out, and a fade margin in the trial's 'satisfactory propagation' criterion; "
            f"the library's stock weights and paths are labelled assumptions (rig/data/property_types.yaml)")
