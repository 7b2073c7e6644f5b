"""The trainer end to end on a tiny alanine-dipeptide dataset: export, gate, checkpoint and resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import openmm as mm
import openmm.unit as u
from openmm_actionml.errors import InputError, ModelFileError
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import load_model
from openmm_actionml.nve_gate import GateOptions
from openmm_actionml.training import GateFailedError, Trainer, TrainingOptions, train

STEP = 0.002  # ps


@pytest.fixture(scope="module")
def tiny_dataset(alanine):
    return generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology, delta=0.5 * u.femtosecond,
                                   record_every=2, n_segments=4, segment_length=0.05, decorrelation=0.05,
                                   equilibration=0.1, platform="Reference", seed=3, progress=False)


def tiny_options(**changes) -> TrainingOptions:
    options = dict(step=STEP, splitting="S2", curriculum=(1, 2), iterations=3, batch_size=4, eval_every=1,
                   checkpoint_every=1, network={"hidden": [8], "n_channels": 4},
                   gate=GateOptions(n_trajectories=2, duration=0.02, record_every=1))
    options.update(changes)
    return TrainingOptions(**options)


def assert_steps_in_openmm(model, prepared, steps: int = 5) -> None:
    """The model's OpenMM integrator takes ``steps`` steps on Reference from ``prepared``'s positions, finite."""
    integrator = ActionMLIntegrator(model)
    context = mm.Context(add_learned_force(prepared.system, model), integrator,
                         mm.Platform.getPlatformByName("Reference"))
    context.setPositions(prepared.positions)
    integrator.step(steps)
    assert np.isfinite(context.getState(getPositions=True).getPositions(asNumpy=True)._value).all()


def test_train_exports_a_model_whose_network_is_on(tiny_dataset, tmp_path):
    output = tmp_path / "model.pt"
    report = train(tiny_dataset, None, tiny_options(), output, progress=False)
    model = load_model(output)
    meta = model.metadata
    assert meta.scheme == "A" and meta.step == STEP and meta.anchored
    assert meta.masses == pytest.approx(list(tiny_dataset.masses))
    assert len(report.candidates) == 2 and 0 <= report.chosen < 2
    assert meta.recipe["report"]["chosen"] == report.chosen
    # The exported network is the trained one, not zero: the learned kick differs from the classical one.
    q = torch.as_tensor(tiny_dataset.positions[0, :2])
    learned = KickPotential(load_model(output).network.double(), None)  # a copy: .double() changes it in place
    assert learned(q, 0).abs().max().item() > 0.0


def test_tied_heads_export_one_head_for_every_kick(tiny_dataset, tmp_path, alanine):
    """With tied heads the exported model has one head, every kick of its splitting uses it, and the OpenMM
    integrator runs it."""
    output = tmp_path / "tied.pt"
    train(tiny_dataset, None, tiny_options(tied_heads=True), output, progress=False)
    model = load_model(output)
    splitting = model.metadata.get_splitting()
    assert splitting.n_heads == 1 and [s.head for s in splitting.stages if s.kind == "kick"] == [0, 0, 0]
    q = torch.as_tensor(tiny_dataset.positions[0, :1]).to(next(model.network.parameters()).dtype)
    assert model.network(q, None).shape[-1] == 1
    assert_steps_in_openmm(model, alanine)


def test_gate_refusal_writes_nothing(tiny_dataset, tmp_path):
    output = tmp_path / "model.pt"
    impossible = GateOptions(n_trajectories=2, duration=0.02, record_every=1, min_stable_fraction=1.5)
    with pytest.raises(GateFailedError, match="no model was written"):
        train(tiny_dataset, None, tiny_options(gate=impossible), output, progress=False)
    assert not output.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_named_candidate_is_exported_whatever_the_gate_said(tiny_dataset, tmp_path, monkeypatch):
    refusing = tiny_options(gate=GateOptions(n_trajectories=2, duration=0.02, record_every=1, min_stable_fraction=1.5))
    checkpoint = tmp_path / "run.chk"
    first = train(tiny_dataset, None, refusing, tmp_path / "k1.pt", checkpoint=checkpoint, progress=False,
                  candidate="k=1")
    # The finished checkpoint exports another stage's candidate without training or gating again.
    monkeypatch.setattr(Trainer, "gate", lambda self: pytest.fail("a finished run was gated again"))
    monkeypatch.setattr(Trainer, "unroll_loss", lambda *args: pytest.fail("a finished run trained again"))
    second = train(tiny_dataset, None, refusing, tmp_path / "k2.pt", checkpoint=checkpoint, progress=False,
                   candidate="k=2")
    assert (first.chosen, second.chosen) == (0, 1)
    assert not any(c["gate"]["passed"] for c in second.candidates)
    assert [load_model(tmp_path / f"k{k}.pt").metadata.recipe["report"]["chosen"] for k in (1, 2)] == [0, 1]
    q = torch.as_tensor(tiny_dataset.positions[0, :2])
    energies = [load_model(tmp_path / f"k{k}.pt").network(q.float(), None) for k in (1, 2)]
    assert not torch.equal(energies[0], energies[1])


def test_an_unknown_candidate_is_refused_before_training(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "gate", lambda self: pytest.fail("the classical splitting was gated first"))
    with pytest.raises(InputError, match=r"\(k=1, k=2\); pass one"):
        train(tiny_dataset, None, tiny_options(), tmp_path / "model.pt", progress=False, candidate="k=8")
    assert list(tmp_path.iterdir()) == []


def test_resume_after_interruption_continues_from_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    checkpoint = tmp_path / "run.chk"
    output = tmp_path / "model.pt"
    original_gate = Trainer.gate
    calls = []

    def interrupted_gate(self):
        calls.append(1)
        if len(calls) == 3:  # classical baseline, candidate k=1, then stop during candidate k=2
            raise KeyboardInterrupt
        return original_gate(self)

    monkeypatch.setattr(Trainer, "gate", interrupted_gate)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_dataset, None, tiny_options(), output, checkpoint=checkpoint, progress=False)
    assert checkpoint.exists() and not output.exists()
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["state"]["phase"] == 1 and len(saved["state"]["candidates"]) == 1
    first = saved["state"]["candidates"][0]["validation_loss"]

    monkeypatch.setattr(Trainer, "gate", original_gate)
    report = train(tiny_dataset, None, tiny_options(), output, checkpoint=checkpoint, progress=False)
    assert len(report.candidates) == 2
    assert report.candidates[0]["validation_loss"] == first  # not retrained: resumed
    assert output.exists()

    with pytest.raises(InputError, match="other options"):
        train(tiny_dataset, None, tiny_options(iterations=4), tmp_path / "other.pt", checkpoint=checkpoint,
              progress=False)


def test_pure_ml_requires_force_matching():
    with pytest.raises(InputError, match="force_matching"):
        TrainingOptions(step=STEP, anchored=False)


def test_corrupt_model_file_is_reported(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torchscript archive")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(path)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_force_matching_ignores_force_components_along_constraints(alanine_hbonds):
    """With constraints, forces are compared after RATTLE's projection: a force along a constrained bond, which no
    dynamics sees, costs nothing, while the same force across the bond does."""
    dataset = generate_reference_data(alanine_hbonds.system, alanine_hbonds.positions, topology=alanine_hbonds.topology,
                                      delta=0.5 * u.femtosecond, record_every=2, n_segments=3, segment_length=0.02,
                                      decorrelation=0.01, equilibration=0.01, platform="Reference", seed=4,
                                      progress=False)
    trainer = Trainer(dataset, dataset.system(), tiny_options(step=0.004))
    q = torch.as_tensor(dataset.positions[0, :1])
    i, j = trainer.constraints.pairs[0].tolist()
    bond = q[0, i] - q[0, j]
    along = torch.zeros_like(q)
    along[0, i], along[0, j] = bond, -bond  # equal and opposite along the bond: a pure constraint force
    across = torch.zeros_like(q)
    normal = torch.linalg.cross(bond, torch.tensor([0.0, 0.0, 1.0], dtype=q.dtype))
    across[0, i] = normal
    # A linear solve leaves round-off ~ cond(A) eps |x|, A the mass-weighted Gram matrix of the constraint directions.
    constraints = trainer.constraints
    bonds = q[0, constraints.pairs[:, 0]] - q[0, constraints.pairs[:, 1]]
    condition = torch.linalg.cond(constraints._coupling * (bonds @ bonds.T)).item()
    bound = 10 * condition * torch.finfo(q.dtype).eps * bond.norm().item()
    assert trainer.dynamical_forces(q, along).abs().max().item() < bound
    assert trainer.dynamical_forces(q, across).abs().max().item() > 0.1 * normal.norm().item()


def test_learned_force_targets_replace_the_force_fields_per_head(tiny_dataset):
    """With ``learned_targets`` each head's learned forces are matched to its own target at V's scale: the heads'
    own forces give zero, and zero targets give the anchored default (whose learned target is F_V less the anchor
    F_V). A wrong number of targets is refused."""
    trainer = Trainer(tiny_dataset, tiny_dataset.system(), tiny_options())
    q, _, forces, _ = trainer.windows(0, trainer.train_segments, 4)
    q = q[:, 0]
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in trainer.network.parameters():  # a network whose learned forces are not zero
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        own = [trainer.kicks.learned_forces(q, head) for head in range(trainer.n_heads)]
        assert min(f.abs().max().item() for f in own) > 0
        assert trainer.force_matching_loss(q, forces, own).item() == 0.0
        zero = [torch.zeros_like(f) for f in own]
        assert trainer.force_matching_loss(q, forces, zero).item() == pytest.approx(
            trainer.force_matching_loss(q, forces).item(), rel=1e-12)
    with pytest.raises(InputError, match="one target per head"):
        trainer.force_matching_loss(q, forces, own + own)


def test_gate_result_table_cells():
    from openmm_actionml.nve_gate import GateResult

    result = GateResult(0.75, 0.1234, 0.05, 0.3, 301.25, {"C": 300.04, "H": 302.46}, True, "")
    assert result.table_cells() == "75% | +0.123 ± 0.050 | 0.300 | 301.2 | C 300.0, H 302.5"


def test_pure_ml_pretraining_is_a_candidate_and_the_gate_starts_at_the_model_temperature(tiny_dataset, alanine,
                                                                                         tmp_path, monkeypatch):
    """The force-matched surrogate is judged like every stage; with a hotter dataset combined, the gate's
    starts come from segments at the first dataset's temperature only."""
    from openmm_actionml.dataset import ReferenceDataset
    hot = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                  delta=0.5 * u.femtosecond, record_every=2, n_segments=4, segment_length=0.05,
                                  decorrelation=0.05, equilibration=0.1, temperature=600.0, platform="Reference",
                                  seed=4, progress=False)
    both = ReferenceDataset.concatenate([tiny_dataset, hot])
    drawn = []
    original = Trainer.windows

    def recording(self, k, segments, count):
        if k == 0 and count == 2:  # the gate's draw (GateOptions.n_trajectories = 2)
            drawn.append([both.segment_temperatures[s] for s in segments])
        return original(self, k, segments, count)

    monkeypatch.setattr(Trainer, "windows", recording)
    options = tiny_options(anchored=False, force_matching=1.0, pretrain_iterations=3, curriculum=(1,),
                           validation_fraction=0.5)
    try:  # three iterations make a poor surrogate: the gate may refuse both candidates, which is not the point
        summary = train(both, None, options, tmp_path / "pure.pt", progress=False).summary()
    except GateFailedError as error:
        summary = str(error)
    assert len(drawn) == 2 and all(t == [300.0] * len(t) for t in drawn)
    assert "pretrain" in summary and "k=1" in summary


