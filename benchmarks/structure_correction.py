"""Correct a surrogate's liquid structure with pair potentials fitted by iterative Boltzmann inversion.

A baseline or pure-ML model samples its kick potential W's ensemble, and on AMOEBA water every surrogate tried so
far samples a less structured liquid than AMOEBA's (docs/frontier.md, goal 3). This experiment adds a smooth pair
term U(r) for each element pair of ``--pairs`` (default O-O; intramolecular constrained pairs left out) to every
head of the model (:mod:`openmm_actionml.pair_correction`) and fits them in rounds:

1. sample the current model's own Langevin ensemble (its integrator with a thermostat, 1/ps) from ``--starts``:
   ``--trajectories`` runs of ``--time`` ps after ``--burn-in`` ps, a frame every ``--sample-interval`` fs, on
   ``--jobs`` processes;
2. measure g(r) of every element pair (O-O, O-H, H-H) on those frames, against the force field's own g(r)
   from ``--target-data`` (datasets of its NVE segments, e.g. the training data; not the reference ensemble the
   model is judged against), or with ``--target-at-temperature`` that g(r) read at the data's temperature (NVE
   segments each have their own; see ``rdf_spread.py``);
3. update each U by ``--damping`` kT ln(g_model / g_target) where both exceed 0.05, and refit its cubic spline
   (knots ``--spacing`` apart, from ``--inner-knots`` knots inside the target's first populated radius to
   ``--cutoff``; ridge ``--ridge``) with weights g_target r^2. With ``--inner-knots 0`` U and its first two
   derivatives vanish at the first populated radius: the fit sets no U where it has no data.

Each round's model is ``OUT-i1.pt``, ...; ``OUT.md`` tables the deviation of each pair's g(r) from the target (RMS
over bins, with its statistical floor) per round, and ``OUT.png`` plots each fitted pair's g(r) less the target's,
and U. The pairs not fitted test whether the terms move the liquid's structure or only the fitted curves. Judge the
models with ``amoeba_water.py --thermalise``, as every surrogate.

The sampling runs take the starts' masses (:meth:`~openmm_actionml.modelfile.ActionMLModel.on_masses`), and the
rounds' models carry them: starts from ``amoeba_water.py --water-hydrogen-mass`` fit the terms for heavier water
hydrogens, whose long step samples a configurational ensemble nearer the force field's own.

Fitting two pairs at once, both updates move the same first shell, so a round can overshoot. If g - g_target
changes sign from round to round (``OUT.png``) and its RMS grows by a factor a, the update's gain is about (1 + a)
/ damping, and a damping of damping / (1 + a) would remove the deviation in one round: on a model whose g(O-O) was
3.8 floors off, 0.7 gave a of about 1.3 and 0.3 converged in one round.

Usage::

    python benchmarks/structure_correction.py MODEL --target-data D1.npz [D2.npz ...] --starts STARTS.npz
        [--pairs O-O [O-H]] [--rounds 4] [--trajectories 16] [--time 10] [--burn-in 2] [--sample-interval 48]
        [--jobs 2] [--damping 0.7] [--spacing 0.03] [--inner-knots 2] [--cutoff 0.6] [--ridge 1e-3]
        [--platform CPU] [--target-at-temperature]
        --output OUT.pt
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import numpy as np
import openmm as mm
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmark_log import log  # noqa: E402
from rdf_spread import Thermometer, dataset_sample, segment_curves  # noqa: E402
from refine_on_own_samples import add_sampling_arguments, own_samples  # noqa: E402
from openmm_actionml.atomic import atomic_path  # noqa: E402
from openmm_actionml.dataset import ReferenceDataset  # noqa: E402
from openmm_actionml.diagnostics import RadialDistribution  # noqa: E402
from openmm_actionml.ensemble import curve_mean_error, read_starts  # noqa: E402
from openmm_actionml.modelfile import load_model  # noqa: E402
from openmm_actionml.pair_correction import (PairPotential, fit_coefficients, inversion_target,  # noqa: E402
                                             with_pair_correction)
from openmm_actionml.report import curve_deviation, save_figure  # noqa: E402
from openmm_actionml.training import baseline_system  # noqa: E402
from openmm_actionml.units import BOLTZMANN  # noqa: E402

#: Every frame-th frame of the target data's segments enters its g(r).
TARGET_STRIDE = 10
#: g below this is too sparse to invert.
TRUSTED_G = 0.05
STARTS_REMEDY = "give a starts file written by amoeba_water.py."
#: nm within which pairs are bonded within a molecule (rigid water's O-H 0.1 nm, H-H 0.15 nm): never fitted.
INTRAMOLECULAR_RANGE = 0.16


def sample_share(model_path: str, kick_xml: str, temperature: float, starts_path: str, first: int,
                 args: argparse.Namespace, seed: int) -> np.ndarray:
    """:func:`own_samples` in a worker process: ``[runs, frames, N, 3]`` positions (nm)."""
    torch.set_num_threads(1)
    starts = read_starts(starts_path, STARTS_REMEDY)
    frames = own_samples(load_model(model_path).on_masses(starts.masses), mm.XmlSerializer.deserialize(kick_xml),
                         temperature, starts, first, args, seed)
    return frames.reshape(args.trajectories, -1, *frames.shape[1:])


def sample(model_path: Path, kick_xml: str, temperature: float, args: argparse.Namespace, round_index: int
           ) -> np.ndarray:
    """The round's own frames, ``[trajectories, frames, N, 3]``, from ``args.jobs`` processes."""
    shares = np.array_split(np.arange(args.trajectories), args.jobs)
    # Seeds from 1: OpenMM draws a fresh random seed for 0, so a run would not repeat.
    tasks = [(str(model_path), kick_xml, temperature, args.starts, int(share[0]) + round_index * args.trajectories,
              argparse.Namespace(**{**vars(args), "trajectories": len(share)}), 1000 * round_index + k + 1)
             for k, share in enumerate(shares) if len(share)]
    with multiprocessing.get_context("spawn").Pool(len(tasks)) as pool:
        return np.concatenate(pool.starmap(sample_share, tasks))


