"""Multiple time stepping (r-RESPA, impulse form): the classical way to take long steps on an expensive force
field, a baseline for the learned step.

:class:`MultipleTimeStepIntegrator` is a palindromic splitting whose kicks use the slow forces (force group
:data:`SLOW_GROUP`) and whose every drift of ``c h`` is ``inner_steps`` velocity-Verlet steps of
``c h / inner_steps`` on the fast forces (group :data:`FAST_GROUP`); Tuckerman, Berne & Martyna, J. Chem. Phys. 97,
1990 (1992). Kicks and RATTLE-constrained Verlet steps are symplectic and the composition is a palindrome, so the
step is symplectic and time-reversible. With the "VV" splitting it is OpenMM's ``MTSIntegrator`` with two
groups, except that velocities are projected onto the constraints after every kick, so that the kinetic energy
at the end of a step is that of the constrained system.

Its limit is resonance, not the fast modes' linear stability: the slow impulses, one per outer step, pump energy
into fast vibrations with a period near two or three outer steps, so that impulse MTS fails at about a third of
the fastest period (Ma, Izaguirre & Skeel, SIAM J. Sci. Comput. 24, 1951 (2003)). Measured on villin:
``benchmarks/mts_reach.py``.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import openmm as mm

from .errors import InputError
from .integrator import SplittingIntegrator
from .splitting import Splitting

#: The force groups of the slow and the fast forces. Forces in other groups do not act.
SLOW_GROUP = 0
FAST_GROUP = 1
#: The bonded forces of the usual force fields: the fast group of :func:`with_force_groups` by default.
BONDED_FORCES = ("HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "CMAPTorsionForce",
                 "RBTorsionForce")


def with_force_groups(system: mm.System, fast: Sequence[str] = BONDED_FORCES) -> mm.System:
    """A copy of ``system`` with the forces whose class is named in ``fast`` in :data:`FAST_GROUP` and every
    other force in :data:`SLOW_GROUP`.

    Raises
    ------
    InputError
        If no force, or every force, is fast: there would be nothing to split.
    """
    system = copy.deepcopy(system)
    groups = []
    for force in system.getForces():
        group = FAST_GROUP if type(force).__name__ in fast else SLOW_GROUP
        force.setForceGroup(group)
        if not isinstance(force, mm.CMMotionRemover):
            groups.append(group)
    if FAST_GROUP not in groups or SLOW_GROUP not in groups:
        present = sorted(type(force).__name__ for force in system.getForces())
        raise InputError(f"multiple time stepping needs fast and slow forces; of this System's forces {present}, "
                         f"the fast ones (classes {list(fast)}) are {'none' if FAST_GROUP not in groups else 'all'}. "
                         f"Name the fast force classes.")
    return system


class MultipleTimeStepIntegrator(SplittingIntegrator):
    """A splitting on the slow forces with ``inner_steps`` Verlet steps on the fast forces in each drift.

    Parameters
    ----------
    splitting
        The outer splitting: a name (``"VV"``, ``"S2"``, ``"T3"``) or a :class:`~openmm_actionml.splitting.Splitting`.
    step
        Outer step size (ps or a Quantity).
    inner_steps
        Velocity-Verlet steps on the fast forces per drift (for ``"VV"``: per outer step).
    temperature, friction, constraint_tolerance
        As for :class:`~openmm_actionml.integrator.SplittingIntegrator`.

    Notes
    -----
    The slow forces are force group :data:`SLOW_GROUP` and the fast ones :data:`FAST_GROUP`; forces in other
    groups do not act, as with OpenMM's ``MTSIntegrator``. Build the System with :func:`with_force_groups`.
    ``evaluations_per_step`` counts evaluations of the slow forces: the last kick's are reused by the next
    step's first kick through OpenMM's force cache, as for the splitting itself.
    """

    def __init__(self, splitting: str | Splitting, step: Any, inner_steps: int, temperature: Any = None,
                 friction: Any = None, constraint_tolerance: float = 1e-10) -> None:
        if isinstance(inner_steps, bool) or int(inner_steps) != inner_steps or inner_steps < 1:
            raise InputError(f"inner_steps must be a positive integer, got {inner_steps!r}.")
        self.inner_steps = int(inner_steps)
        super().__init__(splitting, step, temperature, friction, constraint_tolerance)

    def _add_kick_forces(self, head: int, first: bool, last: bool) -> str:
        return f"f{SLOW_GROUP}"

    def _add_drift(self, coefficient: float) -> None:
        inner = coefficient / self.inner_steps
        for _ in range(self.inner_steps):
            self._add_fast_kick(0.5 * inner)
            super()._add_drift(inner)
            self._add_fast_kick(0.5 * inner)

    def _add_fast_kick(self, coefficient: float) -> None:
        self.addComputePerDof("v", f"v + {coefficient!r}*dt*f{FAST_GROUP}/m")
        self.addConstrainVelocities()

    def _instability_advice(self, steps: int) -> str:
        return (f"positions or velocities became NaN or infinite within the last {steps} outer steps of "
                f"{self.h * 1000:g} fs ({self.inner_steps} inner steps per drift): multiple time stepping is "
                f"limited by resonance at outer steps near a third or half of the fastest vibration's period; take a "
                f"shorter outer step.")
