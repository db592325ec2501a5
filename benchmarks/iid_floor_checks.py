r"""What limits composed diffusion at 1,000 simulations: the floor, the precisions, the corrector.

One composed-diffusion fit (``control_variate=1.0``; ``--estimator flow_matching`` for that
family, which keeps its own ODE steps) per model of :mod:`benchmarks.iid_models` on
``bench_iid``'s 1k training data (seed ``--seed``), sampled at n = 10 and 100 trials of the
three observations with the residual floor's :math:`c`
(``simgen.estimators.compose.RESIDUAL_FLOOR``), the per-trial precisions (``trial_precision``:
the baseline's one covariance, or each trial's from draws of its own posterior) and the
Langevin corrector's moves (``corrector_steps``, :mod:`simgen.estimators.compose_sampler`)
varied (``SETTINGS``). Per setting: the share of the sampler's draws that are finite and
inside the prior's support (``exp``'s box; NPE rejects the rest), and on those kept draws
C2ST against as many exact ones, the largest coordinate's mean error in exact posterior sds
and the sd ratio farthest from 1. A large :math:`c` leans on the linear-Gaussian baseline at
small noise: exact for ``gauss``, not for ``exp``, so the two models bound the choice.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_floor_checks --seed 1 --draws 200 \
        [--settings 0 3] [--estimator flow_matching]

``--oracle`` takes the network out on ``exp``: each rate's per-trial factor
:math:`\theta e^{-\theta x_i}` on the box times the noise kernel is :math:`\theta` times a
normal, so truncated-normal moments give exact per-trial denoisers and denoising variances
at any noise; composed by the GAUSS rule with one shared per-trial variance (the
prior-predictive mean of the per-trial posterior variances, from 4,000 simulations) or with
per-trial variances, sampled by 60 Heun steps of the VE probability-flow ODE (noise 0.01 to
10 box sds), then ``moves`` corrector moves of step ``step`` through
``compose_sampler.correct`` (``ORACLE_RUNS``). Mean error in exact sds and sd ratio per
observation and rate, 200 draws each, against the exact truncated-Gamma posterior.

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
from simgen.estimators import compose, compose_sampler
from simgen.priors import in_support

#: (floor c, ODE steps, trial_precision, corrector moves); the first is the default.
SETTINGS = (
    (0.3, 50, "shared", 0),
    (1.0, 50, "shared", 0),
    (3.0, 50, "shared", 0),
    (0.3, 50, "per_trial", 0),
    (0.3, 50, "shared", 10),
    (0.3, 50, "per_trial", 10),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["gauss", "exp"])
    parser.add_argument(
        "--estimator", default="diffusion", choices=["diffusion", "flow_matching"],
        help="the composed family (flow matching keeps its own ODE steps)",
    )  # fmt: skip
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
        "| model | c | steps | precisions | moves | n | inside | C2ST | mean error (sds) "
        "| sd ratio | sample CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = MODELS[name]
        theta, x = training_data(model, 1000, args.seed)
        options = ROUTE_OPTIONS.get(args.estimator, {})
        front = simgen.NPE(model.prior, estimator=args.estimator, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            posterior = front.fit(theta, x, progress=False, seed=args.seed)
        est = posterior.estimator
        posterior._draw_rejected = est.draw  # every draw, inside the support or not
        solver = est.solver
        for c, steps, precisions, moves in (SETTINGS[i] for i in args.settings):
            compose.RESIDUAL_FLOOR = c
            if args.estimator == "flow_matching":
                steps = solver.steps
            est.solver = dataclasses.replace(solver, steps=steps)
            est.trial_precision, est.corrector_steps = precisions, moves
            for n in TRIALS:
                scores, errors, cpu, inside, ratios = [], [], [], [], []
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
                    ratio = kept.std(0) / big.std(0)
                    ratios.append(float(ratio[ratio.log().abs().argmax()]))  # the worst
                print(
                    f"| {name} | {c} | {steps} | {precisions} | {moves} | {n} | "
                    f"{statistics.mean(inside):.3f} | "
                    f"{statistics.mean(scores) if scores else float('nan'):.3f} | "
                    f"{statistics.mean(errors) if errors else float('nan'):.2f} | "
                    f"{statistics.mean(ratios) if ratios else float('nan'):.2f} | "
                    f"{statistics.mean(cpu):.1f} |",
                    flush=True,
                )
        compose.RESIDUAL_FLOOR = default
        est.solver = solver
        est.trial_precision, est.corrector_steps = "shared", 0


#: The oracle's ODE steps and draws, and its runs: (rule, corrector moves, step).
ORACLE_STEPS, ORACLE_DRAWS = 60, 200
ORACLE_RUNS = (
    ("shared", 0, 0.5),
    ("shared", 3, 0.5),
    ("shared", 10, 0.5),
    ("shared", 30, 0.5),
    ("shared", 10, 0.25),
    ("shared", 10, 1.0),
    ("per_trial", 0, 0.5),
    ("per_trial", 10, 0.5),
)
F64 = torch.float64


def _denoise(x: torch.Tensor | None, y: torch.Tensor, s: float):
    r"""Exact mean and variance ``(S, K)`` of the per-trial laws :math:`\theta e^{-\theta x_k}`
    (``x`` ``(K,)``; the flat prior for ``None``) on the box given :math:`y = \theta + s
    \varepsilon`: the factor times :math:`N(y; \theta, s^2)` is :math:`\theta\,
    N(\theta; y - x s^2, s^2)`, so truncated-normal moments give them at any ``s``."""
    x = torch.zeros(1, dtype=F64) if x is None else x
    m = y[:, None] - x[None] * s**2
    lo, hi = (LOW - m) / s, (HIGH - m) / s
    log_z = compose._log_diff_ndtr(hi, lo)
    pa, pb = (compose._log_phi(lo) - log_z).exp(), (compose._log_phi(hi) - log_z).exp()
    u1, u2 = pa - pb, 1 + lo * pa - hi * pb
    u3 = 2 * u1 + lo**2 * pa - hi**2 * pb
    e1 = m + s * u1
    if x.abs().sum() == 0:
        return e1, (s**2 * (u2 - u1**2)).clamp_min(1e-16)
    e2 = m**2 + 2 * m * s * u1 + s**2 * u2
    e3 = m**3 + 3 * m**2 * s * u1 + 3 * m * s**2 * u2 + s**3 * u3
    return e2 / e1, (e3 / e1 - (e2 / e1) ** 2).clamp_min(1e-16)


def _composed(x, prec, y, s):
    """The GAUSS rule's composed denoiser ``(S,)`` (the module docstring of compose)."""
    n = len(x)
    mu_i, _ = _denoise(x, y, s)
    mu_0, v_0 = _denoise(None, y, s)
    lam_i = prec[None] + 1 / s**2
    lam_0 = (1 / v_0[:, 0]).clamp_max(float(prec.min()) + 1 / s**2)  # the box's cap
    num = (lam_i * mu_i).sum(-1) - (n - 1) * lam_0 * mu_0[:, 0]
    return num / (lam_i.sum(-1) - (n - 1) * lam_0)


