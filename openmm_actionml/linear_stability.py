"""The linearised step of a splitting at an energy minimum: its stability and the frequencies it plays.

At a minimum with constraints, every scheme-A step is linear in (q, v) to first order: each kick is
``w <- w - c h K_k y`` and each drift ``y <- y + c h w`` in mass-weighted coordinates on the constraint manifold,
with ``K_k`` the projected, mass-weighted Hessian of kick potential ``k`` including the curvature of the constraint
forces (:func:`constraint_curvature`). For a classical splitting all ``K_k`` are the force field's, so the normal
modes decouple and mode ``w`` is stable while ``h w`` stays inside the splitting's stability interval (``|trace| <
2`` of its 2x2 transfer matrix), advancing its phase by ``theta(h w)`` per step instead of ``h w``: ``theta / h``
is the frequency the integrator plays. A learned model's heads add their own Hessians, so its step matrix is built
in full and its eigenphases are compared with the exact ``h w`` in order of frequency.

A stable palindromic step conserves a quadratic form of its own (its modified energy), and a thermostat that keeps
the on-step velocities at ``kT`` then samples positions from that form: for a mode of frequency ``w`` with
``h w = x`` the position variance is ``kT / w^2`` times :func:`sampled_variance_ratio` (``1 / (1 - x^2 / 4)`` for
velocity Verlet), so each mode's mean potential energy is ``kT / 2`` times that ratio. Without a thermostat,
modes that exchange energy share the modified energy instead, in which ``v^2 / 2`` carries the coefficient
:func:`modified_kinetic_coefficient` (above 1 for fast modes): a mode's kinetic temperature read from the step's
velocities is then low by its inverse.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import openmm as mm
import openmm.unit as u
import torch

from .modelfile import ActionMLModel
from .platforms import create_context
from .splitting import Splitting
from .systems import constraint_pairs

#: Central-difference displacement of the Hessian (nm); forces in double precision (Reference).
HESSIAN_DELTA = 1e-5
#: Speed of light in cm/ps: wavenumber (cm^-1) = omega (rad/ps) / (2 pi C).
LIGHT_SPEED = 0.0299792458


def minimised(system: mm.System, positions: u.Quantity | np.ndarray) -> np.ndarray:
    """Positions (nm) at a local minimum, tightly converged, on the Reference platform."""
    context = create_context(system, mm.VerletIntegrator(0.001), "Reference")
    context.setPositions(positions)
    mm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)


def force_field_gradient(system: mm.System, positions: np.ndarray) -> np.ndarray:
    """``dV/dq`` [3N] (kJ/mol/nm) on the Reference platform."""
    context = create_context(system, mm.VerletIntegrator(0.001), "Reference")
    context.setPositions(positions)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    return -forces.reshape(-1)


def force_field_hessian(system: mm.System, positions: np.ndarray) -> np.ndarray:
    """``d2V/dq2`` [3N, 3N] (kJ/mol/nm^2) by central differences of the forces, symmetrised."""
    context = create_context(system, mm.VerletIntegrator(0.001), "Reference")
    flat = positions.reshape(-1)
    hessian = np.empty((len(flat), len(flat)))
    for column in range(len(flat)):
        forces = []
        for sign in (1.0, -1.0):
            displaced = flat.copy()
            displaced[column] += sign * HESSIAN_DELTA
            context.setPositions(displaced.reshape(-1, 3))
            forces.append(context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
                u.kilojoule_per_mole / u.nanometer).reshape(-1))
        hessian[:, column] = -(forces[0] - forces[1]) / (2 * HESSIAN_DELTA)
    return 0.5 * (hessian + hessian.T)


def constraint_jacobian(system: mm.System, positions: np.ndarray) -> np.ndarray:
    """``d sigma_i / dq`` [n_constraints, 3N] for ``sigma_i = |q_i - q_j|^2 / 2``."""
    pairs = constraint_pairs(system)
    jacobian = np.zeros((len(pairs), positions.size))
    for row, (i, j) in enumerate(pairs):
        bond = positions[i] - positions[j]
        jacobian[row, 3 * i:3 * i + 3], jacobian[row, 3 * j:3 * j + 3] = bond, -bond
    return jacobian


def constraint_curvature(system: mm.System, positions: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """``sum_i lambda_i d2 sigma_i`` [3N, 3N] for the constraints ``sigma_i = |q_i - q_j|^2 / 2``, with the
    multipliers that balance ``gradient`` (of the kick potential) across the constraint manifold.

    On the manifold a potential's curvature is ``P (H - sum_i lambda_i d2 sigma_i) P``: at a constrained
    minimum the constraint forces hold the bonds against ``gradient``, and bending the bond direction changes
    them. Leaving the term out reads a minimum as a saddle.
    """
    pairs = constraint_pairs(system)
    curvature = np.zeros((positions.size, positions.size))
    if not len(pairs):
        return curvature
    multipliers = np.linalg.lstsq(constraint_jacobian(system, positions).T, gradient, rcond=None)[0]
    for multiplier, (i, j) in zip(multipliers, pairs):
        for a, b, sign in ((i, i, 1.0), (j, j, 1.0), (i, j, -1.0), (j, i, -1.0)):
            curvature[3 * a:3 * a + 3, 3 * b:3 * b + 3] += sign * multiplier * np.eye(3)
    return curvature


def vibration_basis(system: mm.System, positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Orthonormal basis [3N, d] of the mass-weighted vibrations at ``positions``: orthogonal to the constraint
    gradients and to the six rigid-body motions (a learned potential is invariant to them, but off its own
    minimum its Hessian is not zero along rotations, which would read as a spurious instability)."""
    root = np.sqrt(np.repeat(masses, 3))
    rows = list(constraint_jacobian(system, positions) / root)
    centred = positions - (masses[:, None] * positions).sum(0) / masses.sum()
    for axis in np.eye(3):
        rows.append(np.tile(axis, len(masses)) * root)
        rows.append(np.cross(axis, centred).reshape(-1) * root)
    _, singular, vectors = np.linalg.svd(np.array(rows))
    rank = int((singular > 1e-10 * singular[0]).sum())
    return vectors[rank:].T


