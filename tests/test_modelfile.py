"""The model file: export/load round trip, validation against a System, and damaged files."""
from __future__ import annotations

import copy

import pytest
import torch

import openmm as mm
import openmm.unit as u
from openmm_actionml.errors import InputError, ModelFileError, ModelMismatchError
from openmm_actionml.modelfile import ModelMetadata, export_model, load_model
from openmm_actionml.network import build_network
from openmm_actionml.splitting import SPLITTINGS
from openmm_actionml.systems import particle_masses


@pytest.fixture(scope="module")
def exported(tmp_path_factory, alanine):
    elements = [atom.element.symbol for atom in alanine.topology.atoms()]
    network = build_network(elements, zero_init=False, hidden=[8], n_channels=4)
    system = alanine.system
    metadata = ModelMetadata(scheme="A", step=0.004, splitting=SPLITTINGS["S2"].to_dict(), anchored=True,
                             elements=elements, constraints=[], periodic=False, network=network.config_dict(),
                             masses=[system.getParticleMass(i).value_in_unit(u.dalton)
                                     for i in range(system.getNumParticles())],
                             temperature=300.0, system_name="alanine-dipeptide", recipe={"seed": 3})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    export_model(network, metadata, path)
    return network, metadata, path


def test_round_trip_gives_identical_outputs_and_metadata(exported, alanine):
    network, metadata, path = exported
    model = load_model(path)
    assert model.metadata == metadata
    q = torch.tensor(alanine.positions.value_in_unit(u.nanometer), dtype=torch.float32)
    with torch.no_grad():
        expected = network(q[None], None)
    assert torch.equal(model.network(q[None], None), expected)
    for head in (0, 1):
        energy, forces = model.module(q, torch.tensor(float(head)), torch.tensor(1.0))
        assert energy.item() == pytest.approx(expected[0, head].item(), rel=1e-6)
        assert forces.shape == q.shape and bool(torch.isfinite(forces).all())


def test_validate_names_each_mismatch(exported, alanine):
    model = load_model(exported[2])
    model.validate(alanine.system, step=0.004, topology=alanine.topology)
    heavier = copy.deepcopy(alanine.system)
    heavier.setParticleMass(0, 2.0 * u.dalton)
    with pytest.raises(ModelMismatchError, match="particle 0 has mass"):
        model.validate(heavier)
    constrained = copy.deepcopy(alanine.system)
    constrained.addConstraint(0, 1, 0.1)
    with pytest.raises(ModelMismatchError, match="constraints"):
        model.validate(constrained)
    periodic = copy.deepcopy(alanine.system)
    for force in periodic.getForces():
        if isinstance(force, mm.NonbondedForce):
            force.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
    with pytest.raises(ModelMismatchError, match="non-periodic"):
        model.validate(periodic)
    with pytest.raises(ModelMismatchError, match="4 fs, not 2 fs"):
        model.validate(alanine.system, step=0.002)
    bigger = copy.deepcopy(alanine.system)
    bigger.addParticle(1.0)
    with pytest.raises(ModelMismatchError, match="23"):
        model.validate(bigger)


def test_on_masses_binds_the_same_potential_to_other_masses(exported, alanine):
    """A model bound to heavier masses fits the System with them and not the original one, with the same
    TorchScript module (the learned potential); masses that cannot be a System's are refused."""
    model = load_model(exported[2])
    heavier = copy.deepcopy(alanine.system)
    heavier.setParticleMass(0, 2.0 * u.dalton)
    masses = particle_masses(heavier).tolist()
    bound = model.on_masses(masses)
    bound.validate(heavier)
    assert bound.module is model.module and bound.metadata.masses == masses
    with pytest.raises(ModelMismatchError, match="particle 0 has mass"):
        bound.validate(alanine.system)
    assert model.metadata.masses != masses  # the original is not modified
    for bad in (masses[:-1], [0.0] + masses[1:], [float("nan")] + masses[1:]):
        with pytest.raises(InputError, match="positive finite"):
            model.on_masses(bad)


def test_truncated_file_is_reported(exported, tmp_path):
    data = exported[2].read_bytes()
    broken = tmp_path / "truncated.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(broken)


def test_a_box_too_small_for_the_network_cutoff_is_refused():
    """The shipped water model (cutoff 0.5 nm) runs on its 1.24 nm box and refuses the same waters in a 0.9 nm box."""
    from openmm_actionml.examples import EXAMPLES_DIR, build_training_system
    model = load_model(EXAMPLES_DIR.parent / "models" / "water64-t3-8fs.pt")
    system = build_training_system(model.metadata.recipe).system
    model.validate(system)
    squeezed = copy.deepcopy(system)
    squeezed.setDefaultPeriodicBoxVectors(mm.Vec3(0.9, 0, 0), mm.Vec3(0, 0.9, 0), mm.Vec3(0, 0, 0.9))
    with pytest.raises(ModelMismatchError, match="exceeds half the shortest box edge"):
        model.validate(squeezed)
