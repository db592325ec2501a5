"""Calibration diagnostics against known answers.

On the 2-d Gaussian linear model the exact posterior is N(x/2, 0.05 I). From it we build an
overconfident (std x0.6), an underconfident (std x1.6) and a biased (mean + 1 posterior std)
posterior in closed form. SBC, TARP, HPD coverage and the z-score test must pass the exact
one and flag every bad one, each in the right direction where the diagnostic has one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from simgen.diagnostics import (
    coverage,
    draw,
    predictive_check,
    sbc,
    tarp,
    zscore_contraction,
)
from simgen.diagnostics.coverage import coverage_from_log_probs
from simgen.errors import NoDensityError
from simulators import gaussian_linear

DIM = 2
POST_VAR = 1.0 / (1.0 / gaussian_linear.PRIOR_VAR + 1.0 / gaussian_linear.LIKELIHOOD_VAR)
TASK = gaussian_linear.make(dim=DIM)
NUM_SIMULATIONS, NUM_SAMPLES = 300, 300


class GaussianPosterior:
    """Closed-form posterior N(x/2 + shift, (scale^2 * 0.05) I) with the posterior interface."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        self.scale, self.shift = scale, shift
        self.std = scale * POST_VAR**0.5

    def _mean(self, x: Tensor) -> Tensor:
        return POST_VAR / gaussian_linear.LIKELIHOOD_VAR * x + self.shift

    def sample_batched(self, sample_shape: tuple[int, ...], x: Tensor) -> Tensor:
        mean = self._mean(x)
        return mean + self.std * torch.randn(*sample_shape, *mean.shape)

    def sample(self, sample_shape: tuple[int, ...], x: Tensor) -> Tensor:
        return self.sample_batched(sample_shape, x.reshape(1, DIM)).squeeze(-2)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        normal = torch.distributions.Normal(self._mean(x.reshape(DIM)), self.std)
        return normal.log_prob(theta).sum(-1)


class SampleOnly:
    """Exact posterior with only ``sample`` (exercises the loop fallback and coverage error)."""

    def __init__(self) -> None:
        self._inner = GaussianPosterior()

    def sample(self, sample_shape: tuple[int, ...], x: Tensor) -> Tensor:
        return self._inner.sample(sample_shape, x)


POSTERIORS = {
    "exact": GaussianPosterior(),
    "overconfident": GaussianPosterior(scale=0.6),
    "underconfident": GaussianPosterior(scale=1.6),
    "biased": GaussianPosterior(shift=POST_VAR**0.5),
}


@pytest.fixture(scope="module")
def draws() -> dict[str, object]:
    return {
        name: draw(post, TASK.prior, TASK.simulator, NUM_SIMULATIONS, NUM_SAMPLES, seed=0)
        for name, post in POSTERIORS.items()
    }


def _run(fn, name: str, draws: dict[str, object]):  # noqa: ANN001, ANN202
    return fn(POSTERIORS[name], TASK.prior, TASK.simulator, seed=0, draws=draws[name])


@pytest.mark.parametrize("fn", [sbc, tarp, coverage, zscore_contraction])
def test_exact_posterior_passes(fn, draws) -> None:  # noqa: ANN001
    result = _run(fn, "exact", draws)
    assert result.passed, result.to_dict()


@pytest.mark.parametrize("name", ["overconfident", "underconfident", "biased"])
@pytest.mark.parametrize("fn", [sbc, tarp, coverage, zscore_contraction])
def test_bad_posteriors_are_flagged(fn, name: str, draws) -> None:  # noqa: ANN001
    result = _run(fn, name, draws)
    assert not result.passed, result.to_dict()
    assert result.to_dict()["passed"] is False


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("exact", "calibrated"),
        ("overconfident", "overconfident"),
        ("underconfident", "underconfident"),
        ("biased", "overconfident"),  # a shifted posterior misses the truth too often
    ],
)
def test_coverage_verdict_names_the_failure(name: str, verdict: str, draws) -> None:  # noqa: ANN001
    assert _run(coverage, name, draws).verdict == verdict


