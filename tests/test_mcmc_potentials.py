"""Potentials against closed forms; MCMC posteriors on a potential; older model files load."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

import simgen
from simgen.errors import ConfigError, NoDensityError
from simgen.estimators.classifier import RatioClassifier
from simgen.mcmc import likelihood_potential, ratio_potential, unconstrained
from simgen.mcmc_posterior import MCMCPosterior
from simgen.priors import support_transform

DATA = Path(__file__).parent / "data"
PRIOR = simgen.BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
NOISE = 0.3  # x ~ N(theta, NOISE^2 I)


class ExactLikelihood(nn.Module):
    """``forward(theta) -> N(theta, NOISE^2 I)``: a likelihood 'estimator' in closed form."""

    def forward(self, theta: torch.Tensor) -> Independent:
        return Independent(Normal(theta, NOISE), 1)


class ExactRatio(nn.Module):
    """The log-ratio up to a constant in x: log N(x; theta, NOISE^2 I)."""

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(theta, NOISE).log_prob(x).sum(-1)


def test_likelihood_and_ratio_potentials_equal_the_closed_form() -> None:
    theta = PRIOR.sample((50, 3))  # (*, B, D)
    x = torch.randn(3, 2)
    truth = Normal(theta, NOISE).log_prob(x).sum(-1) + PRIOR.log_prob(theta)
    nle = likelihood_potential(ExactLikelihood(), PRIOR, (2,))(theta, x)
    nre = ratio_potential(ExactRatio(), PRIOR)(theta, x)
    torch.testing.assert_close(nle, truth)
    torch.testing.assert_close(nre, truth)
    outside = torch.tensor([[3.0, 0.0]])
    for potential in (likelihood_potential(ExactLikelihood(), PRIOR, (2,)),
                      ratio_potential(ExactRatio(), PRIOR)):  # fmt: skip
        assert potential(outside, x[:1]).item() == -math.inf


def test_unconstrained_density_carries_the_jacobian() -> None:
    """exp(pi_u) integrates over u to what exp(psi) integrates to over theta (1-D grid)."""
    prior = simgen.BoxUniform(torch.tensor([0.0]), torch.tensor([1.0]))
    potential = likelihood_potential(ExactLikelihood(), prior, (1,))
    x = torch.tensor([[0.3]])
    theta = torch.linspace(1e-4, 1 - 1e-4, 20_001)[:, None, None]
    u = torch.linspace(-12, 12, 20_001)[:, None, None]
    mass_theta = torch.trapezoid(potential(theta, x)[:, 0].exp(), theta[:, 0, 0])
    log_u = unconstrained(potential, support_transform(prior), x)(u)
    mass_u = torch.trapezoid(log_u[:, 0].exp(), u[:, 0, 0])
    # Both quadratures are accurate to ~1e-4 here; tolerance 1e-3.
    assert abs(float(mass_u / mass_theta) - 1) < 1e-3


def _posterior_mean_cov(x_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian prior N(0, I) and likelihood N(theta, NOISE^2 I): the posterior in closed form."""
    precision = 1 + 1 / NOISE**2
    return x_o / NOISE**2 / precision, torch.eye(2) / precision


@pytest.mark.parametrize("method", ["rwm", "slice", "hmc"])
def test_any_sampler_takes_a_potential(method: str) -> None:
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    posterior = MCMCPosterior.from_likelihood(ExactLikelihood(), prior, (2,))
    x_o = torch.tensor([0.5, -0.4])
    samples = posterior.sample((2000,), x=x_o, method=method, seed=0)
    mean, cov = _posterior_mean_cov(x_o)
    # Posterior sd 0.29; ESS of 2,000 draws > 500 in every run here, so s.e. of the mean
    # < 0.013 and of a (co)variance < 0.005: tolerances 0.05 and 0.02 are > 3 s.e.
    assert posterior.last_mcmc.ess > 500
    torch.testing.assert_close(samples.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.02, rtol=0)


def test_log_prob_rejects_unknown_options_and_a_normaliser() -> None:
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    posterior = MCMCPosterior.from_ratio(ExactRatio(), prior, (2,))
    theta, x_o = torch.zeros(3, 2), torch.zeros(2)
    torch.testing.assert_close(posterior.log_prob(theta, x=x_o, norm_posterior=False),
                               posterior.log_prob(theta, x=x_o))  # fmt: skip
    with pytest.raises(ConfigError, match="unknown option"):
        posterior.log_prob(theta, x=x_o, normalise=True)
    with pytest.raises(NoDensityError, match="unnormalised"):
        posterior.log_prob(theta, x=x_o, norm_posterior=True)
    with pytest.raises(NoDensityError):
        _ = posterior.likelihood
    with pytest.raises(ConfigError, match="method"):
        MCMCPosterior(posterior.potential, prior, (2,), ExactRatio(), "npe")


@pytest.mark.parametrize("method", ["nle", "nre"])
def test_files_in_the_first_spec_format_load(method: str) -> None:
    """tests/data/mcmc_*_v1.model were saved by the single-module MCMC code (spec "method":
    "nle"/"nre", "mcmc" with four fields; the classifier's spec with theta_dim/x_shape and
    theta_/x_standardizer weights); they load with the same settings and log-densities."""
    reference = json.loads((DATA / "mcmc_v1_reference.json").read_text())
    posterior = simgen.load(DATA / f"mcmc_{method}_v1.model")
    assert isinstance(posterior, MCMCPosterior) and posterior.method == method
    expected = {"nle": dict(num_chains=12, warmup=30, thin=7, method="slice"),
                "nre": dict(num_chains=9, warmup=40, thin=None, method="rwm")}[method]  # fmt: skip
    assert posterior.mcmc == simgen.mcmc.MCMCConfig(**expected)
    theta, x_o = torch.tensor(reference["theta"]), torch.tensor(reference["x_o"])
    torch.testing.assert_close(
        posterior.log_prob(theta, x=x_o), torch.tensor(reference[f"{method}_log_prob"])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert posterior.sample((8,), x=x_o, num_chains=2, warmup=2, seed=0).shape == (8, 2)


def test_classifier_speaks_target_and_context_and_reads_older_names() -> None:
    torch.manual_seed(0)
    clf = RatioClassifier(2, (3,), hidden_features=(8,))
    clf.fit_standardization(torch.randn(20, 2), torch.randn(20, 3) * 5)
    assert clf.spec["target_dim"] == 2 and clf.spec["context_shape"] == [3]
    theta, x = torch.randn(4, 2), torch.randn(4, 3)
    assert torch.equal(clf(target=theta, context=x), clf(theta, x))
    # The older names of the same fields, in a spec and in the weights.
    old_spec = {**clf.spec, "theta_dim": 2, "x_shape": [3]}
    del old_spec["target_dim"], old_spec["context_shape"]
    old_state = {
        k.replace("target_standardizer", "theta_standardizer").replace(
            "context_standardizer", "x_standardizer"
        ): v
        for k, v in clf.state_dict().items()
    }
    again = RatioClassifier.from_spec(old_spec)
    again.load_state_dict(old_state)
    torch.testing.assert_close(again(theta, x), clf(theta, x))
