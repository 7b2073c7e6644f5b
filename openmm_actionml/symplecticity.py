"""Symplecticity of one OpenMM step, measured: the finite-difference Jacobian ``J`` of the map
``(q, p) -> (q', p')`` and the defect ``||J^T Omega J - Omega|| / ||Omega||`` (Frobenius norms), for small
systems without constraints (with constraints the map is symplectic on the constraint manifold only).

Each degree of freedom is scaled to ``(q sqrt(m/h), p sqrt(h/m))``, a symplectic change of variables that makes
free flight the unit shear, so the entries of ``J`` are of order one and the defect reads as a relative error:
a step that damps velocities by 1 % has a defect of about 1e-2. Central differences of ``epsilon`` (in the scaled
coordinates) leave a truncation error of order ``epsilon^2`` and a round-off error of order ``u / epsilon``
(``u``, the forces' relative precision). In double precision that is about 1e-9 at ``epsilon = 1e-4``; a float32
network inside a step (``u`` about 1e-7) raises the floor to about 1e-4, so a learned model's defect bounds its
arithmetic, and the exact algebraic test is the autograd Jacobian of the torch stepper (tests/test_splitting.py).
:func:`measured_defect` takes the smallest defect over ``epsilon`` = 1e-2, 1e-3 and 1e-4, which suits both.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import openmm as mm
import openmm.unit as u

from .errors import InputError
from .platforms import create_context
from .systems import particle_masses


def step_jacobian(system: mm.System, integrator: mm.Integrator, positions: np.ndarray, velocities: np.ndarray,
                  epsilon: float = 1e-4, platform: str | None = None) -> np.ndarray:
    """``J[6N, 6N]`` of one step in the scaled coordinates ``(q sqrt(m/h), v sqrt(m h))``, by central
    differences; ``h`` is the integrator's step.

    A CMMotionRemover is left out (it projects, and a projection is not symplectic); the System must have no
    constraints.
    """
    if system.getNumConstraints():
        raise InputError("the step of a constrained System is symplectic on the constraint manifold only; "
                         "measure a System without constraints.")
    system = copy.deepcopy(system)
    for index in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(index), mm.CMMotionRemover):
            system.removeForce(index)
    masses = particle_masses(system)
    context = create_context(system, integrator, platform)
    n = 3 * len(masses)
    h = integrator.getStepSize().value_in_unit(u.picosecond)
    position_scale = np.sqrt(np.repeat(masses, 3) / h)
    velocity_scale = np.sqrt(np.repeat(masses, 3) * h)

    def step(x: np.ndarray) -> np.ndarray:
        context.setPositions((x[:n] / position_scale).reshape(-1, 3))
        context.setVelocities((x[n:] / velocity_scale).reshape(-1, 3))
        integrator.step(1)
        state = context.getState(getPositions=True, getVelocities=True)
        q = state.getPositions(asNumpy=True).value_in_unit(u.nanometer).reshape(-1)
        v = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond).reshape(-1)
        return np.concatenate([q * position_scale, v * velocity_scale])

    x0 = np.concatenate([np.asarray(positions).reshape(-1) * position_scale,
                         np.asarray(velocities).reshape(-1) * velocity_scale])
    jacobian = np.empty((2 * n, 2 * n))
    for column in range(2 * n):
        offset = np.zeros(2 * n)
        offset[column] = epsilon
        jacobian[:, column] = (step(x0 + offset) - step(x0 - offset)) / (2 * epsilon)
    return jacobian


def symplecticity_defect(jacobian: np.ndarray) -> float:
    """``||J^T Omega J - Omega||_F / ||Omega||_F``: zero for a symplectic map."""
    n = len(jacobian) // 2
    omega = np.block([[np.zeros((n, n)), np.eye(n)], [-np.eye(n), np.zeros((n, n))]])
    return float(np.linalg.norm(jacobian.T @ omega @ jacobian - omega) / np.linalg.norm(omega))


def measured_defect(system: mm.System, make_integrator: Callable[[], mm.Integrator], positions: np.ndarray,
                    velocities: np.ndarray, platform: str | None = None,
                    epsilons: Sequence[float] = (1e-2, 1e-3, 1e-4)) -> float:
    """The smallest :func:`symplecticity_defect` of :func:`step_jacobian` over ``epsilons``: each estimate is the
    defect plus a truncation error growing with ``epsilon`` and a round-off error shrinking with it."""
    return min(symplecticity_defect(step_jacobian(system, make_integrator(), positions, velocities, epsilon, platform))
               for epsilon in epsilons)
