"""Goal 3 of issue 6: AMOEBA's wall for compressed water clusters, taught to a surrogate and tested on new ones.

``runaway_onset.py`` and ``contact_scan.py`` traced the surrogates' runaways to three or four waters collapsing into
a compressed ring (every O-O distance 0.23-0.24 nm), closer than AMOEBA's liquid ever brings them, where every
learned correction of TIP3P-FB rates the cluster below the open one while AMOEBA charges 100-180 kJ/mol. No reference
frame holds such a cluster, so no training saw one. This builds them, teaches them, and tests the result on clusters
of other frames:

- ``press``: in evenly spaced frames of reference datasets, a compact cluster of one of ``--sizes`` waters around a
  random water (of its neighbours within 0.35 nm, those whose O-O distances are least on average) is pressed
  rigidly towards its oxygens' centroid to a mean O-O distance drawn uniformly between ``--shortest`` and its own;
  a press that raises AMOEBA's energy by more than ``--max-rise`` is halved (a surrogate's trajectory does not reach
  such frames, and the captured rings rose by 75-180 kJ/mol). With ``--model`` the cluster is squeezed instead by
  the model's own Langevin dynamics for ``--time`` ps, a restraint's bound on its mean O-O distance falling from its
  own to one drawn between ``--shortest`` and ``--longest``: the waters turn as the model's kick potential lets them,
  as they do when a surrogate's trajectory collapses a ring (a squeeze whose step blows up is counted, not kept);
  ``--splitting T3`` squeezes by the classical splitting at ``--step`` fs on AMOEBA itself instead (the control).
  The frames are labelled with the datasets' force field (energies and forces) and written with their unpressed
  frames to ``--output``;
- ``tune``: fine-tunes a model with Adam on force matching over its training data plus ``--pressed-weight`` times
  force matching over pressed frames, logging the force and energy errors on validation frames (and how far its
  forces there moved from the starting model's) and on the pressed frames of ``--held-out``, and writes the model
  (the command in its recipe). With ``--keep-start-forces`` the training frames' targets are the starting model's
  own forces, not the force field's: force matching to the force field moves W on the liquid within its error
  (and, over 50 ps, the model's liquid with it), while this holds W there and lets the pressed frames move it only
  where they differ. The model is written in single precision, as ``actionml train`` writes it;
- ``rate``: on a press file of other frames, tabulates the rise of AMOEBA's U and of each model's kick potential W
  from the unpressed frame, by cluster size and by U's rise: the mean, the RMS of W's rise minus U's, and the wells
  (frames a model rates below the unpressed one where AMOEBA charges them); and plots each model's rise against U's
  (``--output`` with ``.png``).

Usage::

    python benchmarks/compressed_clusters.py press D.npz [D.npz ...] --output PRESSED.npz [--frames 1024]
        [--sizes 3 4] [--shortest 0.225] [--max-rise 300] [--attempts 4] [--seed 1]
        [--model MODEL.pt | --splitting T3 [--step 12]] [--longest 0.27] [--time 0.6]
    python benchmarks/compressed_clusters.py tune MODEL.pt --data D.npz [D.npz ...] --pressed P.npz [P.npz ...]
        [--held-out OTHER-PRESSED.npz] [--iterations 400] [--learning-rate 3e-4] [--pressed-weight 1]
        [--keep-start-forces] [--batch-size 8] --output OUT.pt
    python benchmarks/compressed_clusters.py rate MODEL.pt [MODEL.pt ...] --pressed OTHER-PRESSED.npz
        [--bins 25 100 200 400] [--output rate.md]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import numpy as np
import openmm as mm
import openmm.unit as u

from amoeba_water import TEMPERATURE, amoeba_water
from benchmark_log import emit, log
from contact_scan import group_oxygens, mean_pair_distance, oxygens_and_molecules, pressed, spaced_frames
from openmm_actionml.atomic import atomic_path, read_arrays
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.errors import SimulationInstabilityError
from openmm_actionml.evaluate import model_system
from openmm_actionml.integrator import ActionMLIntegrator, SplittingIntegrator, add_learned_force
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import ActionMLModel, export_model, load_model
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.platforms import create_context
from openmm_actionml.report import save_figure
from openmm_actionml.systems import PreparedSystem, default_box
from refine_on_own_samples import errors_text, trainer_from_model
from runaway_onset import FrameEnergies

#: nm: the neighbours of a cluster's first water are looked for within this O-O distance.
REACH = 0.35
#: How many of those neighbours (the nearest) a cluster may be chosen from.
CANDIDATES = 6
#: kJ/mol/nm^2: the stiffness of the restraint on a squeezed cluster's mean O-O distance.
SQUEEZE_STIFFNESS = 1e5
#: The restraint's bound falls in this many even steps over a squeeze.
SQUEEZE_STAGES = 10


def compact_cluster(oxygens: np.ndarray, centre: int, size: int, box: np.ndarray) -> list[int]:
    """The molecules of a cluster of ``size`` waters containing ``centre``, given every molecule's oxygen position
    ``oxygens [M, 3]``: of ``centre``'s nearest :data:`CANDIDATES` neighbours within :data:`REACH` (or its nearest
    ``size - 1`` if fewer lie there), the choice with the least mean O-O distance."""
    separation = oxygens - oxygens[centre]
    separation -= box * np.round(separation / box)
    distance = np.linalg.norm(separation, axis=1)
    order = [j for j in np.argsort(distance) if j != centre]
    near = [j for j in order[:CANDIDATES] if distance[j] < REACH]
    pool = near if len(near) >= size - 1 else order[:size - 1]
    return [centre, *min(itertools.combinations(pool, size - 1),
                         key=lambda others: mean_pair_distance(separation[[centre, *others]]))]


def mean_oxygen_distance(frame: np.ndarray, group: Sequence[int], oxygens: np.ndarray, box: np.ndarray) -> float:
    """The mean O-O distance (nm) between the molecules of ``group``, in one periodic image."""
    return mean_pair_distance(group_oxygens(frame, group, oxygens, box))


@dataclasses.dataclass
class Squeezer:
    """Thermostatted dynamics that squeeze clusters: ``system`` (the force field a step's kicks add, and the learned
    force of a model) and a maker of its integrator at 300 K, 1/ps, with the step ``step`` (ps)."""

    name: str
    system: mm.System
    integrator: Callable[[], mm.Integrator]
    step: float

    @classmethod
    def of_model(cls, prepared: PreparedSystem, model: ActionMLModel) -> "Squeezer":
        """The model's own dynamics: its learned force on the force field its kicks call."""
        if not model.metadata.baseline:
            raise SystemExit(f"{model.path.name} has no baseline force field; squeezing adds the restraint to the "
                             f"force field its kicks call, so give a model trained with --baseline-forcefield.")
        return cls(model.path.name, add_learned_force(model_system(prepared, model).system, model),
                   lambda: ActionMLIntegrator(model, temperature=TEMPERATURE), model.metadata.step)

    @classmethod
    def of_splitting(cls, prepared: PreparedSystem, splitting: str, step: float) -> "Squeezer":
        """A classical ``splitting`` at ``step`` ps on ``prepared``'s own force field (the control)."""
        return cls(f"{splitting} {step * 1000:g} fs on {' + '.join(prepared.settings['forcefield'])}",
                   prepared.system, lambda: SplittingIntegrator(splitting, step, temperature=TEMPERATURE), step)

    def squeeze(self, frame: np.ndarray, group: Sequence[int], oxygens: np.ndarray, distances: tuple[float, float],
                duration: float, seed: int) -> np.ndarray | None:
        """``frame`` after ``duration`` ps of these dynamics (velocities drawn with ``seed``), with the mean O-O
        distance of the molecules of ``group`` held at or below a bound that falls in :data:`SQUEEZE_STAGES` even
        steps from the first of ``distances`` (nm) to the second by a flat-bottomed harmonic restraint: a cluster
        collapsed as the dynamics' potential lets it, the way a surrogate's own trajectory forms one. None if the
        step blew up."""
        atoms = [int(oxygens[member]) for member in group]
        pairs = list(itertools.combinations(range(1, len(atoms) + 1), 2))
        mean = "(" + " + ".join(f"distance(p{i}, p{j})" for i, j in pairs) + f") / {len(pairs)}"
        restraint = mm.CustomCompoundBondForce(len(atoms), f"0.5 * {SQUEEZE_STIFFNESS} * step(m - squeeze_bound) * "
                                                           f"(m - squeeze_bound)^2; m = {mean}")
        restraint.addGlobalParameter("squeeze_bound", distances[0])
        restraint.addBond(atoms, [])
        restraint.setUsesPeriodicBoundaryConditions(True)
        system = copy.deepcopy(self.system)
        system.addForce(restraint)  # group 0: every kick adds it to the force field
        integrator = self.integrator()
        integrator.setRandomNumberSeed(seed)
        context = create_context(system, integrator, "CPU")
        context.setPositions(frame)
        context.setVelocitiesToTemperature(TEMPERATURE, seed)
        steps = int(round(duration / self.step / SQUEEZE_STAGES))
        try:
            for bound in np.linspace(*distances, SQUEEZE_STAGES + 1)[1:]:
                context.setParameter("squeeze_bound", bound)
                integrator.step(steps)
        except SimulationInstabilityError:
            return None
        return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)


