r"""Why summed NLE misses at n = 100 on ``gauss``: the learned likelihood or the sampler.

One NLE fit per (setting, data seed) on ``bench_iid``'s single-trial pairs (the routes of
:data:`benchmarks.bench_iid.NLE_OPTIONS`). For each of the three observations and n = 10,
100, the posterior that the learned likelihood implies,

.. math:: \hat p(\theta \mid x_{1:n}) \propto p(\theta) \prod_{i=1}^n q_\phi(x_i \mid \theta),

is computed on a ``GRID`` × ``GRID`` grid spanning ±``SPAN`` exact posterior sds around the
exact mean (``gauss``: :math:`\mathcal N(\sum_i x_i/(n+1), I/(n+1))`), so it needs no MCMC.
Per observation and n: the grid posterior's mean error :math:`\max_j |\hat m_j - m_j| /
s` (exact sd :math:`s = (n+1)^{-1/2}`) and sd ratio :math:`\hat s_j / s` farthest from 1;
C2ST of 1,000 grid draws (a cell picked by its mass, then uniform within it) against the
1,000 exact draws ``bench_iid`` uses; and the same for the route's own sampler (the
posterior's ``sample``, ``bench_iid``'s call). Grid C2ST ≈ sampler C2ST says the sampler
draws the learned posterior and the miss is the fit's; a grid well below the sampler says
the sampler misses it.

The per-trial view: :math:`\hat m - m \approx (n+1)^{-1} \sum_i \delta(\theta)` to first
order, with :math:`\delta = \hat\Sigma^{-1}` times the learned mean-function error
:math:`\mathbb E_q[x\mid\theta] - \theta` (the exact likelihood is
:math:`\mathcal N(\theta, I)`), so a per-trial mean error :math:`\delta` shifts the
posterior by about :math:`\delta \sqrt{n}` posterior sds: 0.05 per trial is 0.5 sds at
n = 100, 0.16 at n = 10. "trial bias" is :math:`\max_j |\mathbb E_q[x_j\mid\theta] -
\theta_j|` at each observation's true θ, from ``TRIAL_DRAWS`` surrogate draws (Monte-Carlo
sd :math:`1/\sqrt{4000} = 0.016`).

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_nle_checks --seeds 0 1 2 \
        [--routes nle,nle_baseline] [--budget 1000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch

from benchmarks import warm_up_torch
from benchmarks.bench_iid import NLE_OPTIONS, NUM_SAMPLES, ROUTE_TRAIN, nle_front, training_data
from benchmarks.iid_models import MODELS
from simgen.diagnostics.c2st import c2st

GRID = 150
SPAN = 10.0
TRIALS = (10, 100)
TRIAL_DRAWS = 4000


def grid_posterior(posterior, prior, xo: torch.Tensor, mean: torch.Tensor, sd: float):
    """Grid points ``(G², 2)``, their normalised log-masses and the cell width."""
    axis = torch.linspace(-SPAN, SPAN, GRID)
    width = float(axis[1] - axis[0]) * sd
    g1, g2 = torch.meshgrid(axis, axis, indexing="ij")
    points = mean + sd * torch.stack([g1.reshape(-1), g2.reshape(-1)], 1)
    n = len(xo)
    log_like = torch.zeros(len(points))
    for chunk in torch.arange(len(points)).split(2000):
        theta = points[chunk].repeat_interleave(n, 0)
        x = xo.repeat(len(chunk), 1)
        lp = posterior.likelihood.log_prob(x, theta).reshape(len(chunk), n).sum(1)
        log_like[chunk] = lp
    log_mass = log_like + prior.log_prob(points)
    return points, log_mass - torch.logsumexp(log_mass, 0), width


def grid_draws(points, log_mass, width, num: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(log_mass.exp(), num, replacement=True, generator=g)
    jitter = (torch.rand(num, points.shape[1], generator=g) - 0.5) * width
    return points[idx] + jitter


def errors(draws: torch.Tensor, mean: torch.Tensor, sd: float) -> tuple[float, float]:
    """Largest coordinate's mean error in exact sds; the sd ratio farthest from 1."""
    shift = float(((draws.mean(0) - mean).abs() / sd).max())
    ratios = draws.std(0) / sd
    return shift, float(ratios[(ratios.log()).abs().argmax()])


