"""The linearised step: exact results for the harmonic oscillator, symplecticity, and the constrained Hessian."""
from __future__ import annotations

import numpy as np
import pytest
import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import openmm as mm

from openmm_actionml.linear_stability import constraint_curvature, force_field_gradient, force_field_hessian, \
    full_turns, harmonic_step, modified_kinetic_coefficient, phase, played_frequencies, projected, \
    sampled_variance_ratio, stability_interval, step_matrix, unstable_bands, vibration_basis
from openmm_actionml.errors import InputError
from openmm_actionml.platforms import create_context
from openmm_actionml.splitting import SPLITTINGS, Splitting, Stage, towards_substeps
from openmm_actionml.systems import particle_masses

RESOLUTION = 1e-4
#: Grid of the band scans: finer than the narrowest band tested (0.008 wide, T3 a tenth of the way to substeps).
BAND_RESOLUTION = 1e-3


def test_verlet_stability_interval_and_phase_are_the_textbook_ones():
    """Velocity Verlet on w: stable for h w < 2, with cos(theta) = 1 - (h w)^2 / 2."""
    assert stability_interval(SPLITTINGS["VV"], RESOLUTION) == pytest.approx(2.0, abs=RESOLUTION)
    h, omega = 0.002, np.array([100.0, 300.0, 900.0, 1100.0])  # rad/ps; the last has h w = 2.2 > 2
    played = played_frequencies(SPLITTINGS["VV"], h, [np.diag(omega ** 2)])
    expected = np.arccos(1 - (h * omega[:3]) ** 2 / 2) / h
    assert np.allclose(played[:3], expected, rtol=1e-12) and np.isnan(played[3])


def test_t3_turns_a_mode_up_to_a_full_turn_without_aliasing():
    """T3's phase is continuous and increasing across its whole stability interval, from h w at short steps to a
    full turn at the interval's end, through half a turn (where arccos alone would fold it back); the full step
    matrix's eigenphases (positive Krein signature) agree with the decoupled modes' past half a turn."""
    splitting = SPLITTINGS["T3"]
    end = stability_interval(splitting, RESOLUTION)
    x = np.linspace(1e-3, end - RESOLUTION, 20001)
    theta = phase(splitting, x)
    assert np.isfinite(theta).all() and (np.diff(theta) > 0).all() and np.diff(theta).max() < 0.05  # no jump
    assert theta[0] == pytest.approx(x[0], rel=1e-6) and theta[-1] > 1.5 * np.pi
    assert np.trace(harmonic_step(splitting, end + RESOLUTION)) >= 2.0  # the interval ends at a full turn
    omega = np.array([1.0, 3.5, 4.3])  # rad/ps at h = 1 ps: the last two past half a turn
    heads = [np.diag(omega ** 2), np.diag(omega ** 2) * (1 + 1e-12)]  # not equal, so the full matrix is used
    assert np.allclose(played_frequencies(splitting, 1.0, heads), phase(splitting, omega), rtol=1e-8)


def test_three_verlet_steps_turn_a_mode_by_one_and_a_half_turns():
    """Three velocity-Verlet steps of h / 3 as one splitting play theta = 6 arcsin(h w / 6), counted through the full
    turn at h w = 3 sqrt(3) and up to three half turns at the stability bound 2 s = 6; T3's second window (h w
    6.10-6.42) lies a full turn on from its first."""
    third = 1.0 / 3.0
    three_verlet = Splitting("VV x 3", (Stage("kick", third / 2), Stage("drift", third), Stage("kick", third),
                                        Stage("drift", third), Stage("kick", third), Stage("drift", third),
                                        Stage("kick", third / 2)))
    x = np.array([0.5, 2.0, 4.0, 5.19, 5.2, 5.5, 5.9])  # not 3, where the step is exactly -1 (|A| = 1)
    assert np.allclose(phase(three_verlet, x), 6.0 * np.arcsin(x / 6.0), rtol=1e-10)
    # located where arccos of a cosine near 1 resolves the phase, sqrt(2 * 1e-16) ~ 1e-8
    assert full_turns(three_verlet) == pytest.approx([3.0 * np.sqrt(3.0)], abs=1e-7)
    second_window = phase(SPLITTINGS["T3"], np.array([6.15, 6.3, 6.4]))
    assert (second_window > 2 * np.pi).all() and (np.diff(second_window) > 0).all()


def test_t3_moved_all_the_way_to_equal_substeps_is_three_verlet_steps():
    """towards_substeps(T3, 1) is velocity Verlet at h / 3 taken three times: its harmonic step is the cube of
    Verlet's at h w / 3, to round-off; fraction 0 is T3 itself, and a fraction outside [0, 1] is refused."""
    blended = towards_substeps(SPLITTINGS["T3"], 1.0)
    for x in (0.7, 3.3, 5.6):
        cube = np.linalg.matrix_power(harmonic_step(SPLITTINGS["VV"], x / 3.0), 3)
        assert np.allclose(harmonic_step(blended, x), cube, rtol=0, atol=1e-13)
    assert towards_substeps(SPLITTINGS["T3"], 0.0) == SPLITTINGS["T3"]
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        towards_substeps(SPLITTINGS["T3"], 1.5)


