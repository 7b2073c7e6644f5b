"""Scheme B's step as an OpenMM ``CustomIntegrator`` program, and the Python-side convergence check.

:func:`add_implicit_step` appends to a ``CustomIntegrator`` the map that :class:`implicit.ImplicitStepper`
computes in torch (the formulas are in :mod:`openmm_actionml.implicit`'s docstring):

1. ``q0 = x``, ``v0 = v``.
2. Predictor: the model's splitting stages (kick ``v += c h (f + f30)/m`` with ``actionml_node = stage.head``,
   drift ``x += c h v``, as scheme A's integrator writes them, without constraints; with
   ``metadata.implicit["predictor_forces"] == "force_field"`` an anchored model's predictor kicks with the force
   field alone, ``v += c h f/m``, and costs no network evaluation), then
   ``q̄ = (q0 + x)/2``, ``v̄ = (v0 + v)/2``; with no splitting the trivial start ``q̄ = q0 + h v0/2``, ``v̄ = v0``.
3. A ``beginWhileBlock`` fixed-point loop. Per iteration, for each node k (heads in increasing order, nodes of a
   head in index order, as ``implicit._node_force_sums``): ``x = q̄ + c_k h v̄``, ``actionml_node = head_k``,
   ``actionml_active = 1``, read ``f30``, ``actionml_active = 0``, and accumulate ``Σ w F`` and ``Σ w c F``
   (``F = f + f30`` anchored, ``f30`` pure ML). Then the residual ``r = G(q̄, v̄) − (q̄, v̄)``, its norm
   ``sqrt(Σ m (r_q²/h² + r_v²) / (6 N kT))`` with ``addComputeSum`` (``N``: particles with mass), the iteration
   counter, and, unless converged or out of iterations, the plain, damped or Anderson update. Anderson keeps its
   history oldest first and drops the oldest pair when full; its Gram matrix ``A_ij = ⟨ΔR_i, ΔR_j⟩`` lives in
   globals (only the new row is summed per iteration) and ``(A + λI)γ = b`` is solved by the unrolled,
   unpivoted Cholesky of the docstring of :mod:`openmm_actionml.implicit`.
4. ``x = q0 + h v̄ − h² M⁻¹ Σ w c F``, ``v = v0 + h M⁻¹ Σ w F`` with the forces of the last evaluated iterate.

Implementation choices, none of which changes the map:

- The unknowns are stored as offsets ``d_q = q̄ − q0`` and ``d_v = v̄ − v0``. In single precision (OpenCL)
  positions of a few nm carry ~1e-7 nm of rounding, which would put a floor of ~1e-4 thermal units under the
  residual (an estimate: 1e-7 nm / 2 fs against a thermal velocity of ~0.5 nm/ps); offsets carry rounding
  relative to the step's displacement. Measured floors: ~1e-7 to 1e-6 on OpenCL single precision, ~2e-8 on CPU
  (its single-precision nonbonded forces), none above 1e-11 on Reference.
- Anderson's history occupies the last ``m_k`` of ``m`` fixed slots; the empty leading slots are zero vectors,
  and the solve treats them as an identity block (``A_jj = 1``, ``b_j = 0``, so ``γ_j = 0``). The Cholesky of the
  active block is then the same arithmetic as in torch (every extra term is an exact zero).
- ``λ = ε · max(trace/m_k, 1e-37)``: torch uses the dtype's smallest normal number; both only matter when every
  ΔR is exactly zero, where ``b = 0`` and ``γ = 0`` whatever the guard. 1e-37 is representable in single
  precision.
- Particles of zero mass: OpenMM skips them in every per-DOF computation and sum (verified for scheme A on
  Reference, CPU and OpenCL), so their positions and velocities stay fixed and no ``m = 0`` guard is written;
  ``N`` in the residual norm counts particles with mass (from the model's metadata).

Globals the program keeps (read them with :func:`read_solver_state`):

- ``actionml_iterations``: fixed-point map evaluations in the last step (including the one that converged);
- ``actionml_total_iterations``: their sum over all steps;
- ``actionml_unconverged``: the number of steps whose solve did not meet the tolerance;
- ``actionml_residual``: the last step's final residual norm (thermal-velocity units).

OpenMM cannot raise from inside a step. A step whose solve fails still ends (with the last iterate, as the torch
stepper does under ``on_nonconvergence='warn'``), the counter records it, and :func:`check_convergence` raises
:class:`ActionMLConvergenceError` or warns after ``step()``.

Only the ``rms`` norm is available (OpenMM's global reductions are sums). Constraints are refused, as in torch.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import openmm as mm

from .errors import ActionMLConvergenceError, InputError, ModelMismatchError
from .implicit import FixedPointSolver, ImplicitConvergenceWarning, ImplicitScheme
from .modelfile import ACTIVE_PARAMETER, LEARNED_FORCE_GROUP, NODE_PARAMETER, ModelMetadata
from .splitting import Splitting, Stage, get_splitting
from .units import BOLTZMANN

__all__ = ["add_implicit_step", "predictor_splitting", "default_predictor_forces", "PREDICTOR_FORCES",
           "ImplicitProgram", "ImplicitSolverState", "read_solver_state", "check_convergence", "ITERATIONS",
           "TOTAL_ITERATIONS", "UNCONVERGED", "RESIDUAL"]

#: Public globals (see the module docstring).
ITERATIONS = "actionml_iterations"
TOTAL_ITERATIONS = "actionml_total_iterations"
UNCONVERGED = "actionml_unconverged"
RESIDUAL = "actionml_residual"

#: Smallest positive regularisation scale; representable in single precision.
_TINY = 1e-37
#: Residuals above this count as diverged (the loop stops): representable in single precision.
_HUGE = 1e30

_P = "actionml_b_"  # prefix of the program's private variables


def _name(*parts) -> str:
    return _P + "_".join(str(p) for p in parts)


# per-DOF
_Q0, _V0 = _name("q0"), _name("v0")
_DQ, _DV = _name("dq"), _name("dv")              # q̄ − q0, v̄ − v0
_RQ, _RV = _name("rq"), _name("rv")              # residual
_SW, _SWC = _name("sw"), _name("swc")            # Σ w F, Σ w c F
_FF, _FW = _name("ff"), _name("fw")              # force field, learned forces of the current evaluation
_PQ, _PV, _PRQ, _PRV = _name("pq"), _name("pv"), _name("prq"), _name("prv")  # Anderson: previous iterate
# globals
_CONTINUE, _CONVERGED, _SQUARED = _name("continue"), _name("converged"), _name("rr")
_HAS_PREVIOUS, _HISTORY, _SHIFT = _name("has_previous"), _name("nhist"), _name("lambda")


def _slot(kind: str, j: int) -> str:
    return _name(kind, j)


def _entry(kind: str, i: int, j: int) -> str:
    return _name(kind, i, j)


def _number(value: float) -> str:
    """A float literal OpenMM's parser reads back exactly (``repr`` round-trips; parentheses keep signs safe)."""
    return f"({float(value)!r})"


