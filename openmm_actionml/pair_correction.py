"""A smooth pair potential added to every head of a model's kick potential, and its fit by Boltzmann inversion.

A surrogate's kick potential W samples its own ensemble under a thermostat, and a force error of a few per cent can
shift that ensemble's structure (a less structured liquid) while the one-step error stays small. A pair term U(r), a
cubic spline over the pairs of two elements (e.g. O-O, or O-H between molecules) that vanishes with its first two
derivatives at the cutoff, moves the pair structure directly: iterative Boltzmann inversion updates U by
``kT ln(g_W(r) / g_V(r))`` until the model's g(r) is the force field's. U acts on the network's own neighbour pairs
(within its cutoff, but its excluded, constrained pairs), so it reuses the network's pair search and costs a few
operations per pair. U is added to every head, so the step's kick potential gains U itself (the kick coefficients
sum to one) and the map stays symplectic and reversible; it is part of the TorchScript model, so it runs wherever
the model runs.
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
from .network import EnergyNetwork, NetworkConfig


#: The four cubic B-splines over one interval as polynomials in the fraction f through it (row: spline, column:
#: power of f).
B_SPLINE_POWERS = np.array([[1.0, -3.0, 3.0, -1.0], [4.0, 0.0, -6.0, 3.0], [1.0, 3.0, 3.0, -3.0],
                            [0.0, 0.0, 0.0, 1.0]]) / 6.0


def piecewise_cubic(r: Tensor, start: Tensor, inverse_spacing: Tensor, n_intervals: Tensor, first_row: Tensor,
                    polynomials: Tensor) -> Tensor:
    """A uniform piecewise cubic at distances ``r``: the interval's row of ``polynomials [rows, 4]`` (coefficients
    of f^0..f^3) from ``first_row``, with f the fraction through the interval. Every other argument is per
    distance (or broadcast): distances below ``start`` or past ``n_intervals`` intervals take the end values."""
    t = torch.minimum(((r - start) * inverse_spacing).clamp(min=0.0), n_intervals)
    interval = torch.minimum(torch.floor(t.detach()), n_intervals - 1.0)
    f = t - interval
    a = polynomials[first_row + interval.long()]
    return ((a[..., 3] * f + a[..., 2]) * f + a[..., 1]) * f + a[..., 0]


class PairPotential(torch.nn.Module):
    """A pair energy ``u(r)``: ``forward(r[...] nm) -> u[...]`` kJ/mol.

    u is a uniform cubic B-spline from ``start`` to ``cutoff``, C^2 everywhere, whose first three and last three
    coefficients are zero: u and its first two derivatives vanish at both ends, and u is zero outside. It is
    evaluated as a cubic polynomial per interval, a few operations per pair whatever the number of knots.

    Parameters
    ----------
    start, cutoff
        The spline's range, nm.
    coefficients
        The free B-spline coefficients in kJ/mol: ``n - 3`` for ``n`` intervals of width ``(cutoff - start) / n``.
    """

    def __init__(self, start: float, cutoff: float, coefficients: np.ndarray) -> None:
        super().__init__()
        coefficients = np.asarray(coefficients, dtype=float).reshape(-1)
        if not 0.0 <= start < cutoff or len(coefficients) < 1:
            raise InputError(f"a pair potential needs 0 <= start < cutoff and at least one coefficient, got "
                             f"{start}, {cutoff} and {len(coefficients)}.")
        self.start = float(start)
        self.cutoff = float(cutoff)
        self.n_intervals = len(coefficients) + 3
        self.spacing = (self.cutoff - self.start) / self.n_intervals
        self.register_buffer("polynomials", torch.as_tensor(self.polynomial_table(coefficients)))  # float64

    @staticmethod
    def polynomial_table(coefficients: np.ndarray) -> np.ndarray:
        """``[n, 4]``: per interval, u's coefficients of f^0..f^3, for the free B-spline ``coefficients [n - 3]``."""
        padded = np.concatenate([np.zeros(3), np.asarray(coefficients, dtype=float), np.zeros(3)])
        return np.lib.stride_tricks.sliding_window_view(padded, 4) @ B_SPLINE_POWERS

    def _evaluate(self, r: Tensor, first_row: Tensor, polynomials: Tensor) -> Tensor:
        scalars = torch.tensor([self.start, 1.0 / self.spacing, float(self.n_intervals)], dtype=r.dtype,
                               device=r.device)
        return piecewise_cubic(r, scalars[0], scalars[1], scalars[2], first_row, polynomials.to(r.dtype))

    def basis(self, r: Tensor) -> Tensor:
        """The free coefficients' B-splines at distances ``r`` (any shape): ``[..., coefficients]``."""
        count = self.n_intervals - 3
        tables = np.concatenate([self.polynomial_table(unit) for unit in np.eye(count)])
        rows = torch.arange(count, device=r.device) * self.n_intervals
        return self._evaluate(r.unsqueeze(-1), rows, torch.as_tensor(tables, device=r.device))

    def forward(self, r: Tensor) -> Tensor:
        return self._evaluate(r, torch.zeros((), dtype=torch.long, device=r.device), self.polynomials)


