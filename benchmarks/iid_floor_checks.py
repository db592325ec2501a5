r"""What limits composed diffusion at 1,000 simulations: the residual floor and the precisions.

One composed-diffusion fit (``control_variate=1.0``) per model of
:mod:`benchmarks.iid_models` on ``bench_iid``'s 1k training data (seed ``--seed``), sampled
at n = 10 and 100 trials of the three observations with the residual floor's
:math:`c` (``simgen.estimators.compose.RESIDUAL_FLOOR``) and the per-trial precisions
(``trial_precision``: the baseline's one covariance, or each trial's from draws of its own
posterior) varied. Per
setting: the share of the sampler's draws that are finite and inside the prior's support
(``exp``'s box; NPE rejects the rest), and on those kept draws C2ST against as many exact
ones and the largest coordinate's mean error in exact posterior sds. A large :math:`c` leans on the
linear-Gaussian baseline at small noise: exact for ``gauss``, not for ``exp``, so the two
models bound the choice.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_floor_checks --seed 1 --draws 200 \
        [--settings 0 3]

``--oracle`` takes the network out on ``exp``: each rate's per-trial posterior
:math:`\propto \theta e^{-\theta x_i}` on a grid of 200 points over the box gives exact
per-trial denoisers, denoising variances and covariances (quadrature), composed by the
GAUSS rule with one shared per-trial variance (the prior-predictive mean of the per-trial
posterior variances, from 4,000 simulations), with per-trial variances, or exactly (the
grid product), and sampled by 60 Heun steps of the VE probability-flow ODE (noise 0.01 to
10 box sds). Mean error in exact sds and sd ratio per observation and rate (n = 10: 300
draws, both rates; n = 100: 150 draws, the first rate, without the exact rule: CPU).

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_floor_checks --oracle
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
import warnings

import torch

import simgen
from benchmarks import warm_up_torch
from benchmarks.bench_iid import ROUTE_OPTIONS, TRIALS, training_data
from benchmarks.iid_models import HIGH, LOW, MODELS
from simgen.diagnostics.c2st import c2st
from simgen.estimators import compose
from simgen.priors import in_support

#: (floor c, ODE steps, trial_precision); the first is the default.
SETTINGS = ((0.3, 50, "shared"), (1.0, 50, "shared"), (3.0, 50, "shared"), (0.3, 50, "per_trial"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["gauss", "exp"])
    parser.add_argument(
        "--settings", type=int, nargs="+", default=list(range(len(SETTINGS))),
        help="indices into SETTINGS",
    )  # fmt: skip
    parser.add_argument("--oracle", action="store_true", help="the quadrature oracle on exp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.oracle:
        oracle()
        return
    warm_up_torch()
    default = compose.RESIDUAL_FLOOR
    print(
        "| model | c | steps | precisions | n | inside | C2ST | mean error (sds) | sample CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = MODELS[name]
        theta, x = training_data(model, 1000, args.seed)
        front = simgen.NPE(model.prior, estimator="diffusion", **ROUTE_OPTIONS["diffusion"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            posterior = front.fit(theta, x, progress=False, seed=args.seed)
        est = posterior.estimator
        posterior._draw_rejected = est.draw  # every draw, inside the support or not
        solver = est.solver
        for c, steps, precisions in (SETTINGS[i] for i in args.settings):
            compose.RESIDUAL_FLOOR = c
            est.solver = dataclasses.replace(solver, steps=steps)
            est.trial_precision = precisions
            for n in TRIALS:
                scores, errors, cpu, inside = [], [], [], []
                for k, full in enumerate(model.observations()):
                    xo = full[:n]
                    start = time.process_time()
                    draws = posterior.sample((args.draws,), x=xo, seed=args.seed)
                    cpu.append(time.process_time() - start)
                    keep = in_support(model.prior, draws) & draws.isfinite().all(-1)
                    inside.append(float(keep.float().mean()))
                    kept = draws[keep]  # what rejection returns
                    if len(kept) < 10:
                        continue
                    ref = model.reference(xo, len(kept), 10 + k)
                    scores.append(float(c2st(kept, ref)))
                    big = model.reference(xo, 20_000, 99)
                    errors.append(float(((kept.mean(0) - big.mean(0)) / big.std(0)).abs().max()))
                print(
                    f"| {name} | {c} | {steps} | {precisions} | {n} | "
                    f"{statistics.mean(inside):.3f} | "
                    f"{statistics.mean(scores) if scores else float('nan'):.3f} | "
                    f"{statistics.mean(errors) if errors else float('nan'):.2f} | "
                    f"{statistics.mean(cpu):.1f} |",
                    flush=True,
                )
        compose.RESIDUAL_FLOOR = default
        est.solver = solver
        est.trial_precision = "shared"


#: The oracle's grid size, ODE steps, and per n: (draws, rates, rules).
GRID, ORACLE_STEPS = 200, 60
ORACLE = {
    10: (300, (0, 1), ("exact", "shared", "per_trial")),
    100: (150, (0,), ("shared", "per_trial")),
}
F64 = torch.float64


def _grid_weights(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-trial posteriors of one rate on the grid ``(n, G)`` (flat prior on the box)."""
    logw = grid.log()[None] - grid[None] * x[:, None]
    return (logw - logw.logsumexp(-1, keepdim=True)).exp()


