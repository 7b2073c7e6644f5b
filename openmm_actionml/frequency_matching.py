"""Force constants matched to a long step: a classical splitting that plays the fast vibrations at the force
field's own frequencies, at no cost per step.

A palindromic splitting at step ``h`` advances a harmonic mode of frequency ``w`` by ``theta(h w)`` per step, not
``h w`` (:mod:`openmm_actionml.linear_stability`): T3 at 8 fs plays alanine dipeptide's amide bends and carbonyl
stretches 2.6-4.4 % fast. Those modes are made of the harmonic bond and angle terms, so scaling their force
constants, one factor per class of term (the elements of its atoms, e.g. ``angle C-N-H``), can bring the played
frequencies back. :func:`fit_frequency_match` chooses the factors at an energy minimum by Levenberg-Marquardt on
the relative frequency error (%) of every mode above ``min_wavenumber``, plus a ridge term ``100 ridge (s - 1)``
per class that keeps the factors the modes do not pin near 1; :func:`with_scaled_force_constants` applies them.

The stiffness on the constraint manifold is affine in the factors: each class's Hessian enters linearly, and so
does its gradient, through the constraint multipliers (:func:`~openmm_actionml.linear_stability.constrained_stiffness`).
Each class's part is therefore computed once, from a System that holds that class alone, and every iteration of
the fit costs one eigendecomposition, with the derivatives of the eigenvalues from the eigenvectors.

What the match cannot do: one factor per term fixes a mode's phase per step, not its amplitude. A stable
palindromic step on a harmonic mode is ``[[A, B], [C, A]]`` with ``A = cos(theta)``; the exact flow over ``h`` has
``theta = h w`` and ``B / -C = 1 / w^2`` (the spread of positions against velocities). Matching ``theta`` leaves
``B / -C`` off, so the step samples the matched modes' positions wider than the force field does
(:attr:`FrequencyMatch.variance_ratio_after`; 5-9 % wider for the fastest alanine modes with T3 at 8 fs, against
at most 1.2 % unmatched), and the matched System's energies are the scaled force field's: measure the true energy with
the unscaled System. Matching both takes a second factor per class for a second set of kicks (T3's outer and
middle kicks), and such a step heats in NVE (``benchmarks/frequency_matched.py --two-head``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import openmm as mm
import openmm.unit as u

from .errors import ActionMLConvergenceError, InputError
from .linear_stability import LIGHT_SPEED, constrained_stiffness, phase, sampled_variance_ratio, vibration_basis
from .splitting import Splitting, get_splitting
from .systems import particle_masses
from .units import positive_float

__all__ = ["TermClass", "ClassStiffness", "FrequencyMatch", "harmonic_term_classes", "with_scaled_force_constants",
           "class_stiffness", "along", "levenberg_marquardt", "fit_frequency_match", "played_with", "fitted_modes"]

#: Relative change of the fit's cost below which Levenberg-Marquardt stops.
COST_TOLERANCE = 1e-10


@dataclass(frozen=True)
class TermClass:
    """The harmonic terms of one force whose atoms have the same elements, e.g. ``angle C-N-H`` (the centre atom
    in the middle, the ends in alphabetical order)."""

    name: str
    force_index: int
    terms: tuple[int, ...]


def _bond_name(elements: Sequence[str], i: int, j: int) -> str:
    return "bond " + "-".join(sorted((elements[i], elements[j])))


def _angle_name(elements: Sequence[str], i: int, j: int, k: int) -> str:
    first, last = sorted((elements[i], elements[k]))
    return f"angle {first}-{elements[j]}-{last}"


def harmonic_term_classes(system: mm.System, elements: Sequence[str]) -> list[TermClass]:
    """The classes of ``system``'s ``HarmonicBondForce`` and ``HarmonicAngleForce`` terms, by element, in order of
    name. When the System has two forces of one kind (CHARMM's Urey-Bradley terms are a second
    ``HarmonicBondForce``), that kind's names end in their force's index, e.g. ``bond C-H (force 3)``.

    Raises
    ------
    InputError
        If ``elements`` does not name every particle, or the System has no harmonic bond or angle terms.
    """
    if len(elements) != system.getNumParticles():
        raise InputError(f"{len(elements)} elements for a System of {system.getNumParticles()} particles; give "
                         f"the elements of the System's own topology.")
    kinds = [type(force) for force in system.getForces()]
    found: dict[tuple[str, int], list[int]] = {}
    for index, force in enumerate(system.getForces()):
        suffix = f" (force {index})" if kinds.count(type(force)) > 1 else ""
        if isinstance(force, mm.HarmonicBondForce):
            for term in range(force.getNumBonds()):
                i, j, *_ = force.getBondParameters(term)
                found.setdefault((_bond_name(elements, i, j) + suffix, index), []).append(term)
        elif isinstance(force, mm.HarmonicAngleForce):
            for term in range(force.getNumAngles()):
                i, j, k, *_ = force.getAngleParameters(term)
                found.setdefault((_angle_name(elements, i, j, k) + suffix, index), []).append(term)
    if not found:
        raise InputError("the System has no HarmonicBondForce or HarmonicAngleForce terms to match; frequency "
                         "matching scales their force constants.")
    return [TermClass(name, index, tuple(terms)) for (name, index), terms in sorted(found.items())]


def with_scaled_force_constants(system: mm.System, classes: Sequence[TermClass],
                                scales: Mapping[str, float]) -> mm.System:
    """A copy of ``system`` whose terms of each class have their force constants multiplied by ``scales[name]``
    (classes not in ``scales`` keep theirs).

    Raises
    ------
    InputError
        If ``scales`` names a class that ``classes`` does not have, or a factor is not positive and finite.
    """
    _check_known(classes, scales)
    for name, factor in scales.items():
        if not (np.isfinite(factor) and factor > 0):
            raise InputError(f"the factor of {name} must be positive and finite, got {factor}.")
    scaled = copy.deepcopy(system)
    for term_class in classes:
        factor = float(scales.get(term_class.name, 1.0))
        force = scaled.getForce(term_class.force_index)
        for term in term_class.terms:
            if isinstance(force, mm.HarmonicBondForce):
                i, j, length, k = force.getBondParameters(term)
                force.setBondParameters(term, i, j, length, k * factor)
            else:
                i, j, m, angle, k = force.getAngleParameters(term)
                force.setAngleParameters(term, i, j, m, angle, k * factor)
    return scaled


def _check_known(classes: Sequence[TermClass], scales: Mapping[str, float]) -> None:
    known = {term_class.name for term_class in classes}
    unknown = sorted(set(scales) - known)
    if unknown:
        raise InputError(f"no harmonic terms of class {', '.join(unknown)} in this System (it has "
                         f"{', '.join(sorted(known))}); the factors were fitted for another system.")


def fitted_modes(exact_squared: np.ndarray, min_wavenumber: float) -> tuple[np.ndarray, np.ndarray]:
    """Angular frequencies (1/ps) of the exact modes and which are above ``min_wavenumber`` (cm^-1)."""
    omega = np.sqrt(np.clip(exact_squared, 0.0, None))
    fitted = omega > 2 * np.pi * LIGHT_SPEED * min_wavenumber
    if not fitted.any():
        raise InputError(f"no mode above {min_wavenumber:g} cm^-1 to match; lower min_wavenumber.")
    return omega, fitted


def _class_system(system: mm.System, term_class: TermClass) -> mm.System:
    """A System of ``system``'s particles holding only the terms of ``term_class``."""
    alone = mm.System()
    for particle in range(system.getNumParticles()):
        alone.addParticle(system.getParticleMass(particle))
    source = system.getForce(term_class.force_index)
    if isinstance(source, mm.HarmonicBondForce):
        force = mm.HarmonicBondForce()
        for term in term_class.terms:
            force.addBond(*source.getBondParameters(term))
    else:
        force = mm.HarmonicAngleForce()
        for term in term_class.terms:
            force.addAngle(*source.getAngleParameters(term))
    alone.addForce(force)
    return alone


