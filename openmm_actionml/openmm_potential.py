"""The force field ``V`` as a differentiable torch function backed by an OpenMM Context.

Anchored training kicks with ``W_k = V + dW_k`` at positions that depend on the model's
parameters, so the training loss depends on ``F = -grad V`` at those positions and its gradient
needs ``d<g, F>/dq = -H g``: a Hessian-vector product of ``V``. OpenMM gives energies and forces
but no Hessian, so the backward pass takes a central difference of forces along ``g``:

    H g ~= -(F(q + eps*g_hat) - F(q - eps*g_hat)) / (2*eps) * |g|,   g_hat = g / |g|,

where ``|g|`` is the norm over all ``3N`` coordinates of one configuration. Normalising keeps the
displacement at ``eps`` whatever the scale of ``g``. The error has two parts, for a given
configuration:

* truncation, ``(eps**2 / 6) * |d^3 F / dt^3|`` along ``q + t*g_hat``, times ``|g|``;
* round-off, about ``(rounding error of F) / eps``, times ``|g|``.

With ``eps = 1e-5`` nm and double-precision forces (Reference platform) both parts are about
1e-9 to 1e-8 of ``|H g|`` (measured on alanine dipeptide; the tests check the error model on an
analytic potential). The CPU platform computes forces in single/mixed precision (about 1e-7
relative) and has no double mode, so its round-off term ``~1e-7 |F| / eps`` is much larger: measured
4e-5 of ``|H g|`` for alanine dipeptide in vacuum at eps = 1e-5 (best, 2e-6, at eps ~ 3e-4), but
percent-level for a solvated PME system. For the 22-atom vacuum system the Reference platform is
also about 3x faster than CPU (per configuration: 20 us per evaluation, 40 us per HVP), so
'Reference' is the default. For large periodic systems CPU is ~7x faster but its HVP is noisy.

Caveat for cutoff methods: V is not smooth where a pair crosses the cutoff (the Ewald direct-space
Coulomb term jumps by about ``ewaldErrorTolerance``; LJ too unless switched). When a crossing falls
inside ``+-eps`` the difference quotient picks up ``jump / (2 eps)``: measured spikes up to ~5e-3 of
``|H g|`` for solvated alanine dipeptide at the default tolerance 5e-4, and ~1e-5 at tolerance 1e-6.

Everything OpenMM computes is read in float64. Outputs follow the dtype and device of the input.
One OpenMM Context is reused for every call, so an ``OpenMMPotential`` is not thread-safe.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import torch  # noqa: F401  (torch must be imported before openmm so openmmtorch's plugins load)
import openmm as mm
import openmm.unit as u
from torch import Tensor

from .errors import InputError, ModelMismatchError, SimulationInstabilityError
from .platforms import get_platform, platform_properties
from .systems import default_box
from .units import positive_float, strip_unit

__all__ = ["OpenMMPotential", "DEFAULT_EPSILON", "FORCE_FIELD_GROUPS"]

DEFAULT_EPSILON = 1e-5
"""Default central-difference step for Hessian-vector products, in nm (the norm of the whole displacement)."""

FORCE_FIELD_GROUPS = tuple(range(30))
"""Force groups of the force field; 30 and 31 are reserved for the learned force (see docs/architecture.md)."""

_NONFINITE_MODES = ("raise", "nan")


def _groups_mask(groups: Optional[Iterable[int]]) -> int:
    groups = FORCE_FIELD_GROUPS if groups is None else groups
    if isinstance(groups, (int, np.integer)):
        groups = [int(groups)]
    mask = 0
    for group in groups:
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= int(group) <= 31:
            raise InputError(f"force groups must be integers 0-31, got {group!r}.")
        mask |= 1 << int(group)
    if mask == 0:
        raise InputError("groups is empty; pass the force groups of the force field (default: 0-29).")
    return mask


class OpenMMPotential:
    """The potential energy ``V`` and forces ``-grad V`` of an OpenMM System, usable from torch.

    Parameters
    ----------
    system
        The System. It is copied (through ``XmlSerializer``), so later changes to it, and the
        Context made here, do not affect each other. Forces outside ``groups`` are left out of the copy.
    platform
        OpenMM platform name (default ``'Reference'``, double precision). See the module docstring for
        the speed and the Hessian-vector-product accuracy of the single/mixed-precision CPU platform.
    groups
        Force groups to evaluate; default all of the force field's groups, 0-29 (30 and 31 hold the
        learned force).
    epsilon
        Central-difference step for Hessian-vector products, in nm (or a length Quantity).
    precision
        Precision property for platforms that have one (CUDA, OpenCL, HIP); default ``'double'``.
        Reference is always double; CPU is always single/mixed and has no such property.
    nonfinite
        ``'raise'`` (default): NaN or infinite positions, energies or forces raise
        ``SimulationInstabilityError``. ``'nan'``: such configurations get NaN energy and forces and
        the rest of the batch is evaluated normally (for stability gates that discard blown-up
        trajectories themselves).
    properties
        Extra platform properties, e.g. ``{'Threads': '1'}``.

    Notes
    -----
    Virtual sites: their input positions are ignored (OpenMM recomputes them from their parent
    atoms) and their forces are reported as zero, so ``F = -dE/dq`` holds for every particle.
    """

    def __init__(self, system: mm.System, platform: str | mm.Platform | None = "Reference",
                 groups: Optional[Iterable[int]] = None, epsilon: Any = DEFAULT_EPSILON,
                 precision: Optional[str] = "double", nonfinite: str = "raise",
                 properties: Optional[dict[str, str]] = None) -> None:
        if not isinstance(system, mm.System):
            raise InputError(f"system must be an openmm.System, got {type(system).__name__}.")
        if system.getNumParticles() == 0:
            raise InputError("the System has no particles; build it from a topology with atoms "
                             "(e.g. ForceField.createSystem(pdb.topology)).")
        if nonfinite not in _NONFINITE_MODES:
            raise InputError(f"nonfinite must be one of {_NONFINITE_MODES}, got {nonfinite!r}.")
        self.epsilon = positive_float(epsilon, u.nanometer, "epsilon")
        self.groups_mask = _groups_mask(groups)
        self.nonfinite = nonfinite
        self.periodic = system.usesPeriodicBoundaryConditions()   # of the whole System, before pruning
        self.system = mm.XmlSerializer.clone(system)
        for index in reversed(range(self.system.getNumForces())):
            if not (self.groups_mask >> self.system.getForce(index).getForceGroup()) & 1:
                self.system.removeForce(index)
        self.n_particles = self.system.getNumParticles()
        self.virtual_sites = np.array([i for i in range(self.n_particles) if self.system.isVirtualSite(i)], dtype=int)
        self.has_virtual_sites = len(self.virtual_sites) > 0
        platform_object = get_platform(platform)
        props = dict(platform_properties(platform_object, precision))
        props.update(properties or {})
        self._integrator = mm.VerletIntegrator(0.001)
        if platform_object is None:
            self.context = mm.Context(self.system, self._integrator)
        else:
            self.context = mm.Context(self.system, self._integrator, platform_object, props)
        self.platform_name = self.context.getPlatform().getName()
        self.default_box = default_box(self.system)
        self._current_box = self.default_box.copy()

    def __repr__(self) -> str:
        return (f"OpenMMPotential({self.n_particles} particles, platform={self.platform_name!r}, "
                f"groups mask {self.groups_mask:#x}, epsilon={self.epsilon:g} nm)")

    # ------------------------------------------------------------------ input checks
    def _check_positions(self, q: Any) -> np.ndarray:
        """``q[..., N, 3]`` (nm, array or Quantity) -> float64 array of the same shape."""
        q = strip_unit(q, u.nanometer, "positions")
        try:
            x = np.asarray(q, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InputError(f"positions must be a numeric array of shape [..., {self.n_particles}, 3] in nm; "
                             f"could not convert it ({error}).") from None
        if x.ndim < 2 or x.shape[-1] != 3:
            raise InputError(f"positions must have shape [..., {self.n_particles}, 3] (nm), got {tuple(x.shape)}.")
        if x.shape[-2] != self.n_particles:
            raise ModelMismatchError(f"positions have {x.shape[-2]} particles but the System has "
                                     f"{self.n_particles}; pass coordinates of every particle of this System "
                                     f"(including virtual sites and solvent), shape [..., {self.n_particles}, 3].")
        return x

    def _check_boxes(self, box: Any, batch_shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """``box`` -> float64 ``[M, 3, 3]`` (one per flattened configuration) or None for the default box."""
        if box is None:
            return None
        if not self.periodic:
            raise InputError("box vectors were given but the System is not periodic; leave box=None.")
        if isinstance(box, Tensor):
            box = box.detach().to("cpu", torch.float64).numpy()
        box = np.asarray(strip_unit(box, u.nanometer, "box"), dtype=np.float64)
        if box.shape[-2:] != (3, 3):
            raise InputError(f"box must have shape [3, 3] or [..., 3, 3] (rows a, b, c in nm), got {box.shape}.")
        try:
            box = np.broadcast_to(box, batch_shape + (3, 3))
        except ValueError:
            raise InputError(f"box of shape {box.shape} does not match positions with batch shape "
                             f"{batch_shape}; pass one [3, 3] box or one per configuration.") from None
        if not np.isfinite(box).all():
            raise SimulationInstabilityError("box vectors contain NaN or infinity; the barostat or the "
                                             "integration blew up upstream.")
        return box.reshape(-1, 3, 3)

    # ------------------------------------------------------------------ the one evaluation loop
    def _set_box(self, box: np.ndarray) -> None:
        if not np.array_equal(box, self._current_box):
            try:
                self.context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
            except mm.OpenMMException as error:
                raise InputError(f"OpenMM rejected box vectors {box.tolist()}: {error}") from None
            self._current_box = box.copy()

    def _evaluate(self, x: np.ndarray, boxes: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``[M]`` (kJ/mol) and forces ``[M, N, 3]`` (kJ/mol/nm) at checked positions ``x[M, N, 3]``."""
        energies = np.empty(len(x), dtype=np.float64)
        forces = np.empty_like(x)
        finite = np.isfinite(x).all(axis=(1, 2))
        if boxes is None and self.periodic:
            self._set_box(self.default_box)
        for index in range(len(x)):
            if not finite[index]:
                self._nonfinite(index, "positions")
                energies[index] = np.nan
                forces[index] = np.nan
                continue
            if boxes is not None:
                self._set_box(boxes[index])
            self.context.setPositions(x[index])
            if self.has_virtual_sites:
                self.context.computeVirtualSites()
            state = self.context.getState(getEnergy=True, getForces=True, groups=self.groups_mask)
            energies[index] = state.getPotentialEnergy()._value        # kJ/mol
            forces[index] = state.getForces(asNumpy=True)._value        # kJ/mol/nm
            if self.has_virtual_sites:   # OpenMM leaves the (already redistributed) force on the site itself
                forces[index, self.virtual_sites] = 0.0
            if not (np.isfinite(energies[index]) and np.isfinite(forces[index]).all()):
                self._nonfinite(index, "energy or forces")
        return energies, forces

    def _nonfinite(self, index: int, what: str) -> None:
        if self.nonfinite == "raise":
            raise SimulationInstabilityError(
                f"configuration {index} of the batch has non-finite {what}. "
                + ("The positions are NaN or infinite: the trajectory blew up upstream; use a smaller time step "
                   "or a lower learning rate, or check the input data." if what == "positions" else
                   "Atoms probably overlap (e.g. unminimised or corrupted coordinates); minimise the structure "
                   "or check that the positions belong to this System.")
                + " Pass nonfinite='nan' to get NaN for such configurations instead.")

    def _hvp(self, x: np.ndarray, vectors: np.ndarray, boxes: Optional[np.ndarray] = None) -> np.ndarray:
        """``H v`` per configuration by a central difference of forces along ``v / |v|`` (``x, v: [M, N, 3]``)."""
        norms = np.sqrt((vectors ** 2).sum(axis=(1, 2)))
        result = np.zeros_like(x)
        result[~np.isfinite(norms)] = np.nan
        active = np.flatnonzero(np.isfinite(norms) & (norms > 0))
        if len(active) == 0:
            return result
        step = self.epsilon * vectors[active] / norms[active, None, None]
        displaced = np.concatenate([x[active] + step, x[active] - step])
        both_boxes = None if boxes is None else np.concatenate([boxes[active], boxes[active]])
        _, f = self._evaluate(displaced, both_boxes)
        f_plus, f_minus = f[:len(active)], f[len(active):]
        result[active] = -(f_plus - f_minus) * (norms[active] / (2.0 * self.epsilon))[:, None, None]
        return result

    # ------------------------------------------------------------------ numpy API (diagnostics)
    def evaluate(self, q: Any, box: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``[...]`` (kJ/mol) and forces ``[..., N, 3]`` (kJ/mol/nm) at ``q[..., N, 3]`` (nm), float64."""
        x = self._check_positions(q)
        boxes = self._check_boxes(box, x.shape[:-2])
        energies, forces = self._evaluate(x.reshape(-1, self.n_particles, 3), boxes)
        return energies.reshape(x.shape[:-2]), forces.reshape(x.shape)

    def energy(self, q: Any, box: Any = None) -> np.ndarray:
        """Potential energies ``[...]`` in kJ/mol at ``q[..., N, 3]``."""
        return self.evaluate(q, box)[0]

    def forces(self, q: Any, box: Any = None) -> np.ndarray:
        """Forces ``[..., N, 3]`` in kJ/mol/nm at ``q[..., N, 3]``."""
        return self.evaluate(q, box)[1]

    def hessian_vector_product(self, q: Any, v: Any, box: Any = None) -> np.ndarray:
        """``H v`` (kJ/mol/nm^2 times v's unit) at ``q[..., N, 3]`` by central differences of forces."""
        x = self._check_positions(q)
        vectors = np.asarray(v, dtype=np.float64)
        if vectors.shape != x.shape:
            raise InputError(f"v must have the shape of the positions {x.shape}, got {vectors.shape}.")
        boxes = self._check_boxes(box, x.shape[:-2])
        shape = (-1, self.n_particles, 3)
        return self._hvp(x.reshape(shape), vectors.reshape(shape), boxes).reshape(x.shape)

    # ------------------------------------------------------------------ torch API (training)
    def energy_and_forces(self, q: Tensor, box: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Energies ``[...]`` and forces ``[..., N, 3]`` at ``q[..., N, 3]``, differentiable in ``q``.

        ``q[N, 3]`` gives a 0-dim energy and ``[N, 3]`` forces; ``q[B, N, 3]`` gives ``[B]`` and ``[B, N, 3]``.
        Results have ``q``'s dtype and device (OpenMM computes in float64). The backward pass
        returns ``-gE * F - H gF`` with the Hessian-vector product by central differences of forces
        (one backward costs two force evaluations per configuration with nonzero ``gF``). Second
        derivatives through ``E`` work (they reach the HVP); third derivatives of V raise. ``box`` ([3, 3] or one per configuration, nm) is
        for periodic Systems whose box differs from the System's default; no gradient flows to it.
        """
        if not isinstance(q, Tensor):
            raise InputError(f"q must be a torch.Tensor (use evaluate() for numpy arrays), got {type(q).__name__}.")
        if not torch.is_floating_point(q):
            raise InputError(f"q must be a floating-point tensor of positions in nm, got dtype {q.dtype}.")
        return _EnergyAndForces.apply(q, box, self)

    def __call__(self, q: Tensor, box: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return self.energy_and_forces(q, box)


class _EnergyAndForces(torch.autograd.Function):
    """``q -> (V(q), F(q))`` through OpenMM.

    Backward returns ``-gE * F - H gF``. The ``-gE * F`` term is written with the saved output ``F``, so it
    is itself differentiable (a second derivative through ``E``, e.g. forces taken by
    ``autograd.grad(E, q, create_graph=True)``, goes through this Function's backward again, i.e. the
    HVP). ``H gF`` comes from ``_HessianVectorProduct``, whose own backward (third derivatives of V)
    raises instead of silently returning nothing.
    """

    @staticmethod
    def forward(ctx, q: Tensor, box: Optional[Tensor], potential: OpenMMPotential) -> tuple[Tensor, Tensor]:
        x = potential._check_positions(q.detach().to("cpu", torch.float64).numpy())
        batch_shape = x.shape[:-2]
        boxes = potential._check_boxes(box, batch_shape)
        x = x.reshape(-1, potential.n_particles, 3)
        energies, forces = potential._evaluate(x, boxes)
        energy = torch.from_numpy(energies.reshape(batch_shape)).to(device=q.device, dtype=q.dtype)
        force = torch.from_numpy(forces.reshape(q.shape)).to(device=q.device, dtype=q.dtype)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, force)
        ctx.potential, ctx.x, ctx.boxes = potential, x, boxes
        return energy, force

    @staticmethod
    def backward(ctx, grad_energy: Optional[Tensor], grad_forces: Optional[Tensor]):
        q, force = ctx.saved_tensors
        grad = None
        if grad_energy is not None:          # dE/dq = -F
            grad = -grad_energy[..., None, None] * force
        if grad_forces is not None:          # d<gF, F>/dq = -H gF
            hv = _HessianVectorProduct.apply(q, grad_forces, ctx.potential, ctx.x, ctx.boxes)
            grad = -hv if grad is None else grad - hv
        return grad, None, None


class _HessianVectorProduct(torch.autograd.Function):
    """``H g`` at the saved positions by central differences; ``q`` is an input only to mark the dependence."""

    @staticmethod
    def forward(ctx, q: Tensor, g: Tensor, potential: OpenMMPotential, x: np.ndarray,
                boxes: Optional[np.ndarray]) -> Tensor:
        vectors = g.detach().to("cpu", torch.float64).reshape(x.shape).numpy()
        return torch.from_numpy(potential._hvp(x, vectors, boxes).reshape(g.shape)).to(device=g.device,
                                                                                       dtype=g.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        raise RuntimeError("OpenMMPotential gives energies, forces and (in backward) Hessian-vector products of V, "
                           "but not third derivatives: a loss may depend on F (or on dE/dq taken with "
                           "create_graph=True) and be differentiated once, not twice.")
