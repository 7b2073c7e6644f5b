"""NVE ensemble of a trained scheme-A model against its classical splitting (dW = 0), from held-out starts.

Integrates ``--trajectories`` validation frames of the model's dataset for ``--time`` ps with the torch reference
stepper (which the OpenMM integrator reproduces to 1e-6, see tests/test_integrator.py), once with the learned
kicks and once with the classical ones, and prints the NVE gate's figures for both: stable fraction, drift
(kT per degree of freedom per ns, mean and standard error over trajectories), E RMS about the trend and the
kinetic temperature per element. Velocity Verlet at a fine step (``--reference-step``) from the same starts is
the reference row. It also checks that the network is on: the learned and classical first
steps must differ.

Usage::

    python benchmarks/nve_ensemble.py MODEL DATASET [--trajectories 32] [--time 50]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.kicks import KickPotential
from openmm_actionml.modelfile import load_model
from openmm_actionml.nve_gate import GateOptions, run_gate
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.splitting import SplittingStepper, get_splitting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset", nargs="+", help="the model's reference dataset(s)")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=50.0, help="ps per trajectory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reference-step", type=float, default=1.0,
                        help="fs; also run velocity Verlet at this step as the reference row (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    meta = model.metadata
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.dataset])
    system = dataset.system()
    options = meta.recipe.get("options", {})
    _, validation = dataset.split(options.get("validation_fraction", 0.2), options.get("seed", 0))
    q, v = dataset.windows(meta.step, 1, validation)
    pick = np.random.default_rng(args.seed).choice(len(q), args.trajectories, replace=len(q) < args.trajectories)
    q0, v0 = torch.as_tensor(q[pick, 0]), torch.as_tensor(v[pick, 0])
    potential = OpenMMPotential(system, nonfinite="nan")
    forces = None if not meta.anchored else (lambda x: potential.energy_and_forces(x)[1])
    box = None if dataset.box is None else torch.as_tensor(dataset.box)
    constraints = ConstraintSet.from_system(system)
    masses = torch.as_tensor(dataset.masses)
    learned = SplittingStepper(meta.get_splitting(), meta.step, masses,
                               KickPotential(model.network.double(), forces, box), constraints)
    gate = GateOptions(n_trajectories=args.trajectories, duration=args.time, record_every=5)
    reference_gate = GateOptions(n_trajectories=args.trajectories, duration=args.time,
                                 record_every=max(1, int(round(5 * meta.step * 1000 / max(args.reference_step, 1e-9)))))
    rows = {"learned": learned}
    if meta.anchored:
        rows["classical (dW = 0)"] = SplittingStepper(meta.get_splitting(), meta.step, masses,
                                                      KickPotential(None, forces, box), constraints)
        with torch.no_grad():
            difference = (learned.step(q0, v0)[1] - rows["classical (dW = 0)"].step(q0, v0)[1]).abs().max().item()
        if difference == 0.0:
            raise SystemExit("the learned and classical steps are identical: the network is off")
        print(f"network is on: first-step velocities differ by up to {difference:.3g} nm/ps")
    if args.reference_step > 0:
        reference = potential.energy_and_forces
        rows[f"velocity Verlet {args.reference_step:g} fs"] = SplittingStepper(
            get_splitting("VV"), args.reference_step / 1000.0, masses,
            KickPotential(None, lambda x: reference(x)[1], box), constraints)
    print(f"\n{args.model}: {meta.get_splitting().name} at {meta.step * 1000:g} fs, {args.trajectories} x {args.time:g} ps "
          f"NVE from held-out frames\n")
    print("| map | stable | drift (kT/DOF/ns) | E RMS (kJ/mol) | T (K) | per element (K) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, stepper in rows.items():
        started = time.monotonic()
        result = run_gate(stepper, lambda x: potential.energy_and_forces(x)[0], q0, v0, dataset.temperature,
                          reference_gate if name.startswith("velocity Verlet") else gate, dataset.elements)
        print(f"| {name} | {result.table_cells()} | {time.monotonic() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
