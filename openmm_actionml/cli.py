"""The ``actionml`` command line.

Each subcommand is a function that adds its parser (with ``set_defaults(run=...)``) and is listed in
``COMMANDS``; adding one (train, run, evaluate) means writing two small functions.
Errors the package raises on purpose print one line, ``error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import openmm.unit as u

from . import __version__
from .atomic import check_writable
from .dataset import ReferenceDataset
from .diagnostics import BOLTZMANN, energy_drift
from .errors import ActionMLError, InputError
from .examples import EXAMPLES, build_example
from .generate import generate_reference_data
from .platforms import get_platform
from .systems import SOLVENTS, PreparedSystem, build_system

#: The demo's settings: alanine dipeptide, flexible, velocity Verlet at 0.25 fs.
DEMO = {"example": "alanine-dipeptide", "delta_fs": 0.25, "record_every": 2, "segments": 4, "segment_length": 2.0,
        "decorrelation": 1.0, "equilibration": 5.0, "seed": 2026}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``actionml`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "actionml " + " ".join(argv)
    try:
        return args.run(args) or 0
    except ActionMLError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``actionml`` parser with every subcommand in ``COMMANDS``."""
    parser = argparse.ArgumentParser(prog="actionml", description="Long-time-step MD in OpenMM with learned "
                                     "symplectic integrators.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subcommands = parser.add_subparsers(metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subcommands)
    return parser


# -- generate ----------------------------------------------------------------------------------------
def add_generate(subcommands: argparse._SubParsersAction) -> None:
    """``actionml generate``: reference data from velocity-Verlet NVE segments."""
    parser = subcommands.add_parser(
        "generate", help="generate reference data (velocity-Verlet NVE segments)",
        description="Minimise and equilibrate a system, then record NVE velocity-Verlet segments on a fine "
                    "time grid. System options left out take the example's (or build_system's) defaults.")
    parser.add_argument("input", help=f"a PDB file, or a bundled example: {', '.join(EXAMPLES)}")
    system = parser.add_argument_group("system")
    system.add_argument("--forcefield", nargs="+", help="force-field XML file(s) (default amber14-all.xml)")
    system.add_argument("--solvent", choices=SOLVENTS, help="default vacuum")
    system.add_argument("--padding", type=float, help="explicit solvent: water padding in nm (default 1.0)")
    system.add_argument("--cutoff", type=float, dest="nonbonded_cutoff", help="explicit solvent: cutoff in nm")
    system.add_argument("--constraints", choices=["none", "HBonds", "AllBonds"], help="default none")
    system.add_argument("--rigid-water", action=argparse.BooleanOptionalAction,
                        help="rigid (default) or flexible water")
    system.add_argument("--hydrogen-mass", type=float, help="hydrogen mass in amu (repartitioning)")
    system.add_argument("--protein-only", action=argparse.BooleanOptionalAction, help="remove water, ions, ligands")
    run = parser.add_argument_group("protocol")
    run.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    run.add_argument("--delta", type=float, default=0.25, help="velocity-Verlet step in fs (default 0.25)")
    run.add_argument("--record-every", type=int, default=1, help="store every this many steps (default 1)")
    run.add_argument("--segments", type=int, default=10, help="number of NVE segments (default 10)")
    run.add_argument("--segment-length", type=float, default=1.0, help="segment duration in ps (default 1)")
    run.add_argument("--decorrelation", type=float, default=1.0, help="Langevin ps before each segment (default 1)")
    run.add_argument("--equilibration", type=float, default=10.0, help="Langevin ps after minimising (default 10)")
    run.add_argument("--seed", type=int, help="random seed (default: drawn and recorded)")
    run.add_argument("--platform", help="OpenMM platform: Reference, CPU, OpenCL, CUDA (default: fastest)")
    run.add_argument("--store-forces", action="store_true", help="also store the forces of every frame")
    out = parser.add_argument_group("output")
    out.add_argument("--output", "-o", help="dataset file (default INPUT-reference.npz in the current directory)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Build the system, run the protocol, save and summarise."""
    name = Path(args.input).stem if os.path.isfile(args.input) else args.input
    output = args.output or f"{name}-reference.npz"
    check_writable(output, args.overwrite)  # refuse early, before the (possibly slow) system build
    get_platform(args.platform)
    prepared = _prepare(args)
    started = time.monotonic()
    dataset = generate_reference_data(
        prepared.system, prepared.positions, output, topology=prepared.topology,
        temperature=args.temperature, delta=args.delta * u.femtosecond, n_segments=args.segments,
        segment_length=args.segment_length, record_every=args.record_every, decorrelation=args.decorrelation,
        equilibration=args.equilibration, platform=args.platform, seed=args.seed, store_forces=args.store_forces,
        metadata={**prepared.settings, "input": args.input, "command": args.command_line}, overwrite=args.overwrite)
    _summarise(dataset, output, time.monotonic() - started)
    return 0


def _prepare(args: argparse.Namespace) -> PreparedSystem:
    options: dict[str, Any] = {key: getattr(args, key) for key in
                               ("forcefield", "solvent", "padding", "nonbonded_cutoff", "constraints", "rigid_water",
                                "hydrogen_mass", "protein_only") if getattr(args, key) is not None}
    if os.path.isfile(args.input):
        return build_system(args.input, **options)
    if args.input in EXAMPLES:
        return build_example(args.input, **options)
    raise InputError(f"{args.input} is neither a PDB file nor a bundled example; give a PDB path or one of "
                     f"{', '.join(EXAMPLES)}.")


# -- demo --------------------------------------------------------------------------------------------
def add_demo(subcommands: argparse._SubParsersAction) -> None:
    """``actionml demo``: a small run on the bundled alanine dipeptide."""
    parser = subcommands.add_parser(
        "demo", help="generate a small reference dataset for alanine dipeptide and report its energy drift",
        description=f"Velocity Verlet at {DEMO['delta_fs']} fs on alanine dipeptide in vacuum: "
                    f"{DEMO['segments']} NVE segments of {DEMO['segment_length']} ps. Rewrites its own output.")
    parser.add_argument("--output-dir", default="results/demo", help="directory for the dataset (default results/demo)")
    parser.add_argument("--platform", help="OpenMM platform (default: fastest)")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Generate the demo dataset and summarise it."""
    directory = Path(args.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{DEMO['example']}-reference.npz"
    prepared = build_example(DEMO["example"])
    started = time.monotonic()
    dataset = generate_reference_data(
        prepared.system, prepared.positions, output, topology=prepared.topology,
        delta=DEMO["delta_fs"] * u.femtosecond, n_segments=DEMO["segments"], segment_length=DEMO["segment_length"],
        record_every=DEMO["record_every"], decorrelation=DEMO["decorrelation"], equilibration=DEMO["equilibration"],
        platform=args.platform, seed=DEMO["seed"], overwrite=True,
        metadata={**prepared.settings, "input": DEMO["example"], "command": args.command_line})
    _summarise(dataset, output, time.monotonic() - started)
    return 0


# -- shared ------------------------------------------------------------------------------------------
def _summarise(dataset: ReferenceDataset, path: str | os.PathLike, seconds: float) -> None:
    """Print what was written, the kinetic temperature, and the energy drift per degree of freedom."""
    kinetic = dataset.kinetic_energies()
    temperatures = 2.0 * kinetic.mean(axis=1) / (dataset.n_dof * BOLTZMANN)
    print(f"wrote {path}: {dataset.n_segments} segments x {dataset.n_frames} frames of {dataset.n_atoms} atoms, "
          f"frame spacing {dataset.delta * 1000:g} fs, {dataset.n_dof} degrees of freedom "
          f"({dataset.metadata['provenance']['platform']}, {seconds:.1f} s)")
    print(f"kinetic temperature {temperatures.mean():.1f} +- {_standard_error(temperatures):.2g} K "
          f"(target {dataset.temperature:g} K)")
    if dataset.potential_energies is not None:
        times = np.arange(dataset.n_frames) * dataset.delta
        drifts = [energy_drift(times, energy, dataset.n_dof, dataset.temperature)
                  for energy in dataset.potential_energies + kinetic]
        slopes = np.array([d.slope_kt_per_dof_per_ns for d in drifts])
        print(f"energy drift {slopes.mean():+.3g} +- {_standard_error(slopes):.2g} kT/ns per degree of freedom; "
              f"energy RMS {np.mean([d.rms_kj for d in drifts]):.3g} kJ/mol (mean +- s.e. over segments)")


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_generate, add_demo]
