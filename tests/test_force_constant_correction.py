"""The force-constant correction: the torch energy against OpenMM's scaled force field, and its training end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (before openmm: openmmtorch's plugins need torch's libraries loaded)
import openmm as mm
import openmm.app as app

from openmm_actionml.errors import InputError, ModelMismatchError
from openmm_actionml.cli import MODELS_DIR
from openmm_actionml.ensemble import Starts
from openmm_actionml.evaluate import model_candidate, network_effect
from openmm_actionml.examples import build_training_system
from openmm_actionml.force_constant_correction import KIND, ForceConstantCorrection, model_factors, \
    with_learned_factors
from openmm_actionml.frequency_matching import harmonic_term_classes, with_scaled_force_constants
from openmm_actionml.implicit_training import ImplicitTrainingOptions
from openmm_actionml.integrator import RESERVED_GROUPS, ActionMLIntegrator, SplittingIntegrator, add_learned_force, \
    learned_step
from openmm_actionml.modelfile import load_model
from openmm_actionml.simulate import SummaryReporter, run_model
from openmm_actionml.splitting import get_splitting, with_tied_heads
from openmm_actionml.systems import particle_masses, topology_elements
from openmm_actionml.training import TrainingOptions, train

from conftest import platform_params
from test_integrator import N_STEPS, TOLERANCE, assert_matches_torch, make_context, make_model, state
from test_training import assert_steps_in_openmm, tiny_dataset, tiny_options  # noqa: F401  (a fixture)

#: Both sides are double precision and the same sums of the same terms, so they agree to round-off of the
#: largest energies summed (hundreds of kJ/mol at 1e-16); this is far above that and far below any real mismatch.
ENERGY_TOLERANCE = 1e-8  # kJ/mol
FORCE_TOLERANCE = 1e-7  # kJ/mol/nm


def energy_and_forces(system: mm.System, positions: np.ndarray) -> tuple[float, np.ndarray]:
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(mm.unit.kilojoule_per_mole / mm.unit.nanometer))


def random_correction(prepared, n_heads: int = 2) -> ForceConstantCorrection:
    """A correction of ``prepared``'s force field with factors drawn around 1 (log-normal, 20 %)."""
    correction = ForceConstantCorrection(prepared.system, topology_elements(prepared.topology), n_heads)
    with torch.no_grad():
        correction.log_scales.copy_(torch.as_tensor(np.random.default_rng(0).normal(0.0, 0.2, (len(
            correction.class_names), n_heads))))
    return correction


@pytest.mark.parametrize("prepared", ["alanine", "alanine_hbonds"])
def test_each_head_is_the_scaled_force_field_less_the_force_field(prepared, request):
    """dW_k at displaced configurations equals V with each class's force constants times s_ck less V, in energy and
    forces, as OpenMM computes both."""
    prepared = request.getfixturevalue(prepared)
    system, elements = prepared.system, topology_elements(prepared.topology)
    correction = random_correction(prepared)
    rng = np.random.default_rng(1)
    configurations = np.asarray(prepared.positions.value_in_unit(mm.unit.nanometer))[None] + \
        rng.normal(0.0, 0.01, (3, system.getNumParticles(), 3))
    q = torch.as_tensor(configurations).requires_grad_(True)
    energies = correction(q)
    classes = harmonic_term_classes(system, elements)
    for head, factors in enumerate(correction.factors()):
        (gradient,) = torch.autograd.grad(energies[:, head].sum(), q, retain_graph=True)
        scaled = with_scaled_force_constants(system, classes, factors)
        for b, positions in enumerate(configurations):
            energy, forces = energy_and_forces(scaled, positions)
            energy_ff, forces_ff = energy_and_forces(system, positions)
            assert energies[b, head].item() == pytest.approx(energy - energy_ff, abs=ENERGY_TOLERANCE)
            np.testing.assert_allclose(-gradient[b].numpy(), forces - forces_ff, rtol=0, atol=FORCE_TOLERANCE)


@pytest.mark.parametrize("platform", platform_params())
def test_the_openmm_integrator_steps_as_the_torch_stepper(tmp_path, systems, platform):
    """Exported into the TorchForce, the correction gives the OpenMM program the torch stepper's trajectory (T3 at
    8 fs with HBonds, two heads), to the tolerance each platform's precision allows (test_integrator)."""
    correction = random_correction(systems[True])
    model = make_model(tmp_path / "factors.pt", correction, systems[True])
    assert_matches_torch(model, correction, systems[True], platform, TOLERANCE[platform])


@pytest.fixture(scope="module")
def tied_model_run(tmp_path_factory, systems):
    """A tied model of random factors (T3 at 8 fs, HBonds) and N_STEPS of it through its TorchForce on Reference:
    the model, the start State and the end's positions and velocities."""
    prepared = systems[True]
    correction = random_correction(prepared, n_heads=1)
    model = make_model(tmp_path_factory.mktemp("tied") / "tied.pt", correction, prepared,
                       splitting=with_tied_heads(get_splitting("T3")))
    learned = make_context(add_learned_force(prepared.system, model), ActionMLIntegrator(model), prepared.positions)
    start = learned.getState(getPositions=True, getVelocities=True)
    learned.getIntegrator().step(N_STEPS)
    return model, start, state(learned)


