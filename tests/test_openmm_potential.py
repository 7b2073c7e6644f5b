"""OpenMMPotential: V and F from an OpenMM Context as a differentiable torch function.

The backward pass's finite-difference Hessian-vector product is checked against exact autograd on
a test double: the same analytic potential (harmonic bonds + harmonic angles + Lennard-Jones) written
both as an OpenMM System and in torch. Tolerances are derived from the central difference's error
model (see ``hvp_error_bound``), not tuned.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import openmm as mm
import openmm.unit as u
from torch.func import grad, hessian, jvp

from openmm_actionml.errors import InputError, ModelMismatchError, SimulationInstabilityError
from openmm_actionml.openmm_potential import OpenMMPotential

UNIT_ROUNDOFF = np.finfo(np.float64).eps / 2  # u = 2^-53: |fl(a op b) - a op b| <= u |a op b|

# ---------------------------------------------------------------- the test double
N = 5
BONDS = [(i, i + 1) for i in range(N - 1)]
ANGLES = [(i, i + 1, i + 2) for i in range(N - 2)]
BOND_K, BOND_R0 = 2.0e5, 0.15          # kJ/mol/nm^2, nm: as stiff as a C-H bond
ANGLE_K, ANGLE_T0 = 400.0, 1.91        # kJ/mol/rad^2, rad
LJ_EPSILON, LJ_SIGMA = 0.6, 0.25       # kJ/mol, nm
NONBONDED = [(i, j) for i in range(N) for j in range(i + 2, N)]  # bonded pairs are excluded
DISTRACTOR_GROUP = 30                  # a force in the learned group, which must be ignored by default


def make_system() -> mm.System:
    system = mm.System()
    for _ in range(N):
        system.addParticle(12.0)
    bonds = mm.HarmonicBondForce()
    for i, j in BONDS:
        bonds.addBond(i, j, BOND_R0, BOND_K)
    bonds.setForceGroup(0)
    angles = mm.HarmonicAngleForce()
    for i, j, k in ANGLES:
        angles.addAngle(i, j, k, ANGLE_T0, ANGLE_K)
    angles.setForceGroup(1)
    lj = mm.CustomNonbondedForce("4*eps*((sig/r)^12 - (sig/r)^6)")
    lj.addGlobalParameter("eps", LJ_EPSILON)
    lj.addGlobalParameter("sig", LJ_SIGMA)
    for _ in range(N):
        lj.addParticle([])
    for i, j in BONDS:
        lj.addExclusion(i, j)
    lj.setNonbondedMethod(mm.CustomNonbondedForce.NoCutoff)
    lj.setForceGroup(2)
    distractor = mm.CustomExternalForce("1000*(x^2 + y^2 + z^2)")
    for i in range(N):
        distractor.addParticle(i, [])
    distractor.setForceGroup(DISTRACTOR_GROUP)
    for force in (bonds, angles, lj, distractor):
        system.addForce(force)
    system.addForce(mm.CMMotionRemover())
    return system


def _terms(q: torch.Tensor, magnitude: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-term energies (bonds, angles, LJ pairs) of one configuration ``q[N, 3]``.

    ``magnitude=True`` adds instead of subtracting the pieces that cancel (``r - r0``, ``theta - theta0``,
    ``r^-12 - r^-6``): the gradient of that bounds the size of the numbers a term's force is computed from.
    """
    sign = 1.0 if magnitude else -1.0
    b = torch.tensor(BONDS)
    r = (q[b[:, 1]] - q[b[:, 0]]).norm(dim=-1)
    bond = 0.5 * BOND_K * (r + sign * BOND_R0) ** 2
    a = torch.tensor(ANGLES)
    d1, d2 = q[a[:, 0]] - q[a[:, 1]], q[a[:, 2]] - q[a[:, 1]]
    cos = (d1 * d2).sum(-1) / (d1.norm(dim=-1) * d2.norm(dim=-1))
    angle = 0.5 * ANGLE_K * (torch.acos(cos) + sign * ANGLE_T0) ** 2
    p = torch.tensor(NONBONDED)
    s6 = (LJ_SIGMA / (q[p[:, 1]] - q[p[:, 0]]).norm(dim=-1)) ** 6
    lj = 4 * LJ_EPSILON * (s6 ** 2 + sign * s6)
    return bond, angle, lj


def torch_energy(q: torch.Tensor) -> torch.Tensor:
    return sum(t.sum() for t in _terms(q))


