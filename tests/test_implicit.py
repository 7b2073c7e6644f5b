"""Scheme B (implicit midpoint generating function): exactness, solvers, and gradient matching (float64)."""
from __future__ import annotations

import math

import pytest
import torch

from openmm_actionml.constraints import ConstraintSet
from openmm_actionml.errors import ActionMLConvergenceError, InputError
from openmm_actionml.implicit import (GAUSS3_NODE, IMPLICIT_SCHEMES, KT_300K, FixedPointSolver,
                                      ImplicitConvergenceWarning, ImplicitScheme, ImplicitStepper,
                                      get_implicit_scheme, gradient_matching_loss, gradient_matching_terms)
from openmm_actionml.kicks import KickPotential
from openmm_actionml.splitting import SplittingStepper, get_splitting
from toy_systems import toy_energy, toy_forces, toy_state

H = 0.02  # ps; the toy's fastest mode has w = 67/ps, so h*w = 1.34: plain iteration contracts at rate ~0.67
H_STIFF = 0.022  # gauss3 with U_1 = 1.3 V: plain iteration contracts slowly (rate ~0.9)
KT = KT_300K


def head_forces(x: torch.Tensor, head: int) -> torch.Tensor:
    """Two different position-only potentials, U_0 = V and U_1 = 1.3 V, so that gauss3 is a genuine two-head S."""
    return toy_forces(x) * (1.0 if head == 0 else 1.3)


def toy_stepper(scheme="gauss3", h=H, method="anderson", tolerance=1e-12, max_iterations=400, **kwargs):
    _, _, masses = toy_state()
    solver = FixedPointSolver(method, tolerance=tolerance, max_iterations=max_iterations,
                              **{k: kwargs.pop(k) for k in list(kwargs) if k in ("mixing", "anderson_depth",
                                                                                 "on_nonconvergence", "norm")})
    return ImplicitStepper(scheme, h, masses, kwargs.pop("node_forces", head_forces), solver, **kwargs)


def thermal_distance(stepper, dq, dv) -> float:
    """rms of (dq/h, dv) in thermal-velocity units, the metric of the solver's residual norm."""
    dq, dv = dq.detach(), dv.detach()
    per_sample = stepper.inner((dq, dv), (dq, dv)) / (dq.shape[-2] * dq.shape[-1] * 2 * KT)
    return float(per_sample.mean().sqrt())


def scaled_jacobian(jacobian_qv: torch.Tensor, masses: torch.Tensor, h: float) -> torch.Tensor:
    """J in the canonical, dimensionless coordinates (sqrt(m) q / h, sqrt(m) v) = conformal to (q, p)."""
    s = masses.repeat_interleave(3).sqrt()
    t = torch.cat([s / h, s])
    return t[:, None] * jacobian_qv / t[None, :]


def symplectic_defect(jacobian: torch.Tensor) -> float:
    n = jacobian.shape[0] // 2
    omega = torch.zeros(2 * n, 2 * n, dtype=jacobian.dtype)
    omega[:n, n:] = torch.eye(n)
    omega[n:, :n] = -torch.eye(n)
    return float(torch.linalg.matrix_norm(jacobian.T @ omega @ jacobian - omega, ord=2))


# --- schemes and options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(IMPLICIT_SCHEMES))
def test_presets_round_trip(name):
    scheme = IMPLICIT_SCHEMES[name]
    assert ImplicitScheme.from_dict(scheme.to_dict()) == scheme
    assert get_implicit_scheme(name.upper()) is scheme
    assert abs(sum(scheme.weights) - 1.0) < 1e-15
    assert {"midpoint": 1, "gauss2": 1, "gauss3": 2}[name] == scheme.n_heads
    assert scheme.evaluations_per_iteration == scheme.n_nodes


