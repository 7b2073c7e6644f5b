"""The reference-data protocol: short NVE velocity-Verlet segments from decorrelated thermal states.

1. Minimise, then equilibrate with a ``LangevinMiddleIntegrator`` at the temperature.
2. For each segment: a Langevin stretch to decorrelate, then an NVE segment with
   :class:`VelocityVerletIntegrator` at the fine step ``delta``, recording synchronous (q, v).

Given ``starts`` (states another simulation visited, e.g. a learned model's own thermostatted ensemble), step 1
is skipped and segment i begins at start i: the segments then follow the true potential from where that
simulation went, which is the data a surrogate needs to correct its own ensemble.

Both integrators share one Context through a ``CompoundIntegrator``. It simulates a copy of the System
without ``CMMotionRemover`` (which would act inside NVE and break its synchronous velocities); instead,
when the System had one, each segment starts with zero centre-of-mass velocity, which NVE conserves.
Each segment starts on the constraint surface (positions and velocities projected to 1e-10).
"""
from __future__ import annotations

import copy
import datetime
import platform as host
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import openmm as mm
import openmm.app as app
import openmm.unit as u

from . import __version__
from .atomic import check_writable
from .dataset import ReferenceDataset
from .errors import InputError, SimulationInstabilityError
from .platforms import get_platform, platform_properties
from .systems import default_box, particle_masses, topology_elements
from .units import positive_float, strip_unit

#: Constraint tolerance of the NVE segments and of the projection at their start.
CONSTRAINT_TOLERANCE = 1e-10
NM_PER_PS = u.nanometer / u.picosecond
KJ_PER_MOL_NM = u.kilojoule_per_mole / u.nanometer
#: Largest mismatch, amu, between a mass and its element when elements are inferred from masses.
ELEMENT_MASS_TOLERANCE = 0.1


class VelocityVerletIntegrator(mm.CustomIntegrator):
    """Velocity Verlet with synchronous positions and velocities, and RATTLE for constraints.

    One force evaluation per step. The global ``potential_energy`` holds the potential energy
    (kJ/mol) at the positions after the last step. The step never calls ``updateContextState``,
    so thermostats, barostats and ``CMMotionRemover`` in the System do not act: it is pure NVE.

    Parameters
    ----------
    step
        Time step (Quantity or ps).
    constraint_tolerance
        Relative tolerance of the position and velocity constraint projections.
    """

    def __init__(self, step: u.Quantity | float, constraint_tolerance: float = CONSTRAINT_TOLERANCE):
        super().__init__(positive_float(step, u.picosecond, "step"))
        self.setConstraintTolerance(constraint_tolerance)
        self.addGlobalVariable("potential_energy", 0.0)
        self.addPerDofVariable("x1", 0.0)
        self.addComputePerDof("v", "v + 0.5*dt*f/m")
        self.addComputePerDof("x", "x + dt*v")
        self.addComputePerDof("x1", "x")
        self.addConstrainPositions()
        self.addComputePerDof("v", "v + 0.5*dt*f/m + (x - x1)/dt")
        self.addConstrainVelocities()
        self.addComputeGlobal("potential_energy", "energy")


