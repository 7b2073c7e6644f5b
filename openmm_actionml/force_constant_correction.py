"""A learned correction with one parameter per class of harmonic term: ``dW_k = sum_c (s_ck - 1) E_c``.

``E_c`` is the energy of the force field's harmonic bond and angle terms of class ``c`` (by element, as
:func:`~openmm_actionml.frequency_matching.harmonic_term_classes` groups them), so a kick with ``V + dW_k`` is a kick
with the force field whose force constants of class ``c`` are multiplied by ``s_ck``. Trained by the scheme-A
trainer (``actionml train --force-constants``) on the same unrolled loss as a network, the factors are learned
from trajectories, where :func:`~openmm_actionml.frequency_matching.fit_frequency_match` fits them to the
linearised step at a minimum. The factors are ``s = exp(a)``, positive, and start at 1 (``dW = 0``).

Bonds and angles are computed as OpenMM's ``HarmonicBondForce`` and ``HarmonicAngleForce`` compute them without
periodic boundary conditions: molecules must be whole, as OpenMM keeps them in a Context's positions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
import openmm as mm

from .errors import InputError
from .frequency_matching import harmonic_term_classes, with_scaled_force_constants
from .modelfile import ActionMLModel

__all__ = ["ForceConstantCorrection", "KIND", "bakes_into_system", "model_factors", "with_learned_factors"]

#: ``network["kind"]`` in the metadata of a model whose correction is a :class:`ForceConstantCorrection`.
KIND = "force-constants"


class ForceConstantCorrection(torch.nn.Module):
    """dW: ``forward(positions[B, N, 3] nm, box) -> energies[B, n_heads]`` in kJ/mol, one factor per class and
    head on the harmonic terms of ``system``.

    Parameters
    ----------
    system
        The force field the kicks add (its ``HarmonicBondForce`` and ``HarmonicAngleForce`` terms).
    elements
        Element symbol of each particle.
    n_heads
        Number of kick potentials.

    Raises
    ------
    InputError
        If the System has no harmonic bond or angle terms, or one of those forces uses periodic boundary
        conditions.
    """

    def __init__(self, system: mm.System, elements: Sequence[str], n_heads: int) -> None:
        super().__init__()
        classes = harmonic_term_classes(system, elements)
        self.class_names = [term_class.name for term_class in classes]
        self.n_heads = n_heads
        bonds: list[tuple[int, int, float, float, int]] = []
        angles: list[tuple[int, int, int, float, float, int]] = []
        for index, term_class in enumerate(classes):
            force = system.getForce(term_class.force_index)
            if force.usesPeriodicBoundaryConditions():
                raise InputError(f"{type(force).__name__} {term_class.force_index} applies periodic boundary "
                                 f"conditions to its terms; a force-constant correction needs whole molecules "
                                 f"(the default), so train a network correction instead.")
            for term in term_class.terms:
                if isinstance(force, mm.HarmonicBondForce):
                    i, j, length, k = force.getBondParameters(term)
                    bonds.append((i, j, length.value_in_unit(mm.unit.nanometer),
                                  k.value_in_unit(mm.unit.kilojoule_per_mole / mm.unit.nanometer ** 2), index))
                else:
                    i, j, m, angle, k = force.getAngleParameters(term)
                    angles.append((i, j, m, angle.value_in_unit(mm.unit.radian),
                                   k.value_in_unit(mm.unit.kilojoule_per_mole / mm.unit.radian ** 2), index))
        self.register_buffer("bond_atoms", torch.tensor([b[:2] for b in bonds], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("bond_lengths", torch.tensor([b[2] for b in bonds], dtype=torch.float64))
        self.register_buffer("bond_constants", torch.tensor([b[3] for b in bonds], dtype=torch.float64))
        self.register_buffer("bond_classes", torch.tensor([b[4] for b in bonds], dtype=torch.long))
        self.register_buffer("angle_atoms", torch.tensor([a[:3] for a in angles], dtype=torch.long).reshape(-1, 3))
        self.register_buffer("angle_values", torch.tensor([a[3] for a in angles], dtype=torch.float64))
        self.register_buffer("angle_constants", torch.tensor([a[4] for a in angles], dtype=torch.float64))
        self.register_buffer("angle_classes", torch.tensor([a[5] for a in angles], dtype=torch.long))
        self.log_scales = torch.nn.Parameter(torch.zeros(len(classes), n_heads, dtype=torch.float64))

    def class_energies(self, positions: Tensor) -> Tensor:
        """``E_c`` at ``positions[B, N, 3]``: ``[B, classes]`` in kJ/mol."""
        energies = torch.zeros(positions.shape[0], len(self.class_names), dtype=positions.dtype,
                               device=positions.device)
        i, j = self.bond_atoms[:, 0], self.bond_atoms[:, 1]
        length = torch.linalg.vector_norm(positions[:, j] - positions[:, i], dim=-1)
        bond = 0.5 * self.bond_constants.to(positions.dtype) * (length - self.bond_lengths.to(positions.dtype)) ** 2
        energies = energies.index_add(1, self.bond_classes, bond)
        centre = positions[:, self.angle_atoms[:, 1]]
        first = positions[:, self.angle_atoms[:, 0]] - centre
        last = positions[:, self.angle_atoms[:, 2]] - centre
        theta = torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(first, last, dim=-1), dim=-1),
                            (first * last).sum(-1))
        angle = 0.5 * self.angle_constants.to(positions.dtype) * (theta - self.angle_values.to(positions.dtype)) ** 2
        return energies.index_add(1, self.angle_classes, angle)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        return self.class_energies(positions) @ torch.expm1(self.log_scales.to(positions.dtype))

    @torch.jit.unused
    def factors(self) -> list[dict[str, float]]:
        """Each head's factor per class, ``{class name: s}``."""
        return _factors(self.class_names, self.log_scales)

    @torch.jit.unused
    def config_dict(self) -> dict:
        """What the correction is, for the model's metadata: its kind, classes and heads."""
        return {"kind": KIND, "classes": list(self.class_names), "n_heads": self.n_heads}


