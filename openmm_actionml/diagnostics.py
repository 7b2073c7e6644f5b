"""Diagnostics that experts accept: energy drift, per-element temperature with a constraint-aware
degree-of-freedom count, the translational and rotational temperature of rigid water, and one-step errors in
thermal units. Pure numpy; shared by the trainer's NVE gate, ``actionml run`` and ``actionml evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