@dataclass(frozen=True)
class ImplicitProgram:
    """What :func:`add_implicit_step` built: the map, the solver and the thermal scale of the residual."""

    scheme: ImplicitScheme
    predictor: Optional[Splitting]
    predictor_forces: str
    h: float
    anchored: bool
    solver: FixedPointSolver
    kT: float
    n_particles: int

    @property
    def force_evaluations_per_iteration(self) -> int:
        """Network evaluations (and force-field evaluations when anchored) per fixed-point iteration."""
        return self.scheme.n_nodes

    @property
    def predictor_evaluations(self) -> int:
        """Network evaluations of the predictor per step (every kick; no reuse across steps)."""
        if self.predictor is None or self.predictor_forces == "force_field":
            return 0
        return sum(1 for s in self.predictor.stages if s.kind == "kick")


@dataclass(frozen=True)
class ImplicitSolverState:
    """The solver globals of a scheme-B integrator at one moment (see the module docstring)."""

    iterations: int
    total_iterations: int
    unconverged: int
    residual: float


def implicit_scheme_of(metadata: ModelMetadata) -> ImplicitScheme:
    """The :class:`ImplicitScheme` a scheme-B model's metadata describe, or a clear error."""
    if metadata.scheme != "B":
        raise ModelMismatchError(f"a scheme-{metadata.scheme} model has no implicit step; scheme B models carry "
                                 f"metadata.implicit (nodes, weights, heads).")
    if not metadata.implicit:
        raise ModelMismatchError("the scheme-B model's metadata lack 'implicit' (nodes, weights, heads); re-export it "
                                 "with metadata.implicit = ImplicitScheme.to_dict().")
    data = dict(metadata.implicit)
    data.setdefault("name", "B")
    return ImplicitScheme.from_dict(data)


