"""Scheme A: palindromic kick/drift splittings, as data, and their torch stepper.

A splitting is a palindrome of stages.
A kick with coefficient ``c`` and head ``k`` is ``v <- v + c*h*M^-1 F_k(q)``: the exact flow of the
action ``c*h*W_k(q)``. A drift with coefficient ``c`` is ``q <- q + c*h*v``: free flight.
Each stage is a symplectic shear, so the composition is symplectic; a palindrome is time-reversible.
With constraints, drifts are followed by a SHAKE projection (and the matching velocity correction)
and kicks by a RATTLE velocity projection, as OpenMM's CustomIntegrator does them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .constraints import ConstraintSet
from .errors import InputError

#: Blanes, Casas & Sanz-Serna (2014) three-stage coefficients, tuned for small energy error.
BCSS_A = 0.29619504261126
BCSS_B = 0.11888010966548
#: McLachlan (1995) minimum-error two-stage coefficient.
MCLACHLAN_B = 0.1931833275037836


@dataclass(frozen=True)
class Stage:
    """One stage of a splitting: a kick (with the head it uses) or a drift."""

    kind: str
    coefficient: float
    head: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("kick", "drift"):
            raise InputError(f"a stage is 'kick' or 'drift', got {self.kind!r}.")


@dataclass(frozen=True)
class Splitting:
    """A palindromic kick/drift composition over one step of length ``h``.

    Parameters
    ----------
    name
        Short name, e.g. ``"T3"``.
    stages
        Alternating kicks and drifts, starting and ending with a kick, palindromic,
        with kick and drift coefficients each summing to one.
    """

    name: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        stages = self.stages
        if len(stages) < 3 or stages[0].kind != "kick" or stages[-1].kind != "kick":
            raise InputError(f"splitting {self.name}: must start and end with a kick and contain a drift.")
        for first, second in zip(stages, stages[1:]):
            if first.kind == second.kind:
                raise InputError(f"splitting {self.name}: kicks and drifts must alternate.")
        for stage, mirror in zip(stages, reversed(stages)):
            if stage.kind != mirror.kind or stage.head != mirror.head or abs(stage.coefficient - mirror.coefficient) > 1e-14:
                raise InputError(f"splitting {self.name}: stages must be a palindrome for time reversibility.")
        for kind in ("kick", "drift"):
            total = sum(s.coefficient for s in stages if s.kind == kind)
            if abs(total - 1.0) > 1e-12:
                raise InputError(f"splitting {self.name}: {kind} coefficients sum to {total}, not 1.")

    @property
    def n_heads(self) -> int:
        """Number of distinct kick potentials (network heads) used."""
        return 1 + max(s.head for s in self.stages if s.kind == "kick")

    @property
    def evaluations_per_step(self) -> int:
        """Force evaluations per step, with the last kick's forces reused by the next step."""
        return sum(1 for s in self.stages if s.kind == "kick") - 1

    def to_dict(self) -> dict:
        """A JSON-serialisable description."""
        return {"name": self.name, "stages": [[s.kind, s.coefficient, s.head] for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict) -> "Splitting":
        """Inverse of :meth:`to_dict`."""
        return cls(data["name"], tuple(Stage(kind, float(c), int(head)) for kind, c, head in data["stages"]))


def _palindrome(name: str, kicks: list[tuple[float, int]], drifts: list[float]) -> Splitting:
    stages: list[Stage] = []
    for (c, head), drift in zip(kicks, drifts + [None]):
        stages.append(Stage("kick", c, head))
        if drift is not None:
            stages.append(Stage("drift", drift))
    return Splitting(name, tuple(stages))


SPLITTINGS: dict[str, Splitting] = {
    "T3": _palindrome("T3", [(BCSS_B, 0), (0.5 - BCSS_B, 1), (0.5 - BCSS_B, 1), (BCSS_B, 0)],
                      [BCSS_A, 1.0 - 2.0 * BCSS_A, BCSS_A]),
    "S2": _palindrome("S2", [(MCLACHLAN_B, 0), (1.0 - 2.0 * MCLACHLAN_B, 1), (MCLACHLAN_B, 0)], [0.5, 0.5]),
    "VV": _palindrome("VV", [(0.5, 0), (0.5, 0)], [1.0]),
}


def get_splitting(name: str | Splitting) -> Splitting:
    """Return a named splitting (``"T3"``, ``"S2"``, ``"VV"``) or pass a :class:`Splitting` through."""
    if isinstance(name, Splitting):
        return name
    try:
        return SPLITTINGS[name.upper()]
    except KeyError:
        raise InputError(f"unknown splitting {name!r}; choose one of {', '.join(SPLITTINGS)} "
                         f"or build a Splitting from stages.") from None


def with_tied_heads(splitting: Splitting) -> Splitting:
    """``splitting`` with every kick on head 0: one kick potential for all kicks, so that a learned correction
    keeps the step a splitting of one Hamiltonian (kicks of different potentials heat in NVE, see
    ``docs/benchmarks/frequency-matched-t3-8fs``)."""
    return Splitting(splitting.name, tuple(Stage(stage.kind, stage.coefficient, 0) for stage in splitting.stages))


def towards_substeps(splitting: Splitting, fraction: float) -> Splitting:
    """``splitting`` with every coefficient moved ``fraction`` of the way to those of as many equal velocity-Verlet
    substeps as it has evaluations ``s`` (kicks ``1/2s, 1/s, ..., 1/s, 1/2s``, drifts ``1/s``): 0 gives the
    splitting itself, 1 Verlet at ``h / s`` taken ``s`` times. The result is palindromic, its coefficients sum to
    one, and it keeps the splitting's heads.

    Raises
    ------
    InputError
        If ``fraction`` is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction towards equal substeps must be in [0, 1], got {fraction}.")
    if fraction == 0.0:
        return splitting
    n = splitting.evaluations_per_step
    targets = {"kick": iter([0.5 / n] + [1.0 / n] * (n - 1) + [0.5 / n]), "drift": iter([1.0 / n] * n)}
    stages = [Stage(stage.kind, stage.coefficient + fraction * (next(targets[stage.kind]) - stage.coefficient),
                    stage.head) for stage in splitting.stages]
    return Splitting(f"{splitting.name} {fraction:g} towards {n} substeps", tuple(stages))


KickForces = Callable[[Tensor, int], Tensor]
"""``kick_forces(q, head) -> F``: forces (kJ/mol/nm) of kick potential ``head`` at positions ``q[..., N, 3]``."""


@dataclass
class SplittingStepper:
    """The scheme-A map in torch: the ground truth for the OpenMM integrator, and the training engine.

    Parameters
    ----------
    splitting
        The stage sequence.
    h
        Step in ps.
    masses
        Particle masses in amu, shape ``[N]``.
    kick_forces
        Forces of each head's kick potential.
    constraints
        Holonomic constraints, or ``None``.
    """

    splitting: Splitting
    h: float
    masses: Tensor
    kick_forces: KickForces
    constraints: Optional[ConstraintSet] = None

    def step(self, q: Tensor, v: Tensor, first_forces: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Advance ``(q, v)`` by one step.

        ``first_forces`` are head 0's forces at ``q`` if already known (first same as last).
        Returns ``(q', v', forces of the last kick's head at q')``.
        """
        inverse_mass = (1.0 / self.masses).to(q.dtype)[:, None]
        stages = self.splitting.stages
        forces = first_forces
        for index, stage in enumerate(stages):
            c_h = stage.coefficient * self.h
            if stage.kind == "drift":
                q, v = self._drift(q, v, c_h)
                continue
            if forces is None or index > 0:
                forces = self.kick_forces(q, stage.head)
            v = v + c_h * inverse_mass * forces
            if self.constraints is not None:
                v = self.constraints.project_velocities(q, v)
        return q, v, forces

    def run(self, q: Tensor, v: Tensor, n_steps: int) -> tuple[Tensor, Tensor]:
        """``n_steps`` steps; returns positions and velocities of shape ``[n_steps + 1, *q.shape]``."""
        qs, vs = [q], [v]
        forces = None
        for _ in range(n_steps):
            q, v, forces = self.step(q, v, forces)
            qs.append(q)
            vs.append(v)
        return torch.stack(qs), torch.stack(vs)

    def _drift(self, q: Tensor, v: Tensor, c_h: float) -> tuple[Tensor, Tensor]:
        moved = q + c_h * v
        if self.constraints is None:
            return moved, v
        projected = self.constraints.project_positions(q, moved)
        v = v + (projected - moved) / c_h
        return projected, self.constraints.project_velocities(projected, v)
