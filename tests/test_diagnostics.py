"""Translational and rotational temperature of rigid water: exact for rigid-body velocities, and reported by the
ensemble summary where per-atom temperatures say little."""
from __future__ import annotations

import numpy as np
import pytest

from openmm_actionml.diagnostics import energy_displacements, energy_growth, rigid_molecule_temperatures, \
    rigid_triatomics
from openmm_actionml.ensemble import EnsembleOptions, summarise_ensemble
from openmm_actionml.systems import constraint_pairs, particle_masses, water_box
from openmm_actionml.units import BOLTZMANN

WATER_MASSES = np.array([15.999, 1.008, 1.008])


def rigid_waters(count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions ``[count * 3, 3]`` (nm) of randomly placed and oriented TIP3P-shaped waters (O first)."""
    geometry = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0],
                         [0.09572 * np.cos(np.radians(104.52)), 0.09572 * np.sin(np.radians(104.52)), 0.0]])
    rotations = np.linalg.qr(rng.normal(size=(count, 3, 3)))[0]
    return (geometry @ rotations.transpose(0, 2, 1) + rng.uniform(0, 3, size=(count, 1, 3))).reshape(-1, 3)


def rigid_body_velocities(positions: np.ndarray, translation: np.ndarray, angular: np.ndarray) -> np.ndarray:
    """``v_i = V + omega x (r_i - R)`` per molecule: ``translation`` and ``angular`` are ``[..., M, 3]``."""
    r = positions.reshape(-1, 3, 3)
    centre = (WATER_MASSES[:, None] * r).sum(1, keepdims=True) / WATER_MASSES.sum()
    spin = np.cross(angular[..., :, None, :], r - centre)
    return (translation[..., :, None, :] + spin).reshape(*translation.shape[:-2], -1, 3)


def test_rigid_triatomics_are_the_rigid_waters_only(alanine_hbonds):
    box = water_box(8, rigid_water=True, nonbonded_cutoff=0.3)
    molecules = rigid_triatomics(constraint_pairs(box.system))
    elements = np.array([atom.element.symbol for atom in box.topology.atoms()])
    assert molecules.shape == (8, 3)
    assert sorted(elements[molecules].reshape(-1).tolist()) == ["H"] * 16 + ["O"] * 8
    # HBonds chains (a methyl's three C-H bonds share C but no H-H constraint) are not rigid molecules.
    assert rigid_triatomics(constraint_pairs(alanine_hbonds.system)).shape == (0, 3)
    assert rigid_triatomics(None).shape == (0, 3)


def test_rigid_body_kinetic_energy_splits_into_translation_and_rotation():
    """For v_i = V + omega x (r_i - R), twice the kinetic energy is M |V|^2 + omega^T I omega exactly."""
    rng = np.random.default_rng(0)
    positions = rigid_waters(5, rng)
    translation, angular = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) * 20.0
    velocities = rigid_body_velocities(positions, translation, angular)
    molecules = np.arange(15).reshape(5, 3)
    masses = np.tile(WATER_MASSES, 5)
    r = positions.reshape(5, 3, 3) - (WATER_MASSES[:, None] * positions.reshape(5, 3, 3)).sum(1, keepdims=True) / 18.015
    inertia = np.einsum("k,mkx,mky->mxy", WATER_MASSES, r, r)
    inertia = np.einsum("mkk->m", inertia)[:, None, None] * np.eye(3) - inertia
    twice_rotation = np.einsum("mx,mxy,my->", angular, inertia, angular)
    twice_translation = WATER_MASSES.sum() * (translation ** 2).sum()
    for remove_com, translation_dof in ((False, 15.0), (True, 12.0)):
        temperatures = rigid_molecule_temperatures(velocities, masses, molecules, remove_com)
        assert temperatures["translation"] * BOLTZMANN * translation_dof == pytest.approx(twice_translation, rel=1e-12)
        assert temperatures["rotation"] * BOLTZMANN * 15.0 == pytest.approx(twice_rotation, rel=1e-12)


def test_ensemble_summary_reports_water_translation_and_rotation():
    """Rigid waters with Maxwell-Boltzmann translation and rotation at 300 K: the summary gives both near 300 K,
    within five standard errors of a temperature estimated from n degrees of freedom (sqrt(2 / n) relative)."""
    rng = np.random.default_rng(1)
    box = water_box(64, rigid_water=True, nonbonded_cutoff=0.45)
    masses, constraints = particle_masses(box.system), constraint_pairs(box.system)
    positions = box.positions.value_in_unit(box.positions.unit)
    molecules = rigid_triatomics(constraints)
    assert (np.sort(molecules, 1) == np.arange(192).reshape(64, 3)).all()  # O, H, H in order in this box
    r = np.asarray(positions).reshape(64, 3, 3)
    r = r - (WATER_MASSES[:, None] * r).sum(1, keepdims=True) / WATER_MASSES.sum()
    inertia = np.einsum("k,mkx,mky->mxy", WATER_MASSES, r, r)
    inertia = np.einsum("mkk->m", inertia)[:, None, None] * np.eye(3) - inertia
    kT, samples = BOLTZMANN * 300.0, 400
    translation = rng.normal(size=(2, samples, 64, 3)) * np.sqrt(kT / WATER_MASSES.sum())
    root = np.linalg.cholesky(np.linalg.inv(inertia))  # omega ~ N(0, kT I^-1)
    angular = np.einsum("mxy,...my->...mx", root, rng.normal(size=(2, samples, 64, 3))) * np.sqrt(kT)
    translation -= translation.mean(-2, keepdims=True)  # no centre-of-mass motion, as in the ensembles
    velocities = rigid_body_velocities(np.asarray(positions), translation, angular)
    times = np.arange(samples) * 0.01
    result = summarise_ensemble("rigid water", 0.002, times, np.zeros((2, samples)), velocities,
                                np.ones(2, dtype=bool), masses, constraints,
                                [atom.element.symbol for atom in box.topology.atoms()], 300.0,
                                EnsembleOptions(n_trajectories=2, duration=times[-1], correlation_time=0.05),
                                float("nan"), float("nan"), float("nan"))
    for key, dof in (("translation", 3 * 64 - 3), ("rotation", 3 * 64)):
        mean, _ = result.element_temperatures[key]
        assert mean == pytest.approx(300.0, rel=5 * np.sqrt(2.0 / (dof * 2 * samples)))
        assert len(result.element_series[key]) == samples


def test_energy_displacements_of_a_line_are_exact():
    times = np.arange(101) * 0.01
    energies = np.stack([2.0 * times, -3.0 * times])
    mean, square = energy_displacements(energies, 10)
    assert np.allclose(mean, [0.2, -0.3]) and np.allclose(square, [0.04, 0.09])
    with pytest.raises(ValueError, match="lag must be between 1 and 100"):
        energy_displacements(energies, 101)


def test_energy_growth_tells_a_random_walk_from_a_push():
    """A walk dE = (D / kT) dt + sqrt(2 D) dW (the entropic drift of a symmetric walk) has a walk share of 1 in
    expectation; a steady push with the same mean and a bounded fluctuation has a variance that does not grow, a
    share of 0. Tolerance: five bootstrap standard errors, which must be small enough to tell the two apart."""
    rng = np.random.default_rng(4)
    temperature, D, dt = 300.0, 2.0, 0.01  # D in (kJ/mol)^2/ps
    kT = BOLTZMANN * temperature
    times = np.arange(1001) * dt
    walk = np.cumsum(np.concatenate([np.zeros((256, 1)), D / kT * dt + np.sqrt(2 * D * dt)
                                     * rng.standard_normal((256, 1000))], 1), 1)
    growth = energy_growth(times, walk, temperature, burn_in=0.2)
    assert abs(growth.walk_share - 1.0) < 5 * growth.walk_share_error < 0.5
    assert growth.variance[-1] == pytest.approx(2 * D * growth.lags[-1], rel=0.2)
    push = D / kT * times + 0.3 * rng.standard_normal((256, len(times)))
    pushed = energy_growth(times, push, temperature, burn_in=0.2)
    assert abs(pushed.walk_share) < 5 * pushed.walk_share_error < 0.5
    unstable = walk.copy()
    unstable[0, -1] = np.nan  # left out, not propagated
    assert np.isfinite(energy_growth(times, unstable, temperature, burn_in=0.2).walk_share)
