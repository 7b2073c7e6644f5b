"""Building Systems from PDB files and the bundled examples."""
from __future__ import annotations

import pytest
import openmm as mm
import openmm.unit as u

from openmm_actionml.errors import InputError
from openmm_actionml.evaluate import hmr_system
from openmm_actionml.examples import EXAMPLES, EXAMPLES_DIR, build_example, build_input, build_training_system
from openmm_actionml.systems import build_system, water_box, with_hydrogen_mass

#: A residue no force field knows: a bromine "ligand" after the dipeptide.
UNKNOWN_LIGAND = "HETATM   23 BR   XBR A   4       7.000   9.000   0.000  1.00  0.00          BR\n"


def _forces(system: mm.System) -> set[str]:
    return {force.__class__.__name__ for force in system.getForces()}


def _masses(system: mm.System) -> list[float]:
    return [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]


def test_alanine_vacuum_flexible(alanine):
    assert alanine.topology.getNumAtoms() == 22 == alanine.system.getNumParticles()
    assert alanine.system.getNumConstraints() == 0 and not alanine.system.usesPeriodicBoundaryConditions()
    assert "CMMotionRemover" in _forces(alanine.system)
    assert alanine.settings["solvent"] == "vacuum" and alanine.settings["forcefield"] == ["amber14-all.xml"]


def test_constraints_hydrogen_mass_and_implicit_solvent(alanine_pdb, alanine):
    built = build_system(alanine_pdb, solvent="obc2", constraints="HBonds", hydrogen_mass=3 * u.dalton)
    assert built.system.getNumConstraints() == 12
    assert "CustomGBForce" in _forces(built.system) or "GBSAOBCForce" in _forces(built.system)
    masses = _masses(built.system)
    hydrogens = [m for m, atom in zip(masses, built.topology.atoms()) if atom.element.symbol == "H"]
    assert hydrogens == pytest.approx([3.0] * 12)
    assert sum(masses) == pytest.approx(sum(_masses(alanine.system)))
    assert build_system(alanine_pdb, constraints="AllBonds").system.getNumConstraints() == 21


def test_with_hydrogen_mass_equals_createsystem(alanine_pdb, alanine):
    built = build_system(alanine_pdb, hydrogen_mass=3 * u.dalton)
    assert _masses(with_hydrogen_mass(alanine.system, alanine.topology, 3.0)) == _masses(built.system)
    assert _masses(alanine.system) != _masses(built.system)  # the input is not modified
    with pytest.raises(InputError, match="no mass"):
        with_hydrogen_mass(alanine.system, alanine.topology, 6.0)


