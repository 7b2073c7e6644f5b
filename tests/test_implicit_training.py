"""Scheme-B training end to end on a tiny flexible alanine-dipeptide dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import openmm as mm
import openmm.unit as u

from openmm_actionml.errors import InputError
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.implicit import IMPLICIT_SCHEMES, FixedPointSolver
from openmm_actionml.implicit_program import add_implicit_step, check_convergence
from openmm_actionml.implicit_training import ImplicitTrainingOptions, train_implicit
from openmm_actionml.integrator import add_learned_force
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import load_model

STEP = 0.002  # ps


@pytest.fixture(scope="module")
def tiny_dataset(alanine):
    return generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                   delta=0.5 * u.femtosecond, record_every=2, n_segments=3, segment_length=0.05,
                                   decorrelation=0.05, equilibration=0.1, platform="Reference", seed=3, progress=False)


def tiny_options(**changes) -> ImplicitTrainingOptions:
    options = dict(step=STEP, iterations=4, batch_size=4, eval_every=2, validation_pairs=8, solve_pairs=2,
                   learning_rate=1e-2, network={"hidden": [8], "n_channels": 4})
    options.update(changes)
    return ImplicitTrainingOptions(**options)


@pytest.mark.parametrize("anchored", [True, False], ids=["anchored", "pure"])
def test_train_implicit_exports_a_scheme_b_model_whose_network_is_on(tiny_dataset, alanine, tmp_path, anchored):
    output = tmp_path / "model.pt"
    options = tiny_options() if anchored else tiny_options(anchored=False, force_matching=1.0, pretrain_iterations=2,
                                                           pretrain_batch_size=8)
    report = train_implicit(tiny_dataset, None, options, output, progress=False)
    model = load_model(output)
    meta = model.metadata
    assert meta.scheme == "B" and meta.step == STEP and meta.anchored == anchored and meta.constraints == []
    assert meta.implicit == {**IMPLICIT_SCHEMES["gauss3"].to_dict(),
                             "predictor_forces": "force_field" if anchored else "model"}
    assert meta.get_splitting().name == "T3"
    assert meta.recipe["options"]["scheme"] == "gauss3"
    for entry in (report.trained, report.classical):
        assert math.isfinite(entry["validation_loss"]) and math.isfinite(entry["errors"]["dv"])
        assert entry["solver"]["mean"] >= 1 and entry["plain"]["max"] >= 1
    assert 0 < report.predictor["errors"]["dv"] < 1
    assert "trained" in report.summary()
    assert ("force" in report.trained["errors"]) != anchored  # pure ML reports its heads' relative force error
    # The exported network is the trained one: its learned forces are not zero (the readout starts at zero).
    q = torch.as_tensor(tiny_dataset.positions[0, :2])
    learned = KickPotential(load_model(output).network.double(), None)
    assert learned(q, 0).abs().max().item() > 0.0 and learned(q, 1).abs().max().item() > 0.0
    # ... and it runs in OpenMM.
    integrator = mm.CustomIntegrator(STEP)
    program = add_implicit_step(integrator, meta, FixedPointSolver(tolerance=1e-5))
    context = mm.Context(add_learned_force(tiny_dataset.system(), model), integrator,
                         mm.Platform.getPlatformByName("Reference"))
    context.setPositions(tiny_dataset.positions[0, 0])
    context.setVelocities(tiny_dataset.velocities[0, 0])
    integrator.step(2)
    check_convergence(integrator, None, 2, program)
    assert np.isfinite(context.getState(getPositions=True).getPositions(asNumpy=True)._value).all()


def test_constraints_are_refused(tiny_dataset, alanine_hbonds, tmp_path):
    with pytest.raises(InputError, match="unconstrained-only"):
        train_implicit(tiny_dataset, alanine_hbonds.system, tiny_options(), tmp_path / "m.pt", progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="force_matching"):
        ImplicitTrainingOptions(step=STEP, anchored=False)
    with pytest.raises(InputError, match="unknown implicit scheme"):
        ImplicitTrainingOptions(step=STEP, scheme="gauss9")
    with pytest.raises(InputError, match="predictor_forces"):
        ImplicitTrainingOptions(step=STEP, anchored=False, force_matching=1.0, predictor_forces="force_field")
    with pytest.raises(InputError, match="fixed-point method"):
        ImplicitTrainingOptions(step=STEP, solver={"method": "newton"})