def predictor_splitting(splitting: Union[str, Splitting, None], scheme: ImplicitScheme) -> Optional[Splitting]:
    """A scheme-A splitting as scheme B's predictor: kicks whose head the implicit scheme lacks use head 0.

    ``None`` or ``"none"`` gives ``None`` (the trivial start ``q̄ = q + h v/2``, ``v̄ = v``). With ``gauss3`` the
    T3 predictor keeps its heads (0 = the centre node's potential, 1 = the pair's); with ``midpoint`` and
    ``gauss2`` every kick uses head 0. The result is stored in the model's ``metadata.splitting``.
    """
    if splitting is None or (isinstance(splitting, str) and splitting.lower() == "none"):
        return None
    splitting = get_splitting(splitting)
    stages = tuple(Stage(s.kind, s.coefficient, s.head if s.head < scheme.n_heads else 0) for s in splitting.stages)
    return Splitting(splitting.name, stages)


#: What the predictor's kicks use: the model's heads, or (anchored models only) the force field alone.
PREDICTOR_FORCES = ("model", "force_field")


def default_predictor_forces(anchored: bool) -> str:
    """``force_field`` for anchored models, ``model`` for pure ML.

    Measured on alanine dipeptide at 2 fs (trained gauss3, 32 validation pairs, Anderson(5), tolerance 1e-6): a T3
    predictor with V alone starts closer to the fixed point (9.0 iterations) than one with the trained heads
    (10.5; plain iteration 22 against 30), and its kicks cost no network evaluation.
    """
    return "force_field" if anchored else "model"


def predictor_forces_of(metadata: ModelMetadata) -> str:
    """``metadata.implicit["predictor_forces"]`` (default ``model``), checked against ``anchored``."""
    choice = (metadata.implicit or {}).get("predictor_forces", "model")
    if choice not in PREDICTOR_FORCES:
        raise ModelMismatchError(f"metadata.implicit['predictor_forces'] must be one of {PREDICTOR_FORCES}, got "
                                 f"{choice!r}.")
    if choice == "force_field" and not metadata.anchored:
        raise ModelMismatchError("a pure-ML model's predictor cannot kick with the force field (the model does not "
                                 "include it); use predictor_forces='model'.")
    return choice


def predictor_of(metadata: ModelMetadata, scheme: ImplicitScheme) -> Optional[Splitting]:
    """The model's predictor splitting (``None`` if ``metadata.splitting`` is empty: the trivial start)."""
    if not metadata.splitting:
        return None
    splitting = Splitting.from_dict(metadata.splitting)
    heads = sorted({s.head for s in splitting.stages if s.kind == "kick"})
    if heads[-1] >= scheme.n_heads:
        raise ModelMismatchError(f"the predictor splitting {splitting.name} kicks with head {heads[-1]}, but the "
                                 f"implicit scheme {scheme.name} has only {scheme.n_heads} head(s); map the "
                                 f"predictor's kicks onto heads 0..{scheme.n_heads - 1} (predictor_splitting).")
    return splitting


