"""How far classical splittings reach on a constrained system: NVE ensembles at growing steps, from the same starts,
with true and with repartitioned hydrogen masses.

The linearised step (``stability_analysis.py``) bounds every splitting: a palindromic scheme of ``s`` force
evaluations is linearly stable only while ``h omega < 2 s`` for the fastest vibration, and ``s`` Verlet steps of
``h / s`` reach that bound. So three Verlet steps of ``h / 3`` are the three-evaluation scheme with the largest
stability interval, and Verlet at 16/3 fs is the most stable possible three-evaluation scheme at 16 fs. This scan
measures where the nonlinear dynamics actually fail, which the linear bound cannot say:

- velocity Verlet at 2, 4 and 16/3 fs, and at 3 fs (the most stable three-evaluation scheme at 9 and 12 fs);
- T3 (BCSS), the shipped three-stage splitting, at 8, 12 and 16 fs;
- both again with hydrogen-mass repartitioning (``--hydrogen-masses``, amu): HMR slows the hydrogen bends, not
  the heavy-atom stretches (C=O near 1700 cm^-1), and changes the dynamics it is used for (the thermodynamics
  stay the same).

Two tables, sampled every 16 fs and every 12 fs (a sample interval is a multiple of each row's step), each with
its own fine-step reference. Writes ``<output-dir>/every-16fs`` and ``<output-dir>/every-12fs`` (results.md,
results.json, plots) and prints both tables.

Usage::

    python benchmarks/reach_scan.py [--model models/alanine-t3-8fs.pt] [--trajectories 32] [--time 50]
        [--hydrogen-masses 1.5 3.0] [--output-dir results/reach] [--jobs 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import openmm as mm

from benchmark_log import log
from openmm_actionml.ensemble import Candidate, EnsembleOptions, equilibrated_starts, run_ensembles
from openmm_actionml.evaluate import splitting_candidate, verlet_candidate
from openmm_actionml.examples import build_training_system
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import write_report
from openmm_actionml.systems import with_hydrogen_mass

#: sample interval (ps) -> (Verlet steps, T3 steps, Verlet steps with HMR, T3 steps with HMR), in ps.
GROUPS = {
    0.016: ((0.002, 0.004, 0.016 / 3), (0.008, 0.016), (0.004, 0.016 / 3), (0.016,)),
    0.012: ((0.003,), (0.012,), (0.003,), (0.012,)),
}


def candidates(system: mm.System, hmr_systems: dict[float, mm.System], reference_step: float,
               steps: tuple) -> list[Candidate]:
    """The reference, then Verlet and T3 at ``steps``, then both with each repartitioned System."""
    verlet, t3, verlet_hmr, t3_hmr = steps
    rows = [verlet_candidate(f"reference: Verlet {reference_step * 1000:g} fs", system, reference_step)]
    rows += [verlet_candidate(f"Verlet {h * 1000:.3g} fs", system, h) for h in verlet]
    rows += [splitting_candidate(f"T3 {h * 1000:.3g} fs", system, "T3", h) for h in t3]
    for mass, hmr in hmr_systems.items():
        rows += [verlet_candidate(f"Verlet {h * 1000:.3g} fs + HMR {mass:g} amu", hmr, h) for h in verlet_hmr]
        rows += [splitting_candidate(f"T3 {h * 1000:.3g} fs + HMR {mass:g} amu", hmr, "T3", h) for h in t3_hmr]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/alanine-t3-8fs.pt",
                        help="the system, temperature and reference step come from this model's recipe")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=50.0, help="ps per trajectory")
    parser.add_argument("--hydrogen-masses", type=float, nargs="*", default=[1.5, 3.0])
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--output-dir", default="results/reach")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    model = load_model(args.model)
    prepared = build_training_system(model.metadata.recipe)
    system, temperature = prepared.system, model.metadata.temperature
    reference_step = model.metadata.recipe["dataset_protocol"]["integration_step"]
    hmr_systems = {mass: with_hydrogen_mass(system, prepared.topology, mass) for mass in args.hydrogen_masses}
    log(f"drawing {args.trajectories} starts at {temperature:g} K")
    starts = equilibrated_starts(system, prepared.positions, temperature, args.trajectories, platform=args.platform)
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    tables = []
    for interval, steps in GROUPS.items():
        options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=interval)
        results = run_ensembles(candidates(system, hmr_systems, reference_step, steps), starts, temperature,
                                options, elements, args.platform, log, args.jobs)
        title = (f"Reach of classical splittings, {model.metadata.system_name}: {args.trajectories} x {args.time:g} ps "
                 f"NVE at {temperature:g} K, sampled every {interval * 1000:g} fs ({args.platform})")
        table, _ = write_report(results, Path(args.output_dir) / f"every-{interval * 1000:g}fs", title,
                                {"command": " ".join(sys.argv), "platform": args.platform})
        tables.append(f"## {title}\n\n{table}\n")
    print("\n".join(tables))


if __name__ == "__main__":
    main()