def radial_curves(rdf: RadialDistribution, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g(r) averaged over ``runs [R, M, N, 3]`` and its standard error over the runs."""
    return curve_mean_error(segment_curves(rdf, runs), len(rdf.radii))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--target-data", nargs="+", required=True, help="datasets of the force field's own ensemble")
    parser.add_argument("--starts", required=True, help="starts file of the sampling runs")
    parser.add_argument("--pairs", nargs="+", default=["O-O"], help="element pairs to correct")
    parser.add_argument("--rounds", type=int, default=4)
    add_sampling_arguments(parser, trajectories=16, sample_interval=48.0)
    parser.add_argument("--jobs", type=int, default=2, help="sampling processes (one thread each)")
    parser.add_argument("--damping", type=float, default=0.7, help="fraction of kT ln(g / g_target) applied")
    parser.add_argument("--spacing", type=float, default=0.03, help="nm between U's spline knots")
    parser.add_argument("--inner-knots", type=int, default=2,
                        help="knots of U inside the target's first populated radius (0: U is zero there)")
    parser.add_argument("--cutoff", type=float, default=0.6, help="U's cutoff, nm (at most the network's)")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge penalty of the fit, per kJ/mol squared")
    parser.add_argument("--target-at-temperature", action="store_true",
                        help="read the target g(r) at the data's temperature (per bin, the line of g against the "
                        "segments' kinetic temperatures), not as the segments' mean")
    parser.add_argument("--output", required=True, help="OUT.pt: the rounds' models are OUT-i1.pt, ...")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.target_data])
    masses = read_starts(args.starts, STARTS_REMEDY).masses
    model = load_model(args.model).on_masses(masses)
    system = data.system()
    kick_system = mm.XmlSerializer.clone(baseline_system(data, system, model.metadata.baseline)
                                         if model.metadata.baseline else system)
    for index, mass in enumerate(masses):  # the sampling's; the data's System keeps the data's (its thermometer)
        kick_system.setParticleMass(index, float(mass))
    model.validate(kick_system)
    kick_xml = mm.XmlSerializer.serialize(kick_system)
    kT = BOLTZMANN * data.temperature
    elements = list(model.metadata.elements)
    labels = list(args.pairs) + [p for p in ("O-O", "O-H", "H-H")
                                 if p not in args.pairs and set(p.split("-")) <= set(elements)]
    rdfs = {label: RadialDistribution.of_elements(label, elements, data.box) for label in labels}
    if args.target_at_temperature:
        thermometer = Thermometer(system)
        targets = {label: dataset_sample(rdf, thermometer, data.positions[:, ::TARGET_STRIDE],
                                         data.velocities[:, ::TARGET_STRIDE]).at(data.temperature)
                   for label, rdf in rdfs.items()}
    else:
        targets = {label: radial_curves(rdf, data.positions[:, ::TARGET_STRIDE]) for label, rdf in rdfs.items()}
    terms = {}  # per fitted pair: its spline start and intervals, and free coefficients
    for pair in args.pairs:
        radii, g_target = rdfs[pair].radii, targets[pair][0]
        intermolecular = radii > INTRAMOLECULAR_RANGE
        first_populated = radii[intermolecular][np.argmax(g_target[intermolecular] > TRUSTED_G)]
        start = first_populated - args.inner_knots * args.spacing
        n_intervals = int(round((args.cutoff - start) / args.spacing))
        terms[pair] = {"start": float(start), "n_intervals": n_intervals, "coefficients": np.zeros(n_intervals - 3)}

    def potential(pair: str) -> PairPotential:
        term = terms[pair]
        return PairPotential(term["start"], args.cutoff, term["coefficients"])

    def on_radii(pair: str) -> np.ndarray:
        with torch.no_grad():
            return potential(pair)(torch.as_tensor(rdfs[pair].radii)).numpy()

    stem = Path(args.output).with_suffix("")
    rows, curves, potentials = [], [], []
    current = model.path
    for round_index in range(args.rounds + 1):
        log(f"round {round_index}: sampling {args.trajectories} x {args.time:g} ps of {current.name}")
        runs = sample(current, kick_xml, data.temperature, args, round_index)
        measured = {label: radial_curves(rdf, runs) for label, rdf in rdfs.items()}
        rows.append({label: curve_deviation(*measured[label], *targets[label]) for label in labels})
        curves.append({pair: measured[pair][0] for pair in args.pairs})
        log(f"round {round_index}: {runs.shape[0] * runs.shape[1]} frames; deviation from the target (floor) "
            + ", ".join(f"g({label}) {d:.4f} ({f:.4f})" for label, (d, f) in rows[-1].items()))
        if round_index == args.rounds:
            break
        recipe = {"command": " ".join(sys.argv), "from": model.path.name, "round": round_index + 1, "terms": {}}
        after = {}  # each term's U on its radii after this round's update
        for pair, term in terms.items():
            radii, g_target = rdfs[pair].radii, targets[pair][0]
            now = on_radii(pair)
            target, trusted = inversion_target(radii, now, measured[pair][0], g_target, kT, args.damping,
                                               TRUSTED_G)
            trusted &= radii > INTRAMOLECULAR_RANGE
            term["coefficients"] = fit_coefficients(radii, target, np.where(trusted, g_target * radii ** 2, 0.0),
                                                    term["start"], args.cutoff, term["n_intervals"], args.ridge)
            recipe["terms"][pair] = {"start": term["start"], "cutoff": args.cutoff,
                                     "coefficients": term["coefficients"].tolist()}
            after[pair] = on_radii(pair)
            log(f"round {round_index}: U({pair}) from {now[trusted].min():+.3f}..{now[trusted].max():+.3f} to "
                f"{after[pair][trusted].min():+.3f}..{after[pair][trusted].max():+.3f} kJ/mol over the trusted radii")
        potentials.append(after)
        current = with_pair_correction(model, {pair: potential(pair) for pair in terms},
                                       f"{stem}-i{round_index + 1}.pt", recipe, overwrite=True)
        log(f"round {round_index}: wrote {current.name}")
    write_report(stem, args, rows, rdfs, targets, curves, potentials)


def write_report(stem: Path, args: argparse.Namespace, rows: list[dict], rdfs: dict, targets: dict,
                 curves: list[dict], potentials: list[dict]) -> None:
    """``stem.md`` (deviations per round) and ``stem.png`` (each fitted pair's g(r) less the target's, and U, per
    round)."""
    labels = list(rows[0])
    lines = [f"Structure correction of {Path(args.model).name} ({', '.join(args.pairs)}); deviation of each g(r) "
             f"from the target data's, RMS over bins (statistical floor)", "",
             "| round | " + " | ".join(f"g({label})" for label in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for index, row in enumerate(rows):
        lines.append(f"| {index} | " + " | ".join(f"{d:.4f} ({f:.4f})" for d, f in row.values()) + " |")
    with atomic_path(stem.with_suffix(".md"), overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    figure, axes = plt.subplots(2, len(args.pairs), figsize=(6 * len(args.pairs), 7), sharex="col", squeeze=False)
    for column, pair in enumerate(args.pairs):
        top, bottom = axes[0, column], axes[1, column]
        radii = rdfs[pair].radii
        g_target, g_error = targets[pair]
        top.fill_between(radii, -g_error, g_error, color="grey", alpha=0.4, label="target's standard error")
        for index, curve in enumerate(curves):
            top.plot(radii, curve[pair] - g_target, lw=1, label=f"round {index}")
        for index, potential in enumerate(potentials):
            bottom.plot(radii, potential[pair], lw=1, label=f"U after round {index}")
        top.set_ylabel(f"g({pair}) - target")
        top.legend(fontsize=8)
        bottom.set_ylabel(f"U({pair}) (kJ/mol)")
        bottom.set_xlabel("r (nm)")
        bottom.legend(fontsize=8)
        top.set_xlim(INTRAMOLECULAR_RANGE, radii[-1])
    save_figure(figure, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
