"""Where a learned step's NVE drift comes from: relaxation into the map's own ensemble, or steady heating.

A symplectic map conserves a modified energy H~ (its shadow Hamiltonian), not the true H. Starts drawn for H are
not in the map's equilibrium: as each trajectory relaxes into the H~ ensemble at fixed H~, the mean of H - H~
changes, and to first order <H> rises by Var(H~ - H) / kT whatever the sign of the map's error. In NVE that
relaxation reads as heating for as long as the modes that carry H~ - H take to exchange energy. This benchmark
tells the two apart. From the same equilibrated force-field starts as ``actionml evaluate``, the learned model and
its classical splitting (dW = 0) each run NVE

- from the force-field starts themselves (``force-field``, the evaluation's protocol), and
- from the same starts after ``--thermalise`` ps of Langevin dynamics with the integrator itself (``own``,
  friction 1/ps), which draws each start from the map's own canonical ensemble,

beside the fine-step reference (Verlet from the force-field starts). A relaxation vanishes from own-ensemble starts
and slows down along a trajectory; steady heating does neither. So besides the usual table (drift fitted after the
burn-in), it prints the drift fitted over each half of the post-burn-in window.

A steady heating may itself be of two kinds: a systematic push, or a random walk in energy (each step's energy
error of either sign, e.g. from a kick potential that is not smooth enough), which heats on average because there
are more states above than below: with a density of states g(E), a walk whose displacements spread as
``V(tau) = 2 D tau`` drifts as ``M(tau) = D tau d ln g / dE``, and ``d ln g / dE = 1 / kT`` at temperature T. The
benchmark therefore measures, after the burn-in, the mean ``M`` and the variance ``V`` of the energy displacements
``E(t + tau) - E(t)`` against the lag, and the share of the rise a random walk explains, ``dV / (2 kT dM)``
between two lags: about 1 for a random walk, about 0 for a push (in ``results.md``; ``energy_growth.png``).

Usage::

    python benchmarks/drift_origin.py MODEL [--trajectories 32] [--time 50] [--thermalise 10]
        [--protocols force-field own] [--seed 1] [--platform Reference] [--output-dir results/drift-origin]
        [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import torch  # before openmm: openmmtorch's plugins need torch's libraries loaded
import numpy as np

from openmm_actionml.diagnostics import EnergyGrowth, degrees_of_freedom_per_atom, energy_drift, energy_growth
from openmm_actionml.ensemble import Candidate, EnsembleOptions, EnsembleResult, equilibrated_starts, \
    run_ensemble, thermalised_starts
from openmm_actionml.evaluate import network_effect, splitting_candidate, verlet_candidate
from openmm_actionml.examples import build_training_system
from openmm_actionml.integrator import ActionMLIntegrator, SplittingIntegrator, add_learned_force
from openmm_actionml.modelfile import load_model
from openmm_actionml.report import save_figure, write_report
from openmm_actionml.systems import constraint_pairs
from openmm_actionml.units import BOLTZMANN


def half_window_drifts(result: EnsembleResult, n_dof: float, temperature: float,
                       burn_in: float) -> list[tuple[float, float]]:
    """Drift (kT/DOF/ns, mean and standard error over stable trajectories) fitted over each half of the
    post-burn-in part of the trajectories."""
    times = result.times
    start = burn_in * times[-1]
    middle = 0.5 * (start + times[-1])
    stable = np.isfinite(result.energies).all(1)
    halves = []
    for low, high in ((start, middle), (middle, times[-1])):
        kept = (times >= low) & (times <= high)
        slopes = np.array([energy_drift(times[kept], energies[kept], n_dof, temperature).slope_kt_per_dof_per_ns
                           for energies in result.energies[stable]])
        halves.append((float(slopes.mean()), float(slopes.std(ddof=1) / np.sqrt(len(slopes)))))
    return halves


def half_window_table(results: list[EnsembleResult], n_dof: float, temperature: float, burn_in: float) -> list[str]:
    """Markdown lines: each row's :func:`half_window_drifts`."""
    lines = [f"Drift over each half of the {100 * (1 - burn_in):.0f} % of each trajectory after the burn-in:", "",
             "| integrator | drift, first half (kT/DOF/ns) | drift, second half |", "|---|---|---|"]
    for result in results:
        first, second = half_window_drifts(result, n_dof, temperature, burn_in)
        lines.append(f"| {result.name} | {first[0]:+.3f} ± {first[1]:.3f} | {second[0]:+.3f} ± {second[1]:.3f} |")
    return lines


