"""The reference-data protocol: synchronous velocity Verlet, constraints, energy conservation, bad input."""
from __future__ import annotations

import copy

import numpy as np
import openmm as mm
import openmm.unit as u
import pytest

from conftest import platform_params
from openmm_actionml.diagnostics import energy_drift
from openmm_actionml.units import BOLTZMANN
from openmm_actionml.errors import InputError, SimulationInstabilityError
from openmm_actionml.generate import CONSTRAINT_TOLERANCE, generate_reference_data
from openmm_actionml.platforms import platform_properties
from openmm_actionml.systems import water_box

DOUBLE_EPS = np.finfo(np.float64).eps
#: Platforms that store constraint lengths in single precision (so |r| meets float32(d), not d).
SINGLE_PRECISION_PARAMETERS = {"OpenCL", "CUDA", "HIP"}
#: A short run: a few velocity-Verlet steps after a brief equilibration.
TINY = dict(n_segments=1, segment_length=0.01, equilibration=0.1, decorrelation=0.0, seed=7, progress=False)


def _forces(context: mm.Context, positions: np.ndarray) -> np.ndarray:
    context.setPositions(positions)
    return context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)


def _context(system: mm.System, platform: str) -> mm.Context:
    chosen = mm.Platform.getPlatformByName(platform)
    return mm.Context(system, mm.VerletIntegrator(0.001), chosen, platform_properties(chosen, "mixed"))


def _fastest_bond_frequency(system: mm.System) -> float:
    """Largest harmonic bond-stretch angular frequency sqrt(k/mu), 1/ps."""
    bonds = next(f for f in system.getForces() if isinstance(f, mm.HarmonicBondForce))
    mass = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    return max(np.sqrt(k.value_in_unit(u.kilojoule_per_mole / u.nanometer ** 2) * (1 / mass[i] + 1 / mass[j]))
               for i, j, _, k in (bonds.getBondParameters(b) for b in range(bonds.getNumBonds())))


@pytest.mark.parametrize("platform", platform_params())
def test_stored_frames_are_one_velocity_verlet_step_apart(alanine, platform):
    """An independent numpy velocity-Verlet step from each stored frame gives the next one.

    Forces come from a Reference (double) Context. The platform's own force error dF (measured here
    against Reference) bounds the difference: the position update has one half-kick (dt^2/2 dF/m), the
    velocity update two (dt dF/m). The integrator's own force evaluation is a second single-precision
    evaluation, so twice that is allowed, plus double round-off of the state.
    """
    delta = 0.0005
    data = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology, delta=delta,
                                   platform=platform, **TINY)
    reference, on_platform = _context(alanine.system, "Reference"), _context(alanine.system, platform)
    m = data.masses[:, None]
    q, v = data.positions[0], data.velocities[0]
    forces = np.array([_forces(reference, x) for x in q])
    force_error = max(np.abs((_forces(on_platform, x) - f) / m).max() for x, f in zip(q, forces))
    half = v[:-1] + 0.5 * delta * forces[:-1] / m
    q_next = q[:-1] + delta * half
    v_next = half + 0.5 * delta * np.array([_forces(reference, x) for x in q_next]) / m
    acceleration = np.abs(forces / m).max()
    q_tolerance = delta ** 2 * force_error + 8 * DOUBLE_EPS * np.abs(q).max()
    v_tolerance = 2 * delta * force_error + 8 * DOUBLE_EPS * (np.abs(v).max() + delta * acceleration)
    q_error, v_error = np.abs(q_next - q[1:]).max(), np.abs(v_next - v[1:]).max()
    print(f"{platform}: |dq| {q_error:.2e} <= {q_tolerance:.2e} nm, |dv| {v_error:.2e} <= {v_tolerance:.2e} nm/ps")
    assert q_error <= q_tolerance
    assert v_error <= v_tolerance


@pytest.mark.parametrize("platform", platform_params())
def test_constrained_frames_satisfy_constraints(alanine_hbonds, platform):
    """With HBonds every frame has the constraint lengths and no velocity along a constrained bond."""
    data = generate_reference_data(alanine_hbonds.system, alanine_hbonds.positions, topology=alanine_hbonds.topology,
                                   delta=0.001, **{**TINY, "n_segments": 2, "decorrelation": 0.02}, platform=platform)
    assert data.n_constraints == 12 and data.n_dof == 3 * 22 - 12 - 3
    i, j = data.constraint_pairs.T
    bonds = data.positions[:, :, i] - data.positions[:, :, j]
    lengths = np.linalg.norm(bonds, axis=-1)
    length_error = (np.abs(lengths - data.constraint_distances) / data.constraint_distances).max()
    parameter_eps = 2.0 ** -24 if platform in SINGLE_PRECISION_PARAMETERS else 0.0
    relative = data.velocities[:, :, i] - data.velocities[:, :, j]
    cosine = (np.abs((relative * bonds).sum(-1)) / (np.linalg.norm(relative, axis=-1) * lengths)).max()
    print(f"{platform}: constraint length error {length_error:.2e}, velocity cosine {cosine:.2e}")
    assert length_error <= 2 * CONSTRAINT_TOLERANCE + parameter_eps
    assert cosine <= 2 * CONSTRAINT_TOLERANCE


