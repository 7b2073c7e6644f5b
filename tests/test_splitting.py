"""Exactness of the scheme-A torch stepper (double precision, analytic toy potential)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.errors import ActionMLConvergenceError, InputError
from openmm_actionml.nve_gate import GateOptions, run_gate
from openmm_actionml.splitting import SPLITTINGS, Splitting, SplittingStepper, Stage, get_splitting, with_tied_heads
from toy_systems import toy_energy, toy_forces, toy_state

EPS = np.finfo(np.float64).eps
H = 0.004  # ps: beyond Verlet's comfort for the stiff Morse bonds, so the tests are not trivially linear


def stepper(name: str, masses: torch.Tensor, constraints: ConstraintSet | None = None) -> SplittingStepper:
    return SplittingStepper(get_splitting(name), H, masses, lambda q, head: toy_forces(q), constraints)


@pytest.mark.parametrize("name", list(SPLITTINGS))
def test_coefficients_are_consistent(name):
    splitting = SPLITTINGS[name]
    assert Splitting.from_dict(splitting.to_dict()) == splitting
    assert splitting.evaluations_per_step == {"T3": 3, "S2": 2, "VV": 1}[name]


@pytest.mark.parametrize("name", list(SPLITTINGS))
def test_tied_heads_keep_the_stages_on_one_head(name):
    tied = with_tied_heads(SPLITTINGS[name])
    assert tied.n_heads == 1 and tied.evaluations_per_step == SPLITTINGS[name].evaluations_per_step
    assert [(s.kind, s.coefficient) for s in tied.stages] == [(s.kind, s.coefficient) for s in SPLITTINGS[name].stages]


def test_bad_splittings_are_refused():
    with pytest.raises(InputError, match="palindrome"):
        Splitting("x", (Stage("kick", 0.3), Stage("drift", 1.0), Stage("kick", 0.7)))
    with pytest.raises(InputError, match="sum"):
        Splitting("x", (Stage("kick", 0.3), Stage("drift", 1.0), Stage("kick", 0.3)))
    with pytest.raises(InputError, match="unknown splitting"):
        get_splitting("T9")


def test_vv_splitting_is_velocity_verlet():
    q, v, masses = toy_state()
    q1, v1, _ = stepper("VV", masses).step(q, v)
    m = masses[:, None].numpy()
    qn, vn = q.numpy(), v.numpy()
    f0 = toy_forces(q).detach().numpy()
    v_half = vn + 0.5 * H * f0 / m
    q_new = qn + H * v_half
    v_new = v_half + 0.5 * H * toy_forces(torch.tensor(q_new)).detach().numpy() / m
    q1, v1 = q1.detach(), v1.detach()
    np.testing.assert_allclose(q1.numpy(), q_new, rtol=0, atol=100 * EPS * np.abs(q_new).max())
    np.testing.assert_allclose(v1.numpy(), v_new, rtol=0, atol=100 * EPS * np.abs(v_new).max())


def test_first_same_as_last_reuse_is_exact():
    q, v, masses = toy_state()
    run = stepper("T3", masses)
    q_cached, v_cached = run.run(q, v, 3)
    q_fresh, v_fresh = q, v
    for _ in range(3):
        q_fresh, v_fresh, _ = run.step(q_fresh, v_fresh)
    assert torch.equal(q_cached[-1], q_fresh) and torch.equal(v_cached[-1], v_fresh)


@pytest.mark.parametrize("name", ["T3", "S2"])
def test_symplectic_jacobian(name):
    """J^T Omega J = Omega for the map z = (q, p) -> (q', p'); error bounded by round-off in J."""
    q, v, masses = toy_state()
    run = stepper(name, masses)
    n = q.numel()
    m = masses.repeat_interleave(3)

    def flow(z):
        q1, v1, _ = run.step(z[:n].reshape(q.shape), (z[n:] / m).reshape(v.shape))
        return torch.cat([q1.reshape(-1), m * v1.reshape(-1)])

    z0 = torch.cat([q.reshape(-1), m * v.reshape(-1)])
    jacobian = torch.autograd.functional.jacobian(flow, z0)
    omega = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    omega[:n, n:] = torch.eye(n)
    omega[n:, :n] = -torch.eye(n)
    defect = (jacobian.T @ omega @ jacobian - omega).abs().max().item()
    # Each entry of J^T Omega J sums 2n products of J entries, each carrying relative error ~ (stages) * eps.
    bound = 2 * n * len(run.splitting.stages) * 10 * EPS * jacobian.abs().max().item() ** 2
    assert defect < bound, (defect, bound)


@pytest.mark.parametrize("name", ["T3", "S2"])
def test_time_reversible(name):
    q, v, masses = toy_state()
    run = stepper(name, masses)
    qs, vs = run.run(q, v, 20)
    qb, vb = run.run(qs[-1], -vs[-1], 20)
    scale = q.abs().max().item()
    assert (qb[-1] - q).abs().max().item() < 1e4 * EPS * scale
    assert (vb[-1] + v).abs().max().item() < 1e4 * EPS * v.abs().max().item()


def test_momenta_conserved():
    q, v, masses = toy_state()
    qs, vs = stepper("T3", masses).run(q, v, 20)
    p = masses[:, None] * vs
    linear = p.sum(-2)
    angular = torch.cross(qs, p, dim=-1).sum(-2)
    assert (linear - linear[0]).abs().max().item() < 1e3 * EPS * p.abs().max().item()
    assert (angular - angular[0]).abs().max().item() < 1e3 * EPS * (qs.abs().max() * p.abs().max()).item()


def constrained_toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ConstraintSet]:
    q, v, masses = toy_state()
    pairs = torch.tensor([[0, 1], [3, 4]])
    distances = (q[pairs[:, 0]] - q[pairs[:, 1]]).norm(dim=-1)
    constraints = ConstraintSet(pairs, distances, masses)
    return q, constraints.project_velocities(q, v), masses, constraints


def test_constrained_step_keeps_constraints_and_reverses():
    q, v, masses, constraints = constrained_toy()
    run = stepper("T3", masses, constraints)
    qs, vs = run.run(q, v, 20)
    bonds = qs[:, [0, 3]] - qs[:, [1, 4]]
    assert constraints.violation(qs[-1]) < 1e-11
    rates = (bonds * (vs[:, [0, 3]] - vs[:, [1, 4]])).sum(-1)
    assert rates.abs().max().item() < 1e-10 * vs.abs().max().item()
    qb, vb = run.run(qs[-1], -vs[-1], 20)
    # Reversal is exact up to the projection tolerance (relative 1e-12 on d^2), amplified over 40 steps.
    assert (qb[-1] - q).abs().max().item() < 1e-9


def test_constrained_rigid_chain_conserves_energy_better_than_step_error():
    """An energy check on constrained dynamics: fluctuation stays O(h^2), no drift across 200 steps."""
    q, v, masses, constraints = constrained_toy()
    run = SplittingStepper(get_splitting("T3"), 0.001, masses, lambda x, head: toy_forces(x), constraints)
    qs, vs = run.run(q, v, 200)
    energy = toy_energy(qs) + 0.5 * (masses[:, None] * vs ** 2).sum((-1, -2))
    first, last = energy[:100].mean(), energy[100:].mean()
    assert abs(last - first).item() < 3 * energy.std().item() + 1e-9


def test_untrained_anchored_s2_is_mclachlan():
    """An untrained anchored model (dW = 0 by zero init) is the classical McLachlan splitting, written out here."""
    from openmm_actionml.kicks import KickPotential
    from openmm_actionml.network import build_network
    from openmm_actionml.splitting import MCLACHLAN_B

    q, v, masses = toy_state()
    network = build_network(["C", "H", "N", "O", "H"], n_heads=2).double()
    run = SplittingStepper(get_splitting("S2"), H, masses, KickPotential(network, toy_forces))
    with torch.no_grad():
        q1, v1, _ = run.step(q, v)

    def forces(x: np.ndarray) -> np.ndarray:
        return toy_forces(torch.tensor(x)).detach().numpy()

    m, b = masses[:, None].numpy(), MCLACHLAN_B
    qn, vn = q.numpy(), v.numpy()
    vn = vn + b * H * forces(qn) / m
    qn = qn + 0.5 * H * vn
    vn = vn + (1 - 2 * b) * H * forces(qn) / m
    qn = qn + 0.5 * H * vn
    vn = vn + b * H * forces(qn) / m
    np.testing.assert_allclose(q1.numpy(), qn, rtol=0, atol=100 * EPS * np.abs(qn).max())
    np.testing.assert_allclose(v1.numpy(), vn, rtol=0, atol=100 * EPS * np.abs(vn).max())


def test_gate_counts_a_failed_constraint_projection_as_unstable():
    """One start thrown far off (its SHAKE solve cannot converge) fails the batched step; the gate steps the
    trajectories alone, counts that one unstable and judges the rest, instead of ending the training run."""
    q, v, masses, constraints = constrained_toy()
    run = stepper("T3", masses, constraints)
    q0 = torch.stack([q, q, q])
    v0 = torch.stack([v, -v, v])
    v0[2, 1] += 1e4  # nm/ps: a hydrogen leaves its constrained bond within one drift
    with pytest.raises(ActionMLConvergenceError):
        run.step(q0, v0)
    options = GateOptions(n_trajectories=3, duration=40 * H, record_every=2, min_stable_fraction=0.5)
    result = run_gate(run, toy_energy, q0, v0, 300.0, options, ["C", "H", "N", "O", "H"])
    assert result.stable_fraction == pytest.approx(2 / 3)
    assert np.isfinite(result.drift_mean) and np.isfinite(result.energy_rms)


def test_gate_too_short_for_a_drift_says_so():
    """Stable trajectories with too few energy samples fail the gate with that reason, not as unstable."""
    q, v, masses, constraints = constrained_toy()
    run = stepper("T3", masses, constraints)
    options = GateOptions(n_trajectories=2, duration=4 * H, record_every=2)
    result = run_gate(run, toy_energy, torch.stack([q, q]), torch.stack([v, -v]), 300.0, options,
                      ["C", "H", "N", "O", "H"])
    assert result.stable_fraction == 1.0 and not result.passed
    assert "too few for a drift" in result.reason