def test_stored_forces_replace_force_field_calls_in_force_matching(alanine, tmp_path, monkeypatch):
    """With forces in the dataset, force matching reads them (the same numbers the force field gives at those
    frames), so pure-ML training on an expensive potential evaluates it only for the gate's energies."""
    dataset = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                      delta=0.5 * u.femtosecond, record_every=2, n_segments=4, segment_length=0.05,
                                      decorrelation=0.05, equilibration=0.1, platform="Reference", seed=5,
                                      store_forces=True, progress=False)
    options = tiny_options(anchored=False, force_matching=1.0, pretrain_iterations=2, curriculum=(1,),
                           energy_penalty=0.0)
    trainer = Trainer(dataset, dataset.system(), options)
    q, _, forces, _ = trainer.windows(0, trainer.train_segments, 8)
    with torch.no_grad():  # both are the Reference platform's double-precision forces at the same positions
        assert trainer.force_matching_loss(q[:, 0], forces).item() == pytest.approx(
            trainer.force_matching_loss(q[:, 0]).item(), rel=1e-12)

    def refuse(self, q):
        raise AssertionError("the force field's forces were evaluated in the loss")

    monkeypatch.setattr(Trainer, "reference_forces", refuse)
    try:  # a poor surrogate may fail the gate, which is not the point
        train(dataset, None, options, tmp_path / "pure.pt", progress=False)
    except GateFailedError:
        pass