def projected(hessian: np.ndarray, masses: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``U^T M^-1/2 H M^-1/2 U``: the mass-weighted Hessian on the tangent space (1/ps^2)."""
    inverse_root = 1.0 / np.sqrt(np.repeat(masses, 3))
    return basis.T @ (inverse_root[:, None] * hessian * inverse_root[None, :]) @ basis


def network_derivatives(model: ActionMLModel, positions: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The gradient [3N] and Hessian [3N, 3N] of each head of the model's learned potential at ``positions``."""
    network = model.network
    dtype = next(network.parameters()).dtype
    x = torch.tensor(positions.reshape(-1), dtype=torch.float64)

    def head_energy(head: int):
        return lambda flat: network(flat.reshape(1, -1, 3).to(dtype), None)[0, head].to(torch.float64)

    n_heads = int(network(x.reshape(1, -1, 3).to(dtype), None).shape[1])
    derivatives = []
    for k in range(n_heads):
        gradient = torch.autograd.functional.jacobian(head_energy(k), x).numpy()
        hessian = torch.autograd.functional.hessian(head_energy(k), x).numpy()
        derivatives.append((gradient, 0.5 * (hessian + hessian.T)))  # float32 round-off breaks the symmetry
    return derivatives


def constrained_stiffness(system: mm.System, positions: np.ndarray, masses: np.ndarray, basis: np.ndarray,
                          terms: Optional[mm.System] = None) -> np.ndarray:
    """The mass-weighted stiffness on ``basis`` of ``terms`` (a System of some of ``system``'s forces; default
    ``system`` itself) at ``positions``: its Hessian less the curvature its gradient has on ``system``'s
    constraints."""
    terms = system if terms is None else terms
    gradient = force_field_gradient(terms, positions)
    return projected(force_field_hessian(terms, positions) - constraint_curvature(system, positions, gradient),
                     masses, basis)


def learned_kick_stiffnesses(model: ActionMLModel, system: mm.System, positions: np.ndarray, masses: np.ndarray,
                             basis: np.ndarray, gradient: np.ndarray, hessian: np.ndarray) -> list[np.ndarray]:
    """The stiffness of each kick of ``model`` (force field, if anchored, plus head ``k``) on ``basis``, with the
    force field's ``gradient`` and raw ``hessian`` at ``positions`` and the constraint curvature of their sum."""
    anchored = float(model.metadata.anchored)
    return [projected(anchored * hessian + extra_hessian
                      - constraint_curvature(system, positions, anchored * gradient + extra_gradient), masses, basis)
            for extra_gradient, extra_hessian in network_derivatives(model, positions)]


def step_matrix(splitting: Splitting, h: float, kick_hessians: list[np.ndarray]) -> np.ndarray:
    """The linearised step [2d, 2d] of ``splitting`` at step ``h`` (ps), kick ``k`` using ``kick_hessians[k]``."""
    d = len(kick_hessians[0])
    matrix = np.eye(2 * d)
    for stage in splitting.stages:
        block = np.eye(2 * d)
        if stage.kind == "kick":
            block[d:, :d] = -stage.coefficient * h * kick_hessians[stage.head]
        else:
            block[:d, d:] = stage.coefficient * h * np.eye(d)
        matrix = block @ matrix
    return matrix


def harmonic_step(splitting: Splitting, x: float) -> np.ndarray:
    """The step [2, 2] of ``splitting`` on the unit harmonic oscillator (``w = 1``, every kick) at ``h w = x``."""
    return step_matrix(splitting, x, [np.ones((1, 1))] * splitting.n_heads)


def stability_interval(splitting: Splitting, resolution: float = 1e-4) -> float:
    """The largest ``x`` with every ``h w`` in ``(0, x)`` stable (``|trace| < 2`` of the harmonic transfer)."""
    for x in np.arange(resolution, 20.0, resolution):
        if abs(np.trace(harmonic_step(splitting, x))) >= 2.0:
            return float(x - resolution)
    return 20.0


def unstable_bands(splitting: Splitting, upto: Optional[float] = None,
                   resolution: float = 1e-4) -> list[tuple[float, float]]:
    """The intervals of ``h w`` in ``(0, upto]`` where the harmonic step of ``splitting`` is unstable (``|A| > 1``
    for its step ``[[A, B], [C, A]]``), each edge to ``resolution``; ``upto`` defaults to ``2 s`` for ``s``
    evaluations per step, past which no palindrome is stable, and a band still open there ends at it.

    Inside its stability interval a palindrome can have gaps: S2 between its two windows, and any blend of T3 with
    equal Verlet substeps (:func:`~openmm_actionml.splitting.towards_substeps`) a narrow one where it turns a mode
    by half a turn per step, which T3's coefficients close to a double root of ``A = -1`` at ``h w = 2.976``."""
    upto = 2.0 * splitting.evaluations_per_step if upto is None else upto
    grid = np.arange(resolution, upto + 0.5 * resolution, resolution)
    unstable = np.abs(_harmonic_entries(splitting, grid)[0]) > 1.0
    edges = np.flatnonzero(np.diff(np.concatenate([[False], unstable, [False]]).astype(int)))
    return [(round(float(grid[start]), 12), round(float(grid[end - 1]), 12))
            for start, end in zip(edges[::2], edges[1::2])]


def phase(splitting: Splitting, x: np.ndarray) -> np.ndarray:
    """The phase ``theta`` the harmonic step of ``splitting`` advances per step at each ``h w = x``, counted from
    ``x = 0`` through every full turn; NaN where the step is unstable.

    A palindrome's step is ``[[A, B], [C, A]]`` with ``cos theta = A``. Past half a turn ``B``, the exact flow's
    ``sin(theta) / w``, turns negative, and ``theta = 2 pi - arccos A`` (``arccos`` alone would fold it back to
    ``2 pi - theta``); each full turn completed at a smaller ``h w`` (:func:`full_turns`) adds ``2 pi``. T3 turns a
    mode by up to a full turn in its stability interval (half a turn at ``h w = 2.98``) and by more in its second
    window (``h w`` 6.10-6.42); S2 passes half a turn in its second window (3.22-4.11, past the gap after 2.55);
    velocity Verlet stays below half a turn, and three Verlet steps of ``h / 3`` reach one and a half turns.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    theta = block_phase(*_harmonic_entries(splitting, x))
    turns = np.searchsorted(full_turns(splitting), x, side="right")
    return np.where(np.isnan(theta), np.nan, theta + 2.0 * np.pi * turns)


def block_phase(cosine: np.ndarray, sine_sign: np.ndarray) -> np.ndarray:
    """The phase in ``(0, 2 pi)`` of a step's block ``[[A, B], [C, A]]`` along a mode, from ``A = cos theta`` and
    ``B``, whose sign is ``sin theta``'s (the exact flow's ``B`` is ``sin(theta) / w``); NaN where ``|A| >= 1``, a
    step that does not rotate the mode."""
    theta = np.arccos(np.clip(cosine, -1.0, 1.0))
    theta = np.where(np.asarray(sine_sign) < 0.0, 2.0 * np.pi - theta, theta)
    return np.where(np.abs(cosine) < 1.0, theta, np.nan)


def _harmonic_entries(splitting: Splitting, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``B`` of the harmonic step ``[[A, B], [C, A]]`` at each ``h w = x``."""
    steps = np.array([harmonic_step(splitting, value) for value in x])
    return steps[:, 0, 0], steps[:, 0, 1]


