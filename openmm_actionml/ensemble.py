"""NVE ensembles in OpenMM: run several integrators from the same equilibrated starts and measure what experts
accept (DESIGN.md section 9): stable fraction, energy drift and its RMS, per-element kinetic temperature with a
constraint-aware DOF count, reversibility, the velocity autocorrelation, a radial distribution function (periodic
boxes, on request), cost and speed.

This is the engine of ``actionml evaluate`` and ``actionml demo``; :mod:`openmm_actionml.report` turns its
results into tables and plots.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import openmm as mm
import openmm.unit as u

from .atomic import atomic_path, read_arrays
from .diagnostics import (RadialDistribution, degrees_of_freedom_per_atom, element_temperature_series, energy_drift,
                          rigid_molecule_temperatures, rigid_triatomics)
from .errors import InputError, SimulationInstabilityError
from .integrator import SplittingIntegrator
from .platforms import create_context
from .systems import constraint_pairs, default_box, particle_masses
from .symplecticity import measured_defect
from .trajectory_cache import CachedTrajectory, TrajectoryCache, reproducible_xml_digest
from .units import BOLTZMANN

#: Force groups of the force field; the learned force sits in group 30 and is never part of the energy.
FORCE_FIELD_GROUPS = set(range(30))


@dataclass
class Candidate:
    """One integrator to judge.

    Attributes
    ----------
    name
        Row label.
    step
        Step size in ps.
    system
        The System it runs (with the learned force for a learned model, with repartitioned masses for HMR).
    make_integrator
        Builds a fresh :class:`~openmm_actionml.integrator.SplittingIntegrator` (or ``ActionMLIntegrator``) for
        ``system``; its ``evaluations_per_step`` after the run gives the cost.
    speed_integrator
        Optional: builds the integrator whose speed is reported instead (e.g. OpenMM's native leapfrog
        ``VerletIntegrator`` for a velocity-Verlet row, whose synchronous velocities the diagnostics need).
    energy_system
        Optional: the System whose potential energy is measured at every sample in place of ``system``'s, for a
        row whose System carries a cheaper baseline in place of the force field it stands for (that force field's
        energy is the one every row is judged by). It costs one evaluation of it per sample.
    """

    name: str
    step: float
    system: mm.System
    make_integrator: Callable[[], SplittingIntegrator]
    speed_integrator: Optional[Callable[[], mm.Integrator]] = None
    energy_system: Optional[mm.System] = None


@dataclass
class EnsembleOptions:
    """How the ensembles run.

    Attributes
    ----------
    n_trajectories
        Starts, each run by every candidate.
    duration
        ps per trajectory.
    sample_interval
        ps between samples of energy and velocities; a multiple of every candidate's step.
    burn_in
        Leading fraction of each trajectory left out of the drift fit (the modified energy's relaxation).
    reversibility_time
        ps run forward (the nearest whole number of steps), then backward after flipping the velocities, for
        the reversibility figure.
    correlation_time
        Longest lag (ps) of the velocity autocorrelation.
    instability_factor
        A trajectory is stopped, unstable, once its total energy leaves its start by this many ``n_dof kT``, or
        is NaN.
    runaway_factor
        A trajectory whose total energy left its start by more than this many ``n_dof kT`` at any sample counts
        as unstable too, from that sample on: a heating that levels off below ``instability_factor`` (half an
        ``n_dof kT`` heats a harmonic system by half its temperature; a drift of 0.1 kT/DOF/ns gives a hundredth
        of it over 50 ps).
    symplecticity_max_atoms
        Measure the finite-difference symplecticity defect of one step (:mod:`openmm_actionml.symplecticity`)
        for Systems without constraints of at most this many atoms (it costs ``36 N`` steps).
    speed_time
        ps of the dedicated speed run (see :func:`run_ensemble`); default: one trajectory's length.
    rdf
        Element pair whose radial distribution function to measure at every sample, such as ``"O-O"`` (periodic
        orthorhombic boxes; default none).
    rdf_bin_width
        Its bin width in nm.
    """

    n_trajectories: int = 8
    duration: float = 10.0
    sample_interval: float = 0.008
    burn_in: float = 0.2
    reversibility_time: float = 0.5
    correlation_time: float = 0.5
    instability_factor: float = 4.0
    runaway_factor: float = 0.5
    symplecticity_max_atoms: int = 64
    speed_time: Optional[float] = None
    rdf: Optional[str] = None
    rdf_bin_width: float = 0.01

    def __post_init__(self) -> None:
        if self.n_trajectories < 2:
            raise InputError(f"an ensemble needs at least 2 trajectories (standard errors), got {self.n_trajectories}.")
        for name in ("duration", "sample_interval", "reversibility_time", "correlation_time", "rdf_bin_width"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.speed_time is not None and not self.speed_time > 0:
            raise InputError(f"speed_time must be positive (ps), got {self.speed_time}.")
        if self.correlation_time >= self.duration:
            raise InputError(f"correlation_time ({self.correlation_time} ps) must be shorter than the trajectories "
                             f"({self.duration} ps).")

    def runaway_limit(self, n_dof: float, temperature: float) -> float:
        """The rise of the total energy (kJ/mol) past which a trajectory counts as a runaway: ``runaway_factor``
        ``n_dof kT``."""
        return self.runaway_factor * n_dof * BOLTZMANN * temperature


@dataclass
class EnsembleResult:
    """What one candidate's ensemble measured. Means are over stable trajectories, ``*_error`` their standard
    errors; drifts in kT per degree of freedom per ns and in kJ/mol/ns. ``failure_time`` is the mean time (ps)
    of the last sample of the unstable trajectories (NaN when all are stable); ``notes`` holds the scheme-B
    solver's statistics.

    ``element_temperatures`` are in K; with rigid three-atom molecules (rigid water) they also hold the molecules'
    ``translation`` and ``rotation`` temperatures, where per-atom figures say little (a rigid molecule's kinetic
    energy divides between its atoms by geometry, not by equipartition). Each NVE trajectory keeps the energy of
    its start, so its temperature varies from start to start by about ``sqrt(2/n_dof)``; ``equipartition``
    divides each element's temperature by its own trajectory's before averaging, which resolves a loss of
    equipartition to about a per cent with a few trajectories.

    With :attr:`EnsembleOptions.rdf`, ``rdf`` and ``rdf_error`` are the radial distribution function at
    ``rdf_radii`` (nm) and its standard error over stable trajectories, and ``rdf_at_temperature`` and its error
    are each bin's value at the bath's temperature, read as ``potential_energy_at_temperature`` is (below);
    otherwise they are empty.

    ``potential_energy`` is the mean potential energy (kJ/mol, in the row's energy System): each sample's total
    energy minus its ``sum m v^2 / 2``, averaged over the samples of each stable trajectory, then over
    trajectories. Two rows at one temperature whose potential energies differ sample different configurations.
    Each NVE trajectory keeps its start's total energy, so its mean potential energy scatters from start to start
    with its temperature (by the configurational heat capacity); ``potential_energy_at_temperature`` is the value at
    the bath's temperature of the straight line through the stable trajectories' (temperature, potential energy)
    means, with its standard error. It removes that scatter, so two rows' configurations compare at one temperature
    with an error set by each trajectory's finite length rather than by the spread of the start energies."""

    name: str
    step_fs: float
    stable: int
    n_trajectories: int
    failure_time: float
    drift: float
    drift_error: float
    drift_kj: float
    energy_rms: float
    temperature: float
    temperature_error: float
    potential_energy: float
    potential_energy_error: float
    potential_energy_at_temperature: float
    potential_energy_at_temperature_error: float
    element_temperatures: dict[str, tuple[float, float]]
    equipartition: dict[str, tuple[float, float]]
    reversibility: float
    symplecticity: float
    evaluations_per_fs: float
    ps_per_second: float
    times: np.ndarray = field(repr=False)
    energies: np.ndarray = field(repr=False)
    element_series: dict[str, np.ndarray] = field(repr=False)
    vacf: np.ndarray = field(repr=False)
    vacf_error: np.ndarray = field(repr=False)
    notes: str = ""
    rdf_label: str = ""
    rdf_radii: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    rdf: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    rdf_error: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    rdf_at_temperature: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    rdf_at_temperature_error: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict:
        """The scalar figures (JSON-serialisable)."""
        return {key: value for key, value in self.__dict__.items()
                if not isinstance(value, np.ndarray) and key != "element_series"}  # series and curves stay out


@dataclass
class Starts:
    """Initial states shared by every candidate: positions (nm) and velocities (nm/ps), ``[B, N, 3]``, drawn on
    a System with ``masses`` (amu)."""

    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def without_centre_of_mass_velocity(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """``velocities[..., N, 3]`` less each frame's centre-of-mass velocity (``masses`` in amu): NVE conserves the
    total momentum, so its three degrees of freedom would otherwise carry kinetic energy that is not thermal."""
    return velocities - np.einsum("n,...nx->...x", masses, velocities)[..., None, :] / masses.sum()


def equilibrated_starts(system: mm.System, positions: u.Quantity, temperature: float, count: int,
                        spacing: float = 2.0, equilibration: float = 10.0, platform: Optional[str] = None,
                        seed: int = 1) -> Starts:
    """``count`` states from one LangevinMiddle run on the force field: minimise, equilibrate ``equilibration``
    ps, then one state every ``spacing`` ps (1 fs steps, friction 1/ps). The centre-of-mass velocity is removed
    from each, so that its three degrees of freedom, which NVE conserves, carry no kinetic energy."""
    integrator = mm.LangevinMiddleIntegrator(temperature * u.kelvin, 1.0 / u.picosecond, 0.001 * u.picoseconds)
    integrator.setRandomNumberSeed(int(seed))
    context = create_context(system, integrator, platform)
    context.setPositions(positions)
    mm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(temperature * u.kelvin, int(seed))
    integrator.step(int(round(equilibration / 0.001)))
    states = []
    for _ in range(count):
        integrator.step(int(round(spacing / 0.001)))
        states.append(context.getState(getPositions=True, getVelocities=True))
    masses = particle_masses(system)
    velocities = np.array([s.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond) for s in states])
    return Starts(np.array([s.getPositions(asNumpy=True).value_in_unit(u.nanometer) for s in states]),
                  without_centre_of_mass_velocity(velocities, masses), masses)


def thermalised_starts(system: mm.System, integrator: mm.Integrator, starts: Starts, duration: float,
                       platform: Optional[str], seed: int) -> Starts:
    """Each start after ``duration`` ps of the thermostatted ``integrator`` on ``system``, without centre-of-mass
    velocity, as :func:`equilibrated_starts` gives them.

    Raises
    ------
    InputError
        If the System's masses are not the starts' (the result would carry the wrong ones).
    """
    if not np.allclose(particle_masses(system), starts.masses):
        raise InputError("the starts were drawn with other masses than the System's (hydrogen-mass repartitioning?); "
                         "draw them on this System (equilibrated_starts) before thermalising them.")
    integrator.setRandomNumberSeed(seed)
    context = create_context(system, integrator, platform)
    steps = int(round(duration / integrator.getStepSize().value_in_unit(u.picosecond)))
    positions, velocities = [], []
    for index in range(len(starts)):
        context.setPositions(starts.positions[index])
        context.setVelocities(starts.velocities[index])
        integrator.step(steps)
        state = context.getState(getPositions=True, getVelocities=True)
        positions.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        velocities.append(state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond))
    return Starts(np.array(positions), without_centre_of_mass_velocity(np.array(velocities), starts.masses),
                  starts.masses)


def read_starts(path: str | Path, remedy: str) -> Starts:
    """The starts kept at ``path`` (an ``.npz`` of ``positions``, ``velocities`` and ``masses``, as
    :func:`resumable_starts` writes them).

    Raises
    ------
    InputError
        If the file is not a starts file; the message ends with ``remedy``.
    """
    return Starts(**read_arrays(path, ("positions", "velocities", "masses"), "starts file", remedy))


def resumable_starts(path: str | Path, draw: Callable[[], Starts]) -> Starts:
    """The starts kept at ``path``, else ``draw()`` kept there (atomically): a resumed run needs the very same
    starts, and a Langevin draw on the CPU platform may differ in its last bits on another machine. If another
    process sharing the cache (a ``--reverse`` run) kept its draw while this one drew or wrote, its starts are
    returned, so that both run from the same ones.

    Raises
    ------
    InputError
        If the file exists but is not a starts file.
    """
    path = Path(path)
    remedy = "delete it and new starts will be drawn (the trajectories cached from the old ones are then run again)"
    if path.exists():
        return read_starts(path, remedy)
    starts = draw()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, positions=starts.positions, velocities=starts.velocities, masses=starts.masses)
    except InputError:
        if path.exists():  # another process kept its draw first
            return read_starts(path, remedy)
        raise
    return starts


