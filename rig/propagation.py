"""The HAN link budget: from a band, a premises and an attenuator setting to
RSSI, LQI and packet error rate.

A model of radio, not of the simulation: the simulated HAN
(rig/sim/han.py) decides every hop with it, and the coverage study
(rig/coverage.py) predicts premises coverage with it.

Path loss is the ITU-R P.1238 indoor site-general model with the walls of
the COST 231 multi-wall model added (Motley-Keenan)::

    L(dB) = 20 log10(f_MHz) + N log10(d_m) + Lf(n) - 28 + walls x Lw (+ metal cabinet)

``N`` (``distance_exponent``), ``Lw`` (``wall_loss_db``) and the floor loss
``Lf`` per floor (``floor_loss_db``) are ``lab.yaml`` ``han.bands`` values
(defaults: P.1238-7 Table 2, N = 30 at 2.4 GHz office / 28 residential;
wall and floor losses of the multi-wall model, COST 231 final report
section 4.7).  The received power is then::

    RSSI = tx_power_dbm - L - attenuator_dB

The RF path's attenuator (a bench instrument) is in series with the modelled
premises, so stepping it moves the link towards and past sensitivity, as on a
real bench.

Bit errors follow the IEEE 802.15.4 O-QPSK/DSSS expression (802.15.4-2006
annex E, also 802.15.2)::

    BER = 8/15 x 1/16 x sum_{k=2..16} (-1)^k C(16,k) exp(20 SINR (1/k - 1))

with the noise floor placed so that a frame of 20 octets at the band's
``sensitivity_dbm`` has a 1 % packet error rate: the definition of receiver
sensitivity in 802.15.4-2006 section 6.5.3.3.  PER = 1 - (1 - BER)^bits.

LQI is implementation-defined (802.15.4 section 6.9.8, "at least eight
unique values"); the rig uses the energy-detect mapping common to SoC
stacks: 0 at 3 dB below sensitivity, 255 at 40 dB above, linear between,
scaled by the chance the frame is received.

Coverage (HAN-3): with log-normal shadowing of ``shadow_sigma_db`` across
premises, the share of premises where the link closes is
``Phi(margin / sigma)``.

Example::

    from rig.config import BandModel, Premises
    budget = link_budget(band, Premises(distance_m=8, walls=2), attenuation_db=10)
    budget.rssi, budget.lqi, budget.per
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .config import BandModel, Premises

#: octets of the 802.15.4 sensitivity definition (6.5.3.3)
SENSITIVITY_PSDU_OCTETS = 20
#: a receiver does not even detect a frame this far below its sensitivity
DETECTION_BELOW_SENSITIVITY_DB = 6.0
LQI_FLOOR_DB = -3.0
LQI_SATURATION_DB = 40.0

#: PHY synchronisation header + PHY header, octets (802.15.4 6.3)
PHY_OVERHEAD_OCTETS = 6
#: MAC header and FCS, NWK header, NWK auxiliary security header and MIC, APS
#: header of a secured ZigBee SE data frame, octets
STACK_OVERHEAD_OCTETS = 11 + 8 + 14 + 4 + 8
MAX_PSDU_OCTETS = 127
ACK_PSDU_OCTETS = 5
#: 802.15.4 constants in symbols: unit backoff, turnaround, ACK wait
UNIT_BACKOFF_SYMBOLS = 20
TURNAROUND_SYMBOLS = 12
ACK_WAIT_SYMBOLS = 54
MIN_BE, MAX_BE = 3, 5


def path_loss_db(band: BandModel, premises: Premises) -> float:
    """Median indoor path loss of the premises on this band (P.1238 + walls)."""
    d = max(premises.distance_m, 0.1)
    loss = 20 * math.log10(band.frequency_mhz) + band.distance_exponent * math.log10(d) - 28.0
    loss += premises.floors * band.floor_loss_db + premises.walls * band.wall_loss_db
    if premises.metal_cabinet:
        loss += band.metal_cabinet_loss_db
    return loss


def ber(sinr_db: float) -> float:
    """Bit error rate of 802.15.4 O-QPSK with 16-ary DSSS at this SINR."""
    sinr = 10 ** (sinr_db / 10)
    total = 0.0
    for k in range(2, 17):
        total += (-1) ** k * math.comb(16, k) * math.exp(20 * sinr * (1.0 / k - 1.0))
    return min(0.5, max(0.0, (8.0 / 15.0) * (1.0 / 16.0) * total))


def per_at(sinr_db: float, psdu_octets: int) -> float:
    return 1.0 - (1.0 - ber(sinr_db)) ** (8 * psdu_octets)


@lru_cache(maxsize=None)
def _sinr_at_sensitivity() -> float:
    """SINR (dB) at which a 20-octet frame sees 1 % PER (bisection)."""
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if per_at(mid, SENSITIVITY_PSDU_OCTETS) > 0.01:
            lo = mid
        else:
            hi = mid
    return hi


def noise_floor_dbm(band: BandModel) -> float:
    return band.sensitivity_dbm - _sinr_at_sensitivity()


def symbol_seconds(band: BandModel) -> float:
    """O-QPSK carries 4 bits per symbol (250 kb/s: 16 us; 100 kb/s: 40 us)."""
    return 4.0 / (band.data_rate_kbps * 1000.0)


def air_time(band: BandModel, psdu_octets: int) -> float:
    """Seconds on air for one PPDU of ``psdu_octets``."""
    return (psdu_octets + PHY_OVERHEAD_OCTETS) * 8.0 / (band.data_rate_kbps * 1000.0)


def fragments(payload_octets: int) -> list[int]:
    """PSDU sizes of the frames an APS payload needs (APS fragmentation)."""
    room = MAX_PSDU_OCTETS - STACK_OVERHEAD_OCTETS
    sizes = []
    left = max(payload_octets, 1)
    while left > 0:
        take = min(room, left)
        sizes.append(take + STACK_OVERHEAD_OCTETS)
        left -= take
    return sizes


@dataclass(frozen=True)
class LinkBudget:
    """One direction of one link at one instant."""

    band: str
    path_loss_db: float
    attenuation_db: float
    rx_dbm: float
    margin_db: float          # above sensitivity
    sinr_db: float

    @property
    def detected(self) -> bool:
        return self.margin_db > -DETECTION_BELOW_SENSITIVITY_DB

    @property
    def rssi(self) -> float | None:
        """What the receiver reports (whole dBm), None if it hears nothing."""
        return float(round(self.rx_dbm)) if self.detected else None

    def per(self, psdu_octets: int = SENSITIVITY_PSDU_OCTETS) -> float:
        return per_at(self.sinr_db, psdu_octets)

    def lqi(self, psdu_octets: int = 64) -> int:
        if not self.detected:
            return 0
        span = LQI_SATURATION_DB - LQI_FLOOR_DB
        energy = min(1.0, max(0.0, (self.margin_db - LQI_FLOOR_DB) / span))
        return int(round(255 * energy * (1.0 - self.per(psdu_octets))))


def link_budget(band_name: str, band: BandModel, premises: Premises, attenuation_db: float = 0.0) -> LinkBudget:
    loss = path_loss_db(band, premises)
    rx = band.tx_power_dbm - loss - attenuation_db
    return LinkBudget(
        band=band_name, path_loss_db=loss, attenuation_db=attenuation_db, rx_dbm=rx,
        margin_db=rx - band.sensitivity_dbm, sinr_db=rx - noise_floor_dbm(band),
    )


def max_attenuation_db(band: BandModel, premises: Premises, per_limit: float = 0.5,
                       psdu_octets: int = 64) -> float:
    """The attenuator setting at which a frame's PER reaches ``per_limit``:
    where the link drops for this premises (useful to plan an attenuation
    sweep)."""
    lo, hi = -60.0, 200.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if link_budget("", band, premises, mid).per(psdu_octets) < per_limit:
            lo = mid
        else:
            hi = mid
    return lo


def coverage(band: BandModel, premises: Premises) -> float:
    """Share of premises like this one where the link closes (margin > 0),
    with log-normal shadowing of ``shadow_sigma_db`` (HAN-3)."""
    margin = link_budget("", band, premises).margin_db
    if band.shadow_sigma_db <= 0:
        return 1.0 if margin > 0 else 0.0
    return 0.5 * (1.0 + math.erf(margin / (band.shadow_sigma_db * math.sqrt(2))))