def generate_reference_data(system: mm.System,
                            positions: Any,
                            output: str | None = None,
                            *,
                            topology: app.Topology | None = None,
                            temperature: u.Quantity | float = 300.0 * u.kelvin,
                            delta: u.Quantity | float = 0.25 * u.femtosecond,
                            n_segments: int | None = None,
                            segment_length: u.Quantity | float = 1.0 * u.picosecond,
                            record_every: int = 1,
                            decorrelation: u.Quantity | float | None = None,
                            equilibration: u.Quantity | float | None = None,
                            starts: tuple[Any, Any] | None = None,
                            langevin_step: u.Quantity | float = 1.0 * u.femtosecond,
                            friction: u.Quantity | float = 1.0 / u.picosecond,
                            platform: str | mm.Platform | None = None,
                            precision: str | None = "mixed",
                            seed: int | None = None,
                            store_forces: bool = False,
                            metadata: dict[str, Any] | None = None,
                            overwrite: bool = False,
                            progress: bool = True) -> ReferenceDataset:
    """Run the reference-data protocol and return (and optionally save) the dataset.

    Parameters
    ----------
    system, positions
        The System and its starting positions (Quantity, or nm).
    output
        Path to save the dataset to, or ``None``. Checked before any simulation; written atomically.
    topology
        Gives each particle's element. Without it elements are inferred from masses, which fails
        (with an error) for repartitioned hydrogen masses.
    temperature
        Equilibration and decorrelation temperature (K).
    delta
        Velocity-Verlet step of the NVE segments (0.25 fs flexible, 0.5-1 fs with HBonds).
    n_segments
        Number of NVE segments (default 10, or one per start).
    segment_length
        Duration of each segment (ps); a whole multiple of ``delta * record_every``.
    record_every
        Record every this many velocity-Verlet steps; the dataset's frame spacing is
        ``delta * record_every``.
    decorrelation
        Langevin time before each segment (ps; default 1, or 0 with ``starts`` so that segments begin at them).
    equilibration
        Langevin time after minimisation (ps; default 10; with ``starts`` there is none, and it must be 0).
    starts
        ``(positions, velocities)``, each ``[S, N, 3]`` (Quantity, or nm and nm/ps): begin segment i at state i
        instead of minimising and equilibrating ``positions``, which then only checks the particle count.
    langevin_step, friction
        Step and friction of the Langevin stretches.
    platform, precision
        OpenMM platform name (``None``: fastest) and precision where the platform has one.
    seed
        Seeds the initial velocities and the Langevin noise; a random one is drawn (and recorded) if ``None``.
    store_forces
        Also store the force-field forces of every frame (one extra force evaluation per frame).
    metadata
        Extra JSON-serialisable metadata, e.g. ``PreparedSystem.settings``; its ``command`` entry
        (default ``sys.argv``) is recorded in the provenance.
    overwrite
        Replace an existing ``output``.
    progress
        Print a progress line per segment on stderr.

    Raises
    ------
    InputError
        For an invalid argument, before anything is simulated.
    SimulationInstabilityError
        If a segment produces non-finite positions or velocities.
    """
    xyz = np.asarray(strip_unit(positions, u.nanometer, "positions"), dtype=np.float64)
    if xyz.shape != (system.getNumParticles(), 3):
        raise InputError(f"positions have shape {xyz.shape} but the System has {system.getNumParticles()} particles.")
    given = None if starts is None else _given_starts(starts, system.getNumParticles())
    n_segments, decorrelation, equilibration = _segment_defaults(given, n_segments, decorrelation, equilibration)
    protocol = _Protocol.validate(temperature, delta, n_segments, segment_length, record_every, decorrelation,
                                  equilibration, langevin_step, friction)
    masses = particle_masses(system)
    if (masses <= 0).any():
        raise InputError("the System has massless particles (virtual sites or fixed atoms); velocity-Verlet "
                         "reference data need every particle to move. Use a 3-site water model and no fixed atoms.")
    if any("Barostat" in force.__class__.__name__ for force in system.getForces()):
        raise InputError("the System has a barostat; reference segments are at constant volume. Remove the barostat.")
    elements = _elements(masses, topology)
    chosen = get_platform(platform) or _fastest_platform()
    if output is not None:
        check_writable(output, overwrite)
    if seed is None:
        seed = int(np.random.default_rng().integers(1, 2**31 - 1))

    nve_system = copy.deepcopy(system)
    com_removed = _remove_com_motion_removers(nve_system)
    properties = platform_properties(chosen, precision)
    langevin_seed, velocity_seed = (int(s) for s in np.random.default_rng(seed).integers(1, 2**31 - 1, size=2))
    context, integrator = _make_context(nve_system, protocol, chosen, properties, langevin_seed)
    try:
        arrays = _simulate(context, integrator, xyz, masses, com_removed, protocol, velocity_seed, store_forces,
                           progress, given)
    except mm.OpenMMException as error:
        if "nan" not in str(error).lower():
            raise
        raise SimulationInstabilityError(f"the simulation blew up ({error}); reduce delta (now "
                                         f"{protocol.step * 1000:g} fs) or check the starting structure.") from error

    box = None
    if system.usesPeriodicBoundaryConditions():
        box = default_box(system)
    pairs = [system.getConstraintParameters(i) for i in range(system.getNumConstraints())]
    extra = dict(metadata or {})
    command = extra.pop("command", " ".join(sys.argv))
    dataset = ReferenceDataset(
        **arrays, delta=protocol.spacing, masses=masses, elements=elements, temperature=protocol.temperature,
        box=box, com_removed=com_removed,
        constraint_pairs=np.array([(i, j) for i, j, _ in pairs], dtype=np.int64).reshape(-1, 2),
        constraint_distances=np.array([d.value_in_unit(u.nanometer) for _, _, d in pairs]),
        system_xml=mm.XmlSerializer.serialize(system),
        metadata={**extra, "protocol": {**protocol.describe(),
                                        "starts": "minimised structure" if given is None else "given states"},
                  "provenance": _provenance(context, properties, seed, command)})
    if output is not None:
        dataset.save(output, overwrite)
    return dataset