def assert_same_step(start: mm.State, end: tuple[np.ndarray, np.ndarray], context: mm.Context) -> None:
    """``context`` ended where the TorchForce run from ``start`` did, to the Reference tolerance of test_integrator
    (constraints at 1e-10 on both sides)."""
    q0 = start.getPositions(asNumpy=True).value_in_unit(mm.unit.nanometer)
    (q, v), (q_baked, v_baked) = end, state(context)
    assert np.abs(q_baked - q).max() / np.abs(q - q0).max() < TOLERANCE["Reference"]
    assert np.abs(v_baked - v).max() / np.abs(v).max() < TOLERANCE["Reference"]


def test_a_tied_model_is_its_splitting_on_the_scaled_system(tmp_path, systems, tied_model_run):
    """The classical splitting on with_learned_factors' System steps as the model's own integrator (TorchForce)."""
    prepared = systems[True]
    model, start, end = tied_model_run
    baked = make_context(with_learned_factors(prepared.system, model),
                         SplittingIntegrator("T3", model.metadata.step), prepared.positions)
    baked.setState(start)
    baked.getIntegrator().step(N_STEPS)
    assert_same_step(start, end, baked)
    two_heads = make_model(tmp_path / "two.pt", random_correction(prepared), prepared)
    with pytest.raises(InputError, match="one set of factors per kick potential"):
        with_learned_factors(prepared.system, two_heads)


def test_run_model_runs_a_tied_model_baked(tmp_path, systems, tied_model_run):
    """run_model (``actionml run``) takes a tied model's step baked into the System, with the classical splitting's
    integrator and no learned force, and says so; the step is the TorchForce's. A two-head model keeps its
    TorchForce, and a System that already carries a learned force is refused."""
    prepared = systems[True]
    model, start, end = tied_model_run
    simulation, summary = run_model(prepared, model, N_STEPS, platform="Reference", report_interval=N_STEPS,
                                    state=start, progress=False)
    assert type(simulation.integrator) is SplittingIntegrator
    assert not any(force.getForceGroup() in RESERVED_GROUPS for force in simulation.system.getForces())
    assert_same_step(start, end, simulation.context)
    assert "baked" in summary.text()
    two_heads = make_model(tmp_path / "two.pt", random_correction(prepared), prepared)
    system, integrator = learned_step(prepared.system, two_heads)
    assert type(integrator) is ActionMLIntegrator
    assert any(force.getForceGroup() in RESERVED_GROUPS for force in system.getForces())
    with pytest.raises(ModelMismatchError, match="already has"):
        learned_step(add_learned_force(prepared.system, model), model)


def test_a_baked_run_is_summarised_in_the_force_field_energy(systems, tied_model_run):
    """run_model's summary reads a baked run's potential energy in the force field (a meter Context), as the
    TorchForce run's States give it (the learned term is on only inside a step): the two runs' total energies agree
    to test_integrator's relative tolerance of the potential energy's change along the run. Unmetered, the baked
    System's own energy (the scaled force field's) differs by dW."""
    prepared = systems[True]
    model, start, _ = tied_model_run
    masses = np.array([prepared.system.getParticleMass(i).value_in_unit(mm.unit.dalton)
                       for i in range(prepared.system.getNumParticles())])
    reference = mm.Platform.getPlatformByName("Reference")
    baked = with_learned_factors(prepared.system, model)
    runs = {"torch": (add_learned_force(prepared.system, model), ActionMLIntegrator(model), None),
            "baked": (baked, SplittingIntegrator("T3", model.metadata.step),
                      mm.Context(prepared.system, mm.VerletIntegrator(0.001), reference)),
            "unmetered": (baked, SplittingIntegrator("T3", model.metadata.step), None)}
    energies = {}
    for name, (system, integrator, meter) in runs.items():
        simulation = app.Simulation(prepared.topology, system, integrator, reference)
        simulation.context.setState(start)
        reporter = SummaryReporter(1, meter)
        simulation.reporters.append(reporter)
        simulation.step(N_STEPS)
        energies[name] = np.array(reporter.energies)
        if name == "torch":
            kinetic = 0.5 * (masses[:, None] * np.array(reporter.velocities) ** 2).sum(axis=(1, 2))
            potential_change = np.ptp(energies[name] - kinetic)
    assert np.abs(energies["baked"] - energies["torch"]).max() < TOLERANCE["Reference"] * potential_change
    assert np.abs(energies["unmetered"] - energies["torch"]).max() > TOLERANCE["Reference"] * potential_change


