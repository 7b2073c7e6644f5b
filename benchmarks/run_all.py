"""Regenerate the results tables and plots for every shipped model: one command.

For each scheme-A model in ``models/`` (or those named), on its own training system, from the same equilibrated starts:
the rows of ``actionml evaluate`` (the fine-step reference, the learned model, its classical splitting, Verlet at
the usual steps, HMR at 4 fs with constraints, Verlet at the learned step), and the direct-predictor baseline of
``direct_predictor.py`` trained on a fresh reference dataset drawn with the model's own data protocol. Writes
``results/benchmarks/<model>/`` (results.md, results.json, energy.png, temperature.png, vacf.png) and
``results/benchmarks/README.md`` with every table.

Usage::

    python benchmarks/run_all.py [MODEL ...] [--trajectories 8] [--time 20] [--platform Reference] [--jobs 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from benchmark_log import log
from direct_predictor import load_predictor, run_direct_ensemble, save_predictor, train_direct_predictor
from openmm_actionml.atomic import atomic_path
from openmm_actionml.cli import MODELS_DIR
from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.ensemble import EnsembleOptions, EnsembleResult, Starts, equilibrated_starts, resumable_starts
from openmm_actionml.evaluate import evaluate
from openmm_actionml.examples import build_training_system
from openmm_actionml.generate import generate_reference_data
from openmm_actionml.modelfile import ActionMLModel, load_model
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.report import write_report
from openmm_actionml.systems import PreparedSystem, constraint_pairs

#: The direct predictor's data: the model's protocol, more and shorter segments (one-step pairs are all it needs).
DIRECT_DATA = {"n_segments": 32, "segment_length": 0.5, "decorrelation": 1.0, "equilibration": 10.0, "seed": 99}


def benchmark(model: ActionMLModel, options: EnsembleOptions, platform: str, directory: Path,
              direct_iterations: int, jobs: int = 1, only: Optional[str] = None) -> Optional[str]:
    """All rows for one model; returns its markdown section (None when ``only`` runs one part: "openmm" for the
    OpenMM rows, "direct" for the direct predictor). Finished trajectories of the OpenMM rows and the trained
    direct predictor and its result are kept in ``directory/trajectories``, so that a rerun resumes."""
    prepared = build_training_system(model.metadata.recipe)
    temperature = model.metadata.temperature
    cache = directory / "trajectories"
    starts = resumable_starts(cache / f"starts-{options.n_trajectories}-{temperature:g}K.npz",
                              lambda: equilibrated_starts(prepared.system, prepared.positions, temperature,
                                                          options.n_trajectories, platform=platform, seed=1))
    results = [] if only == "direct" else evaluate(prepared, model, options, platform=platform, starts=starts,
                                                   progress=log, jobs=jobs, cache_dir=cache)
    if only != "openmm":
        results.append(direct_row(model, prepared, starts, options, platform, cache, direct_iterations))
    if only is not None:
        log(f"{only} rows done and kept in {cache}; run without --only for the table")
        return None
    title = (f"{model.path.name}: {options.n_trajectories} x {options.duration:g} ps NVE at {temperature:g} K "
             f"({platform})")
    table, _ = write_report(results, directory, title, {"model": str(model.path), "platform": platform,
                                                        "trajectories": options.n_trajectories,
                                                        "duration": options.duration,
                                                        "direct_predictor_iterations": direct_iterations})
    return f"## {title}\n\n{table}\n\nPlots: [energy]({directory.name}/energy.png), " \
           f"[temperature]({directory.name}/temperature.png), [VACF]({directory.name}/vacf.png)\n"


def direct_row(model: ActionMLModel, prepared: PreparedSystem, starts: Starts, options: EnsembleOptions,
               platform: str, cache: Path, iterations: int) -> EnsembleResult:
    """The direct-predictor row: trained on a fresh reference dataset drawn with the model's data protocol and
    run from ``starts``. The dataset, the trained predictor and then its result are kept in ``cache`` (see
    :func:`direct_cache_paths`), so that an interrupted row resumes after the stage it finished; a predictor kept
    with its result is only timed again (``options.speed_time``), so that its speed is measured in the same run
    as the other rows'."""
    potential = OpenMMPotential(prepared.system, platform=platform)
    constraints = ConstraintSet.from_system(prepared.system)
    temperature = model.metadata.temperature
    elements = [atom.element.symbol for atom in prepared.topology.atoms()]
    pairs = constraint_pairs(prepared.system)
    data_path, path = direct_cache_paths(model, options, platform, starts, iterations, cache)
    result = None
    if path.exists():
        predictor, result = load_predictor(path, potential, temperature, constraints)
        log(f"direct predictor: read from {path}; "
            + ("timing it again" if result is not None else "running its ensemble"))
    else:
        dataset = direct_reference_data(model, prepared, data_path)
        predictor = train_direct_predictor(dataset, model.metadata.step, iterations, platform=platform)
        save_predictor(predictor, None, path)  # kept before its run, so an interrupted run does not train again
    if result is None:
        result = run_direct_ensemble(predictor, potential, starts, temperature, options, elements, pairs)
        save_predictor(predictor, result, path)
        return result
    duration = options.speed_time or options.duration
    timed = dataclasses.replace(options, duration=duration,
                                correlation_time=min(options.correlation_time, duration / 2))
    result.ps_per_second = run_direct_ensemble(predictor, potential, starts, temperature, timed, elements,
                                               pairs).ps_per_second
    return result


