"""The model file: one TorchScript module (the TorchForce adapter around W) plus JSON metadata.

The adapter implements the TorchForce contract of ``docs/architecture.md``::

    forward(positions[N, 3], [box[3, 3]], actionml_node, actionml_active) -> (energy, forces[N, 3])

Loading validates the file; :meth:`ActionMLModel.validate` checks it against a System and names any mismatch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import openmm as mm
import openmm.unit as u
import openmmtorch

from .atomic import atomic_path
from .errors import InputError, ModelFileError, ModelMismatchError
from .network import check_cutoff_fits
from .splitting import Splitting
from .systems import default_box, force_classes, particle_masses, topology_elements

FORMAT_VERSION = 1
METADATA_ENTRY = "actionml.json"
LEARNED_FORCE_GROUP = 30
NODE_PARAMETER = "actionml_node"
ACTIVE_PARAMETER = "actionml_active"
MASS_TOLERANCE = 1e-6
LEARNED_FORCE_NAME = "ActionML learned kick potential"


@dataclass
class ModelMetadata:
    """Everything needed to run, validate and reproduce a model.

    Attributes
    ----------
    scheme
        ``"A"`` (explicit splitting) or ``"B"`` (implicit midpoint generating function).
    step
        The long step h in ps that the model was trained for.
    splitting
        Scheme A's stage sequence (:meth:`Splitting.to_dict`); for scheme B, its predictor.
    anchored
        Whether every kick adds the force field (``W = V + dW``) or uses ``dW`` alone (pure ML).
    elements, masses
        Per particle; masses in amu.
    constraints
        ``[[i, j, distance_nm], ...]``.
    periodic
        Whether the System is periodic.
    implicit
        Scheme B's nodes and weights, ``{"nodes": [...], "weights": [...]}``; ``None`` for scheme A.
    network
        The network's configuration (enough to rebuild it).
    temperature
        Training temperature in K.
    system_name
        A human name for the training system.
    recipe
        How the model was made: data, training options, seeds, command line, figures.
    force_field
        Anchored models: the class names of the force field's forces that every kick adds
        (:func:`~openmm_actionml.systems.force_classes`), checked against the System; ``None`` in older files.
    baseline
        The force-field files of a cheaper baseline that the kicks add in place of the training data's force
        field (the model runs on a System with those forces, :func:`~openmm_actionml.examples.with_baseline`);
        ``None`` when the kicks add the data's own force field or none.
    """

    scheme: str
    step: float
    splitting: dict
    anchored: bool
    elements: list[str]
    masses: list[float]
    constraints: list[list[float]]
    periodic: bool
    network: dict
    temperature: float
    system_name: str = ""
    implicit: Optional[dict] = None
    recipe: dict = field(default_factory=dict)
    force_field: Optional[list[str]] = None
    baseline: Optional[list[str]] = None
    format_version: int = FORMAT_VERSION

    @property
    def n_particles(self) -> int:
        return len(self.masses)

    @property
    def fingerprint(self) -> str:
        """A short hash of the particles and constraints the model is bound to."""
        payload = json.dumps([self.elements, np.round(self.masses, 6).tolist(),
                              [[int(i), int(j), round(float(d), 9)] for i, j, d in self.constraints], self.periodic])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def get_splitting(self) -> Splitting:
        return Splitting.from_dict(self.splitting)


class _Adapter(torch.nn.Module):
    """The TorchForce adapter for a non-periodic System."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=dtype))

    def learned(self, positions: torch.Tensor, box: Optional[torch.Tensor], node: torch.Tensor,
                active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if float(active.reshape(-1)[0]) < 0.5:
            return torch.zeros((), dtype=positions.dtype, device=positions.device), torch.zeros_like(positions)
        head = int(float(node.reshape(-1)[0]) + 0.5)
        q = positions.detach().to(self.dtype_probe.dtype).unsqueeze(0).requires_grad_(True)
        batch_box = None if box is None else box.detach().to(self.dtype_probe.dtype).unsqueeze(0)
        energy = self.network(q, batch_box)[0, head]
        gradient = torch.autograd.grad([energy], [q])[0]
        assert gradient is not None
        return energy.detach().to(positions.dtype), (-gradient[0]).detach().to(positions.dtype)

    def forward(self, positions: torch.Tensor, actionml_node: torch.Tensor,
                actionml_active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learned(positions, None, actionml_node, actionml_active)


class _PeriodicAdapter(_Adapter):
    """The TorchForce adapter for a periodic System (TorchForce passes the box after the positions)."""

    def forward(self, positions: torch.Tensor, boxvectors: torch.Tensor, actionml_node: torch.Tensor,
                actionml_active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.learned(positions, boxvectors, actionml_node, actionml_active)


def export_model(network: torch.nn.Module, metadata: ModelMetadata, path: str | Path, overwrite: bool = False) -> Path:
    """Script ``network`` inside the TorchForce adapter and write it with ``metadata``, atomically.

    ``network`` must already be bound to the System's particles (``network(q[B, N, 3], box) -> [B, n_heads]``).
    """
    dtype = next(network.parameters()).dtype
    adapter_class = _PeriodicAdapter if metadata.periodic else _Adapter
    scripted = torch.jit.script(adapter_class(network.eval(), dtype))
    payload = json.dumps(asdict(metadata), indent=1)
    with atomic_path(path, overwrite) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_ENTRY: payload})
    return Path(path)


@dataclass
class ActionMLModel:
    """A loaded model file: its TorchScript adapter and metadata."""

    path: Path
    module: torch.jit.ScriptModule
    metadata: ModelMetadata

    @property
    def network(self) -> torch.jit.ScriptModule:
        """W itself: ``network(q[B, N, 3], box) -> energies[B, n_heads]``."""
        return self.module.network

    def validate(self, system: mm.System, step: Optional[float] = None, topology: Optional[mm.app.Topology] = None) -> None:
        """Raise :class:`ModelMismatchError` naming the first difference between the model and ``system``.

        Parameters
        ----------
        system
            The System the model is to run with.
        step
            The integrator step in ps, checked against the model's h.
        topology
            If given, elements are checked too.
        """
        meta = self.metadata
        name = f"model {self.path.name} (trained on {meta.system_name or 'an unnamed system'})"
        if system.getNumParticles() != meta.n_particles:
            raise ModelMismatchError(f"{name} has {meta.n_particles} particles but the System has "
                                     f"{system.getNumParticles()}; train a model for this System (actionml train).")
        masses = particle_masses(system)
        expected = np.array(meta.masses)
        bad = np.flatnonzero(np.abs(masses - expected) > MASS_TOLERANCE * np.maximum(expected, 1e-12))
        if len(bad):
            i = int(bad[0])
            raise ModelMismatchError(f"{name}: particle {i} has mass {masses[i]:.6g} amu in the System but "
                                     f"{expected[i]:.6g} amu in the model (hydrogen mass repartitioning must match "
                                     f"the training data).")
        if topology is not None:
            elements = topology_elements(topology)
            for i, (have, want) in enumerate(zip(elements, meta.elements)):
                if have != want:
                    raise ModelMismatchError(f"{name}: particle {i} is {have or 'a virtual site'} in the topology "
                                             f"but {want} in the model.")
        if bool(system.usesPeriodicBoundaryConditions()) != meta.periodic:
            kind = "periodic" if meta.periodic else "non-periodic"
            raise ModelMismatchError(f"{name} is for a {kind} System; the System's periodicity differs.")
        constraints = sorted((min(i, j), max(i, j), d.value_in_unit(u.nanometer))
                             for i, j, d in (system.getConstraintParameters(k) for k in range(system.getNumConstraints())))
        wanted = sorted((min(int(i), int(j)), max(int(i), int(j)), float(d)) for i, j, d in meta.constraints)
        if [c[:2] for c in constraints] != [c[:2] for c in wanted] or \
                any(abs(a[2] - b[2]) > 1e-6 * b[2] for a, b in zip(constraints, wanted)):
            raise ModelMismatchError(f"{name} was trained with {len(wanted)} constraints; the System has "
                                     f"{len(constraints)} that differ. Use the same constraints= as the training data.")
        if meta.periodic and "cutoff" in meta.network:
            box = default_box(system)
            try:
                check_cutoff_fits(meta.network["cutoff"], box)
            except InputError as error:
                raise ModelMismatchError(f"{name}: {error}") from None
        if meta.anchored and meta.force_field is not None and force_classes(system) != meta.force_field:
            if meta.baseline:
                anchor = f"the baseline force field {' + '.join(meta.baseline)}"
                fix = f"build it with openmm_actionml.with_baseline(prepared, {meta.baseline!r})"
            else:
                anchor, fix = "its training force field", "build the System with the training data's force field"
            raise ModelMismatchError(f"{name} adds its learned correction to {anchor} (forces "
                                     f"{', '.join(meta.force_field)}), but the System has "
                                     f"{', '.join(force_classes(system)) or 'no forces'}; {fix}.")
        if step is not None and abs(step - meta.step) > 1e-9 * meta.step:
            raise ModelMismatchError(f"{name} takes steps of {meta.step * 1000:g} fs, not {step * 1000:g} fs; "
                                     f"a learned map is only valid at the step it was trained for.")

    def on_masses(self, masses: np.ndarray) -> ActionMLModel:
        """This model bound to other particle ``masses`` (amu), e.g. heavier water hydrogens: its learned potential,
        a function of positions alone, is unchanged, so the step stays symplectic and reversible; what its training
        matched to steps was for the training masses, so judge the result anew (NVE ensembles).

        Raises
        ------
        InputError
            If ``masses`` are not one positive finite value per particle.
        """
        masses = np.asarray(masses, dtype=float)
        if masses.shape != (self.metadata.n_particles,) or not np.all(np.isfinite(masses) & (masses > 0)):
            raise InputError(f"masses for model {self.path.name} must be {self.metadata.n_particles} positive finite "
                             f"values (amu), one per particle; got shape {masses.shape}.")
        return ActionMLModel(self.path, self.module, replace(self.metadata, masses=masses.tolist()))

    def create_force(self) -> openmmtorch.TorchForce:
        """A TorchForce in group 30 with the two control parameters, outputting forces."""
        force = openmmtorch.TorchForce(self.module)
        force.setOutputsForces(True)
        force.setUsesPeriodicBoundaryConditions(self.metadata.periodic)
        force.addGlobalParameter(NODE_PARAMETER, 0.0)
        force.addGlobalParameter(ACTIVE_PARAMETER, 0.0)
        force.setForceGroup(LEARNED_FORCE_GROUP)
        force.setName(LEARNED_FORCE_NAME)
        return force


def load_model(path: str | Path) -> ActionMLModel:
    """Read a model file, or raise :class:`ModelFileError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; train one with `actionml train` or use a "
                             f"shipped model from models/.")
    extra = {METADATA_ENTRY: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # torch raises RuntimeError/ValueError subclasses for many corruptions
        raise ModelFileError(f"model file {path} is corrupt or truncated ({type(error).__name__}); "
                             f"re-export or re-download it.") from None
    try:
        data = json.loads(extra[METADATA_ENTRY])
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"model file {path} has format version {data.get('format_version')}; this "
                                 f"openmm-actionml reads version {FORMAT_VERSION}. Re-export it with this version.")
        metadata = ModelMetadata(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise ModelFileError(f"model file {path} has no valid actionml metadata ({error}); it was not written by "
                             f"openmm_actionml.export_model.") from None
    return ActionMLModel(path, module, metadata)
