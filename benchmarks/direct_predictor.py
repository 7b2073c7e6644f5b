"""The contrast the seed paper draws: a direct predictor, a network that outputs the next (q, v) from (q, v) with
no structure (not symplectic, not reversible), trained on the same reference data, then run on NVE ensembles.

Torch-only and not part of the product. The network is the simplest that respects the symmetries of one
molecule in vacuum: each state is rotated into the frame that best aligns it (mass-weighted Kabsch) with a
reference structure; an MLP on the aligned, flattened positions, velocities and force-field accelerations (the
same information the anchored learned integrator has) predicts the departure from free flight, ``q' - q - h v`` and ``v' - v``; the result is rotated back and, with constraints, projected (SHAKE and
RATTLE), as the learned integrator's drifts are. It is trained on one-step pairs at the long step h, as FlashMD
is. :func:`run_direct_ensemble` measures it exactly as ``actionml evaluate`` measures the OpenMM integrators.

Usage (a row beside a model's evaluation)::

    python benchmarks/direct_predictor.py DATASET [DATASET ...] --step 8 [--iterations 4000]
"""
from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from openmm_actionml.atomic import atomic_path
from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.dataset import ReferenceDataset
from openmm_actionml.diagnostics import degrees_of_freedom_per_atom
from openmm_actionml.ensemble import EnsembleOptions, EnsembleResult, Starts, summarise_ensemble
from openmm_actionml.errors import InputError
from openmm_actionml.openmm_potential import OpenMMPotential
from openmm_actionml.systems import constraint_pairs
from openmm_actionml.units import BOLTZMANN


def _kabsch(q: Tensor, reference: Tensor, weights: Tensor) -> Tensor:
    """Rotations ``R[B, 3, 3]`` with ``q @ R`` closest to ``reference`` (both centred), mass-weighted."""
    covariance = (q * weights[:, None]).transpose(-1, -2) @ reference
    u, _, vt = torch.linalg.svd(covariance)
    sign = torch.sign(torch.linalg.det(u @ vt))
    u = torch.cat([u[..., :2], u[..., 2:] * sign[:, None, None]], -1)
    return u @ vt


