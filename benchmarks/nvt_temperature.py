"""NVT with a learned model: kinetic temperature per element against the thermostat's target.

Runs ``--trajectories`` independent Langevin (ActionMLIntegrator with temperature) trajectories of ``--time`` ps on
the model's training system and reports, per element, the mean kinetic temperature (constraint-aware degrees of
freedom) with its standard error over trajectories, and the deviation from the target in standard errors.

Usage::

    python benchmarks/nvt_temperature.py MODEL [--trajectories 8] [--time 20] [--temperature 300] [--platform CPU]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from openmm_actionml.examples import build_example
from openmm_actionml.modelfile import load_model
from openmm_actionml.simulate import run_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--time", type=float, default=20.0, help="ps per trajectory")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--example", help="bundled example to run (default: the model's training system)")
    parser.add_argument("--constraints", help="with --example: its constraints (e.g. HBonds)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    system = model.metadata.recipe.get("system") or {"input": args.example, "settings": {}}
    settings = {key: value for key, value in system["settings"].items()
                if key in ("constraints", "hydrogen_mass", "solvent")}
    if args.constraints:
        settings["constraints"] = args.constraints
    prepared = build_example(args.example or system["input"], **settings)
    steps = int(round(args.time / model.metadata.step))
    per_element: dict[str, list[float]] = {}
    for seed in range(args.trajectories):
        _, summary = run_model(prepared, model, steps, temperature=args.temperature, platform=args.platform,
                               seed=seed + 1, report_interval=10, progress=False)
        for element, value in {"all": summary.temperature, **summary.element_temperatures}.items():
            per_element.setdefault(element, []).append(value)
        print(f"trajectory {seed + 1}: {summary.temperature:.1f} K", flush=True)
    print(f"\n{args.model}: {args.trajectories} x {args.time:g} ps NVT at {args.temperature:g} K "
          f"(step {model.metadata.step * 1000:g} fs)\n")
    print("| element | mean T (K) | standard error (K) | deviation (standard errors) |")
    print("|---|---|---|---|")
    for element, values in per_element.items():
        values = np.array(values)
        error = values.std(ddof=1) / np.sqrt(len(values))
        print(f"| {element} | {values.mean():.1f} | {error:.1f} | {(values.mean() - args.temperature) / error:+.1f} |")


if __name__ == "__main__":
    main()
