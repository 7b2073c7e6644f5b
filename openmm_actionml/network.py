"""The learned potential dW: an invariant, local positions -> energy network (TorchScript).

Architecture (an ACE / moment-tensor-like density model of body order 3, with ANI's two cutoffs):

1. Neighbours j of atom i within ``cutoff`` (minimum image when periodic), excluding ``excluded_pairs``.
2. Radial density: per pair, ``n_radial`` Gaussians ``R_n(r)`` (centres from ``radial_min`` to ``cutoff``) times
   a switch ``f(r / cutoff)``: by default the C^2 polynomial ``f(x) = (1 - x)^3 (1 + 3x + 6x^2)`` (f, f' and f''
   vanish at x = 1), or (``switch = "smooth"``) the C-infinity ``f(x) = exp(1 - 1 / (1 - x^2))``, whose every
   derivative vanishes at x = 1. A long step's modified energy is an expansion in ever higher derivatives of the
   kick potential, so the smoothness of dW at the cutoff is a property of the integrator, not only of the fit.
3. Angular density, from the closer pairs (``r < angular_cutoff``, with its own ``n_angular`` Gaussians and
   switch): moments of order l = 0, 1, 2 of the unit vectors ``u_ij``.
4. Both densities are summed per neighbour element and mixed linearly into ``n_channels`` channels with weights
   that depend on the (centre, neighbour) element pair: ``A^l_ik = sum_j c_k(r_ij, s_i, s_j) u_ij^(x l)``.
5. Rotation invariants: the radial ``A^0_ik`` and, for l = 1, 2, the Gram matrices ``A^l_ik . A^l_ik'`` (l = 2
   made traceless), i.e. ``sum_jj' c_k c_k' P_l(cos theta_jij')``: bond angles at the cost of a pair loop.
6. Per-element standardisation (see :meth:`EnergyNetwork.fit_feature_scaling`), a SiLU MLP with a per-element
   first-layer bias, and one linear readout per head; per-atom energies summed.

Feature hygiene (DESIGN.md section 3 point 7): constrained pairs are near-constant. Pass them as
``excluded_pairs``: they are not neighbours, so their distance is never a radial feature. It still enters
through the angle at a common neighbour, mixed with other, varying distances. Feature scales are floored at
``scale_floor``, so no feature is ever divided by a near-zero standard deviation.

The readout starts at zero (``zero_init``): an untrained dW is exactly 0, so an untrained anchored model is the
classical splitting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

DEFAULT_ELEMENTS = ["H", "C", "N", "O", "S"]
#: Most cells per box axis in the cell list (larger cells stay correct, only less selective).
MAX_CELLS_PER_AXIS = 64
#: Cells per cutoff length in the cell list (cells of width >= cutoff / CELL_REACH; measured fastest at 2).
CELL_REACH = 2
#: Pair entries per chunk of the all-pairs search (bounds its memory for large batches).
ALL_PAIRS_CHUNK = 1 << 22
#: Cutoff switches of the radial and angular densities (see the module docstring).
SWITCHES = ("c2", "smooth")
#: Buffers that bind a network to a topology (see :meth:`EnergyNetwork.bind`); the rest of its state is weights.
BINDING_BUFFERS = ("species", "excluded_keys")


@dataclass
class NetworkConfig:
    """Everything that defines the architecture; ``to_dict``/``from_dict`` round-trip it through JSON.

    Attributes
    ----------
    elements
        The element vocabulary (symbols); weights exist for each. Particles are bound to indices into it.
    n_heads
        Number of outputs (head k = node index k).
    cutoff
        Neighbour cutoff of the radial density in nm.
    angular_cutoff
        Cutoff of the angular density in nm (at most ``cutoff``; fewer pairs make it cheaper).
    n_radial, n_angular
        Gaussians of the radial and angular densities, centred evenly from ``radial_min`` to their cutoff,
        width = spacing.
    radial_min
        First Gaussian centre in nm.
    n_channels
        Mixed density channels per moment order; the feature count is ``n_channels * (n_channels + 2)``.
    hidden
        Widths of the MLP's hidden layers.
    scale_floor
        Smallest feature scale used in standardisation.
    switch
        The cutoff switch: ``"c2"`` (polynomial, the default) or ``"smooth"`` (C-infinity); see the module
        docstring.
    cell_list_threshold
        Systems with more particles than this use the O(N) cell list; smaller ones the all-pairs search.
        Both give the same pairs. Measured on one CPU thread (energy and forces): all pairs is faster for 22
        and 192 atoms (1.3 against 1.7 ms, 3.2 against 5.1), about even for villin's 582, and 2.4x slower for
        a periodic box of 768 (35 against 14.5 ms).
    """

    elements: list[str] = field(default_factory=lambda: list(DEFAULT_ELEMENTS))
    n_heads: int = 2
    cutoff: float = 0.5
    angular_cutoff: float = 0.35
    n_radial: int = 8
    n_angular: int = 6
    radial_min: float = 0.05
    n_channels: int = 12
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    scale_floor: float = 1e-2
    switch: str = "c2"
    cell_list_threshold: int = 600

    def __post_init__(self) -> None:
        self.elements = [str(e) for e in self.elements]
        self.hidden = [int(h) for h in self.hidden]
        if not self.elements or len(set(self.elements)) != len(self.elements):
            raise InputError(f"elements must be a non-empty list of distinct symbols, got {self.elements}.")
        if min(self.n_heads, self.n_channels) < 1 or min(self.n_radial, self.n_angular) < 2 \
                or not self.hidden or min(self.hidden) < 1:
            raise InputError("n_heads and n_channels must be >= 1, n_radial and n_angular >= 2, and hidden a "
                             "non-empty list of positive widths.")
        if not 0.0 <= self.radial_min < self.angular_cutoff <= self.cutoff:
            raise InputError(f"need 0 <= radial_min < angular_cutoff <= cutoff (nm), got {self.radial_min}, "
                             f"{self.angular_cutoff} and {self.cutoff}.")
        if self.scale_floor <= 0.0:
            raise InputError(f"scale_floor must be positive, got {self.scale_floor}.")
        if self.switch not in SWITCHES:
            raise InputError(f"unknown cutoff switch {self.switch!r}; choose one of {', '.join(SWITCHES)}.")

    @property
    def n_features(self) -> int:
        return self.n_channels * (self.n_channels + 2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown network option(s) {unknown}; known: {sorted(known)}.")
        return cls(**data)


def minimum_image(d: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Reduce displacements ``d[..., 3]`` by OpenMM's reduced (triclinic) box ``box[..., 3, 3]`` (rows a, b, c).

    Returns the reduced displacements and the image counts ``n[..., 3]`` with ``d_reduced = d - n @ box``.
    """
    nc = torch.round(d[..., 2] / box[..., 2, 2])
    d = d - nc.unsqueeze(-1) * box[..., 2, :]
    nb = torch.round(d[..., 1] / box[..., 1, 1])
    d = d - nb.unsqueeze(-1) * box[..., 1, :]
    na = torch.round(d[..., 0] / box[..., 0, 0])
    d = d - na.unsqueeze(-1) * box[..., 0, :]
    return d, torch.stack([na, nb, nc], -1)


