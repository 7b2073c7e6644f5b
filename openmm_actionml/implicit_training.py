"""Training scheme-B models (the implicit midpoint generating function) from reference data.

The loss is :func:`implicit.gradient_matching_loss` on data pairs one step ``h`` apart: how far each pair is from
solving the model's midpoint equations, in thermal units (DESIGN.md section 4). No solve is needed, and the node
positions ``q̄ + c_k h v̄`` are built from data alone, so anchored training (``U_k = V + dU_k``) needs the force
field's forces there but no Hessian-vector products of V. Pure-ML training (``U_k = dU_k``) needs a
force-matching tie of every head to V (``force_matching > 0``), as in scheme A.

Adam with a geometric learning-rate decay; every ``eval_every`` iterations the gradient-matching loss on a fixed
set of validation pairs (held-out segments) is measured, the best network is kept and training stops after
``patience`` evaluations without improvement. The report then *solves* the map (``ImplicitStepper``, Anderson)
from validation pairs and compares one step with the data (relative ``dv`` and ``dq`` as in scheme A's report),
for the unlearned scheme (``U = V``), the classical predictor alone, and the trained model, with the solver's
iteration counts (the configured solver, and plain iteration for comparison).

The exported model has ``scheme='B'``, ``implicit = ImplicitScheme.to_dict()`` plus ``predictor_forces`` (what the
predictor's kicks use: ``force_field`` for anchored models by default, ``model``), and, as ``splitting``, its
predictor (:func:`implicit_program.predictor_splitting`; empty for the trivial start). Run it with
:func:`implicit_program.add_implicit_step`. Scheme B is unconstrained-only: data or Systems with constraints are
refused.
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import openmm as mm

from .atomic import check_writable
from .constraints import ConstraintSet
from .dataset import ReferenceDataset
from .diagnostics import relative_errors
from .errors import InputError, SimulationInstabilityError
from .implicit import (FixedPointSolver, ImplicitConvergenceWarning, ImplicitStepper, get_implicit_scheme,
                       gradient_matching_terms)
from .implicit_program import PREDICTOR_FORCES, default_predictor_forces, predictor_splitting
from .kicks import KickPotential
from .modelfile import ModelMetadata, export_model
from .splitting import SplittingStepper
from .training import EarlyStopping, OptimisationOptions, ProgressLine, Trainer, base_recipe

__all__ = ["ImplicitTrainingOptions", "ImplicitTrainingReport", "ImplicitTrainer", "train_implicit"]


@dataclass
class ImplicitTrainingOptions(OptimisationOptions):
    """A scheme-B training run: :class:`training.OptimisationOptions` (here ``iterations`` is the whole
    gradient-matching run) and

    Attributes
    ----------
    scheme
        ``gauss3`` (default; two heads: centre and pair), ``gauss2`` or ``midpoint``; see
        :data:`implicit.IMPLICIT_SCHEMES`.
    predictor
        The scheme-A splitting that starts the solve (``T3``, ``S2``, ``VV``) or ``none``.
    predictor_forces
        What the predictor kicks with: ``force_field`` (anchored only; no network evaluation) or ``model`` (the
        heads named by the splitting). Default: ``force_field`` when anchored, else ``model``.
    validation_pairs
        Held-out pairs of the early-stopping loss (drawn once).
    solve_pairs
        Held-out pairs solved one at a time for the report's errors and iteration counts.
    solver
        :class:`FixedPointSolver` options for the report's solves; default Anderson(5), tolerance 1e-6.
    export_dtype
        ``float32`` (default, as scheme A) or ``float64`` for the exported network.
    """

    iterations: int = 600
    patience: int = 4
    scheme: str = "gauss3"
    predictor: str = "T3"
    predictor_forces: Optional[str] = None
    validation_pairs: int = 128
    solve_pairs: int = 24
    solver: dict = field(default_factory=dict)
    export_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline is not None:
            raise InputError("scheme B is trained against the data's own force field; a baseline force field is a "
                             "scheme-A option (leave --implicit out).")
        if self.force_constants:
            raise InputError("learned force constants are a scheme-A correction; scheme B learns a network (leave "
                             "--implicit or --force-constants out).")
        get_implicit_scheme(self.scheme)
        self.solver_settings()
        if self.predictor_forces is None:
            self.predictor_forces = default_predictor_forces(self.anchored)
        if self.predictor_forces not in PREDICTOR_FORCES or (self.predictor_forces == "force_field"
                                                             and not self.anchored):
            raise InputError(f"predictor_forces must be 'model' or (anchored models only) 'force_field', got "
                             f"{self.predictor_forces!r}.")
        if self.export_dtype not in ("float32", "float64"):
            raise InputError(f"export_dtype must be 'float32' or 'float64', got {self.export_dtype!r}.")
        for name in ("validation_pairs", "solve_pairs"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}.")

    def solver_settings(self) -> FixedPointSolver:
        """The report's solver; non-convergence is counted, not raised."""
        return FixedPointSolver(**{"on_nonconvergence": "warn", **self.solver})


