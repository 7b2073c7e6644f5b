"""Scheme B in OpenMM (implicit_program): the CustomIntegrator program reproduces implicit.ImplicitStepper."""
from __future__ import annotations

import copy
import warnings
from typing import Optional

import numpy as np
import pytest
import torch
import openmm as mm
import openmm.unit as u

from conftest import platform_params
from toy_systems import ToyNetwork
from openmm_actionml.errors import ActionMLConvergenceError, InputError, ModelMismatchError
from openmm_actionml.implicit import (IMPLICIT_SCHEMES, FixedPointSolver, ImplicitConvergenceWarning,
                                      ImplicitStepper)
from openmm_actionml.implicit_program import (ITERATIONS, RESIDUAL, TOTAL_ITERATIONS, UNCONVERGED,
                                              add_implicit_step, check_convergence, default_predictor_forces,
                                              predictor_splitting, read_solver_state)
from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import ActionMLModel, ModelMetadata, export_model, load_model
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.splitting import SplittingStepper
from openmm_actionml.units import BOLTZMANN

H = 0.002  # ps
N_STEPS = 5
KT = BOLTZMANN * 300.0
TORCH_SOLVER = FixedPointSolver("anderson", tolerance=1e-12, max_iterations=300, anderson_depth=5)


@pytest.fixture(scope="module")
def flexible(alanine):
    """Alanine dipeptide, flexible, without the CMMotionRemover (it changes velocities every step)."""
    system = copy.deepcopy(alanine.system)
    for index in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(index), mm.CMMotionRemover):
            system.removeForce(index)
    return system, alanine


def make_model(path, system: mm.System, elements: list[str], scheme: str = "gauss3", anchored: bool = True,
               predictor="T3", h: float = H, network=None, predictor_forces: Optional[str] = None
               ) -> tuple[ActionMLModel, torch.nn.Module]:
    """A toy scheme-B model; the predictor kicks with the force field (anchored) or the heads (pure ML) by default."""
    masses = [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    implicit = IMPLICIT_SCHEMES[scheme]
    splitting = predictor_splitting(predictor, implicit)
    network = ToyNetwork(system.getNumParticles()) if network is None else network
    metadata = ModelMetadata(scheme="B", step=h, splitting={} if splitting is None else splitting.to_dict(),
                             anchored=anchored, elements=elements, masses=masses, constraints=[], periodic=False,
                             network={"kind": "toy"}, temperature=300.0,
                             implicit={**implicit.to_dict(),
                                       "predictor_forces": predictor_forces or default_predictor_forces(anchored)})
    export_model(network, metadata, path)
    return load_model(path), network


def make_context(system, model, solver, positions, platform="Reference", seed=1):
    integrator = mm.CustomIntegrator(model.metadata.step)
    program = add_implicit_step(integrator, model.metadata, solver, kT=KT)
    properties = {"Precision": "single"} if platform == "OpenCL" else {}
    context = mm.Context(add_learned_force(system, model), integrator, mm.Platform.getPlatformByName(platform),
                         properties)
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    return context, integrator, program


def state(context: mm.Context) -> tuple[np.ndarray, np.ndarray]:
    s = context.getState(getPositions=True, getVelocities=True)
    return s.getPositions(asNumpy=True).value_in_unit(u.nanometer), \
        s.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)


def torch_stepper(model: ActionMLModel, network: torch.nn.Module, system: mm.System,
                  solver: FixedPointSolver = TORCH_SOLVER) -> ImplicitStepper:
    """The ground truth: ImplicitStepper with the force field in double precision on Reference."""
    meta = model.metadata
    potential = OpenMMPotential(system, platform="Reference")
    kicks = KickPotential(network, (lambda q: potential.energy_and_forces(q)[1]) if meta.anchored else None)
    masses = torch.tensor(meta.masses, dtype=torch.float64)
    forces = lambda q, head: kicks(q, head).detach()  # noqa: E731
    if meta.implicit["predictor_forces"] == "force_field":
        classical = KickPotential(None, lambda q: potential.energy_and_forces(q)[1])
        kick = lambda q, head: classical(q, head).detach()  # noqa: E731
    else:
        kick = forces
    predictor = SplittingStepper(meta.get_splitting(), meta.step, masses, kick) if meta.splitting else None
    return ImplicitStepper(meta.implicit["name"], meta.step, masses, forces, solver, predictor, kT=KT)