@functools.lru_cache(maxsize=None)
def full_turns(splitting: Splitting, resolution: float = 1e-3) -> np.ndarray:
    """The ``h w`` at which the harmonic step of ``splitting`` completes each full turn, ascending: where its phase
    modulo ``2 pi`` wraps from below ``2 pi`` to above 0, inside a stable window or into a gap where the step has a
    positive eigenvalue (``A > 1``, no rotation). Scanned at ``resolution`` up to ``h w = 2 s + 1`` for ``s``
    evaluations per step (no palindrome of ``s`` evaluations is stable past ``2 s``), each wrap then located by
    bisection."""
    def wrapped(values: np.ndarray) -> np.ndarray:
        cosine, sine_sign = _harmonic_entries(splitting, values)
        theta = block_phase(cosine, sine_sign)
        return np.where(np.isnan(theta), np.where(cosine >= 1.0, 0.0, np.pi), theta)

    grid = np.arange(resolution, 2.0 * max(splitting.evaluations_per_step, 1) + 1.0, resolution)
    phases = wrapped(grid)
    turns = []
    for index in np.flatnonzero(np.diff(phases) < -np.pi):
        low, high = grid[index], grid[index + 1]
        for _ in range(60):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if wrapped(np.array([middle]))[0] > np.pi else (low, middle)
        turns.append(high)
    return np.array(turns)