@dataclass(frozen=True)
class _Protocol:
    """The protocol's numbers, validated, in internal units."""

    temperature: float
    step: float
    n_segments: int
    n_intervals: int
    record_every: int
    n_decorrelation: int
    n_equilibration: int
    langevin_step: float
    friction: float

    @classmethod
    def validate(cls, temperature, delta, n_segments, segment_length, record_every, decorrelation, equilibration,
                 langevin_step, friction) -> "_Protocol":
        step = positive_float(delta, u.picosecond, "delta")
        for name, value in (("record_every", record_every), ("n_segments", n_segments)):
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}.")
        spacing = step * int(record_every)
        length = positive_float(segment_length, u.picosecond, "segment_length")
        n_intervals = round(length / spacing)
        if n_intervals < 1 or abs(n_intervals * spacing - length) > 1e-6 * length:
            raise InputError(f"segment_length ({length:g} ps) must be a positive whole multiple of "
                             f"delta * record_every ({spacing:g} ps).")
        thermostat_step = positive_float(langevin_step, u.picosecond, "langevin_step")
        return cls(temperature=positive_float(temperature, u.kelvin, "temperature"), step=step,
                   n_segments=int(n_segments), n_intervals=n_intervals, record_every=int(record_every),
                   n_decorrelation=_langevin_steps(decorrelation, thermostat_step, "decorrelation"),
                   n_equilibration=_langevin_steps(equilibration, thermostat_step, "equilibration"),
                   langevin_step=thermostat_step, friction=positive_float(friction, u.picosecond ** -1, "friction"))

    @property
    def spacing(self) -> float:
        """Time between recorded frames, ps."""
        return self.step * self.record_every

    def describe(self) -> dict[str, Any]:
        """The protocol for the dataset's metadata (ps, K, 1/ps)."""
        return {"temperature": self.temperature, "integration_step": self.step, "record_every": self.record_every,
                "segment_length": self.n_intervals * self.spacing, "langevin_step": self.langevin_step,
                "decorrelation": self.n_decorrelation * self.langevin_step,
                "equilibration": self.n_equilibration * self.langevin_step, "friction": self.friction,
                "constraint_tolerance": CONSTRAINT_TOLERANCE}