@dataclass
class FrequencyMatch:
    """The factors of a fit and what the linearised step plays before and after.

    Attributes
    ----------
    splitting, step
        The splitting's name and its step (ps).
    scales
        Force-constant factor by class name.
    wavenumbers
        Exact frequencies (cm^-1, ascending) of the fitted modes, those above ``min_wavenumber``.
    error_before, error_after
        Relative error (%) of the frequency the step plays for each fitted mode, unscaled and matched.
    variance_ratio_before, variance_ratio_after
        Each fitted mode's position variance in the step's invariant Gaussian (velocities at ``kT``) over the
        exact ``kT / w^2``, unscaled and matched.
    ridge, min_wavenumber, iterations
        The fit's settings and the Levenberg-Marquardt iterations it took (NaN and 0 from :func:`played_with`).
    max_phase
        The largest phase per step (rad) a mode was fitted to; NaN when each was fitted to its own.
    """

    splitting: str
    step: float
    scales: dict[str, float]
    wavenumbers: np.ndarray
    error_before: np.ndarray
    error_after: np.ndarray
    variance_ratio_before: np.ndarray
    variance_ratio_after: np.ndarray
    ridge: float
    min_wavenumber: float
    iterations: int
    max_phase: float = float("nan")

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"splitting": self.splitting, "step_ps": self.step, "ridge": self.ridge,
                "min_wavenumber": self.min_wavenumber, "iterations": self.iterations, "max_phase": self.max_phase,
                "scales": self.scales,
                "wavenumbers": self.wavenumbers.tolist(), "error_before_percent": self.error_before.tolist(),
                "error_after_percent": self.error_after.tolist(),
                "variance_ratio_before": self.variance_ratio_before.tolist(),
                "variance_ratio_after": self.variance_ratio_after.tolist()}


