"""The HAN coverage study (HAN-3, HAN-5, HAN-8): what share of GB premises
a band serves, from a bench's *measured* link budget and a library of GB
property types.

The bench gives, per band, the largest path loss its radios tolerate (the
maximum path loss, MAPL): the devices' transmit power minus the RSSI at
which the attenuation sweep found the link edge (packet error rate at its
threshold).  The library (``rig/data/property_types.yaml``, or a lab's own
file: lab.yaml ``suites.propagation.property_library``) gives, per property
type, its share of the housing stock and the radio paths from the
electricity meter (where the comms hub sits) to the gas meter, the in-home
display and the PPMID: distance, internal and external walls, floors, a
metal meter cabinet.  Each path's median loss is the ITU-R P.1238 indoor
model with the multi-wall terms (:func:`rig.propagation.path_loss_db`,
the same formula as the simulated HAN, with the library's own per-band
values) plus the external walls; premises of a type scatter around that
median log-normally (shadowing and the spread of house sizes).

A premises is *served* when every link the library names in
``study.served_when`` closes (by default meter -> gas meter and meter ->
IHD).  HAN-5: the published figures assume those two links correlate; the
study takes a correlation coefficient from the library and also reports
the two bounds (independent links, fully correlated links).

Example::

    from rig.coverage import load_library, study

    library = load_library()                         # the built-in GB library
    result = study(library, "868MHz", max_path_loss_db=123.0)
    result.share, result.published                   # 0.99, 0.95
    [(t.name, round(t.share, 3)) for t in result.types]

Pure computation: no bus, no bench.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from . import yamlpos
from .config import Premises
from .propagation import path_loss_db

BUILTIN = "builtin"
Band = Literal["2.4GHz", "868MHz"]


class LibraryError(Exception):
    """A property library problem, phrased as ``file:line: key: message``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- the library's schema
class LinkPath(_Strict):
    """One radio path of a property type, from the electricity meter."""

    distance_m: float = Field(..., gt=0)
    walls: int = Field(0, ge=0, description="internal walls crossed")
    external_walls: int = Field(0, ge=0, description="external walls crossed (a meter box outside, say)")
    floors: int = Field(0, ge=0)
    metal_cabinet: bool = Field(False, description="one end in a metal meter cabinet or riser cupboard")


class BandPropagation(_Strict):
    """The library's path-loss values for one band (buildings, not radios)."""

    frequency_mhz: float = Field(..., gt=0)
    distance_exponent: float = Field(..., gt=0, description="ITU-R P.1238 distance power loss coefficient N")
    wall_loss_db: float = Field(..., ge=0)
    external_wall_loss_db: float = Field(..., ge=0)
    floor_loss_db: float = Field(..., ge=0)
    metal_cabinet_loss_db: float = Field(..., ge=0)
    shadow_sigma_db: float = Field(..., ge=0, description="log-normal shadowing between premises of one type")
    source: str = ""


class PropertyType(_Strict):
    label: str
    weight: float = Field(..., ge=0, description="share of the housing stock (normalised over the library)")
    weight_source: str = Field(..., description="a key of `sources`")
    description: str = ""
    spread_db: float = Field(0.0, ge=0, description="spread of path loss between premises of this type (sizes)")
    links: dict[str, LinkPath] = Field(..., min_length=1)


class Published(_Strict):
    share: float = Field(..., gt=0, le=1)
    source: str


class StudySettings(_Strict):
    served_when: list[str] = Field(default_factory=lambda: ["gas", "ihd"], min_length=1)
    link_correlation: float = Field(0.5, ge=0, le=1, description="correlation of one premises' link losses (HAN-5)")
    correlation_source: str = ""


class PropertyLibrary(_Strict):
    schema_: Literal["rig.property_types/1"] = Field(..., alias="schema")
    sources: dict[str, str] = Field(default_factory=dict)
    study: StudySettings = Field(default_factory=StudySettings)
    published: dict[Band, Published] = Field(default_factory=dict)
    bands: dict[Band, BandPropagation]
    property_types: dict[str, PropertyType] = Field(..., min_length=1)
    _file: str = PrivateAttr("<memory>")

    @property
    def file(self) -> str:
        """The file the library came from."""
        return self._file

    def problems(self) -> list[tuple[tuple, str]]:
        """Checks across sections, each as (key path, message)."""
        found: list[tuple[tuple, str]] = []
        for name, ptype in self.property_types.items():
            if ptype.weight_source not in self.sources:
                found.append((("property_types", name, "weight_source"),
                              f"unknown source '{ptype.weight_source}'; sources: {', '.join(self.sources) or 'none'}"))
            if not set(ptype.links) & set(self.study.served_when):
                found.append((("property_types", name, "links"),
                              f"none of the links that decide whether a premises is served "
                              f"(study.served_when: {', '.join(self.study.served_when)})"))
        if sum(t.weight for t in self.property_types.values()) <= 0:
            found.append((("property_types",), "the weights add up to zero"))
        return found

    def weights(self) -> dict[str, float]:
        """Each type's share of the stock, normalised to add up to 1."""
        total = sum(t.weight for t in self.property_types.values())
        return {n: t.weight / total for n, t in self.property_types.items()}


def load_library(where: str | Path = BUILTIN) -> PropertyLibrary:
    """The property library: ``builtin`` (rig/data/property_types.yaml) or a
    YAML file of the same schema.  Raises :class:`LibraryError` naming the
    file, line and key of the first problem."""
    if str(where) == BUILTIN:
        ref = resources.files("rig") / "data" / "property_types.yaml"
        with resources.as_file(ref) as path:
            return _load(path)
    return _load(Path(where))


