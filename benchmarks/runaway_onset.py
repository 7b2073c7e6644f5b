"""Goal 3 of issue 6: catch a learned AMOEBA-water row's runaways with their positions, and show what starts them.

A runaway of a surrogate step is a trajectory whose total energy, measured in AMOEBA, leaves its start by more than
the harness's runaway limit (``EnsembleOptions.runaway_factor`` n_dof kT); ``--limit`` sets a lower one, to catch the
smaller jumps that may precede it. The ensemble cache keeps no positions, and a trajectory cannot be replayed to the
bit (the force summation order differs from run to run, and the liquid is chaotic), so this runs the model's NVE
trajectories afresh from given starts (those of ``amoeba_water.py --thermalise``, its cache's ``starts-*-own-*.npz``)
and keeps the last ``--window`` ps of positions and velocities. AMOEBA's energy is measured every ``--check-interval``
ps; at a crossing the run goes on for ``--after`` ps and writes the window to ``runaway-<start>.npz``. For each
runaway caught it then measures, at every sample of the window:

- AMOEBA's potential energy U and the step's kick potential W (the learned heads weighted by their kick
  coefficients, :func:`~openmm_actionml.ensemble_check.kick_weights`, plus the baseline force field), each from the
  window's first sample, and the kinetic energy K. The surrogate's NVE conserves (a modified) W + K: a jump in U with
  none in K is a configuration the surrogate rates far lower than AMOEBA does;
- U - W for each ``--compare`` model and for the model's baseline force field alone: whether other surrogates
  share a gap the onset opens;
- the closest intermolecular O-O, O-H and H-H contacts and the molecules that make them (``--reference-data``
  tabulates the same contacts over the reference datasets: how close the reference liquid comes),

and writes them to ``onset-<start>.md`` and ``onset-<start>.png``, with ``trajectories-<first>-<last>.md`` listing
every trajectory run (stable, or the time of its crossing). Processes given other ``--first`` share the work.

Usage::

    python benchmarks/runaway_onset.py MODEL.pt --starts STARTS.npz [--first 0] [--count 32] [--time 50]
        [--window 8] [--after 3] [--check-interval 0.24] [--limit KJ_PER_MOL] [--compare OTHER.pt ...]
        [--output-dir DIR]
    python benchmarks/runaway_onset.py MODEL.pt --reanalyse DIR/runaway-START.npz [--compare OTHER.pt ...]
        [--reference-data D.npz ...]
"""
from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

import numpy as np
import openmm as mm
import openmm.unit as u

from amoeba_water import TEMPERATURE, amoeba_water
from benchmark_log import emit, log
from openmm_actionml.atomic import atomic_path, read_arrays
from openmm_actionml.diagnostics import degrees_of_freedom_per_atom, rigid_triatomics
from openmm_actionml.ensemble import FORCE_FIELD_GROUPS, EnsembleOptions, Starts, read_starts, set_start
from openmm_actionml.ensemble_check import kick_weights, learned_energies
from openmm_actionml.evaluate import model_candidate
from openmm_actionml.examples import with_baseline
from openmm_actionml.modelfile import ActionMLModel, load_model
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.platforms import create_context
from openmm_actionml.report import save_figure
from openmm_actionml.systems import PreparedSystem, constraint_pairs, default_box, particle_masses

#: ps between kept samples: amoeba_water.py's default.
SAMPLE_INTERVAL = 0.048
CONTACTS = ("O-O", "O-H", "H-H")


@dataclass
class Capture:
    """The samples kept of the trajectory from start ``start``: the window before its crossing (at ``crossing``
    ps) and the ps run after it."""

    start: int
    crossing: float
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray


def runaway_limit(system: mm.System) -> float:
    """The harness's runaway limit for ``system`` at the benchmark's temperature: ``EnsembleOptions.runaway_factor``
    n_dof kT, in kJ/mol."""
    masses = particle_masses(system)
    n_dof = float(degrees_of_freedom_per_atom(masses, constraint_pairs(system), remove_com=True).sum())
    return EnsembleOptions().runaway_limit(n_dof, TEMPERATURE)


