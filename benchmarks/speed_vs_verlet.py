"""Learned integrators against Verlet and HMR on alanine dipeptide: simulated ps per second, side by side.

Rows (one platform, the same run, interleaved rounds, best round kept):

- flexible: a learned S2 model at its step (4 fs) against VerletIntegrator at 0.5 fs and 1 fs;
- HBonds: a learned T3 model at its step (8 fs) against VerletIntegrator at 2 fs and LangevinMiddleIntegrator
  at 4 fs with hydrogen-mass repartitioning (1.5 amu).

Usage::

    python benchmarks/speed_vs_verlet.py --s2-model models/alanine-s2-4fs.pt --t3-model models/alanine-t3-8fs.pt \\
        [--seconds 2] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch
import openmm as mm
import openmm.unit as u

from integrator_overhead import TEMPERATURE, make_runner, time_run
from openmm_actionml.examples import build_example
from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
from openmm_actionml.modelfile import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s2-model", required=True, help="learned model for flexible alanine dipeptide")
    parser.add_argument("--t3-model", required=True, help="learned model for alanine dipeptide with HBonds")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU platform and torch threads")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform (default CPU; on 22 atoms Reference is "
                        "faster, as the CPU platform's per-step thread overhead dominates)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    properties = {"Threads": str(args.threads)}
    flexible = build_example("alanine-dipeptide")
    hbonds = build_example("alanine-dipeptide", constraints="HBonds")
    hmr = build_example("alanine-dipeptide", constraints="HBonds", hydrogen_mass=1.5)
    s2, t3 = load_model(args.s2_model), load_model(args.t3_model)
    rows = {
        f"learned {s2.metadata.get_splitting().name} {s2.metadata.step * 1000:g} fs (flexible)":
            (ActionMLIntegrator(s2), add_learned_force(flexible.system, s2), flexible.positions,
             s2.metadata.get_splitting().evaluations_per_step / (s2.metadata.step * 1000)),
        "Verlet 0.5 fs (flexible)": (mm.VerletIntegrator(0.5 * u.femtoseconds), flexible.system, flexible.positions, 2.0),
        "Verlet 1 fs (flexible)": (mm.VerletIntegrator(1.0 * u.femtoseconds), flexible.system, flexible.positions, 1.0),
        f"learned {t3.metadata.get_splitting().name} {t3.metadata.step * 1000:g} fs (HBonds)":
            (ActionMLIntegrator(t3), add_learned_force(hbonds.system, t3), hbonds.positions,
             t3.metadata.get_splitting().evaluations_per_step / (t3.metadata.step * 1000)),
        "Verlet 2 fs (HBonds)": (mm.VerletIntegrator(2.0 * u.femtoseconds), hbonds.system, hbonds.positions, 0.5),
        "LangevinMiddle 4 fs, HMR 1.5 amu (HBonds)": (mm.LangevinMiddleIntegrator(
            TEMPERATURE * u.kelvin, 1 / u.picosecond, 4 * u.femtoseconds), hmr.system, hmr.positions, 0.25),
    }
    contexts = [make_runner(mm.XmlSerializer.clone(system), integrator, positions, properties, args.platform)
                for integrator, system, positions, _ in rows.values()]  # kept alive while timing
    best = {name: (0.0, 0.0) for name in rows}
    for _ in range(args.rounds):
        for name, (integrator, *_rest) in rows.items():
            wall, cpu = time_run(integrator, args.seconds)
            best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
    del contexts  # the integrators are usable only while their contexts live
    print(f"alanine dipeptide, {args.platform} platform, {args.threads} thread(s), best of {args.rounds} x "
          f"{args.seconds:g} s\n")
    print("| integrator | evaluations per fs | ps per wall second | ps per CPU second |")
    print("|---|---|---|---|")
    for name, (*_rest, evaluations) in rows.items():
        print(f"| {name} | {evaluations:.3g} | {best[name][0]:.2f} | {best[name][1]:.2f} |")


if __name__ == "__main__":
    main()
