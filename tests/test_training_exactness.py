"""The training loss recovers an exact map where one exists (harmonic oscillator beyond Verlet's limit)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openmm_actionml.splitting import SplittingStepper, get_splitting
from openmm_actionml.training import trajectory_loss

MASS, SPRING = 2.0, 50.0
OMEGA = math.sqrt(SPRING / MASS)


def exact_flow(q: torch.Tensor, v: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (q * math.cos(theta) + v * math.sin(theta) / OMEGA,
            -q * OMEGA * math.sin(theta) + v * math.cos(theta))


@pytest.mark.parametrize("splitting", ["S2", "T3"])
def test_learned_quadratic_kicks_recover_the_exact_rotation(splitting):
    """At h*omega = 2.5 (Verlet is unstable beyond 2) a palindrome of two learned quadratic kick potentials
    has two free parameters, and a symmetric symplectic 2x2 map [[A, B], [C, A]] with AD - BC = 1 has two:
    the exact rotation is reachable, so the loss must fall to round-off and the map must equal the flow."""
    theta = 2.5
    h = theta / OMEGA
    correction = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    correction_now = [correction]

    def kick_forces(q: torch.Tensor, head: int) -> torch.Tensor:
        return -(SPRING + correction_now[0][head]) * q

    stepper = SplittingStepper(get_splitting(splitting), h, torch.tensor([MASS], dtype=torch.float64), kick_forces)
    generator = torch.Generator().manual_seed(0)
    q0 = 0.1 * torch.randn(32, 1, 3, generator=generator, dtype=torch.float64)
    v0 = torch.randn(32, 1, 3, generator=generator, dtype=torch.float64)
    q1, v1 = exact_flow(q0, v0, theta)
    optimizer = torch.optim.LBFGS([correction], max_iter=100, tolerance_grad=1e-15, tolerance_change=1e-18,
                                  line_search_fn="strong_wolfe")

    def loss_of(c: torch.Tensor) -> torch.Tensor:
        correction_now[0] = c
        return trajectory_loss(stepper, torch.stack([q0, q1], 1), torch.stack([v0, v1], 1), kT=2.5)[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(correction)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    # Newton on the same loss: quadratic convergence to the zero-residual minimum, i.e. to round-off.
    for _ in range(4):
        hessian = torch.autograd.functional.hessian(lambda c: loss_of(c), correction.detach())
        gradient = torch.autograd.grad(loss_of(correction), correction)[0]
        with torch.no_grad():
            correction -= torch.linalg.solve(hessian, gradient)
    with torch.no_grad():
        qs, vs = stepper.run(q0, v0, 50)
        q_exact, v_exact = exact_flow(q0, v0, 50 * theta)
    # 50 steps of an exact rotation: only round-off remains, ~ (stages x steps) eps in phase, relative to the
    # amplitude in phase space.
    tolerance = len(stepper.splitting.stages) * 50 * 10 * np.finfo(np.float64).eps
    amplitude_q = (q_exact ** 2 + (v_exact / OMEGA) ** 2).sqrt().max().item()
    assert (qs[-1] - q_exact).abs().max().item() < tolerance * amplitude_q
    assert (vs[-1] - v_exact).abs().max().item() < tolerance * amplitude_q * OMEGA