def test_gauss_presets_are_quadratures():
    # Gauss-Legendre on [-1/2, 1/2] integrates s^2 and s^4 exactly (1/12, 1/80) with 3 nodes; s^2 with 2.
    g2, g3 = IMPLICIT_SCHEMES["gauss2"], IMPLICIT_SCHEMES["gauss3"]
    assert abs(sum(w * c ** 2 for c, w in zip(g2.nodes, g2.weights)) - 1 / 12) < 1e-15
    assert abs(sum(w * c ** 4 for c, w in zip(g3.nodes, g3.weights)) - 1 / 80) < 1e-15
    assert ImplicitScheme("x", (-0.3, 0.0, 0.3), (0.25, 0.5, 0.25)).heads == (1, 0, 1)


def test_bad_schemes_and_options_are_refused():
    with pytest.raises(InputError, match="mirror"):
        ImplicitScheme("x", (0.0, 0.3), (0.5, 0.5))
    with pytest.raises(InputError, match="mirror"):
        ImplicitScheme("x", (-0.3, 0.3), (0.4, 0.6))
    with pytest.raises(InputError, match="mirror"):  # a mirror pair on two different potentials is not even in p
        ImplicitScheme("x", (-0.3, 0.3), (0.5, 0.5), (0, 1))
    with pytest.raises(InputError, match="mirror"):  # multiset matching: two +c against one -c
        ImplicitScheme("x", (-0.3, 0.3, 0.3), (1 / 3, 1 / 3, 1 / 3))
    with pytest.raises(InputError, match="sum"):
        ImplicitScheme("x", (-0.3, 0.3), (0.5, 0.6))
    with pytest.raises(InputError, match="unknown implicit scheme"):
        get_implicit_scheme("gauss7")
    with pytest.raises(InputError, match="mixing"):
        FixedPointSolver("plain", mixing=0.5)
    with pytest.raises(InputError, match="method"):
        FixedPointSolver("newton")
    with pytest.raises(InputError, match="on_nonconvergence"):
        FixedPointSolver(on_nonconvergence="ignore")
    assert FixedPointSolver.from_dict(FixedPointSolver("damped").to_dict()).mixing == 0.5
    _, _, masses = toy_state()
    constraints = ConstraintSet(torch.tensor([[0, 1]]), torch.tensor([0.15]), masses)
    with pytest.raises(InputError, match="constraints"):
        ImplicitStepper("midpoint", H, masses, head_forces, constraints=constraints)
    with pytest.raises(InputError, match="mass"):
        ImplicitStepper("midpoint", H, torch.tensor([1.0, 0.0]), head_forces)


# --- exactness of the map -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["midpoint", "gauss3"])
def test_symplectic_by_implicit_differentiation(name):
    """The Jacobian of the solved step, by the implicit function theorem at the converged midpoint, is
    (I - G_x)^-1-Cayley of a symmetric Hessian, hence symplectic to rounding (a sign error in the c-term would
    make the Hessian non-symmetric and fail this at O(1))."""
    q, v, masses = toy_state()
    run = toy_stepper(name, tolerance=1e-13)
    n = q.numel()
    with torch.no_grad():
        q_new, v_new, stats = run.step(q, v)
    x = torch.cat([(0.5 * (q + q_new)).reshape(-1), (0.5 * (v + v_new)).reshape(-1)])
    z = torch.cat([q.reshape(-1), v.reshape(-1)])

    def g(x_flat, z_flat):
        gq, gv = run.fixed_point_map(x_flat[:n].reshape(q.shape), x_flat[n:].reshape(q.shape),
                                     z_flat[:n].reshape(q.shape), z_flat[n:].reshape(q.shape))
        return torch.cat([gq.reshape(-1), gv.reshape(-1)])

    g_x, g_z = torch.autograd.functional.jacobian(g, (x, z))
    d = torch.linalg.solve(torch.eye(2 * n, dtype=torch.float64) - g_x, g_z)
    jacobian = scaled_jacobian(2.0 * d - torch.eye(2 * n, dtype=torch.float64), masses, H)
    defect = symplectic_defect(jacobian)
    norm = float(torch.linalg.matrix_norm(jacobian, ord=2))
    print(f"{name}: implicit-differentiation ||J^T W J - W|| = {defect:.2e}, ||J|| = {norm:.2f}, "
          f"{stats.iterations} iterations")
    assert defect < 1e-12 * norm ** 2