def run_trajectory(context: mm.Context, integrator: mm.Integrator, meter: mm.Context, starts: Starts, index: int,
                   masses: np.ndarray, steps_per_sample: int, duration: float, limit: float, window: float,
                   after: float, check_every: int) -> Capture | None:
    """One NVE trajectory from start ``index``, sampled every ``steps_per_sample`` steps; its :class:`Capture` if
    AMOEBA's total energy (``meter``'s U plus K, every ``check_every`` samples) leaves the start's by more than
    ``limit`` kJ/mol, else None."""
    kept = collections.deque(maxlen=int(round(window / SAMPLE_INTERVAL)) + 1)
    set_start(context, starts, index, masses)
    first_total, crossing, last = None, None, int(round(duration / SAMPLE_INTERVAL))
    sample = 0
    while sample <= last:
        if sample:
            integrator.step(steps_per_sample)
        state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, groups=FORCE_FIELD_GROUPS)
        positions = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        kept.append((sample * SAMPLE_INTERVAL, positions,
                     state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)))
        if crossing is None and sample % check_every == 0:
            meter.setPositions(positions)
            total = (meter.getState(getEnergy=True).getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(
                u.kilojoule_per_mole)
            first_total = total if first_total is None else first_total
            if not np.isfinite(total) or abs(total - first_total) > limit:
                crossing = sample * SAMPLE_INTERVAL
                last = sample + int(round(after / SAMPLE_INTERVAL))
                kept = collections.deque(kept, maxlen=kept.maxlen + last - sample)
        sample += 1
    if crossing is None:
        return None
    times, positions, velocities = (np.array(column) for column in zip(*kept))
    return Capture(index, crossing, times, positions, velocities)


def closest_contacts(positions: np.ndarray, first: np.ndarray, second: np.ndarray, molecule: np.ndarray,
                     box: np.ndarray) -> tuple[float, int, int]:
    """The closest minimum-image distance (nm) between an atom of ``first`` and one of ``second`` in another
    molecule, and the two molecules."""
    separation = positions[second][None, :, :] - positions[first][:, None, :]
    separation -= box * np.round(separation / box)
    distances = np.sqrt((separation ** 2).sum(-1))
    distances[molecule[first][:, None] == molecule[second][None, :]] = np.inf
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    return float(distances[i, j]), int(molecule[first][i]), int(molecule[second][j])


def molecule_numbers(system: mm.System) -> np.ndarray:
    """Each atom's rigid molecule, numbered as :func:`~openmm_actionml.diagnostics.rigid_triatomics` lists them
    (-1 for atoms in none)."""
    molecule = np.full(system.getNumParticles(), -1)
    for number, atoms in enumerate(rigid_triatomics(constraint_pairs(system))):
        molecule[atoms] = number
    return molecule


def frame_contacts(prepared: PreparedSystem, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Per element pair of :data:`CONTACTS`, ``[T, 3]``: each frame's closest intermolecular contact (nm) and the
    two molecules that make it."""
    system = prepared.system
    box = np.diag(default_box(system))
    elements = np.array([atom.element.symbol for atom in prepared.topology.atoms()])
    molecule = molecule_numbers(system)
    return {pair: np.array([closest_contacts(frame, *(np.flatnonzero(elements == e) for e in pair.split("-")),
                                             molecule, box) for frame in positions])
            for pair in CONTACTS}


def reference_contacts(prepared: PreparedSystem, paths: Sequence[str], stride: int) -> str:
    """A table of the closest contacts in every ``stride``-th frame of the reference datasets at ``paths``
    (``actionml generate`` files of this box): where the reference liquid goes."""
    frames = np.concatenate([read_arrays(path, ("positions",), "dataset", "give a dataset of this box")[
        "positions"].reshape(-1, prepared.system.getNumParticles(), 3)[::stride] for path in paths])
    contacts = frame_contacts(prepared, frames)
    rows = ["| pair | frames | mean (nm) | 1st percentile | least |", "|---|---|---|---|---|"]
    for pair, values in contacts.items():
        distances = values[:, 0]
        rows.append(f"| {pair} | {len(distances)} | {distances.mean():.4f} | {np.percentile(distances, 1):.4f} | "
                    f"{distances.min():.4f} |")
    return "\n".join(rows)


class FrameEnergies:
    """Energies (kJ/mol) at fixed frames ``positions [T, N, 3]`` of ``prepared``'s box: each force field once, however
    many models kick with it (CPU platform)."""

    def __init__(self, prepared: PreparedSystem, positions: np.ndarray) -> None:
        self.prepared, self.positions = prepared, positions
        self._force_fields: dict[tuple[str, ...], np.ndarray] = {}

    def force_field(self, baseline: Sequence[str] = ()) -> np.ndarray:
        """The potential energy of ``prepared``'s force field (no ``baseline``: AMOEBA's U) or of that baseline in
        its place."""
        key = tuple(baseline)
        if key not in self._force_fields:
            system = with_baseline(self.prepared, list(key)).system if key else self.prepared.system
            self._force_fields[key] = OpenMMPotential(system, platform="CPU").energy(self.positions)
        return self._force_fields[key]

    def kick_potential(self, model: ActionMLModel) -> np.ndarray:
        """The model's kick potential W: the learned heads weighted by their kick coefficients, plus the force field
        (or baseline) its kicks call, if any (not for pure ML)."""
        weights = kick_weights(model)
        learned = learned_energies(model, self.positions, default_box(self.prepared.system)) @ weights / weights.sum()
        return learned + self.force_field(model.metadata.baseline or ()) if model.metadata.anchored else learned


def onset(capture: Capture, prepared: PreparedSystem, model: ActionMLModel, output: Path,
          others: Sequence[ActionMLModel] = ()) -> str:
    """Measure a capture's U, W, K and closest contacts at every sample, and U - W for the model, each of
    ``others`` and the model's baseline alone; write its table and figure."""
    import matplotlib.pyplot as plt
    system = prepared.system
    masses = particle_masses(system)
    energies = FrameEnergies(prepared, capture.positions)
    amoeba = energies.force_field()
    kick = energies.kick_potential(model)
    gaps = {"U - W": amoeba - kick}
    gaps.update({f"U - W ({other.path.stem})": amoeba - energies.kick_potential(other) for other in others})
    baseline = model.metadata.baseline
    if baseline:
        gaps[f"U - {' + '.join(baseline)} alone"] = amoeba - energies.force_field(baseline)
    kinetic = 0.5 * (masses[:, None] * capture.velocities ** 2).sum((1, 2))
    contacts = frame_contacts(prepared, capture.positions)
    rows = ["| t (ps) | U - U0 (AMOEBA) | W - W0 | K - K0 | " + " | ".join(gaps) + " | "
            + " | ".join(f"closest {p} (molecules)" for p in CONTACTS) + " |",
            "|---" * (4 + len(gaps) + len(CONTACTS)) + "|"]
    for index, t in enumerate(capture.times):
        cells = [f"{t:.3f}", f"{amoeba[index] - amoeba[0]:+.1f}", f"{kick[index] - kick[0]:+.1f}",
                 f"{kinetic[index] - kinetic[0]:+.1f}"]
        cells += [f"{gap[index] - gap[0]:+.1f}" for gap in gaps.values()]
        cells += [f"{contacts[p][index, 0]:.3f} ({contacts[p][index, 1]:.0f}, {contacts[p][index, 2]:.0f})"
                  for p in CONTACTS]
        rows.append("| " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    with atomic_path(output / f"onset-{capture.start}.md", overwrite=True) as tmp:
        tmp.write_text(f"# Start {capture.start}: crossing at {capture.crossing:.2f} ps\n\n"
                       f"Model {model.path.stem}. Energies in kJ/mol from the window's first sample, distances "
                       f"in nm.\n\n{table}\n")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for values, label in ((amoeba, "U (AMOEBA)"), (kick, "W (kick potential)"), (kinetic, "K"),
                          (amoeba + kinetic, "U + K"), (kick + kinetic, "W + K")):
        top.plot(capture.times, values - values[0], label=label, lw=1)
    top.axvline(capture.crossing, color="grey", ls=":", lw=1)
    top.set_ylabel("energy from window start (kJ/mol)")
    top.legend(fontsize=8, ncol=3)
    for pair in CONTACTS:
        bottom.plot(capture.times, contacts[pair][:, 0], label=f"closest {pair}", lw=1)
    bottom.set_xlabel("time (ps)")
    bottom.set_ylabel("distance (nm)")
    bottom.legend(fontsize=8)
    top.set_title(f"{model.path.stem}: start {capture.start}")
    save_figure(figure, output / f"onset-{capture.start}.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model of the 64-water AMOEBA box (as amoeba_water.py runs it)")
    parser.add_argument("--starts", help="a starts file (.npz) of amoeba_water.py's cache")
    parser.add_argument("--first", type=int, default=0, help="first start to run")
    parser.add_argument("--count", type=int, default=32, help="starts to run from --first")
    parser.add_argument("--time", type=float, default=50.0, help="ps per trajectory")
    parser.add_argument("--window", type=float, default=8.0, help="ps kept before a crossing")
    parser.add_argument("--after", type=float, default=3.0, help="ps run and kept after a crossing")
    parser.add_argument("--check-interval", type=float, default=0.24, help="ps between AMOEBA energies, a multiple "
                        f"of {SAMPLE_INTERVAL * 1000:g} fs")
    parser.add_argument("--limit", type=float, help="kJ/mol of AMOEBA total energy from the start that counts as a "
                        "crossing (default: the harness's runaway limit, half an n_dof kT)")
    parser.add_argument("--compare", action="append", default=[], help="another model of the box whose U - W to "
                        "show at the captured samples (repeatable)")
    parser.add_argument("--reanalyse", nargs="+", metavar="RUNAWAY_NPZ", help="measure these captures "
                        "(runaway-<start>.npz of an earlier run) instead of running trajectories")
    parser.add_argument("--reference-data", nargs="+", metavar="DATA_NPZ", help="datasets of the box whose closest "
                        "contacts to tabulate (reference-contacts.md): how close the reference liquid comes")
    parser.add_argument("--output-dir", default="results/runaway-onset")
    args = parser.parse_args()
    if (args.starts and args.reanalyse) or not (args.starts or args.reanalyse or args.reference_data):
        parser.error("give --starts (run trajectories) or --reanalyse (measure earlier captures), not both, or "
                     "--reference-data alone")
    if args.limit is not None and not args.limit > 0:
        parser.error(f"--limit must be a positive energy (kJ/mol), got {args.limit}")
    torch.set_num_threads(1)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    prepared = amoeba_water(64, 0.6)
    model = load_model(args.model)
    others = [load_model(path) for path in args.compare]
    if args.reference_data:
        emit(f"Closest intermolecular contacts per frame, every fifth frame of "
             f"{', '.join(Path(p).name for p in args.reference_data)}.\n\n"
             f"{reference_contacts(prepared, args.reference_data, stride=5)}\n", output / "reference-contacts.md")
    for path in args.reanalyse or ():
        arrays = read_arrays(path, ("times", "positions", "velocities", "crossing"), "capture",
                             "give a runaway-<start>.npz that this script wrote")
        start = int(Path(path).stem.rpartition("-")[2])
        log(f"measuring the capture of start {start} ({len(arrays['times'])} samples)")
        onset(Capture(start, float(arrays["crossing"]), arrays["times"], arrays["positions"], arrays["velocities"]),
              prepared, model, output, others)
    if args.starts is None:
        return
    starts = read_starts(args.starts, "give a starts file of amoeba_water.py's cache (starts-*.npz).")
    row = model_candidate(prepared, model)
    masses = particle_masses(row.system)
    limit = runaway_limit(row.system) if args.limit is None else args.limit
    integrator = row.make_integrator()
    context = create_context(row.system, integrator, "CPU")
    meter = create_context(prepared.system, mm.VerletIntegrator(0.001), "CPU")
    steps_per_sample = int(round(SAMPLE_INTERVAL / row.step))
    if steps_per_sample < 1 or abs(steps_per_sample * row.step - SAMPLE_INTERVAL) > 1e-9:
        raise SystemExit(f"the model's step ({row.step * 1000:g} fs) does not divide the {SAMPLE_INTERVAL * 1000:g} "
                         f"fs between samples; this script runs models of amoeba_water.py's sampling")
    check_every = max(1, int(round(args.check_interval / SAMPLE_INTERVAL)))
    last = min(args.first + args.count, len(starts))
    lines = [f"# {model.path.stem}: {args.time:g} ps NVE trajectories from {Path(args.starts).name}",
             "", f"Crossing: AMOEBA total energy {limit:.0f} kJ/mol from the start.", ""]
    began = time.perf_counter()
    for index in range(args.first, last):
        capture = run_trajectory(context, integrator, meter, starts, index, masses, steps_per_sample, args.time,
                                 limit, args.window, args.after, check_every)
        verdict = "no crossing" if capture is None else f"crossing at {capture.crossing:.2f} ps"
        log(f"start {index}: {verdict} ({time.perf_counter() - began:.0f} s)")
        lines.append(f"- start {index}: {verdict}")
        if capture is not None:
            with atomic_path(output / f"runaway-{index}.npz", overwrite=True) as tmp:
                np.savez(tmp, times=capture.times, positions=capture.positions, velocities=capture.velocities,
                         crossing=capture.crossing)
            onset(capture, prepared, model, output, others)
        with atomic_path(output / f"trajectories-{args.first}-{last - 1}.md", overwrite=True) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
