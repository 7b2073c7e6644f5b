"""The kick potentials of scheme A: ``W_k = V + dW_k`` (anchored) or ``W_k = dW_k`` (pure ML)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .errors import InputError

ReferenceForces = Callable[[Tensor], Tensor]
"""``reference_forces(q) -> F``: the force field's forces at positions ``q[..., N, 3]`` (differentiable)."""


class KickPotential(torch.nn.Module):
    """Forces of each head's kick potential, for the torch stepper and the trainer.

    Parameters
    ----------
    network
        The learned correction ``dW``: ``network(q[B, N, 3], box) -> energies[B, n_heads]``, or ``None``
        for the classical (unlearned) splitting.
    reference_forces
        The force field's forces, or ``None`` in pure-ML mode.
    box
        Periodic box vectors ``[3, 3]`` in nm, or ``None``.
    """

    def __init__(self, network: Optional[torch.nn.Module], reference_forces: Optional[ReferenceForces],
                 box: Optional[Tensor] = None) -> None:
        super().__init__()
        if network is None and reference_forces is None:
            raise InputError("a kick potential needs a network, a force field, or both.")
        self.network = network
        self.reference_forces = reference_forces
        self.box = box

    @property
    def anchored(self) -> bool:
        """Whether the force field is part of every kick."""
        return self.reference_forces is not None

    def learned_energy(self, q: Tensor, head: int) -> Tensor:
        """``dW_head`` at ``q[..., N, 3]``, shape ``q.shape[:-2]``."""
        batch = q.reshape(-1, *q.shape[-2:])
        box = None if self.box is None else self.box.to(q.dtype).expand(len(batch), 3, 3)
        return self.network(batch, box)[:, head].reshape(q.shape[:-2])

    def learned_forces(self, q: Tensor, head: int) -> Tensor:
        """``-grad dW_head``; differentiable in the network parameters when grad mode is on."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            q_in = q if q.requires_grad else q.detach().requires_grad_(True)
            energy = self.learned_energy(q_in, head)
            (gradient,) = torch.autograd.grad(energy.sum(), q_in, create_graph=create_graph)
        return -gradient

    def forward(self, q: Tensor, head: int) -> Tensor:
        """Forces of kick potential ``head`` at ``q``."""
        forces = self.reference_forces(q) if self.reference_forces is not None else None
        if self.network is not None:
            learned = self.learned_forces(q, head)
            forces = learned if forces is None else forces + learned
        return forces