def add_implicit_step(integrator: mm.CustomIntegrator, metadata: ModelMetadata,
                      solver: Optional[FixedPointSolver] = None, *, kT: Optional[float] = None,
                      update_context_state: bool = True) -> ImplicitProgram:
    """Append one scheme-B step to ``integrator`` and set its step size to the model's ``h``.

    Parameters
    ----------
    integrator
        A ``CustomIntegrator``; typically new, or an ``ActionMLIntegrator`` between its O half-steps. Its
        integration force groups are set to 0-29, so ``f`` is the force field alone and the learned
        TorchForce (group 30, ``actionml_node``/``actionml_active``; see ``ActionMLModel.create_force``) is read
        as ``f30``.
    metadata
        A scheme-B model's metadata: ``implicit`` (nodes, weights, heads, and optionally ``predictor_forces``),
        ``step``, ``anchored``, ``masses`` and ``splitting`` (the predictor; empty for the trivial start).
    solver
        Method (plain, damped, anderson), tolerance, max_iterations, mixing, anderson_depth, regularisation.
        ``norm`` must be ``rms``. ``on_nonconvergence`` is applied by :func:`check_convergence`.
    kT
        Thermal energy (kJ/mol) of the residual norm; default: the model's training temperature.
    update_context_state
        Start with ``addUpdateContextState()`` (leave it to the caller if it adds its own).

    Returns
    -------
    ImplicitProgram
        What was built (for :func:`check_convergence` and for cost accounting).

    Raises
    ------
    ModelMismatchError, InputError
        For a model that is not scheme B, has constraints, or a solver OpenMM cannot run.
    """
    scheme = implicit_scheme_of(metadata)
    if metadata.constraints:
        raise ModelMismatchError(f"the scheme-B model lists {len(metadata.constraints)} constraints; scheme B "
                                 f"(implicit midpoint) is unconstrained-only. Use a scheme-A model with constraints.")
    solver = solver if solver is not None else FixedPointSolver()
    if solver.norm != "rms":
        raise InputError("the OpenMM program forms only the 'rms' residual norm (its reductions are sums); "
                         "use FixedPointSolver(norm='rms').")
    h = float(metadata.step)
    if not (h > 0 and math.isfinite(h)):
        raise InputError(f"the model's step must be a positive number of ps, got {h}.")
    kT = BOLTZMANN * float(metadata.temperature) if kT is None else float(kT)
    if not (kT > 0 and math.isfinite(kT)):
        raise InputError(f"kT must be a positive energy in kJ/mol, got {kT}.")
    n_particles = sum(1 for m in metadata.masses if m > 0)
    if n_particles == 0:
        raise InputError("the model has no particle with mass.")
    predictor = predictor_of(metadata, scheme)
    program = ImplicitProgram(scheme, predictor, predictor_forces_of(metadata), h, bool(metadata.anchored), solver,
                              kT, n_particles)
    _Builder(integrator, program).build(update_context_state)
    return program


