r"""SLCP: simple likelihood, complex posterior (sbibm's ``slcp``).

.. math::
    \theta \sim \mathcal U([-3, 3]^5), \quad m = (\theta_1, \theta_2), \quad
    s_1 = \theta_3^2, \quad s_2 = \theta_4^2, \quad \rho = \tanh \theta_5,

    x = (x_1, \dots, x_4), \quad x_j \overset{iid}\sim \mathcal N\Big(m,
    \begin{pmatrix} s_1^2 & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 \end{pmatrix}\Big),

so :math:`x` has shape ``(8,)``. The likelihood is a product of four bivariate normals, but the
posterior has four modes (the signs of :math:`\theta_3, \theta_4` are not identified) and
sharp, curved ridges.

Reference posterior: the likelihood is invariant under :math:`\theta_3 \to -\theta_3` and
:math:`\theta_4 \to -\theta_4`, and so is the prior; many random-walk Metropolis chains
sample the folded posterior (:math:`\theta_3, \theta_4 \ge 0`, one mode), started by
sampling-importance-resampling from the prior, and each sample's signs are then flipped
with probability one half — all four modes with exactly equal mass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simgen.priors import BoxUniform

from ._mcmc import metropolis, single_thread, sir_init

__all__ = ["prior", "simulator", "log_likelihood", "theta_o", "x_o", "reference_posterior"]

NUM_DRAWS = 4

prior = BoxUniform(low=-3 * torch.ones(5), high=3 * torch.ones(5))


def _params(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return theta[..., :2], theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x`` of shape ``(N, 8)`` for ``theta`` of shape ``(N, 5)``."""
    m, s1, s2, rho = _params(theta)
    eps = torch.randn((theta.shape[0], NUM_DRAWS, 2), generator=generator, dtype=theta.dtype)
    x1 = m[:, None, 0] + s1[:, None] * eps[..., 0]
    x2 = m[:, None, 1] + s2[:, None] * (
        rho[:, None] * eps[..., 0] + (1 - rho[:, None] ** 2).sqrt() * eps[..., 1]
    )
    return torch.stack([x1, x2], -1).reshape(theta.shape[0], 2 * NUM_DRAWS)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r""":math:`\log p(x \mid \theta)` for ``theta`` ``(*, 5)`` and ``x`` ``(8,)``; shape ``(*)``."""
    m, s1, s2, rho = _params(theta)
    xs = x.reshape(NUM_DRAWS, 2)
    u = (xs[:, 0] - m[..., None, 0]) / s1[..., None]
    v = (xs[:, 1] - m[..., None, 1]) / s2[..., None]
    r = rho[..., None]
    quad = (u**2 - 2 * r * u * v + v**2) / (1 - r**2)
    logdet = torch.log(s1) + torch.log(s2) + 0.5 * torch.log1p(-(rho**2))
    ll = -0.5 * quad.sum(-1) - NUM_DRAWS * (logdet + torch.log(torch.tensor(2 * torch.pi)))
    return torch.nan_to_num(ll, nan=-torch.inf)


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Posterior samples ``(num_samples, 5)`` by folded many-chain Metropolis (float64)."""
    with single_thread():
        return _sample_posterior(x_o, num_samples, seed)


def _sample_posterior(x_o: Tensor, num_samples: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x_o, dtype=torch.float64).reshape(2 * NUM_DRAWS)

    def log_post(theta: Tensor) -> Tensor:
        inside = (theta.abs() < 3).all(-1) & (theta[:, 2:4] >= 0).all(-1)
        ll = log_likelihood(theta, x)
        return torch.where(inside, ll, torch.full_like(ll, -torch.inf))

    draws = 6 * torch.rand((200_000, 5), generator=g, dtype=torch.float64) - 3
    draws[:, 2:4] = draws[:, 2:4].abs()
    init, tril = sir_init(log_post, draws, min(num_samples, 1000), g)
    theta = metropolis(log_post, init, tril, num_samples, g, burn_in=1500, thin=10)
    flips = torch.where(torch.rand((num_samples, 2), generator=g) < 0.5, -1.0, 1.0)
    theta[:, 2:4] = theta[:, 2:4] * flips.to(theta.dtype)
    return theta.float()


theta_o = torch.tensor([0.7, -2.9, -1.0, -0.9, 0.6])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
