"""Tests of the learned potential dW (openmm_actionml.network)."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch

from openmm_actionml.errors import InputError
from openmm_actionml.network import EnergyNetwork, NetworkConfig, build_network


@pytest.fixture(autouse=True)
def _float64():
    """Exactness checks run in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


TRICLINIC = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.95, 0.0], [-0.2, 0.25, 0.9]], dtype=torch.float64)


def water_box(n_side: int, triclinic: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Waters at liquid density on a jittered lattice, in a cubic or reduced triclinic box."""
    generator = torch.Generator().manual_seed(seed)
    shape = TRICLINIC if triclinic else torch.eye(3)
    box = shape * (n_side ** 3 * 0.0299 / torch.det(shape)) ** (1 / 3)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    fractional = (grid + 0.5 + 0.1 * torch.randn(grid.shape, generator=generator)) / n_side
    oxygen = fractional @ box
    rotation = torch.linalg.qr(torch.randn(len(oxygen), 3, 3, generator=generator))[0]
    half = math.radians(104.52) / 2
    arms = 0.09572 * torch.tensor([[math.sin(half), math.cos(half), 0.0], [-math.sin(half), math.cos(half), 0.0]])
    hydrogens = oxygen[:, None] + torch.einsum("nxy,ay->nax", rotation, arms)
    positions = torch.cat([oxygen[:, None], hydrogens], 1).reshape(-1, 3)
    return positions, box, ["O", "H", "H"] * len(oxygen)


def peptide_like(n: int = 22, seed: int = 1) -> tuple[torch.Tensor, list[str]]:
    """A compact random cluster with alanine dipeptide's composition."""
    generator = torch.Generator().manual_seed(seed)
    elements = (["H", "C", "H", "H", "C", "O", "N", "H", "C", "H", "C"] * 3)[:n]
    return 0.2 * torch.randn(n, 3, generator=generator), elements


def random_network(elements: list[str], seed: int = 0, **options) -> EnergyNetwork:
    torch.manual_seed(seed)
    network = build_network(elements, zero_init=False, **options)
    with torch.no_grad():  # a non-trivial species bias, so that elements matter
        network.species_bias.normal_()
    return network


def energy_and_forces(network: torch.nn.Module, q: torch.Tensor, box: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [n_heads] and forces [n_heads, N, 3] of one configuration."""
    q = q.detach().clone().requires_grad_(True)
    energy = network(q[None], None if box is None else box[None])[0]
    forces = torch.stack([-torch.autograd.grad(e, q, retain_graph=True)[0] for e in energy])
    return energy.detach(), forces


def random_rotation(seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(3, 3, generator=generator))[0]


@pytest.mark.parametrize("switch", ["c2", "smooth"])
def test_torchscript_matches_eager(switch):
    q, elements = peptide_like()
    network = random_network(elements, switch=switch)
    scripted = torch.jit.script(network)
    e1, f1 = energy_and_forces(network, q)
    e2, f2 = energy_and_forces(scripted, q)
    # float64 rounding: TorchScript may order the switch's arithmetic differently from eager mode
    assert torch.allclose(e1, e2, rtol=1e-13, atol=0) and torch.allclose(f1, f2, rtol=0, atol=1e-12)
    positions, box, waters = water_box(4)
    periodic = random_network(waters, periodic=True, switch=switch)
    e1, f1 = energy_and_forces(periodic, positions, box)
    e2, f2 = energy_and_forces(torch.jit.script(periodic), positions, box)
    assert torch.allclose(e1, e2, rtol=1e-13) and torch.allclose(f1, f2, rtol=0, atol=1e-11)


def test_scripted_file_keeps_binding():
    q, elements = peptide_like()
    network = random_network(elements, excluded_pairs=[(0, 1)]).float()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert torch.allclose(loaded(q[None].float(), None), network(q[None].float(), None), rtol=1e-6)


def test_config_and_state_dict_round_trip_to_another_binding():
    q, elements = peptide_like()
    network = random_network(elements)
    config = NetworkConfig.from_dict(json.loads(json.dumps(network.config_dict())))
    other = EnergyNetwork(config, ["O", "H"])  # a different topology: the state_dict has no per-particle entries
    other.load_state_dict(network.state_dict())
    other.bind(elements)
    assert torch.equal(other(q[None], None), network(q[None], None))
    with pytest.raises(InputError, match="unknown network option"):
        NetworkConfig.from_dict({"cutof": 0.5})
    with pytest.raises(InputError, match="unknown cutoff switch 'C3'; choose one of c2, smooth"):
        NetworkConfig(switch="C3")


def test_invariance_non_periodic():
    q, elements = peptide_like()
    network = random_network(elements, excluded_pairs=[(0, 1), (1, 2), (4, 5)])
    energy, forces = energy_and_forces(network, q)
    rotation = random_rotation()
    e, f = energy_and_forces(network, q @ rotation.T + torch.tensor([0.3, -1.1, 2.0]))
    assert torch.allclose(e, energy, rtol=1e-12, atol=0) and torch.allclose(f, forces @ rotation.T, atol=1e-10)
    # Permute like atoms (hydrogens 2 and 9, carbons 1 and 8) and remap the excluded pairs.
    order = torch.arange(len(q))
    order[[2, 9]], order[[1, 8]] = order[[9, 2]], order[[8, 1]]
    inverse = torch.argsort(order)
    permuted = random_network(elements, excluded_pairs=[(int(inverse[i]), int(inverse[j]))
                                                        for i, j in [(0, 1), (1, 2), (4, 5)]])
    e, f = energy_and_forces(permuted, q[order])
    assert torch.allclose(e, energy, rtol=1e-12, atol=0) and torch.allclose(f, forces[:, order], atol=1e-10)


@pytest.mark.parametrize("triclinic", [False, True])
def test_invariance_periodic(triclinic):
    positions, box, elements = water_box(4, triclinic)
    constraints = [(3 * m + k, 3 * m + l) for m in range(len(positions) // 3) for k, l in [(0, 1), (0, 2), (1, 2)]]
    network = random_network(elements, periodic=True, excluded_pairs=constraints)
    energy, forces = energy_and_forces(network, positions, box)
    generator = torch.Generator().manual_seed(5)
    lattice = torch.randint(-2, 3, (len(positions), 3), generator=generator).double()
    whole_molecules = lattice.reshape(-1, 3, 3)[:, :1].expand(-1, 3, 3).reshape(-1, 3)
    for shifted in [positions + torch.tensor([0.7, -0.4, 1.3]), positions + lattice @ box,
                    positions + whole_molecules @ box]:
        e, f = energy_and_forces(network, shifted, box)
        assert torch.allclose(e, energy, rtol=1e-12, atol=0) and torch.allclose(f, forces, atol=1e-10)
    # Swap two water molecules (a permutation of like atoms that keeps the exclusions).
    order = torch.arange(len(positions))
    order[0:3], order[6:9] = order[6:9].clone(), order[0:3].clone()
    e, f = energy_and_forces(network, positions[order], box)
    assert torch.allclose(e, energy, rtol=1e-12, atol=0) and torch.allclose(f, forces[:, order], atol=1e-10)


@pytest.mark.parametrize("switch", ["c2", "smooth"])
def test_smooth_at_both_cutoffs(switch):
    """E, dE/dr and d2E/dr2 are continuous where a pair crosses either cutoff (radial 0.5, angular 0.35 nm); with
    the C-infinity switch d3E/dr3 and d4E/dr4 are too, while the C^2 polynomial's third derivative jumps."""
    network = random_network(["C", "O", "H"], switch=switch)

    def along(r: float, order: int) -> torch.Tensor:
        """d^order E / dr^order (both heads summed) for atom 1 at distance r from atom 0; atom 2 fixed."""
        x = torch.tensor(r, requires_grad=True)
        q = torch.stack([torch.zeros(3), torch.stack([x, torch.tensor(0.05), torch.tensor(0.0)]),
                         torch.tensor([0.0, 0.12, 0.0])])
        value = network(q[None], None)[0].sum()
        for _ in range(order):
            (value,) = torch.autograd.grad(value, x, create_graph=True)
        return value.detach()

    for cutoff in (network.cutoff, network.angular_cutoff):
        r_cut = (cutoff ** 2 - 0.05 ** 2) ** 0.5  # where |q1 - q0| = cutoff
        for order in (0, 1, 2, 3, 4) if switch == "smooth" else (0, 1, 2):
            jumps = [abs(float(along(r_cut - delta, order) - along(r_cut + delta, order))) for delta in (1e-4, 1e-6)]
            assert jumps[1] < 0.05 * jumps[0] + 1e-10, (cutoff, order, jumps)  # shrinks with the gap: no step
        if switch == "c2":
            jumps = [abs(float(along(r_cut - delta, 3) - along(r_cut + delta, 3))) for delta in (1e-4, 1e-6)]
            assert jumps[1] > 0.9 * jumps[0] > 0, jumps  # a step that does not shrink with the gap
        r, h = r_cut - 2e-3, 1e-6
        assert abs(float((along(r + h, 0) - along(r - h, 0)) / (2 * h) - along(r, 1))) < 1e-6


def same_pairs(network: EnergyNetwork, q: torch.Tensor, box: torch.Tensor | None) -> None:
    """The cell list and the all-pairs search give the same pairs, energies and forces."""
    threshold, results = network.cell_list_threshold, []
    for use_cells in (True, False):
        network.cell_list_threshold = len(q) - 1 if use_cells else len(q)
        b, i, j, shifts = network.neighbor_pairs(q[None], None if box is None else box[None])
        key = torch.argsort(i * len(q) + j)
        results.append((i[key], j[key], shifts[key], energy_and_forces(network, q, box)))
    network.cell_list_threshold = threshold
    (i1, j1, s1, (e1, f1)), (i2, j2, s2, (e2, f2)) = results
    assert len(i1) > 10 * len(q) and torch.equal(i1, i2) and torch.equal(j1, j2) and torch.equal(s1, s2)
    assert torch.allclose(e1, e2, rtol=1e-12, atol=0) and torch.allclose(f1, f2, rtol=0, atol=1e-10)


@pytest.mark.parametrize("triclinic", [False, True])
def test_cell_list_equals_all_pairs_periodic(triclinic):
    q, box, elements = water_box(7, triclinic)  # 1029 atoms
    network = random_network(elements, periodic=True)
    same_pairs(network, q, box)
    lattice = torch.randint(-2, 3, q.shape, generator=torch.Generator().manual_seed(4)).double()
    same_pairs(network, q + lattice @ box, box)  # atoms anywhere, not only in the home box
    # The pairs are the true minimum images: compare with a brute-force search over neighbouring images.
    _, i, j, shifts = network.neighbor_pairs(q[None], box[None])
    nearest = torch.full((len(q), len(q)), float("inf"))
    for image in torch.cartesian_prod(*[torch.arange(-1.0, 2.0)] * 3) @ box:
        nearest = torch.minimum(nearest, (q[None, :] + image - q[:, None]).norm(dim=-1))
    within = (nearest < network.cutoff).triu(1)
    assert within.sum() == len(i) and within[i, j].all()
    assert torch.allclose((q[j] - q[i] - shifts).norm(dim=-1), nearest[i, j], rtol=0, atol=1e-12)


def test_cell_list_equals_all_pairs_cluster():
    generator = torch.Generator().manual_seed(2)
    q = 1.6 * torch.rand(600, 3, generator=generator)
    q[:20] += 4.0  # a detached group, far outside the rest
    elements = (["C", "H", "H", "N", "O", "H"] * 100)
    same_pairs(random_network(elements), q, None)


def test_zero_init_is_exactly_zero():
    q, elements = peptide_like()
    network = build_network(elements)
    energy, forces = energy_and_forces(network, q)
    assert torch.count_nonzero(energy) == 0 and torch.count_nonzero(forces) == 0
    # Training still starts: a loss linear in the forces has a gradient at zero init.
    qq = q[None].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(network(qq, None)[:, 0].sum(), qq, create_graph=True)
    (gradient * torch.randn_like(gradient)).sum().backward()
    assert network.readout.weight.grad.abs().sum() > 0


def test_forces_match_finite_differences():
    q, elements = peptide_like()
    network = random_network(elements)
    energy, forces = energy_and_forces(network, q)
    assert torch.isfinite(forces).all() and forces.abs().max() > 1e-3
    h = 1e-6
    for atom, axis in [(0, 0), (5, 1), (13, 2), (21, 0)]:
        step = torch.zeros_like(q)
        step[atom, axis] = h
        numeric = (network((q + step)[None], None) - network((q - step)[None], None))[0] / (2 * h)
        assert torch.allclose(-numeric, forces[:, atom, axis], rtol=1e-6, atol=1e-8)


def test_double_backward():
    positions, box, elements = water_box(4)
    network = random_network(elements, periodic=True)
    q = positions[None].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(network(q, box[None]).sum(), q, create_graph=True)
    (gradient ** 2).sum().backward()
    grads = {name: p.grad for name, p in network.named_parameters() if name != "readout.bias"}  # bias: no force
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


def test_unknown_element_and_bad_binding():
    with pytest.raises(InputError, match="Xe"):
        build_network(["C", "H"], elements=["C", "H"]).bind(["C", "Xe"])
    with pytest.raises(InputError, match="excluded_pairs"):
        build_network(["C", "H"], excluded_pairs=[(0, 2)])
    network = build_network(["C", "H"])
    with pytest.raises(Exception, match="bound to 2 particles"):
        network(torch.zeros(1, 3, 3), None)
    with pytest.raises(Exception, match="periodic=False"):
        network(torch.zeros(1, 2, 3), torch.eye(3)[None])
    periodic = build_network(["C", "H"], periodic=True)
    with pytest.raises(Exception, match="twice the cutoff"):
        periodic(torch.zeros(1, 2, 3), 0.9 * torch.eye(3)[None])


def test_excluded_pairs_are_not_features():
    # Atoms 0 and 1 are excluded; atom 2 is a neighbour of 0 only, so moving 1 alone changes only r01.
    network = random_network(["C", "H", "O"], excluded_pairs=[(1, 0)])
    free = random_network(["C", "H", "O"])
    q = torch.tensor([[0.0, 0.0, 0.0], [0.11, 0.0, 0.0], [-0.45, 0.0, 0.0]])
    moved = q.clone()
    moved[1, 0] = 0.13
    assert (q[2] - moved[1]).norm() > network.cutoff and (q[2] - q[1]).norm() > network.cutoff
    assert torch.equal(network(q[None], None), network(moved[None], None))
    assert not torch.allclose(free(q[None], None), free(moved[None], None))
    _, i, j, _ = network.neighbor_pairs(q[None], None)
    assert (i.tolist(), j.tolist()) == ([0], [2])


def test_feature_scale_is_floored():
    # Rigid, isolated waters: every feature is constant, so its standard deviation is ~0.
    positions, box, elements = water_box(2)
    molecules = positions.reshape(-1, 3, 3)
    molecules = molecules - molecules[:, :1] + 2.0 * torch.arange(len(molecules))[:, None, None]
    rotation = random_rotation()
    frames = torch.stack([molecules.reshape(-1, 3), (molecules @ rotation.T).reshape(-1, 3)])
    network = random_network(elements)
    network.fit_feature_scaling(frames)
    assert network.feature_scale.min() == network.config.scale_floor
    assert torch.isfinite(energy_and_forces(network, frames[0])[1]).all()
    hydrogen = network.config.elements.index("H")
    assert torch.allclose(network.feature_mean[hydrogen], network.features(frames[:1], None)[1])


def test_cutoff_longer_than_half_the_box_is_refused():
    """Minimum image finds every pair within the cutoff only while the cutoff is at most half the shortest edge."""
    import numpy as np
    from openmm_actionml.network import check_cutoff_fits
    box = np.diag([1.2, 1.3, 1.4])
    check_cutoff_fits(0.6, box)
    with pytest.raises(InputError, match="exceeds half the shortest box edge"):
        check_cutoff_fits(0.6001, box)
