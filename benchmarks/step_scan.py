"""Where a classical splitting starts to heat: NVE ensembles at a list of steps from ``actionml evaluate``'s starts,
on the force field, on one with every harmonic bond and angle force constant scaled (``--scales``), and with
``--learned`` on the model's own learned force constants (a tied ``--force-constants`` model, baked into the System
as ``actionml run`` runs it). ``--towards-substeps F`` adds the splittings whose coefficients lie a fraction ``F`` of
the way from the splitting's to as many equal velocity-Verlet substeps as it has evaluations (T3 at 12 fs with
``F = 1`` is Verlet at 4 fs): the step's period is then still ``h``, but the kicks' pattern within it varies less,
so a heating that comes from the period itself (a resonance of the modes the step turns by about half a turn)
should fade as ``F`` grows, and one that comes from the largest substep should not.

For each splitting, step and force field the table gives the stable fraction, the drift (energy measured in the
unscaled force field), each element's temperature over its trajectory's, and, from the linearised step at the
energy minimum (:func:`openmm_actionml.frequency_matching.class_stiffness`), the largest ``h w`` and the modes the
splitting turns by within 0.3 rad of half a turn per step (T3 passes half a turn at ``h w = 2.98``): so a heating
that starts as the fastest modes pass half a turn, and stops when softer force constants keep them below it, would
show here. A second table gives each splitting's bands of linear instability
(:func:`openmm_actionml.linear_stability.unstable_bands`). Each row samples every step of its own (or every
``--sample-interval``), so there is no reference row and no VACF.

Usage::

    python benchmarks/step_scan.py [--model models/alanine-t3-8fs-factors.pt] [--splitting T3]
        [--steps 8.5 9 10 11] [--scales 1] [--learned] [--towards-substeps 0]
        [--trajectories 32] [--time 50] [--sample-interval FS] [--seed 1] [--platform Reference] [--jobs 1]
        [--cache-dir DIR] [--output results/step-scan.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch  # noqa: F401  (before openmm: openmmtorch's plugins need torch's libraries loaded)
import numpy as np
import openmm as mm

from benchmark_log import emit, log
from openmm_actionml.ensemble import EnsembleOptions, EnsembleResult, Starts, equilibrated_starts, \
    resumable_starts, run_ensembles
from openmm_actionml.evaluate import splitting_candidate
from openmm_actionml.examples import build_training_system
from openmm_actionml.force_constant_correction import bakes_into_system, model_factors, with_learned_factors
from openmm_actionml.frequency_matching import ClassStiffness, class_stiffness, harmonic_term_classes, \
    with_scaled_force_constants
from openmm_actionml.linear_stability import LIGHT_SPEED, minimised, phase, unstable_bands
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import equipartition_cell
from openmm_actionml.splitting import Splitting, get_splitting, towards_substeps
from openmm_actionml.systems import topology_elements

#: Distance from half a turn (rad) within which a mode's phase per step is listed.
NEAR_HALF_TURN = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/alanine-t3-8fs-factors.pt",
                        help="any model: its training system is the one scanned")
    parser.add_argument("--splitting", default="T3")
    parser.add_argument("--steps", type=float, nargs="+", default=[8.5, 9.0, 10.0, 11.0], help="fs")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="factors on every harmonic bond and angle force constant (1: the force field)")
    parser.add_argument("--learned", action="store_true",
                        help="also run the model's learned force constants (a tied --force-constants model)")
    parser.add_argument("--towards-substeps", type=float, nargs="+", default=[0.0], metavar="FRACTION",
                        help="splittings moved this fraction of the way to equal Verlet substeps (0: the splitting)")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=50.0, help="ps of NVE per trajectory")
    parser.add_argument("--sample-interval", type=float,
                        help="fs between samples, a multiple of every step (default: each row's step)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the equilibrated starts (evaluate's is 1)")
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--jobs", type=int, default=1, help="rows of a step run at a time, each in its own process")
    parser.add_argument("--cache-dir", help="keep the starts and each finished trajectory here; a rerun resumes")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    if args.learned and not bakes_into_system(model):
        raise SystemExit(f"--learned runs a model's learned force constants; {args.model} is not a tied "
                         "force-constant model (actionml train --force-constants --tied-heads).")
    prepared = build_training_system(model.metadata.recipe)
    system, temperature = prepared.system, model.metadata.temperature
    splittings = [towards_substeps(get_splitting(args.splitting), fraction) for fraction in args.towards_substeps]
    elements = topology_elements(prepared.topology)
    classes = harmonic_term_classes(system, elements)
    stiffness = class_stiffness(system, elements, minimised(system, prepared.positions))
    variants = [ForceConstants(f"x {scale:g}", f"{scale:g}", system if scale == 1.0 else
                               with_scaled_force_constants(system, classes, {c.name: scale for c in classes}),
                               frequencies(stiffness, np.full(len(classes), scale))) for scale in args.scales]
    if args.learned:
        (factors,) = model_factors(model)
        variants.append(ForceConstants("learned", f"learned ({model.path.name})", with_learned_factors(system, model),
                                       frequencies(stiffness, np.array([factors[c.name] for c in classes]))))
    log(f"drawing {args.trajectories} equilibrated starts at {temperature:g} K (or reading them from --cache-dir)")

    def draw() -> Starts:
        return equilibrated_starts(system, prepared.positions, temperature, args.trajectories, platform=args.platform,
                                   seed=args.seed)

    starts = draw() if args.cache_dir is None else resumable_starts(
        Path(args.cache_dir) / f"starts-{args.trajectories}-{temperature:g}K-seed{args.seed}.npz", draw)
    rows = {}
    for step in args.steps:
        h = step / 1000.0
        combinations = [(splitting, variant) for splitting in splittings for variant in variants]
        candidates = [dataclasses.replace(splitting_candidate(f"{splitting.name} {step:g} fs, force constants "
                                                              f"{variant.name}", variant.system, splitting, h),
                                          energy_system=None if variant.system is system else system)
                      for splitting, variant in combinations]
        sample_interval = h if args.sample_interval is None else args.sample_interval / 1000.0
        options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time,
                                  sample_interval=sample_interval, speed_time=sample_interval)  # no speed shown
        results = run_ensembles(candidates, starts, temperature, options, elements, args.platform, log,
                                jobs=args.jobs, cache_dir=args.cache_dir)
        for (splitting, variant), result in zip(combinations, results):
            rows[splitting.name, variant.name, step] = table_row(step, splitting, variant, result)
    lines = [f"# {args.splitting} on {model.metadata.system_name}: {args.trajectories} x {args.time:g} ps NVE at "
             f"{temperature:g} K ({args.platform}, seed {args.seed})", "",
             f"`python benchmarks/step_scan.py {' '.join(sys.argv[1:])}`", "",
             "| splitting | step (fs) | force constants x | stable | drift (kT/DOF/ns) | per-element T / T (%) | "
             f"largest h w | modes within {NEAR_HALF_TURN} rad of half a turn (cm^-1) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [rows[splitting.name, variant.name, step] for splitting in splittings for variant in variants
              for step in args.steps]
    lines += ["", "| splitting | linearly unstable h w, below 2 s (harmonic step) |", "|---|---|"]
    for splitting in splittings:
        bands = ", ".join(f"{start:.4f}-{end:.4f}" for start, end in unstable_bands(splitting))
        lines.append(f"| {splitting.name} | {bands} |")
    emit("\n".join(lines), args.output)


@dataclass
class ForceConstants:
    """One force field a step is scanned on: its row name, table label, System (the force field itself, or a scaled
    copy whose energy the rows measure in the force field) and normal-mode frequencies at the minimum (rad/ps)."""

    name: str
    label: str
    system: mm.System
    omega: np.ndarray


def frequencies(stiffness: ClassStiffness, factors: np.ndarray) -> np.ndarray:
    """The normal-mode frequencies (rad/ps) at the minimum with every class's force constants scaled by ``factors``."""
    return np.sqrt(np.clip(np.linalg.eigvalsh(stiffness.scaled(factors)), 0.0, None))


def table_row(step: float, splitting: Splitting, variant: ForceConstants, result: EnsembleResult) -> str:
    """The table's row of one splitting at one step on one force field, its modes read from the linearised step at
    the minimum."""
    h, omega = step / 1000.0, variant.omega
    near = np.abs(phase(splitting, h * omega) - np.pi) < NEAR_HALF_TURN
    listed = ", ".join(f"{w:.0f}" for w in omega[near] / (2 * np.pi * LIGHT_SPEED)) or "none"
    stable = f"{result.stable}/{result.n_trajectories}" + (
        f" (fail at {result.failure_time:.2g} ps)" if result.stable < result.n_trajectories else "")
    return (f"| {splitting.name} | {step:g} | {variant.label} | {stable} | "
            f"{result.drift:+.3f} ± {result.drift_error:.3f} | "
            f"{equipartition_cell(result)} | {h * omega.max():.2f} | {listed} |")


if __name__ == "__main__":
    main()