def _given_starts(starts: tuple[Any, Any], n_particles: int) -> tuple[np.ndarray, np.ndarray]:
    """``starts`` as float64 arrays in nm and nm/ps, checked for shape and finiteness."""
    try:
        positions, velocities = starts
    except (TypeError, ValueError) as error:
        raise InputError("starts must be a pair (positions, velocities) of [S, N, 3] arrays.") from error
    arrays = (np.asarray(strip_unit(positions, u.nanometer, "start positions"), dtype=np.float64),
              np.asarray(strip_unit(velocities, NM_PER_PS, "start velocities"), dtype=np.float64))
    for name, array in zip(("positions", "velocities"), arrays):
        if array.ndim != 3 or array.shape[1:] != (n_particles, 3) or len(array) == 0:
            raise InputError(f"start {name} have shape {array.shape}, but the System needs [S, {n_particles}, 3] "
                             f"with S >= 1; the starts come from another system, or are not a list of states.")
        if not np.isfinite(array).all():
            raise InputError(f"start {name} hold NaN or infinite values; the simulation that produced them blew up.")
    if len(arrays[0]) != len(arrays[1]):
        raise InputError(f"{len(arrays[0])} start positions but {len(arrays[1])} start velocities; give one of each "
                         f"per state.")
    return arrays


def _segment_defaults(given: tuple[np.ndarray, np.ndarray] | None, n_segments: int | None, decorrelation: Any,
                      equilibration: Any) -> tuple[int, Any, Any]:
    """Segments, decorrelation and equilibration, defaulted for a minimised structure or for given starts."""
    if given is None:
        return (10 if n_segments is None else n_segments, 1.0 if decorrelation is None else decorrelation,
                10.0 if equilibration is None else equilibration)
    if n_segments is not None and n_segments != len(given[0]):
        raise InputError(f"n_segments is {n_segments} but {len(given[0])} starts are given; each segment begins "
                         f"at one start, so leave n_segments out or give that many starts.")
    if equilibration is not None and float(strip_unit(equilibration, u.picosecond, "equilibration")) != 0:
        raise InputError("equilibration follows the minimisation of a single structure, which given starts skip; "
                         "leave it out, and use decorrelation to relax each start on this System's potential.")
    return len(given[0]), 0.0 if decorrelation is None else decorrelation, 0.0


def _make_context(system: mm.System, protocol: _Protocol, platform: mm.Platform,
                  properties: dict[str, str], langevin_seed: int) -> tuple[mm.Context, mm.CompoundIntegrator]:
    """A Context whose CompoundIntegrator holds the Langevin (0) and velocity-Verlet (1) integrators."""
    langevin = mm.LangevinMiddleIntegrator(protocol.temperature, protocol.friction, protocol.langevin_step)
    verlet = VelocityVerletIntegrator(protocol.step)
    for member in (langevin, verlet):  # a CompoundIntegrator needs one seed throughout
        member.setRandomNumberSeed(langevin_seed)
    integrator = mm.CompoundIntegrator()
    integrator.addIntegrator(langevin)
    integrator.addIntegrator(verlet)
    return mm.Context(system, integrator, platform, properties), integrator


