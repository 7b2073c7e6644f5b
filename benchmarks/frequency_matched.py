"""Frequency-matched classical splitting: force constants scaled so that the long step plays the true frequencies.

Fits, for each ``--ridge``, one factor per class of harmonic bond and angle term
(:func:`openmm_actionml.frequency_matching.fit_frequency_match`) at the model's system's energy minimum, so that
the model's splitting at its step plays the force field's frequencies, and writes the factors and the per-mode
errors (``fit.md``, ``fit.png``). Then runs the NVE ensembles of ``actionml evaluate`` from its starts (same seed,
same row names, so ``--cache-dir`` shares trajectories with it): the reference, a "matched" row per ridge (the
splitting on the scaled force field, its energy measured in the unscaled one), the classical splitting, Verlet at
2 fs and at 4 fs with HMR, and with ``--learned`` the model itself. ``results.md`` adds the drift over each half of
the post-burn-in window (as ``drift_origin.py``). With ``--max-phase F`` modes that the exact flow turns further
than ``F pi`` per step are fitted to ``F pi``: slowed, to keep them from half a turn per step.

The match fixes each mode's phase, not its amplitude: ``fit.md`` gives the position variance each fitted mode has
in the step's invariant Gaussian relative to the exact one, and the excess of the mean potential energy this
predicts (``kT / 2`` per mode times the excess ratio), to set beside the table's potential energy at the bath's
temperature.

Phase and amplitude together need one factor per class *and head* (``--two-head RIDGE``): for each fitted exact
mode ``u`` the linearised step's ``u``-block ``[[A, B], [C, D]]`` is fitted to the exact flow's ``[[cos, sin / w],
[-w sin, cos]]`` of ``h w``, and the splitting's kicks of head ``k`` take their harmonic terms from force group
``30 + k`` (:class:`HeadGroupsIntegrator`, an experiment of this benchmark). ``fit.md`` then sets each head's
curvature along the fastest modes beside the learned model's heads (linearised at the same minimum).

A model trained with ``--force-constants`` has its learned factors set beside the fitted ones: as a column of the
tables (one head), or as a section like the two-head fit's (several heads). With ``--learned`` a tied one runs as
``actionml run`` and ``evaluate`` run it, baked into the System
(:func:`~openmm_actionml.integrator.learned_step`): the same step at the classical splitting's cost.

Usage::

    python benchmarks/frequency_matched.py [--model models/alanine-t3-8fs.pt] [--ridge 0.1 0.3] [--max-phase 0.9]
        [--two-head 0.1]
        [--learned] [--trajectories 32] [--time 50] [--seed 1] [--sample-interval FS]
        [--platform Reference] [--jobs 1]
        [--cache-dir DIR] [--output-dir results/frequency-matched]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import numpy as np
import openmm as mm

from drift_origin import half_window_table
from openmm_actionml.atomic import atomic_path
from openmm_actionml.diagnostics import degrees_of_freedom_per_atom
from openmm_actionml.ensemble import Candidate, EnsembleOptions
from openmm_actionml.evaluate import evaluate, standard_candidates
from openmm_actionml.examples import build_training_system
from openmm_actionml.force_constant_correction import KIND as FORCE_CONSTANTS, model_factors
from openmm_actionml.frequency_matching import ClassStiffness, FrequencyMatch, TermClass, along, class_stiffness, \
    fit_frequency_match, fitted_modes, levenberg_marquardt, played_with, with_scaled_force_constants
from openmm_actionml.integrator import SplittingIntegrator
from openmm_actionml.linear_stability import block_phase, force_field_gradient, force_field_hessian, \
    learned_kick_stiffnesses, minimised, step_matrix, vibration_basis
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import save_figure, write_report
from openmm_actionml.splitting import Splitting, get_splitting
from openmm_actionml.systems import constraint_pairs, particle_masses, topology_elements
from openmm_actionml.units import BOLTZMANN

#: Force group of head k's harmonic terms in a two-head System: 30 + k (the groups the harness leaves out of the
#: energy; every row's energy is measured in the unscaled System anyway).
HEAD_GROUP = 30
#: Fastest modes along which the heads' curvatures are compared.
COMPARED_MODES = 12


class HeadGroupsIntegrator(SplittingIntegrator):
    """A classical splitting whose kicks of head ``k`` add the forces of group ``HEAD_GROUP + k`` to the force field
    in groups 0-29 (per-DOF copy ``fh``: an expression may read one force variable)."""

    def __init__(self, splitting: str | Splitting, step: float) -> None:
        super().__init__(splitting, step)
        self.setIntegrationForceGroups(set(range(HEAD_GROUP)))

    def _add_variables(self) -> None:
        self.addPerDofVariable("fh", 0.0)
        super()._add_variables()

    def _add_kick_forces(self, head: int, first: bool, last: bool) -> str:
        self.addComputePerDof("fh", f"f{HEAD_GROUP + head}")
        return "(f + fh)"


def head_system(system: mm.System, classes: list[TermClass], factors: np.ndarray) -> mm.System:
    """``system`` with its harmonic bond and angle forces replaced by one copy per head, scaled by that head's
    factors (``factors[k, c]``) and placed in group ``HEAD_GROUP + k``."""
    harmonic = [index for index, force in enumerate(system.getForces())
                if isinstance(force, (mm.HarmonicBondForce, mm.HarmonicAngleForce))]
    result = copy.deepcopy(system)
    for head, row in enumerate(factors):
        scaled = with_scaled_force_constants(system, classes, {c.name: float(f) for c, f in zip(classes, row)})
        for index in harmonic:
            force = copy.deepcopy(scaled.getForce(index))
            force.setForceGroup(HEAD_GROUP + head)
            result.addForce(force)
    for index in reversed(harmonic):
        result.removeForce(index)
    return result


def mode_blocks(matrix: np.ndarray, modes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``[[A, B], [C, .]]`` entries of a linearised step [2d, 2d] along each mode (columns of ``modes``)."""
    d = len(modes)
    return along(matrix[:d, :d], modes), along(matrix[:d, d:], modes), along(matrix[d:, :d], modes)