def relative_errors(q, v, q_ref, v_ref, q0) -> tuple[float, float]:
    """Displacement error over the displacement, and velocity error over the largest velocity (max norms)."""
    return np.abs(q - q_ref).max() / np.abs(q_ref - q0).max(), np.abs(v - v_ref).max() / np.abs(v_ref).max()


def elements_of(prepared) -> list[str]:
    return [atom.element.symbol for atom in prepared.topology.atoms()]


# OpenMM solver tolerance per platform and the agreement required with the torch stepper solved to 1e-12, after
# 5 steps of gauss3 with the T3 predictor and Anderson(5) at 2 fs (toy network, alanine dipeptide, flexible).
# Measured:
# - Reference (tolerance 1e-10): 1e-10 (the solver tolerance; 1e-14 when torch uses the same tolerance, with the
#   same iteration counts).
# - CPU: its single-precision nonbonded forces put a floor of ~2e-8 thermal units under the residual, so a
#   tolerance of 1e-10 is never met; at 1e-7 it converges in 11-12 iterations and agrees to 6e-7 (anchored);
#   pure ML (the network runs in double) agrees to 1e-15.
# - OpenCL single precision (tolerance 1e-6): 1e-5.
PLATFORM_SETTINGS = {"Reference": (1e-10, 1e-6), "CPU": (1e-7, 1e-6), "OpenCL": (1e-6, 1e-4)}


@pytest.mark.parametrize("platform", platform_params())
@pytest.mark.parametrize("anchored", [True, False], ids=["anchored", "pure"])
def test_matches_torch_stepper(tmp_path, flexible, platform, anchored):
    system, prepared = flexible
    model, network = make_model(tmp_path / "m.pt", system, elements_of(prepared), anchored=anchored)
    solver_tolerance, tolerance = PLATFORM_SETTINGS[platform]
    solver = FixedPointSolver("anderson", tolerance=solver_tolerance, max_iterations=100, anderson_depth=5,
                              regularisation=1e-6 if platform == "OpenCL" else 1e-10)
    context, integrator, program = make_context(system, model, solver, prepared.positions, platform)
    q0, v0 = state(context)
    integrator.step(N_STEPS)
    after = check_convergence(integrator, None, N_STEPS, program)
    q, v = state(context)
    qs, vs, stats = torch_stepper(model, network, system).run(torch.tensor(q0), torch.tensor(v0), N_STEPS)
    errors = relative_errors(q, v, qs[-1].numpy(), vs[-1].numpy(), q0)
    assert max(errors) < tolerance, errors
    assert after.unconverged == 0 and after.residual <= solver_tolerance
    assert after.total_iterations >= N_STEPS * 2 and context.getParameter("actionml_active") == 0.0


