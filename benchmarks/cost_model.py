"""Where the time goes, and when a learned long step pays: per-evaluation cost of each example's force field and
of the learned TorchForce on the same system, measured side by side, and the speed against Verlet they imply.

For each system it times, on one platform and thread, interleaved rounds, best kept:

- ``t_FF``: one force evaluation of the force field (``Context.getState(getForces=True)`` after moving one atom,
  so nothing is cached);
- ``t_NN``: one evaluation of the learned force (the default network of ``openmm_actionml.network``, untrained,
  bound to the system, inside the TorchForce adapter) the same way;
- ``t_VV``: one step of OpenMM's VerletIntegrator (force field, integration and bookkeeping).

A T3 step costs three kicks (first same as last): ``3 (t_FF + t_NN)`` anchored, ``3 t_NN`` pure ML, plus the
CustomIntegrator's own overhead, which ``integrator_overhead.py`` measures (tens of microseconds). Against
Verlet at step ``delta`` the implied speed ratio of a learned step ``h`` is ``(h / delta) t_VV / (3 (t_FF + t_NN))``
(anchored) and ``(h / delta) t_VV / (3 t_NN)`` (pure ML). These are predictions from measured parts, labelled as
such; ``run_all.py`` measures whole runs.

Usage::

    python benchmarks/cost_model.py [--platform CPU] [--threads 1] [--seconds 1] [--rounds 3] [--models M.pt ...]
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import openmm as mm
import openmm.app as app
import openmm.unit as u

from integrator_overhead import anchored_model
from openmm_actionml.examples import build_example, build_training_system
from openmm_actionml.integrator import LEARNED_FORCE_GROUP, add_learned_force
from openmm_actionml.modelfile import ACTIVE_PARAMETER, ActionMLModel, load_model
from openmm_actionml.network import build_network
from openmm_actionml.systems import PreparedSystem, constraint_pairs

#: (name, builder, Verlet step in fs the user would run, learned step in fs)
SYSTEMS = [
    ("alanine dipeptide, amber14, vacuum, HBonds", lambda: build_example("alanine-dipeptide", constraints="HBonds"),
     2.0, 8.0),
    ("alanine dipeptide, AMOEBA 2018, vacuum, flexible", lambda: amoeba_alanine(), 0.5, 4.0),
    ("villin, amber14 + OBC2, HBonds", lambda: build_example("villin-obc2"), 2.0, 8.0),
    ("water box (256), flexible TIP3P, PME", lambda: build_example("water-box"), 0.5, 4.0),
    # Goal 3's candidate: rigid water has no vibration, so a long pure-ML step is plausible there (classical T3 at
    # 8 fs errs 0.55 % per step on rigid TIP3P); 16 fs is the step it would need to be taken at.
    ("water box (64), AMOEBA 2018, rigid, PME", lambda: amoeba_water(64), 2.0, 16.0),
]


def amoeba_alanine() -> PreparedSystem:
    """Alanine dipeptide in vacuum with amoeba2018.xml (mutual polarisation, no cutoff)."""
    base = build_example("alanine-dipeptide")
    forcefield = app.ForceField("amoeba2018.xml")
    system = forcefield.createSystem(base.topology, nonbondedMethod=app.NoCutoff, polarization="mutual",
                                     mutualInducedTargetEpsilon=1e-5)
    return PreparedSystem(base.topology, system, base.positions, {"forcefield": ["amoeba2018.xml"]})


def amoeba_water(n_waters: int) -> PreparedSystem:
    """A periodic box of ``n_waters`` rigid AMOEBA 2018 waters: PME with mutual polarisation, 0.6 nm cutoffs."""
    forcefield = app.ForceField("amoeba2018.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, model="tip3p", numAdded=n_waters)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * u.nanometer,
                                     vdwCutoff=0.6 * u.nanometer, polarization="mutual",
                                     mutualInducedTargetEpsilon=1e-5, rigidWater=True)
    return PreparedSystem(modeller.topology, system, modeller.positions, {"forcefield": ["amoeba2018.xml"]})


def seconds_per_call(call: Callable[[], object], seconds: float) -> float:
    """Mean seconds per call of ``call`` over at least ``seconds`` (and three calls)."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        call()
        count += 1
    return (time.perf_counter() - start) / count


def time_forces(context: mm.Context, positions: np.ndarray, groups: set[int], seconds: float) -> float:
    """Seconds per force evaluation of ``groups``, moving one atom by 1e-6 nm each time so nothing is cached."""
    moves = itertools.cycle((-1e-6, 1e-6))

    def evaluate() -> None:
        positions[0, 0] += next(moves)
        context.setPositions(positions)
        context.getState(getForces=True, groups=groups)
    return seconds_per_call(evaluate, seconds)


