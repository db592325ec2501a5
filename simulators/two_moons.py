r"""Two moons: a bimodal, crescent-shaped posterior (sbibm's ``two_moons``).

.. math::
    \theta \sim \mathcal U([-1, 1]^2), \quad a \sim \mathcal U(-\tfrac\pi2, \tfrac\pi2), \quad
    r \sim \mathcal N(0.1, 0.01^2), \quad p = (r\cos a + 0.25,\ r \sin a),

    x = p + \Big(-\tfrac{|\theta_1 + \theta_2|}{\sqrt 2},\
    \tfrac{-\theta_1 + \theta_2}{\sqrt 2}\Big).

The map :math:`\theta \mapsto x - p` is piecewise a rotation (|det J| = 1), so the posterior is
sampled exactly: draw :math:`(a, r)` from their prior, invert both branches of the absolute
value with equal weight, and keep the preimages inside the prior box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from simgen.priors import BoxUniform

__all__ = ["prior", "simulator", "theta_o", "x_o", "reference_posterior"]

prior = BoxUniform(low=-torch.ones(2), high=torch.ones(2))


def _moon_noise(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    a = (torch.rand(n, generator=generator, dtype=dtype) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=generator, dtype=dtype)
    return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=-1)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x`` of shape ``(N, 2)`` for ``theta`` of shape ``(N, 2)``."""
    p = _moon_noise(theta.shape[0], generator, theta.dtype)
    s = 1 / math.sqrt(2)
    shift = torch.stack(
        [-(theta[:, 0] + theta[:, 1]).abs() * s, (-theta[:, 0] + theta[:, 1]) * s], dim=-1
    )
    return p + shift


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Exact posterior samples for one observation ``x_o`` (shape ``(2,)``)."""
    g = torch.Generator().manual_seed(seed)
    x_o = torch.as_tensor(x_o, dtype=torch.float32).reshape(2)
    out: list[Tensor] = []
    have = 0
    while have < num_samples:
        n = 4 * (num_samples - have) + 1000
        q = x_o - _moon_noise(n, g, torch.float32)
        ok = q[:, 0] <= 0  # |θ1 + θ2| = -√2 q0 needs q0 ≤ 0
        q = q[ok]
        sign = torch.where(torch.rand(len(q), generator=g) < 0.5, -1.0, 1.0)
        total = sign * (-math.sqrt(2) * q[:, 0])  # θ1 + θ2
        diff = math.sqrt(2) * q[:, 1]  # θ2 - θ1
        theta = torch.stack([(total - diff) / 2, (total + diff) / 2], dim=-1)
        theta = theta[((theta > -1) & (theta < 1)).all(-1)]
        out.append(theta)
        have += len(theta)
    return torch.cat(out)[:num_samples]


theta_o = torch.tensor([0.2, 0.3])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