def test_sbc_rank_shapes_and_tarp_atc_signs(draws) -> None:  # noqa: ANN001
    over, under = _run(sbc, "overconfident", draws), _run(sbc, "underconfident", draws)
    edge = lambda r: np.mean((r.ranks < 30) | (r.ranks > 270))  # noqa: E731
    # Uniform ranks put 20% in the outer tenths; U shape (narrow) more, cap shape (wide) less.
    assert edge(over) > 0.3 and edge(under) < 0.1
    assert _run(tarp, "overconfident", draws).atc < 0
    assert _run(tarp, "underconfident", draws).atc > 0
    biased = _run(sbc, "biased", draws)
    assert np.all(biased.ranks.mean(0) < 0.35 * NUM_SAMPLES)  # truth below the shifted mean


def test_sbc_ecdf_band_contains_exact_and_excludes_bad(draws) -> None:  # noqa: ANN001
    assert _run(sbc, "exact", draws).within_band.all()
    for name in ["overconfident", "underconfident", "biased"]:
        assert not _run(sbc, name, draws).within_band.any(), name


def test_zscore_and_contraction_match_closed_form(draws) -> None:  # noqa: ANN001
    result = _run(zscore_contraction, "exact", draws)
    # Posterior var / prior var = 0.5 exactly; 300 samples give ~8% relative error per obs.
    np.testing.assert_allclose(result.contraction.mean(0), 0.5, atol=0.02)
    np.testing.assert_allclose(result.zscores.std(0), 1.0, atol=0.15)
    wide = _run(zscore_contraction, "underconfident", draws)
    np.testing.assert_allclose(wide.contraction.mean(0), 1 - 1.6**2 * 0.5, atol=0.05)


def test_deterministic_under_seed_and_loop_fallback() -> None:
    a = sbc(POSTERIORS["exact"], TASK.prior, TASK.simulator, 50, 40, seed=3)
    b = sbc(POSTERIORS["exact"], TASK.prior, TASK.simulator, 50, 40, seed=3)
    np.testing.assert_array_equal(a.ranks, b.ranks)
    looped = sbc(SampleOnly(), TASK.prior, TASK.simulator, 50, 40, seed=3)
    assert looped.ranks.shape == (50, DIM) and looped.ranks.max() <= 40
    with pytest.raises(NoDensityError, match="sbc"):
        coverage(SampleOnly(), TASK.prior, TASK.simulator, 20, 20)


def test_coverage_from_uniform_credibilities_is_diagonal() -> None:
    # log q(truth) ranked uniformly among samples <=> credibility ~ U(0, 1).
    rng = np.random.default_rng(0)
    lp_samples = rng.normal(size=(200, 2000))
    lp_true = lp_samples[rng.integers(0, 200, size=2000), np.arange(2000)]
    result = coverage_from_log_probs(lp_true, lp_samples)
    assert np.max(np.abs(result.expected_coverage - result.levels)) < 0.04
    assert np.all(result.band_lower <= result.levels + 1e-9)
    assert np.all(result.levels <= result.band_upper + 1e-9)


def test_predictive_check_passes_typical_and_flags_outlier() -> None:
    good = predictive_check(POSTERIORS["exact"], TASK.simulator, TASK.x_o, seed=0)
    assert good.passed and good.x_predictive.shape == (1000, DIM)
    # An observation 10 predictive stds away that the (fixed) posterior cannot explain.
    wrong = predictive_check(POSTERIORS["biased"], TASK.simulator, TASK.x_o + 3.0, seed=0)
    assert not wrong.passed and wrong.quantile > 0.99


@pytest.mark.slow
def test_sbc_false_alarm_rate_on_exact_posterior() -> None:
    passes = [
        sbc(POSTERIORS["exact"], TASK.prior, TASK.simulator, 200, 100, seed=s).passed
        for s in range(40)
    ]
    # Nominal 95%; Binomial(40, 0.95) is below 33 with probability < 0.1%.
    assert sum(passes) >= 33
