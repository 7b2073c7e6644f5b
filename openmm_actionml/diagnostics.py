"""Diagnostics that experts accept: energy drift and how the energy error grows (random walk or push),
per-element temperature with a constraint-aware degree-of-freedom count, the translational and rotational
temperature of rigid water, radial distribution functions of periodic boxes, and one-step errors in thermal
units. Pure numpy; shared by the trainer's NVE gate, ``actionml run`` and ``actionml evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from .errors import InputError
from .units import BOLTZMANN



def degrees_of_freedom_per_atom(masses: np.ndarray, constraints: np.ndarray | None = None,
                                remove_com: bool = False) -> np.ndarray:
    """Kinetic degrees of freedom each atom keeps, shared out by mass weighting.

    A distance constraint between i and j removes one degree of freedom of their relative motion,
    which atom i carries in proportion ``m_j / (m_i + m_j)``: a C-H bond constraint removes mostly
    hydrogen velocity. A fixed centre of mass removes ``3 m_i / M`` from atom i.

    Parameters
    ----------
    masses
        ``[N]`` in amu.
    constraints
        ``[C, 2+]`` with atom indices in the first two columns, or ``None``.
    remove_com
        Whether the centre-of-mass motion is fixed (CMMotionRemover, or a conserved zero momentum).
    """
    masses = np.asarray(masses, dtype=float)
    dof = np.where(masses > 0, 3.0, 0.0)
    if constraints is not None and len(constraints):
        pairs = np.asarray(constraints)[:, :2].astype(int)
        mi, mj = masses[pairs[:, 0]], masses[pairs[:, 1]]
        np.subtract.at(dof, pairs[:, 0], mj / (mi + mj))
        np.subtract.at(dof, pairs[:, 1], mi / (mi + mj))
    if remove_com:
        dof -= 3.0 * masses / masses.sum()
    return dof


def element_temperatures(velocities: np.ndarray, masses: np.ndarray, elements: list[str],
                         dof_per_atom: np.ndarray) -> dict[str, float]:
    """Kinetic temperature of each element, averaged over all leading axes of ``velocities[..., N, 3]``."""
    twice_kinetic = _twice_kinetic(velocities, masses).reshape(-1, len(masses)).mean(0)
    return {element: float(t) for element, t in _per_element(twice_kinetic, elements, dof_per_atom).items()}


def element_temperature_series(velocities: np.ndarray, masses: np.ndarray, elements: list[str],
                               dof_per_atom: np.ndarray) -> dict[str, np.ndarray]:
    """Kinetic temperature of each element at each sample of ``velocities[B, T, N, 3]``, averaged over the
    ``B`` trajectories: ``{element: [T]}``."""
    return _per_element(_twice_kinetic(velocities, masses).mean(0), elements, dof_per_atom)


def rigid_triatomics(constraints: np.ndarray | None) -> np.ndarray:
    """Atom triples ``[M, 3]`` joined pairwise by three distance constraints and by no others: rigid three-atom
    molecules such as rigid water (which OpenMM integrates with SETTLE). Empty when there are none."""
    neighbours: dict[int, set[int]] = {}
    for i, j in ([] if constraints is None else np.asarray(constraints)[:, :2].astype(int).tolist()):
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    triples = {tuple(sorted((i, j, k))) for i, others in neighbours.items() for j in others
               for k in others & neighbours[j]}
    rigid = [t for t in sorted(triples) if all(len(neighbours[a]) == 2 for a in t)]
    return np.array(rigid, dtype=int).reshape(-1, 3)


def rigid_molecule_temperatures(velocities: np.ndarray, masses: np.ndarray, molecules: np.ndarray,
                                remove_com: bool = False) -> dict[str, np.ndarray]:
    """Translational and rotational kinetic temperature of rigid three-atom ``molecules`` (``[M, 3]``, see
    :func:`rigid_triatomics`), over all of them, at each leading index of ``velocities[..., N, 3]``.

    Each molecule has 3 translational and 3 rotational degrees of freedom; a fixed centre of mass of the whole
    system removes the molecules' mass share of 3 translational ones. A rigid molecule's kinetic energy beyond
    its centre-of-mass motion is rotation. Returns ``{"translation": T[...], "rotation": T[...]}`` in K.
    """
    masses = np.asarray(masses, dtype=float)
    atom_masses = masses[molecules]
    molecule_masses = atom_masses.sum(-1)
    moving = np.asarray(velocities, dtype=float)[..., molecules, :]
    momenta = np.einsum("mk,...mkx->...mx", atom_masses, moving)
    twice_translation = np.einsum("...mx,...mx,m->...", momenta, momenta, 1.0 / molecule_masses)
    twice_total = np.einsum("mk,...mkx,...mkx->...", atom_masses, moving, moving)
    translation_dof = 3.0 * len(molecules) - (3.0 * molecule_masses.sum() / masses.sum() if remove_com else 0.0)
    return {"translation": twice_translation / (BOLTZMANN * translation_dof),
            "rotation": (twice_total - twice_translation) / (BOLTZMANN * 3.0 * len(molecules))}


def _twice_kinetic(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """``m v^2`` of each atom, ``[..., N]``."""
    velocities = np.asarray(velocities, dtype=float)
    return np.einsum("n,...nx,...nx->...n", np.asarray(masses, dtype=float), velocities, velocities)


def _per_element(twice_kinetic: np.ndarray, elements: list[str], dof_per_atom: np.ndarray) -> dict[str, np.ndarray]:
    """Per-element temperatures from ``m v^2`` per atom on the last axis."""
    symbols = np.asarray(elements)
    dof = np.asarray(dof_per_atom, dtype=float)
    return {element: twice_kinetic[..., symbols == element].sum(-1) / (BOLTZMANN * dof[symbols == element].sum())
            for element in sorted(set(elements))}


def element_pair_indices(pair: str, elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The atom indices of the two elements of ``pair``, written ``"O-O"`` or ``"O-H"``.

    Raises
    ------
    InputError
        If ``pair`` is malformed or names an element the system lacks.
    """
    symbols = pair.split("-")
    if len(symbols) != 2 or not all(symbols):
        raise InputError(f"an element pair is named by two elements joined by '-', such as O-O; got {pair!r}.")
    found = []
    for symbol in symbols:
        indices = np.flatnonzero(np.asarray(elements) == symbol)
        if not len(indices):
            raise InputError(f"pair {pair}: the system has no {symbol} atom (its elements are "
                             f"{', '.join(sorted(set(elements)))}).")
        found.append(indices)
    return found[0], found[1]


