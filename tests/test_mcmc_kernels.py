"""Each MCMC kernel on a known Gaussian: started at exact draws, its chains stay exact draws.

A kernel that leaves the target invariant keeps chains started from the target distributed as
the target, whatever its settings. With ``CHAINS`` independent chains the sample mean has
standard error ``sigma / sqrt(CHAINS)`` and a (co)variance about ``sqrt(2 / CHAINS)``; each
test states its tolerance in those terms and checks that the same comparison rejects a
kernel aimed at a wrong target.
"""

from __future__ import annotations

import math

import pytest
import torch

from simgen.mcmc import (
    HamiltonianMonteCarlo,
    PyroNUTS,
    RandomWalkMetropolis,
    Sampler,
    SliceSampler,
    StepInfo,
)

MEAN = torch.tensor([1.0, -1.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
PREC = torch.linalg.inv(COV)
CHAINS = 2000


def gaussian(u: torch.Tensor) -> torch.Tensor:
    d = u - MEAN
    return -0.5 * ((d @ PREC) * d).sum(-1)


def shifted(u: torch.Tensor) -> torch.Tensor:
    """The same Gaussian moved by +0.5 in each coordinate: a wrong target."""
    return gaussian(u - 0.5)


def exact_draws(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MEAN + torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(COV).T


def run_kernel(
    sampler: Sampler, start: torch.Tensor, steps: int, seed: int, adapt: bool = False
) -> torch.Tensor:
    """``steps`` transitions of ``sampler`` from ``start``: the final positions. No warm-up;
    ``adapt``: first fit the proposal to ``start`` itself (as one warm-up window would)."""
    generator = torch.Generator().manual_seed(seed)
    state = sampler.init(start)
    if adapt:
        sampler.adapt(start[:, None])  # (chains, T=1, D)
    for _ in range(steps):
        state, info = sampler.step(state, generator)
        assert isinstance(info, StepInfo) and info.acceptance_rate.shape == start.shape[:-1]
    assert torch.allclose(state.log_density, sampler.potential(state.position), atol=1e-4)
    return state.position


def moments_error(samples: torch.Tensor) -> float:
    """Worst absolute error of the mean and covariance entries against the target."""
    mean_err = (samples.mean(0) - MEAN).abs().max()
    cov_err = (torch.cov(samples.T) - COV).abs().max()
    return float(max(mean_err, cov_err))


KERNELS = {
    "rwm": lambda p: RandomWalkMetropolis(p, scale=0.7),
    "slice": lambda p: SliceSampler(p, width=2.0),
    "hmc": lambda p: HamiltonianMonteCarlo(p, step_size=0.4, num_steps=5),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_leaves_the_gaussian_invariant(name: str) -> None:
    start = exact_draws(CHAINS, seed=0)
    out = run_kernel(KERNELS[name](gaussian), start, steps=20, seed=1)
    # s.e. 0.022 (mean) and ~0.03 (covariances) with 2,000 chains: tolerance 0.12 is > 4 s.e.
    # A kernel aimed at the shifted target moves the mean by ~0.5 in 20 steps.
    assert moments_error(out) < 0.12
    # The chains moved: invariance is not the trivial "stay put".
    assert float((out != start).any(-1).float().mean()) > 0.5
    wrong = run_kernel(KERNELS[name](shifted), start, steps=20, seed=1)
    assert moments_error(wrong) > 0.25


def test_adapted_proposals_keep_invariance() -> None:
    """After adapt() (covariance from the chains), rwm and hmc still target the Gaussian."""
    start = exact_draws(CHAINS, seed=2)
    for sampler in (RandomWalkMetropolis(gaussian), HamiltonianMonteCarlo(gaussian)):
        out = run_kernel(sampler, start, steps=20, seed=3, adapt=True)
        assert moments_error(out) < 0.12  # tolerance as above


def test_hmc_dual_averaging_reaches_its_target_acceptance() -> None:
    sampler = HamiltonianMonteCarlo(gaussian, step_size=3.0, num_steps=4, target_accept=0.8)
    generator = torch.Generator().manual_seed(0)
    state = sampler.init(exact_draws(200, seed=4))
    probs = []
    for i in range(300):
        state, info = sampler.step(state, generator)
        sampler.tune(info)
        if i >= 200:
            probs.append(float(info.accept_prob.mean()))
    sampler.end_warmup()
    # Mean acceptance probability over 100 tuned steps x 200 chains: within 0.1 of 0.8.
    assert abs(sum(probs) / len(probs) - 0.8) < 0.1
    assert math.isfinite(sampler.report()["step_size"])


def test_pyro_nuts_leaves_the_gaussian_invariant() -> None:
    chains = 100
    start = exact_draws(chains, seed=5)
    out = run_kernel(PyroNUTS(gaussian, warmup=0), start, steps=3, seed=6)
    # 100 chains: s.e. 0.1 on the mean and ~0.14 on the covariances; tolerance 0.45 is > 3
    # s.e.; the shifted target is 0.5 away in the mean.
    assert moments_error(out) < 0.45
    assert float((out != start).any(-1).float().mean()) > 0.5
