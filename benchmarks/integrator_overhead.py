"""What ActionMLIntegrator costs, against classical integrators, on alanine dipeptide (CPU platform, one run).

Rows, all on the same vacuum amber14 alanine dipeptide (22 atoms, no cutoff):

- ``T3 8 fs, untrained network``: ActionMLIntegrator with an untrained anchored model (dW = 0, but the network
  of ``openmm_actionml.network`` is still evaluated through the TorchForce), HBonds, with and without
  first-same-as-last reuse of the last kick's forces;
- ``T3 8 fs, null network``: the same with a network that returns zero without computing anything, so the row
  shows the integrator's own overhead (CustomIntegrator program, TorchForce calls, autograd of the adapter);
- ``Verlet 2 fs``: ``openmm.VerletIntegrator``, HBonds;
- ``LangevinMiddle HMR 4 fs``: ``openmm.LangevinMiddleIntegrator``, HBonds, hydrogen mass 1.5 amu.

Each configuration is timed ``--rounds`` times, interleaved, and the best round is reported, both per wall second
and per CPU second of this process (the latter is robust to other load on a shared machine; with ``--threads 1``
the two agree on an idle one). Prints a markdown table. Usage::

    python benchmarks/integrator_overhead.py [--seconds 2] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import openmm as mm
import openmm.unit as u

from openmm_actionml.examples import build_example
from openmm_actionml.integrator import ActionMLIntegrator, add_learned_force
from openmm_actionml.modelfile import ModelMetadata, export_model, load_model
from openmm_actionml.network import build_network
from openmm_actionml.splitting import get_splitting

TEMPERATURE = 300.0


class NullNetwork(torch.nn.Module):
    """dW = 0 for two heads at (almost) no cost."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, q: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
        return self.scale * q.sum((1, 2)).unsqueeze(1).expand(q.shape[0], 2)


def anchored_model(prepared, network: torch.nn.Module, path: Path, step: float, periodic: bool = False):
    """An anchored T3 model binding ``network`` (dW) to the prepared System."""
    system = prepared.system
    constraints = [[i, j, d.value_in_unit(u.nanometer)]
                   for i, j, d in (system.getConstraintParameters(k) for k in range(system.getNumConstraints()))]
    metadata = ModelMetadata(
        scheme="A", step=step, splitting=get_splitting("T3").to_dict(), anchored=True,
        elements=[atom.element.symbol for atom in prepared.topology.atoms()],
        masses=[system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())],
        constraints=constraints, periodic=periodic, network={}, temperature=TEMPERATURE,
        system_name="benchmark")
    export_model(network, metadata, path)
    return load_model(path)


def make_runner(system: mm.System, integrator: mm.Integrator, positions, properties: dict[str, str],
                platform: str = "CPU"):
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName(platform),
                         properties if platform == "CPU" else {})
    context.setPositions(positions)
    context.applyConstraints(1e-8)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(TEMPERATURE * u.kelvin, 1)
    integrator.step(50)  # warm-up: kernels and TorchScript's profiling executor (slow first calls)
    return context


def time_run(integrator: mm.Integrator, seconds: float) -> tuple[float, float]:
    """Simulated ps per wall second and per CPU second of this process, over about ``seconds``."""
    chunk, steps = 10, 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        integrator.step(chunk)
        steps += chunk
    simulated = steps * integrator.getStepSize().value_in_unit(u.picosecond)
    return simulated / (time.perf_counter() - start), simulated / (time.process_time() - start_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="wall time per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU platform and torch threads")
    args = parser.parse_args()
    properties = {}
    if args.threads:
        torch.set_num_threads(args.threads)
        properties["Threads"] = str(args.threads)

    hbonds = build_example("alanine-dipeptide", constraints="HBonds")
    hmr = build_example("alanine-dipeptide", constraints="HBonds", hydrogen_mass=1.5)
    directory = Path(tempfile.mkdtemp())
    elements = [atom.element.symbol for atom in hbonds.topology.atoms()]
    pairs = [hbonds.system.getConstraintParameters(k)[:2] for k in range(hbonds.system.getNumConstraints())]
    rows: dict[str, tuple[float, Callable[[], mm.Integrator], mm.System, object]] = {}
    for label, network in (("untrained network", build_network(elements, excluded_pairs=pairs)),
                           ("null network", NullNetwork())):
        model = anchored_model(hbonds, network, directory / f"{label.split()[0]}.pt", 0.008)
        learned = add_learned_force(hbonds.system, model)
        rows[f"T3 8 fs, {label}, first same as last"] = (3 / 8, lambda m=model: ActionMLIntegrator(m), learned,
                                                         hbonds.positions)
        rows[f"T3 8 fs, {label}, no reuse"] = (4 / 8, lambda m=model: ActionMLIntegrator(m, first_same_as_last=False),
                                               learned, hbonds.positions)
    rows["Verlet 2 fs"] = (1 / 2, lambda: mm.VerletIntegrator(2 * u.femtoseconds), hbonds.system, hbonds.positions)
    rows["LangevinMiddle HMR 4 fs"] = (1 / 4, lambda: mm.LangevinMiddleIntegrator(
        TEMPERATURE * u.kelvin, 1 / u.picosecond, 4 * u.femtoseconds), hmr.system, hmr.positions)
    runners = {}
    for name, (_, factory, system, positions) in rows.items():
        integrator = factory()
        runners[name] = (integrator, make_runner(mm.XmlSerializer.clone(system), integrator, positions, properties))
    best = {name: (0.0, 0.0) for name in rows}
    for _ in range(args.rounds):
        for name, (integrator, _) in runners.items():
            wall, cpu = time_run(integrator, args.seconds)
            best[name] = (max(best[name][0], wall), max(best[name][1], cpu))

    verlet = best["Verlet 2 fs"][1]
    print(f"alanine dipeptide, CPU platform, threads={args.threads or 'default'}, best of {args.rounds} x "
          f"{args.seconds:g} s\n")
    print("| integrator | force-field evaluations per fs | network evaluations per fs | ps per wall second | "
          "ps per CPU second | vs Verlet 2 fs (CPU time) |")
    print("|---|---|---|---|---|---|")
    for name, (evaluations, *_rest) in rows.items():
        network = evaluations if name.startswith("T3") else 0.0
        wall, cpu = best[name]
        print(f"| {name} | {evaluations:.3f} | {network:.3f} | {wall:.1f} | {cpu:.1f} | {cpu / verlet:.2f} |")
    for label in ("untrained network", "null network"):
        reuse, fresh = best[f"T3 8 fs, {label}, first same as last"][1], best[f"T3 8 fs, {label}, no reuse"][1]
        print(f"\nFirst same as last, {label}: {100 * (reuse / fresh - 1):.0f}% more simulated time per CPU "
              f"second (3 instead of 4 force-field and network evaluations per step).")


if __name__ == "__main__":
    main()
