"""Learned models against the integrators a user would run instead: simulated ps per second, side by side, and
where the learned step's time goes.

For each model, on its own training system and one platform, the rows of ``actionml evaluate`` that a user would
run (the learned model, as evaluate runs it: a tied force-constant model baked into the System, with no learned
force in its parts; its splitting unlearned, Verlet at the usual steps, Verlet at 4 fs with hydrogen-mass
repartitioning) and, for constrained systems, ``LangevinMiddleIntegrator`` at 4 fs with HMR (1.5 amu), the usual
production choice (on a box of water alone, whose hydrogens repartitioning leaves alone, both rows run natural
masses and their names say so, without "+ HMR"). Rounds are interleaved and the best round of each row kept, so a
noisy machine slows every row alike. Then the parts of one learned step (``cost_model.py``): a force-field
evaluation ``t_FF``, a learned-force evaluation ``t_NN``, and the rest of the measured step, the CustomIntegrator's
own work (constraints, kinetic bookkeeping, context updates). ``t_FF`` and ``t_NN`` are timed through
``Context.getState``, whose own copying is included, so when the evaluations are nearly all of a step the rest can
read a few per cent below zero.

Usage::

    python benchmarks/speed_vs_verlet.py MODEL [MODEL ...] [--platform CPU] [--threads 1] [--seconds 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import sys

import torch
import openmm as mm
import openmm.unit as u

from benchmark_log import emit
from cost_model import force_field_time, measure
from integrator_overhead import TEMPERATURE, make_runner, time_run
from openmm_actionml.evaluate import HMR_STEP, hmr_system, model_system, standard_candidates
from openmm_actionml.examples import build_training_system
from openmm_actionml.force_constant_correction import bakes_into_system
from openmm_actionml.modelfile import ActionMLModel, load_model


def speed_rows(model: ActionMLModel, platform: str, properties: dict, seconds: float, rounds: int) -> str:
    """The markdown section for one model: speeds side by side, then the learned step's parts."""
    if model.metadata.scheme != "A":
        raise SystemExit(f"{model.path.name} is a scheme-{model.metadata.scheme} model: this benchmark splits a "
                         f"scheme-A step into its evaluations (a scheme-B step's count varies with its solver; "
                         f"actionml evaluate reports its speed).")
    prepared = build_training_system(model.metadata.recipe)
    candidates = [c for c in standard_candidates(prepared, model)[1:]  # the fine-step reference is not a choice
                  if not c.name.endswith("(the learned step)")]        # Verlet at h blows up
    rows = {c.name: ((c.speed_integrator or c.make_integrator)(), c.system, c.step) for c in candidates}
    if prepared.system.getNumConstraints():
        system, label = hmr_system(prepared)
        rows[f"LangevinMiddle {HMR_STEP * 1000:g} fs{label}"] = (
            mm.LangevinMiddleIntegrator(TEMPERATURE * u.kelvin, 1 / u.picosecond, HMR_STEP * u.picoseconds),
            system, HMR_STEP)
    contexts = [make_runner(mm.XmlSerializer.clone(system), integrator, prepared.positions, properties, platform)
                for integrator, system, _ in rows.values()]  # kept alive while timing
    best = {name: 0.0 for name in rows}
    for round_ in range(rounds):
        for name, (integrator, _, _) in rows.items():
            best[name] = max(best[name], time_run(integrator, seconds)[0])
        print(f"  round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)
    del contexts
    # The learned kicks' force field is the baseline's for a model with one; the classical rows' is the System's.
    kicks = model_system(prepared, model)
    platform_object = mm.Platform.getPlatformByName(platform)
    t_kick, t_nn, _ = measure(kicks, model, platform_object, properties, seconds, rounds,
                              verlet_step=False)  # Verlet's whole step is a row above
    baseline = model.metadata.baseline
    t_ff = force_field_time(prepared, platform_object, properties, seconds, rounds) if baseline else t_kick

    meta = model.metadata
    splitting = meta.get_splitting()
    learned, classical = candidates[0].name, candidates[1].name
    fastest = max(best, key=best.get)
    lines = [f"## {model.path.name} ({meta.system_name}, {prepared.system.getNumParticles()} atoms)", "",
             "| integrator | step (fs) | ps per wall second | relative to the learned model |", "|---|---|---|---|"]
    for name, (_, _, step) in rows.items():
        lines.append(f"| {name} | {step * 1000:g} | {best[name]:.3g} | {best[name] / best[learned]:.3g} |")
    evaluations = splitting.evaluations_per_step
    step_time = {name: meta.step / best[name] for name in (learned, classical)}
    lines += ["", f"Fastest: {fastest}, {best[fastest] / best[learned]:.3g}x the learned model and "
              f"{best[fastest] / best[classical]:.3g}x its splitting unlearned.", "",
              f"Where a {meta.step * 1000:g} fs {splitting.name} step's time goes ({evaluations} evaluations per step; "
              f"t_FF = {1e3 * t_ff:.3g} ms, "
              + (f"the baseline's t_B = {1e3 * t_kick:.3g} ms, " if baseline else "")
              + f"t_NN = {1e3 * t_nn:.3g} ms per evaluation):", "",
              "| step | measured (ms) | force field | learned force | the rest (integrator) |", "|---|---|---|---|---|",
              _parts(learned, step_time[learned], evaluations * t_kick if meta.anchored else 0.0,
                     0.0 if bakes_into_system(model) else evaluations * t_nn),  # baked: no learned force
              _parts(classical, step_time[classical], evaluations * t_ff, 0.0)]
    return "\n".join(lines) + "\n"


def _parts(name: str, total: float, force_field: float, network: float) -> str:
    share = [100 * part / total for part in (force_field, network, total - force_field - network)]
    return f"| {name} | {1e3 * total:.3g} | {share[0]:.0f} % | {share[1]:.0f} % | {share[2]:.0f} % |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files (each runs on its own training system)")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU platform and torch threads")
    parser.add_argument("--seconds", type=float, default=2.0, help="wall time per row and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", help="also write the markdown here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    properties = {"Threads": str(args.threads)} if args.platform == "CPU" else {}
    header = (f"`python benchmarks/speed_vs_verlet.py {' '.join(sys.argv[1:])}`\n\n{args.platform} platform, "
              f"{args.threads} thread(s); best of {args.rounds} interleaved rounds of {args.seconds:g} s\n")
    sections = [speed_rows(load_model(path), args.platform, properties, args.seconds, args.rounds)
                for path in args.models]
    text = header + "\n" + "\n".join(sections)
    emit(text, args.output)


if __name__ == "__main__":
    main()