class DirectPredictor(torch.nn.Module):
    """``(q, v) -> (q', v')`` at step ``h`` for one molecule (see the module docstring)."""

    def __init__(self, reference: Tensor, masses: Tensor, h: float, temperature: float,
                 forces: Callable[[Tensor], Tensor], hidden: int = 256,
                 constraints: Optional[ConstraintSet] = None) -> None:
        super().__init__()
        self.h = h
        self.forces = forces
        self.register_buffer("masses", masses)
        self.register_buffer("reference", reference - self._centre(reference[None])[0])
        self.register_buffer("velocity_scale", torch.sqrt(BOLTZMANN * temperature / masses)[:, None])
        n = 3 * len(masses)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3 * n, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.SiLU(), torch.nn.Linear(hidden, 2 * n))
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("output_scale", torch.ones(2, len(masses), 3))
        self.constraints = constraints

    def _centre(self, q: Tensor) -> Tensor:
        return (q * self.masses[:, None]).sum(-2, keepdim=True) / self.masses.sum()

    def aligned(self, q: Tensor, v: Tensor, forces: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Centred, rotated positions, velocities and accelerations (in thermal velocity per ps), the rotation
        and the centre of mass; ``forces`` at ``q`` if already known."""
        centre = self._centre(q)
        rotation = _kabsch(q - centre, self.reference, self.masses)
        forces = self.forces(q) if forces is None else forces
        acceleration = forces / self.masses[:, None] / self.velocity_scale * 0.01
        return (q - centre) @ rotation, v @ rotation, acceleration @ rotation, rotation, centre

    def departure(self, q_aligned: Tensor, v_aligned: Tensor, a_aligned: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted ``q' - q - h v`` and ``v' - v`` in the aligned frame."""
        inputs = torch.cat([(q_aligned - self.reference).flatten(1) * 10.0,
                            (v_aligned / self.velocity_scale).flatten(1), a_aligned.flatten(1)], -1)
        out = self.mlp(inputs).reshape(-1, 2, len(self.masses), 3) * self.output_scale
        return out[:, 0], out[:, 1]

    def forward(self, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        q_aligned, v_aligned, a_aligned, rotation, centre = self.aligned(q, v)
        dq, dv = self.departure(q_aligned, v_aligned, a_aligned)
        back = rotation.transpose(-1, -2)
        v_com = self._centre(v)
        q1 = (q_aligned + self.h * v_aligned + dq) @ back + centre + self.h * v_com
        v1 = (v_aligned + dv) @ back
        if self.constraints is not None:
            q1 = self.constraints.project_positions(q, q1)
            v1 = self.constraints.project_velocities(q1, v1)
        return q1, v1


def train_direct_predictor(dataset: ReferenceDataset, h: float, iterations: int = 4000, batch_size: int = 256,
                           noise: float = 0.002, seed: int = 0, progress: bool = True,
                           pool_size: int = 8192, platform: str = "Reference") -> DirectPredictor:
    """Fit a :class:`DirectPredictor` to one-step pairs ``h`` apart (mean squared error of the aligned
    departures, each component scaled to unit variance). Gaussian ``noise`` (nm) on the input positions, with
    targets kept, teaches it to pull perturbed states back, the usual stabiliser of learned simulators.

    The inputs are a pool of ``pool_size`` noisy starts (pairs drawn with replacement, fresh noise each), whose
    force-field forces are computed once (on ``platform``): on a protein a force evaluation per sample and
    iteration would cost hours."""
    torch.manual_seed(seed)
    q, v, q1, v1 = (torch.as_tensor(x) for x in dataset.pairs(h))
    masses = torch.as_tensor(dataset.masses)
    system = dataset.system()
    potential = OpenMMPotential(system, platform=platform)
    model = DirectPredictor(q[0], masses, h, dataset.temperature, lambda x: torch.as_tensor(potential.forces(x)),
                            constraints=ConstraintSet.from_system(system)).double()
    rng = np.random.default_rng(seed)
    pool = torch.as_tensor(rng.integers(0, len(q), pool_size))
    noisy = q[pool] + noise * torch.randn_like(q[pool])
    pool_forces = torch.as_tensor(potential.forces(noisy.numpy()))

    def inputs_and_targets(draw: Tensor) -> tuple[Tensor, ...]:
        """Aligned inputs and targets of the pool entries ``draw``."""
        index = pool[draw]
        with torch.no_grad():
            qa, va, aa, rotation, centre = model.aligned(noisy[draw], v[index], pool_forces[draw])
            return qa, va, aa, (q1[index] - centre) @ rotation - qa - h * va, v1[index] @ rotation - va

    _, _, _, target_q, target_v = inputs_and_targets(torch.arange(pool_size))
    model.output_scale.copy_(torch.stack([target_q.std(0), target_v.std(0)]).clamp_min(1e-8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    started = time.monotonic()
    for iteration in range(1, iterations + 1):
        qa, va, aa, target_q, target_v = inputs_and_targets(torch.as_tensor(rng.integers(0, pool_size, batch_size)))
        dq, dv = model.departure(qa, va, aa)
        loss = (((dq - target_q) / model.output_scale[0]) ** 2).mean() + \
            (((dv - target_v) / model.output_scale[1]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if progress and iteration % 500 == 0:
            print(f"direct predictor: iteration {iteration}/{iterations}, loss {loss.item():.4f} "
                  f"(1 = predicting free flight), {time.monotonic() - started:.0f} s", flush=True)
    return model.eval()


def save_predictor(model: DirectPredictor, result: Optional[EnsembleResult], path: Path) -> None:
    """Keep a trained predictor's weights and its ensemble's result (``None`` before it is run) at ``path``
    (atomically)."""
    with atomic_path(path, overwrite=True) as tmp:
        torch.save({"state": model.state_dict(), "hidden": model.mlp[0].out_features, "h": model.h,
                    "result": result}, tmp)


def load_predictor(path: Path, potential: OpenMMPotential, temperature: float,
                   constraints: Optional[ConstraintSet]) -> tuple[DirectPredictor, Optional[EnsembleResult]]:
    """The predictor and result (``None`` if it was kept before its run) :func:`save_predictor` kept, bound to
    ``potential``'s force field.

    Raises
    ------
    InputError
        If the file cannot be read.
    """
    try:
        saved = torch.load(path, weights_only=False)
        state = saved["state"]
        model = DirectPredictor(state["reference"], state["masses"], saved["h"], temperature,
                                lambda x: torch.as_tensor(potential.forces(x)), saved["hidden"], constraints).double()
        model.load_state_dict(state)
    except (OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"direct-predictor file {path} is unreadable ({error}); delete it and the predictor will "
                         f"be trained again.") from error
    return model.eval(), saved["result"]


def run_direct_ensemble(model: DirectPredictor, potential: OpenMMPotential, starts: Starts, temperature: float,
                        options: EnsembleOptions, elements: list[str], constraints: np.ndarray) -> EnsembleResult:
    """Integrate every start with the predictor and measure it as :func:`openmm_actionml.ensemble.run_ensemble`
    does (instability: non-finite, or total energy ``instability_factor * n_dof * kT`` from the start)."""
    h = model.h
    sample_steps = int(round(options.sample_interval / h))
    n_samples = int(round(options.duration / options.sample_interval))
    masses = starts.masses
    n_dof = float(degrees_of_freedom_per_atom(masses, constraints, remove_com=True).sum())
    q = torch.as_tensor(starts.positions)
    v = torch.as_tensor(starts.velocities)
    energies = np.full((len(starts), n_samples + 1), np.nan)
    velocities = np.full((len(starts), n_samples + 1, len(masses), 3), np.nan)
    alive = np.ones(len(starts), dtype=bool)
    wall = 0.0
    with torch.no_grad():
        for sample in range(n_samples + 1):
            if sample:
                started = time.perf_counter()
                for _ in range(sample_steps):
                    q, v = model(q, v)
                wall += time.perf_counter() - started
            potential_energy = potential.energy(np.where(np.isfinite(q.numpy()), q.numpy(), 0.0))
            total = potential_energy + 0.5 * (masses[:, None] * v.numpy() ** 2).sum((-1, -2))
            if sample:
                alive &= np.isfinite(total) & (np.abs(total - energies[:, 0]) < options.instability_factor * n_dof
                                               * BOLTZMANN * temperature)
            energies[alive, sample] = total[alive]
            velocities[alive, sample] = v.numpy()[alive]
            q = torch.where(torch.as_tensor(alive)[:, None, None], q, torch.as_tensor(starts.positions))
            v = torch.where(torch.as_tensor(alive)[:, None, None], v, torch.as_tensor(starts.velocities))
        steps = max(1, int(round(options.reversibility_time / h)))
        q0, v0 = torch.as_tensor(starts.positions[alive][:4]), torch.as_tensor(starts.velocities[alive][:4])
        qb, vb = q0, v0
        for _ in range(steps if len(q0) else 0):
            qb, vb = model(qb, vb)
        vb = -vb
        for _ in range(steps if len(q0) else 0):
            qb, vb = model(qb, vb)
    reversibility = float(torch.sqrt(((qb - q0) ** 2).sum(-1).mean())) if len(q0) else float("nan")
    simulated = len(starts) * n_samples * sample_steps * h
    times = np.arange(n_samples + 1) * options.sample_interval
    return summarise_ensemble(f"direct predictor {h * 1000:g} fs (torch, batch {len(starts)})", h, times, energies,
                              velocities, alive, masses, constraints, elements, temperature, options, reversibility,
                              simulated / wall, 1.0 / (h * 1000.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="+")
    parser.add_argument("--step", type=float, required=True, help="fs")
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--noise", type=float, default=0.002, help="input position noise in nm (default 0.002)")
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--time", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from openmm_actionml.ensemble import equilibrated_starts
    from openmm_actionml.report import markdown_table
    dataset = ReferenceDataset.concatenate([ReferenceDataset.load(path) for path in args.dataset])
    system = dataset.system()
    h = args.step / 1000.0
    model = train_direct_predictor(dataset, h, args.iterations, noise=args.noise)
    starts = equilibrated_starts(system, dataset.positions[0, 0], dataset.temperature, args.trajectories)
    options = EnsembleOptions(n_trajectories=args.trajectories, duration=args.time, sample_interval=h,
                              correlation_time=min(EnsembleOptions.correlation_time, args.time / 2))
    result = run_direct_ensemble(model, OpenMMPotential(system), starts, dataset.temperature, options,
                                 list(dataset.elements), constraint_pairs(system))
    print(markdown_table([result]))


if __name__ == "__main__":
    main()
