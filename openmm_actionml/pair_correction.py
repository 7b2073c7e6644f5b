"""A smooth pair potential added to every head of a model's kick potential, and its fit by Boltzmann inversion.

A surrogate's kick potential W samples its own ensemble under a thermostat, and a force error of a few per cent
can shift that ensemble's structure (a less structured liquid) while the one-step error stays small. A pair term
U(r), a cubic spline over the pairs of two elements (e.g. O-O, or O-H between molecules) that vanishes with its
first two derivatives at the cutoff, moves the pair structure directly: iterative Boltzmann inversion updates U by
``kT ln(g_W(r) / g_V(r))`` until the model's g(r) is the force field's. U is added to every head, so the step's
kick potential gains U itself (the kick coefficients sum to one) and the map stays symplectic and reversible; it is
part of the TorchScript model, so it runs wherever the model runs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .diagnostics import element_pair_indices
from .errors import InputError
from .modelfile import ActionMLModel, export_model
from .network import check_cutoff_fits, minimum_image


class PairPotential(torch.nn.Module):
    """``U = sum over pairs of u(r)``: ``forward(positions[B, N, 3] nm, box[B, 3, 3] or None) -> [B]`` kJ/mol.

    u is a uniform cubic B-spline from ``start`` to ``cutoff``, C^2 everywhere, whose first three and last three
    coefficients are zero: u and its first two derivatives vanish at both ends, and u is zero outside. Each pair
    costs a few operations whatever the number of knots.

    Parameters
    ----------
    pairs
        ``[P, 2]`` particle indices, each pair once.
    start, cutoff
        The spline's range, nm.
    coefficients
        The free B-spline coefficients in kJ/mol: ``n - 3`` for ``n`` intervals of width ``(cutoff - start) / n``.
    """

    def __init__(self, pairs: np.ndarray, start: float, cutoff: float, coefficients: np.ndarray,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        coefficients = np.asarray(coefficients, dtype=float).reshape(-1)
        if not 0.0 <= start < cutoff or len(coefficients) < 1:
            raise InputError(f"a pair potential needs 0 <= start < cutoff and at least one coefficient, got "
                             f"{start}, {cutoff} and {len(coefficients)}.")
        self.register_buffer("first", torch.as_tensor(pairs[:, 0]))
        self.register_buffer("second", torch.as_tensor(pairs[:, 1]))
        padded = np.concatenate([np.zeros(3), coefficients, np.zeros(3)])
        self.register_buffer("spline", torch.as_tensor(padded, dtype=dtype))
        self.register_buffer("offsets", torch.arange(4))
        self.start = float(start)
        self.cutoff = float(cutoff)
        self.n_intervals = len(coefficients) + 3
        self.spacing = (self.cutoff - self.start) / self.n_intervals

    def _weights(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """Each distance's interval index ``[...]`` and the weights of its four coefficients ``[..., 4]``."""
        t = ((r - self.start) / self.spacing).clamp(0.0, float(self.n_intervals))
        interval = torch.floor(t.detach()).clamp(max=self.n_intervals - 1)
        f = t - interval
        f2 = f * f
        f3 = f2 * f
        weights = torch.stack([(1.0 - f) ** 3, 3.0 * f3 - 6.0 * f2 + 4.0, -3.0 * f3 + 3.0 * f2 + 3.0 * f + 1.0, f3],
                              -1) / 6.0
        return interval.long(), weights

    def basis(self, r: Tensor) -> Tensor:
        """The free coefficients' B-splines at distances ``r`` (any shape): ``[..., coefficients]``."""
        interval, weights = self._weights(r)
        full = torch.zeros(r.shape + (self.n_intervals + 3,), dtype=weights.dtype, device=r.device)
        full = full.scatter_add(-1, interval.unsqueeze(-1) + self.offsets, weights)
        return full[..., 3:self.n_intervals]

    def pair_energy(self, r: Tensor) -> Tensor:
        """u(r) at distances ``r`` (any shape), kJ/mol; zero outside ``[start, cutoff]``."""
        interval, weights = self._weights(r)
        return (self.spline[interval.unsqueeze(-1) + self.offsets] * weights).sum(-1)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        d = positions[:, self.second] - positions[:, self.first]
        if box is not None:
            d = minimum_image(d, box.to(d.dtype).unsqueeze(1))[0]
        return self.pair_energy(torch.sqrt((d * d).sum(-1))).sum(1)


