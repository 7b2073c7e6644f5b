"""Shared test fixtures: the OpenMM platforms to test on, and small prepared systems."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import openmm as mm

from openmm_actionml.platforms import available_platforms
from openmm_actionml.systems import PreparedSystem, build_system

#: Platforms every platform-dependent test runs on, when present.
TEST_PLATFORMS = ("Reference", "CPU", "OpenCL")
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def platform_params() -> list:
    """``pytest.param`` per platform in ``TEST_PLATFORMS``; absent ones are skipped with the reason.

    Use as ``@pytest.mark.parametrize("platform", platform_params())``.
    """
    present = available_platforms()
    return [pytest.param(name, id=name, marks=() if name in present else
                         pytest.mark.skip(reason=f"OpenMM platform {name} is not available on this machine "
                                                 f"(OpenCL on a CPU needs pocl-opencl-icd)"))
            for name in TEST_PLATFORMS]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One torch thread: the networks are small, and on 2 cores shared with OpenMM's threads more torch threads
    made them up to 60 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def platforms() -> list[str]:
    """The platforms of ``TEST_PLATFORMS`` that loaded on this machine."""
    present = available_platforms()
    return [name for name in TEST_PLATFORMS if name in present]


@pytest.fixture(scope="session")
def alanine_pdb() -> Path:
    """The bundled alanine dipeptide PDB file."""
    return EXAMPLES_DIR / "alanine-dipeptide.pdb"


@pytest.fixture(scope="session")
def alanine(alanine_pdb):
    """Alanine dipeptide, amber14, vacuum, flexible."""
    return build_system(alanine_pdb)


@pytest.fixture(scope="session")
def alanine_hbonds(alanine_pdb):
    """Alanine dipeptide, amber14, vacuum, HBonds constraints."""
    return build_system(alanine_pdb, constraints="HBonds")


@pytest.fixture(scope="session")
def systems(alanine, alanine_hbonds) -> dict[bool, PreparedSystem]:
    """Alanine dipeptide by ``constraints``, without the CMMotionRemover (it changes velocities every step)."""
    prepared = {}
    for constraints, source in ((False, alanine), (True, alanine_hbonds)):
        system = copy.deepcopy(source.system)
        for index in reversed(range(system.getNumForces())):
            if isinstance(system.getForce(index), mm.CMMotionRemover):
                system.removeForce(index)
        prepared[constraints] = dataclasses.replace(source, system=system)
    return prepared