def test_unstable_bands_are_where_the_half_trace_leaves_the_unit_interval():
    """Each band's inside has |A| > 1 and the grid points just outside it |A| <= 1; T3's first band begins where
    stability_interval ends; S2 has its gap between its two windows."""
    for splitting in (SPLITTINGS["T3"], SPLITTINGS["S2"], towards_substeps(SPLITTINGS["T3"], 0.5)):
        bands = unstable_bands(splitting, resolution=BAND_RESOLUTION)
        assert bands
        for start, end in bands:
            inside = np.linspace(start, end, 5)
            assert all(abs(harmonic_step(splitting, x)[0, 0]) > 1.0 for x in inside)
            for outside in (start - BAND_RESOLUTION, end + BAND_RESOLUTION):
                if BAND_RESOLUTION / 2 < outside < 2.0 * splitting.evaluations_per_step:
                    assert abs(harmonic_step(splitting, outside)[0, 0]) <= 1.0
    assert unstable_bands(SPLITTINGS["T3"], resolution=BAND_RESOLUTION)[0][0] == pytest.approx(
        stability_interval(SPLITTINGS["T3"], RESOLUTION), abs=2 * BAND_RESOLUTION)
    (gap,) = unstable_bands(SPLITTINGS["S2"], upto=3.5, resolution=BAND_RESOLUTION)
    assert gap[0] < 2.6 and gap[1] > 3.2


def test_t3_closes_the_gap_at_half_a_turn_that_its_blends_with_equal_substeps_open():
    """At half a turn per step a palindrome's A reaches -1. T3's coefficients make that a double root (A + 1 >= 0
    to the coefficients' 14 digits, no band), as do equal Verlet substeps, whose step is a power of a shorter
    one; every blend in between dips below -1 there: a band of parametric resonance with the step's period. So does
    T3 itself once its outer and middle kicks see stiffnesses 1 % apart, of either sign."""
    def lowest_half_trace(splitting: Splitting) -> tuple[float, float]:
        """Where A is lowest between h w = 2.9 and 3.1, and that A (ternary search: A is unimodal there)."""
        low, high = 2.9, 3.1
        for _ in range(200):
            first, second = low + (high - low) / 3, high - (high - low) / 3
            if harmonic_step(splitting, first)[0, 0] < harmonic_step(splitting, second)[0, 0]:
                high = second
            else:
                low = first
        return low, harmonic_step(splitting, low)[0, 0]

    assert lowest_half_trace(SPLITTINGS["T3"])[1] == pytest.approx(-1.0, abs=1e-12)
    assert not any(start < 4.0 for start, _ in unstable_bands(SPLITTINGS["T3"], resolution=BAND_RESOLUTION))
    assert not unstable_bands(towards_substeps(SPLITTINGS["T3"], 1.0), upto=5.9, resolution=BAND_RESOLUTION)
    for fraction in (0.1, 0.5, 0.9):
        blend = towards_substeps(SPLITTINGS["T3"], fraction)
        start, end = unstable_bands(blend, resolution=BAND_RESOLUTION)[0]
        half_turn, lowest = lowest_half_trace(blend)
        assert lowest < -1.0 - 1e-6 and start < half_turn < end < 3.1
    for difference in (0.01, -0.01):
        heads = [np.ones((1, 1)), np.full((1, 1), 1.0 + difference)]
        lowest = min(step_matrix(SPLITTINGS["T3"], v, heads)[0, 0] for v in np.linspace(2.9, 3.05, 3001))
        assert lowest < -1.0 - 1e-6


def test_verlet_samples_positions_wider_by_the_textbook_factor():
    """Velocity Verlet conserves v^2 + w^2 (1 - (h w)^2 / 4) q^2, so at on-step velocity variance kT its positions
    spread 1 / (1 - (h w)^2 / 4) times the exact kT / w^2; unstable steps give NaN."""
    for x in (0.1, 0.8, 1.14, 1.9):
        assert sampled_variance_ratio(SPLITTINGS["VV"], x) == pytest.approx(1.0 / (1.0 - x * x / 4.0), rel=1e-12)
    assert np.isnan(sampled_variance_ratio(SPLITTINGS["VV"], 2.1))