def _simulate(context: mm.Context, integrator: mm.CompoundIntegrator, positions: np.ndarray, masses: np.ndarray,
              com_removed: bool, protocol: _Protocol, velocity_seed: int, store_forces: bool,
              progress: bool, starts: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Minimise and equilibrate (unless ``starts`` are given), and record the segments; return the dataset's
    per-frame arrays."""
    verlet = integrator.getIntegrator(1)
    integrator.setCurrentIntegrator(0)
    if starts is None:
        context.setPositions(positions)
        mm.LocalEnergyMinimizer.minimize(context)
        context.setVelocitiesToTemperature(protocol.temperature, velocity_seed)
        _say(progress, f"generate: {len(masses)} atoms on {context.getPlatform().getName()}; "
                       f"equilibrating {protocol.n_equilibration * protocol.langevin_step:g} ps")
        integrator.step(protocol.n_equilibration)
    else:
        _say(progress, f"generate: {len(masses)} atoms on {context.getPlatform().getName()}; "
                       f"{len(starts[0])} segments from the given starts")

    shape = (protocol.n_segments, protocol.n_intervals + 1, len(masses), 3)
    arrays = {"positions": np.empty(shape), "velocities": np.empty(shape),
              "potential_energies": np.empty(shape[:2]), "forces": np.empty(shape) if store_forces else None}
    started = time.monotonic()
    for segment in range(protocol.n_segments):
        integrator.setCurrentIntegrator(0)
        if starts is not None:
            context.setPositions(starts[0][segment])
            context.setVelocities(starts[1][segment])
        integrator.step(protocol.n_decorrelation)
        _start_segment(context, masses, com_removed)
        integrator.setCurrentIntegrator(1)
        for frame in range(protocol.n_intervals + 1):
            if frame:
                integrator.step(protocol.record_every)
            state = context.getState(getPositions=True, getVelocities=True, getForces=store_forces,
                                     getEnergy=frame == 0)
            arrays["positions"][segment, frame] = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
            arrays["velocities"][segment, frame] = state.getVelocities(asNumpy=True).value_in_unit(NM_PER_PS)
            arrays["potential_energies"][segment, frame] = (
                state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) if frame == 0
                else verlet.getGlobalVariableByName("potential_energy"))
            if store_forces:
                arrays["forces"][segment, frame] = state.getForces(asNumpy=True).value_in_unit(KJ_PER_MOL_NM)
            if not (np.isfinite(arrays["positions"][segment, frame]).all()
                    and np.isfinite(arrays["velocities"][segment, frame]).all()):
                raise SimulationInstabilityError(
                    f"segment {segment + 1} blew up at {frame * protocol.spacing:g} ps (non-finite positions or "
                    f"velocities); reduce delta (now {protocol.step * 1000:g} fs) or check the starting structure.")
        elapsed = time.monotonic() - started
        remaining = elapsed / (segment + 1) * (protocol.n_segments - segment - 1)
        _say(progress, f"generate: segment {segment + 1}/{protocol.n_segments} done, {elapsed:.1f} s elapsed, "
                       f"ETA {remaining:.1f} s")
    return arrays


def _start_segment(context: mm.Context, masses: np.ndarray, com_removed: bool) -> None:
    """Put positions and velocities on the constraint surface, with zero COM velocity if ``com_removed``."""
    context.applyConstraints(CONSTRAINT_TOLERANCE)
    if com_removed:
        velocities = context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(NM_PER_PS)
        context.setVelocities(velocities - (masses @ velocities) / masses.sum())
    context.applyVelocityConstraints(CONSTRAINT_TOLERANCE)


def _langevin_steps(duration: u.Quantity | float, step: float, name: str) -> int:
    value = float(strip_unit(duration, u.picosecond, name))
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a non-negative time, got {duration}.")
    return round(value / step)


def _elements(masses: np.ndarray, topology: app.Topology | None) -> list[str]:
    if topology is not None:
        if topology.getNumAtoms() != len(masses):
            raise InputError(f"the topology has {topology.getNumAtoms()} atoms but the System {len(masses)} particles.")
        return topology_elements(topology)
    elements = [app.element.Element.getByMass(m) for m in masses]
    for index, (mass, element) in enumerate(zip(masses, elements)):
        if abs(element.mass.value_in_unit(u.dalton) - mass) > ELEMENT_MASS_TOLERANCE:
            raise InputError(f"particle {index} has mass {mass:g} amu, which matches no element (hydrogen-mass "
                             f"repartitioning?); pass topology= so the elements are known.")
    return [element.symbol for element in elements]


def _fastest_platform() -> mm.Platform:
    """The platform OpenMM would choose, named explicitly so that its precision can be set."""
    platforms = [mm.Platform.getPlatform(i) for i in range(mm.Platform.getNumPlatforms())]
    return max(platforms, key=lambda candidate: candidate.getSpeed())


def _remove_com_motion_removers(system: mm.System) -> bool:
    """Remove every CMMotionRemover from ``system``; return whether there was one."""
    indices = [i for i, force in enumerate(system.getForces()) if isinstance(force, mm.CMMotionRemover)]
    for index in reversed(indices):
        system.removeForce(index)
    return bool(indices)


def _provenance(context: mm.Context, properties: dict[str, str], seed: int, command: str) -> dict[str, Any]:
    platform = context.getPlatform()
    return {"openmm_actionml": __version__, "openmm": mm.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": host.python_version(), "platform": platform.getName(),
            "platform_properties": {name: platform.getPropertyValue(context, name) for name in properties},
            "seed": seed, "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