def test_symplectic_by_unrolled_iterations():
    """Autograd through the plain iterations. The derivative iterates D_k = dx_k/dz obey
    D_{k+1} - D* = G_x (D_k - D*) + O(|x_k - x*|), so they converge at the iteration's rate rho, with a factor K
    from the second term: |dJ| = 2|D_K - D*| <~ K (r_K / r_0)(1 + |J|). Then
    |J^T W J - W| <= 2|J||dJ| + |dJ|^2."""
    q, v, masses = toy_state()
    run = toy_stepper("gauss3", method="plain", tolerance=1e-13)
    _, _, stats = run.step(q, v)
    n = q.numel()

    def step(z_flat):
        q_new, v_new, _ = run.step(z_flat[:n].reshape(q.shape), z_flat[n:].reshape(q.shape))
        return torch.cat([q_new.reshape(-1), v_new.reshape(-1)])

    z = torch.cat([q.reshape(-1), v.reshape(-1)])
    jacobian = scaled_jacobian(torch.autograd.functional.jacobian(step, z), masses, H)
    defect = symplectic_defect(jacobian)
    norm = float(torch.linalg.matrix_norm(jacobian, ord=2))
    history = stats.residual_history
    d_j = stats.iterations * history[-1] / history[0] * (1.0 + norm)
    bound = 2 * norm * d_j + d_j ** 2
    print(f"unrolled plain: {stats.iterations} iterations, residual {history[0]:.2e} -> {history[-1]:.2e}, "
          f"||J|| = {norm:.2f}, defect {defect:.2e} <= bound {bound:.2e}")
    assert defect <= bound


@pytest.mark.parametrize("name", ["midpoint", "gauss2", "gauss3"])
def test_time_reversible(name):
    q, v, masses = toy_state()
    tolerance = 1e-11
    run = toy_stepper(name, tolerance=tolerance)
    q1, v1, s1 = run.step(q, v)
    q2, v2, s2 = run.step(q1, -v1)
    error = thermal_distance(run, q2 - q, -v2 - v)
    moved = thermal_distance(run, q1 - q, v1 - v)
    print(f"{name}: reversal error {error:.2e} (step moved {moved:.2f}), iterations {s1.iterations}+{s2.iterations}")
    # Each solve leaves an endpoint error <= 2 |(I - G_x)^-1| sqrt(6N) * tolerance with |(I - G_x)^-1| = O(1) here.
    assert error < 10 * math.sqrt(q.numel() * 2) * tolerance


def test_uneven_action_is_not_reversible():
    """Why mirror nodes must share a head: with U_0 != U_1 on a +-c pair, S is not even in p."""
    scheme = ImplicitScheme("gauss2", IMPLICIT_SCHEMES["gauss2"].nodes, (0.5, 0.5), (0, 0))
    object.__setattr__(scheme, "heads", (0, 1))  # bypass the validation on purpose
    q, v, masses = toy_state()
    run = toy_stepper(scheme, tolerance=1e-11)
    q1, v1, _ = run.step(q, v)
    q2, v2, _ = run.step(q1, -v1)
    assert thermal_distance(run, q2 - q, -v2 - v) > 1e-4