def fit_head_factors(stiffness: ClassStiffness, splitting: Splitting, h: float, ridge: float,
                     min_wavenumber: float) -> np.ndarray:
    """Factors [heads, classes] whose linearised step reproduces the exact flow along each mode above
    ``min_wavenumber`` (entries in percent, plus ``100 ridge (s - 1)``; Jacobian by forward differences)."""
    squared, vectors = stiffness.normal_modes
    omega, fitted = fitted_modes(squared, min_wavenumber)
    modes, w = vectors[:, fitted], omega[fitted]
    n = len(stiffness.classes)

    def values(factors: np.ndarray) -> np.ndarray:
        heads = [stiffness.scaled(factors[k * n:(k + 1) * n]) for k in range(splitting.n_heads)]
        a, b, c = mode_blocks(step_matrix(splitting, h, heads), modes)
        x = h * w
        return 100.0 * np.concatenate([a - np.cos(x), w * b - np.sin(x), c / w + np.sin(x), ridge * (factors - 1)])

    def residuals(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = values(factors)
        jacobian = np.stack([(values(factors + 1e-6 * e) - base) / 1e-6 for e in np.eye(len(factors))], axis=1)
        return base, jacobian

    factors, _, _ = levenberg_marquardt(residuals, np.ones(n * splitting.n_heads), max_iterations=200)
    return factors.reshape(splitting.n_heads, n)


def head_curvatures(stiffness: ClassStiffness, heads: list[np.ndarray]) -> list[np.ndarray]:
    """Each head's curvature along the :data:`COMPARED_MODES` fastest exact modes, over the force field's."""
    squared, vectors = stiffness.normal_modes
    modes = vectors[:, -COMPARED_MODES:]
    return [along(head, modes) / squared[-COMPARED_MODES:] for head in heads]


def two_head_report(stiffness: ClassStiffness, splitting: Splitting, h: float, title: str,
                    factors: np.ndarray, learned: list[np.ndarray], min_wavenumber: float) -> str:
    """``fit.md``'s section on factors per class and head (``factors`` [heads, classes], e.g. the two-head fit):
    factors, phase and variance errors, heads beside the model's."""
    squared, vectors = stiffness.normal_modes
    omega, fitted = fitted_modes(squared, min_wavenumber)
    heads = [stiffness.scaled(row) for row in factors]
    matrix = step_matrix(splitting, h, heads)
    a, b, c = mode_blocks(matrix, vectors[:, fitted])
    phase_error = 100.0 * (block_phase(a, b) / (h * omega[fitted]) - 1.0)
    variance = b / -c * omega[fitted] ** 2
    lines = ["", f"## {title}", "",
             "| class | " + " | ".join(f"head {k}" for k in range(len(factors))) + " |",
             "|---|" + "---|" * len(factors)]
    for index, term_class in enumerate(stiffness.classes):
        lines.append(f"| {term_class.name} | " + " | ".join(f"{row[index]:.4f}" for row in factors) + " |")
    lines += ["", f"Along each fitted mode: phase error RMS {np.sqrt(np.mean(phase_error ** 2)):.2f} % (largest "
              f"{np.abs(phase_error).max():.2f} %), position variance over the exact one "
              f"{variance.min():.3f}-{variance.max():.3f}; largest eigenvalue modulus of the step "
              f"{np.abs(np.linalg.eigvals(matrix)).max():.6f}.", "",
              f"Each kick's curvature along the {COMPARED_MODES} fastest exact modes, over the force field's "
              f"(fastest last):", "", "| kicks | curvature ratio |", "|---|---|"]
    rows = [(f"these factors, head {k}", ratio) for k, ratio in enumerate(head_curvatures(stiffness, heads))]
    rows += [(f"learned model, head {k}", ratio) for k, ratio in enumerate(head_curvatures(stiffness, learned))]
    lines += [f"| {name} | {' '.join(f'{value:.3f}' for value in ratio)} |" for name, ratio in rows]
    return "\n".join(lines) + "\n"


def column_label(match: FrequencyMatch) -> str:
    """A fit's column, ``ridge R`` (and ``at most F pi`` for a capped phase), or ``learned`` for factors read from a
    model (:func:`played_with`)."""
    if np.isnan(match.ridge):
        return "learned"
    cap = "" if np.isnan(match.max_phase) else f", at most {match.max_phase / np.pi:g} pi"
    return f"ridge {match.ridge:g}{cap}"


def fit_report(matches: list[FrequencyMatch], temperature: float, command: str) -> str:
    """``fit.md``: the factors by class, then each fitted mode's error and position-variance ratio."""
    kT = BOLTZMANN * temperature
    first = matches[0]
    head = " | ".join(column_label(m) for m in matches)
    lines = [f"# Frequency match of {first.splitting} at {first.step * 1000:g} fs", "", f"`{command}`", "",
             f"Force-constant factor by class (modes above {first.min_wavenumber:g} cm^-1 fitted):", "",
             f"| class | {head} |", "|---|" + "---|" * len(matches)]
    for name in first.scales:
        lines.append(f"| {name} | " + " | ".join(f"{m.scales[name]:.4f}" for m in matches) + " |")
    rms = lambda errors: float(np.sqrt(np.mean(errors ** 2)))
    lines += ["", "| | unscaled | " + head + " |", "|---|---|" + "---|" * len(matches),
              f"| RMS frequency error (%) | {rms(first.error_before):.2f} | "
              + " | ".join(f"{rms(m.error_after):.2f}" for m in matches) + " |",
              f"| largest (%) | {np.abs(first.error_before).max():.2f} | "
              + " | ".join(f"{np.abs(m.error_after).max():.2f}" for m in matches) + " |",
              f"| predicted potential-energy excess, kT/2 per mode times (ratio - 1) (kJ/mol) | "
              f"{0.5 * kT * (first.variance_ratio_before - 1).sum():+.2f} | "
              + " | ".join(f"{0.5 * kT * (m.variance_ratio_after - 1).sum():+.2f}" for m in matches) + " |",
              "", "Per mode: frequency error (%) and position variance over the exact one, unscaled then per column:",
              "", "| mode (cm^-1) | unscaled | " + head + " |", "|---|---|" + "---|" * len(matches)]
    for index in reversed(range(len(first.wavenumbers))):
        cells = [f"{first.error_before[index]:+.2f}, {first.variance_ratio_before[index]:.3f}"]
        cells += [f"{m.error_after[index]:+.2f}, {m.variance_ratio_after[index]:.3f}" for m in matches]
        lines.append(f"| {first.wavenumbers[index]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fit(matches: list[FrequencyMatch], path: Path) -> None:
    """Frequency error and position-variance ratio against the mode's wavenumber, unscaled and per ridge."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    first = matches[0]
    top.plot(first.wavenumbers, first.error_before, "o-", label=f"{first.splitting} unscaled")
    bottom.plot(first.wavenumbers, first.variance_ratio_before, "o-", label=f"{first.splitting} unscaled")
    for match in matches:
        label = "learned factors" if np.isnan(match.ridge) else f"matched, {column_label(match)}"
        top.plot(match.wavenumbers, match.error_after, "s-", label=label)
        bottom.plot(match.wavenumbers, match.variance_ratio_after, "s-", label=label)
    top.axhline(0.0, color="k", lw=0.5)
    bottom.axhline(1.0, color="k", lw=0.5)
    top.set_ylabel("played frequency error (%)")
    bottom.set_ylabel("position variance / exact")
    bottom.set_xlabel("mode (cm$^{-1}$)")
    top.set_title(f"{first.splitting} at {first.step * 1000:g} fs, linearised at the minimum")
    top.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/alanine-t3-8fs.pt",
                        help="scheme-A model whose system, splitting and step to match (and its row, --learned)")
    parser.add_argument("--ridge", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--two-head", type=float, nargs="*", default=[], metavar="RIDGE",
                        help="also fit and run one factor per class and head (phase and amplitude), per ridge")
    parser.add_argument("--min-wavenumber", type=float, default=300.0, help="cm^-1; slower modes are not fitted")
    parser.add_argument("--max-phase", type=float, metavar="FRACTION_OF_PI",
                        help="fit modes turned further per step than this many half turns to it (slowed), e.g. 0.9")
    parser.add_argument("--learned", action="store_true",
                        help="also run the model's learned row (a tied force-constant model baked into the System)")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=50.0, help="ps of NVE per trajectory")
    parser.add_argument("--seed", type=int, default=1, help="seed of the equilibrated starts (evaluate's is 1)")
    parser.add_argument("--sample-interval", type=float, help="fs between samples (default the model's step; a "
                        "common multiple of every row's step, e.g. 20 for a 5 fs model beside Verlet at 2 and 4 fs)")
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at a time, each in its own process")
    parser.add_argument("--cache-dir", help="keep each finished trajectory here; a rerun resumes from them")
    parser.add_argument("--output-dir", default="results/frequency-matched")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    meta = model.metadata
    if meta.scheme != "A":
        raise SystemExit(f"{args.model} is a scheme-{meta.scheme} model; give a scheme-A model (its splitting).")
    prepared = build_training_system(meta.recipe)
    system, h, temperature = prepared.system, meta.step, meta.temperature
    splitting = meta.get_splitting()
    untied = get_splitting(splitting.name)  # the two-head fit's heads, also for a model trained with --tied-heads
    elements = topology_elements(prepared.topology)
    minimum = minimised(system, prepared.positions)
    stiffness = class_stiffness(system, elements, minimum)
    classes = stiffness.classes
    max_phase = None if args.max_phase is None else args.max_phase * np.pi
    matches = [fit_frequency_match(stiffness, splitting, h, ridge=ridge, min_wavenumber=args.min_wavenumber,
                                   max_phase=max_phase) for ridge in args.ridge]
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/frequency_matched.py " + " ".join(sys.argv[1:])
    learned_factors = model_factors(model) if meta.network.get("kind") == FORCE_CONSTANTS else []
    columns = matches + ([played_with(stiffness, splitting, h, learned_factors[0], args.min_wavenumber)]
                         if len(learned_factors) == 1 else [])
    report = fit_report(columns, temperature, command)
    if len(learned_factors) > 1:
        report += two_head_report(stiffness, splitting, h, f"Learned factors of {model.path.name}, per class and head",
                                  np.array([[head[c.name] for c in classes] for head in learned_factors]), [],
                                  args.min_wavenumber)
    head_factors = []
    if args.two_head:
        masses = particle_masses(system)
        learned = learned_kick_stiffnesses(model, system, minimum, masses, vibration_basis(system, minimum, masses),
                                           force_field_gradient(system, minimum),
                                           force_field_hessian(system, minimum)) if meta.anchored else []
        for ridge in args.two_head:
            head_factors.append(fit_head_factors(stiffness, untied, h, ridge, args.min_wavenumber))
            report += two_head_report(stiffness, untied, h, f"Two heads (ridge {ridge:g}): phase and amplitude",
                                      head_factors[-1], learned, args.min_wavenumber)
    with atomic_path(output / "fit.md", overwrite=True) as tmp:
        tmp.write_text(report)
    with atomic_path(output / "fit.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"matches": [match.to_dict() for match in matches], "learned": learned_factors,
                                   "two_head": [{"ridge": ridge, "factors": {c.name: factors[:, i].tolist()
                                                                             for i, c in enumerate(classes)}}
                                                for ridge, factors in zip(args.two_head, head_factors)]}, indent=1))
    plot_fit(columns, output / "fit.png")
    print((output / "fit.md").read_text(), flush=True)

    rows = [row for row in standard_candidates(prepared, model)
            if "(the learned step)" not in row.name and (args.learned or "learned" not in row.name)]
    for offset, match in enumerate(matches):
        rows.insert(1 + offset, Candidate(
            f"{splitting.name} matched ({column_label(match)}) {h * 1000:g} fs", h,
            with_scaled_force_constants(system, classes, match.scales),
            lambda: SplittingIntegrator(splitting, h), energy_system=system))
    for offset, (ridge, factors) in enumerate(zip(args.two_head, head_factors)):
        rows.insert(1 + len(matches) + offset, Candidate(
            f"{splitting.name} two-head matched (ridge {ridge:g}) {h * 1000:g} fs", h,
            head_system(system, classes, factors), lambda: HeadGroupsIntegrator(untied, h), energy_system=system))
    sample_interval = h if args.sample_interval is None else args.sample_interval / 1000.0
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=sample_interval,
                              correlation_time=min(EnsembleOptions.correlation_time, args.time / 2))
    results = evaluate(prepared, model, options, rows, platform=args.platform, seed=args.seed,
                       progress=lambda message: print(message, file=sys.stderr, flush=True), jobs=args.jobs,
                       cache_dir=args.cache_dir)
    title = (f"{splitting.name} with force constants matched to {h * 1000:g} fs: {args.trajectories} x "
             f"{args.time:g} ps NVE at {temperature:g} K ({args.platform}, seed {args.seed})")
    n_dof = float(degrees_of_freedom_per_atom(particle_masses(system), constraint_pairs(system), remove_com=True).sum())
    notes = f"`{command}`\n\n" + "\n".join(half_window_table(results, n_dof, temperature, options.burn_in))
    table, _ = write_report(results, output, title, {"model": str(model.path), "ridges": args.ridge,
                                                      "seed": args.seed, "command": command}, notes)
    print(f"# {title}\n\n{table}\n\n{notes}")


if __name__ == "__main__":
    main()
