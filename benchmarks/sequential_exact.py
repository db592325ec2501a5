r"""The sampler or the likelihood: SNLE's final draws against draws of the exact likelihood.

SNLE's scored draws come from :math:`q_\phi(x_o\mid\theta)\,p(\theta)`, the NLE of its last
round, drawn by tempered SMC. Two things can keep their C2ST above 0.5: the sampler (SMC on
the right density still misses it) and the fit (:math:`q_\phi \ne p`). This script draws the
posterior of the **exact** likelihood with the same sampler, the same number of draws and
the same seeds, through the same :class:`~simgen.mcmc_posterior.MCMCPosterior` path, and
scores it against the reference as ``bench_sequential`` does (C2ST, reference first). Its
C2ST is the sampler's floor; the gap from it to the SNLE run's is the fit's share.

The exact likelihoods (the simulators' own models):

- ``gaussian_linear_uniform``: :math:`x\mid\theta \sim \mathcal N(\theta, 0.1\,I_{10})`.
- ``gaussian_mixture``: :math:`x\mid\theta \sim \tfrac12\mathcal N(\theta, I_2) +
  \tfrac12\mathcal N(\theta, 0.01\,I_2)`.
- ``bernoulli_glm``: :math:`\log p(x\mid\theta) = \theta^\top x - \sum_t \log(1 +
  e^{v_t^\top\theta})` up to a constant (:func:`simulators.bernoulli_glm.log_likelihood`).

With ``--banks`` it also loads each run's last-round NLE from
``bench_sequential --bank``'s folder and redraws it with the same seeds, so both sides of
the comparison are drawn here, and scores the NLE's draws against the exact likelihood's
(C2ST of two samplers' outputs: 0.5 when the fit is right where the posterior lies).
``--auto`` prints what ``gaussian_baseline="auto"`` would decide for NLE's MAF in each round
(:func:`auto_decisions`).

    OMP_NUM_THREADS=1 python -m benchmarks.sequential_exact --tasks bernoulli_glm \
        --observations 3 --seeds 0,1 --methods smc,rwm
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import Tensor, nn

import simgen
from benchmarks import harness
from simgen.diagnostics.c2st import c2st
from simgen.errors import ConfigError
from simgen.mcmc_posterior import MCMCPosterior
from simgen.priors import in_support

#: Tasks with a closed-form likelihood here.
TASKS = ("gaussian_linear_uniform", "gaussian_mixture", "bernoulli_glm")


def log_likelihood(task_name: str) -> callable:
    """``(theta (*, B, D), x (B, X)) -> (*, B)``, the task's exact :math:`\\log p(x\\mid\\theta)`
    (up to a constant in θ)."""
    if task_name == "gaussian_linear_uniform":
        var = harness.load_task(task_name).LIKELIHOOD_VAR
        return lambda theta, x: -0.5 * ((x - theta) ** 2).sum(-1) / var
    if task_name == "gaussian_mixture":
        scales = harness.load_task(task_name).SCALES

        def mixture(theta: Tensor, x: Tensor) -> Tensor:
            sq = ((x - theta) ** 2).sum(-1)
            d = theta.shape[-1]
            parts = [-0.5 * sq / s**2 - d * math.log(s) for s in scales]
            return torch.logsumexp(torch.stack(parts), 0) - math.log(len(scales))

        return mixture
    if task_name == "bernoulli_glm":
        task = harness.load_task(task_name)

        def glm(theta: Tensor, x: Tensor) -> Tensor:
            v = task.design(theta.dtype)
            return (theta * x).sum(-1) - torch.nn.functional.softplus(theta @ v.T).sum(-1)

        return glm
    raise ConfigError(f"No exact likelihood for {task_name!r}; choose from {TASKS}.")


def exact_posterior(task_name: str) -> MCMCPosterior:
    """The task's exact posterior as an NLE posterior: the same samplers, starts and draws
    as an SNLE run's final posterior, with :math:`q_\\phi` replaced by the true likelihood."""
    task = harness.load_task(task_name)
    loglik, prior = log_likelihood(task_name), task.prior

    def potential(theta: Tensor, x: Tensor) -> Tensor:
        inside = in_support(prior, theta)
        safe = torch.where(inside[..., None], theta, prior.mean.expand_as(theta))
        value = loglik(safe, x) + prior.log_prob(safe)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    x_shape = tuple(harness.observations(task_name, "report", 1)[1].shape[1:])
    return MCMCPosterior(potential, prior, x_shape, nn.Module(), "nle")


def score(reference: Tensor, samples: Tensor) -> float:
    finite = torch.isfinite(samples).all(-1)
    return 1.0 if int(finite.sum()) < 10 else float(c2st(reference, samples[finite]))