@pytest.mark.parametrize("scheme, predictor, forces, method, depth", [
    ("midpoint", "T3", "model", "anderson", 1),
    ("gauss2", None, "model", "damped", 5),
    ("gauss3", "S2", "force_field", "plain", 5),
    ("gauss3", "T3", "model", "anderson", 8),
], ids=["midpoint-T3model-anderson1", "gauss2-trivial-damped", "gauss3-S2ff-plain", "gauss3-T3model-anderson8"])
def test_same_iterations_as_torch_on_reference(tmp_path, flexible, scheme, predictor, forces, method, depth):
    """Same solver settings on both sides: the same iteration counts and the same state to round-off."""
    system, prepared = flexible
    model, network = make_model(tmp_path / "m.pt", system, elements_of(prepared), scheme, predictor=predictor,
                                predictor_forces=forces)
    solver = FixedPointSolver(method, tolerance=1e-9, max_iterations=200, anderson_depth=depth)
    context, integrator, _ = make_context(system, model, solver, prepared.positions)
    q0, v0 = state(context)
    stepper = torch_stepper(model, network, system, solver)
    q_ref, v_ref = torch.tensor(q0), torch.tensor(v0)
    for _ in range(3):
        integrator.step(1)
        q_ref, v_ref, stats = stepper.step(q_ref, v_ref)
        assert read_solver_state(integrator).iterations == stats.iterations
    q, v = state(context)
    errors = relative_errors(q, v, q_ref.numpy(), v_ref.numpy(), q0)
    assert max(errors) < 1e-11, errors  # measured 1e-14


def test_time_reversible_and_conserves_momentum(tmp_path, flexible):
    system, prepared = flexible
    model, _ = make_model(tmp_path / "m.pt", system, elements_of(prepared))
    solver = FixedPointSolver("anderson", tolerance=1e-12, max_iterations=100)
    context, integrator, _ = make_context(system, model, solver, prepared.positions)
    masses = np.array(model.metadata.masses)[:, None]
    q0, v0 = state(context)
    integrator.step(N_STEPS)
    q1, v1 = state(context)
    momentum = np.abs((masses * (v1 - v0)).sum(0)).max() / np.abs(masses * v0).sum()
    assert momentum < 1e-13, momentum  # whatever the residual: the forces of one iterate are pair forces
    context.setVelocities(-v1)
    integrator.step(N_STEPS)
    q, v = state(context)
    assert read_solver_state(integrator).unconverged == 0
    # Exact reversal up to the solver tolerance: the fixed point of the flipped step is the flipped midpoint.
    assert np.abs(q - q0).max() < 1e-9 * np.abs(q1 - q0).max()
    assert np.abs(v + v0).max() < 1e-9 * np.abs(v0).max()


