"""simgen.Ensemble and NPE(ensemble=K): the mixture's maths, calibration, files, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import simgen
from simgen.diagnostics import coverage
from simgen.ensemble import Ensemble, member_seed
from simgen.errors import ConfigError, NoDensityError
from simgen.posterior import Posterior

pytestmark = pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")

# The task: θ ~ N(0, 1), x | θ ~ N(θ, σ²); the posterior is N(x / (1 + σ²), σ² / (1 + σ²)).
SIGMA2 = 0.25
POST_SD = math.sqrt(SIGMA2 / (1 + SIGMA2))
PRIOR = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(1), 1.0), 1)


def simulator(theta, generator=None):
    return theta + math.sqrt(SIGMA2) * torch.randn(theta.shape, generator=generator)


class GaussianPosterior(Posterior):
    """N(x / (1 + σ²) + shift · sd, (scale · sd)²): exact when shift = 0 and scale = 1."""

    kind = "direct"
    method = "closed_form"

    def __init__(self, shift: float = 0.0, scale: float = 1.0):
        super().__init__(PRIOR, (1,), 1)
        self.estimator = nn.Linear(1, 1)  # where it computes (the CPU)
        self.shift, self.scale = shift, scale

    def _normal(self, x):
        mean = x / (1 + SIGMA2) + self.shift * POST_SD
        return torch.distributions.Normal(mean, self.scale * POST_SD)

    def sample(self, sample_shape=(), x=None, seed=None, **options):
        xo = self._single_x(x)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        normal = self._normal(xo[0])
        eps = torch.randn((*sample_shape, 1), generator=generator)
        return normal.loc + normal.scale * eps

    def sample_batched(self, sample_shape, x, seed=None, **options):
        xs = self._batch_x(x)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        normal = self._normal(xs)
        eps = torch.randn((*sample_shape, len(xs), 1), generator=generator)
        return normal.loc + normal.scale * eps

    def log_prob(self, theta, x=None, **options):
        return self._normal(self._single_x(x)[0]).log_prob(self._theta(theta))[..., 0]

    def log_prob_batched(self, theta, x, **options):
        return self._normal(self._batch_x(x)).log_prob(self._theta(theta))[..., 0]


OFFSETS = (-1.2, -0.6, 0.0, 0.6, 1.2)  # each member's error, in posterior sds
SHRINK = 0.6  # each member's spread against the true one: overconfident


def overconfident_ensemble() -> Ensemble:
    return Ensemble([GaussianPosterior(shift=d, scale=SHRINK) for d in OFFSETS])


def hpd_coverage_at(posterior, level: float, seed: int) -> float:
    """Share of true θ inside the posterior's ``level`` HPD region (1,000 observations)."""
    result = coverage(posterior, PRIOR, simulator, 1000, 500, seed=seed)
    i = int(torch.argmin(torch.abs(torch.as_tensor(result.levels) - level)))
    return float(result.expected_coverage[i])


def test_mixture_log_prob_is_logmeanexp_of_members():
    ens = overconfident_ensemble()
    x, theta = torch.tensor([0.4]), torch.linspace(-1, 1, 7)[:, None]
    expected = torch.log(torch.stack([m.log_prob(theta, x=x).exp() for m in ens.members]).mean(0))
    torch.testing.assert_close(ens.log_prob(theta, x=x), expected)
    xs = torch.tensor([[0.4], [-1.0]])
    batched = ens.log_prob_batched(theta[:, None].expand(7, 2, 1), xs)
    torch.testing.assert_close(batched[:, 0], expected)


def test_mixture_samples_have_mixture_moments():
    # Mean Σ μ_k / K and variance E[σ_k²] + Var(μ_k); 40,000 draws, within 5 standard errors.
    ens, x = overconfident_ensemble(), torch.tensor([0.4])
    draws = ens.sample((40_000,), x=x, seed=3)[:, 0]
    means = torch.tensor([0.4 / (1 + SIGMA2) + d * POST_SD for d in OFFSETS])
    var = (SHRINK * POST_SD) ** 2 + means.var(unbiased=False)
    se = math.sqrt(float(var) / len(draws))
    assert abs(float(draws.mean()) - float(means.mean())) < 5 * se
    assert abs(float(draws.var()) / float(var) - 1) < 5 * math.sqrt(2 / len(draws))
    torch.testing.assert_close(draws, ens.sample((40_000,), x=x, seed=3)[:, 0])
    assert not torch.equal(draws, ens.sample((40_000,), x=x, seed=4)[:, 0])
    batched = ens.sample_batched((5000,), torch.tensor([[0.4], [-2.0]]), seed=1)
    assert batched.shape == (5000, 2, 1)
    assert abs(float(batched[:, 1].mean()) - (-2.0 / (1 + SIGMA2))) < 5 * math.sqrt(var / 5000)


