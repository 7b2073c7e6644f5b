"""MultipleTimeStepIntegrator: r-RESPA reduces to its inner and its outer splitting, and is time-reversible."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import openmm as mm

from conftest import platform_params
from openmm_actionml.errors import InputError
from openmm_actionml.integrator import SplittingIntegrator
from openmm_actionml.multiple_time_step import (FAST_GROUP, SLOW_GROUP, MultipleTimeStepIntegrator,
                                                with_force_groups)
from test_integrator import TOLERANCE, assert_time_reversible, make_context, state

N_STEPS = 10


def in_group(system: mm.System, group: int) -> mm.System:
    system = copy.deepcopy(system)
    for force in system.getForces():
        force.setForceGroup(group)
    return system


def relative_difference(a: mm.Context, b: mm.Context, q0: np.ndarray) -> float:
    (qa, va), (qb, vb) = state(a), state(b)
    return max(np.abs(qa - qb).max() / np.abs(qb - q0).max(), np.abs(va - vb).max() / np.abs(vb).max())


@pytest.mark.parametrize("platform", platform_params())
@pytest.mark.parametrize("constraints", [True, False], ids=["hbonds", "flexible"])
def test_all_fast_is_inner_verlet(systems, platform, constraints):
    """No slow force: one outer step of h is n Verlet steps of h / n (the outer kicks add zero). Bound: the
    integrators' agreement with the torch stepper (test_integrator.TOLERANCE); measured 0 on Reference, 3e-9 and
    5e-9 on CPU, 8e-5 and 0 on OpenCL (HBonds, flexible)."""
    prepared = systems[constraints]
    system = in_group(prepared.system, FAST_GROUP)
    h, n = 0.004, 4
    mts = make_context(system, MultipleTimeStepIntegrator("VV", h, n), prepared.positions, platform)
    verlet = make_context(system, SplittingIntegrator("VV", h / n), prepared.positions, platform)
    q0 = state(verlet)[0]
    mts.getIntegrator().step(N_STEPS)
    verlet.getIntegrator().step(N_STEPS * n)
    assert relative_difference(mts, verlet, q0) < TOLERANCE[platform]


def test_all_slow_is_outer_splitting(systems):
    """No fast force: the inner Verlet steps are free flight, n drifts of c h / n make one of c h, and the step is
    the outer splitting's. Flexible, Reference, double precision: equal to round-off, a few units in the last place
    of positions near 1 nm (1e-16 nm) against 10 steps' displacement (1e-3 nm), 1e-13 per drift."""
    prepared = systems[False]
    system = in_group(prepared.system, SLOW_GROUP)
    h = 0.002
    mts = make_context(system, MultipleTimeStepIntegrator("T3", h, 3), prepared.positions)
    outer = make_context(system, SplittingIntegrator("T3", h), prepared.positions)
    q0 = state(outer)[0]
    mts.getIntegrator().step(N_STEPS)
    outer.getIntegrator().step(N_STEPS)
    assert relative_difference(mts, outer, q0) < 1e-11  # measured 1.3e-13


@pytest.mark.parametrize("constraints", [True, False], ids=["hbonds", "flexible"])
def test_time_reversible(systems, constraints):
    """A palindrome of kicks and RATTLE Verlet steps; the learned integrator's bounds (measured here: flexible
    2e-16 nm and 2e-14, HBonds 1.3e-12 nm and 1e-10)."""
    prepared = systems[constraints]
    assert_time_reversible(make_context(with_force_groups(prepared.system), MultipleTimeStepIntegrator("VV", 0.004, 2),
                                        prepared.positions), constraints)


def test_with_force_groups(systems):
    system = systems[True].system
    grouped = with_force_groups(system)
    groups = {type(force).__name__: force.getForceGroup() for force in grouped.getForces()}
    assert groups == {"HarmonicBondForce": FAST_GROUP, "HarmonicAngleForce": FAST_GROUP,
                      "PeriodicTorsionForce": FAST_GROUP, "NonbondedForce": SLOW_GROUP}
    assert {force.getForceGroup() for force in system.getForces()} == {0}  # the original is left alone
    with pytest.raises(InputError, match="fast ones .* are none"):
        with_force_groups(system, fast=["AmoebaMultipoleForce"])
    with pytest.raises(InputError, match="are all"):
        with_force_groups(system, fast=[type(force).__name__ for force in system.getForces()])


@pytest.mark.parametrize("inner_steps", [0, 1.5, True])
def test_refuses_bad_inner_steps(inner_steps):
    with pytest.raises(InputError, match="inner_steps must be a positive integer"):
        MultipleTimeStepIntegrator("VV", 0.004, inner_steps)