@dataclass
class ClassStiffness:
    """The mass-weighted stiffness (1/ps^2) of a System on its constraint manifold at ``positions``, and each
    class's part of it, so that scaling class ``c``'s force constants by ``s_c`` gives :meth:`scaled`.

    Attributes
    ----------
    classes
        The classes of harmonic terms, in the order of ``parts``.
    full
        The unscaled System's stiffness [d, d] on the vibrations' basis (rigid motions and constraints removed).
    parts
        Each class's contribution [d, d]: its own Hessian and, through the constraint multipliers, its gradient.
    """

    classes: list[TermClass]
    full: np.ndarray
    parts: list[np.ndarray]

    def scaled(self, scales: Sequence[float]) -> np.ndarray:
        """The stiffness with class ``c``'s force constants multiplied by ``scales[c]``."""
        return self.full + sum((float(s) - 1.0) * part for s, part in zip(scales, self.parts))

    @cached_property
    def normal_modes(self) -> tuple[np.ndarray, np.ndarray]:
        """The unscaled stiffness's eigenvalues (squared angular frequencies, 1/ps^2, ascending) and eigenvectors."""
        return np.linalg.eigh(self.full)


def class_stiffness(system: mm.System, elements: Sequence[str], positions: np.ndarray) -> ClassStiffness:
    """:class:`ClassStiffness` of ``system`` at ``positions`` (nm, an energy minimum) by finite differences on
    the Reference platform."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    classes = harmonic_term_classes(system, elements)
    masses = particle_masses(system)
    basis = vibration_basis(system, positions, masses)

    return ClassStiffness(classes, constrained_stiffness(system, positions, masses, basis),
                          [constrained_stiffness(system, positions, masses, basis, _class_system(system, c))
                           for c in classes])


def along(matrix: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """``u^T matrix u`` for each column ``u`` of ``modes``."""
    return ((matrix @ modes) * modes).sum(axis=0)


def levenberg_marquardt(residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], start: np.ndarray,
                        max_iterations: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise ``|r(x)|^2`` from ``start`` with positive ``x``; ``residuals(x)`` returns ``r`` and its Jacobian.

    Returns the minimiser, its residuals and the iterations taken; a trial with a non-finite residual or a
    non-positive entry is rejected like one that raises the cost.

    Raises
    ------
    ActionMLConvergenceError
        If the cost still falls by more than :data:`COST_TOLERANCE` after ``max_iterations``.
    """
    x = np.asarray(start, dtype=float)
    residual, jacobian = residuals(x)
    cost = float(residual @ residual)
    damping = 1e-2
    for iteration in range(1, max_iterations + 1):
        normal = jacobian.T @ jacobian
        trial = x + np.linalg.solve(normal + damping * np.diag(np.diag(normal)), -jacobian.T @ residual)
        trial_cost = np.inf
        if (trial > 0).all():
            trial_residual, trial_jacobian = residuals(trial)
            if np.isfinite(trial_residual).all():
                trial_cost = float(trial_residual @ trial_residual)
        if trial_cost < cost:
            converged = cost - trial_cost < COST_TOLERANCE * cost
            x, residual, jacobian, cost = trial, trial_residual, trial_jacobian, trial_cost
            damping = max(damping / 3.0, 1e-12)
            if converged:
                return x, residual, iteration
        else:
            damping *= 10.0
            if damping > 1e12:  # no direction lowers the cost: a minimum to round-off
                return x, residual, iteration
    raise ActionMLConvergenceError(f"the fit did not converge in {max_iterations} iterations (cost {cost:.4g}); "
                                   f"raise max_iterations or the ridge.")


