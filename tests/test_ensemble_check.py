"""actionml check: the first-order Boltzmann shift against an exact case, and the kick potential it reads."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import openmm.unit as u
from openmm_actionml.cli import main
from openmm_actionml.ensemble_check import boltzmann_shift, check_model
from openmm_actionml.errors import InputError, ModelMismatchError
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.modelfile import ModelMetadata, export_model, load_model
from openmm_actionml.splitting import BCSS_B, get_splitting
from openmm_actionml.systems import particle_masses
from openmm_actionml.units import BOLTZMANN
from toy_systems import ToyNetwork


def test_first_order_shift_of_a_stiffened_harmonic_well():
    """V = sum k x^2 / 2 in d dimensions and W = (1 + eps) V: W's ensemble is V's at T / (1 + eps), so
    <V>_W - <V>_V = (d kT / 2) (1 / (1 + eps) - 1) exactly; the first-order estimate -cov(V, W - V) / kT =
    -eps var(V) / kT = -eps d kT / 2 differs from it by d kT eps^2 / (2 (1 + eps)), plus sampling error."""
    d, kT, eps, groups, per_group = 50, 2.5, 0.02, 100, 200
    rng = np.random.default_rng(1)
    x = rng.normal(scale=np.sqrt(kT), size=(groups * per_group, d))  # k = 1
    V = 0.5 * (x ** 2).sum(1)
    shift, error = boltzmann_shift(V, eps * V, kT, np.repeat(np.arange(groups), per_group))
    exact = 0.5 * d * kT * (1.0 / (1.0 + eps) - 1.0)
    second_order = 0.5 * d * kT * eps ** 2 / (1.0 + eps)
    # The shift is -eps var(V) / kT; a sample variance of M independent values has relative error
    # sqrt((2 + excess kurtosis) / M), and V (kT/2 times a chi-square of d) has excess kurtosis 12 / d. The bootstrap
    # over 100 groups and 200 resamples estimates that error to about 9 %; allow three times that.
    assert error == pytest.approx(abs(shift) * np.sqrt((2.0 + 12.0 / d) / len(V)), rel=0.27)
    assert abs(shift - exact) < second_order + 4 * error
    assert boltzmann_shift(V, np.zeros_like(V), kT, np.zeros(len(V)))[0] == 0.0


def test_boltzmann_shift_refuses_mismatched_inputs():
    with pytest.raises(InputError, match="one value per frame"):
        boltzmann_shift(np.ones(3), np.ones(2), 2.5, np.zeros(3))


@pytest.fixture(scope="module")
def data(alanine):
    return generate_reference_data(alanine.system, alanine.positions, topology=alanine.topology,
                                   delta=0.5 * u.femtosecond, record_every=2, n_segments=3, segment_length=0.05,
                                   decorrelation=0.05, equilibration=0.1, platform="Reference", seed=6, progress=False)


def toy_model(path, data, anchored=True, temperature=300.0):
    """A T3 model whose heads are :class:`ToyNetwork`'s pair Gaussians (float64)."""
    network = ToyNetwork(data.n_atoms, amplitude=20.0)
    metadata = ModelMetadata(scheme="A", step=0.004, splitting=get_splitting("T3").to_dict(), anchored=anchored,
                             elements=list(data.elements), masses=particle_masses(data.system()).tolist(),
                             constraints=[], periodic=False, network={"kind": "toy"}, temperature=temperature,
                             system_name="test system")
    export_model(network, metadata, path)
    return load_model(path), network


@pytest.mark.parametrize("anchored", [True, False])
def test_check_reads_the_kick_weighted_potential_against_the_data_energies(data, tmp_path, anchored):
    """W - V is T3's kick-weighted dW (anchored: W = V + dW) or that minus V (pure ML: W = dW)."""
    model, network = toy_model(tmp_path / "toy.pt", data, anchored)
    q = data.positions[:, ::5].reshape(-1, data.n_atoms, 3)
    V = data.potential_energies[:, ::5].reshape(-1)
    with torch.no_grad():
        dW = network(torch.as_tensor(q), None).numpy()
    difference = dW @ np.array([2 * BCSS_B, 1 - 2 * BCSS_B]) - (0.0 if anchored else V)
    check = check_model(model, data, stride=5)
    assert check.n_frames == len(V) and check.n_segments == data.n_segments
    assert check.energy_error == pytest.approx(difference.std() / V.std(), rel=1e-9)
    kT = BOLTZMANN * 300.0
    assert check.energy_shift == pytest.approx(-np.cov(V, difference, bias=True)[0, 1] / kT, rel=1e-6)
    assert np.isfinite(check.energy_shift_error) and check.energy_shift_error > 0


def test_check_command_and_its_refusals(data, alanine_hbonds, tmp_path, capsys):
    model, _ = toy_model(tmp_path / "toy.pt", data)
    with pytest.raises(ModelMismatchError, match="constraints"):
        check_model(model, data, system=alanine_hbonds.system)
    hot, _ = toy_model(tmp_path / "hot.pt", data, temperature=450.0)
    with pytest.raises(InputError, match=r"no segment .*\(450 K\)"):
        check_model(hot, data)
    path = tmp_path / "data.npz"
    data.save(path)
    assert main(["check", str(tmp_path / "toy.pt"), str(path), "--stride", "5"]) == 0
    assert "first-order shift of V's mean" in capsys.readouterr().out
    with pytest.raises(InputError, match="no potential energies"):
        check_model(model, dataclasses.replace(data, potential_energies=None))