def direct_cache_paths(model: ActionMLModel, options: EnsembleOptions, platform: str, starts: Starts,
                       iterations: int, cache: Path) -> tuple[Path, Path]:
    """The kept files of the direct row: its reference dataset, named by a fingerprint of the model file, the
    data settings and the model's data protocol; and its predictor with result, named by one of the model file,
    the data settings, the training iterations, the platform, the ensemble options (its speed time excepted)
    and the starts."""
    model_digest = hashlib.sha256(model.path.read_bytes())
    data_digest, digest = model_digest.copy(), model_digest.copy()
    data_digest.update(json.dumps([DIRECT_DATA, model.metadata.recipe["dataset_protocol"]], sort_keys=True).encode())
    for part in (json.dumps(DIRECT_DATA, sort_keys=True), str(iterations), platform,
                 json.dumps({**dataclasses.asdict(options), "speed_time": None}, sort_keys=True),
                 starts.positions.tobytes(), starts.velocities.tobytes()):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return (cache / f"direct-data-{data_digest.hexdigest()[:16]}.npz",
            cache / f"direct-predictor-{digest.hexdigest()[:16]}.pt")


def direct_reference_data(model: ActionMLModel, prepared: PreparedSystem, path: Path) -> ReferenceDataset:
    """The direct predictor's reference dataset: read from ``path``, or generated there (atomically) with the
    model's data protocol and :data:`DIRECT_DATA`."""
    if path.exists():
        log(f"direct predictor: reference data read from {path}")
        return ReferenceDataset.load(path)
    log("direct predictor: generating its reference data")
    path.parent.mkdir(parents=True, exist_ok=True)
    protocol = model.metadata.recipe["dataset_protocol"]
    return generate_reference_data(
        prepared.system, prepared.positions, path, topology=prepared.topology, temperature=model.metadata.temperature,
        delta=protocol["integration_step"], record_every=protocol["record_every"], platform="CPU", **DIRECT_DATA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model files (default: every scheme-A model in models/; scheme B "
                        "costs about 30 network calls per step, so evaluate it with a smaller ensemble)")
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--time", type=float, default=20.0, help="ps per trajectory")
    parser.add_argument("--platform", default="Reference")
    parser.add_argument("--direct-iterations", type=int, default=5000)
    parser.add_argument("--output-dir", default="results/benchmarks", help="tables and plots, and each model's "
                        "finished trajectories (MODEL/trajectories), from which a rerun resumes")
    parser.add_argument("--speed-time", type=float, help="ps of the dedicated timed runs (default: --time)")
    parser.add_argument("--only", choices=["openmm", "direct"], help="run only the OpenMM rows or only the direct "
                        "predictor, keeping their results for a later full run (which then times them again)")
    parser.add_argument("--jobs", type=int, default=1, help="integrators run at a time, one process each (with "
                        "--platform CPU set OPENMM_CPU_THREADS=1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = [Path(p) for p in args.models] or [p for p in sorted(MODELS_DIR.glob("*.pt"))
                                                if load_model(p).metadata.scheme == "A"]
    output = Path(args.output_dir)
    sections = []
    for path in paths:
        model = load_model(path)
        options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time,
                                  sample_interval=model.metadata.step, speed_time=args.speed_time)
        log(f"{path.name}")
        sections.append(benchmark(model, options, args.platform, output / path.stem, args.direct_iterations,
                                  args.jobs, args.only))
    if args.only is not None:
        return
    with atomic_path(output / "README.md", overwrite=True) as tmp:
        tmp.write_text("# Benchmarks\n\n`python benchmarks/run_all.py " + " ".join(sys.argv[1:]) + "`\n\n"
                       + "\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
