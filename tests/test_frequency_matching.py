"""Frequency matching: the classes of harmonic terms, the scaling, and a fit that reports what the scaled System's
linearised step really plays (checked against Hessians computed afresh, not the fit's affine decomposition)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch  # noqa: F401  (before openmm: openmmtorch's plugins need torch's libraries loaded)
import openmm as mm
import openmm.unit as unit

from openmm_actionml.errors import ActionMLConvergenceError, InputError
from openmm_actionml.frequency_matching import class_stiffness, fit_frequency_match, harmonic_term_classes, \
    levenberg_marquardt, with_scaled_force_constants
from openmm_actionml.linear_stability import LIGHT_SPEED, minimised, played_frequencies
from openmm_actionml.splitting import SPLITTINGS
from openmm_actionml.systems import topology_elements

STEP = 0.008
RIDGE = 0.1
#: The Hessians are central differences of double-precision forces, which are linear in the force constants, so
#: the fit's sum of per-class Hessians and a fresh Hessian of the scaled System agree to round-off (4e-12 %
#: measured); this leaves room for other BLAS builds.
FREQUENCY_TOLERANCE = 1e-8  # %


@pytest.fixture(scope="module")
def alanine_minimum(alanine_hbonds):
    system = alanine_hbonds.system
    return system, topology_elements(alanine_hbonds.topology), minimised(system, alanine_hbonds.positions)


@pytest.fixture(scope="module")
def match(alanine_minimum):
    return fit_frequency_match(class_stiffness(*alanine_minimum), "T3", STEP, ridge=RIDGE)


def played_errors(system: mm.System, scaled: mm.System, elements: list[str],
                  positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact frequencies of ``system`` (rad/ps) and the relative error (%) of those T3 at STEP plays on
    ``scaled``, each from a full finite-difference Hessian of that System (not the fit's sum of class parts)."""
    exact = np.sqrt(np.clip(np.linalg.eigvalsh(class_stiffness(system, elements, positions).full), 0.0, None))
    played = played_frequencies(SPLITTINGS["T3"], STEP, [class_stiffness(scaled, elements, positions).full])
    return exact, 100.0 * (played / exact - 1.0)


def test_classes_hold_every_harmonic_term_once_named_by_element(alanine_hbonds):
    system = alanine_hbonds.system
    classes = harmonic_term_classes(system, topology_elements(alanine_hbonds.topology))
    counts = {}
    for term_class in classes:
        force = system.getForce(term_class.force_index)
        counts.setdefault(term_class.force_index, []).extend(term_class.terms)
        assert term_class.name.split()[0] == ("bond" if isinstance(force, mm.HarmonicBondForce) else "angle")
    for index, force in enumerate(system.getForces()):
        if isinstance(force, (mm.HarmonicBondForce, mm.HarmonicAngleForce)):
            total = force.getNumBonds() if isinstance(force, mm.HarmonicBondForce) else force.getNumAngles()
            assert sorted(counts[index]) == list(range(total))
    names = [term_class.name for term_class in classes]
    assert "angle C-N-H" in names and "bond C-O" in names and len(set(names)) == len(names)


def test_a_second_force_of_one_kind_gets_its_own_classes(alanine_hbonds):
    """Two HarmonicBondForces (as CHARMM's Urey-Bradley terms) give two classes per element pair, never one name
    for two forces."""
    system = copy.deepcopy(alanine_hbonds.system)
    bonds = next(force for force in system.getForces() if isinstance(force, mm.HarmonicBondForce))
    second = system.addForce(copy.deepcopy(bonds))
    classes = harmonic_term_classes(system, topology_elements(alanine_hbonds.topology))
    names = [term_class.name for term_class in classes]
    assert len(set(names)) == len(names)
    assert f"bond C-O (force {second})" in names and "angle C-N-H" in names


def test_scaling_multiplies_the_named_class_only(alanine_hbonds):
    system = alanine_hbonds.system
    classes = harmonic_term_classes(system, topology_elements(alanine_hbonds.topology))
    scaled = with_scaled_force_constants(system, classes, {"angle C-N-H": 2.0})
    named = next(c for c in classes if c.name == "angle C-N-H")
    for term_class in classes:
        if not isinstance(system.getForce(term_class.force_index), mm.HarmonicAngleForce):
            continue
        before, after = system.getForce(term_class.force_index), scaled.getForce(term_class.force_index)
        for term in term_class.terms:
            *atoms, angle, k = before.getAngleParameters(term)
            *atoms_after, angle_after, k_after = after.getAngleParameters(term)
            assert atoms_after == atoms and angle_after == angle
            assert k_after == (2.0 * k if term_class is named else k)
    with pytest.raises(InputError, match="no harmonic terms of class angle X-Y-Z"):
        with_scaled_force_constants(system, classes, {"angle X-Y-Z": 0.9})
    with pytest.raises(InputError, match="positive and finite"):
        with_scaled_force_constants(system, classes, {"angle C-N-H": 0.0})


