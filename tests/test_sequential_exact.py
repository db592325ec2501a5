"""benchmarks.sequential_exact: the exact-likelihood posteriors SNLE's draws are scored against."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from benchmarks import harness, sequential_exact
from simgen.errors import SimgenError


def _independent(task_name: str, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | θ) from torch's distributions (or the simulator module's own formula)."""
    task = harness.load_task(task_name)
    if task_name == "gaussian_linear_uniform":
        return Independent(Normal(theta, math.sqrt(task.LIKELIHOOD_VAR)), 1).log_prob(x)
    if task_name == "gaussian_mixture":
        scales = torch.tensor(task.SCALES)
        loc = theta[..., None, :].expand(*theta.shape[:-1], len(scales), theta.shape[-1])
        parts = Independent(Normal(loc, scales[:, None].expand_as(loc)), 1)
        weights = Categorical(torch.full((*theta.shape[:-1], len(scales)), 0.5))
        return MixtureSameFamily(weights, parts).log_prob(x)
    return torch.stack([task.log_likelihood(t, x[0]) for t in theta])


@pytest.mark.parametrize("task_name", sequential_exact.TASKS)
def test_potential_is_the_likelihood_times_the_prior(task_name):
    """Differences of the potential between θ's inside the support equal those of the
    independent log-likelihood plus log-prior to 1e-4 (float32): a wrong noise scale or
    mixture weight changes them by far more, as the perturbed control shows."""
    task = harness.load_task(task_name)
    posterior = sequential_exact.exact_posterior(task_name)
    x_o = harness.observations(task_name, "report", 1)[1][:1]
    theta = task.prior.sample((6,)) * 0.5  # inside a box prior's support
    got = posterior.potential(theta[:, None], x_o)[:, 0]
    want = _independent(task_name, theta, x_o.expand(len(theta), -1))
    want = want + task.prior.log_prob(theta)
    assert torch.allclose(got - got[0], want - want[0], atol=1e-4)
    control = _independent(task_name, theta * 1.3, x_o.expand(len(theta), -1))
    control = control + task.prior.log_prob(theta * 1.3)
    assert not torch.allclose(got - got[0], control - control[0], atol=1e-2)


def test_potential_is_minus_infinity_outside_a_box():
    posterior = sequential_exact.exact_posterior("gaussian_linear_uniform")
    x_o = harness.observations("gaussian_linear_uniform", "report", 1)[1][:1]
    theta = torch.zeros(2, 1, 10)
    theta[1, 0, 3] = 1.5
    value = posterior.potential(theta, x_o)[:, 0]
    assert torch.isfinite(value[0]) and value[1] == -math.inf


def test_exact_draws_match_the_reference_moments():
    """SMC on gaussian_mixture's exact likelihood (seeded, 1,000 draws): the mean is within
    5 standard errors of the exact reference's; the draws for another observation (the
    control, 2 units away) are not."""
    x_o = harness.observations("gaussian_mixture", "report", 1)[1][0]
    posterior = sequential_exact.exact_posterior("gaussian_mixture")
    task = harness.load_task("gaussian_mixture")
    reference = task.reference_posterior(x_o, 4000, seed=0)
    draws = posterior.sample((1000,), x=x_o, seed=0, method="smc")
    se = reference.std(0) / math.sqrt(1000)
    assert ((draws.mean(0) - reference.mean(0)).abs() < 5 * se).all()
    shifted = posterior.sample((1000,), x=x_o + 2.0, seed=0, method="smc")
    assert ((shifted.mean(0) - reference.mean(0)).abs() > 5 * se).any()


def test_unknown_task_is_refused():
    with pytest.raises(SimgenError, match="No exact likelihood"):
        sequential_exact.log_likelihood("slcp")