def test_segments_have_zero_momentum_and_the_system_is_untouched(alanine):
    """The CMMotionRemover is taken out of a copy only; segments start and stay at zero total momentum."""
    n_forces = alanine.system.getNumForces()
    data = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology, platform="Reference",
                                   **{**TINY, "n_segments": 2})
    assert alanine.system.getNumForces() == n_forces
    assert data.com_removed and data.n_dof == 3 * 22 - 3
    momentum = np.einsum("n,sfnx->sfx", data.masses, data.velocities)
    thermal = np.sqrt(data.masses.sum() * BOLTZMANN * data.temperature)
    assert np.abs(momentum).max() <= 1e-10 * thermal


def test_same_seed_same_data_and_forces_cached(alanine):
    """A seed reproduces the data on Reference; stored energies and forces are the force field's."""
    first, second = (generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                             platform="Reference", store_forces=True, **TINY) for _ in range(2))
    np.testing.assert_array_equal(first.positions, second.positions)
    np.testing.assert_array_equal(first.velocities, second.velocities)
    context = _context(alanine.system, "Reference")
    for frame in (0, 5, -1):
        context.setPositions(first.positions[0, frame])
        state = context.getState(getEnergy=True, getForces=True)
        assert first.potential_energies[0, frame] == pytest.approx(state.getPotentialEnergy()._value, abs=1e-9)
        np.testing.assert_allclose(first.forces[0, frame], state.getForces(asNumpy=True)._value, atol=1e-9)
    assert first.elements[:3] == ("H", "C", "H")
    assert first.metadata["provenance"]["seed"] == 7 and first.metadata["provenance"]["platform"] == "Reference"


def test_energy_drift_at_half_femtosecond(alanine):
    """Energy drift of flexible alanine dipeptide at 0.5 fs stays below the shadow-energy bound.

    Velocity Verlet conserves a shadow energy H~ exactly; for a mode of frequency w, |H - H~| is at most
    (w d)^2/4 / (1 - (w d)^2/4) times the mode's energy. With the stiffest bond's w for every mode and
    kT per mode, the total energy stays within A = that factor x n_dof kT of a constant, and the least-squares
    slope of any signal within +-A over a time T is at most 3A/T. So the drift per DOF is at most
    3 (w d)^2 / (4 (1 - (w d)^2/4) T) kT; any secular drift (a non-symplectic bug, loose constraints)
    grows without bound and breaks it.
    """
    delta, duration = 0.0005, 5.0
    data = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology, delta=delta,
                                   n_segments=4, segment_length=duration, record_every=4, equilibration=2.0,
                                   decorrelation=1.0, platform="Reference", seed=3, progress=False)
    energies = data.potential_energies + data.kinetic_energies()
    times = np.arange(data.n_frames) * data.delta
    slopes = np.array([energy_drift(times, e, data.n_dof, data.temperature).slope_kt_per_dof_per_ns
                       for e in energies])
    x = (_fastest_bond_frequency(alanine.system) * delta) ** 2 / 4
    bound = 3 * x / (1 - x) / (duration / 1000.0)
    print(f"energy drift at 0.5 fs: {slopes.mean():+.4f} +- {slopes.std(ddof=1) / 2:.4f} kT/ns per DOF "
          f"(4 x {duration} ps); bound {bound:.2f}")
    assert np.abs(slopes).max() <= bound


def test_energy_error_is_second_order_in_delta(alanine):
    """Halving delta divides the energy error by 4, to within the next order, 2 (w d)^2 relative."""
    errors = {}
    for delta in (0.0005, 0.00025):
        data = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology, delta=delta,
                                       n_segments=1, segment_length=0.5, record_every=round(0.001 / delta),
                                       equilibration=1.0, decorrelation=0.5, platform="Reference", seed=1,
                                       progress=False)
        energy = (data.potential_energies + data.kinetic_energies())[0]
        errors[delta] = np.sqrt(np.mean((energy - energy[0]) ** 2))
    ratio = errors[0.0005] / errors[0.00025]
    next_order = 2 * (_fastest_bond_frequency(alanine.system) * 0.0005) ** 2
    print(f"energy error ratio 0.5 fs / 0.25 fs: {ratio:.3f} (4 +- {4 * next_order:.2f})")
    assert abs(ratio - 4) <= 4 * next_order