def press_command(args: argparse.Namespace) -> None:
    """Build, label and write the pressed frames."""
    torch.set_num_threads(1)
    prepared = amoeba_water(64, 0.6)
    molecules, oxygens = oxygens_and_molecules(prepared)
    box = np.diag(default_box(prepared.system))
    rng = np.random.default_rng(args.seed)
    potential = OpenMMPotential(ReferenceDataset.load(args.data[0]).system(), platform="CPU")

    def energy_and_forces(frame: np.ndarray) -> tuple[float, np.ndarray]:
        energies, forces = potential.energy_and_forces(torch.as_tensor(frame[None]))
        return float(energies[0]), forces[0].numpy()

    kept = {name: [] for name in ("positions", "forces", "energies", "open_positions", "open_energies", "sizes",
                                  "open_distances", "distances")}
    frames = spaced_frames(prepared, args.data, args.frames)
    squeezer = Squeezer.of_model(prepared, load_model(args.model)) if args.model else \
        Squeezer.of_splitting(prepared, args.splitting, args.step / 1000.0) if args.splitting else None
    how = f"squeezed by {squeezer.name}" if squeezer else f"rigidly (AMOEBA's rise at most {args.max_rise:g} kJ/mol)"
    log(f"pressing a cluster in each of {len(frames)} frames, {how}")
    blown = 0
    for number, frame in enumerate(frames):
        size = int(rng.choice(args.sizes))
        group = compact_cluster(frame[oxygens], int(rng.integers(len(molecules))), size, box)
        opened = mean_oxygen_distance(frame, group, oxygens, box)
        open_energy = energy_and_forces(frame)[0]
        target = float(rng.uniform(args.shortest, opened if squeezer is None else args.longest))
        for _ in range(1 if squeezer else args.attempts):  # a rigid press too costly is halved
            if squeezer is None:
                positions = pressed(frame, group, molecules, oxygens, box, np.array([target]))[0]
            else:
                positions = squeezer.squeeze(frame, group, oxygens, (opened, target), args.time,
                                             args.seed * 100000 + number)
                if positions is None:
                    blown += 1
                    log(f"frame {number}: the squeeze of {size} waters towards {target:.3f} nm blew up")
                    break
            energy, forces = energy_and_forces(positions)
            if squeezer or energy - open_energy <= args.max_rise:
                reached = mean_oxygen_distance(positions, group, oxygens, box)
                for name, value in zip(kept, (positions, forces, energy, frame, open_energy, size, opened, reached)):
                    kept[name].append(value)
                break
            target = 0.5 * (target + opened)
        if (number + 1) % 100 == 0:
            log(f"{number + 1}/{len(frames)} frames, {len(kept['energies'])} pressed frames kept")
    if not kept["energies"]:
        raise SystemExit(f"no pressed frame was kept ({blown} squeezes blew up); nothing written.")
    arrays = {name: np.array(values) for name, values in kept.items()}
    with atomic_path(args.output, overwrite=True) as path:
        np.savez(path, **arrays, blown=blown)
    rise = arrays["energies"] - arrays["open_energies"]
    log(f"wrote {args.output}: {len(rise)} frames; AMOEBA's rise {rise.mean():+.0f} kJ/mol on average "
        f"({rise.min():+.0f} to {rise.max():+.0f}); mean O-O {arrays['distances'].mean():.3f} nm "
        f"({arrays['distances'].min():.3f} to {arrays['distances'].max():.3f})"
        + (f"; {blown} squeezes blew up" if squeezer else ""))


