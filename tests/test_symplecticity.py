"""The finite-difference symplecticity defect of one OpenMM step (symplecticity.py)."""
from __future__ import annotations

import openmm as mm
import pytest

from openmm_actionml.ensemble import equilibrated_starts
from openmm_actionml.errors import InputError
from openmm_actionml.integrator import SplittingIntegrator
from openmm_actionml.symplecticity import measured_defect, step_jacobian, symplecticity_defect


@pytest.fixture(scope="module")
def start(alanine):
    starts = equilibrated_starts(alanine.system, alanine.positions, 300.0, 1, spacing=0.05, equilibration=0.05,
                                 platform="Reference")
    return starts.positions[0], starts.velocities[0]


def test_splittings_are_symplectic_and_damping_is_not(alanine, start):
    """S2 in double precision: the defect is the central differences' error, O(epsilon^2) truncation
    (1e-7 at epsilon 1e-3 -> 1e-9 at 1e-4, measured) above round-off, so < 1e-8. A step that scales v by 0.99
    has J^T Omega J = 0.99 Omega on the momentum block pairs: a defect of exactly 0.01."""
    assert measured_defect(alanine.system, lambda: SplittingIntegrator("S2", 0.004), *start, "Reference") < 1e-8
    damped = mm.CustomIntegrator(0.004)
    damped.addComputePerDof("v", "0.99*v + dt*f/m")
    damped.addComputePerDof("x", "x + dt*v")
    defect = symplecticity_defect(step_jacobian(alanine.system, damped, *start, 1e-4, "Reference"))
    assert defect == pytest.approx(0.01, rel=1e-6)


def test_constrained_systems_are_refused(alanine_hbonds, start):
    with pytest.raises(InputError, match="constraint manifold"):
        step_jacobian(alanine_hbonds.system, SplittingIntegrator("T3", 0.004), *start)
