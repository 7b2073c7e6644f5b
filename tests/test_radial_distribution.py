"""Radial distribution functions (diagnostics.RadialDistribution) and their place in the NVE ensembles and report."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from matplotlib.image import imread

from openmm_actionml.diagnostics import RadialDistribution
from openmm_actionml.ensemble import EnsembleOptions, equilibrated_starts, run_ensemble
from openmm_actionml.errors import InputError
from openmm_actionml.evaluate import verlet_candidate
from openmm_actionml.report import markdown_table, plot, rdf_deviation
from openmm_actionml.systems import water_box

BOX = np.diag([2.0, 2.5, 3.0])


@pytest.mark.parametrize("pair", ["O-O", "O-H"])
def test_an_ideal_gas_has_g_of_one(pair):
    """Uniform independent positions: every bin's g is 1 within five standard errors of its count. A bin expecting
    E ordered pairs holds a Poisson count of E / 2 unordered pairs, each counted twice, for one atom set (relative
    error sqrt(2 / E)); for two disjoint sets the count is itself Poisson (sqrt(1 / E))."""
    rng = np.random.default_rng(3)
    elements = ["O", "H"] * 100
    rdf = RadialDistribution.of_elements(pair, elements, BOX, bin_width=0.05)
    frames = 200
    counts = sum(rdf.counts(rng.uniform(0.0, 1.0, size=(200, 3)) * np.diag(BOX)) for _ in range(frames))
    g = rdf.normalise(counts, frames)
    shells = 4.0 / 3.0 * np.pi * (rdf.edges[1:] ** 3 - rdf.edges[:-1] ** 3)
    expected = frames * rdf.n_pairs * shells / np.prod(np.diag(BOX))
    relative = np.sqrt((2.0 if pair == "O-O" else 1.0) / expected)
    assert rdf.n_pairs == (100 * 99 if pair == "O-O" else 100 * 100)
    assert rdf.edges[-1] == pytest.approx(1.0) and len(rdf.radii) == 20  # half the shortest edge, 2.0 nm
    assert np.all(np.abs(g - 1.0) < 5 * relative)


def test_pairs_meet_across_the_box_boundary():
    """Two oxygens 0.103 nm apart through the periodic boundary fall in the 0.10-0.11 nm bin, once per order;
    an O-H pair once; an atom never pairs with itself."""
    positions = np.array([[0.052, 1.0, 1.0], [2.0 - 0.051, 1.0, 1.0], [0.052, 1.0 + 0.15, 1.0]])
    oxygens = RadialDistribution.of_elements("O-O", ["O", "O", "H"], BOX)
    counts = oxygens.counts(positions)
    assert counts.sum() == 2 and counts[10] == 2
    mixed = RadialDistribution.of_elements("O-H", ["O", "H", "C"], BOX).counts(positions)
    assert mixed.sum() == 1 and mixed[int(0.103 / 0.01)] == 1


@pytest.mark.parametrize("pair, elements, box, message", [
    ("OO", ["O"], BOX, "two elements joined by '-'"),
    ("O-N", ["O", "H"], BOX, "no N atom"),
    ("O-O", ["O", "O"], BOX + np.array([[0, 0, 0], [0.5, 0, 0], [0, 0, 0]]), "orthorhombic"),
])
def test_bad_requests_are_named(pair, elements, box, message):
    with pytest.raises(InputError, match=message):
        RadialDistribution.of_elements(pair, elements, box)
    with pytest.raises(InputError, match="exceeds half the box"):
        RadialDistribution.of_elements("O-O", ["O", "O"], BOX, bin_width=1.5)


@pytest.fixture(scope="module")
def water():
    box = water_box(64, rigid_water=True, nonbonded_cutoff=0.45)
    starts = equilibrated_starts(box.system, box.positions, 300.0, 2, spacing=0.05, equilibration=0.1,
                                 platform="Reference")
    return box, starts, [atom.element.symbol for atom in box.topology.atoms()]


def test_ensembles_measure_the_rdf_and_keep_it_in_the_cache(tmp_path, water):
    """Liquid water's O-O g(r) from an NVE ensemble: zero inside the first shell (no two oxygens closer than
    0.2 nm at 300 K), a first peak above 2 near 0.28 nm; the same figures when read back from the trajectory
    cache; a g(O-O) column, zero deviation against itself, and rdf.png in the report."""
    box, starts, elements = water
    options = EnsembleOptions(n_trajectories=2, duration=0.1, sample_interval=0.004, reversibility_time=0.02,
                              correlation_time=0.02, rdf="O-O")
    candidate = verlet_candidate("Verlet 2 fs", box.system, 0.002)
    fresh = run_ensemble(candidate, starts, 300.0, options, elements, "Reference", cache_dir=tmp_path / "cache")
    assert fresh.rdf_label == "O-O" and fresh.rdf.shape == fresh.rdf_error.shape == fresh.rdf_radii.shape
    assert np.all(fresh.rdf[fresh.rdf_radii < 0.2] == 0.0)
    peak = int(np.argmax(fresh.rdf))
    assert 0.25 < fresh.rdf_radii[peak] < 0.31 and fresh.rdf[peak] > 2.0
    messages = []
    cached = run_ensemble(candidate, starts, 300.0, options, elements, "Reference", messages.append,
                          tmp_path / "cache")
    assert sum("read from" in line for line in messages) == len(starts)
    np.testing.assert_array_equal(cached.rdf, fresh.rdf)
    plain = run_ensemble(candidate, starts, 300.0, replace(options, rdf=None), elements, "Reference",
                         cache_dir=tmp_path / "cache")
    assert plain.rdf.size == 0 and len(list((tmp_path / "cache").glob("*.npz"))) == 2 * len(starts)
    assert rdf_deviation(fresh, cached)[0] == 0.0
    table = markdown_table([fresh, cached]).splitlines()
    assert "g(O-O) deviation (noise) | at the bath's T (noise) |" in table[0]
    assert "| reference | reference | reference |" in table[2]  # VACF, g(r) and g(r) at the bath's T
    assert [p.name for p in plot([fresh, cached], tmp_path, "test")][-1] == "rdf.png"
    two_panels = imread(tmp_path / "rdf.png").shape[0]  # two trajectories: no curve at the bath's T
    at_temperature = replace(fresh, rdf_at_temperature=fresh.rdf, rdf_at_temperature_error=fresh.rdf_error)
    plot([at_temperature, at_temperature], tmp_path, "test")
    assert imread(tmp_path / "rdf.png").shape[0] / two_panels == pytest.approx((4.5 + 4) / (4.5 + 2), abs=0.01)


def test_an_rdf_needs_a_periodic_box(alanine, water):
    _, starts, _ = water
    elements = [atom.element.symbol for atom in alanine.topology.atoms()]
    options = EnsembleOptions(n_trajectories=2, duration=0.1, sample_interval=0.004, correlation_time=0.02, rdf="O-O")
    with pytest.raises(InputError, match="needs a periodic box"):
        run_ensemble(verlet_candidate("V", alanine.system, 0.002), starts, 300.0, options, elements, "Reference")