def model_factors(model: ActionMLModel) -> list[dict[str, float]]:
    """The learned factors of a model trained with ``--force-constants``: each head's ``{class name: s}``.

    Raises
    ------
    InputError
        If the model's correction is a network.
    """
    network = model.metadata.network
    if network.get("kind") != KIND:
        raise InputError(f"{model.path.name} learned a network, not force-constant factors (train with "
                         f"--force-constants).")
    return _factors(network["classes"], model.network.log_scales)


def bakes_into_system(model: ActionMLModel) -> bool:
    """Whether :func:`with_learned_factors` takes ``model``: one set of learned factors for every kick
    (``--force-constants --tied-heads``) of the force field itself (no baseline)."""
    network = model.metadata.network
    return network.get("kind") == KIND and network.get("n_heads") == 1 and not model.metadata.baseline


def with_learned_factors(system: mm.System, model: ActionMLModel) -> mm.System:
    """A copy of ``system`` with the force constants of a tied force-constant model (``--force-constants
    --tied-heads``) multiplied by its factors. Its step is then the classical splitting on that System
    (``SplittingIntegrator(meta.get_splitting(), meta.step)``), with no TorchForce and at the classical splitting's
    cost; as with any scaled System, States report the scaled force field's energy.

    Raises
    ------
    InputError
        If the model learned a network, one set of factors per head (no single System holds kicks that differ),
        or factors of a baseline force field.
    ModelMismatchError
        If the model does not fit ``system``.
    """
    model.validate(system)
    factors = model_factors(model)
    if len(factors) != 1:
        raise InputError(f"{model.path.name} has one set of factors per kick potential ({len(factors)}); no single "
                         f"System holds kicks that differ. Run it with ActionMLIntegrator and add_learned_force, or "
                         f"train with --tied-heads.")
    if model.metadata.baseline:
        raise InputError(f"{model.path.name}'s factors scale its baseline force field "
                         f"({' + '.join(model.metadata.baseline)}), not this System's; run it with "
                         f"ActionMLIntegrator and add_learned_force.")
    return with_scaled_force_constants(system, harmonic_term_classes(system, model.metadata.elements), factors[0])


def _factors(class_names: Sequence[str], log_scales: Tensor) -> list[dict[str, float]]:
    scales = log_scales.detach().double().exp().cpu().tolist()
    return [{name: row[head] for name, row in zip(class_names, scales)} for head in range(log_scales.shape[1])]