def test_evaluate_judges_a_tied_model_as_it_runs(systems, tied_model_run):
    """evaluate's row of a tied model is the baked step run_model takes, its energy read in the force field (the
    baked System's is the scaled one), so its speed is the step's own."""
    prepared = systems[True]
    model, start, end = tied_model_run
    row = model_candidate(prepared, model)
    assert type(row.make_integrator()) is SplittingIntegrator and row.energy_system is prepared.system
    assert not any(force.getForceGroup() in RESERVED_GROUPS for force in row.system.getForces())
    context = make_context(row.system, row.make_integrator(), prepared.positions)
    context.setState(start)
    context.getIntegrator().step(N_STEPS)
    assert_same_step(start, end, context)


def test_the_network_check_takes_a_tied_model_as_it_runs(tmp_path, systems, tied_model_run):
    """evaluate's check that the learned correction is on steps a tied model baked, as its rows run it: the random
    factors differ from the force field's step, and factors of 1 (an untrained correction) are refused."""
    prepared = systems[True]
    model, start, _ = tied_model_run
    starts = Starts(start.getPositions(asNumpy=True).value_in_unit(mm.unit.nanometer)[None],
                    start.getVelocities(asNumpy=True).value_in_unit(mm.unit.nanometer / mm.unit.picosecond)[None],
                    particle_masses(prepared.system))
    assert network_effect(prepared.system, model, starts, "Reference") > 0.0
    untrained = make_model(tmp_path / "ones.pt", ForceConstantCorrection(
        prepared.system, topology_elements(prepared.topology), n_heads=1), prepared,
        splitting=with_tied_heads(get_splitting("T3")))
    with pytest.raises(ModelMismatchError, match="learned force is off"):
        network_effect(prepared.system, untrained, starts, "Reference")


def test_it_starts_at_the_force_field(alanine):
    correction = ForceConstantCorrection(alanine.system, topology_elements(alanine.topology), n_heads=1)
    q = torch.as_tensor(np.asarray(alanine.positions.value_in_unit(mm.unit.nanometer)))[None]
    assert correction(q).abs().max().item() == 0.0
    assert set(correction.factors()[0].values()) == {1.0}


def test_training_exports_factors_that_run_in_openmm(tiny_dataset, tmp_path, alanine):  # noqa: F811
    """The trained factors moved from 1, the model file says what they are, and the OpenMM integrator steps with
    them (its TorchForce is checked against the torch stepper for any exported correction in test_integrator)."""
    output = tmp_path / "factors.pt"
    train(tiny_dataset, None, tiny_options(force_constants=True, tied_heads=True), output, progress=False)
    model = load_model(output)
    classes = [c.name for c in harmonic_term_classes(alanine.system, topology_elements(alanine.topology))]
    assert model.metadata.network == {"kind": KIND, "classes": classes, "n_heads": 1}
    log_scales = model.network.log_scales.detach()
    assert log_scales.shape == (len(classes), 1) and log_scales.abs().max().item() > 0.0
    assert_steps_in_openmm(model, alanine)


def test_refusals(alanine):
    with pytest.raises(InputError, match="pure-ML kicks have none"):
        TrainingOptions(step=0.002, anchored=False, force_matching=1.0, force_constants=True)
    with pytest.raises(InputError, match="scheme-A correction"):
        ImplicitTrainingOptions(step=0.002, force_constants=True)
    periodic = mm.System()
    periodic.addParticle(12.0)
    periodic.addParticle(12.0)
    bonds = mm.HarmonicBondForce()
    bonds.addBond(0, 1, 0.15, 1000.0)
    bonds.setUsesPeriodicBoundaryConditions(True)
    periodic.addForce(bonds)
    with pytest.raises(InputError, match="needs whole molecules"):
        ForceConstantCorrection(periodic, ["C", "C"], n_heads=1)
    periodic.removeForce(0)
    with pytest.raises(InputError, match="no HarmonicBondForce or HarmonicAngleForce"):
        ForceConstantCorrection(periodic, ["C", "C"], n_heads=1)


@pytest.mark.parametrize("name", ["alanine-t3-8fs-factors.pt", "villin-t3-8fs-factors.pt"])
def test_shipped_factor_models_bake_into_their_systems(name):
    """Each shipped force-constant model has one factor for every class of its system's harmonic terms, and its
    factors go into the System it was trained on."""
    model = load_model(MODELS_DIR / name)
    prepared = build_training_system(model.metadata.recipe)
    classes = harmonic_term_classes(prepared.system, topology_elements(prepared.topology))
    (factors,) = model_factors(model)
    assert list(factors) == [c.name for c in classes]
    baked = with_learned_factors(prepared.system, model)
    force = baked.getForce(classes[0].force_index)
    original = prepared.system.getForce(classes[0].force_index)
    term = classes[0].terms[0]
    scaled_k, k = (f.getAngleParameters(term)[-1] if isinstance(f, mm.HarmonicAngleForce) else
                   f.getBondParameters(term)[-1] for f in (force, original))
    assert scaled_k / k == pytest.approx(factors[classes[0].name], rel=1e-12)