def check(route: str, budget: int, seed: int) -> list[dict]:
    model = MODELS["gauss"]
    theta, x = training_data(model, budget, seed)
    start = time.process_time()
    posterior = nle_front(route, model.prior).fit(
        theta, x, progress=False, seed=seed, **ROUTE_TRAIN.get(route, {})
    )
    train_s = time.process_time() - start
    rows = []
    for k, full in enumerate(model.observations()):
        theta_o = model.draw_theta(None, torch.Generator().manual_seed(100 + k))
        sim = posterior.likelihood(theta_o.expand(TRIAL_DRAWS, 2), torch.Generator().manual_seed(k))
        trial_bias = float((sim.mean(0) - theta_o).abs().max())
        trial_sd = float((sim.std(0) - 1).abs().max())
        for n in TRIALS:
            xo = full[:n]
            mean, sd = xo.sum(0) / (n + 1), 1 / math.sqrt(n + 1)
            exact = model.reference(xo, NUM_SAMPLES, 10 + k)
            points, log_mass, width = grid_posterior(posterior, model.prior, xo, mean, sd)
            edge = float(log_mass.exp().reshape(GRID, GRID)[[0, -1]].sum())
            grid = grid_draws(points, log_mass, width, NUM_SAMPLES, seed)
            t0 = time.process_time()
            mcmc = posterior.sample((NUM_SAMPLES,), x=xo, seed=seed)
            sample_s = time.process_time() - t0
            rows.append(
                {
                    "route": route, "seed": seed, "obs": k, "n": n, "train_s": train_s,
                    "trial_bias": trial_bias, "trial_sd_error": trial_sd, "edge_mass": edge,
                    "grid_c2st": float(c2st(grid, exact)), "grid_err": errors(grid, mean, sd),
                    "mcmc_c2st": float(c2st(mcmc, exact)), "mcmc_err": errors(mcmc, mean, sd),
                    "sample_s": sample_s,
                }
            )  # fmt: skip
            r = rows[-1]
            print(
                f"{route} s{seed} obs{k} n={n}: trial bias {trial_bias:.3f} | grid C2ST "
                f"{r['grid_c2st']:.3f} err {r['grid_err'][0]:.2f} sd {r['grid_err'][1]:.2f} | "
                f"sampler C2ST {r['mcmc_c2st']:.3f} err {r['mcmc_err'][0]:.2f} sd "
                f"{r['mcmc_err'][1]:.2f} ({sample_s:.1f}s) edge {edge:.1e}",
                flush=True,
            )
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Per (route, seed, n): means over the three observations."""
    lines = [
        "| route | seed | n | trial bias | grid C2ST | grid mean err (sds) | grid sd ratio | "
        "sampler C2ST | sampler mean err (sds) | sampler sd ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["route"], r["seed"], r["n"]) for r in rows}, key=str)
    for route, seed, n in keys:
        sel = [r for r in rows if (r["route"], r["seed"], r["n"]) == (route, seed, n)]

        def m(f, sel=sel):
            return statistics.mean(f(r) for r in sel)

        lines.append(
            f"| {route} | {seed} | {n} | {m(lambda r: r['trial_bias']):.3f} | "
            f"{m(lambda r: r['grid_c2st']):.3f} | {m(lambda r: r['grid_err'][0]):.2f} | "
            f"{m(lambda r: r['grid_err'][1]):.2f} | {m(lambda r: r['mcmc_c2st']):.3f} | "
            f"{m(lambda r: r['mcmc_err'][0]):.2f} | {m(lambda r: r['mcmc_err'][1]):.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--routes", default="nle")
    parser.add_argument("--budget", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up_torch()
    routes = [r for r in args.routes.split(",") if r]
    unknown = sorted(set(routes) - set(NLE_OPTIONS))
    if unknown:
        raise SystemExit(f"unknown routes {unknown}; choose from {', '.join(NLE_OPTIONS)}")
    rows = []
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for route in routes:
            for seed in args.seeds:
                rows += check(route, args.budget, seed)
    print("\n".join(summary(rows)))
    print(f"CPU s: {time.process_time() - start:.0f}")


if __name__ == "__main__":
    main()
