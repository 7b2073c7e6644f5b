"""How far multiple time stepping reaches on a protein: NVE ensembles of r-RESPA (bonded forces in inner Verlet
steps, nonbonded and implicit solvent in the outer kicks) at growing outer steps, beside the schemes of goal 4.

A step of Verlet with hydrogen-mass repartitioning at 4 fs, the NVE form of LangevinMiddle at 4 fs + HMR, costs
one evaluation of the whole force field per 4 fs; classical T3 at 8 fs costs three per 8 fs. Multiple time
stepping evaluates the expensive forces once per outer step, so an outer step above 4 fs would beat HMR at 4 fs
if its dynamics held: the question is how far resonance lets it go
(:mod:`openmm_actionml.multiple_time_step`). Rows, from the same starts:

- the reference (fine-step Verlet), Verlet 2 fs, Verlet 4 fs + HMR and classical T3 at the model's step;
- r-RESPA (``MultipleTimeStepIntegrator("VV", H, n)``) at each ``--outer-steps`` H, with the fewest inner steps
  ``n`` of at most ``--inner-step``, with true and with repartitioned hydrogen masses.

``--only`` (repeatable) keeps the rows whose names contain its text, and the reference.

Writes ``<output-dir>`` (results.md, results.json, plots) and prints the table. The ps/s column is measured side
by side (``--jobs`` processes, one thread each).

Usage::

    OPENMM_CPU_THREADS=1 python benchmarks/mts_reach.py [--model models/villin-t3-8fs.pt] [--trajectories 32]
        [--time 10] [--outer-steps 4 6 8] [--inner-step 2] [--reference-step 1] [--platform CPU] [--jobs 2]
        [--only TEXT ...] [--cache-dir DIR] [--output-dir results/mts-reach]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import openmm as mm

from benchmark_log import log
from openmm_actionml.ensemble import Candidate, EnsembleOptions, equilibrated_starts, run_ensembles
from openmm_actionml.evaluate import HMR_STEP, hmr_system, splitting_candidate, verlet_candidate
from openmm_actionml.examples import build_training_system
from openmm_actionml.modelfile import load_model
from openmm_actionml.multiple_time_step import MultipleTimeStepIntegrator, with_force_groups
from openmm_actionml.report import write_report
from openmm_actionml.systems import PreparedSystem


def mts_candidate(label: str, system: mm.System, outer: float, longest_inner: float) -> Candidate:
    """r-RESPA with a velocity-Verlet outer step of ``outer`` ps and as few equal inner steps as keep each within
    ``longest_inner`` ps; named "r-RESPA <outer> fs (<n> x <inner> fs)<label>"."""
    inner_steps = math.ceil(outer / longest_inner - 1e-9)
    name = f"r-RESPA {outer * 1000:g} fs ({inner_steps} x {outer / inner_steps * 1000:g} fs){label}"
    return Candidate(name, outer, system, lambda: MultipleTimeStepIntegrator("VV", outer, inner_steps))


def candidates(prepared: PreparedSystem, model_step: float, reference_step: float, outer_steps: list[float],
               inner_step: float) -> list[Candidate]:
    """The reference, Verlet 2 fs, Verlet 4 fs + HMR, T3 at the model's step, then r-RESPA at each outer step
    on true and on repartitioned masses."""
    system = prepared.system
    hmr, hmr_label = hmr_system(prepared)
    rows = [verlet_candidate(f"reference: Verlet {reference_step * 1000:g} fs", system, reference_step),
            verlet_candidate("Verlet 2 fs", system, 0.002),
            verlet_candidate(f"Verlet {HMR_STEP * 1000:g} fs{hmr_label}", hmr, HMR_STEP),
            splitting_candidate(f"T3 classical {model_step * 1000:g} fs", system, "T3", model_step)]
    for masses, label in ((system, ""), (hmr, hmr_label)):
        grouped = with_force_groups(masses)
        rows += [mts_candidate(label, grouped, h, inner_step) for h in outer_steps]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/villin-t3-8fs.pt",
                        help="the system, temperature and T3 step come from this model's recipe")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=10.0, help="ps per trajectory")
    parser.add_argument("--outer-steps", type=float, nargs="+", default=[4.0, 6.0, 8.0], help="fs")
    parser.add_argument("--inner-step", type=float, default=2.0, help="the longest inner step (fs)")
    parser.add_argument("--reference-step", type=float, default=1.0, help="fs")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only the rows whose names contain this text (and the "
                        "reference)")
    parser.add_argument("--cache-dir", help="keep finished trajectories here (resumable)")
    parser.add_argument("--output-dir", default="results/mts-reach")
    args = parser.parse_args()
    model = load_model(args.model)
    prepared = build_training_system(model.metadata.recipe)
    temperature, model_step = model.metadata.temperature, model.metadata.step
    outer_steps = [h / 1000 for h in args.outer_steps]
    rows = candidates(prepared, model_step, args.reference_step / 1000, outer_steps, args.inner_step / 1000)
    rows = [row for index, row in enumerate(rows)
            if index == 0 or args.only is None or any(text in row.name for text in args.only)]
    interval = math.lcm(*(round(2000 * row.step) for row in rows)) / 2000  # a whole number of every row's steps
    log(f"drawing {args.trajectories} starts at {temperature:g} K")
    starts = equilibrated_starts(prepared.system, prepared.positions, temperature, args.trajectories,
                                 platform=args.platform)
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=interval)
    results = run_ensembles(rows, starts, temperature, options, elements, args.platform, log, args.jobs,
                            args.cache_dir)
    title = (f"Multiple time stepping on {model.metadata.system_name}: {args.trajectories} x {args.time:g} ps NVE at "
             f"{temperature:g} K, sampled every {interval * 1000:g} fs ({args.platform})")
    table, _ = write_report(results, Path(args.output_dir), title, {"command": " ".join(sys.argv),
                                                                    "platform": args.platform})
    print(f"## {title}\n\n{table}")


if __name__ == "__main__":
    main()
