"""What sets the width of a TSNPE region on the 10-D tasks (tables of
``benchmarks/results_sequential.md``; run through ``bench_sequential``):

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --true-regions --observations 3 \
        --tasks gaussian_linear_uniform,gaussian_mixture,bernoulli_glm
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --round-one --observations 2
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --glm-round-one --observations 3

:func:`true_regions`: the prior mass of the exact posterior's HPD region. :func:`round_one_regions`:
round 1 of ``simgen.sequential`` at 1k (NPE, nsf, on the 250 prior simulations
``simgen.simulate(..., seed=round_seed(0, 1))``), refitted with each support mode, and the prior
mass of its ε-region from three disjoint sets of 20,000 posterior draws and from 200,000, next
to the exact region's and the share of reference draws outside; with the fit's marginal
standard deviations over the reference's. :func:`glm_round_one`: round 1 on bernoulli_glm
per flow, round-1 size and batch size, against its exact region (what sets the region's size).
"""

from __future__ import annotations

import math

import torch

import simgen
from benchmarks import harness, warm_up_torch
from simgen.sequential import HPDRegion
from simgen.sequential.rounds import round_seed

EPSILONS = (1e-4, 1e-3, 1e-2)


def _seeded_region(posterior, x_o):
    """200,000 draws at a fixed seed, the HPD region built from the first 20,000, and the
    region's ``log q`` of every draw (the same draws for every setting compared)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        draws = posterior.sample((200_000,), x=x_o).reshape(200_000, -1)
    region = HPDRegion(posterior, x_o, draws=draws[:20_000])
    return draws, region, region.log_q(draws)


def _prior_masses(log_q, q_prior, eps: float):
    """The region's prior mass at the ε-quantile threshold of each of three 20,000-draw
    parts of ``log_q`` (the threshold's noise), and the threshold τ and mass from all draws."""
    masses = []
    for k in range(3):
        part = torch.sort(log_q[k * 20_000 : (k + 1) * 20_000]).values
        masses.append(float((q_prior >= part[int(eps * len(part))]).float().mean()))
    tau = torch.sort(log_q).values[int(eps * len(log_q))]
    return masses, tau, float((q_prior >= tau).float().mean())


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
            draws, region, log_q = _seeded_region(posterior, x_o)
            q_prior, q_reference = region.log_q(prior), region.log_q(reference)
            ratio = draws.std(0) / reference.std(0)
            for eps in EPSILONS:
                masses, tau, mass = _prior_masses(log_q, q_prior, eps)
                outside = float((q_reference < tau).float().mean())
                exact_mass = float((at_prior >= exact[int(eps * len(exact))]).float().mean())
                lines.append(
                    f"| {i} | {support} | {float(ratio.mean()):.2f}, {float(ratio.max()):.2f} | "
                    f"{eps:g} | {', '.join(f'{m:.3f}' for m in masses)} | {mass:.3f} | "
                    f"{outside:.4f} | {exact_mass:.3f} |"
                )
            print(lines[-1], flush=True)
    return lines


#: Round-1 settings of :func:`glm_round_one`: (family, simulations in round 1, training
#: options, ``simgen.NPE`` options such as ``gaussian_baseline``); a family ``name-mixing``
#: is the flow ``name`` with that ``mixing`` between transforms.
GLM_SETTINGS = (
    ("nsf-none", 250, {}, {}),
    ("maf", 250, {}, {}),
    ("nsf-none", 500, {}, {}),
    ("nsf-lu", 250, {}, {}),
)


def _chi2_quantile(dim: int, q: float, draws: int = 2_000_000) -> float:
    """The q-quantile of a chi-square with ``dim`` degrees of freedom (Monte Carlo, seeded)."""
    g = torch.Generator().manual_seed(11)
    d2 = (torch.randn(draws, dim, generator=g, dtype=torch.float64) ** 2).sum(-1)
    return float(torch.quantile(d2[:1_000_000], q))


def _mahalanobis2(theta: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (theta.double() - mean).T, upper=False)
    return (z**2).sum(0)


def glm_round_one(
    num_observations: int, epsilon: float = 1e-4, settings: tuple = GLM_SETTINGS
) -> list[str]:
    """Round 1 of a 1k TSNPE run on bernoulli_glm, taken apart (``--glm-round-one``).

    For each observation and round-1 setting (:data:`GLM_SETTINGS`: the family, and 250 or
    500 prior simulations ``simgen.simulate(..., seed=round_seed(0, 1))``), one fit, 200,000
    of its draws at x_o and 200,000 prior draws. Columns: the fit's marginal sd over the
    reference's (mean, max); its mean's offset from the reference's in reference sds (max
    over coordinates); the volume ratio det(S_fit)^½ / det(S_ref)^½ of the two covariances;
    the prior mass of the fit's ε-HPD region with τ from 20,000 draws (three disjoint sets)
    and from 200,000; the same mass for the Gaussian ellipsoid of the fit's draws at the
    χ²₁₀ quantile (what the region would be if log q were the Gaussian of the fit's own
    mean and covariance) and for :class:`~simgen.sequential.EllipsoidRegion` (empirical
    quantile, radius × 1.2); the share of the reference outside each; and the exact
    region's mass (τ the lowest log-posterior of the 10⁴ reference draws, as
    :func:`true_regions`).
    """
    from simgen.sequential import EllipsoidRegion

    warm_up_torch()
    task = harness.load_task("bernoulli_glm")
    _, xs = harness.observations("bernoulli_glm", "report", num_observations)
    r2 = _chi2_quantile(task.DIM, 1 - epsilon)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        prior = task.prior.sample((200_000,)).float()
    sims = {
        n: simgen.simulate(task.simulator, task.prior, n, seed=round_seed(0, 1))
        for n in sorted({setting[1] for setting in settings})
    }
    lines = [
        "| obs | round 1 | fit sd / ref sd: mean, max | mean offset (ref sd), max | volume "
        "ratio | HPD mass: 3 x 20k draws | 200k | reference outside (20k, 200k) | Gaussian "
        "ellipsoid of the fit: mass, ref outside | EllipsoidRegion: mass, ref outside | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, x_o in enumerate(xs):
        reference = harness.reference("bernoulli_glm", "report", i)["samples"].float()
        tau_exact = torch.sort(_glm_log_post(task, reference, x_o)).values[
            int(epsilon * len(reference))
        ]
        exact = float((_glm_log_post(task, prior, x_o) >= tau_exact).float().mean())
        ref_mean, ref_cov = reference.double().mean(0), torch.cov(reference.double().T)
        for family, n, train, npe_options in settings:
            name, _, mixing = family.partition("-")
            npe_options = {**npe_options, **({"mixing": mixing} if mixing else {})}
            npe = simgen.NPE(task.prior, estimator=name, **npe_options)
            posterior = npe.fit(sims[n].theta, sims[n].x, seed=round_seed(0, 1), **train)
            extra = {**train, **{k: v for k, v in npe_options.items() if k != "mixing"}}
            label = ", ".join([family, str(n), *(f"{k}={v}" for k, v in extra.items())])
            label += f" ({npe.history.epochs} epochs)"
            draws, region, log_q = _seeded_region(posterior, x_o)
            q_prior, q_ref = region.log_q(prior), region.log_q(reference)
            masses, tau, mass = _prior_masses(log_q, q_prior, epsilon)
            out20 = float((q_ref < region.threshold).float().mean())
            out200 = float((q_ref < tau).float().mean())
            mean, cov = draws.double().mean(0), torch.cov(draws.double().T)
            sd_ratio = cov.diagonal().sqrt() / ref_cov.diagonal().sqrt()
            offset = ((mean - ref_mean).abs() / ref_cov.diagonal().sqrt()).max()
            volume = math.exp(0.5 * (torch.logdet(cov) - torch.logdet(ref_cov)).item())
            gauss_prior = float((_mahalanobis2(prior, mean, cov) <= r2).float().mean())
            gauss_ref = float((_mahalanobis2(reference, mean, cov) > r2).float().mean())
            ellipsoid = EllipsoidRegion(draws[:20_000], epsilon)
            ell_prior = float(ellipsoid.contains(prior).float().mean())
            ell_ref = 1 - float(ellipsoid.contains(reference).float().mean())
            lines.append(
                f"| {i} | {label} | {float(sd_ratio.mean()):.2f}, "
                f"{float(sd_ratio.max()):.2f} | {float(offset):.2f} | {volume:.1f} | "
                f"{', '.join(f'{m:.3f}' for m in masses)} | {mass:.3f} | {out20:.4f}, "
                f"{out200:.4f} | {gauss_prior:.3f}, {gauss_ref:.4f} | {ell_prior:.3f}, "
                f"{ell_ref:.4f} | {exact:.4f} |"
            )
            print(lines[-1], flush=True)
    return lines
