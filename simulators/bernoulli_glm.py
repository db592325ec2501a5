r"""Bernoulli GLM (sbibm's ``bernoulli_glm``): a neuron's spikes driven by a white-noise stimulus.

Spike :math:`y_t \in \{0, 1\}` in bin :math:`t = 1..100` follows a logistic GLM whose design row
:math:`v_t = (1, u_t, u_{t-1}, \dots, u_{t-8})` holds the recent stimulus :math:`u` (white noise
drawn once, from a fixed seed):

.. math::
    \theta = (\beta_0, f) \in \mathbb R^{10}, \quad \beta_0 \sim \mathcal N(0, 2), \quad
    f \sim \mathcal N\big(0, (F^\top F)^{-1}\big), \quad
    y_t \sim \mathrm{Bernoulli}\big(\sigma(v_t^\top \theta)\big),

with :math:`F` a smoothness prior (second differences plus a ridge). The observation is the
sufficient statistic :math:`x = V^\top y` (shape ``(10,)``), and the likelihood is tractable:
:math:`\log p(x \mid \theta) = \theta^\top x - \sum_t \log(1 + e^{v_t^\top \theta})` (up to a
constant that does not depend on :math:`\theta`).

Reference posterior: the posterior is log-concave. Newton's method finds the mode and the
Laplace covariance, which starts and preconditions many random-walk Metropolis chains.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from ._mcmc import metropolis, single_thread

__all__ = [
    "prior",
    "simulator",
    "design",
    "log_likelihood",
    "theta_o",
    "x_o",
    "reference_posterior",
]

DIM = 10
NUM_BINS = 100


def _prior_covariance() -> Tensor:
    m = DIM - 1
    d = torch.eye(m) - torch.diag(torch.ones(m - 1), -1)
    f = d @ d + torch.diag(torch.arange(m, dtype=torch.float32) / m) ** 0.5
    cov = torch.zeros(DIM, DIM)
    cov[0, 0] = 2.0
    cov[1:, 1:] = torch.linalg.inv(f.T @ f)
    return cov


prior = MultivariateNormal(torch.zeros(DIM), _prior_covariance())


@functools.lru_cache(maxsize=4)
def design(dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed design matrix :math:`V`, ``(100, 10)`` (stimulus drawn from seed 0)."""
    u = torch.randn(NUM_BINS + DIM - 2, generator=torch.Generator().manual_seed(0))
    lags = torch.stack([u[DIM - 2 - k : DIM - 2 - k + NUM_BINS] for k in range(DIM - 1)], -1)
    return torch.cat([torch.ones(NUM_BINS, 1), lags], -1).to(dtype)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate ``x = V^T y`` of shape ``(N, 10)`` for ``theta`` of shape ``(N, 10)``."""
    v = design(theta.dtype)
    p = torch.sigmoid(theta @ v.T)
    y = (torch.rand(p.shape, generator=generator, dtype=theta.dtype) < p).to(theta.dtype)
    return y @ v


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    r""":math:`\log p(x \mid \theta)` up to a constant; ``theta`` ``(*, 10)``, ``x`` ``(10,)``."""
    v = design(theta.dtype)
    return theta @ x - torch.nn.functional.softplus(theta @ v.T).sum(-1)


def reference_posterior(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Posterior samples ``(num_samples, 10)``: Laplace-started, preconditioned Metropolis."""
    with single_thread():
        return _sample_posterior(x_o, num_samples, seed)


def _sample_posterior(x_o: Tensor, num_samples: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x_o, dtype=torch.float64).reshape(DIM)
    v = design(torch.float64)
    prec0 = torch.linalg.inv(_prior_covariance().double())

    def log_post(theta: Tensor) -> Tensor:
        return log_likelihood(theta, x) - 0.5 * ((theta @ prec0) * theta).sum(-1)

    mode = torch.zeros(DIM, dtype=torch.float64)
    for _ in range(50):  # Newton on a strictly concave function
        p = torch.sigmoid(v @ mode)
        grad = x - v.T @ p - prec0 @ mode
        hess = v.T @ (v * (p * (1 - p))[:, None]) + prec0
        mode = mode + torch.linalg.solve(hess, grad)
    tril = torch.linalg.cholesky(torch.linalg.inv(hess))
    chains = min(num_samples, 1000)
    init = mode + torch.randn((chains, DIM), generator=g, dtype=torch.float64) @ tril.T
    return metropolis(log_post, init, tril, num_samples, g, burn_in=100, thin=5).float()


theta_o = torch.tensor([-1.0, 0.6, 0.8, 0.4, 0.0, -0.3, -0.4, -0.3, -0.1, 0.0])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