def test_every_splitting_keeps_its_sampled_gaussian_and_is_exact_for_short_steps():
    """The Gaussian with covariance diag(ratio, 1) (w = 1, kT = 1) is invariant under each stable step,
    M S M^T = S, and the ratio tends to 1 as h w -> 0 at second order at most."""
    for splitting in SPLITTINGS.values():
        for x in (0.05, 0.5, 1.5):
            ratio = sampled_variance_ratio(splitting, x)
            matrix = harmonic_step(splitting, x)
            covariance = np.diag([ratio, 1.0])
            assert np.allclose(matrix @ covariance @ matrix.T, covariance, rtol=1e-12, atol=1e-12)
        assert abs(sampled_variance_ratio(splitting, 1e-3) - 1.0) < 1e-6


def test_the_modified_energy_generates_the_step():
    """The step is the flow over h w = x of the modified energy: expm(x J S) with S = diag(w~^2 a, a), where a is
    the kinetic coefficient and w~^2 a / a the sampled position ratio's inverse, gives the step matrix back (every
    splitting, stable x); for velocity Verlet a = theta / (x sqrt(1 - x^2 / 4)) with theta = 2 arcsin(x / 2); a -> 1
    as x -> 0; NaN where unstable."""
    def expm(matrix: np.ndarray) -> np.ndarray:
        return torch.linalg.matrix_exp(torch.as_tensor(matrix, dtype=torch.float64)).numpy()

    j = np.array([[0.0, 1.0], [-1.0, 0.0]])
    for splitting in SPLITTINGS.values():
        for x in (0.3, 1.0, 1.7):
            a = modified_kinetic_coefficient(splitting, x)
            s = np.diag([a / sampled_variance_ratio(splitting, x), a])
            assert np.allclose(expm(x * j @ s), harmonic_step(splitting, x), rtol=1e-10, atol=1e-12)
        assert abs(modified_kinetic_coefficient(splitting, 1e-3) - 1.0) < 1e-6
    for x in (3.5, 4.3):  # T3 past half a turn: the same energy, not the negative one of the aliased 2 pi - theta
        a = modified_kinetic_coefficient(SPLITTINGS["T3"], x)
        s = np.diag([a / sampled_variance_ratio(SPLITTINGS["T3"], x), a])
        assert a > 0.0 and np.allclose(expm(x * j @ s), harmonic_step(SPLITTINGS["T3"], x), rtol=1e-10, atol=1e-12)
    for x in (0.5, 1.5, 1.9):
        theta = 2.0 * np.arcsin(x / 2.0)
        assert modified_kinetic_coefficient(SPLITTINGS["VV"], x) == pytest.approx(
            theta / (x * np.sqrt(1.0 - x * x / 4.0)), rel=1e-12)
    assert np.isnan(modified_kinetic_coefficient(SPLITTINGS["VV"], 2.1))


def test_every_splitting_step_is_symplectic_and_at_least_as_stable_as_verlet():
    """Each palindromic step matrix with symmetric kick Hessians is symplectic: M^T Omega M = Omega."""
    rng = np.random.default_rng(0)
    d = 5
    for splitting in SPLITTINGS.values():
        kicks = []
        for _ in range(splitting.n_heads):
            a = rng.normal(size=(d, d))
            kicks.append(a @ a.T * 1e4)
        matrix = step_matrix(splitting, 0.002, kicks)
        omega = np.block([[np.zeros((d, d)), np.eye(d)], [-np.eye(d), np.zeros((d, d))]])
        assert np.abs(matrix.T @ omega @ matrix - omega).max() < 1e-10 * np.abs(matrix).max() ** 2
        assert stability_interval(splitting, RESOLUTION) >= 2.0 - RESOLUTION


def test_constrained_minimum_has_a_positive_hessian_only_with_the_constraint_curvature(alanine_hbonds):
    """At a constrained minimum the Hessian on the manifold is positive semi-definite; it is P(H - sum lambda
    d2 sigma)P, and dropping the multipliers' term (the constraint forces holding the bonds) reads it as a saddle."""
    system = alanine_hbonds.system
    context = create_context(system, mm.VerletIntegrator(0.001), "Reference")
    context.setPositions(alanine_hbonds.positions)
    mm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    positions = np.array(context.getState(getPositions=True).getPositions(asNumpy=True)._value)
    masses = particle_masses(system)
    basis = vibration_basis(system, positions, masses)
    assert basis.shape[1] == 3 * 22 - 12 - 6
    hessian = force_field_hessian(system, positions)
    curvature = constraint_curvature(system, positions, force_field_gradient(system, positions))
    with_term = np.linalg.eigvalsh(projected(hessian - curvature, masses, basis))
    without = np.linalg.eigvalsh(projected(hessian, masses, basis))
    # Tolerance: the minimiser's residual gradient (1e-3 kJ/mol/nm) over the lightest mass-weighted length scale.
    print(with_term.min(), without.min())
    assert with_term.min() > -1.0 and without.min() < -100.0
