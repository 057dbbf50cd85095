"""The coverage study (rig/coverage.py) and the built-in property library
(rig/data/property_types.yaml): HAN-3, HAN-5, HAN-8."""

from __future__ import annotations

import math
from importlib import resources
import random

import pytest

from rig.coverage import (
    LibraryError, load_library, loss_for_share, median_loss_db, share_served, study,
)


@pytest.fixture(scope="module")
def library():
    return load_library()


def test_builtin_library_is_complete_and_cited(library):
    assert set(library.bands) == {"2.4GHz", "868MHz"}
    assert library.published["2.4GHz"].share == 0.70 and library.published["868MHz"].share == 0.95
    weights = library.weights()
    assert math.isclose(sum(weights.values()), 1.0)
    names = {t.label for t in library.property_types.values()}
    assert {"detached", "semi-detached", "terraced", "flat (low-rise)", "flat (high-rise)",
            "meter in basement", "meter in metal cupboard"} <= names
    for name, ptype in library.property_types.items():
        assert ptype.weight_source in library.sources, name
        assert "ihd" in ptype.links, name                        # every premises has a display (HAN-5)
    # HAN-8: the high-rise share is the seed's 350,000 over the GB stock
    assert weights["high-rise-flat"] == pytest.approx(350_000 / 26.4e6, rel=0.05)
    for text in library.sources.values():
        assert text.strip()


def test_walls_floors_and_cabinets_cost_more_at_2g4_than_at_868(library):
    for ptype in library.property_types.values():
        for link in ptype.links.values():
            assert median_loss_db(library.bands["2.4GHz"], link) > median_loss_db(library.bands["868MHz"], link)


def test_share_served_bounds_and_monte_carlo():
    margins = [0.8, -0.3]
    independent, correlated = share_served(margins, 0.0), share_served(margins, 1.0)
    phi = [0.5 * (1 + math.erf(a / math.sqrt(2))) for a in margins]
    assert independent == pytest.approx(phi[0] * phi[1]) and correlated == pytest.approx(min(phi))
    half = share_served(margins, 0.5)
    assert independent < half < correlated                     # HAN-5: correlation raises the joint share
    rng, n, hits = random.Random(5), 40_000, 0
    for _ in range(n):
        z = rng.gauss(0, 1)
        x = [math.sqrt(0.5) * z + math.sqrt(0.5) * rng.gauss(0, 1) for _ in margins]
        hits += all(xi < a for xi, a in zip(x, margins))
    assert half == pytest.approx(hits / n, abs=0.01)


def test_study_follows_the_measured_budget(library):
    low, mid, high = (study(library, "2.4GHz", mapl).share for mapl in (60.0, 107.0, 200.0))
    assert low < 0.05 and 0.3 < mid < 0.99 and high > 0.999
    s = study(library, "2.4GHz", 107.0)
    for t in s.types:
        assert t.share_independent <= t.share + 1e-9 <= t.share_correlated + 2e-9
    assert s.weakest().label == "flat (high-rise)"              # HAN-8: the hardest premises
    assert s.link_share("gas") is not None and s.link_share("nothing") is None


def test_loss_for_share_reproduces_the_target(library):
    extra = loss_for_share(library, "2.4GHz", 107.0, 0.70)
    assert extra > 0                                            # the published 70 % needs more loss than the model
    assert study(library, "2.4GHz", 107.0, extra).share == pytest.approx(0.70, abs=0.005)
    with pytest.raises(ValueError, match="between 0 and 1"):
        loss_for_share(library, "2.4GHz", 107.0, 1.2)


def test_a_bad_library_names_file_line_and_key(tmp_path):
    good = (resources.files("rig") / "data" / "property_types.yaml").read_text()
    bad = tmp_path / "lib.yaml"
    bad.write_text(good.replace("    spread_db: 4\n", "    spreed_db: 4\n", 1))
    with pytest.raises(LibraryError, match=r"lib\.yaml:\d+: property_types\.detached\.spreed_db: unknown key"):
        load_library(bad)
    bad.write_text(good.replace("weight_source: ehs", "weight_source: nowhere", 1))
    with pytest.raises(LibraryError, match="unknown source 'nowhere'"):
        load_library(bad)
    with pytest.raises(LibraryError, match="not found"):
        load_library(tmp_path / "missing.yaml")