def test_ensemble_of_overconfident_members_is_better_calibrated():
    # Each member is 0.6x too narrow and off by up to 1.2 sds: its 90% HPD region holds the
    # true θ about 68% of the time (member 2, unbiased) or less. The mixture's spread
    # 0.36 + Var(offsets) = 1.08 true variances makes it nearly calibrated. Tolerance: 0.05
    # (5 binomial standard errors of 1,000 observations); the control is each member, which
    # misses 0.90 by more than 0.15.
    ens = overconfident_ensemble()
    ens_cov = hpd_coverage_at(ens, 0.9, seed=0)
    assert abs(ens_cov - 0.9) < 0.05, ens_cov
    for member in ens.members:
        member_cov = hpd_coverage_at(member, 0.9, seed=0)
        assert member_cov < 0.75, member_cov
    exact = hpd_coverage_at(GaussianPosterior(), 0.9, seed=0)
    assert abs(exact - 0.9) < 0.05


def test_diagnostics_run_on_an_ensemble():
    ens = overconfident_ensemble()
    result = simgen.diagnostics.sbc(ens, PRIOR, simulator, num_simulations=200, num_samples=100)
    assert result.ranks.shape[0] == 200


def test_npe_ensemble_trains_distinct_members_and_round_trips(tmp_path):
    theta = PRIOR.sample((400,))
    x = simulator(theta, torch.Generator().manual_seed(1))
    ens = simgen.NPE(PRIOR, ensemble=3, transforms=1, hidden_features=(16,)).fit(
        theta, x, max_epochs=3, progress=False, seed=0
    )
    assert isinstance(ens, Ensemble) and len(ens) == 3
    w = [m.estimator.state_dict() for m in ens.members]
    key = next(k for k in w[0] if w[0][k].is_floating_point() and w[0][k].numel() > 4)
    assert not torch.equal(w[0][key], w[1][key])  # different seeds, different networks
    xo, th = torch.tensor([0.3]), torch.linspace(-1, 1, 5)[:, None]
    ens.set_default_x(xo)
    path = tmp_path / "ensemble.model"
    ens.save(path)
    loaded = simgen.load(path)
    assert isinstance(loaded, Ensemble) and len(loaded) == 3
    torch.testing.assert_close(loaded.log_prob(th), ens.log_prob(th))
    torch.testing.assert_close(loaded.sample((20,), seed=2), ens.sample((20,), seed=2))
    assert loaded.map(num_init=50, num_iter=5).shape == (1,)
    boot = simgen.NPE(PRIOR, ensemble=2, bootstrap=True, transforms=1, hidden_features=(16,))
    assert len(boot.fit(theta, x, max_epochs=2, progress=False, seed=0)) == 2


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="at least 2"):
        Ensemble([GaussianPosterior()])
    with pytest.raises(ConfigError, match="member 1"):
        Ensemble([GaussianPosterior(), "not a posterior"])
    with pytest.raises(ConfigError, match="ensemble must be"):
        simgen.NPE(PRIOR, ensemble=0)

    class Unnormalised(GaussianPosterior):
        kind = "mcmc"

    with pytest.raises(NoDensityError, match="member 1"):
        Ensemble([GaussianPosterior(), Unnormalised()]).log_prob(torch.zeros(1, 1), x=[0.0])


def test_member_seeds_do_not_overlap_across_base_seeds():
    seeds = {member_seed(base, k) for base in range(20) for k in range(5)}
    assert len(seeds) == 100  # seed + k would give only 24 distinct values


def test_a_damaged_ensemble_file_is_refused(tmp_path):
    theta = PRIOR.sample((200,))
    x = simulator(theta, torch.Generator().manual_seed(1))
    ens = simgen.NPE(PRIOR, ensemble=2, transforms=1, hidden_features=(8,)).fit(
        theta, x, max_epochs=1, progress=False
    )
    path = tmp_path / "ensemble.model"
    ens.save(path)
    payload = torch.load(path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.startswith("members.1.") and "loc" in k)
    payload["state_dict"][key] = payload["state_dict"][key] * float("nan")
    torch.save(payload, path)
    with pytest.raises(simgen.errors.ModelFileError, match=r"members\.1\..*NaN"):
        simgen.load(path)