#: What the forked workers of :func:`run_ensembles` run (set just before the fork, read in the child).
_PARALLEL_WORK: Optional[tuple] = None


def run_ensembles(candidates: Sequence[Candidate], starts: Starts, temperature: float, options: EnsembleOptions,
                  elements: Sequence[str], platform: Optional[str] = None,
                  progress: Optional[Callable[[str], None]] = None, jobs: int = 1,
                  cache_dir: Optional[str | Path] = None) -> list[EnsembleResult]:
    """:func:`run_ensemble` for each candidate, in order; ``jobs > 1`` runs that many candidates at a time in
    forked processes (one core each: give each process one OpenMM CPU thread and one torch thread).
    ``cache_dir`` keeps finished trajectories (see :func:`run_ensemble`).

    Speeds measured this way are side by side in one run, each process on its own core.

    Raises
    ------
    InputError
        If ``jobs > 1`` where a forked process cannot run OpenMM: on a GPU platform (named or OpenMM's choice), or
        on the CPU platform with PME, whose FFT thread pool does not survive a fork (the children hang).
    """
    if int(jobs) != jobs or jobs < 1:
        raise InputError(f"jobs must be a positive integer, got {jobs}.")
    if jobs == 1 or len(candidates) == 1:
        return [run_ensemble(c, starts, temperature, options, elements, platform, progress, cache_dir)
                for c in candidates]
    _check_forkable(candidates, platform)
    global _PARALLEL_WORK
    _PARALLEL_WORK = (list(candidates), starts, temperature, options, list(elements), platform, progress, cache_dir)
    try:
        with multiprocessing.get_context("fork").Pool(int(jobs), maxtasksperchild=1) as pool:
            return pool.map(_run_parallel_candidate, range(len(candidates)), chunksize=1)
    finally:
        _PARALLEL_WORK = None