def read_pressed(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions, force-field forces and energies of a ``press`` file, as tensors."""
    arrays = read_arrays(path, ("positions", "forces", "energies"), "pressed-cluster file",
                         "write it with `compressed_clusters.py press`")
    return tuple(torch.as_tensor(arrays[name]) for name in ("positions", "forces", "energies"))


def start_forces(start: KickPotential, q: torch.Tensor, n_heads: int) -> list[torch.Tensor]:
    """Each head's learned forces of the starting model (``start``, a frozen copy of its correction) at ``q``: the
    targets with which :meth:`Trainer.force_matching_loss` holds the tuned model where it was."""
    with torch.no_grad():
        return [start.learned_forces(q, head) for head in range(n_heads)]


def tune_command(args: argparse.Namespace) -> None:
    """Fine-tune a model on its training data and the pressed frames."""
    torch.set_num_threads(1)
    model = load_model(args.model)
    data = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.data])
    trainer = trainer_from_model(model, data, args.learning_rate)
    pressed_q, pressed_f = (torch.cat(parts) for parts in zip(*(read_pressed(path)[:2] for path in args.pressed)))
    held_out = read_pressed(args.held_out) if args.held_out else None
    rng = np.random.default_rng(model.metadata.recipe["options"]["seed"])
    validation = trainer.windows(0, trainer.validation_segments, 64)
    start = KickPotential(copy.deepcopy(trainer.network), None, trainer.box)
    validation_start_forces = start_forces(start, validation[0][:, 0], trainer.n_heads)

    def report(label: str) -> None:
        q, _, forces, energies = validation
        text = f"{label}: validation frames {errors_text(trainer.surrogate_errors(q[:, 0], forces, energies))}"
        with torch.no_grad():
            moved = float(trainer.force_matching_loss(q[:, 0], forces, validation_start_forces)) ** 0.5
        text += f", off the starting model's forces {moved:.4f}"
        if held_out is not None:
            text += f"; held-out pressed frames {errors_text(trainer.surrogate_errors(*held_out))}"
        log(text)

    report("before")
    for iteration in range(1, args.iterations + 1):
        q, _, forces, _ = trainer.windows(0, trainer.train_segments, args.batch_size)
        pick = torch.as_tensor(rng.choice(len(pressed_q), min(args.batch_size, len(pressed_q)), replace=False))
        targets = start_forces(start, q[:, 0], trainer.n_heads) if args.keep_start_forces else None
        loss = trainer.force_matching_loss(q[:, 0], forces, targets) \
            + args.pressed_weight * trainer.force_matching_loss(pressed_q[pick], pressed_f[pick])
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        if iteration % args.report_every == 0 or iteration == args.iterations:
            report(f"iteration {iteration}")
    meta = dataclasses.replace(model.metadata, system_name=f"{model.metadata.system_name}, tuned on compressed "
                               f"clusters", recipe=dict(model.metadata.recipe, compressed_clusters={
                                   "command": " ".join(sys.argv), "from": model.path.name}))
    log(f"wrote {export_model(copy.deepcopy(trainer.network).float(), meta, args.output, overwrite=True)}")


def rate_command(args: argparse.Namespace) -> None:
    """Tabulate U's and each model's W's rise over pressed frames, by size and by U's rise."""
    torch.set_num_threads(1)
    prepared = amoeba_water(64, 0.6)
    arrays = read_arrays(args.pressed, ("positions", "energies", "open_positions", "open_energies", "sizes"),
                         "pressed-cluster file", "write it with `compressed_clusters.py press`")
    rise = {"AMOEBA U": arrays["energies"] - arrays["open_energies"]}
    pressed_frames, open_frames = (FrameEnergies(prepared, arrays[name]) for name in ("positions", "open_positions"))
    for path in args.models:
        model = load_model(path)
        log(f"W of {model.path.stem}")
        rise[model.path.stem] = pressed_frames.kick_potential(model) - open_frames.kick_potential(model)
    edges = np.array(args.bins)
    lines = [f"Pressed clusters of {Path(args.pressed).name}: the rise (kJ/mol) of AMOEBA's U and of each model's kick "
             f"potential W from the unpressed frame, mean ± s.e. over the frames whose U rises within each bin, with "
             f"the RMS of W's rise minus U's; wells: frames W rates below the unpressed one where U rises by more "
             f"than {edges[0]:g}.", ""]
    bins = list(zip(edges[:-1], edges[1:]))
    for size in sorted(set(arrays["sizes"].tolist())):
        of_size = arrays["sizes"] == size
        selections = [of_size & (rise["AMOEBA U"] > low) & (rise["AMOEBA U"] <= high) for low, high in bins]
        charged = of_size & (rise["AMOEBA U"] > edges[0])
        lines += [f"**{size} waters** ({int(of_size.sum())} frames)", "",
                  "| U's rise | " + " | ".join(f"{low:g} to {high:g} ({int(select.sum())})"
                                                for (low, high), select in zip(bins, selections)) + " | wells |",
                  "|---|" + "---|" * (len(bins) + 1)]
        for name, values in rise.items():
            cells = []
            for select in selections:
                part = values[select]
                cell = f"{part.mean():+.0f} ± {part.std(ddof=1) / np.sqrt(len(part)):.0f}" if len(part) > 1 else ""
                if cell and name != "AMOEBA U":
                    cell += f" (RMS {np.sqrt(((part - rise['AMOEBA U'][select]) ** 2).mean()):.0f})"
                cells.append(cell)
            wells = "" if name == "AMOEBA U" else f"{int((values[charged] < 0).sum())}/{int(charged.sum())}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {wells} |")
        lines.append("")
    output = Path(args.output)
    emit("\n".join(lines), output)
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, values in rise.items():
        if name != "AMOEBA U":
            axes.scatter(rise["AMOEBA U"], values, s=8, label=name)
    span = [min(0.0, rise["AMOEBA U"].min()), rise["AMOEBA U"].max()]
    axes.plot(span, span, color="black", lw=1, label="W = U")
    axes.set_xlabel("AMOEBA U's rise (kJ/mol)")
    axes.set_ylabel("kick potential W's rise (kJ/mol)")
    axes.set_title(Path(args.pressed).name, fontsize=9)
    axes.legend(fontsize=7)
    save_figure(figure, output.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    press = commands.add_parser("press", help="build and label pressed-cluster frames")
    press.add_argument("data", nargs="+", help="reference datasets of the 64-water AMOEBA box")
    press.add_argument("--output", required=True)
    press.add_argument("--frames", type=int, default=1024, help="frames to press a cluster in")
    press.add_argument("--sizes", type=int, nargs="+", default=[3, 4], help="waters per cluster (drawn evenly)")
    press.add_argument("--shortest", type=float, default=0.225, help="least mean O-O distance to press to (nm)")
    press.add_argument("--max-rise", type=float, default=300.0,
                       help="keep a pressed frame only if AMOEBA's energy rises by at most this (kJ/mol)")
    press.add_argument("--attempts", type=int, default=4, help="presses tried per frame, each half the last")
    press.add_argument("--model", help="squeeze each cluster by this model's own Langevin dynamics, its mean O-O "
                       "distance restrained to at most a distance drawn from --shortest to --longest")
    press.add_argument("--splitting", help="squeeze instead by this classical splitting on the data's force field "
                       "(the control)")
    press.add_argument("--step", type=float, default=12.0, help="fs, with --splitting")
    press.add_argument("--longest", type=float, default=0.27, help="with --model or --splitting (nm)")
    press.add_argument("--time", type=float, default=0.6, help="ps of each squeeze, with --model or --splitting")
    press.add_argument("--seed", type=int, default=1, help="at least 1: squeeze n's Langevin seed is 100000 seed + n, "
                       "and OpenMM draws a fresh random seed for 0")
    tune = commands.add_parser("tune", help="fine-tune a model on its data and pressed frames")
    tune.add_argument("model")
    tune.add_argument("--data", nargs="+", required=True, help="the model's training datasets")
    tune.add_argument("--pressed", nargs="+", required=True, help="press files")
    tune.add_argument("--held-out", help="a press file of other frames, whose force error is logged")
    tune.add_argument("--iterations", type=int, default=400)
    tune.add_argument("--learning-rate", type=float, default=3e-4)
    tune.add_argument("--pressed-weight", type=float, default=1.0)
    tune.add_argument("--keep-start-forces", action="store_true",
                      help="match the starting model's forces on the training frames instead of the force field's: "
                           "W then holds on the liquid and moves where the pressed frames pull it")
    tune.add_argument("--batch-size", type=int, default=8, help="frames per batch of each term")
    tune.add_argument("--report-every", type=int, default=50)
    tune.add_argument("--output", required=True)
    rate = commands.add_parser("rate", help="compare U's and W's rise over pressed held-out clusters")
    rate.add_argument("models", nargs="+")
    rate.add_argument("--pressed", required=True, help="a press file of frames no model was tuned on")
    rate.add_argument("--bins", type=float, nargs="+", default=[25, 100, 200, 400],
                      help="edges of the bins of AMOEBA's rise (kJ/mol)")
    rate.add_argument("--output", default="results/compressed-clusters/rate.md")
    args = parser.parse_args()
    if args.command == "press" and args.model and args.splitting:
        parser.error("give --model or --splitting, not both")
    if args.command == "press" and args.seed < 1:
        parser.error(f"--seed {args.seed}: give a seed of at least 1, so that every squeeze repeats")
    for size in getattr(args, "sizes", []):
        if size < 2:
            raise SystemExit(f"--sizes {size}: a cluster needs at least two waters.")
    {"press": press_command, "tune": tune_command, "rate": rate_command}[args.command](args)


if __name__ == "__main__":
    main()