class _Builder:
    def __init__(self, integrator: mm.CustomIntegrator, program: ImplicitProgram) -> None:
        self.integrator = integrator
        self.p = program
        self.h = program.h
        self.depth = int(program.solver.anderson_depth) if program.solver.method == "anderson" else 0

    # -- helpers ---------------------------------------------------------------------------------------------
    def per_dof(self, variable: str, expression: str) -> None:
        self.integrator.addComputePerDof(variable, expression)

    def glob(self, variable: str, expression: str) -> None:
        self.integrator.addComputeGlobal(variable, expression)

    def total(self, variable: str, expression: str) -> None:
        self.integrator.addComputeSum(variable, expression)

    def inner(self, aq: str, av: str, bq: str, bv: str) -> str:
        """The per-DOF summand of ``⟨a, b⟩ = Σ m (a_q b_q / h² + a_v b_v)``."""
        return f"m*({aq}*{bq}/{_number(self.h * self.h)} + {av}*{bv})"

    def forces(self, head: int) -> str:
        """Evaluate head ``head``'s kick potential at the current ``x``; returns the expression of its forces."""
        if self.p.anchored:
            self.per_dof(_FF, "f")  # the force field first: a NaN exception then never leaves the network on
        self.glob(NODE_PARAMETER, str(int(head)))
        self.glob(ACTIVE_PARAMETER, "1")
        self.per_dof(_FW, f"f{LEARNED_FORCE_GROUP}")
        self.glob(ACTIVE_PARAMETER, "0")
        return f"({_FF} + {_FW})" if self.p.anchored else _FW

    # -- the program -----------------------------------------------------------------------------------------
    def build(self, update_context_state: bool) -> None:
        integrator, p = self.integrator, self.p
        integrator.setStepSize(self.h)
        integrator.setIntegrationForceGroups(set(range(LEARNED_FORCE_GROUP)))
        self.declare()
        if update_context_state:
            integrator.addUpdateContextState()
        self.per_dof(_Q0, "x")
        self.per_dof(_V0, "v")
        self.predict()
        self.reset_solver()
        integrator.beginWhileBlock(f"{_CONTINUE} > 0.5")
        self.evaluate_map()
        integrator.beginIfBlock(f"{_CONTINUE} > 0.5")
        if p.solver.method == "anderson":
            self.anderson_update()
        else:
            beta = _number(p.solver.mixing)
            self.per_dof(_DQ, f"{_DQ} + {beta}*{_RQ}")
            self.per_dof(_DV, f"{_DV} + {beta}*{_RV}")
        integrator.endBlock()
        integrator.endBlock()
        # The new state, with the forces of the last evaluated iterate.
        h = self.h
        position = f"{_Q0} + {_number(h)}*({_V0} + {_DV})"
        if p.scheme.has_offset_nodes:
            position += f" - {_number(h * h)}*{_SWC}/m"
        self.per_dof("x", position)
        self.per_dof("v", f"{_V0} + {_number(h)}*{_SW}/m")
        self.glob(UNCONVERGED, f"{UNCONVERGED} + 1 - {_CONVERGED}")
        self.glob(TOTAL_ITERATIONS, f"{TOTAL_ITERATIONS} + {ITERATIONS}")

    def declare(self) -> None:
        integrator = self.integrator
        for name in (ITERATIONS, TOTAL_ITERATIONS, UNCONVERGED):
            integrator.addGlobalVariable(name, 0.0)
        integrator.addGlobalVariable(RESIDUAL, 0.0)
        for name in (_CONTINUE, _CONVERGED, _SQUARED):
            integrator.addGlobalVariable(name, 0.0)
        per_dof = [_Q0, _V0, _DQ, _DV, _RQ, _RV, _SW, _FW]
        if self.p.scheme.has_offset_nodes:
            per_dof.append(_SWC)
        if self.p.anchored:
            per_dof.append(_FF)
        if self.depth:
            per_dof += [_PQ, _PV, _PRQ, _PRV]
            for j in range(self.depth):
                per_dof += [_slot(kind, j) for kind in ("hxq", "hxv", "hrq", "hrv")]
            for name in (_HAS_PREVIOUS, _HISTORY, _SHIFT):
                integrator.addGlobalVariable(name, 0.0)
            for i in range(self.depth):
                for j in range(i + 1):
                    integrator.addGlobalVariable(_entry("A", i, j), 0.0)
                    integrator.addGlobalVariable(_entry("L", i, j), 0.0)
                for kind in ("b", "y", "g", "act"):
                    integrator.addGlobalVariable(_slot(kind, i), 0.0)
        for name in per_dof:
            integrator.addPerDofVariable(name, 0.0)

    def predict(self) -> None:
        """Set ``d_q, d_v`` from the predictor (leaves x and v at the predicted state, restored at the end)."""
        predictor = self.p.predictor
        if predictor is None:
            self.per_dof(_DQ, f"{_number(0.5 * self.h)}*{_V0}")
            self.per_dof(_DV, "0")
            return
        for stage in predictor.stages:
            c_h = _number(stage.coefficient * self.h)
            if stage.kind == "drift":
                self.per_dof("x", f"x + {c_h}*v")
            elif self.p.predictor_forces == "force_field":
                self.per_dof("v", f"v + {c_h}*f/m")
            else:
                forces = self.forces(stage.head)
                self.per_dof("v", f"v + {c_h}*{forces}/m")
        # q̄ − q0 = ((q0 + q')/2) − q0 and v̄ − v0, as in ImplicitStepper.predict up to rounding.
        self.per_dof(_DQ, f"0.5*(x - {_Q0})")
        self.per_dof(_DV, f"0.5*(v - {_V0})")

    def reset_solver(self) -> None:
        self.glob(ITERATIONS, "0")
        self.glob(_CONVERGED, "0")
        self.glob(_CONTINUE, "1")
        if not self.depth:
            return
        self.glob(_HAS_PREVIOUS, "0")
        self.glob(_HISTORY, "0")
        for j in range(self.depth):
            for kind in ("hxq", "hxv", "hrq", "hrv"):
                self.per_dof(_slot(kind, j), "0")
            for i in range(j, self.depth):
                self.glob(_entry("A", i, j), "0")
            self.glob(_slot("g", j), "0")
            self.glob(_slot("b", j), "0")

    def evaluate_map(self) -> None:
        """Forces at the nodes of the current midpoint, the residual and its norm; the stopping decision."""
        scheme, h = self.p.scheme, self.h
        v_bar = f"({_V0} + {_DV})"
        first_weighted, first_moment = True, True
        for head in sorted(set(scheme.heads)):
            for k in [k for k, a in enumerate(scheme.heads) if a == head]:
                c, w = scheme.nodes[k], scheme.weights[k]
                node = f"{_Q0} + ({_DQ} + {_number(c * h)}*{v_bar})" if c != 0.0 else f"{_Q0} + {_DQ}"
                self.per_dof("x", node)
                forces = self.forces(head)
                self.per_dof(_SW, f"{_number(w)}*{forces}" if first_weighted else f"{_SW} + {_number(w)}*{forces}")
                first_weighted = False
                if c != 0.0:
                    term = f"{_number(w * c)}*{forces}"
                    self.per_dof(_SWC, term if first_moment else f"{_SWC} + {term}")
                    first_moment = False
        # r = G(x) − x in offsets: G_q − q̄ = ½h v̄ − ½h² M⁻¹ΣwcF − d_q, G_v − v̄ = ½h M⁻¹ΣwF − d_v.
        residual_q = f"{_number(0.5 * h)}*{v_bar}"
        if scheme.has_offset_nodes:
            residual_q += f" - {_number(0.5 * h * h)}*{_SWC}/m"
        self.per_dof(_RQ, f"({residual_q}) - {_DQ}")
        self.per_dof(_RV, f"{_number(0.5 * h)}*{_SW}/m - {_DV}")
        self.total(_SQUARED, self.inner(_RQ, _RV, _RQ, _RV))
        self.glob(RESIDUAL, f"sqrt({_SQUARED}/{_number(6 * self.p.n_particles * self.p.kT)})")
        self.glob(ITERATIONS, f"{ITERATIONS} + 1")
        solver = self.p.solver
        self.glob(_CONVERGED, f"step({_number(solver.tolerance)} - {RESIDUAL})")
        # Go on unless converged, out of iterations, or diverged (NaN or huge; step(NaN) = 0).
        self.glob(_CONTINUE, f"(1 - {_CONVERGED})*step({int(solver.max_iterations) - 1} - {ITERATIONS} + 0.5)"
                             f"*step({RESIDUAL})*step({_number(_HUGE)} - {RESIDUAL})")

    def anderson_update(self) -> None:
        """Type-II Anderson(m) as in ``ImplicitStepper._anderson_update`` (see the module docstring)."""
        integrator, m = self.integrator, self.depth
        beta = _number(self.p.solver.mixing)
        kinds = ("hxq", "hxv", "hrq", "hrv")
        integrator.beginIfBlock(f"{_HAS_PREVIOUS} > 0.5")
        # Drop the oldest pair (slot 0) by shifting everything one slot down; the new pair goes into slot m − 1.
        for j in range(m - 1):
            for kind in kinds:
                self.per_dof(_slot(kind, j), _slot(kind, j + 1))
        for i in range(m - 1):
            for j in range(i + 1):
                self.glob(_entry("A", i, j), _entry("A", i + 1, j + 1))
        new = m - 1
        self.per_dof(_slot("hxq", new), f"{_DQ} - {_PQ}")
        self.per_dof(_slot("hxv", new), f"{_DV} - {_PV}")
        self.per_dof(_slot("hrq", new), f"{_RQ} - {_PRQ}")
        self.per_dof(_slot("hrv", new), f"{_RV} - {_PRV}")
        self.glob(_HISTORY, f"min({_HISTORY} + 1, {m})")
        for j in range(m):
            self.total(_entry("A", new, j), self.inner(_slot("hrq", new), _slot("hrv", new),
                                                       _slot("hrq", j), _slot("hrv", j)))
        integrator.endBlock()
        self.per_dof(_PQ, _DQ)
        self.per_dof(_PV, _DV)
        self.per_dof(_PRQ, _RQ)
        self.per_dof(_PRV, _RV)
        self.glob(_HAS_PREVIOUS, "1")
        integrator.beginIfBlock(f"{_HISTORY} > 0.5")
        self.solve()
        integrator.endBlock()
        for variable, x, r, hx, hr in ((_DQ, _DQ, _RQ, "hxq", "hrq"), (_DV, _DV, _RV, "hxv", "hrv")):
            expression = f"{x} + {beta}*{r}"
            for j in range(m):
                expression += f" - {_slot('g', j)}*({_slot(hx, j)} + {beta}*{_slot(hr, j)})"
            self.per_dof(variable, expression)

    def solve(self) -> None:
        """``(A + λI)γ = b`` over the active slots; empty slots form an identity block with ``γ = 0``."""
        m = self.depth
        for j in range(m):
            self.total(_slot("b", j), self.inner(_slot("hrq", j), _slot("hrv", j), _RQ, _RV))
            self.glob(_slot("act", j), f"step({_HISTORY} + {j} - {m})")
        trace = " + ".join(_entry("A", j, j) for j in range(m))
        self.glob(_SHIFT, f"{_number(self.p.solver.regularisation)}*max(({trace})/{_HISTORY}, {_number(_TINY)})")
        L = lambda i, j: _entry("L", i, j)  # noqa: E731
        for j in range(m):
            diagonal = f"{_entry('A', j, j)} + {_SHIFT} + (1 - {_slot('act', j)})"
            for l in range(j):
                diagonal += f" - {L(j, l)}*{L(j, l)}"
            self.glob(L(j, j), f"sqrt({diagonal})")
            for i in range(j + 1, m):
                entry = _entry("A", i, j)
                for l in range(j):
                    entry += f" - {L(i, l)}*{L(j, l)}"
                self.glob(L(i, j), f"({entry})/{L(j, j)}")
        for i in range(m):
            value = _slot("b", i)
            for l in range(i):
                value += f" - {L(i, l)}*{_slot('y', l)}"
            self.glob(_slot("y", i), f"({value})/{L(i, i)}")
        for i in reversed(range(m)):
            value = _slot("y", i)
            for l in range(i + 1, m):
                value += f" - {L(l, i)}*{_slot('g', l)}"
            self.glob(_slot("g", i), f"({value})/{L(i, i)}")


