"""Small analytic systems in torch for exactness tests (float64)."""
from __future__ import annotations

import torch
from torch import Tensor


def toy_energy(q: Tensor) -> Tensor:
    """A nonlinear, rotation- and translation-invariant pair potential: Morse bonds along a chain plus soft repulsion."""
    n = q.shape[-2]
    i, j = torch.triu_indices(n, n, 1)
    r = (q[..., i, :] - q[..., j, :]).norm(dim=-1)
    bonded = (j - i) == 1
    morse = 300.0 * (1.0 - torch.exp(-2.0 * (r - 0.15))) ** 2
    repulsion = 0.02 * (0.3 / r) ** 6
    return torch.where(bonded, morse, repulsion).sum(-1)


def toy_forces(q: Tensor) -> Tensor:
    """``-grad toy_energy``; differentiable (create_graph when grad mode is on)."""
    with torch.enable_grad():
        q_in = q if q.requires_grad else q.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(toy_energy(q_in).sum(), q_in, create_graph=torch.is_grad_enabled())
    return -gradient


def toy_state(n_atoms: int = 5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Positions near a zig-zag chain, thermal-ish velocities and masses (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.zeros(n_atoms, 3, dtype=torch.float64)
    q[:, 0] = 0.15 * torch.arange(n_atoms)
    q[1::2, 1] = 0.05
    q = q + 0.005 * torch.randn(n_atoms, 3, generator=generator, dtype=torch.float64)
    masses = torch.tensor([12.0, 1.008, 14.0, 16.0, 1.008, 12.0, 1.008][:n_atoms], dtype=torch.float64)
    v = torch.randn(n_atoms, 3, generator=generator, dtype=torch.float64) * (2.494 / masses[:, None]) ** 0.5
    return q, v, masses
