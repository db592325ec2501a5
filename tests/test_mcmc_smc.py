"""Tempered SMC (``method="smc"``, :mod:`simgen.mcmc.smc`): mode weights, moments, support."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simgen import BoxUniform
from simgen.errors import ConfigError
from simgen.mcmc import MCMCConfig, run_mcmc
from simgen.mcmc.potentials import unconstrained
from simgen.mcmc.smc import Reference, SMCOptions, ess_of, prior_reference, systematic
from simgen.mcmc_posterior import MCMCPosterior
from simgen.priors import in_support, support_transform

#: Two unit-variance modes at (-10, 0) and (10, 0), 20 sds apart, weights 0.3 and 0.7.
WEIGHTS, CENTRES = (0.3, 0.7), torch.tensor([[-10.0, 0.0], [10.0, 0.0]])
#: The reference: N(0, 10^2 I), wide enough to hold both modes.
REF_SD = 10.0


def mixture(u: torch.Tensor) -> torch.Tensor:
    """log of 0.3 N(u; c1, I) + 0.7 N(u; c2, I), ``(*, 2) -> (*)``."""
    terms = [
        math.log(w) - 0.5 * ((u - c) ** 2).sum(-1) - math.log(2 * math.pi)
        for w, c in zip(WEIGHTS, CENTRES)
    ]
    return torch.logsumexp(torch.stack(terms), 0)


def gaussian_reference(batch: int = 1) -> Reference:
    def sample(n: int, generator: torch.Generator | None) -> torch.Tensor:
        return REF_SD * torch.randn(n, batch, 2, generator=generator)

    def log_prob(u: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (u / REF_SD) ** 2 - math.log(REF_SD * math.sqrt(2 * math.pi))).sum(-1)

    return Reference(sample, log_prob)


def mixture_errors(samples: torch.Tensor) -> dict[str, float]:
    """How far ``samples`` ``(n, 2)`` are from the mixture: the right mode's share, and in
    each mode the mean and sd errors of both coordinates (worst)."""
    right = samples[:, 0] > 0
    errors = {"share": abs(float(right.float().mean()) - WEIGHTS[1])}
    for side, centre in ((right, CENTRES[1]), (~right, CENTRES[0])):
        part = samples[side]
        if len(part) < 10:
            errors["mean"], errors["sd"] = math.inf, math.inf
            break
        errors["mean"] = max(errors.get("mean", 0.0), float((part.mean(0) - centre).abs().max()))
        errors["sd"] = max(errors.get("sd", 0.0), float((part.std(0) - 1).abs().max()))
    return errors


def within_tolerance(errors: dict[str, float]) -> bool:
    # 4,000 draws: i.i.d. s.e. of the share 0.007, of a mode's mean 0.03 (right) / 0.03
    # (left, 1,200 draws), of its sd 0.02; SMC's resampling copies inflate them about 2-4x.
    # Tolerances: share 0.05, means 0.15, sds 0.12.
    return errors["share"] < 0.05 and errors["mean"] < 0.15 and errors["sd"] < 0.12


def test_smc_recovers_mode_weights_and_moments() -> None:
    result = run_mcmc(mixture, torch.zeros(40, 1, 2), 100, method="smc", seed=0,
                      reference=gaussian_reference())  # fmt: skip
    assert result.samples.shape == (40, 100, 1, 2)
    samples = result.samples.reshape(-1, 2)
    errors = mixture_errors(samples)
    assert within_tolerance(errors), errors
    assert result.extra["stages"] >= 2 and not result.extra["capped"]
    assert math.isnan(result.rhat)  # particles are not chains
    # The reported potential is the target's at each particle.
    assert torch.allclose(result.log_density.reshape(-1), mixture(samples), atol=1e-4)


def test_control_random_walk_chains_in_one_mode_fail_the_same_check() -> None:
    """Random-walk chains all started in the left mode never reach the right one."""
    init = CENTRES[0] + 0.1 * torch.randn(40, 1, 2, generator=torch.Generator().manual_seed(0))
    result = run_mcmc(mixture, init, 100, warmup=100, thin=10, method="rwm", seed=0, warn=False)
    errors = mixture_errors(result.samples.reshape(-1, 2))
    assert not within_tolerance(errors), errors
    assert errors["share"] > 0.5


def test_smc_is_seeded_and_runs_a_batch_of_observations() -> None:
    def twice(u: torch.Tensor) -> torch.Tensor:  # observation 1 is the mirrored mixture
        return torch.stack([mixture(u[..., 0, :]), mixture(-u[..., 1, :])], -1)

    run = lambda seed: run_mcmc(twice, torch.zeros(20, 2, 2), 100, method="smc",  # noqa: E731
                                seed=seed, reference=gaussian_reference(2))  # fmt: skip
    first, again = run(0), run(0)
    assert torch.equal(first.samples, again.samples)
    samples = first.samples.reshape(-1, 2, 2)
    assert within_tolerance(mixture_errors(samples[:, 0]))
    assert within_tolerance(mixture_errors(-samples[:, 1]))


def test_support_respected_under_a_box_prior_through_a_posterior() -> None:
    """Prior U(0, 1)^2, likelihood N(0.95, 0.05^2) per coordinate: the posterior is a
    Gaussian cut at 1 (mean 0.95 - 0.05 φ(1)/Φ(1) = 0.9356 per coordinate)."""
    prior = BoxUniform(torch.zeros(2), torch.ones(2))

    def potential(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inside = in_support(prior, theta)
        safe = torch.where(inside[..., None], theta, torch.full_like(theta, 0.5))
        value = -0.5 * (((safe - 0.95) / 0.05) ** 2).sum(-1) + prior.log_prob(safe)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    posterior = MCMCPosterior(potential, prior, (1,), nn.Linear(1, 1), "nle",
                              mcmc=MCMCConfig(method="smc"))  # fmt: skip
    samples = posterior.sample((2000,), x=torch.zeros(1), seed=0)
    assert samples.shape == (2000, 2)
    assert bool(((samples > 0) & (samples < 1)).all())
    # s.e. of the mean 0.0009 (sd 0.04, 2,000 draws) × ~3 for SMC: tolerance 0.008.
    assert float((samples.mean(0) - 0.9356).abs().max()) < 0.008
    assert posterior.last_mcmc.method == "smc" and posterior.last_mcmc.extra["particles"] == 2000
    # The driver's prior reference is normalised in u-space: its mean density ratio to the
    # prior draws' own is 1 (log r(u) = log p(T u) + log|J|, checked by Monte Carlo).
    transform = support_transform(prior)
    reference = prior_reference(lambda n: prior.sample((n, 1)), prior, transform)
    u = reference.sample(5, torch.Generator().manual_seed(0))
    assert u.shape == (5, 1, 2) and torch.isfinite(reference.log_prob(u)).all()


def test_resampling_and_ess_helpers() -> None:
    log_w = torch.log(torch.tensor([[0.1], [0.0], [0.6], [0.3]]))
    index = systematic(log_w, torch.Generator().manual_seed(0))
    counts = torch.bincount(index[:, 0], minlength=4)
    assert counts[1] == 0 and counts.sum() == 4  # a zero weight is never copied
    assert torch.allclose(ess_of(torch.zeros(10, 3)), torch.full((3,), 10.0))


def test_bad_options_and_missing_reference_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="reference"):
        run_mcmc(mixture, torch.zeros(4, 2), 10, method="smc")
    with pytest.raises(ConfigError, match="num_moves"):
        run_mcmc(mixture, torch.zeros(4, 1, 2), 10, method="smc",
                 reference=gaussian_reference(), sampler_options={"num_moves": 0})  # fmt: skip
    with pytest.raises(ConfigError, match="sampler_options"):
        SMCOptions.from_options({"moves": 3})
    with pytest.raises(ConfigError, match="smc"):
        MCMCConfig(method="tempering")


def test_unconstrained_potential_and_reference_give_the_likelihood() -> None:
    """log L = potential - log r is the likelihood term alone (the Jacobian cancels)."""
    prior = BoxUniform(-torch.ones(1), torch.ones(1))
    transform = support_transform(prior)

    def psi(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (theta**2).sum(-1) + prior.log_prob(theta)

    log_density = unconstrained(psi, transform, torch.zeros(1, 1))
    reference = prior_reference(lambda n: prior.sample((n, 1)), prior, transform)
    u = torch.linspace(-3, 3, 7)[:, None, None]
    expected = -0.5 * transform(u)[..., 0] ** 2
    assert torch.allclose(log_density(u) - reference.log_prob(u), expected, atol=1e-5)