def plot_energy_growth(growths: dict[str, EnergyGrowth], temperature: float, path: Path) -> None:
    """Variance of the energy displacements and 2 kT times their mean, against the lag, one colour per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kT = BOLTZMANN * temperature
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (name, growth), colour in zip(growths.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        axis.plot(growth.lags, growth.variance, color=colour, label=f"{name}: V")
        axis.plot(growth.lags, 2 * kT * growth.mean, color=colour, linestyle="--", label=f"{name}: 2kT M")
    axis.set_xlabel("lag (ps)")
    axis.set_ylabel("(kJ/mol)$^2$")
    axis.set_title("energy displacements after the burn-in: a random walk has 2kT M growing as V", fontsize=9)
    axis.legend(fontsize=6)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a scheme-A model file")
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--time", type=float, default=50.0, help="ps of NVE per trajectory")
    parser.add_argument("--thermalise", type=float, default=10.0,
                        help="ps of Langevin dynamics with each integrator itself before its own-ensemble NVE run")
    parser.add_argument("--protocols", nargs="+", choices=("force-field", "own"), default=["force-field", "own"])
    parser.add_argument("--seed", type=int, default=1, help="seed of the equilibrated starts (evaluate's is 1); "
                        "another seed gives another, independent set of starts")
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--output-dir", default="results/drift-origin")
    parser.add_argument("--cache-dir", help="keep each finished trajectory here; a rerun resumes from them")
    args = parser.parse_args()
    torch.set_num_threads(1)
    progress: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)
    model = load_model(args.model)
    meta = model.metadata
    if meta.scheme != "A":
        raise SystemExit(f"{args.model} is a scheme-{meta.scheme} model; this benchmark compares a scheme-A model "
                         f"with its classical splitting.")
    prepared = build_training_system(meta.recipe)
    system, h, temperature = prepared.system, meta.step, meta.temperature
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=h)
    starts = equilibrated_starts(system, prepared.positions, temperature, args.trajectories,
                                 platform=args.platform, seed=args.seed)
    learned_system = add_learned_force(system, model)
    print(f"network is on: one step differs from the classical one by up to "
          f"{network_effect(prepared.system, model, starts, args.platform):.3g} nm/ps", flush=True)
    splitting = meta.get_splitting()
    # (NVE candidate, the same map with its Langevin thermostat)
    maps = [(Candidate(f"{splitting.name} learned {h * 1000:g} fs", h, learned_system,
                       lambda: ActionMLIntegrator(model)),
             lambda: ActionMLIntegrator(model, temperature=temperature)),
            (splitting_candidate(f"{splitting.name} classical (dW = 0) {h * 1000:g} fs", system, splitting, h),
             lambda: SplittingIntegrator(splitting, h, temperature=temperature))]
    reference_step = (meta.recipe.get("dataset_protocol") or {}).get("integration_step") or 0.00025
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    results = [run_ensemble(verlet_candidate(f"reference: Verlet {reference_step * 1000:g} fs, force-field starts",
                                             system, reference_step),
                            starts, temperature, options, elements, args.platform, progress, args.cache_dir)]
    for candidate, thermostatted in maps:
        for protocol in args.protocols:
            if protocol == "own":
                progress(f"{candidate.name}: {args.thermalise:g} ps of its own Langevin dynamics from each start")
                run_starts = thermalised_starts(candidate.system, thermostatted(), starts, args.thermalise,
                                                args.platform, seed=args.seed + 1)
                label = f"{candidate.name}, own-ensemble starts ({args.thermalise:g} ps)"
            else:
                run_starts, label = starts, f"{candidate.name}, force-field starts"
            results.append(run_ensemble(dataclasses.replace(candidate, name=label), run_starts, temperature,
                                        options, elements, args.platform, progress, args.cache_dir))
    title = (f"{model.path.name}: drift from force-field and from own-ensemble starts, {args.trajectories} x "
             f"{args.time:g} ps NVE at {temperature:g} K ({args.platform})")
    output = Path(args.output_dir)
    n_dof = float(degrees_of_freedom_per_atom(starts.masses, constraint_pairs(system), remove_com=True).sum())
    lines = half_window_table(results, n_dof, temperature, options.burn_in)
    growths = {result.name: energy_growth(result.times, result.energies, temperature, options.burn_in)
               for result in results}
    a, b = next(iter(growths.values())).ends
    lags = next(iter(growths.values())).lags
    lines += ["", f"Energy displacements after the burn-in (see the module docstring): mean M and variance V at lags "
              f"{lags[a]:.3g} and {lags[b]:.3g} ps, and the share of the rise a random walk explains, dV / (2 kT dM) "
              f"between them (1: a random walk; 0: a push).", "",
              "| integrator | M (kJ/mol) | V ((kJ/mol)^2) | random-walk share |", "|---|---|---|---|"]
    for name, growth in growths.items():
        lines.append(f"| {name} | {growth.mean[a]:+.3f}, {growth.mean[b]:+.3f} | {growth.variance[a]:.3f}, "
                     f"{growth.variance[b]:.3f} | {growth.walk_share:.2f} ± {growth.walk_share_error:.2f} |")
    notes = "\n".join(lines)
    table, _ = write_report(results, output, title,
                            {"model": str(model.path), "platform": args.platform, "seed": args.seed,
                             "trajectories": args.trajectories, "duration": args.time, "thermalise": args.thermalise,
                             "protocols": args.protocols}, notes)
    plot_energy_growth(growths, temperature, output / "energy_growth.png")
    print(f"# {title}\n\n{table}\n\n{notes}")


if __name__ == "__main__":
    main()