@dataclass
class ImplicitTrainingReport:
    """The outcome of :func:`train_implicit`.

    ``classical`` (the unlearned scheme, ``U = V``), ``predictor`` (the classical predictor splitting alone) and
    ``trained`` each hold ``validation_loss`` (gradient matching, thermal units; ``nan`` for the predictor),
    ``errors`` ``{"dv", "dq"}`` of one solved step against the data, and ``solver``/``plain`` iteration
    statistics (``mean``, ``max``, ``unconverged`` over the solved pairs).
    """

    classical: dict
    predictor: dict
    trained: dict
    history: list[dict]
    wall_seconds: float

    def summary(self) -> str:
        lines = ["model        val-loss   dv(rel)   dq(rel)   iterations (solver | plain): mean max unconverged"]
        for name in ("predictor", "classical", "trained"):
            c = getattr(self, name)
            its = " | ".join(f"{c[k]['mean']:.1f} {c[k]['max']} {c[k]['unconverged']}" if c.get(k) else "-"
                             for k in ("solver", "plain"))
            lines.append(f"{name:<11} {c['validation_loss']:.3e}  {c['errors']['dv']:.3%}  {c['errors']['dq']:.3%}"
                         f"   {its}")
        lines.append(f"wall time {self.wall_seconds / 60:.1f} min")
        return "\n".join(lines)