@pytest.mark.parametrize("name", ["midpoint", "gauss3"])
def test_momenta_conserved(name):
    q, v, masses = toy_state()
    m = masses[:, None]
    for tolerance in (1e-6, 1e-12):
        run = toy_stepper(name, tolerance=tolerance)
        q1, v1, stats = run.step(q, v)
        momentum = (m * v).sum(0)
        q1, v1 = q1.detach(), v1.detach()
        linear = float(((m * v1).sum(0) - momentum).norm() / (m * v).abs().sum())
        angular_before = torch.linalg.cross(q, m * v).sum(0)
        angular_after = torch.linalg.cross(q1, m * v1).sum(0)
        scale = float((m.sqrt() * q.norm(dim=-1, keepdim=True)).sum() * math.sqrt(KT))  # amu nm^2/ps
        angular = float((angular_after - angular_before).norm()) / scale
        print(f"{name} tol {tolerance:.0e}: |dP|/sum|p| = {linear:.1e}, |dL|/L_thermal = {angular:.1e}, "
              f"{stats.iterations} iterations")
        assert linear < 1e-14  # exact: v' = v + h M^-1 sum w F and sum F = 0, at any residual
        assert angular < 10 * tolerance  # exact at the solution only


def independent_implicit_midpoint(q, v, masses, h, forces):
    """Newton on q' = q + h (v + v')/2, v' = v + h M^-1 F((q + q')/2), written from scratch."""
    n = q.numel()
    inverse_mass = (1.0 / masses)[:, None]

    def residual(y):
        q1, v1 = y[:n].reshape(q.shape), y[n:].reshape(q.shape)
        return torch.cat([(q1 - q - 0.5 * h * (v + v1)).reshape(-1),
                          (v1 - v - h * inverse_mass * forces(0.5 * (q + q1))).reshape(-1)])

    y = torch.cat([(q + h * v).reshape(-1), v.reshape(-1)])
    for _ in range(30):
        step = torch.linalg.solve(torch.autograd.functional.jacobian(residual, y), residual(y)).detach()
        y = y - step
        if float(step.abs().max()) < 1e-15 * float(y.abs().max()):
            break
    return y[:n].reshape(q.shape), y[n:].reshape(q.shape)


def test_single_centre_node_is_the_implicit_midpoint_rule():
    q, v, masses = toy_state()
    run = toy_stepper("midpoint", node_forces=lambda x, head: toy_forces(x), tolerance=1e-13)
    q1, v1, stats = run.step(q, v)
    q_ref, v_ref = independent_implicit_midpoint(q, v, masses, H, toy_forces)
    difference = thermal_distance(run, q1 - q_ref, v1 - v_ref)
    print(f"midpoint vs independent Newton: {difference:.1e} thermal units ({stats.iterations} iterations)")
    assert difference < 1e-11
    # And the step is not trivial: it differs from velocity Verlet by far more than that.
    q_vv, v_vv, _ = SplittingStepper(get_splitting("VV"), H, masses, lambda x, head: toy_forces(x)).step(q, v)
    assert thermal_distance(run, q1 - q_vv, v1 - v_vv) > 1e-3


# --- solvers ------------------------------------------------------------------------------------------------
def test_solvers_agree_and_anderson_is_faster():
    q, v, _ = toy_state()
    tolerance = 1e-11
    results, counts = {}, {}
    for h in (H, H_STIFF):
        for method in ("plain", "damped", "anderson"):
            run = toy_stepper("gauss3", h=h, method=method, tolerance=tolerance,
                              **({"mixing": 0.7} if method == "damped" else {}))
            q1, v1, stats = run.step(q, v)
            assert stats.converged and stats.residual <= tolerance
            results[h, method] = (q1, v1)
            counts[h, method] = stats.iterations
        for method in ("plain", "damped"):
            difference = thermal_distance(run, results[h, method][0] - results[h, "anderson"][0],
                                          results[h, method][1] - results[h, "anderson"][1])
            assert difference < 100 * tolerance
    print("gauss3 iterations (tolerance 1e-11):",
          ", ".join(f"h={h} {m}: {c}" for (h, m), c in counts.items()))
    assert counts[H_STIFF, "anderson"] * 3 < counts[H_STIFF, "plain"]
    assert counts[H_STIFF, "anderson"] < counts[H_STIFF, "damped"]