def _oracle_draws(x, rule, moves, step, shared_var, box_var, seed):
    """One rate's composed draws ``(ORACLE_DRAWS,)``: the VE probability-flow ODE (Heun), then
    ``moves`` corrector moves of ``compose_sampler.correct`` at the last noise level."""
    n = len(x)
    if rule == "shared":
        prec = torch.full((n,), 1 / shared_var, dtype=F64)
    else:
        grid = torch.linspace(LOW, HIGH, 2000, dtype=F64)
        w = torch.softmax(grid.log()[None] - grid[None] * x[:, None], -1)
        mean = (w * grid).sum(-1)
        prec = 1 / ((w * grid**2).sum(-1) - mean**2)
    prec = prec.clamp_min(1 / box_var)
    s_min, s_max = 0.01 * box_var**0.5, 10 * box_var**0.5
    sig = torch.logspace(math.log10(s_max), math.log10(s_min), ORACLE_STEPS + 1, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    y = 0.5 * (LOW + HIGH) + (s_max**2 + box_var) ** 0.5 * torch.randn(
        ORACLE_DRAWS, generator=gen, dtype=F64
    )
    field = lambda y, s: (y - _composed(x, prec, y, s)) / s  # noqa: E731
    for a, b in zip(sig[:-1].tolist(), sig[1:].tolist()):
        k1 = field(y, a)
        y = y + (b - a) * 0.5 * (k1 + field(y + (b - a) * k1, b))
    s = float(sig[-1])
    if moves:
        torch.manual_seed(seed)

        def score(z):  # the likelihood score sum_i (mu_i - mu_0) / s^2 (the prior is flat)
            z1 = z[:, 0, 0]
            lik = (_denoise(x, z1, s)[0] - _denoise(None, z1, s)[0]).sum(-1) / s**2
            return lik[:, None, None]

        fallback = torch.tensor([[[1 / float(prec.sum() - (n - 1) / box_var) + s**2]]])
        box = (torch.tensor([LOW], dtype=F64), torch.tensor([HIGH], dtype=F64))
        y = compose_sampler.correct(y[:, None, None], score, moves, step, fallback, box)[:, 0, 0]
    return _composed(x, prec, y, s)


def oracle() -> None:
    """The quadrature oracle of the module docstring, printed as a table."""
    model = MODELS["exp"]
    grid = torch.linspace(LOW, HIGH, 20_001, dtype=F64)
    box_var = (HIGH - LOW) ** 2 / 12
    g = torch.Generator().manual_seed(5)
    x_prior = model.simulator(model.draw_theta(4000, g), g).double()[:, 0]
    wp = torch.softmax(grid[::10].log()[None] - grid[::10][None] * x_prior[:, None], -1)
    mp = (wp * grid[::10]).sum(-1)
    shared_var = float(((wp * grid[::10] ** 2).sum(-1) - mp**2).mean())
    print(f"shared per-trial variance {shared_var:.4f} (the box's {box_var:.4f})")
    print("| n | rule | moves | step | mean error (sds), per obs. and rate | sd ratio | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for n in TRIALS:
        for rule, moves, step in ORACLE_RUNS:
            errors, ratios, start = [], [], time.process_time()
            for k, full in enumerate(model.observations()):
                for j in range(2):
                    x = full[:n, j].double()
                    w = torch.softmax(n * grid.log() - grid * x.sum(), -1)
                    mean = (w * grid).sum()
                    sd = ((w * grid**2).sum() - mean**2).sqrt()
                    draws = _oracle_draws(x, rule, moves, step, shared_var, box_var, k)
                    errors.append(float((draws.mean() - mean).abs() / sd))
                    ratios.append(float(draws.std() / sd))
            print(
                f"| {n} | {rule} | {moves} | {step} | {' '.join(f'{e:.2f}' for e in errors)} | "
                f"{' '.join(f'{r:.2f}' for r in ratios)} | "
                f"{time.process_time() - start:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
