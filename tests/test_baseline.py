"""A learned correction on a cheaper baseline force field: the kicks are ``B + dW`` with ``dW`` trained against the
data's force field ``V``, the model runs on a System carrying B's forces, and its energy is measured in V."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import openmm as mm
import openmm.unit as u
from openmm_actionml.ensemble import Candidate, EnsembleOptions, equilibrated_starts, run_ensemble
from openmm_actionml.errors import InputError, ModelMismatchError
from openmm_actionml.evaluate import model_candidate, model_system
from openmm_actionml.examples import build_baseline, build_example, with_baseline
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.implicit_training import ImplicitTrainingOptions
from openmm_actionml.integrator import SplittingIntegrator, add_learned_force
from openmm_actionml.modelfile import load_model
from openmm_actionml.nve_gate import GateOptions
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.systems import force_classes, replace_forces
from openmm_actionml.training import Trainer, TrainingOptions, train

BASELINE = ["amber99sbildn.xml"]  # alanine dipeptide's V is amber14: the same atoms, other torsions and charges
STEP = 0.002


def energy(system: mm.System, positions) -> float:
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


@pytest.fixture(scope="module")
def dataset(alanine):
    """A tiny alanine dataset that records how its system was built, so its baseline can be built from it."""
    return generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                   delta=0.5 * u.femtosecond, record_every=2, n_segments=4, segment_length=0.05,
                                   decorrelation=0.05, equilibration=0.1, platform="Reference", seed=7,
                                   store_forces=True, metadata=alanine.settings,
                                   progress=False)


def options(**changes) -> TrainingOptions:
    chosen = dict(step=STEP, splitting="S2", curriculum=(1,), iterations=3, batch_size=4, eval_every=1,
                  force_matching=1.0, pretrain_iterations=3, pretrain_batch_size=8, energy_penalty=0.0,
                  baseline=BASELINE, network={"hidden": [8], "n_channels": 4},
                  gate=GateOptions(n_trajectories=2, duration=0.02, record_every=1))
    chosen.update(changes)
    return TrainingOptions(**chosen)


def test_replace_forces_keeps_the_particles_and_takes_the_donors_forces(alanine_hbonds):
    baseline = with_baseline(alanine_hbonds, BASELINE)
    system = baseline.system
    assert system.getNumParticles() == alanine_hbonds.system.getNumParticles()
    assert [system.getParticleMass(i) for i in range(system.getNumParticles())] == \
        [alanine_hbonds.system.getParticleMass(i) for i in range(system.getNumParticles())]
    assert [system.getConstraintParameters(i) for i in range(system.getNumConstraints())] == \
        [alanine_hbonds.system.getConstraintParameters(i) for i in range(system.getNumConstraints())]
    assert sum(isinstance(f, mm.CMMotionRemover) for f in system.getForces()) == 1  # the System's, not both
    assert force_classes(system) == force_classes(alanine_hbonds.system)
    with_barostat = copy.deepcopy(system)  # a barostat or thermostat is no part of the force field a kick adds
    with_barostat.addForce(mm.MonteCarloBarostat(1.0, 300.0))
    assert force_classes(with_barostat) == force_classes(system)
    donor = build_example("alanine-dipeptide", forcefield=BASELINE, constraints="HBonds").system
    v, b = energy(alanine_hbonds.system, alanine_hbonds.positions), energy(system, alanine_hbonds.positions)
    assert b == energy(donor, alanine_hbonds.positions) and abs(b - v) > 0.1  # B's energy exactly, not V's
    with pytest.raises(InputError, match="same number|particles"):
        replace_forces(system, build_example("water-box", n_waters=32, nonbonded_cutoff=0.4).system)


def test_a_baseline_with_other_atoms_is_refused(alanine):
    elements = [atom.element.symbol for atom in alanine.topology.atoms()]
    with pytest.raises(InputError, match="same atoms in the same order"):
        build_baseline(alanine.settings, BASELINE, elements[::-1])
    with pytest.raises(InputError, match="same atoms in the same order"):
        build_baseline(alanine.settings, BASELINE, elements[:-1])


def test_options_that_cannot_take_a_baseline_are_refused():
    with pytest.raises(InputError, match="anchored"):
        options(anchored=False)
    with pytest.raises(InputError, match="force_matching"):
        options(force_matching=0.0)
    with pytest.raises(InputError, match="scheme-A option"):
        ImplicitTrainingOptions(step=STEP, force_matching=1.0, baseline=BASELINE)


def test_kicks_use_the_baseline_and_force_matching_measures_against_the_data(dataset, alanine):
    trainer = Trainer(dataset, dataset.system(), options())
    q, _, forces, _ = trainer.windows(0, trainer.train_segments, 4)
    q = q[:, 0]
    baseline = OpenMMPotential(with_baseline(alanine, BASELINE).system)
    expected_b = torch.as_tensor(baseline.energy_and_forces(q)[1])
    network, trainer.kicks.network = trainer.kicks.network, None
    with torch.no_grad():
        assert torch.allclose(trainer.kicks(q, 0), expected_b, rtol=0, atol=1e-9)
        # The classical row's force error is B's against V's stored forces (flexible: no projection).
        expected = (((expected_b - forces) ** 2).mean() / (forces ** 2).mean()).item()
        assert trainer.force_matching_loss(q, forces).item() == pytest.approx(expected, rel=1e-10)
    trainer.kicks.network = network
    loss = trainer.force_matching_loss(q, forces)
    loss.backward()  # differentiable in the network's parameters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.network.parameters())


def test_dataset_that_does_not_record_its_system_is_refused(alanine):
    bare = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                   delta=0.5 * u.femtosecond, record_every=2, n_segments=2, segment_length=0.02,
                                   decorrelation=0.02, equilibration=0.02, platform="Reference", seed=8,
                                   progress=False)
    with pytest.raises(InputError, match="record neither its PDB file nor a water box"):
        Trainer(bare, bare.system(), options(validation_fraction=0.5))


@pytest.fixture(scope="module")
def baseline_model(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "delta.pt"
    report = train(dataset, None, options(gate=GateOptions(n_trajectories=2, duration=0.02, record_every=1,
                                                           min_stable_fraction=0.0)), path, progress=False)
    assert "force error" in report.summary()  # the baseline's alone (classical) and each candidate's
    return load_model(path)


def test_the_model_runs_on_the_baseline_and_refuses_the_data_force_field(baseline_model, alanine):
    meta = baseline_model.metadata
    baseline = with_baseline(alanine, BASELINE)
    assert meta.anchored and meta.baseline == BASELINE and meta.force_field == force_classes(baseline.system)
    assert model_system(alanine, baseline_model).system.getNumForces() == baseline.system.getNumForces()
    add_learned_force(baseline.system, baseline_model)  # validates
    # The check is by force classes (amber14 and amber99sbildn have the same ones): a System without torsions differs.
    other = copy.deepcopy(alanine.system)
    for index in reversed(range(other.getNumForces())):
        if isinstance(other.getForce(index), mm.PeriodicTorsionForce):
            other.removeForce(index)
    with pytest.raises(ModelMismatchError, match="with_baseline"):
        add_learned_force(other, baseline_model)


def test_the_ensemble_measures_the_energy_of_the_force_field_the_row_stands_for(baseline_model, alanine):
    """A baseline row's samples hold V's potential energy at its positions (plus its kinetic energy), not B's."""
    row = model_candidate(alanine, baseline_model)
    assert row.energy_system is alanine.system and "amber99sbildn.xml + learned" in row.name
    starts = equilibrated_starts(alanine.system, alanine.positions, 300.0, 2, spacing=0.05, equilibration=0.05,
                                 platform="Reference", seed=2)
    ensemble = EnsembleOptions(n_trajectories=2, duration=0.04, sample_interval=0.02, correlation_time=0.02,
                               reversibility_time=0.01)
    classical_b = Candidate("T3 on B", STEP, model_system(alanine, baseline_model).system,
                            lambda: SplittingIntegrator("T3", STEP), energy_system=alanine.system)
    result = run_ensemble(classical_b, starts, 300.0, ensemble, [a.element.symbol for a in alanine.topology.atoms()],
                          "Reference")
    context = mm.Context(classical_b.system, SplittingIntegrator("T3", STEP), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(starts.positions[0])
    context.setVelocities(starts.velocities[0])
    totals = []
    for _ in range(3):
        state = context.getState(getPositions=True, getEnergy=True)
        totals.append(energy(alanine.system, state.getPositions()) + state.getKineticEnergy().value_in_unit(
            u.kilojoule_per_mole))
        context.getIntegrator().step(10)
    np.testing.assert_allclose(result.energies[0], np.array(totals) - totals[0], rtol=0, atol=1e-6)
