"""SplittingIntegrator: the classical splittings in OpenMM equal the torch stepper and OpenMM's own Verlet."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import openmm as mm
import openmm.unit as u

from conftest import platform_params
from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.errors import InputError, SimulationInstabilityError
from openmm_actionml.integrator import SplittingIntegrator
from openmm_actionml.kicks import KickPotential
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.splitting import SplittingStepper, get_splitting
from test_integrator import TOLERANCE, make_context, state

N_STEPS = 10


@pytest.mark.parametrize("platform", platform_params())
@pytest.mark.parametrize("name, constraints, h", [("T3", True, 0.008), ("S2", False, 0.002), ("VV", True, 0.002)])
def test_matches_torch_stepper(systems, platform, name, constraints, h):
    """Same relative bound as the learned integrator's (test_integrator.TOLERANCE), for the same reasons."""
    prepared = systems[constraints]
    context = make_context(prepared.system, SplittingIntegrator(name, h * u.picoseconds), prepared.positions, platform)
    q0, v0 = state(context)
    context.getIntegrator().step(N_STEPS)
    q, v = state(context)
    potential = OpenMMPotential(prepared.system, platform="Reference")
    masses = torch.tensor([prepared.system.getParticleMass(i).value_in_unit(u.dalton)
                           for i in range(prepared.system.getNumParticles())], dtype=torch.float64)
    kicks = KickPotential(None, lambda x: potential.energy_and_forces(x)[1])
    stepper = SplittingStepper(get_splitting(name), h, masses, lambda x, head: kicks(x, head).detach(),
                               ConstraintSet.from_system(prepared.system))
    qs, vs = stepper.run(torch.tensor(q0), torch.tensor(v0), N_STEPS)
    q_ref, v_ref = qs[-1].numpy(), vs[-1].numpy()
    error = max(np.abs(q - q_ref).max() / np.abs(q_ref - q0).max(), np.abs(v - v_ref).max() / np.abs(v_ref).max())
    assert error < TOLERANCE[platform]


def test_velocity_verlet_positions_equal_openmm_verlet(systems):
    """Leapfrog and velocity Verlet generate the same positions. OpenMM's leapfrog velocities lag by h/2, so
    it starts from v(-h/2) = v(0) - h/2 a(0). Reference platform, double precision: agreement to round-off."""
    prepared = systems[False]
    h = 0.0005
    ours = make_context(prepared.system, SplittingIntegrator("VV", h), prepared.positions)
    q0, v0 = state(ours)
    theirs = make_context(prepared.system, mm.VerletIntegrator(h), prepared.positions)
    forces = ours.getState(getForces=True).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    masses = np.array([prepared.system.getParticleMass(i).value_in_unit(u.dalton)
                       for i in range(prepared.system.getNumParticles())])
    theirs.setVelocities(v0 - 0.5 * h * forces / masses[:, None])
    ours.getIntegrator().step(50)
    theirs.getIntegrator().step(50)
    displacement = np.abs(state(ours)[0] - q0).max()
    assert np.abs(state(ours)[0] - state(theirs)[0]).max() < 1e-12 * max(displacement, 1.0) * 50


def test_langevin_half_steps_thermalise(systems):
    """With a bath, T3 at 4 fs (HBonds) holds the kinetic temperature: the mean over 2000 samples of 2K/(n k)
    is within 5 standard errors of the bath, the error from the samples' own spread (correlated over ~1 ps at
    friction 5/ps, so the effective count is taken as one per 1 ps)."""
    prepared = systems[True]
    system = prepared.system
    integrator = SplittingIntegrator("T3", 0.004, temperature=300 * u.kelvin, friction=5 / u.picosecond)
    context = make_context(system, integrator, prepared.positions)
    integrator.step(500)
    n_dof = 3 * system.getNumParticles() - system.getNumConstraints()
    samples = []
    for _ in range(2000):
        integrator.step(1)
        kinetic = context.getState(getEnergy=True).getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        samples.append(2 * kinetic / (n_dof * 0.0083144626))
    samples = np.array(samples)
    effective = 2000 * 0.004 / 1.0
    assert abs(samples.mean() - 300.0) < 5 * samples.std() / np.sqrt(effective)


def test_bad_options_and_blow_up_are_reported(systems):
    with pytest.raises(InputError, match="unknown splitting"):
        SplittingIntegrator("T4", 0.002)
    with pytest.raises(InputError, match="step"):
        SplittingIntegrator("T3", -0.002)
    with pytest.raises(InputError, match="friction"):
        SplittingIntegrator("T3", 0.002, friction=1.0)
    prepared = systems[False]
    integrator = SplittingIntegrator("VV", 0.012)
    context = make_context(prepared.system, integrator, prepared.positions)
    context.setVelocitiesToTemperature(3000 * u.kelvin, 3)
    with pytest.raises(SimulationInstabilityError, match="stability"):
        integrator.step(2000)
    assert integrator.evaluations_per_step == 1.0
    assert SplittingIntegrator("T3", 0.008).evaluations_per_step == 3.0
