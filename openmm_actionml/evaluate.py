"""``actionml evaluate``: a learned model beside the integrators a user would otherwise run, on NVE ensembles
from the same equilibrated starts, in OpenMM.

The rows (:func:`standard_candidates`):

- the learned model at its step ``h``, as ``actionml run`` runs it (a tied force-constant model baked into the
  System, :func:`~openmm_actionml.integrator.learned_step`);
- the same splitting unlearned: the classical multi-stage scheme on the force field (``dW = 0`` for an anchored
  model; for a pure-ML model, the force field in place of the surrogate);
- velocity Verlet at the usual steps: 0.5 and 1 fs flexible, 2 fs with constraints;
- velocity Verlet with hydrogen-mass repartitioning at 4 fs (constrained systems);
- velocity Verlet at ``h``, to show where it breaks;
- the reference: velocity Verlet at the fine step of the model's training data. Every figure is read against it.

Velocity-Verlet rows run :class:`SplittingIntegrator` ("VV"), whose positions and velocities are synchronous;
their speed is that of OpenMM's own ``VerletIntegrator``, the integrator a user would run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import openmm as mm
import openmm.unit as u

from .ensemble import Candidate, EnsembleOptions, EnsembleResult, Starts, equilibrated_starts, run_ensembles
from .errors import InputError, ModelMismatchError
from .examples import with_baseline
from .force_constant_correction import bakes_into_system
from .integrator import SplittingIntegrator, learned_integrator, learned_system
from .modelfile import ActionMLModel
from .platforms import create_context
from .splitting import Splitting, get_splitting
from .systems import PreparedSystem, particle_masses, topology_elements, with_hydrogen_mass

#: OpenMM's recommended hydrogen mass for 4 fs steps (user guide, LangevinMiddleIntegrator).
HMR_HYDROGEN_MASS = 1.5
HMR_STEP = 0.004


def verlet_candidate(name: str, system: mm.System, step: float) -> Candidate:
    """Velocity Verlet at ``step`` ps: synchronous for the diagnostics, timed as OpenMM's VerletIntegrator."""
    return Candidate(name, step, system, lambda: SplittingIntegrator("VV", step),
                     speed_integrator=lambda: mm.VerletIntegrator(step))


def splitting_candidate(name: str, system: mm.System, splitting: str | Splitting, step: float) -> Candidate:
    """A classical splitting (no learned force) at ``step`` ps on ``system``."""
    return Candidate(name, step, system, lambda: SplittingIntegrator(splitting, step))


def hmr_system(prepared: PreparedSystem) -> tuple[mm.System, str]:
    """``prepared``'s System with hydrogen masses repartitioned to :data:`HMR_HYDROGEN_MASS`, and what a row on it
    adds to its name: " + HMR (H 1.5 amu)", or "" when no mass changed (every hydrogen is in water, which
    repartitioning leaves alone), so that the row's name says what it runs."""
    system = with_hydrogen_mass(prepared.system, prepared.topology, HMR_HYDROGEN_MASS)
    changed = not np.array_equal(particle_masses(system), particle_masses(prepared.system))
    return system, f" + HMR (H {HMR_HYDROGEN_MASS:g} amu)" if changed else ""


def hmr_candidate(prepared: PreparedSystem) -> Candidate:
    """Verlet at :data:`HMR_STEP` on :func:`hmr_system`."""
    system, label = hmr_system(prepared)
    return verlet_candidate(f"Verlet {HMR_STEP * 1000:g} fs{label}", system, HMR_STEP)


def model_system(prepared: PreparedSystem, model: ActionMLModel) -> PreparedSystem:
    """The force-field System the model's kicks run on: ``prepared`` itself or, for a model with a baseline force
    field, ``prepared`` with the baseline's forces in place of its own
    (:func:`~openmm_actionml.examples.with_baseline`)."""
    return with_baseline(prepared, model.metadata.baseline) if model.metadata.baseline else prepared


def model_candidate(prepared: PreparedSystem, model: ActionMLModel) -> Candidate:
    """The learned model's row on :func:`model_system`, as :func:`~openmm_actionml.integrator.learned_step` builds
    it (the learned force added, or a tied force-constant model baked into the System), named by its scheme and
    mode, e.g. "T3 learned 8 fs", "T3 pure ML 12 fs" or "T3 on amber14/tip3pfb.xml + learned 12 fs". Its energy
    is measured in ``prepared``'s force field, as every other row's is."""
    meta = model.metadata
    label = meta.get_splitting().name if meta.scheme == "A" else "scheme B"
    mode = f"on {' + '.join(meta.baseline)} + learned" if meta.baseline else "learned" if meta.anchored else "pure ML"
    system = learned_system(model_system(prepared, model).system, model)
    scaled = meta.baseline or bakes_into_system(model)  # the row's System's energy is not prepared's force field's
    return Candidate(f"{label} {mode} {meta.step * 1000:g} fs", meta.step, system, lambda: learned_integrator(model),
                     energy_system=prepared.system if scaled else None)