def _load(path: Path) -> PropertyLibrary:
    if not path.is_file():
        raise LibraryError(f"{path}: property library not found (suites.propagation.property_library)")
    try:
        located = yamlpos.load(path)
    except yamlpos.YamlError as exc:
        raise LibraryError(str(exc)) from None
    try:
        lib = PropertyLibrary.model_validate(located.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = located.resolve(tuple(err["loc"]))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        key = yamlpos.dotted(where) if where else ""
        raise LibraryError(f"{located.file}:{located.line_of(where)}: {key + ': ' if key else ''}{msg}") from None
    for where, msg in lib.problems()[:1]:
        raise LibraryError(f"{located.file}:{located.line_of(where)}: {yamlpos.dotted(where)}: {msg}")
    lib._file = located.file
    return lib


# ----------------------------------------------------------------------------- the model
def median_loss_db(band: BandPropagation, link: LinkPath) -> float:
    """Median path loss of one link of a property type on one band (dB)."""
    premises = Premises(distance_m=link.distance_m, walls=link.walls, floors=link.floors,
                        metal_cabinet=link.metal_cabinet)
    return path_loss_db(band, premises) + link.external_walls * band.external_wall_loss_db  # type: ignore[arg-type]


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def share_served(margins: list[float], correlation: float) -> float:
    """P(every link closes) for links whose margins are given in standard
    deviations (median margin / sigma), with equicorrelated Gaussian
    shadowing of correlation coefficient ``correlation``."""
    if not margins:
        return 1.0
    if correlation >= 1.0:
        return min(_phi(a) for a in margins)
    if correlation <= 0.0:
        return math.prod(_phi(a) for a in margins)
    r, s = math.sqrt(correlation), math.sqrt(1.0 - correlation)
    # integrate over the common component z (Simpson's rule on [-8, 8])
    n, lo, hi = 400, -8.0, 8.0
    h = (hi - lo) / n
    total = 0.0
    for i in range(n + 1):
        z = lo + i * h
        weight = 1 if i in (0, n) else (4 if i % 2 else 2)
        density = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        total += weight * density * math.prod(_phi((a - r * z) / s) for a in margins)
    return min(1.0, max(0.0, total * h / 3))


@dataclass
class TypeResult:
    """One property type on one band."""

    name: str
    label: str
    weight: float
    share: float                                   # served, at the library's correlation
    share_independent: float
    share_correlated: float
    link_losses: dict[str, float] = field(default_factory=dict)   # median loss, dB
    link_shares: dict[str, float] = field(default_factory=dict)   # share where that link alone closes
    sigma_db: float = 0.0


@dataclass
class BandStudy:
    """The study of one band: per type and over the stock."""

    band: str
    max_path_loss_db: float
    correlation: float
    types: list[TypeResult]
    published: float | None = None
    published_source: str = ""

    @property
    def share(self) -> float:
        return sum(t.weight * t.share for t in self.types)

    @property
    def share_independent(self) -> float:
        return sum(t.weight * t.share_independent for t in self.types)

    @property
    def share_correlated(self) -> float:
        return sum(t.weight * t.share_correlated for t in self.types)

    def link_share(self, link: str) -> float | None:
        """Share of the stock where this link alone closes (types that have it)."""
        having = [t for t in self.types if link in t.link_shares]
        total = sum(t.weight for t in having)
        return sum(t.weight * t.link_shares[link] for t in having) / total if total else None

    def weakest(self) -> TypeResult:
        return min(self.types, key=lambda t: t.share)


def study(library: PropertyLibrary, band: str, max_path_loss_db: float, extra_loss_db: float = 0.0) -> BandStudy:
    """Share of the library's premises a band serves when its radios
    tolerate ``max_path_loss_db`` (``extra_loss_db`` is added to every
    link: a fade margin, or to ask what budget a published figure implies)."""
    if band not in library.bands:
        raise LibraryError(f"{library.file}: bands: no path-loss values for {band}")
    bp = library.bands[band]
    rho = library.study.link_correlation
    weights = library.weights()
    results: list[TypeResult] = []
    for name, ptype in library.property_types.items():
        sigma = math.hypot(bp.shadow_sigma_db, ptype.spread_db)
        losses = {k: median_loss_db(bp, link) + extra_loss_db for k, link in ptype.links.items()}
        z = {k: (max_path_loss_db - loss) / sigma if sigma > 0 else math.copysign(40.0, max_path_loss_db - loss)
             for k, loss in losses.items()}
        served = [z[k] for k in library.study.served_when if k in z]
        results.append(TypeResult(
            name=name, label=ptype.label, weight=weights[name],
            share=share_served(served, rho), share_independent=share_served(served, 0.0),
            share_correlated=share_served(served, 1.0),
            link_losses={k: round(v, 2) for k, v in losses.items()},
            link_shares={k: _phi(v) for k, v in z.items()}, sigma_db=round(sigma, 2),
        ))
    pub = library.published.get(band)
    return BandStudy(band, max_path_loss_db, rho, results, pub.share if pub else None, pub.source if pub else "")


def loss_for_share(library: PropertyLibrary, band: str, max_path_loss_db: float, target: float) -> float:
    """The extra loss on every link (dB; negative: a gain) at which the
    study gives ``target``: how far a published figure's conditions are
    from this bench's measured budget and this library."""
    lo, hi = -80.0, 80.0
    if not 0.0 < target < 1.0:
        raise ValueError(f"target share must be between 0 and 1, got {target}")
    for _ in range(50):
        mid = (lo + hi) / 2
        if study(library, band, max_path_loss_db, mid).share > target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 2)