class EnergyNetwork(torch.nn.Module):
    """dW: ``forward(positions[B, N, 3] nm, box[B, 3, 3] nm or None) -> energies[B, n_heads]`` in kJ/mol.

    Parameters
    ----------
    config
        The architecture.
    particle_elements, excluded_pairs, periodic
        Bind the network to a topology now (see :meth:`bind`); weights do not depend on it.
    zero_init
        Start the readout at zero, so dW = 0 exactly (default). ``False`` gives a random readout, for tests
        and pure-ML force matching.
    """

    def __init__(self, config: NetworkConfig, particle_elements: Optional[Sequence[str]] = None,
                 excluded_pairs: Optional[Iterable[Sequence[int]]] = None, periodic: bool = False,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.n_species = len(config.elements)
        self.n_heads = config.n_heads
        self.cutoff = float(config.cutoff)
        self.angular_cutoff = float(config.angular_cutoff)
        self.radial_min = float(config.radial_min)
        self.n_radial = config.n_radial
        self.n_angular = config.n_angular
        self.n_channels = config.n_channels
        self.cell_list_threshold = config.cell_list_threshold
        self.smooth_switch = config.switch == "smooth"
        self.periodic = periodic
        self.max_cells_per_axis = MAX_CELLS_PER_AXIS
        self.all_pairs_chunk = ALL_PAIRS_CHUNK
        self.cell_reach = CELL_REACH
        species, channels = self.n_species, config.n_channels
        # Mixing weights [centre element, (neighbour element, basis function), channel].
        self.radial_mixing = torch.nn.Parameter(torch.randn(species, species * config.n_radial, channels)
                                                / config.n_radial ** 0.5)
        self.angular_mixing = torch.nn.Parameter(torch.randn(species, species * config.n_angular, channels)
                                                 / config.n_angular ** 0.5)
        widths = [config.n_features] + config.hidden
        self.species_bias = torch.nn.Parameter(torch.zeros(self.n_species, widths[1]))
        self.layers = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.readout = torch.nn.Linear(widths[-1], config.n_heads)
        if zero_init:
            torch.nn.init.zeros_(self.readout.weight)
            torch.nn.init.zeros_(self.readout.bias)
        self.register_buffer("feature_mean", torch.zeros(self.n_species, config.n_features))
        self.register_buffer("feature_scale", torch.ones(self.n_species, config.n_features))
        # Topology (not weights): kept out of the state_dict, so weights load into any binding.
        self.register_buffer("species", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("excluded_keys", torch.zeros(0, dtype=torch.long), persistent=False)
        if particle_elements is not None:
            self.bind(particle_elements, excluded_pairs, periodic)

    @torch.jit.unused
    def config_dict(self) -> dict:
        """The architecture as a JSON-able dict (:meth:`NetworkConfig.from_dict` rebuilds it)."""
        return self.config.to_dict()

    @torch.jit.unused
    def bind(self, particle_elements: Sequence[str], excluded_pairs: Optional[Iterable[Sequence[int]]] = None,
             periodic: bool = False) -> None:
        """Bind the network to a topology: the element of each particle, excluded pairs, periodicity.

        Parameters
        ----------
        particle_elements
            Element symbol of each particle; each must be in ``config.elements``.
        excluded_pairs
            Pairs ``(i, j)`` that are never neighbours, e.g. constrained bonds (their near-constant distances
            must not be features).
        periodic
            Whether ``forward`` must receive a box (and only then may).
        """
        vocabulary = {element: k for k, element in enumerate(self.config.elements)}
        unknown = sorted({str(e) for e in particle_elements} - set(vocabulary))
        if unknown:
            raise InputError(f"element(s) {unknown} are not in the network's vocabulary {self.config.elements}; "
                             f"build a network whose elements include them.")
        n = len(particle_elements)
        pairs = torch.as_tensor([[int(i), int(j)] for i, j in ([] if excluded_pairs is None else excluded_pairs)],
                                dtype=torch.long).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= n or (pairs[:, 0] == pairs[:, 1]).any()):
            raise InputError(f"excluded_pairs must be pairs of distinct particle indices in [0, {n}).")
        device = self.species.device
        self.species = torch.tensor([vocabulary[str(e)] for e in particle_elements], dtype=torch.long, device=device)
        keys = torch.minimum(pairs[:, 0], pairs[:, 1]) * n + torch.maximum(pairs[:, 0], pairs[:, 1])
        self.excluded_keys = torch.unique(keys).to(device)
        self.periodic = bool(periodic)

    @torch.jit.unused
    def load_weights(self, state: dict) -> None:
        """Load the weights (and feature scaling) of ``state``, e.g. a model file's ``network.state_dict()``,
        keeping this network's binding (:data:`BINDING_BUFFERS`)."""
        self.load_state_dict({key: value for key, value in state.items() if key not in BINDING_BUFFERS})

    @torch.jit.unused
    def fit_feature_scaling(self, positions: Tensor, box: Optional[Tensor] = None) -> None:
        """Set the per-element feature mean and scale from configurations ``positions[B, N, 3]``.

        The scale is the standard deviation floored at ``config.scale_floor``. Call it once, on training
        configurations, before training: the statistics are then fixed buffers (saved in the state_dict).
        Elements absent from the data keep mean 0 and scale 1.
        """
        with torch.no_grad():
            features = self.features(positions, box)
            centre = self.species.repeat(positions.shape[0])
            for s in range(self.n_species):
                rows = features[centre == s]
                if len(rows):
                    self.feature_mean[s] = rows.mean(0)
                    self.feature_scale[s] = rows.std(0, unbiased=False).clamp(min=self.config.scale_floor)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        return self.energy_and_distances(positions, box)[0]

    @torch.jit.export
    def energy_and_distances(self, positions: Tensor, box: Optional[Tensor] = None
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The energies ``[B, n_heads]`` and the neighbour pairs they were computed from: ``(energy, b, i, j, r)``,
        with ``b, i, j`` as in :meth:`neighbor_pairs` and their distances ``r`` (nm, differentiable in
        ``positions``), so that a pair term can reuse the search (:mod:`openmm_actionml.pair_correction`)."""
        batch, n = positions.shape[0], positions.shape[1]
        b, i, j, d, r = self.pair_distances(positions, box)
        centre = self.species.repeat(batch)
        h = (self._pair_features(batch, n, b, i, j, d, r) - self.feature_mean[centre]) / self.feature_scale[centre]
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k == 0:
                h = h + self.species_bias[centre]
            h = torch.nn.functional.silu(h)
        return self.readout(h).reshape(batch, n, self.n_heads).sum(1), b, i, j, r

    @torch.jit.export
    def features(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        """Per-atom invariant features ``[B * N, n_features]`` (before standardisation)."""
        b, i, j, d, r = self.pair_distances(positions, box)
        return self._pair_features(positions.shape[0], positions.shape[1], b, i, j, d, r)

    @torch.jit.export
    def pair_distances(self, positions: Tensor, box: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The neighbour pairs ``(b, i, j)`` of :meth:`neighbor_pairs`, their displacements ``d[P, 3]`` (minimum
        image) and distances ``r[P]`` in nm, both differentiable in ``positions``."""
        batch, n = positions.shape[0], positions.shape[1]
        if n != self.species.shape[0]:
            raise ValueError("the network is bound to " + str(self.species.shape[0]) + " particles but got "
                             + str(n) + "; call bind() with this system's elements")
        if (box is not None) != self.periodic:
            raise ValueError("the network is bound as periodic=" + str(self.periodic)
                             + " but a box was " + ("given" if box is not None else "not given"))
        b, i, j, shifts = self.neighbor_pairs(positions.detach(),
                                              None if box is None else box.detach().to(positions.dtype))
        q = positions.reshape(batch * n, 3)
        d = q[b * n + j] - q[b * n + i] - shifts
        return b, i, j, d, torch.sqrt((d * d).sum(-1))

    def _pair_features(self, batch: int, n: int, b: Tensor, i: Tensor, j: Tensor, d: Tensor, r: Tensor) -> Tensor:
        """:meth:`features` from the pairs of :meth:`pair_distances`."""
        gi, gj = b * n + i, b * n + j
        # Each pair once; it adds to i's density (neighbour element s_j) and to j's (element s_i, direction -u).
        slot_i, slot_j = gi * self.n_species + self.species[j], gj * self.n_species + self.species[i]
        basis = self._basis(r, self.cutoff, self.n_radial)
        radial = torch.zeros(batch * n * self.n_species, self.n_radial, dtype=d.dtype, device=d.device)
        radial = radial.index_add(0, slot_i, basis).index_add(0, slot_j, basis)
        radial = radial.reshape(batch * n, self.n_species * self.n_radial)
        near = torch.nonzero(r.detach() < self.angular_cutoff).squeeze(-1)
        r_near = r[near]
        u = d[near] / r_near.unsqueeze(-1)
        ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
        root2 = 2.0 ** 0.5
        # Moments 1, u and u u^T (6 components, weighted so that dot products are Frobenius products).
        directions = torch.stack([torch.ones_like(ux), ux, uy, uz, ux * ux, uy * uy, uz * uz,
                                  root2 * ux * uy, root2 * ux * uz, root2 * uy * uz], -1)
        terms = self._basis(r_near, self.angular_cutoff, self.n_angular).unsqueeze(-1) * directions.unsqueeze(1)
        parity = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=d.dtype, device=d.device)
        angular = torch.zeros(batch * n * self.n_species, self.n_angular, 10, dtype=d.dtype, device=d.device)
        angular = angular.index_add(0, slot_i[near], terms).index_add(0, slot_j[near], terms * parity)
        angular = angular.reshape(batch * n, self.n_species * self.n_angular, 10)
        centre = self.species.repeat(batch)
        a0 = torch.zeros(batch * n, self.n_channels, dtype=d.dtype, device=d.device)
        moments = torch.zeros(batch * n, self.n_channels, 10, dtype=d.dtype, device=d.device)
        for s in range(self.n_species):
            atoms = torch.nonzero(centre == s).squeeze(-1)
            if atoms.numel() > 0:
                a0 = a0.index_copy(0, atoms, torch.matmul(radial[atoms], self.radial_mixing[s]))
                moments = moments.index_copy(0, atoms, torch.matmul(self.angular_mixing[s].t(), angular[atoms]))
        trace, a1, a2 = moments[:, :, 0], moments[:, :, 1:4], moments[:, :, 4:]
        g1 = torch.matmul(a1, a1.transpose(1, 2))
        g2 = torch.matmul(a2, a2.transpose(1, 2)) - trace.unsqueeze(2) * trace.unsqueeze(1) / 3.0
        upper = torch.triu_indices(self.n_channels, self.n_channels, device=d.device)
        flat = upper[0] * self.n_channels + upper[1]
        return torch.cat([a0, g1.flatten(1)[:, flat], g2.flatten(1)[:, flat]], 1)

    def _basis(self, r: Tensor, cutoff: float, count: int) -> Tensor:
        """Gaussians from ``radial_min`` to ``cutoff`` times the cutoff switch: ``[P, count]``."""
        x = r / cutoff
        if self.smooth_switch:  # pairs are within the cutoff; the clamp keeps r = cutoff finite, value and gradient 0
            switch = torch.exp(1.0 - 1.0 / (1.0 - x * x).clamp_min(1e-6))
        else:
            switch = (1.0 - x) ** 3 * (1.0 + 3.0 * x + 6.0 * x * x)
        centres = torch.linspace(self.radial_min, cutoff, count, dtype=r.dtype, device=r.device)
        width = (cutoff - self.radial_min) / (count - 1)
        return torch.exp(-(((r.unsqueeze(-1) - centres) / width) ** 2)) * switch.unsqueeze(-1)

    @torch.jit.export
    def neighbor_pairs(self, positions: Tensor, box: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Neighbour pairs ``(b, i, j, shifts)`` within the cutoff, each once with ``i < j`` (not differentiable).

        ``b`` is the batch index, ``i, j`` particle indices, and ``shifts[P, 3]`` the lattice vectors (nm) with
        ``d_ij = q_j - q_i - shifts`` the minimum image (zeros when not periodic). Excluded pairs are left out.
        Systems with more than ``cell_list_threshold`` particles use a cell list, smaller ones all pairs; both
        find the same pairs.
        """
        if box is not None and bool((torch.diagonal(box, dim1=1, dim2=2) < 2 * self.cutoff).any()):
            raise ValueError("the periodic box must be at least twice the cutoff (" + str(self.cutoff)
                             + " nm) along each axis")
        n = positions.shape[1]
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        if n > self.cell_list_threshold:
            for k in range(positions.shape[0]):
                i, j, images = self._cell_list_pairs(positions[k], None if box is None else box[k])
                parts.append((torch.full_like(i, k), i, j, images))
        else:
            chunk = max(1, self.all_pairs_chunk // max(1, n * n))
            for k in range(0, positions.shape[0], chunk):
                b, i, j, images = self._all_pairs(positions[k:k + chunk], None if box is None else box[k:k + chunk])
                parts.append((b + k, i, j, images))
        b = torch.cat([p[0] for p in parts])
        i = torch.cat([p[1] for p in parts])
        j = torch.cat([p[2] for p in parts])
        images = torch.cat([p[3] for p in parts])
        keep = torch.nonzero(~torch.isin(i * n + j, self.excluded_keys)).squeeze(-1)
        b, i, j, images = b[keep], i[keep], j[keep], images[keep]
        if box is None:
            return b, i, j, images
        return b, i, j, torch.matmul(images.unsqueeze(1), box[b]).squeeze(1)

    def _all_pairs(self, positions: Tensor, box: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pairs ``i < j`` within the cutoff for a batch, from all pairs."""
        n = positions.shape[1]
        upper = torch.triu_indices(n, n, 1, device=positions.device)
        d = positions[:, upper[1]] - positions[:, upper[0]]
        images = torch.zeros_like(d)
        if box is not None:
            d, images = minimum_image(d, box.unsqueeze(1))
        b, pair = torch.nonzero((d * d).sum(-1) < self.cutoff ** 2).unbind(1)
        return b, upper[0][pair], upper[1][pair], images[b, pair]

    def _cell_list_pairs(self, q: Tensor, box: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Pairs ``i < j`` within the cutoff for one structure, from a cell list.

        Cells of width >= cutoff / reach tile fractional coordinates (periodic) or the bounding box; a pair
        within the cutoff lies within ``reach`` cells along each axis. Each such cell is visited once.
        """
        n = q.shape[0]
        if box is not None:
            inverse = torch.linalg.inv(box)
            fractional = q @ inverse
            fractional = fractional - torch.floor(fractional)
            widths = 1.0 / torch.sqrt((inverse * inverse).sum(0))
        else:
            low = q.min(0)[0]
            widths = (q.max(0)[0] - low).clamp(min=self.cutoff)
            fractional = (q - low) / widths
        reach = self.cell_reach
        counts = torch.floor(widths * reach / self.cutoff).clamp(1, self.max_cells_per_axis).long()
        cell = torch.minimum(torch.floor(fractional * counts).long(), counts - 1)
        sizes = [int(c) for c in counts]
        axes: list[Tensor] = []
        for size in sizes:
            if box is not None and size < 2 * reach + 1:  # visit each cell once, not from both sides
                axes.append(torch.arange(size, device=q.device))
            else:
                axes.append(torch.arange(-reach, reach + 1, device=q.device))
        neighbor = cell.unsqueeze(1) + torch.cartesian_prod(axes[0], axes[1], axes[2])
        n_cells = sizes[0] * sizes[1] * sizes[2]
        if box is not None:
            neighbor = torch.remainder(neighbor, counts)
            outside = torch.zeros(neighbor.shape[:2], dtype=torch.bool, device=q.device)
        else:
            outside = ((neighbor < 0) | (neighbor >= counts)).any(-1)
        neighbor_id = (neighbor[..., 0] * sizes[1] + neighbor[..., 1]) * sizes[2] + neighbor[..., 2]
        neighbor_id = torch.where(outside, n_cells, neighbor_id)  # row n_cells of the table is empty
        cell_id = (cell[:, 0] * sizes[1] + cell[:, 1]) * sizes[2] + cell[:, 2]
        order = torch.argsort(cell_id)
        occupancy = torch.bincount(cell_id, minlength=n_cells)
        start = torch.cumsum(occupancy, 0) - occupancy
        slot = torch.arange(n, device=q.device) - start[cell_id[order]]
        table = torch.full((n_cells + 1, int(occupancy.max())), -1, dtype=torch.long, device=q.device)
        table[cell_id[order], slot] = order
        candidates = table[neighbor_id].reshape(n, -1)
        upper = candidates > torch.arange(n, device=q.device).unsqueeze(1)  # j > i; empty slots are -1
        found = torch.nonzero(upper.reshape(-1)).squeeze(-1)
        i, j = torch.div(found, candidates.shape[1], rounding_mode="floor"), candidates.reshape(-1)[found]
        d = q[j] - q[i]
        images = torch.zeros_like(d)
        if box is not None:
            d, images = minimum_image(d, box)
        keep = torch.nonzero((d * d).sum(-1) < self.cutoff ** 2).squeeze(-1)
        return i[keep], j[keep], images[keep]


def check_cutoff_fits(cutoff: float, box: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``cutoff`` (nm) is at most half the shortest edge of the orthorhombic
    ``box`` ``[3, 3]`` (nm): the minimum-image pair search sees one image of each pair."""
    shortest = float(np.min(np.diagonal(np.asarray(box, dtype=float))))
    if cutoff > shortest / 2:
        raise InputError(f"the network's cutoff {cutoff:g} nm exceeds half the shortest box edge ({shortest:.3f} "
                         f"nm), where the minimum image would miss pairs; choose a cutoff of at most "
                         f"{shortest / 2:.3f} nm or a larger box.")


def build_network(particle_elements: Sequence[str], n_heads: int = 2, periodic: bool = False,
                  excluded_pairs: Optional[Iterable[Sequence[int]]] = None, zero_init: bool = True,
                  **options) -> EnergyNetwork:
    """Build a network bound to a system.

    Parameters
    ----------
    particle_elements
        Element symbol of each particle.
    n_heads, periodic, excluded_pairs, zero_init
        As in :class:`NetworkConfig` and :meth:`EnergyNetwork.bind`.
    **options
        Other :class:`NetworkConfig` fields. Without ``elements`` the vocabulary is H, C, N, O, S plus any
        other element of the system.
    """
    if "elements" not in options:
        extra = sorted({str(e) for e in particle_elements} - set(DEFAULT_ELEMENTS))
        options["elements"] = DEFAULT_ELEMENTS + extra
    config = NetworkConfig.from_dict({**options, "n_heads": n_heads})
    return EnergyNetwork(config, particle_elements, excluded_pairs, periodic, zero_init)
