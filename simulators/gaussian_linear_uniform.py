r"""Gaussian linear model with a uniform prior (sbibm's ``gaussian_linear_uniform``).

.. math::
    \theta \sim \mathcal U([-1, 1]^{10}), \qquad x \mid \theta \sim \mathcal N(\theta, 0.1\, I).

The posterior factorises into independent normals :math:`\mathcal N(x_i, 0.1)` truncated to
:math:`[-1, 1]`, sampled exactly by the inverse CDF.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Normal

from simgen.priors import BoxUniform

__all__ = ["prior", "simulator", "theta_o", "x_o", "reference_posterior"]

DIM = 10
LIKELIHOOD_VAR = 0.1

prior = BoxUniform(low=-torch.ones(DIM), high=torch.ones(DIM))


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x`` of shape ``(N, 10)`` for ``theta`` of shape ``(N, 10)``."""
    noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
    return theta + LIKELIHOOD_VAR**0.5 * noise


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Exact samples, ``(num_samples, 10)``: truncated normals by the inverse CDF (float64)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.as_tensor(x_o, dtype=torch.float64).reshape(DIM)
    std = Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    a = std.cdf((-1 - loc) / LIKELIHOOD_VAR**0.5)
    b = std.cdf((1 - loc) / LIKELIHOOD_VAR**0.5)
    u = torch.rand((num_samples, DIM), generator=g, dtype=torch.float64)
    p = (a + u * (b - a)).clamp(1e-300, 1 - 1e-16)
    theta = loc + LIKELIHOOD_VAR**0.5 * std.icdf(p)
    return theta.clamp(-1 + 1e-6, 1 - 1e-6).float()


theta_o = torch.linspace(-0.6, 0.6, DIM)
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
