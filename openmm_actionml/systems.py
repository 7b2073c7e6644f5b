"""From a PDB file (or an empty box of water) to an OpenMM System ready for simulation.

:func:`build_system` repairs the structure with pdbfixer (missing heavy atoms and hydrogens), optionally
strips everything but the protein, adds implicit or explicit solvent and parametrises it with a force
field. :func:`water_box` makes a periodic box of (by default flexible) water. Both return a
:class:`PreparedSystem` whose ``settings`` record how it was built, for dataset provenance.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u
from pdbfixer import PDBFixer

from .errors import InputError
from .units import positive_float

SOLVENTS = ("vacuum", "obc2", "explicit")
IMPLICIT_FORCEFIELD = "implicit/obc2.xml"
WATER_FORCEFIELD = "amber14/tip3p.xml"
CONSTRAINTS = {"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds}
#: Residues ``protein_only`` keeps: the standard amino acids, Amber protonation variants and terminal caps.
PROTEIN_RESIDUES = frozenset("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
                             "HID HIE HIP CYX CYM ASH GLH LYN ACE NME NH2".split())


@dataclass(frozen=True)
class PreparedSystem:
    """A System with its topology and starting positions.

    Attributes
    ----------
    topology
        The (repaired, solvated) topology.
    system
        The parametrised OpenMM System.
    positions
        Starting positions, a Quantity in nm.
    settings
        How the system was built (input, force field, solvent, constraints, ...), JSON-serialisable.
    """

    topology: app.Topology
    system: mm.System
    positions: u.Quantity
    settings: dict[str, Any] = field(default_factory=dict)


def constraint_type(name: str | None):
    """The ``openmm.app`` constraint object for ``None``, ``'none'``, ``'HBonds'`` or ``'AllBonds'``."""
    key = "none" if name is None else str(name).lower()
    if key not in CONSTRAINTS:
        raise InputError(f"unknown constraints {name!r}; use None, 'HBonds' or 'AllBonds'.")
    return CONSTRAINTS[key]


def build_system(pdb: str | os.PathLike,
                 forcefield: str | Sequence[str] = "amber14-all.xml",
                 solvent: str = "vacuum",
                 *,
                 constraints: str | None = None,
                 rigid_water: bool = True,
                 hydrogen_mass: u.Quantity | float | None = None,
                 padding: u.Quantity | float | None = 1.0,
                 nonbonded_cutoff: u.Quantity | float = 1.0,
                 protein_only: bool = False,
                 ph: float = 7.0,
                 implicit_forcefield: str = IMPLICIT_FORCEFIELD,
                 water_forcefield: str = WATER_FORCEFIELD) -> PreparedSystem:
    """Repair, solvate and parametrise the structure in a PDB file.

    Parameters
    ----------
    pdb
        Path of the PDB file.
    forcefield
        Force-field XML file(s); the solvent's files are added automatically.
    solvent
        ``'vacuum'`` (no cutoff), ``'obc2'`` (OBC2 implicit solvent, no cutoff) or ``'explicit'``
        (TIP3P water, periodic, PME).
    constraints
        ``None``, ``'HBonds'`` or ``'AllBonds'``.
    rigid_water
        Keep water molecules rigid (three constraints each) whatever ``constraints`` says.
    hydrogen_mass
        Hydrogen mass in amu for hydrogen-mass repartitioning, or ``None`` to keep natural masses.
    padding
        Explicit solvent only: water padding around the solute (nm). ``None`` keeps the water and
        periodic box already in the PDB file.
    nonbonded_cutoff
        Explicit solvent only: real-space cutoff (nm); at most half the shortest box edge.
    protein_only
        Remove every residue that is not an amino acid or a terminal cap (water, ions, ligands).
    ph
        pH used to choose protonation states when adding hydrogens.
    implicit_forcefield
        OBC2 only: the force-field file with the implicit-solvent parameters. The default's
        ``CustomGBForce`` suits any force field; with Amber99-family force fields,
        ``'amber99_obc.xml'`` gives OpenMM's native ``GBSAOBCForce``, about 5x faster on the CPU.
    water_forcefield
        Explicit solvent only: the force-field file with the water (and ion) parameters; not loaded
        when ``forcefield`` already defines water (as ``amoeba2018.xml`` does).

    Raises
    ------
    InputError
        If the file cannot be read, an option is invalid, or the force field has no template
        for a residue.
    """
    if solvent not in SOLVENTS:
        raise InputError(f"unknown solvent {solvent!r}; choose one of {', '.join(SOLVENTS)}.")
    constraint_type(constraints)
    mass_h = _hydrogen_mass(hydrogen_mass)
    explicit = solvent == "explicit"
    cutoff = positive_float(nonbonded_cutoff, u.nanometer, "nonbonded_cutoff") if explicit else None
    pad = positive_float(padding, u.nanometer, "padding") if explicit and padding is not None else None
    if not os.path.isfile(pdb):
        raise InputError(f"PDB file {pdb} not found; give the path of an existing PDB file.")
    try:
        fixer = PDBFixer(filename=os.fspath(pdb))
    except Exception as error:  # pdbfixer/PDBFile raise many types on malformed input
        raise InputError(f"could not read PDB file {pdb}: {error}. Check that it is a valid PDB file.") from error
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # repair atoms only; missing loops are not modelled
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(ph)

    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    if solvent == "obc2":
        ff, solvent_file = _load_forcefield(files + [implicit_forcefield]), implicit_forcefield
    else:
        ff = _load_forcefield(files)
        solvent_file = _add_water_forcefield(ff, water_forcefield) if explicit else None

    modeller = app.Modeller(fixer.topology, fixer.positions)
    if protein_only:
        modeller.delete([r for r in modeller.topology.residues() if r.name not in PROTEIN_RESIDUES])
    if explicit and pad is None and modeller.topology.getPeriodicBoxVectors() is None:
        raise InputError(f"{pdb} has no periodic box (CRYST1 record), so padding=None cannot keep its "
                         f"solvent; give a padding in nm to add water around the solute.")
    if pad is not None:
        try:  # addSolvent parametrises the solute to neutralise it, so template errors surface here
            modeller.addSolvent(ff, model="tip3p", padding=pad * u.nanometer)
        except ValueError as error:
            raise _template_error(error, pdb, files) from error

    system = _create_system(ff, modeller.topology, pdb, files, cutoff, constraints, rigid_water, mass_h)
    settings = {"pdb": os.path.abspath(pdb), "forcefield": files, "solvent": solvent, "constraints": constraints,
                "rigid_water": rigid_water, "protein_only": protein_only, "ph": ph, "hydrogen_mass": mass_h,
                "padding": pad, "nonbonded_cutoff": cutoff}
    if solvent_file is not None:
        settings[f"{'implicit' if solvent == 'obc2' else 'water'}_forcefield"] = solvent_file
    return PreparedSystem(modeller.topology, system, modeller.positions, settings)


def water_box(n_waters: int = 256,
              *,
              forcefield: str | Sequence[str] = "amber14-all.xml",
              water_forcefield: str = WATER_FORCEFIELD,
              rigid_water: bool = False,
              constraints: str | None = None,
              hydrogen_mass: u.Quantity | float | None = None,
              nonbonded_cutoff: u.Quantity | float = 0.9) -> PreparedSystem:
    """A cubic periodic box of ``n_waters`` waters (flexible by default), with PME.

    The water model is ``water_forcefield`` (TIP3P), or ``forcefield``'s own when it defines water
    (``forcefield="amoeba2018.xml"`` gives AMOEBA water with mutual polarisation). The box edge
    follows from liquid density (about 2.0 nm for 256 waters); the cutoff must stay below half of it.
    """
    if int(n_waters) != n_waters or n_waters < 1:
        raise InputError(f"n_waters must be a positive integer, got {n_waters}.")
    constraint_type(constraints)
    mass_h = _hydrogen_mass(hydrogen_mass)
    cutoff = positive_float(nonbonded_cutoff, u.nanometer, "nonbonded_cutoff")
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    ff = _load_forcefield(files)
    _refuse_water_with_extra_sites(ff, files)
    water_file = _add_water_forcefield(ff, water_forcefield)
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, model="tip3p", numAdded=int(n_waters))
    system = _create_system(ff, modeller.topology, f"water box of {n_waters}", files, cutoff, constraints,
                            rigid_water, mass_h)
    settings = {"pdb": None, "n_waters": int(n_waters), "forcefield": files, "water_forcefield": water_file,
                "constraints": constraints, "rigid_water": rigid_water, "hydrogen_mass": mass_h,
                "nonbonded_cutoff": cutoff}
    return PreparedSystem(modeller.topology, system, modeller.positions, settings)


def _load_forcefield(files: list[str]) -> app.ForceField:
    try:
        return app.ForceField(*files)
    except (ValueError, OSError) as error:
        raise InputError(f"could not load force field {files}: {error}. Give XML files bundled with OpenMM "
                         f"(e.g. amber14-all.xml, charmm36.xml) or paths of existing files.") from error


def _refuse_water_with_extra_sites(ff: app.ForceField, files: list[str]) -> None:
    """Raise an InputError if ``ff`` (loaded from ``files``) defines a water model with extra sites (OPC, TIP4P-Ew)
    and none with three: a water box is built of three-site waters, and its own water file would clash with it."""
    if not ff.getUnmatchedResidues(_water_topology()):
        return
    for extra in (1, 2):
        if not ff.getUnmatchedResidues(_water_topology(extra)):
            raise InputError(f"{' + '.join(files)} define a {3 + extra}-site water model, but the water box is built "
                             f"of three-site waters; use a three-site water model instead (amber14/tip3p.xml, "
                             f"amber14/tip3pfb.xml, amber14/spce.xml, amber14/opc3.xml) or amoeba2018.xml.")


def _add_water_forcefield(ff: app.ForceField, water_forcefield: str) -> str | None:
    """Load ``water_forcefield`` into ``ff`` unless ``ff`` already has a template for water (as AMOEBA's files
    do); returns the file loaded, or ``None``."""
    if not ff.getUnmatchedResidues(_water_topology()):
        return None
    try:
        ff.loadFile(water_forcefield)
    except (ValueError, OSError) as error:
        raise InputError(f"could not load water force field {water_forcefield}: {error}. Give an XML file bundled "
                         f"with OpenMM (e.g. amber14/tip3p.xml) or the path of an existing file.") from error
    return water_forcefield


def _water_topology(extra_sites: int = 0) -> app.Topology:
    """One water molecule with ``extra_sites`` massless sites, to ask a force field whether it has a template
    for it."""
    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    oxygen = topology.addAtom("O", app.element.oxygen, residue)
    for name in ("H1", "H2"):
        topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    for index in range(extra_sites):
        topology.addAtom(f"M{index + 1}", None, residue)
    return topology


def _hydrogen_mass(value: u.Quantity | float | None) -> float | None:
    return None if value is None else positive_float(value, u.dalton, "hydrogen_mass")


def _template_error(error: Exception, source: Any, files: list[str]) -> InputError:
    return InputError(f"cannot parametrise {source} with {' + '.join(files)}: {error} Fix: add the missing "
                      f"atoms or hydrogens to the residue, remove it (protein_only=True, --protein-only), or "
                      f"choose a force field with a template for it.")


def _create_system(ff: app.ForceField, topology: app.Topology, source: Any, files: list[str], cutoff: float | None,
                   constraints: str | None, rigid_water: bool, hydrogen_mass: float | None) -> mm.System:
    periodic = cutoff is not None
    if periodic:
        box = topology.getPeriodicBoxVectors().value_in_unit(u.nanometer)
        shortest = min(box[0][0], box[1][1], box[2][2])
        if cutoff > shortest / 2:
            raise InputError(f"nonbonded cutoff {cutoff} nm exceeds half the shortest box edge ({shortest:.3f} nm); "
                             f"reduce the cutoff or enlarge the box (more padding or more waters).")
    try:
        return ff.createSystem(topology,
                               nonbondedMethod=app.PME if periodic else app.NoCutoff,
                               nonbondedCutoff=(cutoff if periodic else 1.0) * u.nanometer,
                               constraints=constraint_type(constraints),
                               rigidWater=rigid_water,
                               hydrogenMass=None if hydrogen_mass is None else hydrogen_mass * u.dalton)
    except ValueError as error:
        raise _template_error(error, source, files) from error


def with_hydrogen_mass(system: mm.System, topology: app.Topology, hydrogen_mass: u.Quantity | float,
                       water: bool = False) -> mm.System:
    """A copy of ``system`` with hydrogen-mass repartitioning, as ``ForceField.createSystem(hydrogenMass=)`` does
    it: each hydrogen gets ``hydrogen_mass`` (amu) and the heavy atom bonded to it gives up the difference.
    Water hydrogens are left alone unless ``water`` is true (the molecule's mass is kept, its moment of inertia
    grows: librations slow while the statics stay those of the force field)."""
    mass_h = _hydrogen_mass(hydrogen_mass)
    system = copy.deepcopy(system)
    hydrogen = app.element.hydrogen
    for atom1, atom2 in topology.bonds():
        if atom1.element is hydrogen:
            atom1, atom2 = atom2, atom1
        if atom2.element is not hydrogen or atom1.element in (hydrogen, None) or \
                (atom2.residue.name == "HOH" and not water):
            continue
        transfer = mass_h - system.getParticleMass(atom2.index).value_in_unit(u.dalton)
        heavy = system.getParticleMass(atom1.index).value_in_unit(u.dalton) - transfer
        if heavy <= 0:
            raise InputError(f"hydrogen mass {mass_h} amu leaves atom {atom1.index} ({atom1.name}) with no mass; "
                             f"choose a smaller hydrogen mass.")
        system.setParticleMass(atom2.index, mass_h)
        system.setParticleMass(atom1.index, heavy)
    return system


def replace_forces(system: mm.System, donor: mm.System) -> mm.System:
    """A copy of ``system`` (its particles, masses, constraints, virtual sites and box) whose forces are ``donor``'s:
    a cheaper force field on the same particles, for kicks that add a learned correction to it. ``system``'s
    CMMotionRemover, if any, is kept and ``donor``'s is not taken.

    Raises
    ------
    InputError
        If the two Systems do not have the same number of particles.
    """
    if donor.getNumParticles() != system.getNumParticles():
        raise InputError(f"the baseline force field gives {donor.getNumParticles()} particles where the System has "
                         f"{system.getNumParticles()}; a baseline must parametrise the same atoms (a water model "
                         f"with as many sites, no extra virtual sites).")
    result = copy.deepcopy(system)
    for index in reversed(range(result.getNumForces())):
        if not isinstance(result.getForce(index), mm.CMMotionRemover):
            result.removeForce(index)
    for force in donor.getForces():
        if not isinstance(force, mm.CMMotionRemover):
            result.addForce(copy.deepcopy(force))
    return result


#: Forces that act on the state, not through the potential energy: no kick adds them.
NOT_POTENTIALS = (mm.CMMotionRemover, mm.AndersenThermostat, mm.MonteCarloBarostat, mm.MonteCarloAnisotropicBarostat,
                  mm.MonteCarloMembraneBarostat, mm.MonteCarloFlexibleBarostat)


def force_classes(system: mm.System) -> list[str]:
    """The sorted class names of ``system``'s potential-energy forces in groups 0-29 (thermostats, barostats and
    the CMMotionRemover left out): what a model whose kicks add the System's forces records of the force field it
    was trained on."""
    return sorted(type(force).__name__ for force in system.getForces()
                  if force.getForceGroup() < 30 and not isinstance(force, NOT_POTENTIALS))


def default_box(system: mm.System) -> np.ndarray:
    """The System's default periodic box vectors as a (3, 3) float64 array in nm, rows a, b, c."""
    return np.array([v.value_in_unit(u.nanometer) for v in system.getDefaultPeriodicBoxVectors()], dtype=np.float64)


def topology_elements(topology: app.Topology) -> list[str]:
    """Each atom's element symbol, ``""`` for a virtual site or an atom without an element."""
    return [atom.element.symbol if atom.element is not None else "" for atom in topology.atoms()]


def particle_masses(system: mm.System) -> np.ndarray:
    """``[N]`` particle masses in amu."""
    return np.array([system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())])


def constraint_pairs(system: mm.System) -> np.ndarray:
    """``[C, 2]`` atom indices of the System's distance constraints."""
    return np.array([system.getConstraintParameters(i)[:2] for i in range(system.getNumConstraints())],
                    dtype=int).reshape(-1, 2)