def run(task_name: str, index: int, seed: int, methods: list[str], args) -> list[dict]:
    """One row per sampler: C2ST of the exact likelihood's draws against the reference, and
    with ``--banks`` those of the run's last-round NLE (same seed) and the two against
    each other."""
    x_o = harness.observations(task_name, "report", index + 1)[1][index]
    reference = harness.reference(task_name, "report", index)["samples"][: args.num_samples]
    exact = exact_posterior(task_name)
    nle = None
    if args.banks:
        from benchmarks.sequential_regions import bank_folder

        folder = bank_folder(task_name, args.budget, args.banks, index, seed)
        path = folder / f"round_{args.rounds}.simgen"
        nle = simgen.load(path, prior=harness.load_task(task_name).prior) if path.exists() else None
    rows = []
    for method in methods:
        row = {"task": task_name, "observation": index, "seed": seed, "method": method}
        with torch.no_grad():
            start = time.process_time()
            draws = exact.sample((args.num_samples,), x=x_o, seed=seed, method=method)
            row["exact_cpu_s"] = time.process_time() - start
            row["exact"] = score(reference, draws)
            if nle is not None:
                fitted = nle.sample((args.num_samples,), x=x_o, seed=seed, method=method)
                row["nle"] = score(reference, fitted)
                row["nle_vs_exact"] = score(draws, fitted)
        print(row, flush=True)
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Markdown: per (task, sampler), the mean ± sd over runs of each C2ST."""
    lines = ["| task | sampler | runs | exact likelihood | NLE (bank) | NLE vs exact | CPU s |"]
    lines.append("|---|---|---|---|---|---|---|")
    keys = sorted({(r["task"], r["method"]) for r in rows})
    for task, method in keys:
        group = [r for r in rows if (r["task"], r["method"]) == (task, method)]
        cells = [_mean_sd(group, key) for key in ("exact", "nle", "nle_vs_exact")]
        cpu = statistics.mean(r["exact_cpu_s"] for r in group)
        lines.append(f"| {task} | {method} | {len(group)} | {' | '.join(cells)} | {cpu:.1f} |")
    return lines


def _mean_sd(group: list[dict], key: str) -> str:
    values = [r[key] for r in group if key in r]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({len(values)})"


def auto_decisions(task_name: str, index: int, per_round: int = 2500, rounds: int = 4) -> str:
    """What ``gaussian_baseline="auto"`` decides for NLE's MAF on pooled data like an SNLE
    run's: round 1's prior simulations (``round_seed(0, 1)``) plus, for round r, (r - 1) ×
    ``per_round`` reference posterior draws at observation ``index`` simulated once (a stand-in
    for the posterior proposals); per round on/off, the non-Gaussianity E and the edge mass M
    against its bound (:mod:`simgen.estimators.baseline`)."""
    from simgen.estimators.baseline import EDGE_MASS_FACTOR
    from simgen.estimators.registry import build_estimator
    from simgen.sequential.rounds import round_seed

    task = harness.load_task(task_name)
    posterior = harness.reference(task_name, "report", index)["samples"]
    sims = simgen.simulate(task.simulator, task.prior, per_round, seed=round_seed(0, 1))
    parts = []
    for r in range(1, rounds + 1):
        extra = posterior[: per_round * (r - 1)]
        x_extra = task.simulator(extra, generator=torch.Generator().manual_seed(r))
        theta = torch.cat([sims.theta, extra])
        x = torch.cat([sims.x.flatten(1), x_extra.flatten(1)])
        with torch.random.fork_rng(devices=[]):
            flow = build_estimator(
                "maf", x.shape[1], (theta.shape[1],), transforms=7, gaussian_baseline="auto"
            )
        flow.fit_standardization(x, theta)
        b, bound = flow.baseline, EDGE_MASS_FACTOR * 2 / (len(theta) + 1)
        state = "on" if flow.uses_baseline else "off"
        parts.append(f"r{r} {state} (E {b.non_gaussianity:.3f}, M {b.edge_mass:.4f}/{bound:.4f})")
    return f"| {task_name} | {index} | " + " | ".join(parts) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="smc", help="MCMC methods, e.g. smc,rwm")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--banks", default="", help="the bench_sequential spec whose --bank")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--auto", action="store_true", help="gaussian_baseline='auto' per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.auto:
        for task_name in args.tasks.split(","):
            for index in range(args.observations):
                print(auto_decisions(task_name, index), flush=True)
        return
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for task_name in args.tasks.split(","):
        for seed in map(int, args.seeds.split(",")):
            for index in range(args.observations):
                rows += run(task_name, index, seed, methods, args)
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