def _check_forkable(candidates: Sequence[Candidate], platform: Optional[str]) -> None:
    """Refuse parallel runs that would hang or fail in forked processes (see :func:`run_ensembles`)."""
    if platform is None or platform.lower() not in ("reference", "cpu"):
        raise InputError(f"parallel ensembles (jobs > 1) run in forked processes, which the "
                         f"{platform or 'default'} platform does not survive; name platform 'CPU' or 'Reference', "
                         f"or run with jobs = 1.")
    ewald = (mm.NonbondedForce.PME, mm.NonbondedForce.LJPME)
    if platform.lower() == "cpu" and any(isinstance(force, mm.NonbondedForce) and force.getNonbondedMethod() in ewald
                                     for c in candidates for force in c.system.getForces()):
        raise InputError("parallel ensembles (jobs > 1) of a PME system on the CPU platform hang: OpenMM's CPU FFT "
                         "keeps a thread pool that a forked process inherits without its threads. Run with jobs = 1 "
                         "(or on the Reference platform).")


def _run_parallel_candidate(index: int) -> EnsembleResult:
    candidates, starts, temperature, options, elements, platform, progress, cache_dir = _PARALLEL_WORK
    return run_ensemble(candidates[index], starts, temperature, options, elements, platform, progress, cache_dir)


