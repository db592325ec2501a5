"""Many i.i.d. trials per parameter (simgen.iid): the convention, NLE/NRE sums, composition.

The conjugate model: theta ~ N(0, I_2), x_i | theta ~ N(theta, S^2 I_2), so for n trials
the posterior is N(sum(x) / (S^2 P), I / P) with P = 1 + n / S^2. Each route is fed the
exact per-trial model (a closed-form likelihood, ratio, or a vector field whose
linear-Gaussian baseline is set to the exact per-trial posterior), so the checks test how
trials are combined, not how well a network learned. The moment check: every coordinate's
mean within TOL_MEAN posterior standard deviations and its standard deviation within
TOL_SD (relative) of the closed form. The control that keeps only the first trial fails
the same check at n = 10 and 100.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal

from simgen import iid
from simgen.errors import NoDensityError, ShapeError, SimulationError
from simgen.estimators import compose
from simgen.estimators.diffusion import Diffusion
from simgen.estimators.flow_matching import FlowMatching
from simgen.estimators.registry import build_estimator
from simgen.mcmc import likelihood_potential, ratio_potential
from simgen.mcmc_posterior import MCMCPosterior
from simgen.posterior import DirectPosterior

D, S = 2, 1.0
PRIOR = MultivariateNormal(torch.zeros(D), torch.eye(D))
THETA_O = torch.tensor([0.5, -0.3])
#: Mean error allowed, in posterior sds: about 5 standard errors of 1,000 independent draws.
TOL_MEAN = 0.16
#: Relative error allowed on each sd (the sd of 1,000 draws has a relative se of 2.2%).
TOL_SD = 0.12


def closed_form(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    precision = 1 + len(x) / S**2
    return x.sum(0) / S**2 / precision, precision**-0.5


def trials(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return THETA_O + S * torch.randn(n, D, generator=generator)


def moments_ok(samples: torch.Tensor, x: torch.Tensor, tol_mean: float = TOL_MEAN) -> bool:
    mean, sd = closed_form(x)
    mean_err = ((samples.mean(0) - mean).abs() / sd).max()
    sd_err = (samples.std(0) / sd - 1).abs().max()
    return bool(mean_err < tol_mean and sd_err < TOL_SD)


class ExactLikelihood(nn.Module):
    def forward(self, theta: torch.Tensor) -> Independent:
        return Independent(Normal(theta, S), 1)


class ExactRatio(nn.Module):
    context_shape = (D,)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(theta, S).log_prob(x).sum(-1)


def exact_field(cls: type, **options) -> DirectPosterior:
    """A vector-field NPE whose (untrained, zero) network sits on the exact per-trial
    posterior N(x / (1 + S^2) * 1, S^2 / (1 + S^2) I) through its baseline."""
    est = cls(D, (D,), gaussian_baseline=True, hidden_features=(16, 16), **options)
    gain = 1 / (1 + S**2)
    with torch.no_grad():
        est.baseline.weight.copy_(gain * torch.eye(D))
        est.baseline.bias.zero_()
        est.baseline.eigvals.fill_(S**2 * gain)
    return DirectPosterior(est, PRIOR, support="reject")


# -- the convention --------------------------------------------------------------------------
def test_trial_sets_pad_with_nan_and_reject_bad_input() -> None:
    x = iid.as_trials([torch.ones(3, D), torch.zeros(D)], (D,), batched=True)
    assert x.shape == (2, 3, D)
    assert iid.counts(x, (D,)).tolist() == [3, 1]
    assert torch.isnan(x[1, 1:]).all()
    assert iid.is_trial_set(torch.ones(4, D), (D,)) and not iid.is_trial_set(torch.ones(1, D), (D,))
    bad = torch.ones(3, D)
    bad[1, 0] = math.nan
    with pytest.raises(SimulationError, match="finite"):
        iid.as_trials(bad, (D,))
    with pytest.raises(ShapeError, match="n_trials"):
        iid.as_trials([torch.ones(3, D + 1)], (D,), batched=True)


def test_routes_that_cannot_combine_trials_name_those_that_can() -> None:
    theta = PRIOR.sample((200,))
    est = build_estimator("nsf", D, (D,))
    est.fit_standardization(theta, theta)
    posterior = DirectPosterior(est, PRIOR)
    for call in (
        lambda: posterior.sample((5,), x=trials(3)),
        lambda: posterior.log_prob(theta[:2], x=trials(3)),
        lambda: posterior.sample_batched((5,), x=[trials(3), trials(2)]),
    ):
        with pytest.raises(ShapeError, match="NLE, NRE, or NPE with the 'diffusion'"):
            call()
    assert posterior.sample((5,), x=trials(1)).shape == (5, D)  # one trial is one observation


def test_composed_posterior_has_no_density() -> None:
    posterior = exact_field(FlowMatching, steps=4)
    with pytest.raises(NoDensityError, match="no density"):
        posterior.log_prob(torch.zeros(1, D), x=trials(3))


# -- NLE and NRE: sums over trials -----------------------------------------------------------
def test_potentials_sum_over_present_trials() -> None:
    sets = [trials(5, seed=1), trials(2, seed=2)]
    x = iid.as_trials(sets, (D,), batched=True)
    theta = PRIOR.sample((7, 2))  # (*, B, D)
    for potential in (
        likelihood_potential(ExactLikelihood(), PRIOR, (D,)),
        ratio_potential(ExactRatio(), PRIOR),
    ):
        got = potential(theta, x)
        for b, xs in enumerate(sets):
            want = Normal(theta[:, b, None], S).log_prob(xs).sum((-1, -2))
            torch.testing.assert_close(got[:, b], want + PRIOR.log_prob(theta[:, b]))


def test_trial_potential_has_finite_gradients_with_padding() -> None:
    x = iid.as_trials([trials(4), trials(1)], (D,), batched=True)
    theta = PRIOR.sample((3, 2)).requires_grad_(True)
    likelihood_potential(ExactLikelihood(), PRIOR, (D,))(theta, x).sum().backward()
    assert torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("route", ["nle", "nre"])
def test_mcmc_posterior_of_n_trials_matches_closed_form(route: str) -> None:
    if route == "nle":
        posterior = MCMCPosterior.from_likelihood(ExactLikelihood(), PRIOR, (D,))
    else:
        posterior = MCMCPosterior.from_ratio(ExactRatio(), PRIOR, (D,))
    for n in (1, 10, 100):
        x = trials(n)
        samples = posterior.sample((1000,), x=x, seed=0, warmup=200)
        # MCMC draws are correlated: twice the independent-draw tolerance.
        assert moments_ok(samples, x, 2 * TOL_MEAN), (route, n)
        if n > 1:
            only_first = posterior.sample((1000,), x=x[:1], seed=0, warmup=200)
            assert not moments_ok(only_first, x, 2 * TOL_MEAN), (route, n)


def test_mcmc_batches_trial_sets_of_different_sizes_up_to_a_thousand() -> None:
    posterior = MCMCPosterior.from_likelihood(ExactLikelihood(), PRIOR, (D,))
    sets = [trials(1000, seed=3), trials(7, seed=4)]
    samples = posterior.sample_batched((1000,), x=sets, seed=0, warmup=200)
    assert samples.shape == (1000, 2, D)
    for b, x in enumerate(sets):
        assert moments_ok(samples[:, b], x, 2 * TOL_MEAN), b
    assert posterior.log_prob(torch.zeros(3, D), x=sets[1]).shape == (3,)


# -- compositional diffusion and flow matching -----------------------------------------------
@pytest.mark.parametrize(
    "cls, options, tol_mean",
    [
        (Diffusion, {"steps": 25}, TOL_MEAN),
        (FlowMatching, {"steps": 12}, TOL_MEAN),
        # Per-trial precisions from 200 draws of each trial's posterior: their ~10% sampling
        # error reweights the trials (0.20 sds at n = 10 with diffusion), so twice TOL_MEAN;
        # the composition multiplies a precision's bias (compose docstring), so diffusion
        # takes its default 50 steps, whose per-trial draws are nearly exact.
        (Diffusion, {"steps": 50, "trial_precision": "per_trial"}, 2 * TOL_MEAN),
        (FlowMatching, {"steps": 12, "trial_precision": "per_trial"}, 2 * TOL_MEAN),
    ],
)
def test_composed_vector_field_matches_closed_form(
    cls: type, options: dict, tol_mean: float
) -> None:
    posterior = exact_field(cls, **options)
    for n in (1, 10, 100):
        x = trials(n)
        samples = posterior.sample((1000,), x=x, seed=0)
        assert moments_ok(samples, x, tol_mean), (cls.name, n)
        if n > 1:
            only_first = posterior.sample((1000,), x=x[:1], seed=0)
            assert not moments_ok(only_first, x, tol_mean), (cls.name, n)


def test_composed_sample_batched_takes_sets_of_different_sizes() -> None:
    posterior = exact_field(FlowMatching, steps=12)
    sets = [trials(30, seed=5), trials(3, seed=6)]
    samples = posterior.sample_batched((1000,), x=sets, seed=0)
    assert samples.shape == (1000, 2, D)
    for b, x in enumerate(sets):
        assert moments_ok(samples[:, b], x), b


def test_residual_floor_keeps_the_gaussian_part_and_the_residual_score() -> None:
    """The floored denoiser g_r + (r/r_c)^2 (mu_{r_c} - g_{r_c}) (compose's docstring) is the
    network's at r = r_c and exact for a Gaussian; for a mixture of two N(+-1, 0.5^2), the
    residual score it carries below r_c = 0.1 is within 5% of the exact denoiser's largest
    move |mu_r - y| (the floor's error is of order (r_c / 0.5)^2 = 4%), where the Gaussian
    part alone, the control, misses by over 50%."""
    dtype = torch.float64
    lam, vecs, m = torch.tensor([1.25], dtype=dtype), torch.eye(1, dtype=dtype), torch.zeros(1)
    s2, centres = 0.5**2, torch.tensor([-1.0, 1.0], dtype=dtype)

    def mixture_denoiser(y: torch.Tensor, r: float) -> torch.Tensor:
        w = Normal(centres, (s2 + r * r) ** 0.5).log_prob(y).softmax(-1)
        return (w * (centres + s2 / (s2 + r * r) * (y - centres))).sum(-1, keepdim=True)

    def gauss(y: torch.Tensor, r: float) -> torch.Tensor:
        return compose.gaussian_denoiser(y, r, m, lam, vecs)

    y = torch.linspace(-2.5, 2.5, 101, dtype=dtype)[:, None]
    r_c = 0.1
    torch.testing.assert_close(
        compose.floored_denoisers(gauss(y, r_c), y, 0.05, r_c, m, lam, vecs), gauss(y, 0.05)
    )
    mu_c = mixture_denoiser(y, r_c)
    torch.testing.assert_close(compose.floored_denoisers(mu_c, y, r_c, r_c, m, lam, vecs), mu_c)
    for r in (0.01, 0.03, 0.07):
        exact = mixture_denoiser(y, r)
        floored = compose.floored_denoisers(mu_c, y, r, r_c, m, lam, vecs)
        move = (exact - y).abs().max()
        assert (floored - exact).abs().max() < 0.05 * move, r
        assert (gauss(y, r) - exact).abs().max() > 0.5 * move, r  # the control
