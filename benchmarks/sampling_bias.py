"""How far a long step's thermostatted ensemble is from the potential's, linearised, on rigid AMOEBA water.

A stable palindromic step conserves a modified quadratic energy of its own, and under a thermostat holding the
on-step velocities at kT each harmonic mode's positions spread wider or narrower than Boltzmann's by
:func:`~openmm_actionml.linear_stability.sampled_variance_ratio` of ``h w``. Summed over the normal modes at an
inherent structure (an AMOEBA minimum reached from an equilibrated start) this gives the excess mean potential
energy, ``kT / 2 sum (ratio - 1)``, that the step alone puts into the liquid: the linear part of what
``amoeba_water.py --thermalise`` measures as "AMOEBA U at 300 K" against the reference. A learned position-only
correction in the kicks can trade the frequencies the step plays against this spread but not fix both, so the ratio
tells which splitting and step a surrogate can use for structure.

Writes ``sampling_bias.md`` and ``sampling_bias.png`` (the ratio against wavenumber, over the box's spectrum) to
--output-dir.

Usage::

    python benchmarks/sampling_bias.py [--starts STARTS.npz] [--steps T3:12 S2:12 VV:6 ...] [--output-dir DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from amoeba_water import TEMPERATURE, amoeba_water
from openmm_actionml.atomic import atomic_path
from openmm_actionml.ensemble import read_starts
from openmm_actionml.linear_stability import (LIGHT_SPEED, constrained_stiffness, minimised, sampled_variance_ratio,
                                              vibration_basis)
from openmm_actionml.report import save_figure
from openmm_actionml.splitting import SPLITTINGS
from openmm_actionml.systems import particle_masses
from openmm_actionml.units import BOLTZMANN


def parse_steps(texts: list[str]) -> list[tuple[str, float]]:
    """``["T3:12", "VV:6"]`` -> ``[("T3", 0.012), ("VV", 0.006)]`` (splitting name, step in ps)."""
    steps = []
    for text in texts:
        name, _, femtoseconds = text.partition(":")
        if name not in SPLITTINGS or not femtoseconds:
            raise SystemExit(f"--steps takes SPLITTING:FS with SPLITTING one of {', '.join(SPLITTINGS)}; got {text!r}")
        steps.append((name, float(femtoseconds) / 1000.0))
    return steps


def mode_frequencies(system, positions: np.ndarray) -> np.ndarray:
    """The angular frequencies (rad/ps, ascending) of the constrained, mass-weighted Hessian at ``positions``;
    negative values stand for imaginary frequencies."""
    masses = particle_masses(system)
    eigenvalues = np.linalg.eigvalsh(constrained_stiffness(system, positions, masses,
                                                           vibration_basis(system, positions, masses)))
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--cutoff", type=float, default=0.6, help="nm")
    parser.add_argument("--starts", help="a starts file of amoeba_water.py's cache; its first state is minimised "
                        "(default: the built box)")
    parser.add_argument("--steps", nargs="+", default=["T3:8", "T3:12", "T3:16", "S2:10", "S2:12", "VV:4", "VV:5",
                                                       "VV:6"], help="SPLITTING:FS")
    parser.add_argument("--output-dir", default="results/sampling-bias")
    args = parser.parse_args()
    steps = parse_steps(args.steps)
    prepared = amoeba_water(args.waters, args.cutoff)
    positions = (read_starts(args.starts, "give a starts file of amoeba_water.py's --cache-dir").positions[0]
                 if args.starts else prepared.positions)
    minimum = minimised(prepared.system, positions)
    omega = mode_frequencies(prepared.system, minimum)
    real = omega[omega > 0]
    kt = BOLTZMANN * TEMPERATURE
    lines = [f"# Linearised sampling bias of long steps on {args.waters} rigid AMOEBA waters", "",
             f"`python benchmarks/sampling_bias.py {'--starts ' + args.starts + ' ' if args.starts else ''}"
             f"--steps {' '.join(args.steps)}`", "",
             f"{len(omega)} modes at the minimum ({len(omega) - len(real)} imaginary, left out); fastest "
             f"{real[-1] / (2 * np.pi * LIGHT_SPEED):.0f} cm^-1 ({real[-1]:.0f} rad/ps); kT at {TEMPERATURE:g} K.", "",
             "| splitting | h (fs) | evaluations/fs | largest h w | unstable modes | ratio at the fastest mode | excess U, "
             "kT/2 sum (ratio - 1) (kJ/mol) |", "|---|---|---|---|---|---|---|"]
    curves = []
    for name, h in steps:
        splitting = SPLITTINGS[name]
        ratios = np.array([sampled_variance_ratio(splitting, h * w) for w in real])
        stable = ~np.isnan(ratios)
        excess = 0.5 * kt * (ratios[stable] - 1.0).sum()
        lines.append(f"| {name} | {h * 1000:g} | {splitting.evaluations_per_step / (h * 1000):.3g} | "
                     f"{h * real[-1]:.2f} | {(~stable).sum()} | {ratios[-1]:.3f} | "
                     f"{excess:+.1f}{'' if stable.all() else ' (stable modes only)'} |")
        curves.append((f"{name} {h * 1000:g} fs", ratios))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / "sampling_bias.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot(real, curves, output / "sampling_bias.png")
    print("\n".join(lines))


def _plot(omega: np.ndarray, curves: list[tuple[str, np.ndarray]], path: Path) -> None:
    """The sampled position-variance ratio of each step against the modes' wavenumbers."""
    import matplotlib.pyplot as plt

    wavenumber = omega / (2 * np.pi * LIGHT_SPEED)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    for label, ratios in curves:
        top.plot(wavenumber, ratios, label=label)
    top.axhline(1.0, color="black", linewidth=0.5)
    top.set_ylim(0.8, 1.6)
    top.set_ylabel("sampled / Boltzmann position variance")
    top.legend(fontsize=8)
    bottom.hist(wavenumber, bins=60)
    bottom.set_xlabel("mode wavenumber (cm$^{-1}$)")
    bottom.set_ylabel("modes")
    save_figure(figure, path)


if __name__ == "__main__":
    main()
