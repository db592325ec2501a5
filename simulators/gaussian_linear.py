r"""Gaussian linear model: the benchmark with a closed-form posterior.

.. math::
    \theta \sim \mathcal N(0, \sigma_p^2 I_D), \qquad x \mid \theta \sim \mathcal N(\theta,
    \sigma_l^2 I_D)

with :math:`\sigma_p^2 = \sigma_l^2 = 0.1` and :math:`D = 10` (as in sbibm). The posterior is
Gaussian, :math:`\mathcal N(\mu, \Sigma)` with :math:`\Sigma = (\sigma_p^{-2} + \sigma_l^{-2})^{-1}
I` and :math:`\mu = \Sigma\, \sigma_l^{-2} x`.

Use :func:`make` for another dimension: ``make(dim=2).prior``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

__all__ = ["make", "prior", "simulator", "theta_o", "x_o", "reference_posterior", "posterior"]

PRIOR_VAR = 0.1
LIKELIHOOD_VAR = 0.1


def make(dim: int = 10) -> SimpleNamespace:
    """Build the task in ``dim`` dimensions: prior, simulator, theta_o, x_o, posteriors."""
    prior_ = MultivariateNormal(torch.zeros(dim), PRIOR_VAR * torch.eye(dim))

    def simulator_(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return theta + LIKELIHOOD_VAR**0.5 * noise

    def posterior_(x: Tensor) -> MultivariateNormal:
        """Exact posterior :math:`p(\\theta \\mid x)` for one ``x`` of shape ``(D,)``."""
        var = 1.0 / (1.0 / PRIOR_VAR + 1.0 / LIKELIHOOD_VAR)
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, dim)
        return MultivariateNormal(var / LIKELIHOOD_VAR * x, var * torch.eye(dim))

    def reference_posterior_(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        """``num_samples`` exact posterior samples, shape ``(num_samples, D)``."""
        g = torch.Generator().manual_seed(seed)
        dist = posterior_(x_o)
        eps = torch.randn((num_samples, dim), generator=g)
        return dist.loc.reshape(dim) + eps @ dist.scale_tril.reshape(dim, dim).T

    theta_o_ = torch.linspace(-0.3, 0.3, dim)
    x_o_ = simulator_(theta_o_[None], generator=torch.Generator().manual_seed(1))
    return SimpleNamespace(
        prior=prior_,
        simulator=simulator_,
        theta_o=theta_o_,
        x_o=x_o_[0],
        posterior=posterior_,
        reference_posterior=reference_posterior_,
        dim=dim,
    )


_task = make(10)
prior = _task.prior
simulator = _task.simulator
theta_o = _task.theta_o
x_o = _task.x_o
posterior = _task.posterior
reference_posterior = _task.reference_posterior
