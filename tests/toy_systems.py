"""Small analytic systems in torch for exactness tests (float64)."""
from __future__ import annotations

from typing import Optional

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


class ToyNetwork(torch.nn.Module):
    """A scriptable stand-in for W: per head, a sum of pair Gaussians, ``(q[B, N, 3], box) -> [B, n_heads]``
    (float64, random amplitudes and widths per head)."""

    def __init__(self, n_atoms: int, n_heads: int = 2, amplitude: float = 2.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.amplitudes = torch.nn.Parameter(amplitude * torch.randn(n_heads, dtype=torch.float64, generator=generator))
        self.widths = torch.nn.Parameter(0.02 + 0.03 * torch.rand(n_heads, dtype=torch.float64, generator=generator))
        i, j = torch.triu_indices(n_atoms, n_atoms, 1)
        self.register_buffer("i", i)
        self.register_buffer("j", j)

    def forward(self, q: Tensor, box: Optional[Tensor]) -> Tensor:
        r2 = ((q[:, self.i] - q[:, self.j]) ** 2).sum(-1)
        return (self.amplitudes[None, :, None] * torch.exp(-r2[:, None, :] / self.widths[None, :, None])).sum(-1)