def test_the_fit_reports_what_the_scaled_system_plays(alanine_minimum, match):
    """Unscaled and matched, the errors the fit reports are those of the scaled System's own Hessian; the fastest
    modes' error falls from T3's 2.6-4.4 % to the fit's."""
    system, elements, positions = alanine_minimum
    exact, before = played_errors(system, system, elements, positions)
    scaled = with_scaled_force_constants(system, harmonic_term_classes(system, elements), match.scales)
    _, after = played_errors(system, scaled, elements, positions)
    fitted = exact > 2 * np.pi * LIGHT_SPEED * match.min_wavenumber
    assert np.allclose(exact[fitted] / (2 * np.pi * LIGHT_SPEED), match.wavenumbers, rtol=1e-6)
    assert np.allclose(before[fitted], match.error_before, atol=FREQUENCY_TOLERANCE, rtol=0)
    assert np.allclose(after[fitted], match.error_after, atol=FREQUENCY_TOLERANCE, rtol=0)
    assert np.abs(match.error_after[-4:]).max() < np.abs(match.error_before[-4:]).min()


def test_a_step_given_as_a_quantity_gives_the_same_fit(alanine_minimum, match):
    again = fit_frequency_match(class_stiffness(*alanine_minimum), "T3", STEP * 1000 * unit.femtoseconds, ridge=RIDGE)
    assert again.scales == match.scales and again.step == STEP


def test_the_fit_is_a_local_minimum_of_its_cost(alanine_minimum, match):
    """Moving any one factor either way from the fit, by Hessians computed afresh, does not lower the cost
    (squared frequency errors plus the ridge's squared percent)."""
    system, elements, positions = alanine_minimum
    classes = harmonic_term_classes(system, elements)

    def cost(scales: dict[str, float]) -> float:
        exact, errors = played_errors(system, with_scaled_force_constants(system, classes, scales), elements,
                                      positions)
        fitted = exact > 2 * np.pi * LIGHT_SPEED * match.min_wavenumber
        penalty = 100.0 * RIDGE * (np.array(list(scales.values())) - 1.0)
        return float((errors[fitted] ** 2).sum() + (penalty ** 2).sum())

    best = cost(match.scales)
    for name in match.scales:
        for delta in (-1e-3, 1e-3):
            assert cost({**match.scales, name: match.scales[name] + delta}) > best


def test_a_capped_fit_slows_the_modes_past_its_cap(alanine_minimum, match):
    """With max_phase, the modes the exact flow turns further per step are fitted towards the cap: each is played
    closer to it than the uncapped fit plays it, so slower than its exact frequency; a cap that is no phase per step
    is refused."""
    cap = 0.8 * np.pi
    capped = fit_frequency_match(class_stiffness(*alanine_minimum), "T3", STEP, ridge=RIDGE, max_phase=cap)
    exact_phase = STEP * 2 * np.pi * LIGHT_SPEED * capped.wavenumbers
    past = exact_phase > cap
    assert past.sum() >= 2 and capped.max_phase == cap and np.isnan(match.max_phase)
    played, played_uncapped = (exact_phase * (1 + m.error_after / 100) for m in (capped, match))
    assert (np.abs(played[past] - cap) < np.abs(played_uncapped[past] - cap)).all()
    assert (capped.error_after[past] < 0).all()
    with pytest.raises(InputError, match="max_phase"):
        fit_frequency_match(class_stiffness(*alanine_minimum), "T3", STEP, max_phase=2.5 * np.pi)


def test_bad_input_is_refused_with_the_reason(alanine_minimum):
    system, elements, positions = alanine_minimum
    with pytest.raises(InputError, match="unstable for the .* cm\\^-1 mode.*shorter step"):
        fit_frequency_match(class_stiffness(system, elements, positions), "T3", 0.016)
    with pytest.raises(InputError, match="21 elements for a System of 22 particles"):
        class_stiffness(system, elements[:-1], positions)
    empty = mm.System()
    empty.addParticle(1.0)
    with pytest.raises(InputError, match="no HarmonicBondForce or HarmonicAngleForce"):
        harmonic_term_classes(empty, ["C"])


def test_levenberg_marquardt_solves_a_linear_fit_and_refuses_one_cut_short():
    """A consistent linear system is solved to round-off; a fit stopped after one iteration raises."""
    matrix, target = np.array([[2.0, 1.0], [0.5, 3.0], [1.0, 1.0]]), np.array([2.5, 2.0, 1.5])

    def residuals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return matrix @ x - target, matrix

    solution, residual, _ = levenberg_marquardt(residuals, np.array([5.0, 5.0]), max_iterations=100)
    assert np.allclose(solution, [1.0, 1.0 / 2.0], atol=1e-6) and np.abs(residual).max() < 1e-6
    with pytest.raises(ActionMLConvergenceError, match="did not converge in 1 iterations"):
        levenberg_marquardt(residuals, np.array([5.0, 5.0]), max_iterations=1)
