"""Where one learned-force call's time goes: the network's parts, timed in the model file's own TorchScript.

For each model, on its training system's starting structure and one thread, interleaved rounds, best kept:

- the neighbour search (``network.neighbor_pairs``: all pairs or the cell list, minimum image, exclusions);
- the invariant features (the search plus radial and angular densities, mixing and Gram matrices);
- the energy (features plus the MLP), without gradients;
- energy and forces, as TorchForce calls it (the adapter: forward and one backward pass).

It also counts the pairs within the radial and the angular cutoff, and gives the call's cost per radial pair. The
call inside OpenMM (``t_NN`` of ``cost_model.py``) adds TorchForce's copying to these.

Usage::

    python benchmarks/network_profile.py MODEL [MODEL ...] [--seconds 2] [--rounds 3] [--output profile.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import openmm.unit as u

from benchmark_log import emit
from cost_model import seconds_per_call
from openmm_actionml.examples import build_training_system
from openmm_actionml.modelfile import ActionMLModel, load_model
from openmm_actionml.systems import default_box

PARTS = ("neighbour search", "features", "energy", "energy and forces")


def profile_model(model: ActionMLModel, seconds: float, rounds: int) -> tuple[dict[str, float], int, int]:
    """Best-of-rounds seconds per call of each part in :data:`PARTS`, and the radial and angular pair counts."""
    prepared = build_training_system(model.metadata.recipe)
    adapter = model.module
    network = adapter.network
    dtype = adapter.dtype_probe.dtype
    positions = torch.tensor(np.array(prepared.positions.value_in_unit(u.nanometer)), dtype=dtype)
    box = None
    if model.metadata.periodic:
        box = torch.tensor(default_box(prepared.system), dtype=dtype)
    batch_positions, batch_box = positions.unsqueeze(0), None if box is None else box.unsqueeze(0)
    node, active = torch.ones(1), torch.ones(1)

    def forces() -> object:
        return adapter(positions, node, active) if box is None else adapter(positions, box, node, active)

    def energy() -> object:
        with torch.no_grad():
            return network(batch_positions, batch_box)

    def features() -> object:
        with torch.no_grad():
            return network.features(batch_positions, batch_box)

    calls = dict(zip(PARTS, (lambda: network.neighbor_pairs(batch_positions, batch_box), features, energy, forces)))
    for call in calls.values():
        seconds_per_call(call, 0.0)  # warm-up: TorchScript's profiling executor optimises after the first calls
        seconds_per_call(call, 0.0)
    best = {part: np.inf for part in PARTS}
    for _ in range(rounds):
        for part, call in calls.items():
            best[part] = min(best[part], seconds_per_call(call, seconds))
    _, i, j, shifts = network.neighbor_pairs(batch_positions, batch_box)
    distances = (positions[j] - positions[i] - shifts).norm(dim=-1)
    angular_cutoff = model.metadata.network["angular_cutoff"]
    return best, len(i), int((distances < angular_cutoff).sum())


def markdown(model: ActionMLModel, times: dict[str, float], radial_pairs: int, angular_pairs: int) -> str:
    """One model's section: the parts' times, their increments and shares, the pair counts."""
    config = model.metadata.network
    total = times["energy and forces"]
    lines = [f"## {model.path.name}", "",
             f"{model.metadata.n_particles} particles; cutoffs {config['cutoff']:g} / {config['angular_cutoff']:g} nm: "
             f"{radial_pairs} radial pairs, {angular_pairs} angular; hidden {config['hidden']}, "
             f"{len(config['elements'])} elements in the vocabulary.", "",
             "| part | ms per call (cumulative) | this part alone (ms) | share of the call |", "|---|---|---|---|"]
    previous = 0.0
    for part in PARTS:
        alone = times[part] - previous
        lines.append(f"| {part} | {times[part] * 1e3:.2f} | {alone * 1e3:.2f} | {alone / total:.0%} |")
        previous = times[part]
    lines += ["", f"{total / radial_pairs * 1e6:.2f} microseconds per radial pair for energy and forces.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per part and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = [f"# Where a learned-force call's time goes (one thread, torch {torch.__version__})", ""]
    for path in args.models:
        model = load_model(path)
        times, radial_pairs, angular_pairs = profile_model(model, args.seconds, args.rounds)
        sections.append(markdown(model, times, radial_pairs, angular_pairs))
        print(f"  {path.name} done", file=sys.stderr, flush=True)
    text = "\n".join(sections)
    emit(text, args.output)


if __name__ == "__main__":
    main()
