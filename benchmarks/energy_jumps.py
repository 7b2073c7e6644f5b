"""Goal 3 of issue 6: sudden rises of AMOEBA's total energy in the cached NVE trajectories of AMOEBA-water rows.

A surrogate's NVE conserves its own (modified) energy W + K, so AMOEBA's total energy E = U + K along it moves as
U - W does: a step in E is the surrogate entering configurations it rates lower than AMOEBA does by that much. This
reads a row's trajectories from ``amoeba_water.py``'s cache (energies and velocities of every sample; no
positions, see ``runaway_onset.py``) and, per trajectory, finds the first time the mean of E over ``--window`` ps
exceeds its mean over the ``--window`` ps before by more than ``--threshold`` kJ/mol. For each such jump it gives
the change of the kinetic energy K over the same windows and E's distance from the start 2, 5 and 10 ps later and
at the end; for each row, the ps run, how many trajectories jump, how many run away (the harness's criterion,
``EnsembleOptions.runaway_factor``), and the largest rise of the trajectories that do not jump (the noise).

Usage::

    python benchmarks/energy_jumps.py --cache-dir DIR --row FILE_PREFIX [--row ...] [--threshold 40]
        [--window 1] [--sample-interval 48] [--output FILE.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from amoeba_water import amoeba_water
from benchmark_log import emit
from openmm_actionml.atomic import read_arrays
from openmm_actionml.ensemble import failure_samples
from openmm_actionml.systems import particle_masses
from runaway_onset import runaway_limit

LATER = (2.0, 5.0, 10.0)


def window_rises(series: np.ndarray, width: int) -> np.ndarray:
    """``[T - 2 width + 1]``: the mean of ``series`` over each ``width`` samples minus its mean over the ``width``
    before; entry ``i`` compares samples ``i + width ..`` with ``i ..``."""
    sums = np.concatenate([[0.0], np.cumsum(series)])
    means = (sums[width:] - sums[:-width]) / width
    return means[width:] - means[:-width]


def row_files(cache_dir: str, prefix: str) -> list[Path]:
    """The cache files of the row whose names start with ``prefix`` (up to the fingerprint), sorted."""
    paths = sorted(p for p in Path(cache_dir).glob(f"{prefix}-*.npz")
                   if len(p.stem) == len(prefix) + 17)  # the prefix and a 16-digit fingerprint, nothing more
    if not paths:
        raise SystemExit(f"no cache file in {cache_dir} is named {prefix}-<fingerprint>.npz")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True, help="amoeba_water.py's --cache-dir")
    parser.add_argument("--row", action="append", required=True, help="the start of a row's cache file names, "
                        "up to the fingerprint (repeatable)")
    parser.add_argument("--threshold", type=float, default=40.0, help="kJ/mol")
    parser.add_argument("--window", type=float, default=1.0, help="ps")
    parser.add_argument("--sample-interval", type=float, default=48.0, help="fs, amoeba_water.py's")
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--output", help="write the tables to this markdown file too")
    args = parser.parse_args()
    system = amoeba_water(args.waters, 0.6).system
    masses = particle_masses(system)
    limit = runaway_limit(system)
    interval = args.sample_interval / 1000.0
    width = int(round(args.window / interval))
    summary = ["| row | trajectories | ps | runaways | jumps over the threshold | largest rise without a jump "
               "(kJ/mol) |", "|---|---|---|---|---|---|"]
    events = ["| row | trajectory | jump at (ps) | E rise | K change | E - E0 " + " | ".join(
        f"{t:g} ps later" for t in LATER) + " | E - E0 at the end |", "|---" * (7 + len(LATER) - 1) + "|"]
    for prefix in args.row:
        paths = row_files(args.cache_dir, prefix)
        runaways, quiet_rises, jumps, simulated = 0, [], 0, 0.0
        for path in paths:
            arrays = read_arrays(path, ("energies", "velocities"), "cached trajectory", "delete it and rerun its row")
            energies, velocities = arrays["energies"], arrays["velocities"]
            reached = np.isfinite(energies)
            energies, velocities = energies[reached], velocities[reached]
            if len(energies) < 2 * width + 1:
                raise SystemExit(f"{path} holds {len(energies)} samples, fewer than two windows of {width}; give a "
                                 f"shorter --window")
            simulated += (len(energies) - 1) * interval
            runaways += int(failure_samples(energies[None], limit)[0] >= 0 or not reached.all())
            kinetic = 0.5 * np.einsum("n,tnx,tnx->t", masses, velocities, velocities)
            rises = window_rises(energies, width)
            above = np.flatnonzero(rises > args.threshold)
            if not len(above):
                quiet_rises.append(rises.max())
                continue
            jumps += 1
            first = above[0]
            at = first + width  # the first sample of the later window
            later = [f"{energies[min(len(energies) - 1, at + int(round(t / interval)))] - energies[0]:+.0f}"
                     for t in LATER]
            events.append(f"| {prefix} | {path.stem[-16:]} | {at * interval:.1f} | {rises[first]:+.0f} | "
                          f"{window_rises(kinetic, width)[first]:+.0f} | " + " | ".join(later)
                          + f" | {energies[-1] - energies[0]:+.0f} |")
        quiet = f"{max(quiet_rises):.0f} (median of the largest {np.median(quiet_rises):.0f})" if quiet_rises else "-"
        summary.append(f"| {prefix} | {len(paths)} | {simulated:.0f} | {runaways} | {jumps} | {quiet} |")
    text = (f"Rises of the {args.window:g} ps mean of AMOEBA's E over the {args.window:g} ps before, threshold "
            f"{args.threshold:g} kJ/mol; runaway limit {limit:.0f} kJ/mol.\n\n" + "\n".join(summary) + "\n\n"
            + "\n".join(events) + "\n")
    emit(text, args.output)


if __name__ == "__main__":
    main()