def played_frequencies(splitting: Splitting, h: float, kick_hessians: list[np.ndarray]) -> np.ndarray:
    """The frequencies (rad/ps, ascending) the linearised step plays, ``theta / h``; NaN for unstable modes.

    With one Hessian for every kick (a classical splitting) the modes decouple and each takes the 2x2 transfer
    matrix of its own ``h w`` (:func:`phase`); otherwise the eigenphases of the full step matrix are used, and all
    are NaN when an eigenvalue leaves the unit circle (or a pair's signature vanishes, as for a mode of zero
    frequency, so that the pairs cannot be told apart). Of each pair ``exp(+-i theta)`` the one of positive Krein
    signature (``Im(z^H J z) > 0`` for its eigenvector ``z``, as the exact flow's ``exp(i w h)``) gives the phase in
    ``(0, 2 pi)``, so that a mode turned past half a turn is not aliased.
    """
    if all(np.array_equal(k, kick_hessians[0]) for k in kick_hessians):
        return phase(splitting, h * np.sqrt(np.clip(np.linalg.eigvalsh(kick_hessians[0]), 0.0, None))) / h
    values, vectors = np.linalg.eig(step_matrix(splitting, h, kick_hessians))
    d = len(kick_hessians[0])
    signature = np.einsum("ik,ik->k", vectors[:d].conj(), vectors[d:]).imag  # z^H J z = 2i Im(z_q^H z_v)
    phases = np.sort(np.mod(np.angle(values[signature > 0.0]), 2.0 * np.pi)) / h
    if np.abs(values).max() >= 1.0 + 1e-6 or len(phases) != d:
        return np.full(d, np.nan)
    return phases


def sampled_variance_ratio(splitting: Splitting, x: float) -> float:
    """The on-step position variance of a harmonic mode with ``h w = x`` in the step's invariant Gaussian whose
    velocity variance is ``kT / m``, over the exact ``kT / (m w^2)``; NaN where the step is unstable.

    With ``w = 1`` the step is ``[[A, B], [C, A]]`` (a palindrome's diagonal entries are equal, by reversibility),
    which conserves ``-C q^2 + B v^2``: positions spread ``B / -C`` times as far as velocities.
    """
    (a, b), (c, _) = harmonic_step(splitting, x)
    return float(b / -c) if abs(a) < 1.0 else float("nan")  # stable while |trace| = |2 A| < 2


def modified_kinetic_coefficient(splitting: Splitting, x: float) -> float:
    """The coefficient of ``v^2 / 2`` in the modified energy of a harmonic mode with ``h w = x`` (``w = 1``, unit
    mass; 1 for the exact flow); NaN where the step is unstable.

    The step ``[[A, B], [C, A]]`` with ``A = cos(theta)`` is ``exp(x J S)``, the flow over ``x`` of the energy
    ``(q, v) S (q, v) / 2`` with ``S = theta / (x sin(theta)) diag(-C, B)``.
    """
    (_, b), _ = harmonic_step(splitting, x)
    theta = float(phase(splitting, x)[0])  # NaN where unstable; sin(theta) and b change sign together
    return theta * b / (x * np.sin(theta))