class ImplicitTrainer(Trainer):
    """Owns the data, the network, the force field and the optimiser of a scheme-B run.

    It reuses :class:`training.Trainer`'s ``windows``, ``reference_forces`` and ``tie_loss``; its
    set-up differs in the number of heads (the implicit scheme's) and in having no splitting stepper to train.
    """

    def __init__(self, dataset: ReferenceDataset, system: mm.System, options: ImplicitTrainingOptions) -> None:
        _refuse_constraints(dataset, system)
        self.constraints = None
        self.scheme = get_implicit_scheme(options.scheme)
        self.predictor = predictor_splitting(options.predictor, self.scheme)
        self.setup(dataset, system, options, self.scheme.n_heads, options.pretrain_iterations + options.iterations)
        self.classical_kicks = KickPotential(None, self.reference_forces, self.box)
        q, v, _, _ = self.windows(1, self.validation_segments, options.validation_pairs)
        self.validation = (q[:, 0], v[:, 0], q[:, 1], v[:, 1])
        self.solve_set = tuple(x[:options.solve_pairs] for x in self.validation)

    def loss_terms(self, q: torch.Tensor, v: torch.Tensor, q1: torch.Tensor, v1: torch.Tensor,
                   kicks: Optional[KickPotential] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity and position halves of the gradient-matching loss (thermal units)."""
        return gradient_matching_terms(kicks if kicks is not None else self.kicks, self.scheme, self.options.step,
                                       self.masses, q, v, q1, v1, self.kT)

    def validation_loss(self, kicks: Optional[KickPotential] = None) -> float:
        with torch.no_grad():
            velocity, position = self.loss_terms(*self.validation, kicks)
        return float(velocity + position)

    def solve(self, kicks: KickPotential, solver: FixedPointSolver) -> tuple[dict, dict]:
        """Solve one step from each of the ``solve_set`` pairs: relative errors and iteration statistics."""
        forces = lambda x, head: kicks(x, head).detach()  # noqa: E731
        h = self.options.step
        predictor = None
        if self.predictor is not None:
            start = self.classical_kicks if self.options.predictor_forces == "force_field" else kicks
            predictor = SplittingStepper(self.predictor, h, self.masses, lambda x, head: start(x, head).detach())
        stepper = ImplicitStepper(self.scheme, h, self.masses, forces, solver, predictor, kT=self.kT)
        q, v, q1, v1 = self.solve_set
        results, iterations, unconverged = [], [], 0
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ImplicitConvergenceWarning)
            for i in range(len(q)):
                q_new, v_new, stats = stepper.step(q[i], v[i])
                results.append((q_new, v_new))
                iterations.append(stats.iterations)
                unconverged += not stats.converged
        q_pred = torch.stack([r[0] for r in results]).numpy()
        v_pred = torch.stack([r[1] for r in results]).numpy()
        errors = relative_errors(self.masses.numpy(), h, q.numpy(), v.numpy(), q1.numpy(), v1.numpy(), q_pred, v_pred)
        return errors, {"mean": float(np.mean(iterations)), "max": int(max(iterations)), "unconverged": unconverged,
                        "tolerance": solver.tolerance, "method": solver.method}

    def evaluate(self, kicks: KickPotential, plain: bool = True) -> dict:
        """Validation loss, solved one-step errors and solver iterations of the map with ``kicks``."""
        solver = self.options.solver_settings()
        errors, stats = self.solve(kicks, solver)
        if kicks.network is not None and not self.options.anchored:
            q, _, forces, energies = self.windows(0, self.validation_segments, 128)
            errors.update(self.surrogate_errors(q[:, 0], forces, energies))
        result = {"validation_loss": self.validation_loss(kicks), "errors": errors, "solver": stats}
        if plain:
            plain_solver = FixedPointSolver("plain", tolerance=solver.tolerance, max_iterations=solver.max_iterations,
                                            on_nonconvergence="warn")
            result["plain"] = self.solve(kicks, plain_solver)[1]
        return result

    def predictor_only(self) -> dict:
        """The classical predictor splitting (force field only) alone: the cheap map scheme B corrects."""
        if self.predictor is None:
            return {"validation_loss": float("nan"), "errors": {"dv": float("nan"), "dq": float("nan")}}
        stepper = SplittingStepper(self.predictor, self.options.step, self.masses,
                                   lambda x, head: self.classical_kicks(x, head).detach())
        q, v, q1, v1 = self.solve_set
        with torch.no_grad():
            q_pred, v_pred, _ = stepper.step(q, v)
        errors = relative_errors(self.masses.numpy(), self.options.step, q.numpy(), v.numpy(), q1.numpy(),
                                 v1.numpy(), q_pred.numpy(), v_pred.numpy())
        return {"validation_loss": float("nan"), "errors": errors}


def _refuse_constraints(dataset: ReferenceDataset, system: mm.System) -> None:
    if dataset.n_constraints or ConstraintSet.from_system(system) is not None:
        count = max(dataset.n_constraints, system.getNumConstraints())
        raise InputError(f"the reference data or System have {count} constraints, but scheme B (implicit midpoint) is "
                         f"unconstrained-only: the midpoint of two constrained configurations is off the constraint "
                         f"manifold. Generate flexible data (actionml generate without constraints) or train scheme A "
                         f"(actionml train), which handles constraints with RATTLE.")


def train_implicit(dataset: ReferenceDataset, system: Optional[mm.System], options: ImplicitTrainingOptions,
                   output: str | Path, overwrite: bool = False, system_name: str = "", progress: bool = True,
                   command: str = "") -> ImplicitTrainingReport:
    """Train a scheme-B model by gradient matching and export it.

    Parameters
    ----------
    dataset
        Flexible reference data (:func:`openmm_actionml.generate.generate_reference_data`).
    system
        The OpenMM System the data came from (its force field is V); ``None`` takes the one the dataset carries.
    options
        The recipe.
    output
        Model file to write (atomically).
    overwrite
        Replace an existing output file.
    system_name, command
        Stored in the model's metadata and recipe.
    progress
        Write progress to stderr.

    Raises
    ------
    InputError
        For constrained data or Systems, or a step that is not a multiple of the data's spacing.
    SimulationInstabilityError
        If the loss becomes non-finite.
    """
    output = check_writable(output, overwrite)
    started = time.time()
    trainer = ImplicitTrainer(dataset, system if system is not None else dataset.system(), options)
    classical = trainer.evaluate(trainer.classical_kicks)
    predictor = trainer.predictor_only()
    if progress:
        sys.stderr.write(f"[scheme B {trainer.scheme.name}, h = {options.step * 1000:g} fs] unlearned: validation loss "
                         f"{classical['validation_loss']:.3e}, dv {classical['errors']['dv']:.3%}, "
                         f"dq {classical['errors']['dq']:.3%}, {classical['solver']['mean']:.1f} iterations\n")
    history: list[dict] = []
    phases = [("pretrain", options.pretrain_iterations)] if options.pretrain_iterations else []
    phases.append(("gradient-matching", options.iterations))
    for phase, total in phases:
        stopping = EarlyStopping(options.patience)
        line = ProgressLine(phase, total, progress)
        for iteration in range(1, total + 1):
            q, v, forces, energies = trainer.windows(1, trainer.train_segments, options.pretrain_batch_size
                                                     if phase == "pretrain" else options.batch_size)
            trainer.optimizer.zero_grad()
            tie = trainer.tie_loss(q[:, 0], forces, energies) if options.force_matching > 0 or phase == "pretrain" \
                else torch.zeros((), dtype=torch.float64)
            if phase == "pretrain":
                loss = tie
            else:
                velocity, position = trainer.loss_terms(q[:, 0], v[:, 0], q[:, 1], v[:, 1])
                loss = velocity + position + options.force_matching * tie
            if not bool(torch.isfinite(loss)):
                raise SimulationInstabilityError(
                    f"the scheme-B training loss became {float(loss)} in {phase} at iteration {iteration}; lower the "
                    f"learning rate or check the reference data for blown-up frames.")
            loss.backward()
            trainer.optimizer.step()
            trainer.scheduler.step()
            line.update(iteration, loss=loss.item(), force_tie=tie.item())
            if iteration % options.eval_every == 0 or iteration == total:
                score = trainer.validation_tie_loss() if phase == "pretrain" else trainer.validation_loss()
                history.append({"phase": phase, "iteration": iteration, "train_loss": loss.item(),
                                "validation_loss": score})
                if stopping.update(score, trainer.network):
                    break
        line.close()
        stopping.restore(trainer.network)
    trained = trainer.evaluate(trainer.kicks)
    report = ImplicitTrainingReport(classical, predictor, trained, history, time.time() - started)
    if progress:
        sys.stderr.write(report.summary() + "\n")
    dtype = torch.float32 if options.export_dtype == "float32" else torch.float64
    export_model(copy.deepcopy(trainer.network).to(dtype), _metadata(trainer, system_name, report, command), output,
                 overwrite)
    return report


def _metadata(trainer: ImplicitTrainer, system_name: str, report: ImplicitTrainingReport,
              command: str) -> ModelMetadata:
    dataset, options = trainer.dataset, trainer.options
    return ModelMetadata(
        scheme="B", step=options.step, splitting={} if trainer.predictor is None else trainer.predictor.to_dict(),
        anchored=options.anchored, elements=list(dataset.elements), masses=[float(m) for m in dataset.masses],
        constraints=[], periodic=dataset.box is not None, network=trainer.network.config_dict(),
        temperature=dataset.temperature, system_name=system_name,
        implicit={**trainer.scheme.to_dict(), "predictor_forces": options.predictor_forces},
        recipe={**base_recipe(dataset, options, command),
                "report_solver": trainer.options.solver_settings().to_dict(),
                "report": {"classical": report.classical, "predictor": report.predictor, "trained": report.trained,
                           "history": report.history, "wall_seconds": report.wall_seconds}})