def test_scheme_a_predictor_and_batching():
    q, v, masses = toy_state()
    trivial = toy_stepper("gauss3", tolerance=1e-11)
    predictor = SplittingStepper(get_splitting("T3"), H, masses, head_forces)
    predicted = toy_stepper("gauss3", tolerance=1e-11, predictor=predictor)
    q1, v1, s_trivial = trivial.step(q, v)
    q2, v2, s_predicted = predicted.step(q, v)
    print(f"Anderson from the trivial predictor: {s_trivial.iterations} iterations (first residual "
          f"{s_trivial.residual_history[0]:.1e}); from T3: {s_predicted.iterations} ({s_predicted.residual_history[0]:.1e})")
    assert thermal_distance(trivial, q1 - q2, v1 - v2) < 1e-9
    assert s_predicted.residual_history[0] < 0.3 * s_trivial.residual_history[0]
    assert s_predicted.iterations <= s_trivial.iterations
    q_b, v_b, _ = toy_state(seed=1)
    qb1, vb1, batch_stats = trivial.step(torch.stack([q, q_b]), torch.stack([v, v_b]))
    q_single, v_single, _ = trivial.step(q_b, v_b)
    assert thermal_distance(trivial, qb1[0] - q1, vb1[0] - v1) < 1e-9
    assert thermal_distance(trivial, qb1[1] - q_single, vb1[1] - v_single) < 1e-9
    assert batch_stats.converged


# --- contraction limits on a harmonic trap -------------------------------------------------------------------
TRAP_MASSES = torch.tensor([1.008, 12.0, 16.0], dtype=torch.float64)


