r"""Lotka–Volterra predator–prey ODE with log-normal observation noise (as in sbibm).

.. math::
    \dot u = \alpha u - \beta u v, \qquad \dot v = -\gamma v + \delta u v, \qquad
    (u_0, v_0) = (30, 1),

integrated by fourth-order Runge–Kutta (step 0.2) to :math:`t = 20`, observed at
:math:`t = 2, 4, \dots, 20` as :math:`x = \log`-normal noise around both populations,
:math:`x_{t,s} \sim \mathrm{LogNormal}(\log y_{t,s}, 0.1)`, shape ``(20,)`` (prey first).
Prior: :math:`\log(\alpha, \beta, \gamma, \delta) \sim \mathcal N((-0.125, -3, -0.125, -3),
0.5^2 I)`.

Parameters far in the prior's tails can make the explicit integrator blow up; those
simulations return NaN and :func:`simgen.simulate` excludes and counts them.

The likelihood is tractable (Gaussian in :math:`\log x`, :func:`log_likelihood`), but the
posterior is narrow and curved: short many-chain random-walk Metropolis runs from different
seeds disagreed, so no ``reference_posterior`` is shipped rather than an unreliable one. Run
a long MCMC on :func:`log_likelihood` if a reference is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, LogNormal

__all__ = ["prior", "simulator", "solve", "log_likelihood", "theta_o", "x_o"]

DT = 0.2
NUM_STEPS = 100
OBSERVE_EVERY = 10
NOISE = 0.1
PRIOR_LOC = torch.tensor([-0.125, -3.0, -0.125, -3.0])

prior = Independent(LogNormal(PRIOR_LOC, 0.5 * torch.ones(4)), 1)


def _rhs(y: Tensor, p: Tensor) -> Tensor:
    u, v = y[:, 0], y[:, 1]
    return torch.stack([p[:, 0] * u - p[:, 1] * u * v, -p[:, 2] * v + p[:, 3] * u * v], -1)


def solve(theta: Tensor) -> Tensor:
    """Noise-free populations ``(N, 20)`` at the ten observation times (prey, then predators)."""
    y = theta.new_tensor([30.0, 1.0]).expand(theta.shape[0], 2)
    out = []
    for k in range(1, NUM_STEPS + 1):
        k1 = _rhs(y, theta)
        k2 = _rhs(y + 0.5 * DT * k1, theta)
        k3 = _rhs(y + 0.5 * DT * k2, theta)
        k4 = _rhs(y + DT * k3, theta)
        y = y + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if k % OBSERVE_EVERY == 0:
            out.append(y)
    return torch.cat([torch.stack(out, 1)[..., 0], torch.stack(out, 1)[..., 1]], -1)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x`` ``(N, 20)`` for ``theta`` ``(N, 4)``; NaN where the ODE blows up."""
    y = solve(theta)
    noise = torch.randn(y.shape, generator=generator, dtype=theta.dtype)
    return torch.exp(torch.log(y) + NOISE * noise)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r""":math:`\log p(x \mid \theta)` up to a constant; ``theta`` ``(N, 4)``, ``x`` ``(20,)``."""
    resid = (torch.log(x) - torch.log(solve(theta))) / NOISE
    return torch.nan_to_num(-0.5 * (resid**2).sum(-1), nan=-torch.inf)


theta_o = torch.tensor([0.9, 0.05, 0.9, 0.05])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