def torch_forces(q: torch.Tensor) -> torch.Tensor:
    return -grad(torch_energy)(q)


def configurations(batch: int, seed: int = 0) -> torch.Tensor:
    """Zig-zag chains near the bond and angle minima, randomly perturbed (float64, nm)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.zeros(N, 3, dtype=torch.float64)
    half = ANGLE_T0 / 2
    base[:, 0] = BOND_R0 * np.sin(half) * torch.arange(N)
    base[1::2, 1] = BOND_R0 * np.cos(half)
    base = base + torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)  # away from the origin: rounding of |x|
    return base + 0.01 * torch.randn(batch, N, 3, generator=generator, dtype=torch.float64)


@pytest.fixture(scope="module")
def system() -> mm.System:
    return make_system()


@pytest.fixture(scope="module")
def potential(system) -> OpenMMPotential:
    return OpenMMPotential(system)


# ---------------------------------------------------------------- the error model
C_TERM = 64.0  # bound on rounded operations per force term (< 30 flops and libm ulps) plus terms summed per atom (< N)


def force_rounding_bound(q: torch.Tensor) -> torch.Tensor:
    """dF_i = u (C S_i + sum_j |H_ij| |x_j|): bound on the rounding error of a double-precision force.

    S_i sums over terms |term's force on i| computed with every cancelling piece taken in absolute
    value (``_terms(magnitude=True)``); the |H| |x| part is the effect of rounding the positions.
    """
    jacobian = torch.autograd.functional.jacobian(lambda x: torch.cat(_terms(x, magnitude=True)), q)  # [T, N, 3]
    s = jacobian.abs().sum(0)
    h = hessian(torch_energy)(q).reshape(3 * N, 3 * N).abs()
    position_rounding = (h @ q.abs().reshape(-1)).reshape(N, 3)
    return UNIT_ROUNDOFF * (C_TERM * s + position_rounding)


def hvp_error_bound(q: torch.Tensor, w: torch.Tensor, a: float, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Componentwise bound on |grad_OpenMM - grad_torch| of L = <w, F(q)> + a E(q), one configuration.

    grad L = -a F - H w. OpenMMPotential replaces H w by the central difference
        D = -(F(q + eps w^) - F(q - eps w^)) / (2 eps) |w|,   w^ = w / |w|.
    Taylor expansion of f(t) = F(q + t w^) gives (f(eps) - f(-eps)) / (2 eps) = f'(0) + eps^2/6 f'''(0) + O(eps^4),
    and f'(0) = -H w^, so
        D - H w = -(eps^2 / 6) f'''(0) |w|                           (truncation)
    and each evaluated force carries a rounding error dF (below), which the difference divides by 2 eps:
        |error of D| <= |w| dF / eps                                (round-off, two evaluations)
    Rounding error of one force component i in double precision (u = 2^-53): each energy term is
    computed from coordinate differences and a few dozen rounded operations, so its force carries
    relative error <= C u (C_TERM); and the rounding of the positions themselves (|dx_j| <= u |x_j|, also when forming
    q +- eps w^) moves F_i by (|H| |x|)_i. So dF_i = u (C S_i + sum_j |H_ij| |x_j|), S_i being the sum over terms of
    |term's force on i| computed from absolute values of the term's pieces (so that cancellation inside
    a term, e.g. LJ's r^-12 - r^-6 or a bond's r - r0, does not hide its rounding).
    The torch reference adds its own rounding: dF for F and C u (|H| |w|)_i for H w.

    Returns (truncation vector (eps^2/6) f'''(0) |w|, i.e. the predicted grad_OpenMM - grad_torch, and
    the round-off bound).
    """
    norm = float(w.norm())
    w_hat = w / norm
    one = torch.ones((), dtype=q.dtype)

    def along(t):
        return torch_forces(q + t * w_hat)

    def d1(t):
        return jvp(along, (t,), (one,))[1]

    def d2(t):
        return jvp(d1, (t,), (one,))[1]

    third = jvp(d2, (torch.zeros((), dtype=q.dtype),), (one,))[1]
    truncation = (epsilon ** 2 / 6.0) * third * norm

    d_f = force_rounding_bound(q)
    h = hessian(torch_energy)(q).reshape(3 * N, 3 * N).abs()
    torch_hw = UNIT_ROUNDOFF * C_TERM * (h @ w.abs().reshape(-1)).reshape(N, 3)
    roundoff = 2 * abs(a) * d_f + norm * d_f / epsilon + torch_hw
    return truncation.detach().numpy(), roundoff.detach().numpy()



