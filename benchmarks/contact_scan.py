"""Goal 3 of issue 6: how each surrogate rates waters pressed closer than AMOEBA's liquid brings them.

``runaway_onset.py`` found a runaway starting where waters reach O-O distances of 0.23 nm, closer than any frame of
the reference data, and the surrogate's kick potential W missing AMOEBA's rise there. This presses molecules together
rigidly and measures the energy each model's kick potential W, AMOEBA's U and the first baseline's V alone assign,
from its value at the first of ``--distances`` (the mean O-O distance of the pressed molecules):

- with ``--data``: in evenly spaced frames of reference datasets, the closest O-O pair, each molecule moved by half
  along the O-O axis (is there a hole for a pressed pair in general?);
- with ``--capture``: the ``--molecules`` of a ``runaway_onset.py`` capture at its sample nearest ``--at``, moved
  towards or away from their oxygens' centroid by one factor (the cluster a runaway formed, taken apart).

A model that follows AMOEBA's wall rises as U does; the gap U - W at the shortest distances is a hole a trajectory
can fall into.

Usage::

    python benchmarks/contact_scan.py MODEL.pt [MODEL.pt ...] --data D.npz [D.npz ...] [--frames 40]
        [--distances 0.26 0.25 0.24 0.23 0.22] [--output-dir DIR]
    python benchmarks/contact_scan.py MODEL.pt [MODEL.pt ...] --capture runaway-START.npz --at PS
        --molecules I J [K ...] [--distances ...] [--output-dir DIR]
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Sequence

import torch

import numpy as np

from amoeba_water import amoeba_water
from benchmark_log import emit, log
from openmm_actionml.atomic import read_arrays
from openmm_actionml.diagnostics import rigid_triatomics
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import save_figure
from openmm_actionml.systems import PreparedSystem, constraint_pairs, default_box
from runaway_onset import FrameEnergies, closest_contacts, molecule_numbers


def oxygens_and_molecules(prepared: PreparedSystem) -> tuple[np.ndarray, np.ndarray]:
    """The rigid waters' atoms ``[M, 3]`` and each one's oxygen ``[M]``."""
    molecules = rigid_triatomics(constraint_pairs(prepared.system))
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    return molecules, np.array([next(a for a in atoms if elements[a] == "O") for atoms in molecules])


def spaced_frames(prepared: PreparedSystem, paths: Sequence[str], count: int) -> np.ndarray:
    """``count`` evenly spaced frames ``[count, N, 3]`` (nm) of the datasets of ``prepared``'s box at ``paths``,
    taken together."""
    positions = np.concatenate([read_arrays(path, ("positions",), "dataset", "give a dataset of this box")[
        "positions"].reshape(-1, prepared.system.getNumParticles(), 3) for path in paths])
    if count > len(positions):
        raise SystemExit(f"asked for {count} frames; the datasets hold {len(positions)}.")
    return positions[np.linspace(0, len(positions) - 1, count).round().astype(int)]


def group_oxygens(frame: np.ndarray, group: Sequence[int], oxygens: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``[K, 3]``: the oxygens of the molecules of ``group`` in one periodic image (the first one's)."""
    first = frame[oxygens[group[0]]]
    offsets = frame[oxygens[group]] - first
    return first + offsets - box * np.round(offsets / box)


def mean_pair_distance(points: np.ndarray) -> float:
    """The mean distance between the points ``[K, 3]``, over all pairs."""
    return float(np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2)]))


