"""Goal 3 of issue 6, the ensemble side: long steps on rigid AMOEBA water, with its O-O radial distribution function.

AMOEBA (mutual polarisation, PME) is the expensive potential where a pure-ML step can pay. This runs, from the same
equilibrated starts, NVE ensembles of:

- the fine-step reference (velocity Verlet at ``--reference-step``, default 1 fs);
- Verlet at 2 fs (rigid water's usual step) and at 4 fs (hydrogen-mass repartitioning leaves water alone, so
  this row runs natural masses; before 2026-12-06 it was mislabelled "Verlet 4 fs + HMR (H 1.5 amu)");
- the classical T3 splitting on AMOEBA itself at each of ``--t3-steps`` (how far the splitting reaches bounds
  what a surrogate in its kicks can reach), and likewise the two-stage S2 at ``--s2-steps`` and velocity Verlet as
  a splitting at ``--vv-steps`` (both make one evaluation fewer per step than T3, none by default);
- each ``--model`` given (a model of this box whose kicks never call AMOEBA: pure ML, or a learned correction on a
  cheaper baseline water model), and for a baseline model the same splitting on the baseline alone; the energies
  of those rows are measured in AMOEBA too. With ``--thermalise PS`` each model and each splitting on AMOEBA has a
  second row, from the same starts after PS ps of Langevin dynamics (1/ps) with the row's own integrator: NVE
  from AMOEBA's starts relaxes into the model's own ensemble at fixed energy, and this row tells that relaxation
  from a bias of the map; a splitting on AMOEBA's twin tells how far Langevin dynamics at that long step biases the
  ensemble it draws, with AMOEBA's exact forces.

With ``--water-hydrogen-mass AMU`` every row, the reference included, runs on waters whose hydrogens weigh AMU,
taken from their oxygen: the statics (g(r), energies) are the force field's, the librations slower. Each model's
learned potential is a function of positions alone and runs unchanged on those masses; what its training matched
to steps was for natural masses, so its rows judge it anew.

Every row reports the O-O g(r) and its deviation from the reference beside the usual figures. Finished trajectories
are kept in ``--cache-dir``, so that several processes can share the work (``--only``, repeatable, picks the rows
whose names contain one of its texts; ``--reverse`` runs them from the last start, so that two processes meet in
the middle of one row) and a last run writes the table from the cache (any run whose rows include the
reference writes the table of its rows); the speeds in that table come from
one dedicated timed run per row (``--speed-time``), in one process. The side-by-side speed against Verlet is
``speed_vs_verlet.py``'s.

Usage::

    python benchmarks/amoeba_water.py [--model M.pt ...] [--waters 64] [--cutoff 0.6] [--trajectories 8]
        [--time 10] [--reference-time PS] [--sample-interval 48] [--t3-steps 8 12 16] [--s2-steps FS ...]
        [--vv-steps FS ...] [--only TEXT ...]
        [--thermalise PS] [--water-hydrogen-mass AMU] [--reverse] [--cache-dir DIR] [--output-dir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import torch

from benchmark_log import log
from openmm_actionml.ensemble import (Candidate, EnsembleOptions, Starts, equilibrated_starts, resumable_starts,
                                      run_ensemble, thermalised_starts)
from openmm_actionml.evaluate import (hmr_candidate, model_candidate, model_system, splitting_candidate,
                                      verlet_candidate)
from openmm_actionml.examples import build_input
from openmm_actionml.integrator import ActionMLIntegrator, SplittingIntegrator
from openmm_actionml.modelfile import ActionMLModel, load_model
from openmm_actionml.report import write_report
from openmm_actionml.systems import PreparedSystem, particle_masses, with_hydrogen_mass

TEMPERATURE = 300.0
#: ps of Langevin dynamics between starts and before the first: water's structure and velocities decorrelate within
#: a picosecond, and each ps of AMOEBA at 1 fs costs about 40 s on one core here.
START_SPACING, START_EQUILIBRATION = 1.0, 5.0
#: The classical splittings run on AMOEBA itself, each with its option of steps.
CLASSICAL_SPLITTINGS = ("T3", "S2", "VV")


def amoeba_water(n_waters: int, cutoff: float) -> PreparedSystem:
    """The box of ``n_waters`` rigid AMOEBA 2018 waters with a ``cutoff`` nm real-space cutoff, as
    ``actionml generate water-box --forcefield amoeba2018.xml --rigid-water`` builds it."""
    return build_input("water-box", n_waters=n_waters, forcefield=["amoeba2018.xml"], rigid_water=True,
                       nonbonded_cutoff=cutoff)


def classical_row_name(splitting: str, step: float) -> str:
    """The name of the row of a classical ``splitting`` on AMOEBA itself at ``step`` ps."""
    return f"{splitting} on AMOEBA {step * 1000:g} fs"


def candidates(prepared: PreparedSystem, reference_step: float, classical_steps: dict[str, list[float]],
               models: list[ActionMLModel]) -> tuple[list[Candidate], dict[str, ActionMLModel]]:
    """The rows, reference first (see the module docstring), and the model of each model's row by row name;
    ``classical_steps`` gives the steps (ps) of each classical splitting on AMOEBA."""
    system = prepared.system
    rows = [verlet_candidate(f"reference: Verlet {reference_step * 1000:g} fs", system, reference_step),
            verlet_candidate("Verlet 2 fs", system, 0.002), hmr_candidate(prepared)]
    rows += [splitting_candidate(classical_row_name(name, h), system, name, h)
             for name, steps in classical_steps.items() for h in steps]
    for model in models:
        meta = model.metadata
        if meta.baseline:  # what the learned correction adds to: the baseline alone, its energy measured in AMOEBA
            alone = splitting_candidate(f"{meta.get_splitting().name} on {' + '.join(meta.baseline)} alone "
                                        f"{meta.step * 1000:g} fs", model_system(prepared, model).system,
                                        meta.get_splitting(), meta.step)
            if all(row.name != alone.name for row in rows):  # one row per baseline
                rows.append(dataclasses.replace(alone, energy_system=system))
    model_rows = {}
    for model in models:  # named by its file too, so a row's name (and --only) is the same whatever it is run beside
        row = model_candidate(prepared, model)
        row = dataclasses.replace(row, name=f"{row.name} ({model.path.stem})")
        rows.append(row)
        model_rows[row.name] = model
    return rows, model_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="a pure-ML or baseline model of this box "
                        "(repeatable)")
    parser.add_argument("--waters", type=int, default=64)
    parser.add_argument("--cutoff", type=float, default=0.6, help="nm")
    parser.add_argument("--reference-step", type=float, default=1.0, help="fs")
    parser.add_argument("--t3-steps", type=float, nargs="*", default=[8.0, 12.0, 16.0], help="fs")
    parser.add_argument("--s2-steps", type=float, nargs="*", default=[], help="fs")
    parser.add_argument("--vv-steps", type=float, nargs="*", default=[], help="fs")
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--time", type=float, default=10.0, help="ps per trajectory")
    parser.add_argument("--reference-time", type=float, help="ps per trajectory of the reference row (default "
                        "--time): long runs of cheap rows resolve their drift against a shorter, dearer reference")
    parser.add_argument("--sample-interval", type=float, default=48.0, help="fs, a multiple of every step")
    parser.add_argument("--speed-time", type=float, default=1.0, help="ps of each row's timed run")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--thermalise", type=float, help="ps of Langevin dynamics with each model's (and each "
                        "splitting on AMOEBA's) own integrator from each start before a second NVE row of it "
                        "(default: none)")
    parser.add_argument("--water-hydrogen-mass", type=float, help="amu of every water hydrogen, taken from its "
                        "oxygen, in every row and each --model (default: natural masses)")
    parser.add_argument("--only", action="append", help="run only the rows whose names contain this text "
                        "(repeatable), keeping them in the cache")
    parser.add_argument("--reverse", action="store_true", help="run each row's trajectories from the last start to "
                        "the first, so that this process shares the rows with one running them forwards through "
                        "--cache-dir (give --only, without the reference row; the forward run writes the table)")
    parser.add_argument("--cache-dir", default="results/amoeba-water/trajectories")
    parser.add_argument("--output-dir", default="results/amoeba-water")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepared = amoeba_water(args.waters, args.cutoff)
    models = [load_model(path) for path in args.model]
    masses_tag = ""  # in the names of the kept starts, which are drawn with the rows' masses
    if args.water_hydrogen_mass is not None:
        prepared = dataclasses.replace(prepared, system=with_hydrogen_mass(
            prepared.system, prepared.topology, args.water_hydrogen_mass, water=True))
        models = [model.on_masses(particle_masses(prepared.system)) for model in models]
        masses_tag = f"-H{args.water_hydrogen_mass:g}amu"
    for model in models:
        if model.metadata.scheme != "A" or (model.metadata.anchored and not model.metadata.baseline):
            raise SystemExit(f"{model.path.name} calls AMOEBA in its kicks; this benchmark compares scheme-A models "
                             f"that do not (pure ML, or a learned correction on a cheaper baseline force field).")
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time,
                              sample_interval=args.sample_interval / 1000.0, speed_time=args.speed_time, rdf="O-O")
    classical_steps = {name: [h / 1000.0 for h in getattr(args, f"{name.lower()}_steps")]
                       for name in CLASSICAL_SPLITTINGS}
    rows, model_rows = candidates(prepared, args.reference_step / 1000.0, classical_steps, models)
    own_rows = {}  # by row name: (cache tag, thermostatted integrator) of each row run from its own ensemble
    thermostatted = {name: (model.path.stem, functools.partial(ActionMLIntegrator, model, temperature=TEMPERATURE))
                     for name, model in model_rows.items()}
    thermostatted.update({classical_row_name(name, h): (f"{name.lower()}-amoeba-{h * 1000:g}fs", functools.partial(
        SplittingIntegrator, name, h, temperature=TEMPERATURE))
        for name, steps in classical_steps.items() for h in steps})
    for name, own in thermostatted.items() if args.thermalise else ():
        own_name = f"{name}, own-ensemble starts ({args.thermalise:g} ps)"
        own_rows[own_name] = own
        rows.append(dataclasses.replace(next(row for row in rows if row.name == name), name=own_name))
    chosen = [row for row in rows if args.only is None or any(text in row.name for text in args.only)]
    if not chosen:
        raise SystemExit(f"no row's name contains any of {args.only}; the rows are: {', '.join(r.name for r in rows)}")
    if args.reverse and rows[0] in chosen:
        raise SystemExit("--reverse is for a second process sharing rows other than the reference (pick them with "
                         "--only); the forward run reads its trajectories from the cache and writes the table.")
    cache = Path(args.cache_dir)
    log(f"starts: {args.trajectories} at {TEMPERATURE:g} K (kept in {cache})")
    starts = resumable_starts(
        cache / f"starts-{args.trajectories}-{TEMPERATURE:g}K{masses_tag}.npz", lambda: equilibrated_starts(
            prepared.system, prepared.positions, TEMPERATURE, args.trajectories, spacing=START_SPACING,
            equilibration=START_EQUILIBRATION, platform=args.platform, seed=1))
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    reference_time = args.time if args.reference_time is None else args.reference_time
    results = []
    for row in chosen:
        row_options = dataclasses.replace(options, duration=reference_time) if row is rows[0] else options
        row_starts = starts
        if row.name in own_rows:
            tag, make_integrator = own_rows[row.name]
            log(f"{row.name}: {args.thermalise:g} ps of the row's own Langevin dynamics from each start")
            row_starts = resumable_starts(
                cache / f"starts-{args.trajectories}-{TEMPERATURE:g}K{masses_tag}-own-{tag}-{args.thermalise:g}ps.npz",
                lambda: thermalised_starts(row.system, make_integrator(), starts, args.thermalise, args.platform,
                                           seed=2))
        if args.reverse:
            row_starts = Starts(row_starts.positions[::-1], row_starts.velocities[::-1], row_starts.masses)
        log(f"{row.name}: {args.trajectories} x {row_options.duration:g} ps")
        results.append(run_ensemble(row, row_starts, TEMPERATURE, row_options, elements, args.platform, log, cache))
    if chosen[0] is not rows[0]:
        log(f"rows kept in {cache}; a run with the reference row writes the table")
        return
    lengths = f"{args.time:g} ps" + ("" if reference_time == args.time else f" (the reference {reference_time:g} ps)")
    heavy = "" if args.water_hydrogen_mass is None else f", hydrogens of {args.water_hydrogen_mass:g} amu"
    title = (f"Rigid AMOEBA water, {args.waters} molecules (PME, cutoff {args.cutoff:g} nm{heavy}): "
             f"{args.trajectories} x {lengths} NVE at {TEMPERATURE:g} K, sampled every {args.sample_interval:g} fs "
             f"({args.platform})")
    table, _ = write_report(results, args.output_dir, title, {"command": " ".join(sys.argv),
                                                              "models": [str(m.path) for m in models]})
    print(f"## {title}\n\n{table}")


if __name__ == "__main__":
    main()