def run_ensemble(candidate: Candidate, starts: Starts, temperature: float,
                 options: EnsembleOptions, elements: Sequence[str], platform: Optional[str] = None,
                 progress: Optional[Callable[[str], None]] = None,
                 cache_dir: Optional[str | Path] = None) -> EnsembleResult:
    """Run ``candidate`` from every start in NVE and measure it.

    A start's velocities are used as they are when the candidate's masses equal the starts'; otherwise
    (hydrogen-mass repartitioning) they are rescaled to the candidate's masses (see :func:`set_start`).

    With ``cache_dir``, each finished trajectory is written there (:class:`TrajectoryCache`) and one already there
    is read instead of run, so an interrupted run resumes. With ``options.rdf``, the radial distribution
    function is counted from the positions at every sample. Speed is then always measured by a dedicated run
    (:func:`_speed`), as it is for candidates with a ``speed_integrator``: trajectories read from the cache may
    have been timed on another machine. A scheme-B row's solver statistics cover the steps run in this call (they
    state how many).
    """
    system = candidate.system
    masses = particle_masses(system)
    constraints = constraint_pairs(system)
    n_dof = float(degrees_of_freedom_per_atom(masses, constraints, remove_com=True).sum())
    kT = BOLTZMANN * temperature
    sample_steps = _whole_steps(options.sample_interval, candidate.step, "sample_interval", candidate.name)
    n_samples = int(round(options.duration / options.sample_interval))
    integrator = candidate.make_integrator()
    if getattr(integrator, "temperature", None) is not None:  # a thermostat moves the total energy: no runaways
        options = replace(options, runaway_factor=float("inf"))
    rdf = _radial_distribution(system, elements, options)
    settings = f"steps {sample_steps} samples {n_samples} instability {options.instability_factor}"
    if rdf is not None:
        settings += f" rdf {options.rdf} bin {options.rdf_bin_width}"
    meter = None
    if candidate.energy_system is not None:
        settings += f" energy of {reproducible_xml_digest(candidate.energy_system)}"
        meter = create_context(candidate.energy_system, mm.VerletIntegrator(candidate.step), platform)
    positions_needed = rdf is not None or meter is not None
    cache = None if cache_dir is None else TrajectoryCache(cache_dir, candidate.name, system, integrator,
                                                           platform or "default", settings)
    context = create_context(system, integrator, platform)
    energies = np.full((len(starts), n_samples + 1), np.nan)
    velocities = np.full((len(starts), n_samples + 1, len(masses), 3), np.nan)
    stable = np.zeros(len(starts), dtype=bool)
    rdf_counts = np.zeros((len(starts), 0 if rdf is None else len(rdf.radii)))
    wall, simulated, read = 0.0, 0.0, 0
    for index in range(len(starts)):
        start = (starts.positions[index], starts.velocities[index])
        cached = cache.load(*start) if cache is not None else None
        if cached is not None:
            energies[index], velocities[index], stable[index] = cached.energies, cached.velocities, cached.stable
            if rdf is not None:
                rdf_counts[index] = cached.rdf_counts
            read += 1
            if progress is not None:
                progress(f"{candidate.name}: trajectory {index + 1}/{len(starts)} read from {cache.path(*start)}")
            continue
        set_start(context, starts, index, masses)
        for sample in range(n_samples + 1):
            if sample:
                started = time.perf_counter()
                try:
                    integrator.step(sample_steps)
                except (SimulationInstabilityError, mm.OpenMMException):
                    break
                wall += time.perf_counter() - started
                simulated += sample_steps * candidate.step
            state = context.getState(getEnergy=True, getVelocities=True, getPositions=positions_needed,
                                     groups=FORCE_FIELD_GROUPS)
            potential = state.getPotentialEnergy()
            if meter is not None:
                meter.setPositions(state.getPositions())
                potential = meter.getState(getEnergy=True).getPotentialEnergy()
            total = (potential + state.getKineticEnergy()).value_in_unit(u.kilojoule_per_mole)
            if not np.isfinite(total) or (sample and abs(total - energies[index, 0]) > options.instability_factor * n_dof * kT):
                break
            energies[index, sample] = total
            velocities[index, sample] = state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond)
            if rdf is not None:
                rdf_counts[index] += rdf.counts(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
        else:
            stable[index] = True
        if cache is not None:
            cache.save(*start, CachedTrajectory(energies[index], velocities[index], bool(stable[index]),
                                                None if rdf is None else rdf_counts[index]))
        if progress is not None:
            progress(f"{candidate.name}: trajectory {index + 1}/{len(starts)} "
                     f"{'stable' if stable[index] else 'UNSTABLE'}")
    stable &= failure_samples(energies, options.runaway_limit(n_dof, temperature)) < 0  # and a heating that levelled off
    reversibility = _reversibility(context, integrator, starts, stable, masses,
                                   max(1, int(round(options.reversibility_time / candidate.step))))
    symplecticity = float("nan")
    if stable.any() and not len(constraints) and len(masses) <= options.symplecticity_max_atoms:
        first = int(np.flatnonzero(stable)[0])
        symplecticity = measured_defect(system, candidate.make_integrator, starts.positions[first],
                                        _start_velocities(starts, first, masses), platform)
    ps_per_second = simulated / wall if wall > 0 else float("nan")
    if candidate.speed_integrator is not None or read:
        ps_per_second = _speed(candidate, starts, masses, options, platform)
    times = np.arange(n_samples + 1) * options.sample_interval
    evaluations_per_fs = integrator.evaluations_per_step / (candidate.step * 1000.0)
    result = summarise_ensemble(candidate.name, candidate.step, times, energies, velocities, stable, masses,
                                constraints, elements, temperature, options, reversibility, ps_per_second,
                                evaluations_per_fs, symplecticity,
                                None if rdf is None else rdf.normalise(rdf_counts, n_samples + 1))
    result.notes = getattr(integrator, "solver_summary", lambda: "")()
    if rdf is not None:
        result.rdf_label, result.rdf_radii = rdf.label, rdf.radii
    return result


def _radial_distribution(system: mm.System, elements: Sequence[str],
                         options: EnsembleOptions) -> Optional[RadialDistribution]:
    """The radial distribution ``options.rdf`` asks for in ``system``'s box, or None."""
    if options.rdf is None:
        return None
    if not system.usesPeriodicBoundaryConditions():
        raise InputError(f"the radial distribution {options.rdf} needs a periodic box; this System has none. "
                         f"Leave the RDF out for systems in vacuum or implicit solvent.")
    box = default_box(system)
    return RadialDistribution.of_elements(options.rdf, list(elements), box, options.rdf_bin_width)


def summarise_ensemble(name: str, step: float, times: np.ndarray, energies: np.ndarray, velocities: np.ndarray,
                       stable: np.ndarray, masses: np.ndarray, constraints: np.ndarray, elements: Sequence[str],
                       temperature: float, options: EnsembleOptions, reversibility: float, ps_per_second: float,
                       evaluations_per_fs: float, symplecticity: float = float("nan"),
                       rdf_curves: Optional[np.ndarray] = None) -> EnsembleResult:
    """The figures of an ensemble from its samples, however it was run (OpenMM here; a torch-only baseline
    in benchmarks/).

    ``energies`` is ``[B, T]`` (kJ/mol), ``velocities`` ``[B, T, N, 3]`` on the grid ``times`` (ps); ``stable``
    marks the trajectories that stayed finite and bounded, and those that ran away (``options.runaway_factor``)
    are left out too; ``constraints`` is ``[C, 2]`` atom pairs; ``rdf_curves`` (``[B, bins]``), when given, are
    each trajectory's radial distribution function.
    """
    dof = degrees_of_freedom_per_atom(masses, constraints, remove_com=True)
    n_dof = float(dof.sum())
    failures = failure_samples(energies, options.runaway_limit(n_dof, temperature))
    stable = stable & (failures < 0)
    kept = times >= options.burn_in * times[-1]
    drifts = [energy_drift(times[kept], energies[b, kept], n_dof, temperature) for b in np.flatnonzero(stable)]
    molecules = rigid_triatomics(constraints)
    # Per stable trajectory: each element's temperature series and, for rigid water, its translation and rotation.
    series_per_trajectory = [{**element_temperature_series(velocities[b][None], masses, list(elements), dof),
                              **(rigid_molecule_temperatures(velocities[b], masses, molecules, remove_com=True)
                                 if len(molecules) else {})} for b in np.flatnonzero(stable)]
    per_trajectory = [{key: float(values.mean()) for key, values in t.items()} for t in series_per_trajectory]
    symbols = sorted(set(elements)) + (["rotation", "translation"] if len(molecules) else [])
    elements_mean = {e: _mean_error([t[e] for t in per_trajectory]) for e in symbols}
    kept = velocities[stable]  # one copy: boolean indexing copies, so never index it per sample
    twice_kinetic = (masses[:, None] * kept ** 2).sum((-1, -2))  # [stable trajectories, samples]
    trajectory_temperatures = twice_kinetic.mean(-1) / (BOLTZMANN * n_dof)
    temperature_mean = _mean_error(list(trajectory_temperatures))
    trajectory_potentials = (energies[stable] - twice_kinetic / 2).mean(-1)
    potential_mean = _mean_error(list(trajectory_potentials))
    potential_at_temperature = [float(v) for v in line_value_at(trajectory_temperatures, trajectory_potentials,
                                                                 temperature)]
    ratios = {e: _mean_error([t[e] / total for t, total in zip(per_trajectory, trajectory_temperatures)])
              for e in symbols}
    series = ({e: np.mean([t[e] for t in series_per_trajectory], axis=0) for e in symbols} if stable.any()
              else {e: np.full(len(times), np.nan) for e in symbols})
    vacf, vacf_error = velocity_autocorrelation(kept, masses, times, options.correlation_time)
    slopes = np.array([d.slope_kt_per_dof_per_ns for d in drifts])
    slopes_kj = np.array([d.slope_kj_per_ns for d in drifts])
    drift, drift_error = _mean_error(list(slopes))
    rdf = {}
    if rdf_curves is not None:
        rdf["rdf"], rdf["rdf_error"] = curve_mean_error(rdf_curves[stable], rdf_curves.shape[1])
        rdf["rdf_at_temperature"], rdf["rdf_at_temperature_error"] = line_value_at(
            trajectory_temperatures, rdf_curves[stable], temperature)
    return EnsembleResult(
        name=name, step_fs=step * 1000.0, stable=int(stable.sum()), n_trajectories=len(stable),
        failure_time=_mean_error([float(times[failures[b]]) for b in np.flatnonzero(~stable)])[0],
        drift=drift, drift_error=drift_error, drift_kj=float(slopes_kj.mean()) if len(slopes_kj) else float("nan"),
        energy_rms=float(np.mean([d.rms_kj for d in drifts])) if drifts else float("nan"),
        temperature=temperature_mean[0], temperature_error=temperature_mean[1], potential_energy=potential_mean[0],
        potential_energy_error=potential_mean[1], potential_energy_at_temperature=potential_at_temperature[0],
        potential_energy_at_temperature_error=potential_at_temperature[1], element_temperatures=elements_mean,
        equipartition=ratios,
        reversibility=reversibility, symplecticity=symplecticity, evaluations_per_fs=evaluations_per_fs,
        ps_per_second=ps_per_second, times=times, energies=energies - energies[:, :1], element_series=series,
        vacf=vacf, vacf_error=vacf_error, **rdf)


def velocity_autocorrelation(velocities: np.ndarray, masses: np.ndarray, times: np.ndarray,
                             max_lag: float) -> tuple[np.ndarray, np.ndarray]:
    """Mass-weighted, normalised velocity autocorrelation ``C(t) = <sum m v(0).v(t)> / <sum m v.v>`` over lags up
    to ``max_lag`` ps, averaged over time origins; its mean and standard error over trajectories.

    ``velocities`` is ``[trajectories, samples, N, 3]`` on the time grid ``times``.
    """
    n_lags = int(np.searchsorted(times, max_lag + 1e-12))
    if len(velocities) == 0:
        return np.full(n_lags, np.nan), np.full(n_lags, np.nan)
    weighted = velocities * np.sqrt(masses)[None, None, :, None]
    flat = weighted.reshape(len(velocities), len(times), -1)
    curves = []
    for trajectory in flat:
        norm = (trajectory * trajectory).sum(-1).mean()
        curves.append([(trajectory[: len(times) - lag] * trajectory[lag:]).sum(-1).mean() / norm
                       for lag in range(n_lags)])
    return curve_mean_error(np.array(curves), n_lags)


def curve_mean_error(curves: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over trajectories of per-trajectory curves ``[B, length]``: the mean is NaN when
    B = 0, the error when B < 2."""
    if len(curves) == 0:
        return np.full(length, np.nan), np.full(length, np.nan)
    error = curves.std(0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.full(length, np.nan)
    return curves.mean(0), error


def failure_samples(energies: np.ndarray, limit: float) -> np.ndarray:
    """Per trajectory of total ``energies [B, T]`` (kJ/mol; NaN after a run was stopped), the first sample more
    than ``limit`` from the start, else the last sample reached by a stopped run, else -1."""
    finite = np.isfinite(energies)
    crossed = finite & (np.abs(energies - energies[:, :1]) > limit)
    stopped = np.where(finite.all(1), -1, finite.sum(1) - 1)
    return np.where(crossed.any(1), crossed.argmax(1), stopped)


def _mean_error(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    values_array = np.asarray(values, dtype=float)
    error = float(values_array.std(ddof=1) / np.sqrt(len(values_array))) if len(values_array) > 1 else float("nan")
    return float(values_array.mean()), error


def line_value_at(x: np.ndarray, y: np.ndarray, x0: float) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares straight line through the points ``(x, y)``, evaluated at ``x0``, and its standard error
    (from the residuals, n - 2 degrees of freedom); NaN for fewer than three points or equal ``x``. ``y`` is ``[n]``
    or ``[n, K]`` (K lines at once, e.g. a curve's bins); the results have the shape ``y.shape[1:]``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0.0:
        return np.full(y.shape[1:], np.nan), np.full(y.shape[1:], np.nan)
    (_, value), covariance = np.polyfit(x - x0, y, 1, cov=True)  # the intercept of the shifted line is its value at x0
    return value, np.sqrt(covariance[1, 1])


def _whole_steps(interval: float, step: float, what: str, name: str) -> int:
    steps = int(round(interval / step))
    if steps < 1 or abs(steps * step - interval) > 1e-9:
        raise InputError(f"{what} {interval * 1000:g} fs is not a whole number of {name}'s {step * 1000:g} fs steps; "
                         f"choose a common multiple of the steps compared.")
    return steps


def _start_velocities(starts: Starts, index: int, masses: np.ndarray) -> np.ndarray:
    """Start ``index``'s velocities for a candidate with ``masses``: as drawn when the masses are the starts';
    otherwise (HMR) each scaled by ``sqrt(m_start / m)``, which turns a Maxwell-Boltzmann draw for the start's
    masses into one for the candidate's, without centre-of-mass motion."""
    velocities = starts.velocities[index]
    if np.allclose(starts.masses, masses):
        return velocities
    velocities = velocities * np.sqrt(starts.masses / masses)[:, None]
    return without_centre_of_mass_velocity(velocities, masses)


def set_start(context: mm.Context, starts: Starts, index: int, masses: np.ndarray) -> None:
    """Put ``context`` at start ``index``, with :func:`_start_velocities` for a System of ``masses``. When the masses
    differ (HMR), the velocity constraints are applied and the result rescaled to the start's kinetic energy: the
    constraint projection would otherwise remove a few per cent of it (the bond-stretching components the rescaling
    creates), and with the same constraints the same kinetic energy is the same temperature. The comparison stays
    paired, start by start."""
    context.setTime(0.0)
    context.setPositions(starts.positions[index])
    context.applyConstraints(1e-10)
    context.setVelocities(_start_velocities(starts, index, masses))
    context.applyVelocityConstraints(1e-10)
    if not np.allclose(starts.masses, masses):
        projected = context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(
            u.nanometer / u.picosecond)
        target = (starts.masses[:, None] * starts.velocities[index] ** 2).sum()
        context.setVelocities(projected * np.sqrt(target / (masses[:, None] * projected ** 2).sum()))


def _reversibility(context: mm.Context, integrator: mm.Integrator, starts: Starts, stable: np.ndarray,
                   masses: np.ndarray, steps: int, count: int = 4) -> float:
    """RMS distance (nm, over atoms and up to ``count`` stable starts) between a start and the state reached by
    ``steps`` steps forward, a velocity flip and ``steps`` steps back."""
    distances = []
    for index in np.flatnonzero(stable)[:count]:
        set_start(context, starts, int(index), masses)
        begin = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        try:
            integrator.step(steps)
            velocities = context.getState(getVelocities=True).getVelocities(asNumpy=True)
            context.setVelocities(-velocities)
            integrator.step(steps)
        except (SimulationInstabilityError, mm.OpenMMException):
            return float("nan")
        end = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        distances.append(np.mean(np.sum((end - begin) ** 2, axis=-1)))
    return float(np.sqrt(np.mean(distances))) if distances else float("nan")


def _speed(candidate: Candidate, starts: Starts, masses: np.ndarray, options: EnsembleOptions,
           platform: Optional[str]) -> float:
    """Simulated ps per wall second of ``candidate.speed_integrator`` (else its own integrator) from the first
    start over ``options.speed_time`` (default one trajectory's length), in 100 chunks; an integrator that blows
    up (platforms that check for NaN raise) is timed over the chunks it finished, and NaN if none."""
    integrator = (candidate.speed_integrator or candidate.make_integrator)()
    context = create_context(candidate.system, integrator, platform)
    set_start(context, starts, 0, masses)
    chunk = max(1, int(round((options.speed_time or options.duration) / candidate.step)) // 100)
    done, elapsed = 0, 0.0
    try:
        integrator.step(1)
        for _ in range(100):
            started = time.perf_counter()
            integrator.step(chunk)
            elapsed += time.perf_counter() - started
            done += chunk
    except (SimulationInstabilityError, mm.OpenMMException):
        pass
    return done * candidate.step / elapsed if done else float("nan")
