"""Training scheme-A models from reference data.

The loss unrolls the learned splitting over ``k`` steps from a reference frame and regresses every
intermediate state against the reference trajectory, in thermal units (DESIGN.md section 4)::

    L = < sum_i [ m_i |q^_i - q_i|^2 / h^2 + m_i |v^_i - v_i|^2 ] > / (3 N kT)  +  lambda_E < (dE / kT)^2 >

where dE is the change of the true total energy over the unroll. ``k`` follows a curriculum
(1, 2, 4, 8, 16 by default). After each curriculum stage the NVE ensemble gate runs; the exported
model is the most accurate candidate that passed it, and a run in which none passes exports nothing (unless a
candidate is named, which is exported whatever its verdict).
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import openmm as mm
import openmm.unit as u

from .atomic import atomic_path, check_writable
from .constraints import ConstraintSet
from .dataset import ReferenceDataset
from .diagnostics import relative_errors
from .errors import ActionMLError, InputError, SimulationInstabilityError
from .examples import build_baseline
from .kicks import KickPotential
from .modelfile import ModelMetadata, export_model
from .force_constant_correction import ForceConstantCorrection
from .network import build_network, check_cutoff_fits
from .nve_gate import GateOptions, GateResult, run_gate
from .openmm_potential import OpenMMPotential
from .splitting import SplittingStepper, get_splitting, with_tied_heads
from .systems import force_classes, replace_forces
from .units import BOLTZMANN, positive_float


class GateFailedError(ActionMLError):
    """No candidate model passed the NVE ensemble gate."""


@dataclass
class OptimisationOptions:
    """What every trainer shares (stored in the model's recipe).

    Attributes
    ----------
    step
        The long step h in ps; a multiple of the data's frame spacing.
    anchored
        ``W = V + dW`` (default) or pure ML ``W = dW``.
    baseline
        Force-field files of a cheaper baseline ``B`` on the same atoms (anchored only): the kicks are then
        ``W = B + dW``, with ``dW`` learned against the data's force field ``V`` (its stored forces and
        trajectories), so that an expensive ``V`` is never called inside the step. Needs ``force_matching > 0``.
    iterations
        Adam iterations per stage (early stopping may end a stage sooner).
    batch_size, learning_rate, final_learning_rate
        Adam with a geometric decay over the whole run.
    force_matching
        Weight of a term tying each head's forces to the force field's (required in pure-ML mode).
    energy_matching
        Weight, relative to the force term, of tying each head's potential energy to the force field's up to a
        constant (``Trainer.energy_matching_loss``); needs ``force_matching > 0`` and data with potential energies.
    pretrain_iterations, pretrain_batch_size
        Force-matching iterations (and frames per batch) before the main training: pure ML starts from a
        surrogate of V. Early stopping in this phase uses the tie (force and, if matched, energy) on validation frames.
    validation_fraction
        Fraction of segments held out.
    eval_every, patience
        Validation cadence and early-stopping patience (in evaluations).
    seed
        Seeds torch and the data sampling.
    network
        Options passed to :func:`openmm_actionml.network.build_network`.
    force_constants
        Learn one factor per class of harmonic term and head
        (:class:`~openmm_actionml.force_constant_correction.ForceConstantCorrection`) instead of a network; anchored
        scheme A only.
    force_field_platform
        OpenMM platform of V inside training (forces, Hessian-vector products, energies, the gate). Reference
        (default) is double precision; CPU is faster for hundreds of atoms, with single-precision forces that make
        the finite-difference Hessian-vector products noisier.
    """

    step: float
    anchored: bool = True
    baseline: Optional[list[str]] = None
    iterations: int = 150
    batch_size: int = 16
    learning_rate: float = 2e-3
    final_learning_rate: float = 2e-4
    force_matching: float = 0.0
    energy_matching: float = 0.0
    pretrain_iterations: int = 0
    pretrain_batch_size: int = 128
    validation_fraction: float = 0.2
    eval_every: int = 25
    patience: int = 3
    seed: int = 0
    network: dict = field(default_factory=dict)
    force_constants: bool = False
    force_field_platform: str = "Reference"

    def __post_init__(self) -> None:
        self.step = positive_float(self.step, u.picosecond, "step")
        for name in ("iterations", "batch_size", "pretrain_batch_size", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if not self.anchored and self.force_matching <= 0:
            raise InputError("pure-ML training needs force_matching > 0 to keep each head tied to the force field; "
                             "untied heads drift and heat (DESIGN.md section 3).")
        if self.baseline is not None:
            self.baseline = [self.baseline] if isinstance(self.baseline, str) else list(self.baseline)
            if not self.anchored or self.force_matching <= 0 or not self.baseline:
                raise InputError("a baseline force field needs anchored kicks (not pure ML), force_matching > 0 to tie "
                                 "B + dW to the data's forces, and at least one force-field file.")
        if self.energy_matching < 0 or (self.energy_matching > 0 and self.force_matching <= 0):
            raise InputError(f"energy_matching ({self.energy_matching}) must be zero or positive, and positive only "
                             f"with force_matching > 0: it weights the energy part of the tie to the force field.")
        if self.force_constants and not self.anchored:
            raise InputError("learned force constants scale the force field's terms; pure-ML kicks have none. Train "
                             "anchored kicks, or a network.")
        if self.energy_matching > 0 and min(self.batch_size, self.pretrain_batch_size) < 2:
            raise InputError("energy matching compares energy differences within a batch; use batch sizes of at "
                             "least 2.")


@dataclass
class TrainingOptions(OptimisationOptions):
    """A scheme-A training run: :class:`OptimisationOptions` and

    Attributes
    ----------
    splitting
        ``"T3"`` (default), ``"S2"`` or ``"VV"``.
    tied_heads
        One learned head for every kick (:func:`~openmm_actionml.splitting.with_tied_heads`) instead of one per
        group of kicks with the same coefficient.
    curriculum
        Unroll lengths, trained in turn, ``iterations`` each.
    energy_penalty
        lambda_E, in kT units (0.3 held in the prototype; 0.03 heated).
    checkpoint_every
        Iterations between checkpoints.
    gate
        The NVE ensemble gate.
    """

    splitting: str = "T3"
    tied_heads: bool = False
    curriculum: tuple[int, ...] = (1, 2, 4, 8, 16)
    energy_penalty: float = 0.3
    checkpoint_every: int = 25
    gate: GateOptions = field(default_factory=GateOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.curriculum = tuple(int(k) for k in self.curriculum)
        if not self.curriculum or min(self.curriculum) < 1:
            raise InputError("curriculum must be a list of positive unroll lengths, e.g. 1,2,4,8.")
        if isinstance(self.gate, dict):
            self.gate = GateOptions(**self.gate)


@dataclass
class TrainingReport:
    """The outcome of :func:`train`: validation errors and gate figures for each candidate."""

    candidates: list[dict]
    chosen: int
    classical: dict
    wall_seconds: float

    def summary(self) -> str:
        lines = ["candidate  unroll  val-loss   dv(rel)   dq(rel)   gate"]
        for index, c in enumerate([self.classical] + self.candidates):
            mark = "*" if index - 1 == self.chosen else " "
            force = f"  force error {c['errors']['force']:.2%}" if "force" in c["errors"] else ""
            force += f", energy error {c['errors']['energy']:.2%}" if "energy" in c["errors"] else ""
            lines.append(f"{mark}{c['name']:<9} {c.get('unroll', 0):>6}  {c['validation_loss']:.3e}  "
                         f"{c['errors']['dv']:.3%}  {c['errors']['dq']:.3%}   {c['gate']['summary']}{force}")
        lines.append(f"wall time {self.wall_seconds / 60:.1f} min")
        return "\n".join(lines)


def trajectory_loss(stepper: SplittingStepper, q_ref: torch.Tensor, v_ref: torch.Tensor,
                    kT: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unroll ``stepper`` from ``q_ref[:, 0]`` and regress every state against the reference, in thermal units.

    Parameters
    ----------
    stepper
        The learned map.
    q_ref, v_ref
        Reference positions and velocities ``[B, k + 1, N, 3]`` at lags ``0, h, ..., k h``.
    kT
        Thermal energy in kJ/mol.

    Returns
    -------
    The loss averaged over the ``k`` steps and the batch, and the final predicted ``(q, v)``.
    """
    k = q_ref.shape[1] - 1
    n_dof = 3 * q_ref.shape[2]
    h = stepper.h
    masses = stepper.masses.to(q_ref.dtype)[:, None]
    q, v, forces = q_ref[:, 0], v_ref[:, 0], None
    loss = torch.zeros((), dtype=q_ref.dtype)
    for j in range(1, k + 1):
        q, v, forces = stepper.step(q, v, forces)
        squared = masses * ((q - q_ref[:, j]) ** 2 / h ** 2 + (v - v_ref[:, j]) ** 2)
        loss = loss + squared.sum((-1, -2)).mean() / (n_dof * kT * k)
    return loss, q, v