# -- the Python side ------------------------------------------------------------------------------------------
def read_solver_state(integrator: mm.CustomIntegrator) -> ImplicitSolverState:
    """The solver globals (one download each on GPU platforms)."""
    value = integrator.getGlobalVariableByName
    return ImplicitSolverState(int(round(value(ITERATIONS))), int(round(value(TOTAL_ITERATIONS))),
                               int(round(value(UNCONVERGED))), float(value(RESIDUAL)))


def check_convergence(integrator: mm.CustomIntegrator, before: Optional[ImplicitSolverState], steps: int,
                      program: ImplicitProgram, policy: Optional[str] = None) -> ImplicitSolverState:
    """After ``integrator.step(steps)``: raise or warn if any of those steps' solves failed.

    Parameters
    ----------
    integrator
        The integrator :func:`add_implicit_step` built into.
    before
        :func:`read_solver_state` before the steps (``None``: compare with zero unconverged steps).
    steps
        How many steps were taken (for the message).
    program
        What :func:`add_implicit_step` returned.
    policy
        ``raise`` (:class:`ActionMLConvergenceError`) or ``warn`` (:class:`ImplicitConvergenceWarning`);
        default: ``program.solver.on_nonconvergence``.

    Returns
    -------
    The solver state after the steps.
    """
    policy = program.solver.on_nonconvergence if policy is None else policy
    if policy not in ("raise", "warn"):
        raise InputError(f"on_nonconvergence must be 'raise' or 'warn', got {policy!r}.")
    after = read_solver_state(integrator)
    failed = after.unconverged - (0 if before is None else before.unconverged)
    if failed <= 0:
        return after
    solver, h = program.solver, program.h
    reason = ("diverged (the last residual is not finite)" if not math.isfinite(after.residual)
              or after.residual >= _HUGE else f"did not converge (last residual {after.residual:.3g}, tolerance "
                                              f"{solver.tolerance:.3g})")
    message = (
        f"scheme-B fixed-point solve failed in {failed} of the last {steps} step(s): it {reason} within "
        f"max_iterations = {solver.max_iterations} (method {solver.method}, h = {h * 1000:g} fs, scheme "
        f"{program.scheme.name}). Those steps ended with the last iterate, so they are not exactly symplectic or "
        f"reversible. Remedies: more iterations (max_iterations); Anderson acceleration (method='anderson', "
        f"anderson_depth >= 5) or damping (method='damped', mixing < 1) instead of plain iteration; a tolerance "
        f"above the platform's round-off floor (measured on alanine dipeptide: ~2e-8 thermal units on CPU, "
        f"~1e-6 on OpenCL in single precision); a smaller step; or the "
        f"explicit scheme A, which needs no solve. Plain iteration on a mode of frequency w contracts only while "
        f"tan(h*w/2) < 1.")
    if policy == "raise":
        raise ActionMLConvergenceError(message)
    warnings.warn(message, ImplicitConvergenceWarning, stacklevel=2)
    return after
