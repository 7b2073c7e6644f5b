"""Running a learned model in OpenMM with the usual reporters, and summarising the run.

This is what ``actionml run`` does: build the System, add the learned force (or bake learned force constants
into it, :func:`~openmm_actionml.integrator.learned_step`), minimise, draw velocities, run NVE or NVT with
``Simulation`` and its reporters, and report the energy drift, the per-element kinetic temperature
(constraint-aware degrees of freedom) and the speed.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import openmm as mm
import openmm.app as app
import openmm.unit as u

from .diagnostics import (EnergyDrift, degrees_of_freedom_per_atom, element_temperatures, energy_drift,
                          rigid_molecule_temperatures, rigid_triatomics)
from .errors import InputError
from .force_constant_correction import bakes_into_system
from .implicit_program import ImplicitSolverState, read_solver_state
from .ensemble import equilibrated_starts
from .integrator import learned_step
from .modelfile import ActionMLModel
from .platforms import create_context, explain_context_error, get_platform
from .systems import PreparedSystem, constraint_pairs, particle_masses, topology_elements
from .units import BOLTZMANN


class SummaryReporter:
    """Collects total energy and velocities every ``interval`` steps for the closing summary. With ``meter``, a
    Context of another System (the force field that a baked System scales), the potential energy is that System's
    at the reported positions."""

    def __init__(self, interval: int, meter: Optional[mm.Context] = None) -> None:
        self.interval = int(interval)
        self.meter = meter
        self.times: list[float] = []
        self.energies: list[float] = []
        self.velocities: list[np.ndarray] = []

    def describeNextReport(self, simulation: app.Simulation) -> tuple:
        steps = self.interval - simulation.currentStep % self.interval
        return (steps, self.meter is not None, True, False, True)

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        potential = state.getPotentialEnergy()
        if self.meter is not None:
            self.meter.setPeriodicBoxVectors(*state.getPeriodicBoxVectors())
            self.meter.setPositions(state.getPositions())
            potential = self.meter.getState(getEnergy=True).getPotentialEnergy()
        self.times.append(state.getTime().value_in_unit(u.picosecond))
        self.energies.append((potential + state.getKineticEnergy()).value_in_unit(u.kilojoule_per_mole))
        self.velocities.append(state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond))


class ProgressReporter:
    """A one-line progress indicator on stderr with the simulated time and speed."""

    def __init__(self, interval: int, total_steps: int) -> None:
        self.interval, self.total = int(interval), int(total_steps)
        self.started = time.monotonic()
        self.first_step: Optional[int] = None

    def describeNextReport(self, simulation: app.Simulation) -> tuple:
        if self.first_step is None:
            self.first_step = simulation.currentStep
        return (self.interval - simulation.currentStep % self.interval, False, False, False, False)

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        done = simulation.currentStep - self.first_step
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        sys.stderr.write(f"\rstep {done}/{self.total} ({done / self.total:.0%}), {rate:.1f} steps/s, eta {eta:.0f} s   ")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class RunSummary:
    """What a run measured."""

    steps: int
    simulated_ps: float
    wall_seconds: float
    temperature: float
    element_temperatures: dict[str, float]
    drift: Optional[EnergyDrift]
    evaluations_per_fs: float
    solver: Optional[ImplicitSolverState] = None
    drift_note: str = ""

    def text(self) -> str:
        lines = [f"{self.steps} steps, {self.simulated_ps:g} ps in {self.wall_seconds:.1f} s "
                 f"({self.simulated_ps / self.wall_seconds:.3g} ps per wall second, "
                 f"{self.evaluations_per_fs:.3g} force evaluations per fs)",
                 f"kinetic temperature {self.temperature:.1f} K; per element: " +
                 ", ".join(f"{e} {t:.1f} K" for e, t in self.element_temperatures.items())]
        if self.solver is not None:
            lines.append(f"scheme-B solver: {self.solver.total_iterations / self.steps:.1f} iterations per step, "
                         f"{self.solver.unconverged} unconverged step(s), last residual {self.solver.residual:.2g}")
        if self.drift is not None:
            lines.append(f"energy drift {self.drift.slope_kt_per_dof_per_ns:+.3g} kT/DOF/ns "
                         f"({self.drift.slope_kj_per_ns:+.3g} kJ/mol/ns), RMS about the trend {self.drift.rms_kj:.3g} kJ/mol")
        if self.drift_note:
            lines.append(self.drift_note)
        return "\n".join(lines)


def run_model(prepared: PreparedSystem, model: ActionMLModel, steps: int, *, temperature: Optional[float] = None,
              friction: Optional[float] = None, start_temperature: float | None = None, platform: Optional[str] = None,
              report_interval: int = 100, reporters: Optional[list] = None, seed: Optional[int] = None,
              equilibration: float = 1.0, state: Optional[mm.State] = None,
              progress: bool = True) -> tuple[app.Simulation, RunSummary]:
    """Run ``model`` on ``prepared`` for ``steps`` long steps and summarise.

    Parameters
    ----------
    prepared
        Topology, System and positions (:func:`openmm_actionml.systems.build_system`).
    model
        A loaded model; it is validated against the System.
    steps
        Number of long steps.
    temperature, friction
        NVT with a Langevin thermostat when ``temperature`` (K) is given; NVE otherwise.
    start_temperature
        Temperature of the initial Maxwell-Boltzmann velocities and of the equilibration (default
        ``temperature``, else the model's).
    equilibration
        ps of LangevinMiddle dynamics (1 fs, 1/ps) on the force field alone before the run, so an NVE run
        starts from an equilibrated state rather than from the minimum.
    state
        Continue from this State (positions, velocities, box) instead: no minimisation, velocities or
        equilibration.
    platform
        OpenMM platform name.
    report_interval
        Steps between summary samples and progress lines.
    reporters
        Extra OpenMM reporters (StateDataReporter, DCDReporter, CheckpointReporter, ...).
    """
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps must be a positive whole number, got {steps}.")
    system, integrator = learned_step(prepared.system, model, temperature, friction, prepared.topology)
    platform_object = get_platform(platform)
    try:
        simulation = app.Simulation(prepared.topology, system, integrator, platform_object)
    except mm.OpenMMException as error:
        raise explain_context_error(error, platform_object) from error
    if state is None:
        start = start_temperature or temperature or model.metadata.temperature
        seed = int(np.random.default_rng().integers(1, 2 ** 31 - 1)) if seed is None else seed
        starts = equilibrated_starts(prepared.system, prepared.positions, start, 1, spacing=equilibration,
                                     equilibration=0.0, platform=platform, seed=seed)
        simulation.context.setPositions(starts.positions[0])
        simulation.context.setVelocities(starts.velocities[0])
    else:
        simulation.context.setState(state)
    # A baked System's energy is the scaled force field's; the summary reads the force field's, as with the TorchForce.
    meter = create_context(prepared.system, mm.VerletIntegrator(0.001), platform) if bakes_into_system(model) else None
    summary = SummaryReporter(report_interval, meter)
    simulation.reporters.extend([summary] + list(reporters or []))
    if progress:
        simulation.reporters.append(ProgressReporter(report_interval, steps))
    started = time.monotonic()
    simulation.step(int(steps))
    wall = time.monotonic() - started
    solver = read_solver_state(integrator) if model.metadata.scheme == "B" else None
    return simulation, _summarise(prepared, model, summary, int(steps), wall, temperature, solver,
                                  integrator.evaluations_per_step)


def topology_from_elements(elements: list[str]) -> app.Topology:
    """A minimal Topology (one residue per particle) for a System that comes without one, e.g. from XML."""
    topology = app.Topology()
    chain = topology.addChain()
    for index, symbol in enumerate(elements):
        residue = topology.addResidue(f"X{index}", chain)
        topology.addAtom(symbol or "X", app.Element.getBySymbol(symbol) if symbol else None, residue)
    return topology


def _summarise(prepared: PreparedSystem, model: ActionMLModel, summary: SummaryReporter, steps: int, wall: float,
               thermostat: Optional[float], solver: Optional[ImplicitSolverState],
               evaluations_per_step: float) -> RunSummary:
    system = prepared.system
    masses = particle_masses(system)
    constraints = constraint_pairs(system)
    # The centre of mass is fixed by a CMMotionRemover, and carries no thermal motion in NVE (momentum is conserved).
    com_fixed = thermostat is None or any(isinstance(f, mm.CMMotionRemover) for f in system.getForces())
    dof = degrees_of_freedom_per_atom(masses, constraints, remove_com=com_fixed)
    elements = topology_elements(prepared.topology)
    velocities = np.array(summary.velocities)
    per_element = element_temperatures(velocities, masses, elements, dof)
    molecules = rigid_triatomics(constraints)
    if len(molecules):
        per_element.update({key: float(values.mean()) for key, values in
                            rigid_molecule_temperatures(velocities, masses, molecules, com_fixed).items()})
    total = float((masses[:, None] * velocities ** 2).sum(-1).mean(0).sum() / (BOLTZMANN * dof.sum()))
    drift, note = None, ""
    if thermostat is None and model.metadata.baseline:
        note = (f"energy drift not measured: the System's energy is its baseline's "
                f"({' + '.join(model.metadata.baseline)}), which this map does not conserve; `actionml evaluate` "
                f"measures it in the training force field")
    elif thermostat is None and len(summary.times) >= 3:
        drift = energy_drift(np.array(summary.times), np.array(summary.energies), dof.sum(), model.metadata.temperature)
    if bakes_into_system(model):
        note = ("the learned force constants run baked into the System (no TorchForce): reporters see the scaled force "
                "field's energy, this summary the force field's")
    return RunSummary(steps, steps * model.metadata.step, wall, total, per_element, drift,
                      evaluations_per_step / (model.metadata.step * 1000.0), solver, note)
