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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u

from . import __version__
from .atomic import check_writable
from .dataset import ReferenceDataset
from .diagnostics import energy_drift
from .ensemble import EnsembleOptions, read_starts
from .ensemble_check import check_model
from .evaluate import evaluate, model_system
from .report import write_report
from .units import BOLTZMANN
from .errors import ActionMLError, InputError
from .force_constant_correction import model_factors
from .examples import EXAMPLES, SYSTEM_OPTIONS, build_input, build_training_system
from .generate import generate_reference_data
from .platforms import SINGLE_THREAD_BELOW, configure_torch_threads, get_platform
from .systems import SOLVENTS, PreparedSystem, particle_masses
from .modelfile import ActionMLModel, load_model
from .network import NetworkConfig
from .nve_gate import GateOptions
from .simulate import run_model, topology_from_elements
from .implicit_training import ImplicitTrainingOptions, train_implicit
from .training import TrainingOptions, train

#: The repository's models/ folder with the shipped models (source checkout or editable install).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


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
    _add_system_options(parser)
    run = parser.add_argument_group("protocol")
    run.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    run.add_argument("--delta", type=float, default=0.25, help="velocity-Verlet step in fs (default 0.25)")
    run.add_argument("--record-every", type=int, default=1, help="store every this many steps (default 1)")
    run.add_argument("--segments", type=int, help="number of NVE segments (default 10, or one per start)")
    run.add_argument("--segment-length", type=float, default=1.0, help="segment duration in ps (default 1)")
    run.add_argument("--decorrelation", type=float,
                     help="Langevin ps before each segment (default 1, or 0 with --starts)")
    run.add_argument("--equilibration", type=float, help="Langevin ps after minimising (default 10; none with --starts)")
    run.add_argument("--starts", help="begin the segments at these states instead (an .npz of positions, velocities "
                     "and masses, e.g. a model's own thermalised starts written by benchmarks/amoeba_water.py "
                     "--thermalise)")
    run.add_argument("--seed", type=int, help="random seed (default: drawn and recorded)")
    run.add_argument("--platform", help="OpenMM platform: Reference, CPU, OpenCL, CUDA (default: fastest)")
    run.add_argument("--store-forces", action="store_true", help="also store the forces of every frame")
    out = parser.add_argument_group("output")
    out.add_argument("--output", "-o", help="dataset file (default INPUT-reference.npz in the current directory)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(run=run_generate)


def _add_system_options(parser: argparse.ArgumentParser) -> None:
    """The options that build a System from a PDB file or example (shared by generate and run)."""
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
    system.add_argument("--waters", type=int, dest="n_waters", help="water-box example: number of waters "
                        "(default 256)")

def run_generate(args: argparse.Namespace) -> int:
    """Build the system, run the protocol, save and summarise."""
    name = Path(args.input).stem if os.path.isfile(args.input) else args.input
    output = args.output or f"{name}-reference.npz"
    check_writable(output, args.overwrite)  # refuse early, before the (possibly slow) system build
    get_platform(args.platform)
    prepared = _prepare(args)
    starts = None if args.starts is None else _starts_for(prepared.system, args.starts)
    started = time.monotonic()
    dataset = generate_reference_data(
        prepared.system, prepared.positions, output, topology=prepared.topology,
        temperature=args.temperature, delta=args.delta * u.femtosecond, n_segments=args.segments,
        segment_length=args.segment_length, record_every=args.record_every, decorrelation=args.decorrelation,
        equilibration=args.equilibration, starts=starts, platform=args.platform, seed=args.seed,
        store_forces=args.store_forces, overwrite=args.overwrite,
        metadata={**prepared.settings, "input": args.input, "starts": args.starts, "command": args.command_line})
    _summarise(dataset, output, time.monotonic() - started)
    return 0


def _starts_for(system: mm.System, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The positions and velocities of the starts file ``path``, whose masses must be ``system``'s."""
    starts = read_starts(path, "give a file of positions, velocities and masses, [S, N, 3], [S, N, 3] and [N]")
    masses = particle_masses(system)
    if starts.masses.shape != masses.shape or not np.allclose(starts.masses, masses):
        raise InputError(f"the starts in {path} were drawn on a system with other masses ({starts.masses.shape[0]} "
                         f"particles) than this one ({masses.shape[0]}); build the same system (atoms, water "
                         f"model, --hydrogen-mass) that the starts came from.")
    return starts.positions, starts.velocities


def _prepare_for_model(args: argparse.Namespace, model: ActionMLModel) -> PreparedSystem:
    """The System of ``args.input``, or, without one, the system the model records it was trained on (system
    options given on the command line replace the recorded ones)."""
    if args.input is None:
        return build_training_system(model.metadata.recipe, **_system_options(args))
    return _prepare(args)


def _system_options(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in SYSTEM_OPTIONS if getattr(args, key, None) is not None}


def _prepare(args: argparse.Namespace) -> PreparedSystem:
    return build_input(args.input, **_system_options(args))


# -- train -------------------------------------------------------------------------------------------
def add_train(subcommands: argparse._SubParsersAction) -> None:
    """``actionml train``: learn a long-step map from a reference dataset."""
    parser = subcommands.add_parser(
        "train", help="train a learned long-step integrator from reference data",
        description="Unrolled training of a scheme-A learned splitting with a curriculum and an energy penalty; "
                    "each curriculum stage is judged by an NVE ensemble gate and the most accurate candidate "
                    "that passes is exported. Interrupted runs resume from --checkpoint.")
    parser.add_argument("dataset", nargs="+", help="reference dataset(s) from `actionml generate`; several of the same "
                        "system (e.g. at 300 K and 375 K) are combined, the first setting kT")
    parser.add_argument("--step", type=float, required=True, help="long step h in fs (a multiple of the frame spacing)")
    parser.add_argument("--splitting", default="T3", choices=["T3", "S2", "VV"],
                        help="scheme A's splitting (default T3, BCSS); with --implicit, the predictor")
    parser.add_argument("--tied-heads", action="store_true",
                        help="one learned kick potential for every kick (default: one per group of kicks with the "
                             "same coefficient, which heats faster in NVE; docs/benchmarks/frequency-matched-t3-8fs)")
    parser.add_argument("--force-constants", action="store_true",
                        help="learn one factor per class of harmonic bond and angle term (by element) and kick "
                             "potential instead of a network: the kicks use the force field with those force "
                             "constants scaled (anchored scheme A only; the shipped *-factors models add --tied-heads "
                             "--energy-penalty 0, docs/benchmarks/learned-force-constants-t3-8fs)")
    parser.add_argument("--implicit", choices=["gauss3", "gauss2", "midpoint"],
                        help="train scheme B (implicit midpoint generating function) with these nodes, by gradient "
                             "matching, instead of scheme A; flexible systems only")
    parser.add_argument("--pure-ml", action="store_true", help="kicks use the learned potential alone (no force field)")
    parser.add_argument("--baseline-forcefield", nargs="+", metavar="XML",
                        help="kicks add the learned correction to this cheaper force field on the same atoms (e.g. "
                             "amber14/tip3pfb.xml under AMOEBA water data), trained against the data's forces; needs "
                             "--force-matching")
    parser.add_argument("--curriculum", default="1,2,4,8,16", help="unroll lengths (default 1,2,4,8,16)")
    parser.add_argument("--iterations", type=int, default=150,
                        help="Adam iterations per curriculum stage (scheme B: in all; default 150)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--energy-penalty", type=float, default=0.3, help="lambda_E in kT units (default 0.3)")
    parser.add_argument("--force-matching", type=float, default=0.0, help="weight tying heads to the force field")
    parser.add_argument("--energy-matching", type=float, default=0.0,
                        help="weight, relative to --force-matching's term, of tying the heads' energies to the force "
                             "field's up to a constant (variance of W - V relative to V's; default 0, off)")
    parser.add_argument("--pretrain-iterations", type=int, default=0, help="force-matching iterations first")
    parser.add_argument("--pretrain-batch-size", type=int, default=128, help="frames per force-matching iteration "
                        "(default 128)")
    parser.add_argument("--eval-every", type=int, default=25, help="iterations between validations (default 25)")
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement before a stage "
                        "ends early (default 3)")
    parser.add_argument("--hidden", default="64,64", help="MLP hidden widths (default 64,64)")
    parser.add_argument("--switch", default="c2", choices=["c2", "smooth"], help="cutoff switch of the network's "
                        "densities: C^2 polynomial (default) or C-infinity")
    network = NetworkConfig()
    parser.add_argument("--network-cutoff", type=float, default=network.cutoff,
                        help=f"nm, the network's radial neighbour cutoff (default {network.cutoff:g})")
    parser.add_argument("--angular-cutoff", type=float, default=network.angular_cutoff,
                        help=f"nm, the cutoff of its angular density (default {network.angular_cutoff:g})")
    parser.add_argument("--force-field-platform", default="Reference",
                        help="OpenMM platform of the force field inside training (default Reference, double "
                             "precision; CPU is faster for hundreds of atoms)")
    gate = GateOptions()
    parser.add_argument("--gate-trajectories", type=int, default=gate.n_trajectories,
                        help=f"NVE gate ensemble size (default {gate.n_trajectories})")
    parser.add_argument("--gate-duration", type=float, default=gate.duration,
                        help=f"ps per gate trajectory (default {gate.duration:g})")
    parser.add_argument("--candidate", metavar="NAME", help="export this candidate (e.g. k=8) whatever the gate said, "
                        "instead of the most accurate that passed; its verdict stays in the report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="a name for the training system, stored in the model")
    parser.add_argument("--output", "-o", required=True, help="model file to write")
    parser.add_argument("--checkpoint", help="checkpoint file; resumes from it when it exists")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Train, print the report, and write the model."""
    if args.implicit and args.tied_heads:
        raise InputError("--tied-heads ties scheme A's kicks; scheme B (--implicit) has no heads to tie.")
    if args.implicit and args.force_constants:
        raise InputError("--force-constants is a scheme-A correction; scheme B (--implicit) learns a network.")
    check_writable(args.output, args.overwrite)
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.dataset])
    common = dict(step=args.step / 1000.0, anchored=not args.pure_ml, baseline=args.baseline_forcefield,
                  iterations=args.iterations,
                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                  final_learning_rate=args.learning_rate / 10.0, force_matching=args.force_matching,
                  energy_matching=args.energy_matching,
                  pretrain_iterations=args.pretrain_iterations, pretrain_batch_size=args.pretrain_batch_size,
                  seed=args.seed, eval_every=args.eval_every,
                  patience=args.patience,
                  network={"hidden": _integers(args.hidden, "--hidden"), "switch": args.switch,
                           "cutoff": args.network_cutoff, "angular_cutoff": args.angular_cutoff},
                  force_field_platform=args.force_field_platform)
    name = args.name or Path(args.dataset[0]).stem
    if args.implicit:
        report = train_implicit(dataset, None, ImplicitTrainingOptions(**common, scheme=args.implicit,
                                                                       predictor=args.splitting),
                                args.output, overwrite=args.overwrite, system_name=name, command=args.command_line)
        print(report.summary())
        print(f"wrote {args.output}")
        return 0
    options = TrainingOptions(**common, splitting=args.splitting, tied_heads=args.tied_heads,
                              force_constants=args.force_constants,
                              curriculum=_integers(args.curriculum, "--curriculum"),
                              energy_penalty=args.energy_penalty,
                              gate=GateOptions(n_trajectories=args.gate_trajectories, duration=args.gate_duration))
    report = train(dataset, None, options, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite,
                   system_name=name, command=args.command_line, candidate=args.candidate)
    print(report.summary())
    if args.force_constants:
        for head, factors in enumerate(model_factors(load_model(args.output))):
            print(f"head {head} force-constant factors: "
                  + ", ".join(f"{name} {factor:.4f}" for name, factor in factors.items()))
    print(f"wrote {args.output}")
    return 0


def _read_xml(path: str, kind: type) -> Any:
    """An OpenMM object of type ``kind`` from an XmlSerializer file, or a clear error."""
    try:
        with open(path) as handle:
            value = mm.XmlSerializer.deserialize(handle.read())
    except Exception as error:  # OSError, or OpenMM's XML parse errors
        raise InputError(f"cannot read {path} as a serialized OpenMM {kind.__name__} ({error}); write it with "
                         f"openmm.XmlSerializer.serialize.") from None
    if not isinstance(value, kind):
        raise InputError(f"{path} holds a {type(value).__name__}, not a {kind.__name__}.")
    return value


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} takes comma-separated whole numbers, e.g. 1,2,4,8; got {text!r}.") from None


# -- run ---------------------------------------------------------------------------------------------
def add_run(subcommands: argparse._SubParsersAction) -> None:
    """``actionml run``: simulate with a learned model in OpenMM."""
    parser = subcommands.add_parser(
        "run", help="run MD in OpenMM with a learned long-step integrator",
        description="Build the System (from INPUT, or the system the model was trained on), add the learned "
                    "force, minimise, draw velocities and run NVE (or NVT with --temperature) with the "
                    "ActionMLIntegrator; a model of learned force constants with tied heads runs baked into the "
                    "System, with its classical splitting. Prints drift, per-element temperature and speed.")
    parser.add_argument("model", help="model file (.pt) from `actionml train` or models/")
    parser.add_argument("input", nargs="?", help="PDB file or bundled example (default: the model's training system)")
    parser.add_argument("--system-xml", help="a serialized System to run instead of INPUT (with --state-xml)")
    parser.add_argument("--state-xml", help="a serialized State to continue from (positions, velocities, box)")
    _add_system_options(parser)
    run = parser.add_argument_group("run")
    length = run.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="number of long steps")
    length.add_argument("--time", type=float, help="simulated time in ps")
    run.add_argument("--temperature", type=float, help="NVT at this temperature in K (default: NVE)")
    run.add_argument("--friction", type=float, help="NVT friction in 1/ps (default 1)")
    run.add_argument("--start-temperature", type=float, help="initial velocities' temperature in K")
    run.add_argument("--equilibrate", type=float, default=1.0,
                     help="ps of Langevin equilibration on the force field before the run (default 1)")
    run.add_argument("--platform", help="OpenMM platform: Reference, CPU, OpenCL, CUDA (default: fastest)")
    run.add_argument("--torch-threads", type=int, help=f"torch threads of the learned force (default: 1 below "
                     f"{SINGLE_THREAD_BELOW} atoms, where more only slow it down, else torch's default)")
    run.add_argument("--seed", type=int, help="seed of the initial velocities")
    run.add_argument("--report-interval", type=int, default=100, help="steps between reports (default 100)")
    out = parser.add_argument_group("output")
    out.add_argument("--log", help="StateDataReporter CSV file")
    out.add_argument("--dcd", help="DCDReporter trajectory file")
    out.add_argument("--checkpoint", help="CheckpointReporter file")
    parser.set_defaults(run=run_run)


def run_run(args: argparse.Namespace) -> int:
    """Build, run, report."""
    model = load_model(args.model)
    state = None
    if (args.system_xml is None) != (args.state_xml is None):
        raise InputError("--system-xml and --state-xml go together: give both, or neither.")
    if args.system_xml is not None:
        system, state = _read_xml(args.system_xml, mm.System), _read_xml(args.state_xml, mm.State)
        prepared = PreparedSystem(topology_from_elements(model.metadata.elements), system,
                                  state.getPositions(asNumpy=True))
    else:
        prepared = model_system(_prepare_for_model(args, model), model)
    configure_torch_threads(prepared.system.getNumParticles(), args.torch_threads)
    steps = args.steps if args.steps is not None else int(round(args.time / model.metadata.step))
    reporters = []
    if args.log:
        reporters.append(app.StateDataReporter(args.log, args.report_interval, step=True, time=True,
                                               potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                                               temperature=True, speed=True))
    if args.dcd:
        reporters.append(app.DCDReporter(args.dcd, args.report_interval))
    if args.checkpoint:
        reporters.append(app.CheckpointReporter(args.checkpoint, args.report_interval))
    _, summary = run_model(prepared, model, steps, temperature=args.temperature, friction=args.friction,
                           start_temperature=args.start_temperature, platform=args.platform, seed=args.seed,
                           report_interval=args.report_interval, reporters=reporters, equilibration=args.equilibrate,
                           state=state)
    print(summary.text())
    return 0


# -- evaluate --------------------------------------------------------------------------------------
def add_evaluate(subcommands: argparse._SubParsersAction) -> None:
    """``actionml evaluate``: a model beside Verlet, HMR and its classical splitting, on NVE ensembles."""
    parser = subcommands.add_parser(
        "evaluate", help="judge a learned model against Verlet, HMR and the classical splitting on NVE ensembles",
        description="Run the learned model, its splitting unlearned (dW = 0), velocity Verlet at the usual steps "
                    "and at the learned step, Verlet with hydrogen-mass repartitioning at 4 fs (constrained "
                    "systems) and the fine-step reference, in OpenMM, from the same equilibrated starts. Prints a "
                    "markdown table (stable fraction, drift, E RMS, per-element temperature, reversibility, "
                    "velocity autocorrelation against the reference, cost, speed) and writes it with JSON and PNG "
                    "plots to --output-dir.")
    parser.add_argument("model", help="model file (.pt) from `actionml train` or models/")
    parser.add_argument("input", nargs="?", help="PDB file or bundled example (default: the model's training system)")
    _add_system_options(parser)
    _add_ensemble_options(parser, EnsembleOptions())
    parser.add_argument("--output-dir", default="results/evaluate", help="default results/evaluate")
    parser.set_defaults(run=run_evaluate)


def _add_ensemble_options(parser: argparse.ArgumentParser, defaults: EnsembleOptions,
                          platform: Optional[str] = None) -> None:
    ensemble = parser.add_argument_group("ensemble")
    ensemble.add_argument("--trajectories", type=int, default=defaults.n_trajectories,
                          help=f"NVE trajectories per integrator (default {defaults.n_trajectories})")
    ensemble.add_argument("--time", type=float, default=defaults.duration,
                          help=f"ps per trajectory (default {defaults.duration:g})")
    ensemble.add_argument("--sample-interval", type=float,
                          help="fs between samples, a multiple of every step (default: the model's step)")
    ensemble.add_argument("--temperature", type=float, help="K of the starts (default: the model's)")
    ensemble.add_argument("--platform", default=platform, help=f"OpenMM platform: Reference, CPU, OpenCL, CUDA "
                          f"(default: {platform or 'fastest'})")
    ensemble.add_argument("--torch-threads", type=int, help=f"torch threads of the learned force (default: 1 "
                          f"below {SINGLE_THREAD_BELOW} atoms, where more only slow it down, else torch's default)")
    ensemble.add_argument("--seed", type=int, default=1, help="seed of the starts (default 1)")
    ensemble.add_argument("--jobs", type=int, default=1, help="integrators run at a time, each in its own process "
                          "(default 1; Reference or CPU platform, named, and not PME on CPU, where forked "
                          "processes hang; with --platform CPU also set OPENMM_CPU_THREADS=1)")
    ensemble.add_argument("--cache-dir", help="keep each finished trajectory in this directory, so that rerunning "
                          "the same command after an interruption resumes it (speeds then come from a dedicated "
                          "timed run of every integrator)")
    ensemble.add_argument("--speed-time", type=float, help="ps of each dedicated timed run (default: --time)")
    ensemble.add_argument("--rdf", metavar="A-B", help="also measure the radial distribution function between "
                          "elements A and B at every sample, e.g. O-O for water (periodic boxes; default none)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Build the system, run the ensembles, print and write the report."""
    model = load_model(args.model)
    _evaluate_and_report(model, _prepare_for_model(args, model), args)
    return 0


def _evaluate_and_report(model: ActionMLModel, prepared: PreparedSystem, args: argparse.Namespace) -> None:
    get_platform(args.platform)
    configure_torch_threads(prepared.system.getNumParticles(), args.torch_threads)
    sample = (args.sample_interval or model.metadata.step * 1000.0) / 1000.0
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=sample,
                              correlation_time=min(EnsembleOptions.correlation_time, args.time / 2),
                              speed_time=args.speed_time, rdf=args.rdf)
    started = time.monotonic()
    results = evaluate(prepared, model, options, temperature=args.temperature, platform=args.platform,
                       seed=args.seed, progress=_print_progress, jobs=args.jobs, cache_dir=args.cache_dir)
    title = (f"{model.path.name}: {args.trajectories} x {args.time:g} ps NVE at "
             f"{args.temperature or model.metadata.temperature:g} K ({args.platform or 'fastest platform'})")
    directory = Path(args.output_dir)
    table, plots = write_report(results, directory, title, {"model": str(model.path), "command": args.command_line,
                                                            "options": asdict(options)})
    print(f"\n{title}\n\n{table}\n")
    print(f"wrote {directory / 'results.md'}, results.json and {', '.join(p.name for p in plots)} "
          f"({time.monotonic() - started:.0f} s)")


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- check -------------------------------------------------------------------------------------------
def add_check(subcommands: argparse._SubParsersAction) -> None:
    """``actionml check``: where a model's kick potential puts its ensemble, from reference frames."""
    parser = subcommands.add_parser(
        "check", help="a model's ensemble against the force field's, read off reference data (no simulation)",
        description="Energy error of the model's kick potential W against the data's force field V, and the "
                    "first-order shift of V's mean in W's Boltzmann ensemble, -cov(V, W - V)/kT, on frames of "
                    "reference data (at best held out from training) with a bootstrap error over segments.")
    parser.add_argument("model", help="model file (.pt), scheme A")
    parser.add_argument("dataset", nargs="+", help="reference data (.npz) of the model's system, with energies")
    parser.add_argument("--stride", type=int, default=50, help="use every n-th frame of each segment (default 50)")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform of a baseline force field (default CPU)")
    parser.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Load, check and print."""
    model = load_model(args.model)
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.dataset])
    check = check_model(model, dataset, stride=args.stride, platform=args.platform)
    print(f"{model.path.name} on {', '.join(Path(p).name for p in args.dataset)}: {check.summary()}")
    return 0


# -- demo --------------------------------------------------------------------------------------------
#: The demo: the shipped 8 fs T3 model of alanine dipeptide with HBonds, beside Verlet, HMR and classical T3.
DEMO_MODEL = MODELS_DIR / "alanine-t3-8fs.pt"


def add_demo(subcommands: argparse._SubParsersAction) -> None:
    """``actionml demo``: the shipped alanine-dipeptide model beside Verlet."""
    defaults = EnsembleOptions(n_trajectories=8, duration=10.0)
    parser = subcommands.add_parser(
        "demo", help="run the shipped alanine-dipeptide model beside Verlet and report",
        description=f"actionml evaluate on {DEMO_MODEL.name} (alanine dipeptide in vacuum, HBonds, T3 at 8 fs): "
                    f"{defaults.n_trajectories} NVE trajectories of {defaults.duration:g} ps per integrator, "
                    f"a few minutes on 2 CPU cores.")
    _add_ensemble_options(parser, defaults, platform="Reference")  # double precision; fastest for 22 atoms
    parser.add_argument("--model", default=str(DEMO_MODEL), help=f"default {DEMO_MODEL}")
    parser.add_argument("--output-dir", default="results/demo", help="default results/demo")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """``actionml evaluate`` on the shipped model's own system."""
    if not Path(args.model).is_file():
        raise InputError(f"the demo's model {args.model} is missing; run the demo from a source checkout "
                         f"(git clone ...; pip install -e .), or pass --model.")
    model = load_model(args.model)
    _evaluate_and_report(model, build_training_system(model.metadata.recipe), args)
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_generate, add_train, add_run, add_evaluate,
                                                                add_check, add_demo]
