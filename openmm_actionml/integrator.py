"""``ActionMLIntegrator``: a learned long step as an OpenMM CustomIntegrator; ``SplittingIntegrator``: the same
program on the force field alone (the classical splittings velocity Verlet, S2 and T3).

Scheme A (the default) is a learned palindromic kick/drift splitting, described below. Scheme B (the implicit
midpoint generating function) replaces the stages by the fixed-point solve of
:mod:`openmm_actionml.implicit_program`; its ``step()`` also raises :class:`ActionMLConvergenceError` (or warns,
per the solver's ``on_nonconvergence``) when a solve did not converge.

One step, in the shape of openmmtools' ``LangevinIntegrator(splitting="O V R V R ... V O")``::

    update context state; [O half-step]; kick drift kick ... drift kick; [O half-step]

- **O** (only with a ``temperature``): the exact Ornstein-Uhlenbeck half-step
  ``v <- a v + sqrt((1 - a^2) kT/m) xi`` with ``a = exp(-friction h/2)``, then a RATTLE velocity projection.
- **kick** ``(c, k)``: ``v <- v + c h (f + f_k)/m`` then a RATTLE velocity projection. ``f`` is the force field
  (anchored models only) and ``f_k`` the learned head ``k``. The kick copies ``f`` to the per-DOF variable
  ``actionml_ff``; then, as the TorchForce of :func:`add_learned_force` sits alone in force group 30 and is
  switched by two context parameters, it sets ``actionml_node = k`` and ``actionml_active = 1``, copies ``f30``
  to ``actionml_fw`` and sets ``actionml_active = 0`` again. The learned term never appears outside a step.
- **drift** ``c``: ``x <- x + c h v``; with constraints, a SHAKE projection and the matching velocity
  correction ``v += (x - x_unconstrained)/(c h)``, then RATTLE, exactly as :class:`SplittingStepper` does.

Force groups, as verified on Reference, CPU and OpenCL with OpenMM 8.4: ``setIntegrationForceGroups(0..29)``
makes ``f`` the force field alone, and ``f30`` is group 30 whatever the integration groups. An expression may
read one force variable, hence the per-DOF copies. OpenMM skips particles of zero mass in every per-DOF
computation and sum on all three platforms, so no ``m = 0`` guard is written out; their positions and
velocities stay fixed. (PoCL's single/mixed-precision compiler rejects ``1/m``, which the program never contains.)

First same as last: the last kick keeps its forces (its head is the first kick's, by the palindrome) with the
positions they were evaluated at; the next step's first kick reuses them unless the positions changed in between
(an exact comparison, which catches ``setPositions``, ``loadState`` and barostat moves). Per-DOF copies are
needed because any assignment to a context parameter invalidates OpenMM's cached forces. Counted on Reference,
CPU and OpenCL: 3 force-field and 3 network evaluations per T3 step with reuse, 4 and 4 without.

NaN: every :meth:`ActionMLIntegrator.step` reads one global, the sum of ``x^2 + v^2`` at the end of the step,
and raises :class:`SimulationInstabilityError` if it is not finite; it also turns OpenMM's own NaN exception
(the CPU platform checks coordinates in every force evaluation) into that error. If that exception comes from
a learned evaluation (pure-ML models on CPU), ``actionml_active`` stays 1 until the next step,
``loadState`` or ``loadCheckpoint``.

Serialisation: ``XmlSerializer.serialize(integrator)`` stores the CustomIntegrator program, not the model;
deserialising gives a plain ``CustomIntegrator`` that takes the same steps when the System carries the learned
TorchForce, but without this class's checks (step size, NaN). Checkpoints (``Context.createCheckpoint``,
``Simulation.saveCheckpoint``) include the integrator's variables; ``saveState`` does not need them.

A Context cannot be created for a System without the learned force: OpenMM refuses it with
``Unknown global variable: actionml_...``, because the program assigns context parameters the System does not
define. :meth:`ActionMLIntegrator.validate` names this and the fix before any Context is made.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Optional

import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import openmm as mm
import openmm.unit as u

from .errors import InputError, ModelMismatchError, SimulationInstabilityError
from .force_constant_correction import bakes_into_system, with_learned_factors
from .implicit import FixedPointSolver
from .implicit_program import ImplicitProgram, add_implicit_step, check_convergence, read_solver_state
from .modelfile import (ACTIVE_PARAMETER, LEARNED_FORCE_GROUP, LEARNED_FORCE_NAME, NODE_PARAMETER, ActionMLModel,
                        load_model)
from .splitting import Splitting, get_splitting
from .units import BOLTZMANN, positive_float

__all__ = ["ActionMLIntegrator", "SplittingIntegrator", "add_learned_force", "LEARNED_FORCE_GROUP"]

#: Groups 30 and 31 are reserved for learned terms; the force field stays in 0-29.
RESERVED_GROUPS = (LEARNED_FORCE_GROUP, 31)

_FORCE_FIELD = "actionml_ff"      # per DOF: the force field's forces of the current kick (anchored)
_LEARNED = "actionml_fw"          # per DOF: the learned forces of the current kick
_FORCES_AT = "actionml_fx"        # per DOF: the positions of the last kick's forces, kept for reuse
_STALE = "actionml_stale"         # 1 until _FORCES_AT holds real positions
_MOVED = "actionml_moved"         # sum of (x - _FORCES_AT)^2 + _STALE: zero when reuse is valid
_UNCONSTRAINED = "actionml_x1"    # per DOF: positions before the SHAKE projection of a drift
_CHECK = "actionml_check"         # sum of x^2 + v^2 at the end of the step: finite unless the step blew up


def _as_model(model: ActionMLModel | str | Path) -> ActionMLModel:
    return model if isinstance(model, ActionMLModel) else load_model(model)


def _reserved_forces(system: mm.System) -> list[str]:
    """Descriptions of forces in the reserved groups or named like the learned force."""
    found = []
    for index, force in enumerate(system.getForces()):
        if force.getForceGroup() in RESERVED_GROUPS or force.getName() == LEARNED_FORCE_NAME:
            found.append(f"force {index} ({force.getName()}, group {force.getForceGroup()})")
    return found


def add_learned_force(system: mm.System, model: ActionMLModel | str | Path) -> mm.System:
    """A copy of ``system`` with the model's learned TorchForce added in group 30.

    Parameters
    ----------
    system
        The force-field System the model was trained on (forces in groups 0-29). It is not modified.
    model
        An :class:`ActionMLModel` or the path of a model file.

    Raises
    ------
    ModelMismatchError
        If the model does not fit the System, or the System already has the learned force or another force in
        groups 30-31.
    """
    model = _as_model(model)
    model.validate(system)
    _check_force_field_system(system)
    system = copy.deepcopy(system)
    system.addForce(model.create_force())
    return system


def learned_step(system: mm.System, model: ActionMLModel | str | Path, temperature: Any = None,
                 friction: Any = None, topology: Optional[mm.app.Topology] = None) -> tuple[mm.System, mm.Integrator]:
    """The System and integrator that take ``model``'s learned step on the force-field ``system``.

    A model of learned force constants with one set for every kick (``actionml train --force-constants
    --tied-heads``) is its classical splitting on a scaled force field, so it is baked into the System
    (:func:`~openmm_actionml.force_constant_correction.with_learned_factors`) for a :class:`SplittingIntegrator`:
    the same step with no TorchForce, at the classical splitting's cost. Any other model gets its learned force
    (:func:`add_learned_force`) and an :class:`ActionMLIntegrator` (the two parts: :func:`learned_system`,
    :func:`learned_integrator`). A baked System's States report the scaled force field's energy; with the
    TorchForce they report the force field's (the learned term is on only inside a step).

    Parameters
    ----------
    system, model
        As for :func:`add_learned_force`.
    temperature, friction
        Langevin bath (K, 1/ps or Quantities); ``None`` for NVE.
    topology
        If given, its elements are checked against the model's.

    Raises
    ------
    ModelMismatchError
        If the model does not fit the System, or the System already has a learned force.
    """
    model = _as_model(model)
    model.validate(system, step=model.metadata.step, topology=topology)
    return learned_system(system, model), learned_integrator(model, temperature, friction)


def learned_system(system: mm.System, model: ActionMLModel | str | Path) -> mm.System:
    """The System of :func:`learned_step`: a copy of the force-field ``system`` with a tied force-constant model's
    factors baked in, or with the model's learned force added (:func:`add_learned_force`).

    Raises
    ------
    ModelMismatchError
        If the model does not fit the System, or the System already has a learned force.
    """
    model = _as_model(model)
    if not bakes_into_system(model):
        return add_learned_force(system, model)
    _check_force_field_system(system)
    return with_learned_factors(system, model)


def learned_integrator(model: ActionMLModel | str | Path, temperature: Any = None,
                       friction: Any = None) -> mm.Integrator:
    """The integrator of :func:`learned_step`: a tied force-constant model's classical splitting
    (:class:`SplittingIntegrator`), or an :class:`ActionMLIntegrator`."""
    model = _as_model(model)
    meta = model.metadata
    if bakes_into_system(model):
        return SplittingIntegrator(meta.get_splitting(), meta.step, temperature, friction)
    return ActionMLIntegrator(model, temperature=temperature, friction=friction)


def _check_force_field_system(system: mm.System) -> None:
    reserved = _reserved_forces(system)
    if reserved:
        raise ModelMismatchError(f"the System already has {', '.join(reserved)}; groups {RESERVED_GROUPS} are "
                                 f"reserved for the learned force. Pass the force-field System (move its forces "
                                 f"to groups 0-29) and add the learned force once.")


class SplittingIntegrator(mm.CustomIntegrator):
    """A palindromic kick/drift splitting on the force field alone: velocity Verlet (``"VV"``), McLachlan's
    two-stage (``"S2"``) or the three-stage BCSS (``"T3"``) scheme, NVE or with Langevin half-steps.

    These are the classical schemes a learned model corrects (the learned map with ``dW = 0``), and the
    baselines of ``actionml evaluate``. Positions and velocities are synchronous, unlike OpenMM's leapfrog
    ``VerletIntegrator``. The force-field forces of the last kick are reused by the next step's first kick
    through OpenMM's own force cache, so a step costs ``splitting.evaluations_per_step`` evaluations.

    Parameters
    ----------
    splitting
        A name (``"T3"``, ``"S2"``, ``"VV"``) or a :class:`~openmm_actionml.splitting.Splitting`.
    step
        Step size (ps or a Quantity).
    temperature, friction
        Langevin bath (K, 1/ps or Quantities) applied as exact Ornstein-Uhlenbeck half-steps around the
        splitting; ``None`` for NVE. Default friction 1/ps.
    constraint_tolerance
        Relative tolerance of OpenMM's constraint solver.
    """

    def __init__(self, splitting: str | Splitting, step: Any, temperature: Any = None, friction: Any = None,
                 constraint_tolerance: float = 1e-10) -> None:
        self.splitting = get_splitting(splitting)
        self._setup(positive_float(step, u.picosecond, "step"), temperature, friction, constraint_tolerance,
                     constrained=True)
        self._build_program()

    def _setup(self, h: float, temperature: Any, friction: Any, constraint_tolerance: float,
               constrained: bool) -> None:
        if friction is not None and temperature is None:
            raise InputError("friction= needs a temperature=; without one the integrator is NVE.")
        super().__init__(h)
        self.h = h
        self.temperature = None if temperature is None else positive_float(temperature, u.kelvin, "temperature")
        self.friction = None if temperature is None else \
            positive_float(1.0 if friction is None else friction, u.picosecond ** -1, "friction")
        self._constrained = constrained
        self.setConstraintTolerance(float(constraint_tolerance))

    @property
    def evaluations_per_step(self) -> float:
        """Force evaluations per step (force field, plus the network for learned kicks) once forces are reused."""
        return float(self.splitting.evaluations_per_step)

    def _build_program(self) -> None:
        """update context state; [O half-step]; the stages; [O half-step]; finite check."""
        self.addGlobalVariable(_CHECK, 0.0)
        if self.temperature is not None:
            self.addGlobalVariable("kT", BOLTZMANN * self.temperature)
            self.addGlobalVariable("ou_a", math.exp(-0.5 * self.friction * self.h))
        self._add_variables()
        self.addUpdateContextState()
        self._add_ou_half_step()
        self._add_stages()
        self._add_ou_half_step()
        self.addComputeSum(_CHECK, "x*x + v*v")

    def _add_variables(self) -> None:
        if self._constrained:
            self.addPerDofVariable(_UNCONSTRAINED, 0.0)

    def _add_stages(self) -> None:
        stages = self.splitting.stages
        for index, stage in enumerate(stages):
            if stage.kind == "drift":
                self._add_drift(stage.coefficient)
            else:
                forces = self._add_kick_forces(stage.head, first=index == 0, last=index == len(stages) - 1)
                self.addComputePerDof("v", f"v + {stage.coefficient!r}*dt*{forces}/m")
                if self._constrained:
                    self.addConstrainVelocities()

    def _add_kick_forces(self, head: int, first: bool, last: bool) -> str:
        """Emit what a kick needs before it and return the expression of its forces."""
        return "f"

    def _add_ou_half_step(self) -> None:
        if self.temperature is None:
            return
        self.addComputePerDof("v", "ou_a*v + sqrt((1 - ou_a*ou_a)*kT/m)*gaussian")
        if self._constrained:
            self.addConstrainVelocities()

    def _add_drift(self, coefficient: float) -> None:
        self.addComputePerDof("x", f"x + {coefficient!r}*dt*v")
        if self._constrained:
            self.addComputePerDof(_UNCONSTRAINED, "x")
            self.addConstrainPositions()
            self.addComputePerDof("v", f"v + (x - {_UNCONSTRAINED})/({coefficient!r}*dt)")
            self.addConstrainVelocities()

    def step(self, steps: int) -> None:
        """Take ``steps`` steps; raise :class:`SimulationInstabilityError` if the state is no longer finite."""
        if self.getStepSize().value_in_unit(u.picosecond) != self.h:
            raise InputError(f"the step size was changed to {self.getStepSize()}; create a new integrator for "
                             f"another step size.")
        try:
            super().step(steps)
        except mm.OpenMMException as error:  # the CPU platform refuses NaN coordinates mid-step
            if "nan" not in str(error).lower():
                raise
            raise SimulationInstabilityError(self._instability_advice(steps)) from error
        if not math.isfinite(self.getGlobalVariableByName(_CHECK)):
            raise SimulationInstabilityError(self._instability_advice(steps))

    def _instability_advice(self, steps: int) -> str:
        return (f"positions or velocities became NaN or infinite within the last {steps} steps of "
                f"{self.h * 1000:g} fs with the {self.splitting.name} splitting: the step is beyond its stability "
                f"limit for this system, or the positions were already NaN when set.")


class ActionMLIntegrator(SplittingIntegrator):
    """Long steps with a learned symplectic, time-reversible map: scheme A (splitting) or B (implicit).

    Parameters
    ----------
    model
        An :class:`ActionMLModel` or the path of a model file. Its metadata fix the step ``h``, the
        splitting, anchored or pure-ML kicks and whether the System has constraints.
    temperature
        Bath temperature (K or a Quantity) for Langevin dynamics; ``None`` for NVE.
    friction
        Collision rate (1/ps or a Quantity); default 1/ps. Only with a ``temperature``.
    constraint_tolerance
        Relative tolerance of OpenMM's constraint solver.
    step
        Optional step size (ps or a Quantity), checked against the model's ``h``.
    first_same_as_last
        Reuse the last kick's forces at the start of the next step when the positions are unchanged (scheme A).
    solver
        Scheme B's fixed-point solver (default: Anderson(5), tolerance 1e-6).

    Notes
    -----
    Create the System with :func:`add_learned_force` first. Every call of :meth:`step` checks that the
    step size is still ``h`` and that positions and velocities are finite afterwards. A CMMotionRemover in the
    System acts at the start of every step, as with OpenMM's own integrators; leave it out for exact NVE.
    """

    def __init__(self, model: ActionMLModel | str | Path, temperature: Any = None, friction: Any = None,
                 constraint_tolerance: float = 1e-10, *, step: Any = None, first_same_as_last: bool = True,
                 solver: Optional[FixedPointSolver] = None) -> None:
        self.model = _as_model(model)
        meta = self.model.metadata
        name = f"model {self.model.path.name}"
        if meta.scheme not in ("A", "B"):
            raise ModelMismatchError(f"{name} has unknown scheme {meta.scheme!r}; this version runs schemes A and B.")
        if solver is not None and meta.scheme != "B":
            raise InputError("solver= applies to scheme-B (implicit) models only.")
        self.solver = solver
        self._implicit: Optional[ImplicitProgram] = None
        self._steps_taken = 0
        h = float(meta.step)
        requested = h if step is None else positive_float(step, u.picosecond, "step")
        if abs(requested - h) > 1e-9 * h:
            raise ModelMismatchError(f"{name} takes steps of {h * 1000:g} fs, not {requested * 1000:g} fs; a "
                                     f"learned map is only valid at the step it was trained for (leave step= out "
                                     f"to use the model's).")
        self.splitting = meta.get_splitting() if meta.scheme == "A" else None
        self.first_same_as_last = first_same_as_last
        self._setup(h, temperature, friction, constraint_tolerance, constrained=bool(meta.constraints))
        self.setIntegrationForceGroups(set(range(LEARNED_FORCE_GROUP)))
        self._build_program()

    @property
    def evaluations_per_step(self) -> float:
        """Force-field plus network evaluations per step: scheme A's kicks with reuse; for scheme B, the mean
        solver iterations of the steps this object has taken times the nodes, plus the predictor's kicks."""
        if self._implicit is None:
            return super().evaluations_per_step
        meta = self.model.metadata
        kicks = sum(1 for kind, *_ in meta.splitting["stages"] if kind == "kick") if meta.splitting else 0
        iterations = read_solver_state(self).total_iterations / max(self._steps_taken, 1)
        return iterations * len(meta.implicit["nodes"]) + kicks

    def solver_summary(self) -> str:
        """Scheme B: mean fixed-point iterations per step and unconverged steps so far ("" for scheme A)."""
        if self._implicit is None:
            return ""
        state = read_solver_state(self)
        return (f"{state.total_iterations / max(self._steps_taken, 1):.1f} solver iterations per step, "
                f"{state.unconverged} unconverged of {self._steps_taken} steps")

    def _add_variables(self) -> None:
        if self.splitting is None:
            return
        self.addPerDofVariable(_LEARNED, 0.0)
        if self.model.metadata.anchored:
            self.addPerDofVariable(_FORCE_FIELD, 0.0)
        if self.first_same_as_last:
            self.addPerDofVariable(_FORCES_AT, 0.0)
            self.addGlobalVariable(_STALE, 1.0)
            self.addGlobalVariable(_MOVED, 0.0)
        super()._add_variables()

    def _add_stages(self) -> None:
        if self.splitting is None:
            self._implicit = add_implicit_step(self, self.model.metadata, self.solver, update_context_state=False)
        else:
            super()._add_stages()

    def _store_kick_forces(self, head: int, remember: bool) -> None:
        """Store the kick's forces at the current positions: the force field's in ``actionml_ff`` (anchored),
        head ``head``'s learned forces in ``actionml_fw``.

        The force field is evaluated first and the learned force is switched on only for its own evaluation,
        so an exception in a force evaluation (the CPU platform raises on NaN coordinates) does not leave it on.
        ``remember`` records the positions for the next step's first kick.
        """
        if self.model.metadata.anchored:
            self.addComputePerDof(_FORCE_FIELD, "f")
        self.addComputeGlobal(NODE_PARAMETER, str(head))
        self.addComputeGlobal(ACTIVE_PARAMETER, "1")
        self.addComputePerDof(_LEARNED, f"f{LEARNED_FORCE_GROUP}")
        self.addComputeGlobal(ACTIVE_PARAMETER, "0")
        if remember:
            self.addComputePerDof(_FORCES_AT, "x")
            self.addComputeGlobal(_STALE, "0")

    def _add_kick_forces(self, head: int, first: bool, last: bool) -> str:
        if first and self.first_same_as_last:
            # The previous step's last kick left these forces at these positions, unless they moved since.
            self.addComputeSum(_MOVED, f"(x - {_FORCES_AT})^2 + {_STALE}")
            self.beginIfBlock(f"{_MOVED} != 0")
            self._store_kick_forces(head, remember=True)
            self.endBlock()
        else:
            self._store_kick_forces(head, remember=last and self.first_same_as_last)
        return f"({_FORCE_FIELD} + {_LEARNED})" if self.model.metadata.anchored else _LEARNED

    def validate(self, system: mm.System, topology: Optional[mm.app.Topology] = None) -> None:
        """Check that ``system`` fits the model and carries its learned force exactly once.

        Raises
        ------
        ModelMismatchError
            Naming the first difference and the fix.
        """
        self.model.validate(system, step=self.h, topology=topology)
        reserved = _reserved_forces(system)
        learned = [i for i, force in enumerate(system.getForces())
                   if force.getName() == LEARNED_FORCE_NAME and force.getForceGroup() == LEARNED_FORCE_GROUP]
        if len(learned) != 1 or len(reserved) != 1:
            found = ", ".join(reserved) or "none"
            raise ModelMismatchError(f"the System must carry the model's learned force alone in group "
                                     f"{LEARNED_FORCE_GROUP} (found: {found}); build it with "
                                     f"system = add_learned_force(system, model) before creating the Context.")

    def step(self, steps: int) -> None:
        """Take ``steps`` steps; raise :class:`SimulationInstabilityError` if the state is no longer finite, and
        for scheme B apply the solver's non-convergence policy."""
        if self.getStepSize().value_in_unit(u.picosecond) != self.h:
            raise ModelMismatchError(f"the step size was changed to {self.getStepSize()}; this integrator's "
                                     f"learned map is only valid at {self.h * 1000:g} fs. Do not call setStepSize.")
        before = read_solver_state(self) if self._implicit is not None else None
        super().step(steps)
        self._steps_taken += int(steps)
        if self._implicit is not None:
            check_convergence(self, before, steps, self._implicit)

    def _instability_advice(self, steps: int) -> str:
        return (f"positions or velocities became NaN or infinite within the last {steps} steps of "
                f"{self.h * 1000:g} fs. Either the dynamics left the model's range (start from a minimised, "
                f"equilibrated structure near the training temperature {self.model.metadata.temperature:g} K, or "
                f"train on wider data) or the positions were already NaN when set.")
