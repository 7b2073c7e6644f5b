"""Goal 3 of issue 6: how far apart independent samples of the force field's own g(r) lie, and the rows among them.

The ensemble tables' g(r) floor is the standard error over trajectories (or over a dataset's segments), which
counts them as independent. A dataset of ``actionml generate`` is one chain of segments, and the judge's starts are
frames of a few such chains, so two samples of the force field's own liquid can differ by more than that floor. This
measures it: the g(r) of each dataset (``--data``, each a separate sample of the force field) and of each row of
``amoeba_water.py``'s cache (``--row``; its trajectories' pair counts, one curve per trajectory length found), and the
RMS deviation of every pair of curves with its floor. A row is as close to the force field as its own samples are
to each other when its deviations fall among theirs. ``OUT.png`` plots each curve less the datasets' pool.

g(r) depends on the temperature, and NVE samples are not all at the bath's: segments and trajectories each have
their own. With ``--at-temperature T`` every curve is also read at T, as the ensemble tables read the potential
energy: per bin, the least-squares line of g against the segments' (trajectories') mean kinetic temperatures,
evaluated at T, with its standard error (a second table and ``OUT-at-T.png``).

Usage::

    python benchmarks/rdf_spread.py --data D1.npz D2.npz [...] --cache-dir DIR --row FILE_PREFIX [--row ...]
        [--label LABEL ...] [--pair O-O] [--stride 10] [--at-temperature 300] --output OUT.md
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm as mm
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmark_log import emit  # noqa: E402
from energy_jumps import row_files  # noqa: E402
from runaway_onset import runaway_limit  # noqa: E402
from openmm_actionml.atomic import read_arrays  # noqa: E402
from openmm_actionml.dataset import ReferenceDataset  # noqa: E402
from openmm_actionml.diagnostics import RadialDistribution, degrees_of_freedom_per_atom  # noqa: E402
from openmm_actionml.ensemble import curve_mean_error, failure_samples, line_value_at  # noqa: E402
from openmm_actionml.report import curve_deviation, save_figure  # noqa: E402
from openmm_actionml.systems import constraint_pairs, particle_masses  # noqa: E402
from openmm_actionml.units import BOLTZMANN  # noqa: E402

Curve = tuple[np.ndarray, np.ndarray]  # g(r) and its standard error over segments or trajectories


@dataclass
class Sample:
    """Per unit (a dataset's segment or a row's trajectory): its g(r) and its mean kinetic temperature (K)."""

    curves: np.ndarray
    temperatures: np.ndarray

    def mean(self) -> Curve:
        """g(r) averaged over the units, and its standard error."""
        return curve_mean_error(self.curves, self.curves.shape[1])

    def at(self, temperature: float) -> Curve:
        """Per bin, the least-squares line of g against the units' temperatures at ``temperature``, and its
        standard error (from the residuals)."""
        return line_value_at(self.temperatures, self.curves, temperature)


class Thermometer:
    """Mean kinetic temperature of velocity samples ``[..., N, 3]`` of ``system`` (constraints and a fixed centre of
    mass counted)."""

    def __init__(self, system: mm.System) -> None:
        self.masses = particle_masses(system)
        self.n_dof = float(degrees_of_freedom_per_atom(self.masses, constraint_pairs(system), remove_com=True).sum())

    def __call__(self, velocities: np.ndarray) -> float:
        twice_kinetic = (self.masses[:, None] * velocities ** 2).sum((-1, -2))
        return float(twice_kinetic.mean() / (BOLTZMANN * self.n_dof))


def segment_curves(rdf: RadialDistribution, positions: np.ndarray) -> np.ndarray:
    """``[S, bins]``: g(r) over the frames of each segment (or run) of ``positions [S, M, N, 3]``."""
    return np.array([rdf.normalise(sum(rdf.counts(frame) for frame in segment), len(segment))
                     for segment in positions])


def dataset_sample(rdf: RadialDistribution, thermometer: Thermometer, positions: np.ndarray,
                   velocities: np.ndarray) -> Sample:
    """Per segment of ``positions, velocities [S, M, N, 3]``: g(r) over its frames and its temperature."""
    return Sample(segment_curves(rdf, positions), np.array([thermometer(segment) for segment in velocities]))


def row_samples(rdf: RadialDistribution, thermometer: Thermometer, cache_dir: str, prefix: str,
                limit: float) -> dict[int, Sample]:
    """Per trajectory length (samples), the :class:`Sample` of a cached row's stable trajectories: those that
    neither blew up nor ran away (their total energy left its start by more than ``limit`` kJ/mol; see
    :func:`runaway_onset.runaway_limit`)."""
    by_length: dict[int, list[tuple[np.ndarray, float]]] = {}
    for path in row_files(cache_dir, prefix):
        arrays = read_arrays(path, ("energies", "velocities", "stable", "rdf_counts"), "cached trajectory",
                             "delete it and rerun its row")
        if bool(arrays["stable"]) and failure_samples(arrays["energies"][None], limit)[0] < 0:
            samples = len(arrays["energies"])
            by_length.setdefault(samples, []).append((rdf.normalise(arrays["rdf_counts"], samples),
                                                      thermometer(arrays["velocities"])))
    return {samples: Sample(np.array([c for c, _ in units]), np.array([t for _, t in units]))
            for samples, units in by_length.items()}


def deviation_table(curves: dict[str, Curve], heading: str) -> list[str]:
    """Markdown: the RMS deviation (floor) of every pair of ``curves``."""
    names = list(curves)
    lines = [heading, "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for first in names:
        cells = ["" if first == second else "%.4f (%.4f)" % curve_deviation(*curves[first], *curves[second])
                 for second in names]
        lines.append(f"| {first} | " + " | ".join(cells) + " |")
    return lines


def plot_against_pool(radii: np.ndarray, curves: dict[str, Curve], pool: str, pair: str, path: Path) -> None:
    """Each curve less the ``pool`` one, over the pool's standard error."""
    figure, axis = plt.subplots(figsize=(9, 5))
    axis.fill_between(radii, -curves[pool][1], curves[pool][1], color="0.8", label="pool's standard error")
    for name, (curve, _) in curves.items():
        if name != pool:
            axis.plot(radii, curve - curves[pool][0], label=name)
    axis.set_xlabel("r (nm)")
    axis.set_ylabel(f"g({pair}) - {pool}")
    axis.legend(fontsize=7)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="datasets, each a separate sample of the force field")
    parser.add_argument("--cache-dir", required=True, help="amoeba_water.py's --cache-dir")
    parser.add_argument("--row", action="append", default=[], help="the start of a row's cache file names, up to "
                        "the fingerprint (repeatable)")
    parser.add_argument("--label", action="append", default=[], help="a short name for each --row, in order")
    parser.add_argument("--pair", default="O-O")
    parser.add_argument("--stride", type=int, default=10, help="every stride-th frame of the datasets' segments")
    parser.add_argument("--at-temperature", type=float, help="also read every curve at this temperature (K)")
    parser.add_argument("--output", required=True, help="OUT.md; the plot is OUT.png")
    args = parser.parse_args()
    if args.label and len(args.label) != len(args.row):
        raise SystemExit(f"give one --label per --row ({len(args.row)}), or none")
    datasets = [ReferenceDataset.load(path) for path in args.data]
    rdf = RadialDistribution.of_elements(args.pair, list(datasets[0].elements), datasets[0].box)
    system = datasets[0].system()
    thermometer = Thermometer(system)
    samples = {Path(path).stem: dataset_sample(rdf, thermometer, data.positions[:, ::args.stride],
                                               data.velocities[:, ::args.stride])
               for path, data in zip(args.data, datasets)}
    pool = "all datasets"
    samples[pool] = Sample(np.concatenate([samples[Path(p).stem].curves for p in args.data]),
                           np.concatenate([samples[Path(p).stem].temperatures for p in args.data]))
    limit = runaway_limit(system)
    for prefix, label in zip(args.row, args.label or args.row):
        for length, sample in sorted(row_samples(rdf, thermometer, args.cache_dir, prefix, limit).items()):
            samples[f"{label} ({length} samples)"] = sample
    output = Path(args.output)
    lines = ["Mean kinetic temperature (K) of each sample's units, mean ± standard error: " + "; ".join(
        f"{name} {s.temperatures.mean():.1f} ± {s.temperatures.std(ddof=1) / np.sqrt(len(s.temperatures)):.1f}"
        for name, s in samples.items()) + ".", ""]
    means = {name: sample.mean() for name, sample in samples.items()}
    lines += deviation_table(means, f"RMS deviation between g({args.pair}) curves over r (statistical floor: the two "
                             f"standard errors combined); datasets {', '.join(Path(p).name for p in args.data)}, "
                             f"every {args.stride}th frame.")
    plot_against_pool(rdf.radii, means, pool, args.pair, output.with_suffix(".png"))
    if args.at_temperature:
        at = {name: sample.at(args.at_temperature) for name, sample in samples.items()}
        lines += [""] + deviation_table(at, f"The same, each curve read at {args.at_temperature:g} K (per bin, the "
                                        f"line of g against the units' temperatures).")
        plot_against_pool(rdf.radii, at, pool, args.pair, output.with_name(f"{output.stem}-at-T.png"))
    emit("\n".join(lines), output)


if __name__ == "__main__":
    main()