def pressed(frame: np.ndarray, group: list[int], molecules: np.ndarray, oxygens: np.ndarray, box: np.ndarray,
            distances: np.ndarray) -> np.ndarray:
    """``[D, N, 3]``: ``frame`` with the molecules of ``group`` moved rigidly towards or away from their oxygens'
    centroid, all by one factor, so that their mean O-O distance is each of ``distances`` (nm)."""
    centres = group_oxygens(frame, group, oxygens, box)
    mean = mean_pair_distance(centres)
    out = np.repeat(frame[None], len(distances), axis=0)
    for column, distance in enumerate(distances):
        shifts = (distance / mean - 1.0) * (centres - centres.mean(0))
        for member, shift in zip(group, shifts):
            out[column, molecules[member]] += shift
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="models of the 64-water AMOEBA box")
    parser.add_argument("--data", nargs="+", help="reference datasets of the box (actionml generate): press the "
                        "closest O-O pair of each of --frames frames")
    parser.add_argument("--frames", type=int, default=40, help="evenly spaced frames over all the data")
    parser.add_argument("--capture", help="a runaway_onset.py capture (runaway-<start>.npz): press --molecules in "
                        "its sample nearest --at")
    parser.add_argument("--at", type=float, help="ps, with --capture")
    parser.add_argument("--molecules", type=int, nargs="+", help="molecule indices, with --capture")
    parser.add_argument("--distances", type=float, nargs="+", default=[0.26, 0.25, 0.24, 0.23, 0.22],
                        help="mean O-O distances (nm) to press the molecules to; energies are from the first")
    parser.add_argument("--output-dir", default="results/contact-scan")
    args = parser.parse_args()
    if (args.data is None) == (args.capture is None) or (args.capture and (args.at is None or not args.molecules)):
        parser.error("give --data, or --capture with --at and --molecules")
    if len(args.distances) < 2 or args.frames < 2:
        parser.error("give at least two --distances and two --frames")
    torch.set_num_threads(1)
    prepared = amoeba_water(64, 0.6)
    box = np.diag(default_box(prepared.system))
    molecules, oxygens = oxygens_and_molecules(prepared)
    models = [load_model(path) for path in args.models]
    if args.data:
        frames = spaced_frames(prepared, args.data, args.frames)
        molecule = molecule_numbers(prepared.system)
        groups = [list(closest_contacts(frame, oxygens, oxygens, molecule, box)[1:]) for frame in frames]
        what = (f"Closest O-O pair of {len(frames)} frames of {', '.join(Path(p).name for p in args.data)} pressed "
                f"along its axis")
    else:
        if len(set(args.molecules)) < 2 or not all(0 <= m < len(molecules) for m in args.molecules):
            parser.error(f"--molecules needs at least two distinct molecule indices from 0 to {len(molecules) - 1}")
        capture = read_arrays(args.capture, ("times", "positions"), "capture", "give a runaway_onset.py capture")
        sample = int(np.argmin(np.abs(capture["times"] - args.at)))
        frames, groups = capture["positions"][sample:sample + 1], [args.molecules]
        what = (f"Molecules {', '.join(map(str, args.molecules))} of {Path(args.capture).name} at "
                f"{capture['times'][sample]:.3f} ps moved about their centroid")
    distances = np.asarray(args.distances)
    configurations = np.concatenate([pressed(frame, group, molecules, oxygens, box, distances)
                                     for frame, group in zip(frames, groups)])
    log(f"{len(configurations)} configurations: AMOEBA")
    energies = FrameEnergies(prepared, configurations)
    columns = {"U (AMOEBA)": energies.force_field()}
    baselines = [model.metadata.baseline for model in models if model.metadata.baseline]
    if baselines:
        columns[f"V ({' + '.join(baselines[0])} alone)"] = energies.force_field(baselines[0])
    for model in models:
        log(f"W of {model.path.stem}")
        columns[f"W ({model.path.stem})"] = energies.kick_potential(model)
    rises = {name: values.reshape(len(frames), len(distances)) for name, values in columns.items()}
    rises = {name: values - values[:, :1] for name, values in rises.items()}
    lines = [f"{what}; energy from its value at a mean O-O distance of {distances[0]:g} nm, kJ/mol"
             + (", mean ± s.e. over frames." if len(frames) > 1 else "."), "",
             "| mean O-O (nm) | " + " | ".join(rises) + " |", "|---" * (len(rises) + 1) + "|"]
    for column, distance in enumerate(distances):
        cells = [f"{values[:, column].mean():+.1f}" + (f" ± {values[:, column].std(ddof=1) / np.sqrt(len(frames)):.1f}"
                                                       if len(frames) > 1 else "") for values in rises.values()]
        lines.append(f"| {distance:.3f} | " + " | ".join(cells) + " |")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    emit("\n".join(lines) + "\n", output / "contact-scan.md")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, values in rises.items():
        error = values.std(0, ddof=1) / np.sqrt(len(frames)) if len(frames) > 1 else None
        axes.errorbar(distances, values.mean(0), error, label=name, lw=2 if name.startswith("U") else 1, capsize=2)
    axes.set_xlabel("mean O-O distance of the pressed molecules (nm)")
    axes.set_ylabel(f"energy from {distances[0]:g} nm (kJ/mol)")
    axes.legend(fontsize=7)
    save_figure(figure, output / "contact-scan.png")


if __name__ == "__main__":
    main()
