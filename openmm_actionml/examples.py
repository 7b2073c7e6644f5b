"""Bundled example systems, by name: ``build_example('alanine-dipeptide')``."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import openmm.app as app

from .errors import InputError
from .systems import PreparedSystem, build_system, replace_forces, topology_elements, water_box

#: The repository's examples/ folder (present in a source checkout or editable install).
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
#: OpenMM's bundled villin headpiece (N68H) in a box of water.
VILLIN_PDB = Path(app.__file__).resolve().parent / "data" / "test.pdb"


@dataclass(frozen=True)
class Example:
    """A named system: a PDB file and :func:`build_system` options, or (``pdb=None``) a water box."""

    name: str
    description: str
    pdb: Path | None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, **overrides: Any) -> PreparedSystem:
        """Build the system; ``overrides`` replace the example's options."""
        _check_options(water_box if self.pdb is None else build_system, overrides, f"example {self.name!r}")
        options = {**self.options, **overrides}
        return water_box(**options) if self.pdb is None else build_system(self.pdb, **options)


EXAMPLES: dict[str, Example] = {example.name: example for example in [
    Example("alanine-dipeptide", "ACE-ALA-NME, amber14, vacuum, flexible (22 atoms)",
            EXAMPLES_DIR / "alanine-dipeptide.pdb", {"solvent": "vacuum"}),
    Example("water-box", "256 flexible TIP3P waters, periodic, PME (768 atoms)", None,
            {"n_waters": 256, "rigid_water": False}),
    Example("villin-obc2", "villin headpiece, protein only, amber99sb-ildn + OBC2 implicit solvent (OpenMM's "
            "native GBSAOBCForce), HBonds (582 atoms)",
            VILLIN_PDB, {"forcefield": "amber99sbildn.xml", "solvent": "obc2", "implicit_forcefield": "amber99_obc.xml",
                         "protein_only": True, "constraints": "HBonds"}),
    Example("villin-explicit", "villin headpiece in the PDB's own TIP3P box, PME, HBonds, rigid water (8867 atoms)",
            VILLIN_PDB, {"solvent": "explicit", "padding": None, "constraints": "HBonds"}),
]}


def _check_options(builder: Any, options: dict[str, Any], what: str) -> None:
    """Raise :class:`InputError` naming the ``options`` that ``builder`` does not take."""
    unknown = sorted(set(options) - set(inspect.signature(builder).parameters) - {"pdb"})
    if unknown:
        raise InputError(f"option(s) {', '.join(unknown)} do not apply to {what}; leave them out.")


def get_example(name: str) -> Example:
    """The bundled example called ``name``."""
    try:
        return EXAMPLES[name]
    except KeyError:
        raise InputError(f"unknown example {name!r}; bundled examples are {', '.join(EXAMPLES)}.") from None


def build_example(name: str, **overrides: Any) -> PreparedSystem:
    """Build the bundled example ``name``, with ``overrides`` of its options."""
    return get_example(name).build(**overrides)


#: ``build_system`` options a model's recipe records and ``actionml`` commands take on the command line.
SYSTEM_OPTIONS = ("n_waters", "forcefield", "solvent", "implicit_forcefield", "water_forcefield", "padding",
                  "nonbonded_cutoff", "constraints", "rigid_water", "hydrogen_mass", "protein_only")


def build_input(source: str, **options: Any) -> PreparedSystem:
    """Build a PDB file's system or a bundled example's, with ``build_system`` ``options``."""
    if os.path.isfile(source):
        _check_options(build_system, options, f"PDB file {source}")
        return build_system(source, **options)
    if source in EXAMPLES:
        return build_example(source, **options)
    raise InputError(f"{source} is neither a PDB file nor a bundled example; give a PDB path or one of "
                     f"{', '.join(EXAMPLES)}.")


def build_training_system(recipe: dict, **overrides: Any) -> PreparedSystem:
    """The system a model's ``recipe`` records it was trained on; ``overrides`` replace recorded options."""
    system = recipe.get("system", {})
    if not system.get("input"):
        raise InputError("the model does not record its training system; give a PDB file or example.")
    return build_input(system["input"], **{**recorded_options(system.get("settings", {})), **overrides})


def recorded_options(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``build_system`` options among a system's recorded ``settings`` (those set)."""
    return {key: value for key, value in settings.items() if key in SYSTEM_OPTIONS and value is not None}


def build_baseline(settings: dict[str, Any], forcefield: Sequence[str], elements: Sequence[str]) -> PreparedSystem:
    """The system recorded by ``settings`` (a :class:`PreparedSystem`'s, or a dataset's metadata) parametrised with
    the cheaper ``forcefield`` instead: the donor of a baseline's forces. ``elements`` are the atoms it must
    reproduce, in order.

    Raises
    ------
    InputError
        If ``settings`` do not say what was built, or the baseline gives other atoms (a water model with more
        sites, another protonation).
    """
    files = [forcefield] if isinstance(forcefield, str) else list(forcefield)
    if settings.get("pdb"):
        donor = build_system(settings["pdb"], **{**recorded_options(settings), "forcefield": files})
    elif settings.get("n_waters"):
        donor = water_box(**{**recorded_options(settings), "forcefield": files})
    else:
        raise InputError("the system's settings record neither its PDB file nor a water box, so its baseline force "
                         "field cannot be built; build it with openmm_actionml.systems.build_system or water_box.")
    built = topology_elements(donor.topology)
    if built != list(elements):
        first = next((i for i, (a, b) in enumerate(zip(built, elements)) if a != b), min(len(built), len(elements)))
        raise InputError(f"the baseline force field {' + '.join(files)} gives {len(built)} atoms, differing from the "
                         f"System's {len(elements)} at atom {first}; a baseline must parametrise the same atoms in the "
                         f"same order (a water model with as many sites).")
    return donor


def with_baseline(prepared: PreparedSystem, forcefield: Sequence[str]) -> PreparedSystem:
    """``prepared`` with the forces of the cheaper ``forcefield`` in place of its own (same particles, masses,
    constraints and box; :func:`~openmm_actionml.systems.replace_forces`): the System a model trained with a
    baseline force field runs on. The baseline is built as ``prepared.settings`` record, with ``forcefield``."""
    elements = topology_elements(prepared.topology)
    donor = build_baseline(prepared.settings, forcefield, elements)
    return PreparedSystem(prepared.topology, replace_forces(prepared.system, donor.system), prepared.positions,
                          {**prepared.settings, "baseline_forcefield": list(donor.settings["forcefield"])})