def trap_state(n_samples=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (3, 3) if n_samples is None else (n_samples, 3, 3)
    sigma_v = (KT / TRAP_MASSES)[:, None].sqrt()
    v = torch.randn(shape, generator=generator, dtype=torch.float64) * sigma_v
    q = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.01
    return q, v


def trap_forces(omega, stiffness=None):
    """F = -m (w^2 + a_head) x: anchored U_head = V + dU_head with dU_head = a_head m |x|^2 / 2."""
    def forces(x, head):
        extra = 0.0 if stiffness is None else stiffness[head]
        return -TRAP_MASSES[:, None] * (omega ** 2 + extra) * x
    return forces


def exact_trap_flow(q, v, omega, h):
    c, s = math.cos(omega * h), math.sin(omega * h)
    return q * c + v * s / omega, -q * omega * s + v * c


def exact_gauss3_stiffness(omega, h):
    """The quadratic U_0, U_1 (centre, pair) whose gauss3 map is the exact flow at phase angle h*w < pi.

    S = h[ a p^2/(2m) + b m q^2/2 ] with a = 1 + h^2 sum_k w_k c_k^2 W_k^2 and b = sum_k w_k W_k^2 (W_k^2 the
    stiffness per mass of node k's head). The midpoint map of S rotates by 2 arctan(h sqrt(ab)/2) on the ellipse of
    S; the exact flow needs b/a = w^2 and tan(hw/2) = h w a/2, i.e. a = A := (2/(hw)) tan(hw/2).
    """
    theta = omega * h
    big_a = 2.0 / theta * math.tan(theta / 2)
    w_pair, w_centre = 5.0 / 18.0, 4.0 / 9.0
    pair = (big_a - 1.0) / (2 * w_pair * GAUSS3_NODE ** 2 * h ** 2)
    centre = (omega ** 2 * big_a - 2 * w_pair * pair) / w_centre
    return torch.tensor([centre - omega ** 2, pair - omega ** 2], dtype=torch.float64)


@pytest.mark.parametrize("theta, learned, rate", [(1.2, False, 0.6), (1.2, True, math.tan(0.6)),
                                                  (1.8, False, 0.9)])
def test_measured_contraction_rates(theta, learned, rate):
    """Plain iteration on a harmonic mode: G_x^2 = -rho^2 I, so the residual falls by exactly rho^2 every two
    iterations, with rho = h w/2 for the unlearned midpoint rule and tan(h w/2) for a map exact on the mode."""
    h, omega = 0.01, theta / 0.01
    scheme = "gauss3" if learned else "midpoint"
    forces = trap_forces(omega, exact_gauss3_stiffness(omega, h) if learned else None)
    solver = FixedPointSolver("plain", tolerance=1e-12, max_iterations=400)
    q, v = trap_state()
    _, _, stats = ImplicitStepper(scheme, h, TRAP_MASSES, forces, solver).step(q, v)
    history = stats.residual_history
    measured = math.sqrt(history[4] / history[2])  # early, far above rounding
    print(f"h*w = {theta}, {'exact-fit gauss3' if learned else 'midpoint U=V'}: rho = {measured:.6f} "
          f"(predicted {rate:.6f}), {stats.iterations} iterations")
    assert abs(measured - rate) < 1e-9 * rate


def test_nonconvergence_policies():
    """h w = 1.8: the unlearned midpoint still converges (rho = 0.9) but the map that is exact on the mode does not
    (rho = tan 0.9 = 1.26): raise or warn. Damping (beta < 2/(1 + rho^2)) and Anderson still converge."""
    h, omega = 0.01, 180.0
    forces = trap_forces(omega, exact_gauss3_stiffness(omega, h))
    q, v = trap_state()
    plain = FixedPointSolver("plain", tolerance=1e-10, max_iterations=60)
    with pytest.raises(ActionMLConvergenceError, match="did not converge.*smaller step.*Anderson.*scheme A"):
        ImplicitStepper("gauss3", h, TRAP_MASSES, forces, plain).step(q, v)
    warn = FixedPointSolver("plain", tolerance=1e-10, max_iterations=60, on_nonconvergence="warn")
    with pytest.warns(ImplicitConvergenceWarning, match="did not converge"):
        _, _, stats = ImplicitStepper("gauss3", h, TRAP_MASSES, forces, warn).step(q, v)
    assert not stats.converged and stats.iterations == 60
    diverging = FixedPointSolver("plain", tolerance=1e-10, max_iterations=5000, on_nonconvergence="warn")
    with pytest.warns(ImplicitConvergenceWarning, match="diverged"):
        ImplicitStepper("gauss3", h, TRAP_MASSES, forces, diverging).step(q, v)
    counts = {}
    for solver in (FixedPointSolver("damped", tolerance=1e-10, max_iterations=400, mixing=0.5),
                   FixedPointSolver("anderson", tolerance=1e-10)):
        q1, v1, stats = ImplicitStepper("gauss3", h, TRAP_MASSES, forces, solver).step(q, v)
        q_exact, v_exact = exact_trap_flow(q, v, omega, h)
        assert float((q1 - q_exact).abs().max()) < 1e-9 * float(q.abs().max())
        counts[solver.method] = stats.iterations
    print(f"h*w = 1.8 on the exact-fit gauss3 map: plain diverges; iterations {counts}")


# --- gradient matching ------------------------------------------------------------------------------------------
def test_gradient_matching_recovers_the_exact_map_beyond_verlet_stability():
    """Exact-flow data at h*w = 2.5 (Verlet is unstable beyond 2; the generating function is singular at pi).
    A two-parameter anchored model dU_k = a_k m |x|^2/2 on gauss3, fitted by gradient matching, recovers the
    analytic stiffnesses, and its solved step (Anderson; plain iteration cannot converge at tan(1.25) = 3) is the
    exact flow."""
    h, theta = 0.01, 2.5
    omega = theta / h
    q, v = trap_state(n_samples=32)
    q1, v1 = exact_trap_flow(q, v, omega, h)
    scale = omega ** 2
    parameters = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # a_k / w^2, dU = 0 at the start
    model = trap_forces(omega, None)

    def forces(x, head):
        return model(x, head) - TRAP_MASSES[:, None] * (scale * parameters[head]) * x

    initial = float(gradient_matching_loss(forces, "gauss3", h, TRAP_MASSES, q, v, q1, v1, KT).detach())
    optimiser = torch.optim.LBFGS([parameters], lr=1, max_iter=200, tolerance_grad=1e-15, tolerance_change=1e-30,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = gradient_matching_loss(forces, "gauss3", h, TRAP_MASSES, q, v, q1, v1, KT)
        loss.backward()
        return loss

    optimiser.step(closure)
    final = float(closure().detach())
    expected = exact_gauss3_stiffness(omega, h) / scale
    print(f"gradient matching: loss {initial:.3e} -> {final:.3e}; a/w^2 learned {parameters.detach().tolist()}, "
          f"analytic {expected.tolist()}")
    assert torch.allclose(parameters.detach(), expected, rtol=1e-9, atol=0)
    assert final < 1e-20 * initial
    learned = trap_forces(omega, scale * parameters.detach())
    run = ImplicitStepper("gauss3", h, TRAP_MASSES, learned, FixedPointSolver("anderson", tolerance=1e-12))
    q_model, v_model, stats = run.step(q, v)
    error = thermal_distance(run, q_model - q1, v_model - v1)
    print(f"learned gauss3 step vs exact flow at h*w = 2.5: {error:.1e} thermal units, {stats.iterations} iterations")
    assert error < 1e-10
    with pytest.raises(ActionMLConvergenceError):
        ImplicitStepper("gauss3", h, TRAP_MASSES, learned, FixedPointSolver("plain")).step(q, v)


def test_gradient_matching_terms_and_single_node_limit():
    """The loss is 8 rms^2 of the solver residual at the data midpoints; with a centre node only, its position half
    does not depend on the model, so the midpoint rule cannot represent the exact flow (a known limit)."""
    h, omega = 0.01, 250.0
    q, v = trap_state(n_samples=4)
    q1, v1 = exact_trap_flow(q, v, omega, h)
    stiff = trap_forces(omega, torch.tensor([5000.0, 0.0]))
    soft = trap_forces(omega, None)
    for name in ("midpoint", "gauss3"):
        run = ImplicitStepper(name, h, TRAP_MASSES, stiff, kT=KT)
        loss = gradient_matching_loss(stiff, name, h, TRAP_MASSES, q, v, q1, v1, KT)
        g_q, g_v = run.fixed_point_map(0.5 * (q + q1), 0.5 * (v + v1), q, v)
        rms2 = run.residual_norm(g_q - 0.5 * (q + q1), g_v - 0.5 * (v + v1)) ** 2
        assert torch.allclose(loss, 8 * rms2.mean(), rtol=1e-12)
    _, position_stiff = gradient_matching_terms(stiff, "midpoint", h, TRAP_MASSES, q, v, q1, v1, KT)
    _, position_soft = gradient_matching_terms(soft, "midpoint", h, TRAP_MASSES, q, v, q1, v1, KT)
    assert float(position_stiff) == float(position_soft) > 0.01


def test_gradient_matching_through_a_kick_potential():
    """Shapes and gradients with the package's KickPotential (anchored, a tiny two-head network)."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor([0.1, -0.2], dtype=torch.float64))

        def forward(self, positions, box):
            return toy_energy(positions)[:, None] * self.scale

    q, v, masses = toy_state()
    network = Tiny()
    potential = KickPotential(network, toy_forces)
    run = ImplicitStepper("gauss3", H, masses, potential, FixedPointSolver(tolerance=1e-10))
    with torch.no_grad():
        q1, v1, _ = run.step(q, v)
    network.scale.data.zero_()
    loss = gradient_matching_loss(potential, "gauss3", H, masses, torch.stack([q, q]), torch.stack([v, v]),
                                  torch.stack([q1, q1]), torch.stack([v1, v1]), KT)
    loss.backward()
    assert float(loss.detach()) > 0 and float(network.scale.grad.abs().min()) > 0