def standard_candidates(prepared: PreparedSystem, model: ActionMLModel, reference_step: Optional[float] = None,
                        verlet_steps: Optional[Sequence[float]] = None, hmr: Optional[bool] = None) -> list[Candidate]:
    """The rows of an evaluation, reference first (see the module docstring).

    Parameters
    ----------
    prepared
        The force-field System (no learned force) with its topology.
    model
        The learned model.
    reference_step
        Fine velocity-Verlet step in ps (default: the model's training data's integration step, else 0.25 fs).
    verlet_steps
        Usual Verlet steps in ps (default 0.5 and 1 fs flexible, 2 fs constrained).
    hmr
        Include Verlet with hydrogen-mass repartitioning at 4 fs (default: when the System has constraints).
    """
    meta = model.metadata
    system = prepared.system
    constrained = system.getNumConstraints() > 0
    h = meta.step
    protocol = meta.recipe.get("dataset_protocol") or {}
    reference_step = reference_step or protocol.get("integration_step") or 0.00025
    verlet_steps = verlet_steps or ((0.002,) if constrained else (0.0005, 0.001))
    hmr = constrained if hmr is None else hmr
    rows = [verlet_candidate(f"reference: Verlet {reference_step * 1000:g} fs", system, reference_step),
            model_candidate(prepared, model)]
    if meta.scheme == "A":  # pure ML too: the same splitting on the true force field
        splitting = meta.get_splitting()
        what = "dW = 0" if meta.anchored and not meta.baseline else "force field"
        rows.append(splitting_candidate(f"{splitting.name} classical ({what}) {h * 1000:g} fs", system, splitting, h))
    for step in verlet_steps:
        rows.append(verlet_candidate(f"Verlet {step * 1000:g} fs", system, step))
    if hmr:
        rows.append(hmr_candidate(prepared))
    if all(abs(step - h) > 1e-12 for step in verlet_steps):
        rows.append(verlet_candidate(f"Verlet {h * 1000:g} fs (the learned step)", system, h))
    return rows


def network_effect(kicks: mm.System, model: ActionMLModel, starts: Starts, platform: Optional[str] = None) -> float:
    """Largest difference (nm/ps) between the velocities after one learned step, as
    :func:`~openmm_actionml.integrator.learned_step` runs it, and one step of the same splitting on the force field
    alone (for pure ML: with the force field's kicks), from the first start. ``kicks`` is the force-field System
    the model runs on (:func:`model_system`'s: the baseline's for a model with one).

    Raises
    ------
    ModelMismatchError
        If they are identical: the network is off, and "learned" figures would be the classical scheme's.
    """
    meta = model.metadata
    splitting = meta.get_splitting() if meta.scheme == "A" else get_splitting("T3")
    after = []
    for system, integrator in ((learned_system(kicks, model), learned_integrator(model)),
                               (kicks, SplittingIntegrator(splitting, meta.step))):
        context = create_context(system, integrator, platform)
        context.setPositions(starts.positions[0])
        context.setVelocities(starts.velocities[0])
        integrator.step(1)
        after.append(context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(
            u.nanometer / u.picosecond))
        del context
    difference = float(np.abs(after[0] - after[1]).max())
    if difference == 0.0:
        raise ModelMismatchError(f"model {model.path.name} takes exactly the classical {splitting.name} step: its "
                                 f"learned force is off, so its figures would not be learned ones. Check that the "
                                 f"System carries the learned force and the model file has trained weights.")
    return difference


def evaluate(prepared: PreparedSystem, model: ActionMLModel, options: EnsembleOptions,
             candidates: Optional[list[Candidate]] = None, temperature: Optional[float] = None,
             platform: Optional[str] = None, seed: int = 1, starts: Optional[Starts] = None,
             progress: Optional[Callable[[str], None]] = None, jobs: int = 1,
             cache_dir: Optional[str | Path] = None) -> list[EnsembleResult]:
    """Run every candidate (default :func:`standard_candidates`) from the same equilibrated starts.

    ``temperature`` defaults to the model's; the starts, unless given, come from one LangevinMiddle run on the
    force field (:func:`~openmm_actionml.ensemble.equilibrated_starts` with ``seed``). ``jobs`` candidates run
    at a time (:func:`~openmm_actionml.ensemble.run_ensembles`); with ``cache_dir``, finished trajectories are
    kept there and an interrupted evaluation resumes (:func:`~openmm_actionml.ensemble.run_ensemble`).
    """
    kicks = model_system(prepared, model).system
    model.validate(kicks, topology=prepared.topology)
    temperature = temperature or model.metadata.temperature
    candidates = candidates if candidates is not None else standard_candidates(prepared, model)
    if not candidates:
        raise InputError("nothing to evaluate: give at least one candidate integrator.")
    if starts is None:
        if progress is not None:
            progress(f"drawing {options.n_trajectories} equilibrated starts at {temperature:g} K")
        starts = equilibrated_starts(prepared.system, prepared.positions, temperature, options.n_trajectories,
                                     platform=platform, seed=seed)
    effect = network_effect(kicks, model, starts, platform)
    if progress is not None:
        progress(f"the network is on: one learned step and one classical step differ by up to {effect:.3g} nm/ps")
    elements = topology_elements(prepared.topology)
    return run_ensembles(candidates, starts, temperature, options, elements, platform, progress, jobs, cache_dir)
