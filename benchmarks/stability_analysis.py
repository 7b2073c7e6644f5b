"""The linearised step: which vibrations limit each splitting's step, and how learning changes their frequencies.

At the model's system's energy minimum (see :mod:`openmm_actionml.linear_stability`): the stability interval of
each splitting and the step it allows for the fastest vibration; then, for the ten fastest modes, the frequency
that Verlet (usual steps), HMR at 4 fs (with constraints), the model's splitting classical and learned at its step,
and the classical splitting at 1.5 and 2 times that step play, relative to the exact one.

Writes ``stability.md`` and ``stability.png`` (relative frequency error against mode frequency) to --output-dir.

Usage::

    python benchmarks/stability_analysis.py [--model models/alanine-t3-8fs.pt] [--output-dir results/stability]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import openmm as mm

from openmm_actionml.atomic import atomic_path
from openmm_actionml.evaluate import HMR_HYDROGEN_MASS, HMR_STEP
from openmm_actionml.examples import build_training_system
from openmm_actionml.linear_stability import (
    LIGHT_SPEED,
    constraint_curvature,
    force_field_gradient,
    force_field_hessian,
    learned_kick_stiffnesses,
    minimised,
    played_frequencies,
    projected,
    stability_interval,
    step_matrix,
    vibration_basis,
)
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import save_figure
from openmm_actionml.splitting import SPLITTINGS
from openmm_actionml.systems import particle_masses, with_hydrogen_mass

def mode_labels(topology, basis: np.ndarray, vectors: np.ndarray) -> list[str]:
    """The two atoms with the largest mass-weighted amplitude (kinetic-energy share) in each mode, e.g. ``C5-O6``."""
    names = [f"{atom.element.symbol}{atom.index}" for atom in topology.atoms()]
    labels = []
    for vector in vectors.T:
        amplitude = np.linalg.norm((basis @ vector).reshape(-1, 3), axis=1)
        first, second = np.argsort(amplitude)[::-1][:2]
        labels.append(f"{names[first]}-{names[second]}")
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/alanine-t3-8fs.pt")
    parser.add_argument("--output-dir", default="results/stability")
    args = parser.parse_args()
    model = load_model(args.model)
    prepared = build_training_system(model.metadata.recipe)
    system, h_model = prepared.system, model.metadata.step
    positions = minimised(system, prepared.positions)
    masses = particle_masses(system)
    basis = vibration_basis(system, positions, masses)
    gradient = force_field_gradient(system, positions)
    raw_hessian = force_field_hessian(system, positions)
    hessian = raw_hessian - constraint_curvature(system, positions, gradient)
    stiffness = projected(hessian, masses, basis)
    squared, vectors = np.linalg.eigh(stiffness)
    omega = np.sqrt(np.clip(squared, 0.0, None))
    labels = mode_labels(prepared.topology, basis, vectors)

    learned = learned_kick_stiffnesses(model, system, positions, masses, basis, gradient, raw_hessian)
    splitting = model.metadata.get_splitting()
    classical = [stiffness] * splitting.n_heads
    # The rows of actionml evaluate: Verlet at its usual steps, HMR at 4 fs with constraints; then the model.
    if system.getNumConstraints():
        hmr_system = with_hydrogen_mass(system, prepared.topology, HMR_HYDROGEN_MASS)
        hmr_masses = particle_masses(hmr_system)
        hmr_stiffness = projected(hessian, hmr_masses, vibration_basis(hmr_system, positions, hmr_masses))
        rows = [("Verlet", SPLITTINGS["VV"], 0.002, [stiffness]),
                (f"Verlet + HMR {HMR_HYDROGEN_MASS:g} amu", SPLITTINGS["VV"], HMR_STEP, [hmr_stiffness])]
    else:
        rows = [("Verlet", SPLITTINGS["VV"], h, [stiffness]) for h in (0.0005, 0.001)]
    rows += [(f"{splitting.name} classical", splitting, h_model, classical),
             (f"{splitting.name} learned", splitting, h_model, learned)]
    rows += [(f"{splitting.name} classical", splitting, factor * h_model, classical) for factor in (1.5, 2.0)]
    exact = np.sort(omega)
    lines = [f"# The linearised step of {Path(args.model).name}'s system at its minimum",
             "", f"`python benchmarks/stability_analysis.py --model {args.model} --output-dir {args.output_dir}`", "",
             "Stability intervals (largest stable h*omega of the harmonic oscillator) and the step they allow for "
             f"this system's fastest vibration, {exact[-1] / (2 * np.pi * LIGHT_SPEED):.0f} cm^-1 "
             f"({labels[int(np.argmax(omega))]}):", "",
             "| splitting | evaluations/step | stability interval h*omega | largest stable h (fs) "
             "| per evaluation (fs) |",
             "|---|---|---|---|---|"]
    for name, splitting in SPLITTINGS.items():
        interval = stability_interval(splitting)
        largest = interval / exact[-1] * 1000
        lines.append(f"| {name} | {splitting.evaluations_per_step} | {interval:.3f} | {largest:.1f} | "
                     f"{largest / splitting.evaluations_per_step:.1f} |")
    lines += ["", "Frequency each integrator plays for the fastest modes, relative to the exact one (true masses), "
              "in %, mode by mode in order of frequency; 'unstable' where the step's eigenvalues leave the unit "
              "circle:", ""]
    lines += ["| mode | exact (cm^-1) | " + " | ".join(f"{name} {h * 1000:g} fs" for name, _, h, _ in rows) + " |",
              "|" + "---|" * (len(rows) + 2)]
    errors = [played_frequencies(splitting, h, kicks)[-len(exact):] / exact - 1.0 for _, splitting, h, kicks in rows]
    order = np.argsort(omega)
    for rank in range(1, 11):
        index = order[-rank]
        cells = ["unstable" if np.isnan(error[-rank]) else f"{100 * error[-rank]:+.2f}" for error in errors]
        lines.append(f"| {labels[index]} | {omega[index] / (2 * np.pi * LIGHT_SPEED):.0f} | " + " | ".join(cells)
                     + " |")
    moduli = [np.abs(np.linalg.eigvals(step_matrix(splitting, h, kicks))).max() for _, splitting, h, kicks in rows]
    lines += ["", "Largest eigenvalue modulus of each linearised step (1 when every mode is stable): "
              + ", ".join(f"{name} {h * 1000:g} fs {m:.4g}" for (name, _, h, _), m in zip(rows, moduli)) + "."]
    if system.getNumConstraints():
        lines += reach(system, prepared.topology, positions, hessian, (HMR_HYDROGEN_MASS, 3.0))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / "stability.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plot(exact, errors, rows, output / "stability.png")
    print("\n".join(lines))


def reach(system: mm.System, topology, positions: np.ndarray, hessian: np.ndarray,
          hydrogen_masses: tuple[float, ...]) -> list[str]:
    """Markdown lines: the fastest vibration with true and repartitioned hydrogen masses, and the largest linearly
    stable step it allows each splitting, beside the bound of any three-evaluation scheme (h omega < 6)."""
    lines = ["", "Reach: the fastest vibration with hydrogen-mass repartitioning, and the largest linearly stable "
             "step (fs) it allows. No palindromic scheme of s force evaluations is stable beyond h omega = 2 s "
             "(s Verlet steps of h / s reach it), so the last column bounds every three-evaluation scheme, "
             "learned corrections aside:", "",
             "| hydrogen mass (amu) | fastest vibration (cm^-1) | " + " | ".join(SPLITTINGS) +
             " | any 3-evaluation scheme |", "|" + "---|" * (len(SPLITTINGS) + 3)]
    for mass in (None, *hydrogen_masses):
        variant = system if mass is None else with_hydrogen_mass(system, topology, mass)
        masses = particle_masses(variant)
        basis = vibration_basis(variant, positions, masses)
        squared, vectors = np.linalg.eigh(projected(hessian, masses, basis))
        fastest = float(np.sqrt(squared[-1]))
        label = mode_labels(topology, basis, vectors[:, -1:])[0]
        steps = [stability_interval(splitting) / fastest * 1000 for splitting in SPLITTINGS.values()]
        lines.append(f"| {'true' if mass is None else f'{mass:g}'} | {fastest / (2 * np.pi * LIGHT_SPEED):.0f} "
                     f"({label}) | " + " | ".join(f"{step:.1f}" for step in steps) + f" | {6 / fastest * 1000:.1f} |")
    return lines


def _plot(exact: np.ndarray, errors: list[np.ndarray], rows: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4.5))
    wavenumbers = exact / (2 * np.pi * LIGHT_SPEED)
    for error, (name, _, h, _) in zip(errors, rows):
        finite = np.isfinite(error) & (np.abs(error) > 0)
        axis.semilogy(wavenumbers[finite], np.abs(error[finite]) * 100, ".", label=f"{name} {h * 1000:g} fs")
    axis.set_xlabel("exact mode frequency (cm$^{-1}$)")
    axis.set_ylabel("|played / exact frequency - 1| (%)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


if __name__ == "__main__":
    main()
