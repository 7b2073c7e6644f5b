"""Fine-tune a surrogate on its own thermostatted ensemble, labelled by the force field it stands in for.

A baseline model (``W = B + dW``, trained with ``actionml train --baseline-forcefield``) samples W's ensemble, not
V's, and a network's force error can move that ensemble where V's own data never goes: the first-order check
(``actionml check``) reads V's frames only and misses it. This experiment closes the loop in rounds. Each round

1. samples the current model's own Langevin ensemble (its integrator with a thermostat, 1/ps) from ``--starts``,
   ``--trajectories`` runs of ``--time`` ps after ``--burn-in`` ps, one frame every ``--sample-interval`` fs;
2. labels those frames with V (energies and forces) and adds them to a pool of own frames;
3. fine-tunes the network (Adam, ``--iterations`` at ``--learning-rate``) on the sum of
   - force matching on the training data (``--data``, as ``actionml train`` ties it),
   - ``--own-force-matching`` times force matching on the pooled own frames,
   - ``--energy-matching`` times the variance of ``W - V`` over a batch of training frames together with own
     frames (``Trainer.energy_matching_loss``): a W lower, relative to V, where it samples than where V samples is
     what moves its ensemble, and this term sees both,
   - ``--relative-entropy`` times the relative-entropy gradient ``(<W>_V - <W>_own) / kT`` (frames of
     ``--reference-data`` against own frames reweighted to the current W), the textbook route to a potential
     whose ensemble is V's;

and writes the round's model. The log gives, per round, V's mean over the own frames against its mean over the
reference data (the own liquid's excess energy; noisy, a guide only) and the force errors. Judge the models with
``amoeba_water.py --thermalise`` (their own ensembles against V's, as for every surrogate).

Usage::

    python benchmarks/refine_on_own_samples.py MODEL --data D1.npz [D2.npz ...] --starts STARTS.npz
        [--reference-data D1.npz] [--rounds 4] [--iterations 150] [--learning-rate 1e-4] [--own-force-matching 1]
        [--energy-matching 0] [--relative-entropy 0] [--trajectories 4] [--time 10] [--burn-in 2]
        [--sample-interval 240] [--batch-size 8] [--platform CPU] --output OUT.pt

``OUT-r1.pt`` ... ``OUT-rN.pt`` are the rounds' models; ``--starts`` is a starts file as ``amoeba_water.py``
keeps them (e.g. the model's own thermalised starts).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import numpy as np
import openmm as mm
import openmm.unit as u

from benchmark_log import log
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.ensemble import Starts, read_starts
from openmm_actionml.ensemble_check import kick_weights
from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
from openmm_actionml.modelfile import ActionMLModel, export_model, load_model
from openmm_actionml.platforms import create_context
from openmm_actionml.training import Trainer, TrainingOptions
from openmm_actionml.units import BOLTZMANN


def trainer_from_model(model: ActionMLModel, data: ReferenceDataset, learning_rate: float) -> Trainer:
    """A :class:`Trainer` with the model's recipe on ``data``, its network holding the model's parameters, and Adam
    at a constant ``learning_rate``."""
    options = dict(model.metadata.recipe["options"], learning_rate=learning_rate, final_learning_rate=learning_rate)
    trainer = Trainer(data, data.system(), TrainingOptions(**options))
    trainer.network.load_weights(model.network.state_dict())
    return trainer


def errors_text(errors: dict) -> str:
    """:meth:`Trainer.surrogate_errors` as text: "force error 0.1530, energy error 0.1120"."""
    return ", ".join(f"{name} error {value:.4f}" for name, value in errors.items())


def add_sampling_arguments(parser: argparse.ArgumentParser, trajectories: int, sample_interval: float) -> None:
    """The options :func:`own_samples` reads (``--trajectories``, ``--time``, ``--burn-in``, ``--sample-interval``,
    ``--platform``), with these defaults for the first and the fourth."""
    parser.add_argument("--trajectories", type=int, default=trajectories, help="sampling runs per round")
    parser.add_argument("--time", type=float, default=10.0, help="ps sampled per run")
    parser.add_argument("--burn-in", type=float, default=2.0, help="ps of each run before sampling")
    parser.add_argument("--sample-interval", type=float, default=sample_interval,
                        help="fs, a multiple of the model's step")
    parser.add_argument("--platform", default="CPU")


def own_samples(model: ActionMLModel, kick_system: mm.System, temperature: float, starts: Starts, first: int,
                args: argparse.Namespace, seed: int) -> np.ndarray:
    """Positions ``[M, N, 3]`` (nm) of the model's own Langevin ensemble at ``temperature`` (K) on ``kick_system``
    (the force field its kicks add), ``args.trajectories`` runs from starts ``first, first + 1, ...``
    (cyclically); the frames of each run are consecutive."""
    integrator = ActionMLIntegrator(model, temperature=temperature)
    integrator.setRandomNumberSeed(seed)
    context = create_context(add_learned_force(kick_system, model), integrator, args.platform)
    h = model.metadata.step
    every = int(round(args.sample_interval / 1000.0 / h))
    if every < 1 or abs(every * h - args.sample_interval / 1000.0) > 1e-9:
        raise SystemExit(f"--sample-interval {args.sample_interval:g} fs is not a multiple of the model's step "
                         f"({h * 1000:g} fs).")
    frames = []
    for index in range(args.trajectories):
        start = (first + index) % len(starts.positions)
        context.setPositions(starts.positions[start])
        context.setVelocities(starts.velocities[start])
        integrator.step(int(round(args.burn_in / h)))
        for _ in range(int(round(args.time / h)) // every):
            integrator.step(every)
            frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer))
    return np.array(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", nargs="+", required=True, help="the model's training datasets (force matching)")
    parser.add_argument("--reference-data", nargs="+", help="datasets of V's own ensemble (relative entropy and the "
                        "excess energy's reference; default: the first --data)")
    parser.add_argument("--starts", required=True, help="starts file of the sampling runs")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=150, help="Adam iterations per round")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--own-force-matching", type=float, default=1.0)
    parser.add_argument("--energy-matching", type=float, default=0.0)
    parser.add_argument("--relative-entropy", type=float, default=0.0)
    add_sampling_arguments(parser, trajectories=4, sample_interval=240.0)
    parser.add_argument("--batch-size", type=int, default=8, help="frames per batch of each term")
    parser.add_argument("--output", required=True, help="OUT.pt: the rounds' models are OUT-r1.pt, ...")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    if not model.metadata.baseline:
        raise SystemExit(f"{model.path.name} has no baseline force field; this experiment refines baseline models.")
    data = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.data])
    reference = ReferenceDataset.concatenate([ReferenceDataset.load(path)
                                              for path in (args.reference_data or args.data[:1])])
    if reference.potential_energies is None:
        raise SystemExit("the reference data store no potential energies; generate them with `actionml generate`.")
    trainer = trainer_from_model(model, data, args.learning_rate)
    starts = read_starts(args.starts, "give a starts file written by amoeba_water.py.")
    weights = torch.as_tensor(kick_weights(model))
    kT = BOLTZMANN * data.temperature
    box = None if data.box is None else torch.as_tensor(data.box, dtype=torch.float64)
    reference_frames = torch.as_tensor(reference.positions[:, ::10].reshape(-1, data.n_atoms, 3))
    reference_energy = float(reference.potential_energies.mean())
    rng = np.random.default_rng(model.metadata.recipe["options"]["seed"])
    stem = Path(args.output).with_suffix("")
    meta = dataclasses.replace(model.metadata, system_name=f"{model.metadata.system_name}, refined on its own "
                               f"samples", recipe=dict(model.metadata.recipe, refinement={
                                   "command": " ".join(sys.argv), "from": model.path.name}))

    def kick_energy(q: torch.Tensor) -> torch.Tensor:
        """The learned part of the step's kick potential, sum_k w_k dW_k, at ``q[B, N, 3]``."""
        return trainer.network(q, None if box is None else box.expand(len(q), 3, 3)) @ weights

    def batch(count: int, total: int) -> torch.Tensor:
        return torch.as_tensor(rng.choice(total, min(count, total), replace=False))

    pool = []  # (positions, V's energies, V's forces) of each round's own frames
    current = model
    for round_index in range(args.rounds + 1):
        log(f"round {round_index}: sampling {args.trajectories} x {args.time:g} ps of {current.path.name}")
        frames = torch.as_tensor(own_samples(current, trainer.kick_system, data.temperature, starts,
                                             round_index * args.trajectories, args, seed=100 + round_index))
        energies, forces = trainer.potential.energy_and_forces(frames)
        per_run = energies.reshape(args.trajectories, -1).mean(1).numpy()
        log(f"round {round_index}: {len(frames)} own frames, V's excess over the reference data "
            f"{float(energies.mean()) - reference_energy:+.1f} ± {per_run.std(ddof=1) / np.sqrt(len(per_run)):.1f} "
            f"kJ/mol, on them {errors_text(trainer.surrogate_errors(frames, forces, energies))}")
        if round_index == args.rounds:
            break
        pool.append((frames, energies, forces))
        own_q, own_e, own_f = (torch.cat(parts) for parts in zip(*pool))
        with torch.no_grad():
            sampled_with = kick_energy(frames)
        for _ in range(args.iterations):
            q, _, data_forces, data_energies = trainer.windows(0, trainer.train_segments, args.batch_size)
            pick = batch(args.batch_size, len(own_q))
            loss = trainer.force_matching_loss(q[:, 0], data_forces)
            if args.own_force_matching > 0:
                loss = loss + args.own_force_matching * trainer.force_matching_loss(own_q[pick], own_f[pick])
            if args.energy_matching > 0:
                loss = loss + args.energy_matching * trainer.energy_matching_loss(
                    torch.cat([q[:, 0], own_q[pick]]), torch.cat([data_energies, own_e[pick]]))
            if args.relative_entropy > 0:
                pick_v = batch(4 * args.batch_size, len(reference_frames))
                pick_w = batch(4 * args.batch_size, len(frames))
                own_energy = kick_energy(frames[pick_w])
                with torch.no_grad():  # the last samples, reweighted from the W they were drawn with to the current
                    reweight = torch.softmax(-(own_energy - sampled_with[pick_w]) / kT, 0)
                loss = loss + args.relative_entropy * (kick_energy(reference_frames[pick_v]).mean()
                                                       - (reweight * own_energy).sum()) / kT
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
        q, _, data_forces, data_energies = trainer.windows(0, trainer.validation_segments, 64)
        errors = trainer.surrogate_errors(q[:, 0], data_forces, data_energies)
        log(f"round {round_index}: validation {errors_text(errors)}")
        path = export_model(trainer.network, meta, f"{stem}-r{round_index + 1}.pt", overwrite=True)
        current = load_model(path)
    log(f"done: {current.path}")


if __name__ == "__main__":
    main()
