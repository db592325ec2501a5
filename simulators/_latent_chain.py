r"""A linear-Gaussian latent chain with every density in closed form (for tests and benchmarks).

:math:`\theta \sim \mathcal N(0, I_2)`, then :math:`z_p \sim \mathcal N(A\theta_1, s_p^2)`,
:math:`z_s \sim \mathcal N(B z_p, s_s^2)`, :math:`z_d \sim \mathcal N(z_s + \theta_2, s_d^2)`,
:math:`x \sim \mathcal N(C z_d, s_x^2)`: a parton → shower → detector → observable hierarchy
in miniature, written as a pyro program so that ``trace`` exposes the latents, the joint
log-density and the joint score. Marginalising the latents leaves the likelihood

.. math::
    x \mid \theta \sim \mathcal N\big(C(BA\theta_1 + \theta_2),\;
      C^2(B^2 s_p^2 + s_s^2 + s_d^2) + s_x^2\big),

which :func:`log_likelihood` evaluates. Private (not in ``simulators.list()``): it is a
yardstick for joint-score methods, not a benchmark task.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from simgen.simulator import from_pyro

A, B, C = 2.0, 0.5, 1.5
S_P, S_S, S_D, S_X = 0.5, 0.3, 0.2, 0.1

prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1)


def chain(n: int) -> None:
    """The pyro program: ``n`` simulations in one plate."""
    with pyro.plate("sims", n):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        z_p = pyro.sample("z_p", dist.Normal(A * theta[:, 0], S_P))
        z_s = pyro.sample("z_s", dist.Normal(B * z_p, S_S))
        z_d = pyro.sample("z_d", dist.Normal(z_s + theta[:, 1], S_D))
        pyro.sample("x", dist.Normal(C * z_d, S_X))


simulator = from_pyro(chain)


def log_likelihood(theta: Tensor, x: Tensor) -> Tensor:
    """The marginal :math:`\\log p(x\\mid\\theta)`, ``(N,)`` for ``theta`` ``(N, 2)``, ``x``
    ``(N,)``."""
    mean = C * (B * A * theta[:, 0] + theta[:, 1])
    var = C**2 * (B**2 * S_P**2 + S_S**2 + S_D**2) + S_X**2
    return torch.distributions.Normal(mean, math.sqrt(var)).log_prob(x)


def joint_log_prob(theta: Tensor, latents: dict[str, Tensor], x: Tensor) -> Tensor:
    """The joint :math:`\\log p(x, z\\mid\\theta)` written out link by link, ``(N,)``."""
    normal = torch.distributions.Normal
    z_p, z_s, z_d = latents["z_p"], latents["z_s"], latents["z_d"]
    return (
        normal(A * theta[:, 0], S_P).log_prob(z_p)
        + normal(B * z_p, S_S).log_prob(z_s)
        + normal(z_s + theta[:, 1], S_D).log_prob(z_d)
        + normal(C * z_d, S_X).log_prob(x)
    )


def log_ratio(theta: Tensor, theta_1: Tensor, x: Tensor) -> Tensor:
    """The marginal :math:`\\log p(x\\mid\\theta) - \\log p(x\\mid\\theta_1)`, ``(N,)``
    (``theta_1`` one row ``(2,)`` or ``(N, 2)``)."""
    return log_likelihood(theta, x) - log_likelihood(theta_1.expand_as(theta), x)


def held_out_kl(nle, test) -> float:
    """Mean of :math:`\\log p(x\\mid\theta) - \\log q(x\\mid\theta)` over held-out simulations
    ``test`` (a :class:`simgen.simulate.Simulations`) for a fitted ``simgen.NLE``: the expected
    KL divergence of its likelihood from the true one (nats; 0 is perfect)."""
    with torch.no_grad():
        fitted = nle.estimator(test.theta).log_prob(test.x.reshape(-1, 1))
    return float((log_likelihood(test.theta, test.x) - fitted).mean())


def posterior_kl(posterior, num_obs: int = 20, grid_size: int = 81, seed: int = 12345) -> float:
    """Mean KL from the exact posterior to ``posterior`` (anything with
    ``log_prob(theta, x=x)``) over ``num_obs`` observations simulated with ``seed``, each on a
    ``grid_size`` × ``grid_size`` θ-grid over [-4, 4]² (both normalised on the grid; the
    prior puts < 1e-3 of its mass outside)."""
    from simgen.simulate import run_simulator, sample_prior

    axis = torch.linspace(-4, 4, grid_size)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    xs = run_simulator(simulator, sample_prior(prior, num_obs, seed), seed=seed).x
    total = 0.0
    for x in xs:
        exact = torch.softmax(log_likelihood(grid, x.expand(len(grid))) + prior.log_prob(grid), 0)
        with torch.no_grad():
            fitted = torch.log_softmax(posterior.log_prob(grid, x=x.reshape(1)), 0)
        total += float((torch.special.xlogy(exact, exact) - exact * fitted).sum())
    return total / len(xs)