def test_energy_matching_ties_energy_differences_only(alanine, tmp_path):
    """The energy tie is var(W - V) over the batch relative to V's variance over the training frames: blind to a
    constant offset of V, equal with the dataset's stored energies and the force field's own, zero for the
    unlearned anchored kicks (W = V), and reported beside the force error."""
    dataset = generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                      delta=0.5 * u.femtosecond, record_every=2, n_segments=4, segment_length=0.05,
                                      decorrelation=0.05, equilibration=0.1, platform="Reference", seed=5,
                                      store_forces=True, progress=False)
    options = tiny_options(anchored=False, force_matching=1.0, energy_matching=2.0, pretrain_iterations=2,
                           curriculum=(1,), energy_penalty=0.0)
    trainer = Trainer(dataset, dataset.system(), options)
    assert trainer.energy_scale == pytest.approx(dataset.potential_energies[trainer.train_segments].var(), rel=1e-12)
    q, _, forces, energies = trainer.windows(0, trainer.train_segments, 8)
    with torch.no_grad():
        loss = trainer.energy_matching_loss(q[:, 0], energies).item()
        assert loss > 0
        assert trainer.energy_matching_loss(q[:, 0], energies + 123.4).item() == pytest.approx(loss, rel=1e-9)
        assert trainer.energy_matching_loss(q[:, 0]).item() == pytest.approx(loss, rel=1e-9)
        assert trainer.tie_loss(q[:, 0], forces, energies).item() == pytest.approx(
            trainer.force_matching_loss(q[:, 0], forces).item() + 2.0 * loss, rel=1e-12)
        trainer.options, trainer.kicks.network = dataclasses.replace(options, anchored=True), None
        assert trainer.energy_matching_loss(q[:, 0], energies).item() == 0.0
    try:  # a poor surrogate may fail the gate, which is not the point
        summary = train(dataset, None, options, tmp_path / "pure.pt", progress=False).summary()
    except GateFailedError as error:
        summary = str(error)
    assert "energy error" in summary


@pytest.mark.parametrize("changes, problem", [
    (dict(energy_matching=1.0), "force_matching > 0"),
    (dict(energy_matching=-1.0, force_matching=1.0), "zero or positive"),
    (dict(energy_matching=1.0, force_matching=1.0, batch_size=1), "at least 2"),
])
def test_energy_matching_options_are_checked(changes, problem):
    with pytest.raises(InputError, match=problem):
        tiny_options(**changes)