def test_segments_begun_at_recorded_frames_retrace_them(alanine):
    """Given starts skip minimisation and equilibration: a segment begun at a recorded frame (decorrelation 0)
    is the recorded segment from that frame on.

    Re-projecting an already zero-momentum state changes it by round-off only (~N eps relative); over ten
    velocity-Verlet steps of 0.5 fs, far below a picosecond's Lyapunov time, that stays at round-off, so the
    retraced frames agree with the recorded ones to a few hundred eps of the coordinates' size.
    """
    recorded = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                       platform="Reference", delta=0.0005, **{**TINY, "segment_length": 0.01})
    first, middle = 0, 10
    starts = (recorded.positions[0, [first, middle]] * u.nanometer, recorded.velocities[0, [first, middle]])
    retraced = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                       platform="Reference", delta=0.0005, segment_length=0.005, starts=starts,
                                       progress=False)
    assert retraced.n_segments == 2 and retraced.metadata["protocol"]["starts"] == "given states"
    assert retraced.metadata["protocol"]["equilibration"] == 0 and retraced.metadata["protocol"]["decorrelation"] == 0
    for segment, begin in enumerate((first, middle)):
        expected = recorded.positions[0, begin:begin + retraced.n_frames]
        tolerance = 300 * DOUBLE_EPS * np.abs(expected).max()
        assert np.abs(retraced.positions[segment] - expected).max() <= tolerance


@pytest.mark.parametrize("starts, arguments, message", [
    ((np.zeros((2, 21, 3)), np.zeros((2, 21, 3))), {}, r"shape \(2, 21, 3\), but the System needs \[S, 22, 3\]"),
    ((np.zeros((2, 22, 3)), np.zeros((3, 22, 3))), {}, "2 start positions but 3 start velocities"),
    ((np.full((1, 22, 3), np.nan), np.zeros((1, 22, 3))), {}, "NaN"),
    ((np.zeros((2, 22, 3)), np.zeros((2, 22, 3))), {"n_segments": 3}, "n_segments is 3 but 2 starts"),
    ((np.zeros((1, 22, 3)), np.zeros((1, 22, 3))), {"equilibration": 1.0}, "given starts skip"),
    (np.zeros((3, 22, 3)), {}, r"pair \(positions, velocities\)"),
])
def test_invalid_starts(alanine, tmp_path, starts, arguments, message):
    output = tmp_path / "data.npz"
    with pytest.raises(InputError, match=message):
        generate_reference_data(alanine.system, alanine.positions, output, starts=starts,
                                **{**TINY, "n_segments": None, "equilibration": None, **arguments})
    assert list(tmp_path.iterdir()) == []


# -- bad input: clear errors, before any simulation, and nothing left behind -------------------------------
@pytest.mark.parametrize("arguments, message", [
    ({"delta": 0.0}, "delta must be positive"),
    ({"delta": -0.25 * u.femtosecond}, "delta must be positive"),
    ({"delta": 1.0 * u.kelvin}, "not compatible"),
    ({"segment_length": 0.0101}, "whole multiple"),
    ({"n_segments": 0}, "n_segments must be a positive integer"),
    ({"platform": "NoSuchPlatform"}, "unknown or unavailable OpenMM platform"),
])
def test_invalid_arguments(alanine, tmp_path, arguments, message):
    output = tmp_path / "data.npz"
    with pytest.raises(InputError, match=message):
        generate_reference_data(alanine.system, alanine.positions, output, **{**TINY, **arguments})
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_before_simulating(alanine, tmp_path):
    output = tmp_path / "data.npz"
    output.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        generate_reference_data(alanine.system, alanine.positions, output, platform="Reference",
                                **{**TINY, "equilibration": 100.0})  # would take seconds if it ran
    assert output.read_bytes() == b"keep me" and list(tmp_path.iterdir()) == [output]


def test_blow_up_is_an_error_and_leaves_nothing(alanine, tmp_path):
    with pytest.raises(SimulationInstabilityError, match="reduce delta"):
        generate_reference_data(alanine.system, alanine.positions, tmp_path / "data.npz", delta=0.01,
                                platform="Reference", **{**TINY, "segment_length": 2.0})
    assert list(tmp_path.iterdir()) == []


def test_masses_that_match_no_element_need_a_topology(alanine, tmp_path):
    system = copy.deepcopy(alanine.system)
    system.setParticleMass(0, 3.0)
    with pytest.raises(InputError, match="pass topology"):
        generate_reference_data(system, alanine.positions, **TINY)
    system.setParticleMass(0, 0.0)
    with pytest.raises(InputError, match="massless"):
        generate_reference_data(system, alanine.positions, topology=alanine.topology, **TINY)


def test_periodic_system_records_its_box(tmp_path):
    """A rigid water box (SETTLE): the dataset keeps the box as rows in nm, and its frames keep the water rigid."""
    box = water_box(64, rigid_water=True, nonbonded_cutoff=0.45)
    data = generate_reference_data(box.system, box.positions, tmp_path / "water.npz", topology=box.topology,
                                   platform="Reference", **TINY)
    expected = np.array([v.value_in_unit(u.nanometer) for v in box.system.getDefaultPeriodicBoxVectors()])
    assert data.periodic and np.array_equal(data.box, expected)
    i, j = data.constraint_pairs.T
    lengths = np.linalg.norm(data.positions[..., i, :] - data.positions[..., j, :], axis=-1)
    # SETTLE's rigid geometry is exact only to single precision (3e-8 relative, constant in time, on Reference).
    assert (np.abs(lengths - data.constraint_distances) / data.constraint_distances).max() <= 2.0 ** -24