class PairCorrectedNetwork(torch.nn.Module):
    """An :class:`~openmm_actionml.network.EnergyNetwork` with pair terms added to every head:
    ``forward(q, box) -> [B, heads]``.

    Each term ``u`` acts on the network's own neighbour pairs of its two elements (every pair within the
    network's cutoff, minimum image, but its excluded pairs), so it reuses the network's pair search. All terms
    are evaluated in one pass: each pair looks up its term (a zero one for pairs of no term) by its elements.

    Parameters
    ----------
    network
        The network (its ``energy_and_distances`` gives the pairs).
    species_pairs
        Per term, the two elements as indices into the network's element vocabulary.
    terms
        Per term, u; its cutoff at most the network's.
    """

    def __init__(self, network: EnergyNetwork, species_pairs: Sequence[tuple[int, int]],
                 terms: Sequence[PairPotential]) -> None:
        super().__init__()
        self.network = network
        dtype = next(network.parameters()).dtype
        species = network.n_species
        none = len(terms)  # the zero term: one interval of zero polynomial
        lookup = torch.full((species, species), none, dtype=torch.long)
        for k, (a, c) in enumerate(species_pairs):
            lookup[a, c] = lookup[c, a] = k
        self.register_buffer("term_of_species", lookup)
        tables = [term.polynomials for term in terms] + [torch.zeros(1, 4, dtype=torch.float64)]
        self.register_buffer("polynomials", torch.cat(tables).to(dtype))
        self.register_buffer("first_rows", torch.cumsum(torch.tensor([0] + [len(t) for t in tables[:-1]]), 0))
        parameters = [(term.start, 1.0 / term.spacing, float(term.n_intervals)) for term in terms] + [(0.0, 1.0, 1.0)]
        self.register_buffer("term_parameters", torch.tensor(parameters, dtype=dtype))

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        energy, b, i, j, r = self.network.energy_and_distances(positions, box)
        term = self.term_of_species[self.network.species[i], self.network.species[j]]
        parameters = self.term_parameters[term]
        u = piecewise_cubic(r, parameters[:, 0], parameters[:, 1], parameters[:, 2], self.first_rows[term],
                            self.polynomials)
        added = torch.zeros(energy.shape[0], dtype=energy.dtype, device=energy.device).index_add(0, b, u)
        return energy + added.unsqueeze(-1)


def fit_coefficients(radii: np.ndarray, target: np.ndarray, weights: np.ndarray, start: float, cutoff: float,
                     n_intervals: int, ridge: float) -> np.ndarray:
    """Least-squares free coefficients of a :class:`PairPotential` of ``n_intervals`` on ``target(radii)``
    (kJ/mol), with per-radius ``weights`` and a ridge penalty ``ridge * sum_k a_k^2``."""
    if n_intervals < 4:
        raise InputError(f"a pair potential needs at least 4 spline intervals (one free coefficient), got "
                         f"{n_intervals}.")
    shape = PairPotential(start, cutoff, np.zeros(n_intervals - 3))
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


def energy_network(model: ActionMLModel) -> EnergyNetwork:
    """The model's network as an :class:`~openmm_actionml.network.EnergyNetwork`, rebuilt from its recipe's
    architecture with the model's parameters and binding (the model file holds it compiled, as written when it
    was trained).

    Raises
    ------
    InputError
        If the model's network is not an EnergyNetwork, or already carries a pair correction.
    """
    meta = model.metadata
    if "pair_correction" in meta.recipe:
        raise InputError(f"{model.path.name} already has a pair correction; correct the model it was made from "
                         f"({meta.recipe['pair_correction'].get('from', 'named in its recipe')}).")
    try:
        config = NetworkConfig.from_dict(meta.network)
    except (InputError, TypeError) as error:
        raise InputError(f"{model.path.name}'s network is not an actionml EnergyNetwork ({error}); a pair "
                         f"correction reuses that network's pair search.") from None
    network = EnergyNetwork(config).to(next(model.network.parameters()).dtype)
    state = model.network.state_dict()
    network.load_weights(state)
    network.species, network.excluded_keys = state["species"].clone(), state["excluded_keys"].clone()
    network.periodic = meta.periodic
    return network


def with_pair_correction(model: ActionMLModel, terms: dict[str, PairPotential], path: str | Path, recipe: dict,
                         overwrite: bool = False) -> Path:
    """Write ``model`` with pair ``terms`` (by element pair, e.g. ``{"O-O": u}``) added to every head, its recipe
    extended by ``recipe`` under ``"pair_correction"``.

    Raises
    ------
    InputError
        If an element pair is malformed, names an element the model lacks or comes twice, a term reaches past
        the network's cutoff, or the model is not scheme A (or see :func:`energy_network`).
    """
    meta = model.metadata
    if meta.scheme != "A":
        raise InputError(f"{model.path.name} is a scheme-B model; a pair correction is added to scheme-A kicks.")
    network = energy_network(model)
    species_pairs = []
    for pair, term in terms.items():
        first, second = element_pair_indices(pair, list(meta.elements))
        species = (int(network.species[first[0]]), int(network.species[second[0]]))
        if species in species_pairs or species[::-1] in species_pairs:
            raise InputError(f"two terms for the element pair {pair}; give one term per pair.")
        species_pairs.append(species)
        if term.cutoff > network.cutoff:
            raise InputError(f"the {pair} term's cutoff {term.cutoff:g} nm exceeds the network's {network.cutoff:g} "
                             f"nm; a term acts on the network's neighbour pairs, so choose a cutoff of at most "
                             f"{network.cutoff:g} nm.")
    metadata = replace(meta, recipe=dict(meta.recipe, pair_correction=recipe))
    corrected = PairCorrectedNetwork(network, species_pairs, list(terms.values()))
    return export_model(corrected, metadata, path, overwrite=overwrite)