class PairCorrectedNetwork(torch.nn.Module):
    """A model's network with :class:`PairPotential` terms added to every head: ``forward(q, box) -> [B, heads]``."""

    def __init__(self, network: torch.nn.Module, corrections: Sequence[PairPotential]) -> None:
        super().__init__()
        self.network = network
        self.corrections = torch.nn.ModuleList(corrections)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        energy = self.network(positions, box)
        for correction in self.corrections:
            energy = energy + correction(positions, box).unsqueeze(-1)
        return energy


def element_pairs(elements: Sequence[str], pair: str, excluded: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """``[P, 2]`` index pairs between the atoms of the two elements of ``pair`` (``"O-O"``, ``"O-H"``), each pair
    once, leaving out ``excluded`` pairs (e.g. the constrained bonds within a molecule).

    Raises
    ------
    InputError
        If ``pair`` is malformed or names an element the system lacks.
    """
    first, second = element_pair_indices(pair, list(elements))
    skip = {(min(int(i), int(j)), max(int(i), int(j))) for i, j in excluded}
    found = sorted({(min(i, j), max(i, j)) for i in first.tolist() for j in second.tolist() if i != j} - skip)
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def fit_coefficients(radii: np.ndarray, target: np.ndarray, weights: np.ndarray, start: float, cutoff: float,
                     n_intervals: int, ridge: float) -> np.ndarray:
    """Least-squares free coefficients of a :class:`PairPotential` of ``n_intervals`` on ``target(radii)``
    (kJ/mol), with per-radius ``weights`` and a ridge penalty ``ridge * sum_k a_k^2``."""
    if n_intervals < 4:
        raise InputError(f"a pair potential needs at least 4 spline intervals (one free coefficient), got "
                         f"{n_intervals}.")
    shape = PairPotential(np.zeros((0, 2)), start, cutoff, np.zeros(n_intervals - 3), torch.float64)
    with torch.no_grad():
        design = shape.basis(torch.as_tensor(np.asarray(radii), dtype=torch.float64)).numpy()
    root = np.sqrt(np.asarray(weights, dtype=float))
    count = design.shape[1]
    lhs = np.vstack([design * root[:, None], np.sqrt(ridge) * np.eye(count)])
    rhs = np.concatenate([np.asarray(target, dtype=float) * root, np.zeros(count)])
    return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def inversion_target(radii: np.ndarray, current: np.ndarray, g_model: np.ndarray, g_target: np.ndarray, kT: float,
                     damping: float, floor: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """One damped Boltzmann-inversion update, ``u + damping kT ln(g_model / g_target)``, and the radii it is
    trusted at (both g above ``floor``); elsewhere the current u is kept."""
    trusted = (np.asarray(g_model) > floor) & (np.asarray(g_target) > floor)
    update = np.zeros_like(np.asarray(current, dtype=float))
    update[trusted] = damping * kT * np.log(g_model[trusted] / g_target[trusted])
    return current + update, trusted


def with_pair_correction(model: ActionMLModel, corrections: Sequence[PairPotential], path: str | Path, recipe: dict,
                         box: Optional[np.ndarray] = None, overwrite: bool = False) -> Path:
    """Write ``model`` with ``corrections`` added to every head, its recipe extended by ``recipe`` under
    ``"pair_correction"``.

    Raises
    ------
    InputError
        If a correction's cutoff does not fit the periodic ``box`` (minimum image) or the model is not scheme A.
    """
    meta = model.metadata
    if meta.scheme != "A":
        raise InputError(f"{model.path.name} is a scheme-B model; a pair correction is added to scheme-A kicks.")
    if meta.periodic:
        if box is None:
            raise InputError("a periodic model's pair correction needs the box to check its cutoff against.")
        for correction in corrections:
            check_cutoff_fits(correction.cutoff, box)
    metadata = replace(meta, recipe=dict(meta.recipe, pair_correction=recipe))
    return export_model(PairCorrectedNetwork(model.network, corrections), metadata, path, overwrite=overwrite)
