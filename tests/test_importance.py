"""simgen.importance_sample: SIR on a biased Gaussian proposal recovers the exact posterior."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import simgen
from simgen.errors import ConfigError, NoDensityError, ShapeError
from simgen.importance import ImportanceWarning, importance_sample
from simgen.mcmc_posterior import SurrogateSimulator
from simgen.posterior import Posterior

# θ ~ N(0, I_2), x | θ ~ N(θ, σ² I_2): the posterior is N(x / (1 + σ²), σ² / (1 + σ²) I_2).
SIGMA = 0.5
D = 2
PRIOR = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(D), 1.0), 1)
X_O = torch.tensor([0.8, -0.4])
POST_MEAN = X_O / (1 + SIGMA**2)
POST_SD = SIGMA / math.sqrt(1 + SIGMA**2)


def log_likelihood(theta):
    return torch.distributions.Normal(theta, SIGMA).log_prob(X_O).sum(-1)


class Proposal(Posterior):
    """N(exact mean + bias · sd, (scale · sd)² I): a biased, broader NPE stand-in."""

    kind = "direct"
    method = "closed_form"

    def __init__(self, bias: float, scale: float = 1.5):
        super().__init__(PRIOR, (D,), D)
        self.estimator = nn.Linear(1, 1)
        self.bias, self.scale = bias, scale

    def _normal(self, x):
        mean = x / (1 + SIGMA**2) + self.bias * POST_SD
        return torch.distributions.Normal(mean, self.scale * POST_SD)

    def sample(self, sample_shape=(), x=None, seed=None, **options):
        normal = self._normal(self._single_x(x)[0])
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        return normal.loc + normal.scale * torch.randn((*sample_shape, D), generator=generator)

    def log_prob(self, theta, x=None, **options):
        return self._normal(self._single_x(x)[0]).log_prob(self._theta(theta)).sum(-1)


BIASES = (0.5, 1.0, 2.0)


def test_sir_recovers_the_exact_moments_and_ess_falls_with_bias():
    # Tolerance: 5 standard errors of a self-normalised estimate with the reported ESS,
    # sd / sqrt(ESS) for the mean and sqrt(2 / ESS) for the variance ratio. The control: the
    # uncorrected proposal's mean misses by bias · sd, over 10 of those standard errors.
    esses = []
    for bias in BIASES:
        result = importance_sample(
            Proposal(bias), X_O, log_likelihood, num_samples=4000, num_proposals=20_000, seed=1
        )
        se = POST_SD / math.sqrt(result.ess)
        w = result.log_weights.exp()[:, None]
        mean = result.mean()
        var = (w * (result.proposals - mean) ** 2).sum(0)
        assert (mean - POST_MEAN).abs().max() < 5 * se, (bias, mean)
        assert ((var / POST_SD**2) - 1).abs().max() < 5 * math.sqrt(2 / result.ess), (bias, var)
        # The resample is a sample of the same posterior (n = 4,000 draws, 5 standard errors).
        resample_se = POST_SD * math.sqrt(1 / 4000 + 1 / result.ess)
        assert (result.samples.mean(0) - POST_MEAN).abs().max() < 5 * resample_se
        raw = result.proposals.mean(0)
        assert (raw - POST_MEAN).abs().max() > 10 * se, "control: the proposal alone is off"
        esses.append(result.ess)
        assert result.samples.shape == (4000, D)
    assert esses[0] > esses[1] > esses[2], esses
    assert esses[0] > 1000 and result.pareto_k == result.pareto_k  # k was fitted


def test_exact_proposal_has_full_ess():
    # q = the posterior: every weight is 1 / M, so ESS = M up to float64 rounding.
    result = importance_sample(Proposal(0.0, scale=1.0), X_O, log_likelihood, num_samples=500)
    assert result.ess == pytest.approx(5000, rel=1e-6)
    assert result.reliable
    assert "ess=" in repr(result)


class GaussianLikelihood(nn.Module):
    """An NLE-shaped estimator with the exact likelihood N(x; θ, σ² I)."""

    target_dim = D
    context_shape = (D,)

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, theta):
        return torch.distributions.Independent(torch.distributions.Normal(theta, SIGMA), 1)


def test_nle_surrogate_as_likelihood_matches_the_function():
    surrogate = SurrogateSimulator(GaussianLikelihood())
    a = importance_sample(Proposal(1.0), X_O, surrogate, num_samples=300, seed=2)
    b = importance_sample(Proposal(1.0), X_O, log_likelihood, num_samples=300, seed=2)
    torch.testing.assert_close(a.log_weights, b.log_weights)
    torch.testing.assert_close(a.samples, b.samples)


def test_a_far_proposal_warns():
    # Bias 8 sds with a narrow proposal: a handful of draws carry the weight.
    with pytest.warns(ImportanceWarning, match="ESS"):
        result = importance_sample(
            Proposal(8.0, scale=0.7), X_O, log_likelihood, num_samples=200, seed=0
        )
    assert not result.reliable


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="num_samples"):
        importance_sample(Proposal(0.0), X_O, log_likelihood, num_samples=0)
    with pytest.raises(ConfigError, match="log_likelihood is a str"):
        importance_sample(Proposal(0.0), X_O, "not a likelihood")
    with pytest.raises(ShapeError, match="one log-likelihood per row"):
        importance_sample(Proposal(0.0), X_O, lambda t: torch.zeros(3), num_samples=10)

    class Unnormalised(Proposal):
        kind = "mcmc"

    with pytest.raises(NoDensityError, match="normalised log_prob"):
        importance_sample(Unnormalised(0.0), X_O, log_likelihood)
    assert simgen.importance_sample is importance_sample


class BatchedProposal(Proposal):
    def log_prob_batched(self, theta, x, **options):
        return self._normal(self._batch_x(x)).log_prob(self._theta(theta)).sum(-1)


def exact_nle_posterior():
    from simgen.mcmc_posterior import MCMCPosterior

    def potential(theta, x):  # log N(x; θ, σ² I) + log p(θ), θ (*, B, D), x (B, D)
        return torch.distributions.Normal(theta, SIGMA).log_prob(x).sum(-1) + PRIOR.log_prob(theta)

    return MCMCPosterior(potential, PRIOR, (D,), GaussianLikelihood(), "nle")


def test_npe_proposal_starts_the_chains_of_an_nle_posterior():
    # 400 chain starts by SIR from a proposal 0.5 sds off: their mean lies within 5 standard
    # errors (sd / sqrt(400) plus the SIR bias of 20 candidates a chain, under 0.5 sd / 20)
    # of the exact mean; the proposal's own draws (the control) miss that tolerance.
    nle = exact_nle_posterior()
    xs = X_O[None]
    nle.proposal = BatchedProposal(0.5)
    starts = nle._transform(nle._init_chains(xs, 400, seed=0))[:, 0]
    tol = 5 * POST_SD / math.sqrt(400) + 0.5 * POST_SD / 20
    assert (starts.mean(0) - POST_MEAN).abs().max() < tol
    assert (starts.std(0) / POST_SD - 1).abs().max() < 0.25
    raw = nle.proposal.sample((400,), x=X_O, seed=0)
    assert (raw.mean(0) - POST_MEAN).abs().max() > tol
    torch.testing.assert_close(starts, nle._transform(nle._init_chains(xs, 400, seed=0))[:, 0])
    draws = nle.sample((200,), x=X_O, seed=1, warmup=20)
    assert draws.shape == (200, D)
    a = importance_sample(BatchedProposal(1.0), X_O, nle, num_samples=200, seed=3)
    b = importance_sample(BatchedProposal(1.0), X_O, log_likelihood, num_samples=200, seed=3)
    torch.testing.assert_close(a.log_weights, b.log_weights)