@dataclass
class RadialDistribution:
    """The radial distribution function g(r) between two atom sets of an orthorhombic periodic box.

    Distances are minimum-image, binned from 0 to half the shortest box edge (beyond it the minimum image misses
    pairs). Every ordered pair ``(i, j)`` of ``first`` x ``second`` with ``i != j`` counts, so identical and
    disjoint sets are normalised alike: ``g = counts / (frames x pairs x shell volume / box volume)``, which is 1
    for an ideal gas.

    Attributes
    ----------
    label
        What it measures, e.g. ``"O-O"``.
    first, second
        Atom indices of the two sets.
    box
        Box edge lengths (nm).
    edges
        Bin edges (nm).
    """

    label: str
    first: np.ndarray
    second: np.ndarray
    box: np.ndarray
    edges: np.ndarray

    @classmethod
    def of_elements(cls, pair: str, elements: list[str], box_vectors: np.ndarray,
                    bin_width: float = 0.01) -> "RadialDistribution":
        """g(r) between the atoms of two elements, ``pair`` written ``"O-O"`` or ``"O-H"``, in the box whose
        vectors (nm, ``[3, 3]``) are ``box_vectors``.

        Raises
        ------
        InputError
            If ``pair`` is malformed or names an element the system lacks, or the box is not orthorhombic.
        """
        first, second = element_pair_indices(pair, elements)
        box_vectors = np.asarray(box_vectors, dtype=float)
        if np.abs(box_vectors - np.diag(np.diag(box_vectors))).max() > 1e-9:
            raise InputError("radial distributions are measured in orthorhombic boxes only; this box is triclinic.")
        box = np.diag(box_vectors).copy()
        n_bins = int(0.5 * box.min() / bin_width)
        if n_bins < 1:
            raise InputError(f"bin width {bin_width} nm exceeds half the box's shortest edge "
                             f"({0.5 * box.min():.3g} nm).")
        return cls(pair, first, second, box, np.arange(n_bins + 1) * bin_width)

    @property
    def radii(self) -> np.ndarray:
        """Bin centres (nm)."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @cached_property
    def _distinct(self) -> np.ndarray:
        """``[len(first), len(second)]``: which pairs are two different atoms."""
        return self.first[:, None] != self.second[None, :]

    @property
    def n_pairs(self) -> int:
        """Ordered pairs of distinct atoms counted per frame."""
        return int(self._distinct.sum())

    def counts(self, positions: np.ndarray) -> np.ndarray:
        """Pair counts per bin of one frame, ``positions`` ``[N, 3]`` (nm)."""
        separation = positions[self.second][None, :, :] - positions[self.first][:, None, :]
        separation -= self.box * np.round(separation / self.box)
        distances = np.sqrt((separation ** 2).sum(-1))[self._distinct]
        return np.histogram(distances, bins=self.edges)[0].astype(float)

    def normalise(self, counts: np.ndarray, n_frames: int) -> np.ndarray:
        """g(r) from the counts summed over ``n_frames`` frames (any leading axes)."""
        shells = 4.0 / 3.0 * np.pi * (self.edges[1:] ** 3 - self.edges[:-1] ** 3)
        return counts / (n_frames * self.n_pairs * shells / np.prod(self.box))


@dataclass
class EnergyDrift:
    """Drift and fluctuation of a total-energy time series (one trajectory)."""

    slope_kj_per_ns: float
    slope_kt_per_dof_per_ns: float
    rms_kj: float


def energy_drift(times_ps: np.ndarray, energies_kj: np.ndarray, n_dof: float, temperature: float) -> EnergyDrift:
    """Least-squares slope of total energy and the RMS about that line.

    The slope is reported in kJ/mol/ns and in kT per degree of freedom per ns.
    """
    times_ns = np.asarray(times_ps, dtype=float) / 1000.0
    energies = np.asarray(energies_kj, dtype=float)
    slope, intercept = np.polyfit(times_ns, energies, 1)
    rms = float(np.sqrt(np.mean((energies - (slope * times_ns + intercept)) ** 2)))
    return EnergyDrift(float(slope), float(slope / (BOLTZMANN * temperature * n_dof)), rms)


def energy_displacements(energies: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Per trajectory, the mean and the mean square of ``E(t + lag) - E(t)`` over every time origin ``t``.

    ``energies`` is ``[B, T]`` (one row per trajectory, evenly sampled), ``lag`` in samples. How the spread of the
    displacements grows with the lag tells a total-energy error's kind: bounded fluctuations level off at twice
    their variance, a random walk grows linearly, a steady push quadratically (through the mean).
    """
    energies = np.asarray(energies, dtype=float)
    if not 0 < lag < energies.shape[1]:
        raise ValueError(f"lag must be between 1 and {energies.shape[1] - 1} samples, got {lag}.")
    steps = energies[:, lag:] - energies[:, :-lag]
    return steps.mean(1), (steps ** 2).mean(1)


