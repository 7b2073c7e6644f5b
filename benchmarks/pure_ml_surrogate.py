"""Pure ML: force-match a surrogate W to the force field, then judge T3 with W alone on NVE ensembles.

The kicks use the learned W only (the force field is used for the data, the force-matching target and the true
energy). Prints the surrogate's relative force error on held-out frames as training goes, then the NVE gate's
figures at each requested step, against the classical T3 on the true force field from the same starts.

Usage::

    python benchmarks/pure_ml_surrogate.py DATA [DATA ...] [--iterations 5000] [--steps 4,8] [--trajectories 16]
"""
from __future__ import annotations

import argparse
import time

import torch

from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.kicks import KickPotential
from openmm_actionml.nve_gate import GateOptions, run_gate
from openmm_actionml.splitting import SplittingStepper, get_splitting
from openmm_actionml.training import Trainer, TrainingOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="+")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", default="128,128")
    parser.add_argument("--steps", default="4,8", help="fs, comma-separated")
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--time", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.dataset])
    options = TrainingOptions(step=0.008, anchored=False, force_matching=1.0, pretrain_iterations=args.iterations,
                              pretrain_batch_size=args.batch_size, learning_rate=3e-3, final_learning_rate=1e-4,
                              network={"hidden": [int(x) for x in args.hidden.split(",")]}, curriculum=(1,))
    trainer = Trainer(dataset, dataset.system(), options)
    started = time.monotonic()
    for iteration in range(1, args.iterations + 1):
        q, _ = trainer.windows(0, trainer.train_segments, args.batch_size)
        trainer.optimizer.zero_grad()
        loss = trainer.force_matching_loss(q[:, 0])
        loss.backward()
        trainer.optimizer.step()
        trainer.scheduler.step()
        if iteration % 500 == 0:
            print(f"iteration {iteration}: relative force error {trainer.validation_force_loss() ** 0.5:.2%} "
                  f"(held-out frames), {time.monotonic() - started:.0f} s", flush=True)
    gate = GateOptions(n_trajectories=args.trajectories, duration=args.time)
    q, v = trainer.windows(0, trainer.validation_segments, args.trajectories)
    energy = lambda x: trainer.potential.energy_and_forces(x)[0]  # noqa: E731
    print("\n| W | step | stable | drift (kT/DOF/ns) | E RMS (kJ/mol) | T (K) | per element (K) |")
    print("|---|---|---|---|---|---|---|")
    for step_fs in [float(x) for x in args.steps.split(",")]:
        for name, kicks in (("surrogate (pure ML)", KickPotential(trainer.network, None)),
                            ("force field (classical)", KickPotential(None, trainer.reference_forces))):
            stepper = SplittingStepper(get_splitting("T3"), step_fs / 1000.0, trainer.masses, kicks, trainer.constraints)
            result = run_gate(stepper, energy, q[:, 0], v[:, 0], dataset.temperature, gate, dataset.elements)
            print(f"| {name} | {step_fs:g} fs | {result.table_cells()} |", flush=True)


if __name__ == "__main__":
    main()
