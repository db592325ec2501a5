"""What sets the width of a TSNPE region on the 10-D tasks (tables of
``benchmarks/results_sequential.md``; run through ``bench_sequential``):

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --true-regions --observations 3 \
        --tasks gaussian_linear_uniform,gaussian_mixture,bernoulli_glm
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --round-one --observations 2

:func:`true_regions`: the prior mass of the exact posterior's HPD region. :func:`round_one_regions`:
round 1 of ``simgen.sequential`` at 1k (NPE, nsf, on the 250 prior simulations
``simgen.simulate(..., seed=round_seed(0, 1))``), refitted with each support mode, and the prior
mass of its ε-region from three disjoint sets of 20,000 posterior draws and from 200,000, next
to the exact region's and the share of reference draws outside; with the fit's marginal
standard deviations over the reference's.
"""

from __future__ import annotations

import math

import torch

import simgen
from benchmarks import harness, warm_up_torch
from simgen.sequential import HPDRegion
from simgen.sequential.rounds import round_seed

EPSILONS = (1e-4, 1e-3, 1e-2)


def _log_likelihood(task, name: str, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The closed-form log-likelihood of the two tasks :func:`true_regions` covers."""
    d2 = ((x - theta) ** 2).sum(-1)
    if name == "gaussian_linear_uniform":
        return -0.5 * d2 / task.LIKELIHOOD_VAR
    parts = [-0.5 * d2 / s**2 - theta.shape[-1] * math.log(s) for s in task.SCALES]
    return torch.logaddexp(*parts)


def true_regions(
    num_observations: int, epsilon: float = 1e-4, tasks: tuple = ("gaussian_linear_uniform",)
) -> list[str]:
    """Prior mass of the exact posterior's HPD region holding 1 - ε (the region a perfect
    round-1 fit would give), for those of ``tasks`` with a closed-form likelihood (others
    are skipped). With a uniform prior (gaussian_linear_uniform, gaussian_mixture) the
    posterior density is the likelihood inside the box: 10⁵ exact posterior draws set the
    threshold, 2·10⁵ prior draws the mass. bernoulli_glm's log-posterior is its
    log-likelihood plus the Gaussian prior's log-density; its reference is MCMC, so the
    threshold comes from the harness's cached 10⁴ reference draws (at ε = 1e-4 their lowest
    value: an estimate of the region's size, not a precise one)."""
    lines = ["| task | observation | prior mass of the exact 1e-4 HPD region |", "|---|---|---|"]
    for name in [t for t in ("gaussian_linear_uniform", "gaussian_mixture") if t in tasks]:
        task = harness.load_task(name)
        _, xs = harness.observations(name, "report", num_observations)
        for i, x in enumerate(xs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(i)
                draws = task.reference_posterior(x, 100_000, seed=1)
                prior = task.prior.sample((200_000,))
            log_q = torch.sort(_log_likelihood(task, name, draws, x)).values
            tau = log_q[int(epsilon * len(log_q))]
            mass = float((_log_likelihood(task, name, prior, x) >= tau).float().mean())
            lines.append(f"| {name} | {i} | {mass:.3f} |")
    if "bernoulli_glm" in tasks:
        lines += _glm_regions(num_observations, epsilon)
    return lines


def _glm_log_post(task, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return task.log_likelihood(theta, x) + task.prior.log_prob(theta)


def _glm_regions(num_observations: int, epsilon: float) -> list[str]:
    task = harness.load_task("bernoulli_glm")
    _, xs = harness.observations("bernoulli_glm", "report", num_observations)
    lines = []
    for i, x in enumerate(xs):
        draws = harness.reference("bernoulli_glm", "report", i)["samples"].float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            prior = task.prior.sample((200_000,))

        tau = torch.sort(_glm_log_post(task, draws, x)).values[int(epsilon * len(draws))]
        mass = float((_glm_log_post(task, prior, x) >= tau).float().mean())
        lines.append(f"| bernoulli_glm | {i} | {mass:.4f} |")
    return lines


def round_one_regions(num_observations: int, n: int = 250) -> list[str]:
    """The round-1 table (module docstring): one line per observation, support mode and ε."""
    warm_up_torch()
    name = "gaussian_linear_uniform"
    task = harness.load_task(name)
    _, xs = harness.observations(name, "report", num_observations)
    sims = simgen.simulate(task.simulator, task.prior, n, seed=round_seed(0, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        prior = task.prior.sample((100_000,)).float()
    lines = [
        "| observation | support | fit sd / reference sd: mean, max | ε | prior mass: three "
        "sets of 20k draws | 200k draws | reference outside (200k) | exact region |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, x_o in enumerate(xs):
        reference = harness.reference(name, "report", i)["samples"][:20_000].float()
        exact = torch.sort(_log_likelihood(task, name, reference, x_o)).values
        at_prior = _log_likelihood(task, name, prior, x_o)
        for support in ("reject", "transform"):
            npe = simgen.NPE(task.prior, support=support)
            posterior = npe.fit(sims.theta, sims.x, seed=round_seed(0, 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(5)
                draws = posterior.sample((200_000,), x=x_o).reshape(200_000, -1)
            region = HPDRegion(posterior, x_o, draws=draws[:20_000])
            log_q = region.log_q(draws)
            q_prior, q_reference = region.log_q(prior), region.log_q(reference)
            ratio = draws.std(0) / reference.std(0)
            for eps in EPSILONS:
                masses = []
                for k in range(3):
                    part = torch.sort(log_q[k * 20_000 : (k + 1) * 20_000]).values
                    masses.append(float((q_prior >= part[int(eps * len(part))]).float().mean()))
                tau = torch.sort(log_q).values[int(eps * len(log_q))]
                mass = float((q_prior >= tau).float().mean())
                outside = float((q_reference < tau).float().mean())
                exact_mass = float((at_prior >= exact[int(eps * len(exact))]).float().mean())
                lines.append(
                    f"| {i} | {support} | {float(ratio.mean()):.2f}, {float(ratio.max()):.2f} | "
                    f"{eps:g} | {', '.join(f'{m:.3f}' for m in masses)} | {mass:.3f} | "
                    f"{outside:.4f} | {exact_mass:.3f} |"
                )
            print(lines[-1], flush=True)
    return lines