def fit_frequency_match(stiffness: ClassStiffness, splitting: str | Splitting, step, ridge: float = 0.1,
                        min_wavenumber: float = 300.0, max_iterations: int = 100,
                        max_phase: Optional[float] = None) -> FrequencyMatch:
    """Fit one force-constant factor per class of harmonic term so that ``splitting`` at ``step`` plays the
    exact frequencies of a System at an energy minimum.

    Parameters
    ----------
    stiffness
        The System's :func:`class_stiffness` at an energy minimum (e.g. from
        :func:`~openmm_actionml.linear_stability.minimised`).
    splitting, step
        The classical splitting and its step (ps or a Quantity).
    ridge
        Weight of ``s - 1`` against the frequency errors, both in percent.
    min_wavenumber
        Only modes above this (cm^-1) are fitted; the slower ones are played within a fraction of a percent.
    max_iterations
        Levenberg-Marquardt iterations before giving up.
    max_phase
        If given (rad, in ``(0, 2 pi)``), the phase per step that modes turned further by the exact flow are fitted
        to, e.g. ``0.9 pi`` to keep every mode below half a turn per step, slowed; their frequency is then given
        up for the step's sake.

    Raises
    ------
    InputError
        If a fitted mode is beyond the splitting's stability interval at this step, no mode is fast enough, or
        ``max_phase`` is not in ``(0, 2 pi)``.
    ActionMLConvergenceError
        If the fit has not converged after ``max_iterations``.
    """
    splitting = get_splitting(splitting)
    h = positive_float(step, u.picosecond, "step")
    if ridge < 0:
        raise InputError(f"ridge must be zero or positive, got {ridge}.")
    if max_phase is not None and not 0.0 < max_phase < 2.0 * np.pi:
        raise InputError(f"max_phase must be a phase per step in (0, 2 pi) rad, got {max_phase}.")
    exact_squared = stiffness.normal_modes[0]
    omega, fitted = fitted_modes(exact_squared, min_wavenumber)
    target = h * omega[fitted] if max_phase is None else np.minimum(h * omega[fitted], max_phase)

    def eigenvalues(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fitted modes' eigenvalues of the scaled stiffness and their derivatives [modes, classes]."""
        values, vectors = np.linalg.eigh(stiffness.scaled(scales))
        modes = vectors[:, fitted]
        return values[fitted], np.stack([along(part, modes) for part in stiffness.parts], axis=1)

    def residuals(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, derivatives = eigenvalues(scales)
        x = h * np.sqrt(np.clip(values, 0.0, None))
        theta = phase(splitting, x)
        slope = (phase(splitting, x * (1 + 1e-6)) - phase(splitting, x * (1 - 1e-6))) / (2e-6 * x)
        # d theta / d s = theta'(x) h^2 / (2 x) d lambda / d s, with x = h sqrt(lambda)
        jacobian = 100.0 / target[:, None] * (slope * h * h / (2.0 * x))[:, None] * derivatives
        return (np.concatenate([100.0 * (theta / target - 1.0), 100.0 * ridge * (scales - 1.0)]),
                np.concatenate([jacobian, 100.0 * ridge * np.eye(len(scales))]))

    start = np.ones(len(stiffness.classes))
    before = residuals(start)[0][:fitted.sum()]
    if not np.isfinite(before).all():
        slowest = float(omega[fitted][np.isnan(before)].min() / (2 * np.pi * LIGHT_SPEED))
        raise InputError(f"{splitting.name} at {h * 1000:g} fs is unstable for the {slowest:.0f} cm^-1 mode and "
                         f"faster: no force constants can be matched beyond the stability interval; take a "
                         f"shorter step.")
    scales, _, iterations = levenberg_marquardt(residuals, start, max_iterations)
    played = played_with(stiffness, splitting, h, {c.name: float(s) for c, s in zip(stiffness.classes, scales)},
                         min_wavenumber)
    return dataclasses.replace(played, ridge=ridge, iterations=iterations,
                               max_phase=float("nan") if max_phase is None else float(max_phase))


def played_with(stiffness: ClassStiffness, splitting: str | Splitting, step, scales: Mapping[str, float],
                min_wavenumber: float = 300.0) -> FrequencyMatch:
    """What ``splitting`` at ``step`` plays with given factors (fitted elsewhere, e.g. learned from trajectories),
    as a :class:`FrequencyMatch` (``ridge`` NaN, ``iterations`` 0); errors are NaN for modes beyond the stability
    interval.

    Raises
    ------
    InputError
        If ``scales`` names a class ``stiffness`` does not have, or no mode is above ``min_wavenumber``.
    """
    splitting = get_splitting(splitting)
    h = positive_float(step, u.picosecond, "step")
    _check_known(stiffness.classes, scales)
    names = [term_class.name for term_class in stiffness.classes]
    exact_squared = stiffness.normal_modes[0]
    omega, fitted = fitted_modes(exact_squared, min_wavenumber)
    target = h * omega[fitted]

    def errors_and_variance_ratios(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = h * np.sqrt(np.clip(values[fitted], 0.0, None))
        ratios = np.array([w * w / (y * y) * sampled_variance_ratio(splitting, y) for w, y in zip(target, x)])
        return 100.0 * (phase(splitting, x) / target - 1.0), ratios

    played = np.linalg.eigvalsh(stiffness.scaled([scales.get(name, 1.0) for name in names]))
    (before, ratios_before), (after, ratios_after) = map(errors_and_variance_ratios, (exact_squared, played))
    return FrequencyMatch(splitting.name, h, {name: float(scales.get(name, 1.0)) for name in names},
                          omega[fitted] / (2 * np.pi * LIGHT_SPEED), before, after, ratios_before, ratios_after,
                          float("nan"), min_wavenumber, 0)