#: Lags (fractions of the window) between which :func:`energy_growth` reads its walk share.
GROWTH_LAGS = (0.125, 0.5)


@dataclass
class EnergyGrowth:
    """Mean ``M`` and variance ``V`` (kJ/mol, (kJ/mol)^2) of the energy displacements at each lag (ps), and the
    share of the rise a random walk explains, ``walk_share = (V(b) - V(a)) / (2 kT (M(b) - M(a)))``, between the
    lags ``a`` and ``b`` at indices ``ends`` (:data:`GROWTH_LAGS` of the window), with its bootstrap standard
    error over trajectories."""

    lags: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    ends: tuple[int, int]
    walk_share: float
    walk_share_error: float


def energy_growth(times: np.ndarray, energies: np.ndarray, temperature: float, burn_in: float, n_lags: int = 40,
                  resamples: int = 1000, seed: int = 0) -> EnergyGrowth:
    """:class:`EnergyGrowth` of the total energies ``[B, T]`` (kJ/mol) on the grid ``times`` (ps) after the leading
    fraction ``burn_in``, for ``n_lags`` lags up to half the window; trajectories with a non-finite energy (unstable
    ones) are left out.

    A steady rise of the energy can be a push or a random walk (each step's error of either sign), which rises on
    average because there are more states above than below: a walk whose displacements spread as
    ``V(tau) = 2 D tau`` drifts as ``M(tau) = D tau d ln g / dE``, and ``d ln g / dE = 1 / kT`` at temperature T.
    ``walk_share = dV / (2 kT dM)`` is therefore about 1 for a random walk and about 0 for a push.
    """
    stable = np.isfinite(energies).all(1)
    kept = times >= burn_in * times[-1]
    energies, times = np.asarray(energies)[stable][:, kept], np.asarray(times)[kept]
    interval = times[1] - times[0]
    samples = np.unique(np.linspace(1, (len(times) - 1) // 2, n_lags).round().astype(int))
    per_trajectory = [energy_displacements(energies, int(lag)) for lag in samples]  # (mean, mean square) [B] each
    means = np.array([m for m, _ in per_trajectory])  # [lags, B]
    squares = np.array([s for _, s in per_trajectory])
    kT = BOLTZMANN * temperature
    a, b = (int(np.argmin(np.abs(samples - f * (len(times) - 1)))) for f in GROWTH_LAGS)

    def figures(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        mean = means[:, chosen].mean(1)
        variance = squares[:, chosen].mean(1) - mean ** 2
        return mean, variance, float((variance[b] - variance[a]) / (2 * kT * (mean[b] - mean[a])))

    everyone = np.arange(energies.shape[0])
    mean, variance, share = figures(everyone)
    rng = np.random.default_rng(seed)
    boots = [figures(rng.choice(everyone, len(everyone)))[2] for _ in range(resamples)]
    return EnergyGrowth(samples * interval, mean, variance, (a, b), share, float(np.std(boots, ddof=1)))


def relative_errors(masses: np.ndarray, h: float, q: np.ndarray, v: np.ndarray, q1: np.ndarray, v1: np.ndarray,
                    q1_pred: np.ndarray, v1_pred: np.ndarray) -> dict[str, float]:
    """One-step errors, mass-weighted and relative.

    ``dv``: ``|v1_pred - v1| / |v1 - v|``. ``dq``: ``|q1_pred - q1|`` relative to the non-trivial part of the
    displacement, ``|q1 - q - h (v + v1)/2|``, since free flight makes plain position errors look small.
    """
    weights = np.sqrt(np.asarray(masses))[:, None]

    def norm(x: np.ndarray) -> float:
        return float(np.sqrt(((weights * x) ** 2).sum()))

    return {"dv": norm(v1_pred - v1) / norm(v1 - v),
            "dq": norm(q1_pred - q1) / norm(q1 - q - 0.5 * h * (v + v1))}
