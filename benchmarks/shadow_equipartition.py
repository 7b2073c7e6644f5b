"""Goal 3 of issue 6: the split between rigid water's rotational and translational kinetic temperatures that a
palindromic step shows at a long step, predicted from the force field's own velocity spectra.

A stable palindrome conserves a modified energy in which a harmonic mode's ``v^2 / 2`` carries the coefficient
``a(h w)`` (``linear_stability.modified_kinetic_coefficient``, above 1 for fast modes). In NVE, modes that exchange
energy share the modified energy, so the kinetic temperature read from the step's velocities is low by ``1 / a`` on
each mode. Rigid water's rotations are librations of several hundred cm^-1, its translations slower: at a long step
its rotations read cooler than its translations. This weights ``1 / a(h w)`` by each motion's kinetic-energy
spectrum in the datasets' velocities (translation: the molecules' centre-of-mass velocities; rotation: the rest)
and reports the split as the ensemble tables do, each as a percentage of the total kinetic temperature. The
prediction is linear: it takes the force field's spectrum for the step's, and equilibrium in the modified energy.

Usage::

    python benchmarks/shadow_equipartition.py DATA.npz [DATA.npz ...] [--splitting T3] [--steps 4 8 12]
        [--rotation-scale 1] [--output OUT.md]

``--rotation-scale`` multiplies the rotational frequencies: heavier hydrogens on rigid water slow the librations by
about the square root of their mass ratio (0.707 for 2 amu), which leaves static properties as they are.
"""
from __future__ import annotations

import argparse

import torch  # noqa: F401  (before openmm: openmmtorch's plugins need torch's libraries loaded)
import numpy as np

from benchmark_log import emit
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.diagnostics import rigid_triatomics
from openmm_actionml.linear_stability import modified_kinetic_coefficient
from openmm_actionml.splitting import get_splitting

#: The largest share of a motion's kinetic-energy spectrum that may lie beyond the step's linear stability (the
#: librations' far tail: 1e-4 of it lies above 2060 cm^-1, the limit of T3 at 12 fs, in AMOEBA water).
UNSTABLE_TAIL = 1e-3
#: cm^-1 per rad/ps: w / (2 pi c), c = 0.0299792458 cm/ps.
WAVENUMBER_PER_RAD_PS = 1.0 / (2.0 * np.pi * 0.0299792458)


def motion_spectra(data: ReferenceDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Angular frequencies (rad/ps) and the translational and rotational kinetic-energy spectra (periodograms of
    the mass-weighted velocities, Hann-windowed, summed over molecules, components and segments) of ``data``'s
    rigid three-atom molecules, and their number."""
    molecules = rigid_triatomics(data.constraint_pairs)
    if 3 * len(molecules) != len(data.masses):
        raise SystemExit(f"{3 * len(molecules)} of the data's {len(data.masses)} atoms are in rigid three-atom "
                         f"molecules; the split is reported for a box of rigid water alone.")
    atom_masses = data.masses[molecules]  # [M, 3]
    moving = data.velocities[:, :, molecules, :]  # [S, F, M, 3 atoms, 3]
    centre = np.einsum("ma,sfmax->sfmx", atom_masses, moving) / atom_masses.sum(-1)[:, None]
    relative = moving - centre[:, :, :, None, :]
    translation = np.sqrt(atom_masses.sum(-1))[:, None] * centre
    rotation = np.sqrt(atom_masses)[:, :, None] * relative
    frames = data.velocities.shape[1]

    def spectrum(weighted: np.ndarray) -> np.ndarray:  # [S, F, ...]; the window keeps the segments' ends from leaking
        tapered = weighted * np.hanning(frames).reshape(1, -1, *[1] * (weighted.ndim - 2))
        return (np.abs(np.fft.rfft(tapered, axis=1)) ** 2).sum(axis=tuple(i for i in range(weighted.ndim) if i != 1))

    omega = 2.0 * np.pi * np.fft.rfftfreq(frames, data.delta)
    return omega, spectrum(translation), spectrum(rotation), len(molecules)


def kinetic_factor(splitting_name: str, h: float, omega: np.ndarray, spectrum: np.ndarray) -> float:
    """The spectrum-weighted mean of ``1 / a(h w)``: the kinetic temperature read from the step's velocities over
    the true one. The spectrum's tail beyond the step's stability interval is left out up to
    :data:`UNSTABLE_TAIL` of its weight, and refused beyond."""
    splitting = get_splitting(splitting_name)
    inverse = np.array([1.0 if w == 0.0 else 1.0 / modified_kinetic_coefficient(splitting, h * w) for w in omega])
    unstable = ~np.isfinite(inverse)
    if spectrum[unstable].sum() > UNSTABLE_TAIL * spectrum.sum():
        raise SystemExit(f"{splitting_name} at {h * 1000:g} fs is unstable on frequencies that carry kinetic energy.")
    return float((spectrum[~unstable] * inverse[~unstable]).sum() / spectrum[~unstable].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="datasets of the force field's NVE segments (velocities)")
    parser.add_argument("--splitting", default="T3")
    parser.add_argument("--steps", nargs="+", type=float, default=[4.0, 8.0, 12.0], help="fs")
    parser.add_argument("--rotation-scale", type=float, default=1.0, help="factor on the rotational frequencies")
    parser.add_argument("--output", help="also write the table here (markdown)")
    args = parser.parse_args()
    parts = [motion_spectra(ReferenceDataset.load(path)) for path in args.data]
    omega = parts[0][0]
    if any(len(p[0]) != len(omega) or not np.allclose(p[0], omega) for p in parts):
        raise SystemExit("the datasets' segments differ in length or frame interval; give datasets of one protocol.")
    translation, rotation = sum(p[1] for p in parts), sum(p[2] for p in parts)
    n_molecules = parts[0][3]
    rotation_dof, translation_dof = 3.0 * n_molecules, 3.0 * n_molecules - 3.0  # the system's centre of mass fixed
    mean = {name: float((s * omega).sum() / s.sum()) * WAVENUMBER_PER_RAD_PS * scale
            for name, s, scale in (("rotation", rotation, args.rotation_scale), ("translation", translation, 1.0))}
    lines = [f"Predicted split of rigid water's kinetic temperature under {args.splitting} (modified-energy "
             f"equipartition, linear), from {', '.join(args.data)}"
             + (f", rotational frequencies x {args.rotation_scale:g}" if args.rotation_scale != 1.0 else "")
             + f"; kinetic-energy-weighted mean frequency: rotation "
             f"{mean['rotation']:.0f} cm^-1, translation {mean['translation']:.0f} cm^-1.", "",
             "| step (fs) | rotation T / T (%) | translation T / T (%) | rotation / translation |", "|---|---|---|---|"]
    for step in args.steps:
        h = step / 1000.0
        k_rotation = kinetic_factor(args.splitting, h, args.rotation_scale * omega, rotation)
        k_translation = kinetic_factor(args.splitting, h, omega, translation)
        total = (rotation_dof * k_rotation + translation_dof * k_translation) / (rotation_dof + translation_dof)
        lines.append(f"| {step:g} | {100 * k_rotation / total:.2f} | {100 * k_translation / total:.2f} | "
                     f"{k_rotation / k_translation:.4f} |")
    emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