def test_nonconvergence_raises_or_warns_with_advice(tmp_path, flexible):
    system, prepared = flexible
    model, _ = make_model(tmp_path / "m.pt", system, elements_of(prepared), h=0.006)
    solver = FixedPointSolver("plain", tolerance=1e-8, max_iterations=2)
    context, integrator, program = make_context(system, model, solver, prepared.positions)
    before = read_solver_state(integrator)
    integrator.step(3)
    after = read_solver_state(integrator)
    assert (after.iterations, after.total_iterations, after.unconverged) == (2, 6, 3)
    assert after.residual > 1e-8
    with pytest.raises(ActionMLConvergenceError, match=r"failed in 3 of the last 3 step\(s\).*max_iterations = 2.*"
                                                       r"Remedies.*anderson"):
        check_convergence(integrator, before, 3, program)
    with pytest.warns(ImplicitConvergenceWarning, match="did not converge"):
        check_convergence(integrator, before, 3, program, policy="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_convergence(integrator, after, 0, program) == after  # nothing new: silent


def test_learned_force_is_off_outside_the_step(tmp_path, flexible):
    system, prepared = flexible
    model, _ = make_model(tmp_path / "m.pt", system, elements_of(prepared))
    context, integrator, _ = make_context(system, model, FixedPointSolver(tolerance=1e-8), prepared.positions)
    integrator.step(2)
    assert context.getParameter("actionml_active") == 0.0
    learned = context.getState(getForces=True, getEnergy=True, groups={30})
    assert learned.getPotentialEnergy()._value == 0.0 and not learned.getForces(asNumpy=True)._value.any()
    names = {integrator.getGlobalVariableName(i) for i in range(integrator.getNumGlobalVariables())}
    assert {ITERATIONS, TOTAL_ITERATIONS, UNCONVERGED, RESIDUAL} <= names
    assert integrator.getStepSize().value_in_unit(u.picosecond) == H


@pytest.mark.parametrize("platform", platform_params())
def test_massless_particle_stays_fixed(tmp_path, platform):
    system = mm.System()
    bonds = mm.HarmonicBondForce()
    for index, mass in enumerate([12.0, 0.0, 14.0]):
        system.addParticle(mass)
        if index:
            bonds.addBond(index - 1, index, 0.12, 5e4)
    system.addForce(bonds)
    model, _ = make_model(tmp_path / "m.pt", system, ["C", "O", "N"])
    context, integrator, program = make_context(system, model, FixedPointSolver(tolerance=1e-6), np.array(
        [[0.0, 0.0, 0.0], [0.12, 0.01, 0.0], [0.23, 0.05, 0.0]]), platform)
    q0, _ = state(context)
    integrator.step(5)
    check_convergence(integrator, None, 5, program)
    q, v = state(context)
    assert np.isfinite(q).all() and np.isfinite(v).all()
    assert np.array_equal(q[1], q0[1]) and not v[1].any()
    assert not np.array_equal(q[0], q0[0])
    assert program.n_particles == 2


def test_refusals(tmp_path, flexible):
    system, prepared = flexible
    model, _ = make_model(tmp_path / "m.pt", system, elements_of(prepared))
    with pytest.raises(InputError, match="rms"):
        add_implicit_step(mm.CustomIntegrator(H), model.metadata, FixedPointSolver(norm="max"))
    constrained = copy.deepcopy(model.metadata)
    constrained.constraints = [[0, 1, 0.1]]
    with pytest.raises(ModelMismatchError, match="unconstrained-only"):
        add_implicit_step(mm.CustomIntegrator(H), constrained)
    scheme_a = copy.deepcopy(model.metadata)
    scheme_a.scheme = "A"
    with pytest.raises(ModelMismatchError, match="scheme-A"):
        add_implicit_step(mm.CustomIntegrator(H), scheme_a)
    pure = copy.deepcopy(model.metadata)
    pure.anchored = False
    with pytest.raises(ModelMismatchError, match="force field"):
        add_implicit_step(mm.CustomIntegrator(H), pure)
    wrong_heads = copy.deepcopy(model.metadata)
    wrong_heads.implicit = IMPLICIT_SCHEMES["midpoint"].to_dict()
    with pytest.raises(ModelMismatchError, match="head 1"):
        add_implicit_step(mm.CustomIntegrator(H), wrong_heads)
    assert predictor_splitting("none", IMPLICIT_SCHEMES["gauss3"]) is None
    assert {s.head for s in predictor_splitting("T3", IMPLICIT_SCHEMES["gauss2"]).stages} == {0}


def test_actionml_integrator_runs_scheme_b_models(tmp_path, flexible):
    """ActionMLIntegrator builds the same scheme-B step as add_implicit_step, and its step() checks convergence."""
    system, prepared = flexible
    model, _ = make_model(tmp_path / "m.pt", system, elements_of(prepared))
    solver = FixedPointSolver("anderson", tolerance=1e-10, max_iterations=60)
    context, integrator, _ = make_context(system, model, solver, prepared.positions)
    wrapped = ActionMLIntegrator(model, solver=solver)
    other = mm.Context(add_learned_force(system, model), wrapped, mm.Platform.getPlatformByName("Reference"))
    other.setState(context.getState(getPositions=True, getVelocities=True))
    integrator.step(3)
    wrapped.step(3)
    np.testing.assert_array_equal(state(context)[0], state(other)[0])
    np.testing.assert_array_equal(state(context)[1], state(other)[1])

    failing = ActionMLIntegrator(model, solver=FixedPointSolver("plain", tolerance=1e-10, max_iterations=2))
    stuck = mm.Context(add_learned_force(system, model), failing, mm.Platform.getPlatformByName("Reference"))
    stuck.setState(context.getState(getPositions=True, getVelocities=True))
    with pytest.raises(ActionMLConvergenceError, match="max_iterations = 2"):
        failing.step(2)
