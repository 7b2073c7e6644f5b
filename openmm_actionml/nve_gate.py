"""The NVE ensemble gate: run the torch stepper from several validation starts and judge the model
by stability, energy drift and heating, not by one-step error (DESIGN.md section 3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .diagnostics import degrees_of_freedom_per_atom, element_temperatures, energy_drift
from .errors import ActionMLConvergenceError
from .units import BOLTZMANN
from .splitting import SplittingStepper


@dataclass
class GateOptions:
    """How the gate runs and what it accepts.

    Attributes
    ----------
    n_trajectories
        Validation starts integrated side by side.
    duration
        Length of each trajectory in ps.
    record_every
        Steps between energy records.
    max_drift
        Largest accepted ensemble-mean drift, kT per degree of freedom per ns; 0.1 heats a harmonic
        system by about 10 % of T per ns. The gate fails only when the mean exceeds it by two standard errors.
    min_stable_fraction
        Fraction of trajectories that must stay finite with bounded energy.
    burn_in
        Leading fraction of each trajectory left out of the drift fit: starting from reference frames, the
        long-step map's modified energy first relaxes, which a straight-line fit would read as drift.
    """

    n_trajectories: int = 16
    duration: float = 20.0
    record_every: int = 5
    max_drift: float = 0.1
    min_stable_fraction: float = 1.0
    burn_in: float = 0.2


@dataclass
class GateResult:
    """What the gate measured."""

    stable_fraction: float
    drift_mean: float
    drift_standard_error: float
    energy_rms: float
    temperature: float
    element_temperatures: dict
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def table_cells(self) -> str:
        """``stable | drift ± s.e. | E RMS | T | per-element T``, for a markdown table row."""
        elements = ", ".join(f"{e} {t:.1f}" for e, t in self.element_temperatures.items())
        return (f"{self.stable_fraction:.0%} | {self.drift_mean:+.3f} ± {self.drift_standard_error:.3f} | "
                f"{self.energy_rms:.3f} | {self.temperature:.1f} | {elements}")

    def summary(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL ({self.reason})"
        elements = "/".join(f"{e} {t:.0f}" for e, t in self.element_temperatures.items())
        return (f"stable {self.stable_fraction:.0%}, drift {self.drift_mean:+.3f} ± {self.drift_standard_error:.3f} "
                f"kT/DOF/ns, E RMS {self.energy_rms:.3f} kJ/mol, T {self.temperature:.1f} K ({elements}): {verdict}")


def _guarded_step(stepper: SplittingStepper, q: Tensor, v: Tensor, forces: Optional[Tensor]
                  ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One step of the batch. If the constraint projection fails (one blown-up trajectory fails the whole
    batched solve), step each trajectory alone and give those that fail NaN positions, so that they count as
    unstable instead of ending the gate."""
    try:
        return stepper.step(q, v, forces)
    except ActionMLConvergenceError:
        parts = []
        for b in range(len(q)):
            try:
                parts.append(stepper.step(q[b:b + 1], v[b:b + 1], None if forces is None else forces[b:b + 1]))
            except ActionMLConvergenceError:
                lost = torch.full_like(q[b:b + 1], float("nan"))
                parts.append((lost, lost, lost))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def run_gate(stepper: SplittingStepper, potential_energy: Callable[[Tensor], Tensor], q0: Tensor, v0: Tensor,
             temperature: float, options: GateOptions, elements: Sequence[str]) -> GateResult:
    """Integrate ``q0, v0`` (``[B, N, 3]``) with ``stepper`` and judge the ensemble.

    A trajectory is unstable when its state or total energy becomes non-finite (a constraint projection that
    fails counts so), or its energy moves by more than ``4 n_dof kT`` (four times the system's thermal energy)
    from its own start.
    """
    masses = stepper.masses.to(q0.dtype)
    constraints = None if stepper.constraints is None else stepper.constraints.pairs.numpy()
    n_dof = float(degrees_of_freedom_per_atom(masses.numpy(), constraints, remove_com=True).sum())
    kT = BOLTZMANN * temperature
    n_steps = max(1, int(round(options.duration / stepper.h)))
    times, energies, kinetic, velocities = [], [], [], []
    q, v, forces = q0, v0, None
    alive = torch.ones(len(q0), dtype=torch.bool)
    with torch.no_grad():
        for step in range(n_steps + 1):
            if step % options.record_every == 0:
                twice_k = (masses[:, None] * v ** 2).sum((-1, -2))
                total = potential_energy(q) + 0.5 * twice_k
                times.append(step * stepper.h)
                energies.append(total.numpy())
                kinetic.append(twice_k.numpy())
                velocities.append(v.numpy())
                start = torch.as_tensor(energies[0], dtype=total.dtype)
                alive &= torch.isfinite(total) & ((total - start).abs() < n_dof * kT * 4)
                if not bool(alive.any()):
                    break
            if step < n_steps:
                q, v, forces = _guarded_step(stepper, q, v, forces)
                finite = torch.isfinite(q).all(-1).all(-1) & torch.isfinite(v).all(-1).all(-1)
                if not bool(finite.all()):
                    forces = None  # recomputed at the states put back below
                alive &= finite
                q = torch.where(alive[:, None, None], q, q0)
                v = torch.where(alive[:, None, None], v, v0)
    energies_arr, times_arr = np.array(energies), np.array(times)
    stable = alive.numpy()
    kept = times_arr >= options.burn_in * times_arr[-1]
    drifts = [energy_drift(times_arr[kept], energies_arr[kept, b], n_dof, temperature) for b in np.flatnonzero(stable)]
    if kept.sum() < 3 or not drifts:
        reason = "no trajectory stayed stable" if not drifts else (
            f"{int(kept.sum())} energy samples after the burn-in are too few for a drift: lengthen the gate's "
            f"duration or lower its record_every")
        return GateResult(float(stable.mean()), float("nan"), float("nan"), float("nan"), float("nan"), {}, False,
                          reason)
    slopes = np.array([d.slope_kt_per_dof_per_ns for d in drifts])
    mean = float(slopes.mean())
    error = float(slopes.std(ddof=1) / np.sqrt(len(slopes))) if len(slopes) > 1 else float("inf")
    temperature_measured = float(np.array(kinetic)[:, stable].mean() / (n_dof * BOLTZMANN))
    dof_per_atom = degrees_of_freedom_per_atom(masses.numpy(), constraints, remove_com=True)
    per_element = element_temperatures(np.array(velocities)[:, stable], masses.numpy(), list(elements), dof_per_atom)
    passed, reason = True, ""
    if stable.mean() < options.min_stable_fraction:
        passed, reason = False, f"only {stable.mean():.0%} of trajectories stable"
    elif mean - 2 * error > options.max_drift:
        passed, reason = False, f"heats: drift {mean:.3f} kT/DOF/ns above {options.max_drift}"
    elif mean + 2 * error < -options.max_drift:
        passed, reason = False, f"cools: drift {mean:.3f} kT/DOF/ns below -{options.max_drift}"
    return GateResult(float(stable.mean()), mean, error, float(np.mean([d.rms_kj for d in drifts])),
                      temperature_measured, per_element, passed, reason)
