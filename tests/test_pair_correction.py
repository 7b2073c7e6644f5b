"""The pair-potential correction of a model's kick potential: its energy over the network's neighbour pairs, its
smooth cutoff, the Boltzmann-inversion fit, and its agreement between torch and OpenMM once written into a model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import openmm as mm
import openmm.unit as u
from conftest import platform_params
from openmm_actionml.errors import InputError
from openmm_actionml.examples import build_example
from openmm_actionml.modelfile import NODE_PARAMETER, ACTIVE_PARAMETER, LEARNED_FORCE_GROUP, ModelMetadata, \
    export_model, load_model
from openmm_actionml.network import build_network
from openmm_actionml.pair_correction import (PairCorrectedNetwork, PairPotential, energy_network, fit_coefficients,
                                             inversion_target, with_pair_correction)
from openmm_actionml.splitting import get_splitting
from openmm_actionml.systems import particle_masses
from openmm_actionml.units import BOLTZMANN
from toy_systems import ToyNetwork

START, CUTOFF, N_INTERVALS = 0.2, 0.45, 10


def reference_pair_energy(r: np.ndarray, coefficients: np.ndarray, start: float = START) -> np.ndarray:
    """u(r) written out in numpy: the sum of the cubic B-splines of the free coefficients (the first and last three
    zero), each ``B((r - start) / spacing - k + 2)`` with the cardinal cubic B-spline B on [-2, 2]."""
    spacing = (CUTOFF - start) / N_INTERVALS
    padded = np.concatenate([np.zeros(3), coefficients, np.zeros(3)])
    x = np.abs((np.asarray(r)[..., None] - start) / spacing - np.arange(N_INTERVALS + 3) + 1.0)
    cardinal = np.where(x < 1.0, 2.0 / 3.0 - x ** 2 + x ** 3 / 2.0, np.where(x < 2.0, (2.0 - x) ** 3 / 6.0, 0.0))
    return cardinal @ padded


def reference_term_energy(q: np.ndarray, box: np.ndarray, elements: list[str], excluded: set, pair: str,
                          coefficients: np.ndarray, network_cutoff: float, start: float = START) -> np.ndarray:
    """A term's energy per structure of ``q[B, N, 3]`` in an orthorhombic ``box``, written out: u summed over the
    minimum-image pairs of the pair's two elements within the network's cutoff, less the ``excluded`` pairs."""
    a, c = pair.split("-")
    pairs = np.array([(i, j) for i in range(len(elements)) for j in range(i + 1, len(elements))
                      if {elements[i], elements[j]} == {a, c} and (i, j) not in excluded])
    d = q[:, pairs[:, 1]] - q[:, pairs[:, 0]]
    d -= np.diag(box) * np.round(d / np.diag(box))
    r = np.linalg.norm(d, axis=-1)
    return np.where(r < network_cutoff, reference_pair_energy(r, coefficients, start), 0.0).sum(1)


def test_energy_is_u_summed_over_the_networks_neighbour_pairs_of_each_term():
    rng = np.random.default_rng(0)
    box = np.diag([1.0, 1.1, 1.2])
    elements = ["O", "H", "H"] * 8
    bonds = {(3 * k, 3 * k + m) for k in range(8) for m in (1, 2)} | {(3 * k + 1, 3 * k + 2) for k in range(8)}
    network = build_network(elements, periodic=True, excluded_pairs=sorted(bonds), cutoff=0.5, zero_init=False
                            ).double()
    vocabulary = network.config.elements
    terms = {pair: rng.normal(size=N_INTERVALS - 3) for pair in ("O-O", "H-O")}
    corrected = PairCorrectedNetwork(network, [tuple(vocabulary.index(e) for e in pair.split("-")) for pair in terms],
                                     [PairPotential(START, CUTOFF, c) for c in terms.values()])
    q = rng.uniform(0.0, 1.0, size=(2, 24, 3)) * np.diag(box)
    boxes = torch.as_tensor(box).expand(2, 3, 3)
    with torch.no_grad():
        added = (corrected(torch.as_tensor(q), boxes) - network(torch.as_tensor(q), boxes)).numpy()
    each = [reference_term_energy(q, box, elements, bonds, pair, c, network.cutoff) for pair, c in terms.items()]
    assert min(np.abs(e).min() for e in each) > 0.0  # both terms had pairs to act on in both structures
    expected = sum(each)
    assert added == pytest.approx(np.repeat(expected[:, None], network.n_heads, 1), rel=1e-12)
    moved = q.copy()
    moved[:, 3] += box[1] - 2.0 * box[2]  # a lattice vector: the same periodic configuration
    with torch.no_grad():
        assert corrected(torch.as_tensor(moved), boxes).numpy() == pytest.approx(
            corrected(torch.as_tensor(q), boxes).numpy(), rel=1e-12)


def test_u_is_c2_and_its_first_two_derivatives_vanish_at_both_ends():
    """Inside, u equals the basis times the coefficients and its derivatives are continuous across the knots (a
    cubic spline is C^2: the jump of u'' over a knot is O(eps)); at start, at cutoff and outside they are zero."""
    coefficients = np.random.default_rng(3).normal(size=N_INTERVALS - 3)
    potential = PairPotential(START, CUTOFF, coefficients)

    def derivatives(r0: float) -> tuple[float, float, float]:
        r = torch.tensor(r0, dtype=torch.float64, requires_grad=True)
        u0 = potential(r)
        (first,) = torch.autograd.grad(u0, r, create_graph=True)
        (second,) = torch.autograd.grad(first, r)
        return float(u0.detach()), float(first.detach()), float(second)

    for r0 in (START, CUTOFF, 0.5 * START, 1.2 * CUTOFF):
        assert derivatives(r0) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    knot, eps = START + 4 * potential.spacing, 1e-7
    below, above = derivatives(knot - eps), derivatives(knot + eps)
    assert above == pytest.approx(below, abs=1e-4 * max(map(abs, below)))
    radii = torch.linspace(0.1, 0.5, 101, dtype=torch.float64)
    with torch.no_grad():
        assert (potential.basis(radii) @ torch.as_tensor(coefficients)).numpy() == pytest.approx(
            potential(radii).numpy(), abs=1e-12)
        assert potential(radii).numpy() == pytest.approx(
            reference_pair_energy(radii.numpy(), coefficients), abs=1e-12)


def test_fit_recovers_a_potential_in_its_span_and_the_ridge_shrinks_it():
    rng = np.random.default_rng(1)
    coefficients = rng.normal(size=N_INTERVALS - 3)
    radii = np.linspace(0.15, 0.5, 200)
    target = reference_pair_energy(radii, coefficients)
    fitted = fit_coefficients(radii, target, np.ones_like(radii), START, CUTOFF, N_INTERVALS, ridge=0.0)
    assert fitted == pytest.approx(coefficients, rel=1e-6, abs=1e-6)
    shrunk = fit_coefficients(radii, target, np.ones_like(radii), START, CUTOFF, N_INTERVALS, ridge=10.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(fitted)
    far = radii > 0.4  # zero weight: the shifted radii do not count
    ignored = fit_coefficients(radii, target + np.where(far, 50.0, 0.0), np.where(far, 0.0, 1.0), START, CUTOFF,
                               N_INTERVALS, ridge=0.0)
    assert reference_pair_energy(radii[~far], ignored) == pytest.approx(target[~far], abs=1e-6)
    with pytest.raises(InputError, match="at least 4 spline intervals"):
        fit_coefficients(radii, target, np.ones_like(radii), START, CUTOFF, 3, ridge=0.0)


def test_inversion_raises_u_where_the_model_has_too_many_pairs_and_trusts_only_populated_radii():
    kT = BOLTZMANN * 300.0
    g_target = np.array([0.0, 0.5, 1.0, 2.0, 1.0])
    g_model = np.array([0.01, 1.0, 1.0, 1.0, 1.0])
    current = np.array([5.0, 1.0, 2.0, 3.0, 4.0])
    target, trusted = inversion_target(np.arange(5.0), current, g_model, g_target, kT, damping=0.5)
    assert trusted.tolist() == [False, True, True, True, True]
    assert target == pytest.approx(current + 0.5 * kT * np.array([0.0, np.log(2.0), 0.0, -np.log(2.0), 0.0]))
    same, _ = inversion_target(np.arange(5.0), current, g_target, g_target, kT, damping=1.0)
    assert same == pytest.approx(current)


@pytest.fixture(scope="module")
def water():
    return build_example("water-box", n_waters=32, nonbonded_cutoff=0.4)


def periodic_model(path, water, scheme="A", toy=False):
    """A float64 model of the water box: a random-readout EnergyNetwork, its weights moved off float32's grid as
    training moves them (or, ``toy``, a ToyNetwork)."""
    elements = [atom.element.symbol for atom in water.topology.atoms()]
    network = ToyNetwork(len(elements)) if toy else build_network(
        elements, periodic=True, cutoff=0.45, angular_cutoff=0.35, zero_init=False).double()
    with torch.no_grad():
        for weights in network.parameters():
            weights.mul_(1.0 + 1e-12 * torch.pi)
    metadata = ModelMetadata(scheme=scheme, step=0.004, splitting=get_splitting("T3").to_dict(), anchored=True,
                             elements=elements, masses=particle_masses(water.system).tolist(), constraints=[],
                             periodic=True, network={"kind": "toy"} if toy else network.config_dict(),
                             temperature=300.0, system_name="water")
    export_model(network, metadata, path)
    return load_model(path)


@pytest.mark.parametrize("platform", platform_params())
def test_a_corrected_model_adds_u_to_every_head_in_openmm(tmp_path, water, platform):
    """The written model is the model plus both terms (in torch, against the terms written out in numpy), and its
    TorchForce on each platform gives every head's energy and forces as torch does (float64 model; OpenMM's
    single-precision platforms pass float32 positions)."""
    model = periodic_model(tmp_path / "model.pt", water)
    box = np.array([v.value_in_unit(u.nanometer) for v in water.system.getDefaultPeriodicBoxVectors()])
    rng = np.random.default_rng(2)
    terms = {pair: (start, rng.normal(scale=3.0, size=N_INTERVALS - 3))
             for pair, start in (("O-O", START), ("O-H", START - 0.08))}
    path = with_pair_correction(model, {pair: PairPotential(start, CUTOFF, c)
                                        for pair, (start, c) in terms.items()}, tmp_path / "corrected.pt",
                                {"pair": "O-O"})
    corrected = load_model(path)
    assert corrected.metadata.recipe["pair_correction"] == {"pair": "O-O"}
    q = torch.as_tensor(np.array(water.positions.value_in_unit(u.nanometer)))[None].requires_grad_(True)
    boxes = torch.as_tensor(box)[None]
    heads = corrected.network(q, boxes)
    elements = list(model.metadata.elements)
    added = (heads - model.network(q, boxes)).detach().numpy()
    with torch.no_grad():  # the network rebuilt from the model file is the model's, to rounding
        assert energy_network(model)(q, boxes).numpy() == pytest.approx(model.network(q, boxes).numpy(), rel=1e-14)
    each = [reference_term_energy(q.detach().numpy(), box, elements, set(), pair, c, 0.45, start)[0]
            for pair, (start, c) in terms.items()]
    assert min(map(abs, each)) > 0.0  # both were there to be seen
    assert added == pytest.approx(np.full_like(added, sum(each)), rel=1e-10)
    system = mm.System()
    for mass in corrected.metadata.masses:
        system.addParticle(mass)
    system.setDefaultPeriodicBoxVectors(*water.system.getDefaultPeriodicBoxVectors())
    system.addForce(corrected.create_force())
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
    context.setPositions(water.positions)
    context.setParameter(ACTIVE_PARAMETER, 1.0)
    tolerance = 1e-9 if platform == "Reference" else 1e-5
    for head in range(heads.shape[1]):
        context.setParameter(NODE_PARAMETER, float(head))
        state = context.getState(getEnergy=True, getForces=True, groups={LEARNED_FORCE_GROUP})
        (gradient,) = torch.autograd.grad(heads[0, head], q, retain_graph=True)
        energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        assert energy == pytest.approx(float(heads[0, head].detach()), rel=tolerance)
        scale = float(gradient.abs().max())
        assert np.abs(forces + gradient[0].numpy()).max() < 10 * tolerance * scale


def test_bad_terms_other_networks_and_scheme_b_models_are_refused(tmp_path, water):
    model = periodic_model(tmp_path / "model.pt", water)
    with pytest.raises(InputError, match="start < cutoff"):
        PairPotential(CUTOFF, START, np.ones(N_INTERVALS - 3))
    fits = PairPotential(START, CUTOFF, np.ones(N_INTERVALS - 3))
    too_long = PairPotential(START, 0.5, np.ones(N_INTERVALS - 3))
    with pytest.raises(InputError, match="exceeds the network's 0.45 nm"):
        with_pair_correction(model, {"O-O": fits, "O-H": too_long}, tmp_path / "c.pt", {})
    with pytest.raises(InputError, match="two elements joined"):
        with_pair_correction(model, {"O": fits}, tmp_path / "c.pt", {})
    with pytest.raises(InputError, match="two terms for the element pair H-O"):
        with_pair_correction(model, {"O-H": fits, "H-O": fits}, tmp_path / "c.pt", {})
    with pytest.raises(InputError, match="no N atom"):
        with_pair_correction(model, {"N-O": fits}, tmp_path / "c.pt", {})
    with pytest.raises(InputError, match="not an actionml EnergyNetwork"):
        with_pair_correction(periodic_model(tmp_path / "toy.pt", water, toy=True), {"O-O": fits}, tmp_path / "c.pt", {})
    scheme_b = periodic_model(tmp_path / "b.pt", water, scheme="B")
    with pytest.raises(InputError, match="scheme-B"):
        with_pair_correction(scheme_b, {"O-O": fits}, tmp_path / "c.pt", {})
    assert not (tmp_path / "c.pt").exists()
    corrected = load_model(with_pair_correction(model, {"O-O": fits}, tmp_path / "once.pt", {"from": "model.pt"}))
    with pytest.raises(InputError, match="already has a pair correction; correct the model it was made from"):
        with_pair_correction(corrected, {"O-O": fits}, tmp_path / "twice.pt", {})