def default_model(prepared: PreparedSystem, directory: Path) -> ActionMLModel:
    """The default network, untrained (random readout), bound to the system, in a model file."""
    system = prepared.system
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    periodic = system.usesPeriodicBoundaryConditions()
    network = build_network(elements, excluded_pairs=constraint_pairs(system), periodic=periodic, zero_init=False)
    return anchored_model(prepared, network, directory / f"{id(prepared)}.pt", 0.008, periodic=periodic)


def force_field_time(prepared: PreparedSystem, platform: mm.Platform, properties: dict, seconds: float,
                     rounds: int) -> float:
    """Best-of-rounds seconds per evaluation of ``prepared``'s force field alone (no learned force)."""
    positions = np.array(prepared.positions.value_in_unit(u.nanometer))
    context = mm.Context(mm.XmlSerializer.clone(prepared.system), mm.VerletIntegrator(0.001), platform, properties)
    groups = set(range(LEARNED_FORCE_GROUP))
    time_forces(context, positions, groups, 0.0)
    return min(time_forces(context, positions, groups, seconds) for _ in range(rounds))


def measure(prepared: PreparedSystem, model: ActionMLModel, platform: mm.Platform, properties: dict, seconds: float,
            rounds: int, verlet_step: bool = True) -> tuple[float, float, float]:
    """Best-of-rounds seconds per force-field evaluation, learned-force evaluation and Verlet step (NaN unless
    ``verlet_step``, for callers that time whole integrators themselves)."""
    system = prepared.system
    learned = add_learned_force(system, model)
    positions = np.array(prepared.positions.value_in_unit(u.nanometer))
    context = mm.Context(learned, mm.VerletIntegrator(0.001), platform, properties)
    context.setPositions(positions)
    context.setParameter(ACTIVE_PARAMETER, 1.0)
    if verlet_step:
        verlet = mm.VerletIntegrator(0.001)
        verlet_context = mm.Context(mm.XmlSerializer.clone(system), verlet, platform, properties)
        verlet_context.setPositions(positions)
        verlet_context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    best = [np.inf, np.inf, np.inf if verlet_step else np.nan]
    for groups in (set(range(LEARNED_FORCE_GROUP)), {LEARNED_FORCE_GROUP}):
        time_forces(context, positions, groups, 0.0)  # warm-up: TorchScript's profiling executor's slow first calls
    for _ in range(rounds):
        best[0] = min(best[0], time_forces(context, positions, set(range(LEARNED_FORCE_GROUP)), seconds))
        best[1] = min(best[1], time_forces(context, positions, {LEARNED_FORCE_GROUP}, seconds))
        if verlet_step:
            best[2] = min(best[2], seconds_per_call(lambda: verlet.step(1), seconds))
    return best[0], best[1], best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", help="time these model files on their training systems instead of "
                        "the default network on every example")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    platform = mm.Platform.getPlatformByName(args.platform)
    properties = {"Threads": str(args.threads)} if args.platform == "CPU" else {}
    directory = Path(tempfile.mkdtemp())
    print(f"{args.platform} platform, {args.threads} thread(s); best of {args.rounds} rounds\n")
    print("| system | atoms | t_FF (ms) | t_NN (ms) | Verlet step (ms) | Verlet at | learned T3 at | "
          "implied speed vs Verlet, anchored | implied, pure ML |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build, delta, h, model in _cases(args.models, directory):
        prepared = build()
        t_ff, t_nn, t_vv = measure(prepared, model(prepared), platform, properties, args.seconds, args.rounds)
        ratio = h / delta
        print(f"| {name} | {prepared.system.getNumParticles()} | {1e3 * t_ff:.3g} | {1e3 * t_nn:.3g} | "
              f"{1e3 * t_vv:.3g} | {delta:g} fs | {h:g} fs | {ratio * t_vv / (3 * (t_ff + t_nn)):.3g} | "
              f"{ratio * t_vv / (3 * t_nn):.3g} |", flush=True)


def _cases(models: list[str] | None, directory: Path) -> list[tuple]:
    """(name, builder, Verlet step, learned step, model maker) for each row."""
    if not models:
        return [(*row, lambda prepared: default_model(prepared, directory)) for row in SYSTEMS]
    cases = []
    for path in models:
        model = load_model(path)
        delta = 2.0 if model.metadata.constraints else 0.5
        cases.append((f"{Path(path).name} ({model.metadata.system_name})",
                      lambda recipe=model.metadata.recipe: build_training_system(recipe), delta,
                      model.metadata.step * 1000, lambda prepared, model=model: model))
    return cases


if __name__ == "__main__":
    main()