class Trainer:
    """Owns the data, the network, the force field and the optimiser of one training run."""

    def __init__(self, dataset: ReferenceDataset, system: mm.System, options: TrainingOptions) -> None:
        splitting = get_splitting(options.splitting)
        if options.tied_heads:
            splitting = with_tied_heads(splitting)
        # From the dataset, so that its masses are exactly the stepper's (a System read back from XML differs by
        # float rounding).
        self.constraints = ConstraintSet(dataset.constraint_pairs, dataset.constraint_distances, dataset.masses) \
            if dataset.n_constraints else None
        self.setup(dataset, system, options, splitting.n_heads,
                   options.pretrain_iterations + options.iterations * len(options.curriculum))
        self.stepper = SplittingStepper(splitting, options.step, self.masses, self.kicks, self.constraints)

    def setup(self, dataset: ReferenceDataset, system: mm.System, options, n_heads: int, total_iterations: int) -> None:
        """What every trainer needs: seeds, units, the force field, the network (with feature scaling fitted
        on training frames), the kick potentials, the segment split, Adam and its decay over ``total_iterations``.
        ``self.constraints`` must be set first."""
        self.options = options
        self.dataset = dataset
        self.n_heads = n_heads
        torch.manual_seed(options.seed)
        self.rng = np.random.default_rng(options.seed)
        dataset.lag_steps(options.step)  # refuses a step that is not a multiple of the frame spacing
        self.kT = BOLTZMANN * dataset.temperature
        self.masses = torch.as_tensor(dataset.masses, dtype=torch.float64)
        self.box = None if dataset.box is None else torch.as_tensor(dataset.box, dtype=torch.float64)
        # Blown-up configurations give NaN (not an exception), so the NVE gate can count them as unstable.
        self.potential = OpenMMPotential(system, platform=options.force_field_platform, nonfinite="nan")
        #: The force field every kick adds (anchored models): V itself, or the baseline B in V's place.
        self.kick_system = system if options.baseline is None else baseline_system(dataset, system, options.baseline)
        self.kick_potential = self.potential if options.baseline is None else \
            OpenMMPotential(self.kick_system, platform=options.force_field_platform, nonfinite="nan")
        self.train_segments, self.validation_segments = dataset.split(options.validation_fraction, options.seed)
        #: Variance of V over the training frames (kJ/mol)^2: the energy-matching loss's unit, or None without
        #: stored energies.
        self.energy_scale = None if dataset.potential_energies is None else \
            float(dataset.potential_energies[self.train_segments].var())
        if options.energy_matching > 0 and not self.energy_scale:
            raise InputError("energy matching needs a dataset with potential energies of several distinct values; "
                             "generate the data with `actionml generate`, which records them.")
        self.network = self.learned_correction(n_heads)
        self.kicks = KickPotential(self.network, self.kick_forces if options.anchored else None, self.box)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=options.learning_rate)
        decay = (options.final_learning_rate / options.learning_rate) ** (1.0 / max(total_iterations, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, decay)

    def learned_correction(self, n_heads: int) -> torch.nn.Module:
        """The learned dW, in double precision: force-constant factors on the kick force field's harmonic terms, or a
        network bound to the data's particles with its feature scaling fitted on training frames."""
        dataset, options = self.dataset, self.options
        if options.force_constants:
            return ForceConstantCorrection(self.kick_system, dataset.elements, n_heads)
        excluded = None if self.constraints is None else self.constraints.pairs.tolist()
        network = build_network(dataset.elements, n_heads=n_heads, periodic=self.box is not None,
                                excluded_pairs=excluded, **options.network).double()
        if dataset.box is not None:
            check_cutoff_fits(network.config.cutoff, dataset.box)
        frames = self.windows(0, self.train_segments, 256)[0]
        network.fit_feature_scaling(frames[:, 0], None if self.box is None else self.box.expand(len(frames), 3, 3))
        return network

    def reference_forces(self, q: torch.Tensor) -> torch.Tensor:
        """The data's force field V at ``q``."""
        return self.potential.energy_and_forces(q)[1]

    def kick_forces(self, q: torch.Tensor) -> torch.Tensor:
        """The force field the kicks add at ``q``: V, or the baseline B."""
        return self.kick_potential.energy_and_forces(q)[1]

    def total_energy(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.potential.energy_and_forces(q)[0] + 0.5 * (self.masses[:, None] * v ** 2).sum((-1, -2))

    def windows(self, k: int, segments: np.ndarray, count: Optional[int]
                ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``count`` random reference windows of ``k`` steps (``k = 0``: single frames): positions and velocities
        ``[M, k + 1, N, 3]``, and the force-field forces ``[M, N, 3]`` and potential energies ``[M]`` at their
        first frames when the dataset stores them (else ``None``)."""
        lag, steps = self.options.step, max(k, 1)
        total = self.dataset.count_windows(lag, steps, segments)
        pick = self.rng.choice(total, count, replace=False) if count is not None and count < total else None
        q, v = self.dataset.windows(lag, steps, segments, select=pick)
        forces = None if self.dataset.forces is None else \
            torch.as_tensor(self.dataset.start_forces(lag, steps, segments, select=pick), dtype=torch.float64)
        energies = None if self.dataset.potential_energies is None else \
            torch.as_tensor(self.dataset.start_energies(lag, steps, segments, select=pick), dtype=torch.float64)
        return (torch.as_tensor(q[:, :k + 1], dtype=torch.float64),
                torch.as_tensor(v[:, :k + 1], dtype=torch.float64), forces, energies)

    def unroll_loss(self, q_ref: torch.Tensor, v_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trajectory loss (thermal units, averaged over the unroll) and the energy penalty term."""
        loss, q, v = trajectory_loss(self.stepper, q_ref, v_ref, self.kT)
        penalty = torch.zeros((), dtype=torch.float64)
        if self.options.energy_penalty > 0:
            change = (self.total_energy(q, v) - self.total_energy(q_ref[:, 0], v_ref[:, 0])) / self.kT
            penalty = self.options.energy_penalty * (change ** 2).mean()
        return loss, penalty

    def force_matching_loss(self, q: torch.Tensor, forces: Optional[torch.Tensor] = None,
                            learned_targets: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Mean squared difference between each head's kick forces (``dW``, ``V + dW`` or ``B + dW``) and the
        force field's, relative to |F_V|^2 (its square root is the relative force error). V's forces are ``forces``
        (the dataset's stored ones, so that an expensive force field is not evaluated again) or, if ``None``,
        computed. With no network (the classical row) the heads' forces are the baseline's alone.

        ``learned_targets``, one tensor per head, replaces the target of each head's learned forces (V's less the
        anchor) by another, e.g. a frozen model's learned forces, to hold a fine-tuned model where it was; the
        relative scale stays V's.

        With constraints only the part of a force that moves the system matters: a kick's velocity change is
        RATTLE-projected, so forces are compared after the same projection of ``F/m`` (components along the
        constraints, which no dynamics sees, are neither fitted nor counted)."""
        reference = self.dynamical_forces(q, (self.reference_forces(q) if forces is None else forces).detach())
        scale = (reference ** 2).mean()
        if learned_targets is not None and (self.kicks.network is None or len(learned_targets) != self.n_heads):
            raise InputError(f"learned force targets need a network and one target per head ({self.n_heads}); "
                             f"got {len(learned_targets)}: give each head's target.")
        if not self.options.anchored:
            anchor = torch.zeros_like(reference)
        elif learned_targets is None:
            anchor = reference if self.options.baseline is None else self.dynamical_forces(q, self.kick_forces(q))
        loss = torch.zeros((), dtype=torch.float64)
        for head in range(self.n_heads):
            if learned_targets is not None:
                target = learned_targets[head].detach()
                difference = self.dynamical_forces(q, self.kicks.learned_forces(q, head) - target)
            else:
                learned = 0.0 if self.kicks.network is None else \
                    self.dynamical_forces(q, self.kicks.learned_forces(q, head))
                difference = learned + anchor - reference
            loss = loss + (difference ** 2).mean() / scale
        return loss / self.n_heads

    def energy_matching_loss(self, q: torch.Tensor, energies: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Variance over the batch of each head's kick potential (``dW``, ``V + dW`` or ``B + dW``) minus the force
        field's energy V, relative to V's variance over the training frames (:attr:`energy_scale`), averaged over
        the heads; its square root is the relative energy error. A constant offset is free, as it moves no atom.

        Why it matters for a surrogate: to second order in ``W - V`` the relative entropy between V's Boltzmann
        ensemble and W's is var_V(W - V) / 2 kT^2, and to first order W's ensemble shifts an observable A by
        -cov_V(A, W - V) / kT. Forces fix W only locally; this term ties its energy between configurations.
        V's energies are ``energies`` (the dataset's stored ones) or, if ``None``, computed."""
        reference = (self.potential.energy_and_forces(q)[0] if energies is None else energies).detach()
        if not self.options.anchored:
            anchor = torch.zeros_like(reference)
        else:
            anchor = reference if self.options.baseline is None else self.kick_potential.energy_and_forces(q)[0]
        loss = torch.zeros((), dtype=torch.float64)
        for head in range(self.n_heads):
            learned = 0.0 if self.kicks.network is None else self.kicks.learned_energy(q, head)
            difference = learned + anchor - reference
            loss = loss + ((difference - difference.mean()) ** 2).mean() / self.energy_scale
        return loss / self.n_heads

    def tie_loss(self, q: torch.Tensor, forces: Optional[torch.Tensor] = None,
                 energies: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The tie of the heads to the force field: :meth:`force_matching_loss`, plus ``energy_matching`` times
        :meth:`energy_matching_loss` when that weight is set."""
        loss = self.force_matching_loss(q, forces)
        if self.options.energy_matching > 0:
            loss = loss + self.options.energy_matching * self.energy_matching_loss(q, energies)
        return loss

    def dynamical_forces(self, q: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
        """``forces`` with the parts along the constraints removed (mass-weighted, as RATTLE removes them)."""
        if self.constraints is None:
            return forces
        masses = self.masses.to(forces.dtype)[:, None]
        return masses * self.constraints.project_velocities(q, forces / masses)

    def validation_tie_loss(self) -> float:
        """:meth:`tie_loss` on validation frames."""
        q, _, forces, energies = self.windows(0, self.validation_segments, 128)
        with torch.no_grad():
            return float(self.tie_loss(q[:, 0], forces, energies))

    def surrogate_errors(self, q: torch.Tensor, forces: Optional[torch.Tensor],
                         energies: Optional[torch.Tensor]) -> dict:
        """The heads' relative force error and, when the data has energies, relative energy error at ``q``."""
        with torch.no_grad():
            errors = {"force": float(self.force_matching_loss(q, forces)) ** 0.5}
            if self.energy_scale:
                errors["energy"] = float(self.energy_matching_loss(q, energies)) ** 0.5
        return errors

    def validate(self) -> dict:
        """Validation loss at the first curriculum unroll and one-step relative errors."""
        q, v, forces, energies = self.windows(1, self.validation_segments, 64)
        with torch.no_grad():
            loss, _ = self.unroll_loss(q, v)
            q1, v1, _ = self.stepper.step(q[:, 0], v[:, 0])
        errors = relative_errors(self.masses.numpy(), self.options.step, q[:, 0].numpy(), v[:, 0].numpy(),
                                 q[:, 1].numpy(), v[:, 1].numpy(), q1.numpy(), v1.numpy())
        if not self.options.anchored or self.options.baseline is not None:
            errors.update(self.surrogate_errors(q[:, 0], forces, energies))
        return {"validation_loss": float(loss), "errors": errors}

    def gate(self) -> GateResult:
        """The NVE gate from validation starts drawn at the model's temperature (the first dataset's, when
        several were combined): hotter segments widen the training data but would make the gate judge another
        ensemble."""
        gate = self.options.gate
        temperatures = self.dataset.segment_temperatures
        at_temperature = np.array([s for s in self.validation_segments
                                   if temperatures[s] == self.dataset.temperature])
        q, v, _, _ = self.windows(0, at_temperature if len(at_temperature) else self.validation_segments,
                                  gate.n_trajectories)
        return run_gate(self.stepper, lambda x: self.potential.energy_and_forces(x)[0], q[:, 0], v[:, 0],
                        self.dataset.temperature, gate, self.dataset.elements)


def baseline_system(dataset: ReferenceDataset, system: mm.System, forcefield: list[str]) -> mm.System:
    """``system`` (the data's) with the forces of the baseline ``forcefield``, built as the dataset's metadata
    record (:func:`~openmm_actionml.examples.build_baseline`)."""
    return replace_forces(system, build_baseline(dataset.metadata, forcefield, dataset.elements).system)


class EarlyStopping:
    """Keeps the network state of the best validation score; says stop after ``patience`` validations without
    improvement."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("inf")
        self.state: Optional[dict] = None
        self.stale = 0

    def update(self, score: float, network: torch.nn.Module) -> bool:
        """Record a validation ``score``; return whether to stop."""
        if score < self.best:
            self.best, self.state, self.stale = score, copy.deepcopy(network.state_dict()), 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def restore(self, network: torch.nn.Module) -> None:
        """Load the best state seen, if any."""
        if self.state is not None:
            network.load_state_dict(self.state)


class ProgressLine:
    """A one-line progress indicator for one training stage on stderr, redrawn at most once a second."""

    def __init__(self, stage: str, total: int, enabled: bool = True, done: int = 0) -> None:
        self.stage, self.total, self.enabled, self.first = stage, total, enabled, done
        self.started = time.time()
        self.last = 0.0

    def update(self, iteration: int, **values: float) -> None:
        """Show ``iteration`` of ``total`` and the named ``values`` (losses)."""
        now = time.time()
        if not self.enabled or (now - self.last < 1.0 and iteration < self.total):
            return
        self.last = now
        rate = (iteration - self.first) / max(now - self.started, 1e-9)
        eta = (self.total - iteration) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{name.replace('_', '-')} {value:.3e}" for name, value in values.items())
        sys.stderr.write(f"\r[{self.stage}] {iteration}/{self.total} {shown} eta {eta:.0f} s   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)


def train(dataset: ReferenceDataset, system: Optional[mm.System], options: TrainingOptions, output: str | Path,
          checkpoint: Optional[str | Path] = None, overwrite: bool = False, system_name: str = "",
          progress: bool = True, command: str = "", candidate: Optional[str] = None) -> TrainingReport:
    """Train a scheme-A model, gate it on NVE ensembles and export the chosen candidate.

    Parameters
    ----------
    dataset
        Reference data (:func:`openmm_actionml.generate.generate_reference_data`).
    system
        The OpenMM System the data came from (its force field is V); ``None`` takes the one the dataset carries.
    options
        The recipe.
    output
        Model file to write (atomically). Nothing is written when no candidate passes the gate.
    checkpoint
        A checkpoint file; if it exists the run resumes from it, and it is updated as training goes.
    overwrite
        Replace an existing output file.
    system_name, command
        Stored in the model's metadata and recipe.
    candidate
        Export the candidate of this name (e.g. ``"k=8"``) whatever the gate said, instead of the most accurate
        one that passed; its verdict stays in the report. For studies that judge candidates by larger ensembles.
    """
    output = check_writable(output, overwrite)
    phases = (["pretrain"] if options.pretrain_iterations else []) + [f"k={k}" for k in options.curriculum]
    if candidate is not None and candidate not in phases:
        raise InputError(f"candidate {candidate!r} is not one of this run's candidates ({', '.join(phases)}); pass "
                         f"one of those names.")
    started = time.time()
    trainer = Trainer(dataset, system if system is not None else dataset.system(), options)
    state = {"phase": 0, "iteration": 0, "candidates": [], "classical": None, "wall_seconds": 0.0}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["options"] != asdict(options):
            raise InputError(f"checkpoint {checkpoint} belongs to a run with other options; delete it or pass the "
                             f"same options to resume.")
        trainer.network.load_state_dict(saved["network"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.scheduler.load_state_dict(saved["scheduler"])
        trainer.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    resumed_wall = state["wall_seconds"]

    def save() -> None:
        state["wall_seconds"] = resumed_wall + time.time() - started
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {"options": asdict(options), "network": trainer.network.state_dict(),
                                          "optimizer": trainer.optimizer.state_dict(),
                                          "scheduler": trainer.scheduler.state_dict(),
                                          "rng": trainer.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                                          "state": state})

    if state["classical"] is None:
        # The classical splitting (dW = 0) is the baseline every candidate is compared with.
        saved_network = trainer.kicks.network
        trainer.kicks.network = None if options.anchored else saved_network
        classical = trainer.validate() if options.anchored else None
        gate = trainer.gate() if options.anchored else None
        trainer.kicks.network = saved_network
        state["classical"] = {"name": "classical", "validation_loss": classical["validation_loss"],
                              "errors": classical["errors"], "gate": {**gate.to_dict(), "summary": gate.summary()}} \
            if classical else {"name": "classical", "validation_loss": float("nan"),
                               "errors": {"dv": float("nan"), "dq": float("nan")}, "gate": {"summary": "n/a (pure ML)"}}
    while state["phase"] < len(phases):
        phase = phases[state["phase"]]
        pretrain = phase == "pretrain"
        k = 0 if pretrain else options.curriculum[state["phase"] - (1 if options.pretrain_iterations else 0)]
        total = options.pretrain_iterations if pretrain else options.iterations
        stopping = EarlyStopping(options.patience)
        line = ProgressLine(phase, total, progress, done=state["iteration"])
        while state["iteration"] < total:
            q, v, forces, energies = trainer.windows(k, trainer.train_segments,
                                                     options.pretrain_batch_size if pretrain else options.batch_size)
            trainer.optimizer.zero_grad()
            if pretrain:
                loss, penalty = trainer.tie_loss(q[:, 0], forces, energies), torch.zeros(())
            else:
                loss, penalty = trainer.unroll_loss(q, v)
                if options.force_matching > 0:
                    loss = loss + options.force_matching * trainer.tie_loss(q[:, 0], forces, energies)
            if not bool(torch.isfinite(loss + penalty)):
                raise SimulationInstabilityError(
                    f"training loss became {float(loss + penalty)} in {phase}: the learned map blew up on a training "
                    f"window. Lower the learning rate, raise energy_penalty, or shorten the curriculum.")
            (loss + penalty).backward()
            trainer.optimizer.step()
            trainer.scheduler.step()
            state["iteration"] += 1
            line.update(state["iteration"], loss=loss.item(), energy_penalty=penalty.item())
            if state["iteration"] % options.eval_every == 0 or state["iteration"] == total:
                score = trainer.validate()["validation_loss"] if not pretrain else trainer.validation_tie_loss()
                if stopping.update(score, trainer.network):
                    break
            if state["iteration"] % options.checkpoint_every == 0:
                save()
        line.close()
        stopping.restore(trainer.network)
        # Every stage's result is a candidate, the force-matched surrogate of pure ML's pretraining included.
        metrics = trainer.validate()
        gate = trainer.gate()
        state["candidates"].append({"name": phase, "unroll": k, **metrics,
                                    "gate": {**gate.to_dict(), "summary": gate.summary()},
                                    "network": copy.deepcopy(trainer.network.state_dict())})
        if progress:
            sys.stderr.write(f"[{phase}] validation dv {metrics['errors']['dv']:.3%}, gate: {gate.summary()}\n")
        state["phase"] += 1
        state["iteration"] = 0
        save()
    passing = [i for i, c in enumerate(state["candidates"]) if c["gate"]["passed"]]
    report = TrainingReport([{key: value for key, value in c.items() if key != "network"} for c in state["candidates"]],
                            -1, state["classical"], resumed_wall + time.time() - started)
    if candidate is None and not passing:
        raise GateFailedError("no candidate passed the NVE ensemble gate, so no model was written:\n" + report.summary()
                              + "\nTry a larger energy_penalty, a longer curriculum, more data, or a smaller step.")
    chosen = phases.index(candidate) if candidate is not None else min(
        passing, key=lambda i: state["candidates"][i]["validation_loss"])
    report.chosen = chosen
    trainer.network.load_state_dict(state["candidates"][chosen]["network"])
    export_model(copy.deepcopy(trainer.network).float(), _metadata(trainer, system_name, report, command), output,
                 overwrite)
    return report


def base_recipe(dataset: ReferenceDataset, options: OptimisationOptions, command: str) -> dict:
    """The part of a model's recipe every trainer writes: options, command, the system (so ``actionml run`` can
    rebuild it) and the data's protocol and provenance."""
    return {"options": json.loads(json.dumps(asdict(options))), "command": command,
            "system": {"input": dataset.metadata.get("input"),
                       "settings": {key: value for key, value in dataset.metadata.items()
                                    if key not in ("protocol", "provenance", "command", "input",
                                                   "combined_temperatures", "segment_temperatures")}},
            "dataset_temperatures": dataset.metadata.get("combined_temperatures", [dataset.temperature]),
            "dataset_protocol": dataset.metadata.get("protocol"),
            "dataset_provenance": dataset.metadata.get("provenance")}


def _metadata(trainer: Trainer, system_name: str, report: TrainingReport, command: str) -> ModelMetadata:
    dataset, options = trainer.dataset, trainer.options
    constraints = [] if trainer.constraints is None else [
        [int(i), int(j), float(d)] for (i, j), d in zip(trainer.constraints.pairs.tolist(), trainer.constraints.distances)]
    return ModelMetadata(
        scheme="A", step=options.step, splitting=trainer.stepper.splitting.to_dict(), anchored=options.anchored,
        elements=list(dataset.elements), masses=[float(m) for m in dataset.masses], constraints=constraints,
        periodic=dataset.box is not None, network=trainer.network.config_dict(), temperature=dataset.temperature,
        system_name=system_name, force_field=force_classes(trainer.kick_system) if options.anchored else None,
        baseline=options.baseline,
        recipe={**base_recipe(dataset, options, command),
                "report": {"classical": report.classical, "candidates": report.candidates, "chosen": report.chosen}})