def _grid_denoise(grid, w, y, s):
    """Mean and variance ``(S, K)`` of K grid laws ``w`` ``(K, G)`` given y = θ + s ε."""
    logk = -0.5 * ((y[:, None] - grid[None]) / s) ** 2
    lw = w.clamp_min(1e-300).log()[None] + logk[:, None, :]
    p = (lw - lw.logsumexp(-1, keepdim=True)).exp()
    m = (p * grid).sum(-1)
    return m, ((p * grid**2).sum(-1) - m**2).clamp_min(1e-12)


def _grid_composed(grid, w_i, w_0, y, s, rule, shared_var, box_var):
    """The composed denoiser ``(S,)`` by ``rule`` (the module docstring of compose)."""
    mu_i, _ = _grid_denoise(grid, w_i, y, s)
    mu_0, v_0 = _grid_denoise(grid, w_0, y, s)
    n = len(w_i)
    if rule == "exact":
        lw = w_i.clamp_min(1e-300).log().sum(0) - (n - 1) * w_0.clamp_min(1e-300).log()[0]
        return _grid_denoise(grid, (lw - lw.logsumexp(-1)).exp()[None], y, s)[0][:, 0]
    if rule == "shared":
        prec = torch.full((n,), 1 / shared_var, dtype=F64)
    else:
        m = (w_i * grid).sum(-1)
        prec = 1 / ((w_i * grid**2).sum(-1) - m**2)
    prec = prec.clamp_min(1 / box_var)
    lam_i = prec[None] + 1 / s**2
    lam_0 = (1 / v_0).clamp_max(prec.min() + 1 / s**2)  # the box's cap below the trials'
    num = (lam_i * mu_i).sum(-1) - (n - 1) * (lam_0 * mu_0)[:, 0]
    return num / (lam_i.sum(-1) - (n - 1) * lam_0[:, 0])


def oracle() -> None:
    """The quadrature oracle of the module docstring, printed as a table."""
    model = MODELS["exp"]
    grid = torch.linspace(LOW, HIGH, GRID, dtype=F64)
    box_var = (HIGH - LOW) ** 2 / 12
    g = torch.Generator().manual_seed(5)
    theta = model.draw_theta(4000, g)
    wp = _grid_weights(grid, model.simulator(theta, g).double()[:, 0])
    mp = (wp * grid).sum(-1)
    shared_var = float(((wp * grid**2).sum(-1) - mp**2).mean())
    w_0 = torch.full((1, GRID), 1.0 / GRID, dtype=F64)
    s_min, s_max = 0.01 * box_var**0.5, 10 * box_var**0.5
    sig = torch.logspace(math.log10(s_max), math.log10(s_min), ORACLE_STEPS + 1, dtype=F64)
    print(f"shared per-trial variance {shared_var:.4f} (the box's {box_var:.4f})")
    print("| n | rule | mean error (sds), per obs. and rate | sd ratio | CPU s |")
    print("|---|---|---|---|---|")
    for n, (num, rates, rules) in ORACLE.items():
        for rule in rules:
            errors, ratios, start = [], [], time.process_time()
            for k, full in enumerate(model.observations()):
                for j in rates:
                    w_i = _grid_weights(grid, full[:n, j].double())
                    lw = w_i.log().sum(0)
                    w = (lw - lw.logsumexp(-1)).exp()
                    mean = (w * grid).sum()
                    sd = ((w * grid**2).sum() - mean**2).sqrt()

                    def field(y, s, w_i=w_i, rule=rule):
                        mu = _grid_composed(grid, w_i, w_0, y, s, rule, shared_var, box_var)
                        return (y - mu) / s

                    gen = torch.Generator().manual_seed(k)
                    y = 0.5 * (LOW + HIGH) + (s_max**2 + box_var) ** 0.5 * torch.randn(
                        num, generator=gen, dtype=F64
                    )
                    for a, b in zip(sig[:-1], sig[1:]):
                        k1 = field(y, a)
                        y1 = y + (b - a) * k1
                        y = y + (b - a) * 0.5 * (k1 + field(y1, b))
                    draws = _grid_composed(grid, w_i, w_0, y, sig[-1], rule, shared_var, box_var)
                    errors.append(float((draws.mean() - mean).abs() / sd))
                    ratios.append(float(draws.std() / sd))
            print(
                f"| {n} | {rule} | {' '.join(f'{e:.2f}' for e in errors)} | "
                f"{' '.join(f'{r:.2f}' for r in ratios)} | {time.process_time() - start:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
