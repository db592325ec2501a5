r"""Gaussian mixture (sbibm's ``gaussian_mixture``): one wide and one narrow component.

.. math::
    \theta \sim \mathcal U([-10, 10]^2), \qquad
    x \mid \theta \sim \tfrac12 \mathcal N(\theta, I) + \tfrac12 \mathcal N(\theta, 0.01\, I).

The likelihood is symmetric in :math:`x - \theta`, so the posterior is the same mixture
centred on :math:`x` and truncated to the box: sampled exactly by rejection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simgen.priors import BoxUniform

__all__ = ["prior", "simulator", "theta_o", "x_o", "reference_posterior"]

SCALES = (1.0, 0.1)

prior = BoxUniform(low=-10 * torch.ones(2), high=10 * torch.ones(2))


def _mixture_noise(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    wide = torch.rand(n, generator=generator, dtype=dtype) < 0.5
    scale = torch.where(wide, SCALES[0], SCALES[1]).to(dtype)
    return scale[:, None] * torch.randn((n, 2), generator=generator, dtype=dtype)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x`` of shape ``(N, 2)`` for ``theta`` of shape ``(N, 2)``."""
    return theta + _mixture_noise(theta.shape[0], generator, theta.dtype)


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Exact samples ``(num_samples, 2)``: the mixture around ``x_o``, rejected outside the box."""
    g = torch.Generator().manual_seed(seed)
    x_o = torch.as_tensor(x_o, dtype=torch.float32).reshape(2)
    out, have = [], 0
    while have < num_samples:
        theta = x_o + _mixture_noise(2 * (num_samples - have) + 100, g, torch.float32)
        theta = theta[((theta > -10) & (theta < 10)).all(-1)]
        out.append(theta)
        have += len(theta)
    return torch.cat(out)[:num_samples]


theta_o = torch.tensor([0.5, -1.5])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