def direct(system: mm.System, x: np.ndarray, groups: int = (1 << 30) - 1, box=None) -> tuple[float, np.ndarray]:
    """Energy and forces straight from a fresh Reference Context."""
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(x)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return (state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))


# ---------------------------------------------------------------- forward
def test_forward_equals_openmm_and_torch_double(system, potential):
    q = configurations(3)
    energy, forces = potential.energy_and_forces(q)
    assert energy.shape == (3,) and forces.shape == (3, N, 3) and energy.dtype == torch.float64
    for b in range(3):
        e, f = direct(system, q[b].numpy())
        assert energy[b].item() == e          # same platform, same arithmetic: bitwise equal
        np.testing.assert_array_equal(forces[b].numpy(), f)
        # and the test double is the same potential (to rounding; see hvp_error_bound for the size of dF)
        np.testing.assert_allclose(energy[b].item(), torch_energy(q[b]).item(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(forces[b].numpy(), torch_forces(q[b]).numpy(), rtol=1e-10, atol=1e-8)


def test_default_groups_ignore_learned_group_and_groups_select(system, potential):
    q = configurations(1)[0].numpy()
    e_all, _ = direct(system, q, groups=0xFFFFFFFF)
    e_ff, _ = direct(system, q)
    assert e_all != e_ff                                  # the distractor in group 30 contributes...
    assert potential.energy(q) == e_ff                    # ...but not to V
    bonds_only = OpenMMPotential(system, groups=[0])
    e0, f0 = direct(system, q, groups=1)
    assert bonds_only.energy(q) == e0
    np.testing.assert_array_equal(bonds_only.forces(q), f0)


def test_system_is_copied(system):
    before = mm.XmlSerializer.serialize(system)
    pot = OpenMMPotential(system)
    assert mm.XmlSerializer.serialize(system) == before
    q = configurations(1)[0].numpy()
    e = pot.energy(q)
    system.getForce(0).setBondParameters(0, 0, 1, BOND_R0, 2 * BOND_K)   # later edits do not leak in
    try:
        assert pot.energy(q) == e
    finally:
        system.getForce(0).setBondParameters(0, 0, 1, BOND_R0, BOND_K)


def test_shapes_and_dtypes(potential):
    q = configurations(6)
    energy, forces = potential.energy_and_forces(q[0])
    assert energy.shape == () and forces.shape == (N, 3)
    energy4, forces4 = potential.energy_and_forces(q.reshape(2, 3, N, 3))
    assert energy4.shape == (2, 3) and forces4.shape == (2, 3, N, 3)
    assert energy4.reshape(-1)[0] == energy and torch.equal(forces4.reshape(-1, N, 3)[0], forces)
    q32 = q.float().requires_grad_(True)
    energy32, forces32 = potential.energy_and_forces(q32)
    assert energy32.dtype == torch.float32 and forces32.dtype == torch.float32
    (forces32.sum() + energy32.sum()).backward()
    assert q32.grad.dtype == torch.float32 and q32.grad.shape == q32.shape and torch.isfinite(q32.grad).all()
    # numpy diagnostics share the implementation
    e_np, f_np = potential.evaluate(q.numpy())
    assert e_np.shape == (6,) and f_np.shape == (6, N, 3)
    np.testing.assert_array_equal(potential.forces(q.numpy()), potential.energy_and_forces(q)[1].numpy())
    assert potential.energy(q[0].numpy() * u.nanometer).shape == ()


# ---------------------------------------------------------------- backward
def test_energy_gradient_is_minus_forces_exactly(potential):
    q = configurations(4).requires_grad_(True)
    energy, forces = potential.energy_and_forces(q)
    weights = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    (gradient,) = torch.autograd.grad((weights * energy).sum(), q)
    assert torch.equal(gradient, -weights[:, None, None] * forces.detach())


@pytest.mark.parametrize("epsilon", [1e-5, 2e-3])
def test_backward_hvp_matches_autograd_on_torch_potential(system, epsilon):
    """grad of L = sum(w * F) + sum(a * E) through OpenMM vs exact autograd through the torch double.

    At eps = 1e-5 (the default) round-off and truncation are both far below the Hessian's size and the
    error must sit under their bound. At eps = 2e-3 truncation dominates and the error must *be* the
    predicted eps^2/6 f''' |w| (to its O(eps^4) remainder), which checks the error model itself.
    """
    pot = OpenMMPotential(system, epsilon=epsilon)
    batch = 3
    q = configurations(batch, seed=1)
    generator = torch.Generator().manual_seed(2)
    w = torch.randn(batch, N, 3, generator=generator, dtype=torch.float64)
    w[1] *= 1e-3                                              # normalisation: scale of w must not matter
    a = torch.tensor([0.7, -1.3, 0.0], dtype=torch.float64)
    q_omm = q.clone().requires_grad_(True)
    energy, forces = pot.energy_and_forces(q_omm)
    (g_omm,) = torch.autograd.grad((w * forces).sum() + (a * energy).sum(), q_omm)
    for b in range(batch):
        def loss(x, b=b):
            return (w[b] * torch_forces(x)).sum() + a[b] * torch_energy(x)
        g_torch = grad(loss)(q[b])
        truncation, roundoff = hvp_error_bound(q[b], w[b], float(a[b]), epsilon)
        error = (g_omm[b] - g_torch).numpy()
        hw = (hessian(torch_energy)(q[b]).reshape(3 * N, 3 * N) @ w[b].reshape(-1)).abs().max().item()
        if epsilon < 1e-4:
            bound = np.abs(truncation) + roundoff
            assert (np.abs(error) <= bound).all(), (np.abs(error) / bound).max()
            assert bound.max() < 1e-6 * hw                  # the bound is not vacuous: ~1e-8 relative
        else:
            # O(eps^4) remainder: eps^2/6 f''' times (eps^2 f^(5)/f''' * 6/120) <~ 1e-3 relative here
            assert np.abs(truncation).max() > 100 * roundoff.max()
            np.testing.assert_allclose(error, truncation, rtol=0, atol=1e-2 * np.abs(truncation).max())


def test_gradcheck_double(system):
    """torch.autograd.gradcheck on energies and forces (so the backward's HVP and -F) in float64.

    gradcheck's own central difference with step h has round-off ~dF/h on each Jacobian entry, and
    our HVP has ~dF/eps (hvp_error_bound); truncation of both is ~1e-8 relative or less. Hence
    atol = dF_max (1/h + 1/eps) with dF from the same rounding model, and rtol from the truncation.
    """
    pot = OpenMMPotential(system)
    q = configurations(1, seed=3)[0]
    h_step = 1e-6
    d_f = float(force_rounding_bound(q).max())
    atol = d_f * (1 / h_step + 1 / pot.epsilon)
    assert torch.autograd.gradcheck(lambda x: pot.energy_and_forces(x), (q.clone().requires_grad_(True),),
                                    eps=h_step, atol=atol, rtol=1e-6)


def test_zero_and_missing_cotangents(potential):
    q = configurations(3).requires_grad_(True)
    energy, forces = potential.energy_and_forces(q)
    w = torch.zeros_like(q)
    w[1] = torch.randn(N, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (g,) = torch.autograd.grad((w * forces).sum(), q)
    assert torch.equal(g[0], torch.zeros_like(g[0])) and torch.equal(g[2], torch.zeros_like(g[2]))
    assert g[1].abs().max() > 0


def test_second_derivative_through_energy_and_no_third(potential):
    """Forces taken by autograd of E (create_graph) feed a loss: that is the HVP again, so it works."""
    q = configurations(2, seed=7).requires_grad_(True)
    w = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    energy, forces = potential.energy_and_forces(q)
    (minus_f,) = torch.autograd.grad(energy.sum(), q, create_graph=True)
    (g_via_energy,) = torch.autograd.grad((w * -minus_f).sum(), q, retain_graph=True)
    (g_via_forces,) = torch.autograd.grad((w * forces).sum(), q, retain_graph=True)
    assert torch.equal(g_via_energy, g_via_forces)
    (g1,) = torch.autograd.grad((w * forces).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad(g1.pow(2).sum(), q)


def test_hessian_vector_product_numpy(potential):
    q = configurations(2, seed=4)
    v = torch.randn(2, N, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    hv = potential.hessian_vector_product(q.numpy(), v.numpy())
    for b in range(2):
        exact = (hessian(torch_energy)(q[b]).reshape(3 * N, 3 * N) @ v[b].reshape(-1)).reshape(N, 3).numpy()
        np.testing.assert_allclose(hv[b], exact, rtol=0, atol=1e-7 * np.abs(exact).max())


# ---------------------------------------------------------------- periodic boxes
def test_periodic_default_and_per_batch_boxes():
    system = mm.System()
    for _ in range(3):
        system.addParticle(1.0)
    lj = mm.CustomNonbondedForce("4*((0.3/r)^12 - (0.3/r)^6)")
    for _ in range(3):
        lj.addParticle([])
    lj.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    lj.setCutoffDistance(0.9)
    system.addForce(lj)
    default = [mm.Vec3(2.0, 0, 0), mm.Vec3(0, 2.0, 0), mm.Vec3(0, 0, 2.0)]
    system.setDefaultPeriodicBoxVectors(*default)
    pot = OpenMMPotential(system)
    q = torch.tensor([[[0.1, 0.1, 0.1], [1.75, 0.1, 0.1], [0.1, 0.5, 0.1]]] * 2, dtype=torch.float64)
    boxes = torch.stack([torch.eye(3, dtype=torch.float64) * 2.0, torch.eye(3, dtype=torch.float64) * 1.9])
    e_default, _ = pot.energy_and_forces(q)
    e_boxes, f_boxes = pot.energy_and_forces(q, boxes)
    for b in range(2):
        e, f = direct(system, q[b].numpy(), box=[mm.Vec3(*row) for row in boxes[b].tolist()])
        assert e_boxes[b].item() == e
        np.testing.assert_array_equal(f_boxes[b].numpy(), f)
    assert e_default[1] == e_default[0] == e_boxes[0] != e_boxes[1]
    assert pot.energy(q.numpy())[1] == e_default[1].item()                     # back to the default box
    q_grad = q.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pot.energy_and_forces(q_grad, boxes)[1].pow(2).sum(), q_grad)
    assert torch.isfinite(g).all()


# ---------------------------------------------------------------- errors
def test_bad_inputs(system, potential):
    q = configurations(2)
    with pytest.raises(ModelMismatchError, match=f"System has {N}"):
        potential.energy_and_forces(q[:, :-1])
    with pytest.raises(InputError, match=r"\[\.\.\., 5, 3\]"):
        potential.energy_and_forces(q[..., :2])
    with pytest.raises(InputError, match="floating-point"):
        potential.energy_and_forces(q.long())
    bad = q.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(SimulationInstabilityError, match="configuration 1.*smaller time step"):
        potential.energy_and_forces(bad)
    overlap = q.clone()
    overlap[0, 3] = overlap[0, 1]
    with pytest.raises(SimulationInstabilityError, match="overlap"):
        potential.forces(overlap.numpy())
    lenient = OpenMMPotential(system, nonfinite="nan")
    energy, forces = lenient.energy_and_forces(bad)
    assert torch.isnan(energy[1]) and torch.isnan(forces[1]).all()
    assert energy[0].item() == potential.energy(q[0].numpy())
    with pytest.raises(InputError, match="no particles"):
        OpenMMPotential(mm.System())
    with pytest.raises(InputError, match="0-31"):
        OpenMMPotential(system, groups=[32])
    with pytest.raises(InputError, match="positive"):
        OpenMMPotential(system, epsilon=0.0)
    with pytest.raises(InputError, match="not periodic"):
        potential.energy_and_forces(q, torch.eye(3, dtype=torch.float64))
    with pytest.raises(InputError, match="platform"):
        OpenMMPotential(system, platform="NoSuchPlatform")
    with pytest.raises(InputError, match="openmm.System"):
        OpenMMPotential("system.xml")


def test_virtual_sites_have_zero_force_and_gradient():
    """OpenMM keeps the redistributed force on a virtual site; V does not depend on its input position."""
    system = mm.System()
    for mass in (1.0, 1.0, 0.0, 1.0):
        system.addParticle(mass)
    system.setVirtualSite(2, mm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    bonds = mm.CustomBondForce("100*(r-0.2)^2")
    bonds.addBond(2, 3, [])
    bonds.addBond(0, 1, [])
    system.addForce(bonds)
    pot = OpenMMPotential(system)
    q = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [5.0, 5, 5], [0.1, 0.25, 0]], dtype=torch.float64)
    energy, forces = pot.energy_and_forces(q)
    moved = q.clone()
    moved[2] = 0.0
    assert pot.energy_and_forces(moved)[0] == energy      # the site's input position is ignored
    assert torch.equal(forces[2], torch.zeros(3, dtype=torch.float64))
    # the parents carry the site's share: F = -dE/dq = 100*2*(0.25-0.2) split in halves along y
    torch.testing.assert_close(forces[:, 1], torch.tensor([5.0, 5.0, 0.0, -10.0], dtype=torch.float64))
