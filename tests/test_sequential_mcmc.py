"""Random-walk Metropolis on a posterior with separated modes (as slcp's): with
``covariance="within"`` the warm-up covariance centres each chain on its own mean, so
proposals keep one mode's scale; the pooled default spans the gap between the modes. And
where the chains start: SIR from pooled simulations (``sequential(..., chain_init="pool")``)
reaches modes that prior candidates miss."""

from __future__ import annotations

import pytest
import torch

from simgen.errors import ConfigError
from simgen.mcmc import run_mcmc

SD, SHIFT = 0.05, 3.0


def two_modes(u: torch.Tensor) -> torch.Tensor:
    """Equal mixture of N((±3, 0), 0.05² I): modes 120 standard deviations apart."""
    parts = [-0.5 * (((u - torch.tensor([s, 0.0])) / SD) ** 2).sum(-1) for s in (SHIFT, -SHIFT)]
    return torch.logaddexp(*parts)


def within_mode_sd(covariance: str) -> tuple[float, float]:
    # 40 chains, half started at each mode's centre (as SIR starts chains in every mode);
    # seeded. Returns the acceptance rate and the worst per-mode, per-coordinate sd.
    init = torch.tensor([[SHIFT, 0.0]] * 20 + [[-SHIFT, 0.0]] * 20)
    result = run_mcmc(
        two_modes, init, 100, warmup=100, thin=5, method="rwm", seed=0, warn=False,
        sampler_options={"covariance": covariance},
    )  # fmt: skip
    samples = result.samples.reshape(-1, 2)
    sds = [samples[samples[:, 0] * s > 0].std(0) for s in (1, -1)]
    worst = max(float((sd / SD - 1).abs().max()) for sd in sds)
    return result.acceptance_rate, worst


def test_rwm_keeps_each_mode_at_its_own_scale():
    # Check: every per-mode sd within 25% of 0.05 (4,000 autocorrelated draws, 2,000 a mode;
    # seeded, measured 2-10%). The pooled covariance (the control) spans the two modes: its
    # proposals are scaled down along the gap's axis until some are accepted, so the other
    # axis barely moves from the chains' start and fails the same check.
    acceptance, worst = within_mode_sd("within")
    assert acceptance > 0.15 and worst < 0.25
    _, worst_pooled = within_mode_sd("pooled")
    assert worst_pooled > 0.25


def test_rwm_covariance_option_is_checked():
    with pytest.raises(ConfigError, match="covariance"):
        run_mcmc(two_modes, torch.zeros(4, 2), 5, sampler_options={"covariance": "full"})


def two_mode_posterior():
    """An MCMC posterior on N(0, 2² I) whose potential is the equal mixture of
    N((±1, 0), 0.02² I): each mode holds about 3e-4 of the prior's mass near it."""
    from torch.distributions import MultivariateNormal

    from simgen.mcmc_posterior import MCMCPosterior

    prior = MultivariateNormal(torch.zeros(2), 4.0 * torch.eye(2))

    def potential(theta, x):
        modes = [((theta - torch.tensor([s, 0.0])) / 0.02) ** 2 for s in (1.0, -1.0)]
        return torch.logaddexp(*[-0.5 * m.sum(-1) for m in modes])

    return MCMCPosterior(potential, prior, (1,), torch.nn.Linear(1, 1), "nle")


def minority_mode_share(start) -> float:
    posterior = two_mode_posterior()
    posterior.proposal = start
    draws = posterior.sample((400,), x=torch.zeros(1), seed=0, warmup=50)
    right = float((draws[:, 0] > 0).float().mean())
    return min(right, 1 - right)


def test_pooled_chain_starts_reach_every_mode_the_pool_holds():
    # 16 chains, 320 SIR candidates. Check: the smaller mode holds at least 25% of 400 draws
    # (seeded; half the pooled θ lie at each mode). The control, prior candidates, has none
    # within 0.1 of either mode, so one candidate takes the weight, every chain starts there
    # and random-walk chains stay in that one mode: the smaller mode's share fails the check.
    from simgen.sequential.starts import PooledStart

    generator = torch.Generator().manual_seed(0)
    pool = 0.05 * torch.randn(200, 2, generator=generator)
    pool[:100, 0] += 1.0
    pool[100:, 0] -= 1.0
    assert minority_mode_share(PooledStart(pool)) >= 0.25
    assert minority_mode_share(None) < 0.25


def test_pooled_start_checks_its_pool():
    from simgen.sequential.starts import PooledStart

    with pytest.raises(ConfigError, match="PooledStart"):
        PooledStart(torch.zeros(0, 2))
    start = PooledStart(torch.arange(6.0).reshape(3, 2))
    assert start.sample_batched((5,), torch.zeros(2, 1)).shape == (5, 2, 2)
    assert start.log_prob_batched(torch.zeros(5, 2, 2)).shape == (5, 2)