def test_explicit_solvent_is_periodic_with_pme(alanine_pdb):
    built = build_system(alanine_pdb, solvent="explicit", padding=0.8 * u.nanometer, nonbonded_cutoff=0.8)
    waters = [r for r in built.topology.residues() if r.name == "HOH"]
    assert len(waters) > 100 and built.system.usesPeriodicBoundaryConditions()
    nonbonded = next(f for f in built.system.getForces() if isinstance(f, mm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == mm.NonbondedForce.PME
    assert nonbonded.getCutoffDistance().value_in_unit(u.nanometer) == pytest.approx(0.8)
    assert built.system.getNumConstraints() == 3 * len(waters)  # rigid water by default


def test_water_box_is_flexible_and_periodic():
    box = water_box(64, nonbonded_cutoff=0.45)
    assert box.topology.getNumResidues() == 64 and box.system.getNumParticles() == 192
    assert box.system.getNumConstraints() == 0 and box.system.usesPeriodicBoundaryConditions()
    assert water_box(64, rigid_water=True, nonbonded_cutoff=0.45).system.getNumConstraints() == 192
    with pytest.raises(InputError, match="exceeds half the shortest box edge"):
        water_box(64, nonbonded_cutoff=1.0)


def test_water_hydrogens_are_repartitioned_only_when_asked():
    """Repartitioning leaves water alone, as createSystem does, and hmr_system's row name then says no HMR; with
    water=True each hydrogen gets the mass and its oxygen gives it up, so every molecule keeps its mass."""
    box = water_box(8, rigid_water=True, nonbonded_cutoff=0.3)
    assert _masses(with_hydrogen_mass(box.system, box.topology, 2.0)) == _masses(box.system)
    system, label = hmr_system(box)
    assert label == "" and _masses(system) == _masses(box.system)
    heavy = _masses(with_hydrogen_mass(box.system, box.topology, 2.0, water=True))
    natural = _masses(box.system)
    for residue in box.topology.residues():
        indices = [atom.index for atom in residue.atoms()]
        assert [heavy[i] for i in indices if natural[i] < 2] == [2.0, 2.0]
        assert sum(heavy[i] for i in indices) == pytest.approx(sum(natural[i] for i in indices), rel=1e-12)


def test_water_box_takes_the_force_fields_own_water():
    """amoeba2018.xml defines water itself, so the TIP3P file is not loaded beside it (it would clash)."""
    amoeba = water_box(64, forcefield="amoeba2018.xml", rigid_water=True, nonbonded_cutoff=0.45)
    assert "AmoebaMultipoleForce" in _forces(amoeba.system) and "NonbondedForce" not in _forces(amoeba.system)
    assert amoeba.settings["water_forcefield"] is None and amoeba.system.getNumConstraints() == 192
    assert water_box(64, nonbonded_cutoff=0.45).settings["water_forcefield"] == "amber14/tip3p.xml"


@pytest.mark.parametrize("forcefield", ["amber14/opc.xml", "amber14/tip4pew.xml"])
def test_water_box_refuses_a_water_model_with_extra_sites(forcefield):
    """The box is built of three-site waters; a four-site model's file is named, not a clash of the TIP3P file
    loaded beside it."""
    with pytest.raises(InputError, match=f"{forcefield} define a 4-site water model.*three-site water model"):
        water_box(8, forcefield=forcefield, nonbonded_cutoff=0.3)


def test_unknown_residue_is_a_clear_error(alanine_pdb, tmp_path):
    pdb = tmp_path / "with-ligand.pdb"
    pdb.write_text(alanine_pdb.read_text().replace("TER\n", "TER\n" + UNKNOWN_LIGAND))
    with pytest.raises(InputError, match=r"(?s)No template found for residue.*XBR.*protein_only=True"):
        build_system(pdb)
    assert build_system(pdb, protein_only=True).topology.getNumAtoms() == 22


@pytest.mark.parametrize("arguments, message", [
    ({"pdb": "no-such-file.pdb"}, "not found"),
    ({"solvent": "water"}, "unknown solvent"),
    ({"constraints": "HAngles2"}, "unknown constraints"),
    ({"forcefield": "no-such-forcefield.xml"}, "could not load force field"),
    ({"hydrogen_mass": -1.0}, "hydrogen_mass must be positive"),
])
def test_bad_arguments(alanine_pdb, arguments, message):
    with pytest.raises(InputError, match=message):
        build_system(**{"pdb": alanine_pdb, **arguments})


def test_unreadable_pdb(tmp_path):
    pdb = tmp_path / "garbage.pdb"
    pdb.write_text("ATOM  this is not a PDB record\n")
    with pytest.raises(InputError, match="could not read PDB file"):
        build_system(pdb)


@pytest.mark.parametrize("name, atoms, constraints, periodic", [
    ("alanine-dipeptide", 22, 0, False),
    ("water-box", 768, 0, True),
    ("villin-obc2", 582, 293, False),
    ("villin-explicit", 8867, 8576, True),
])
def test_examples(name, atoms, constraints, periodic):
    built = build_example(name)
    assert built.system.getNumParticles() == atoms and built.system.getNumConstraints() == constraints
    assert built.system.usesPeriodicBoundaryConditions() == periodic
    assert set(EXAMPLES) == {"alanine-dipeptide", "water-box", "villin-obc2", "villin-explicit"}


def test_example_errors():
    with pytest.raises(InputError, match="unknown example 'villin'; bundled examples are alanine-dipeptide"):
        build_example("villin")
    with pytest.raises(InputError, match="padding do not apply to example 'water-box'"):
        build_example("water-box", padding=1.0)
    with pytest.raises(InputError, match="n_waters do not apply to PDB file"):
        build_input(str(EXAMPLES_DIR / "alanine-dipeptide.pdb"), n_waters=64)
    assert build_input("water-box", n_waters=64, nonbonded_cutoff=0.45).system.getNumParticles() == 192


def test_native_obc2_and_recipe_replay(alanine_pdb):
    native = build_system(alanine_pdb, "amber99sbildn.xml", "obc2", implicit_forcefield="amber99_obc.xml")
    assert "GBSAOBCForce" in _forces(native.system) and "CustomGBForce" not in _forces(native.system)
    assert native.settings["forcefield"] == ["amber99sbildn.xml"]
    assert native.settings["implicit_forcefield"] == "amber99_obc.xml"
    for built, source in [(native, str(alanine_pdb)), (water_box(64, nonbonded_cutoff=0.45), "water-box")]:
        replayed = build_training_system({"system": {"input": source, "settings": built.settings}})
        assert _forces(replayed.system) == _forces(built.system)
        assert replayed.system.getNumParticles() == built.system.getNumParticles()
