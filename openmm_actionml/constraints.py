"""Holonomic distance constraints in torch: SHAKE position and RATTLE velocity projections.

The definitions match OpenMM's CustomIntegrator: ``addConstrainPositions`` moves each atom along the
constraint directions of the *reference* positions (those at the last projection) by mass-weighted
amounts until every distance is met; ``addConstrainVelocities`` removes the velocity components along
the current constraint directions, mass-weighted. Both solves are exact (Newton on the multipliers,
then a dense linear solve), so the torch and OpenMM projections agree to the constraint tolerance.
Everything is differentiable, so training can backpropagate through constrained steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import openmm as mm
import torch
from torch import Tensor

from .errors import ActionMLConvergenceError, InputError


@dataclass
class ConstraintSet:
    """Distance constraints ``|q_i - q_j| = d``.

    Parameters
    ----------
    pairs
        Atom indices, shape ``[C, 2]``.
    distances
        Constraint lengths in nm, shape ``[C]``.
    masses
        Particle masses in amu, shape ``[N]``.
    tolerance
        Relative tolerance ``max |r^2 - d^2| / d^2`` of the position projection.
    max_iterations
        Newton iterations before giving up.
    """

    pairs: Tensor
    distances: Tensor
    masses: Tensor
    tolerance: float = 1e-12
    max_iterations: int = 50

    def __post_init__(self) -> None:
        self.pairs = torch.as_tensor(self.pairs, dtype=torch.long).reshape(-1, 2)
        self.distances = torch.as_tensor(self.distances, dtype=torch.float64).reshape(-1)
        self.masses = torch.as_tensor(self.masses, dtype=torch.float64).reshape(-1)
        if len(self.pairs) != len(self.distances):
            raise InputError("constraints: one distance is needed per constrained pair.")
        if len(self.pairs) and bool((self.masses[self.pairs] == 0).any()):
            raise InputError("constraints: a constrained particle has zero mass; massless particles cannot be constrained.")
        n_atoms = len(self.masses)
        incidence = torch.zeros(len(self.pairs), n_atoms, dtype=torch.float64)
        rows = torch.arange(len(self.pairs))
        incidence[rows, self.pairs[:, 0]] = 1.0
        incidence[rows, self.pairs[:, 1]] = -1.0
        self._incidence = incidence
        # K = G M^-1 G^T couples constraints that share an atom.
        self._coupling = incidence @ torch.diag(1.0 / self.masses) @ incidence.T

    @classmethod
    def from_system(cls, system: mm.System, **kwargs) -> "ConstraintSet | None":
        """The constraints of an OpenMM System, or ``None`` when it has none."""
        if system.getNumConstraints() == 0:
            return None
        pairs, distances = [], []
        for index in range(system.getNumConstraints()):
            i, j, d = system.getConstraintParameters(index)
            pairs.append((i, j))
            distances.append(d.value_in_unit(mm.unit.nanometer) if mm.unit.is_quantity(d) else d)
        masses = [system.getParticleMass(i).value_in_unit(mm.unit.dalton) for i in range(system.getNumParticles())]
        return cls(torch.tensor(pairs), torch.tensor(distances, dtype=torch.float64),
                   torch.tensor(masses, dtype=torch.float64), **kwargs)

    def __len__(self) -> int:
        return len(self.pairs)

    def _bond_vectors(self, q: Tensor) -> Tensor:
        return q[..., self.pairs[:, 0], :] - q[..., self.pairs[:, 1], :]

    def _displacement(self, multipliers: Tensor, directions: Tensor) -> Tensor:
        """Atom displacements ``M^-1 G^T (lambda * g)`` for multipliers ``[..., C]`` and directions ``[..., C, 3]``."""
        weighted = multipliers[..., None] * directions
        incidence = self._incidence.to(directions.dtype)
        inverse_mass = (1.0 / self.masses).to(directions.dtype)[:, None]
        return inverse_mass * torch.einsum("cn,...cx->...nx", incidence, weighted)

    def project_positions(self, reference: Tensor, q: Tensor) -> Tensor:
        """SHAKE: move ``q`` along ``reference``'s constraint directions onto the constraint surface."""
        directions = self._bond_vectors(reference)
        coupling = self._coupling.to(q.dtype)
        d2 = (self.distances ** 2).to(q.dtype)
        multipliers = torch.zeros(q.shape[:-2] + (len(self),), dtype=q.dtype, device=q.device)
        for _ in range(self.max_iterations):
            bonds = self._bond_vectors(q + self._displacement(multipliers, directions))
            residual = (bonds * bonds).sum(-1) - d2
            if float((residual.detach().abs() / d2).max()) <= self.tolerance:
                return q + self._displacement(multipliers, directions)
            jacobian = 2.0 * coupling * torch.einsum("...cx,...ex->...ce", bonds, directions)
            multipliers = multipliers - torch.linalg.solve(jacobian, residual[..., None])[..., 0]
        raise ActionMLConvergenceError(
            f"constraint projection did not converge in {self.max_iterations} iterations "
            f"(largest relative error {float((residual.detach().abs() / d2).max()):.2e}); the step is too large for the "
            f"constraints or the configuration has blown up. Reduce the step size.")

    def project_velocities(self, q: Tensor, v: Tensor) -> Tensor:
        """RATTLE: remove the velocity components along ``q``'s constraint directions (mass-weighted)."""
        bonds = self._bond_vectors(q)
        coupling = self._coupling.to(q.dtype)
        matrix = coupling * torch.einsum("...cx,...ex->...ce", bonds, bonds)
        rate = (bonds * self._bond_vectors(v)).sum(-1)
        multipliers = torch.linalg.solve(matrix, rate[..., None])[..., 0]
        return v - self._displacement(multipliers, bonds)

    def violation(self, q: Tensor) -> float:
        """Largest relative distance error ``| |r| - d | / d``."""
        lengths = self._bond_vectors(q.detach()).norm(dim=-1)
        return float(((lengths - self.distances.to(q.dtype)).abs() / self.distances.to(q.dtype)).max())

