r"""The composed routes' per-trial score error on ``gauss``, by noise level, and what it implies.

On ``gauss`` (:mod:`benchmarks.iid_models`) every per-trial denoising posterior is Gaussian
in closed form: in the estimator's standardised coordinates
:math:`\tilde\theta = (\theta - \text{loc})/\text{scale}`, :math:`\tilde\theta\mid x_i \sim
\mathcal N(m_i, V)` with :math:`m_i = (x_i/2 - \text{loc})/\text{scale}`, :math:`V =
\tfrac12\,\text{scale}^{-2}`, so the exact per-trial denoiser at the noise-to-signal ratio
:math:`r` is :math:`\mu_i^\ast(\tilde y) = m_i + V(V + r^2)^{-1}(\tilde y - m_i)`. For one
fit, each observation (n = 100) and each :math:`r` of a log grid, points :math:`\tilde y` are
drawn from the exact composed noised marginal :math:`\mathcal N(m, v + r^2)` (:math:`m, v`
the composed posterior's) and the network's per-trial denoisers, through the sampler's own
residual floor (:class:`simgen.estimators.compose_sampler.TrialComposition`), are compared
with :math:`\mu_i^\ast`:

* ``trial``: the rms per-trial score error :math:`|\delta\mu_i|/r^2` times the per-trial
  posterior sd :math:`\sqrt V` (a dimensionless score error), over points, trials and
  coordinates; ``shared``: the same for its mean over the trials at each point, the part
  that the composition adds n times (the rest adds about :math:`\sqrt n` times).
* The composed denoiser's error :math:`\delta\mu = \Lambda^{-1}\Lambda_\Sigma\sum_i
  \delta\mu_i` (the GAUSS rule is linear in the :math:`\mu_i`), written
  :math:`\delta\mu \approx b + J(\tilde y - m)` by least squares over the points. On a
  Gaussian target the probability-flow ODE in :math:`\tilde y` and :math:`\log r` (every
  family's, under its own time change) gives, to first order, the end point's mean shift in
  composed posterior sds :math:`\int b(r)/\sqrt{v + r^2}\,d\log r` and its log sd ratio
  :math:`\int \operatorname{diag} J(r)\,d\log r`: the integrands (columns ``mean/dlog r``
  and ``sd/dlog r``) say which noise levels the end point's error comes from.

``--train ema=0.999`` (any :class:`simgen.TrainConfig` field) and ``--option
time_power=3`` (any estimator option) train every member so.
``--members K`` trains K networks per data seed (seeds from
:func:`simgen.ensemble.member_seed`) and also scores their averaged per-trial denoisers,
the composed score of an ensemble that averages its members' scores
(``Ensemble(..., trial_score="average")``): the spread part of the error falls by 1/K, the
part the members share does not.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_score_error --budgets 1000 10000 \
        --seeds 0 1 2 --members 4 [--estimator diffusion|flow_matching] [--train ema=0.999]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch

import simgen
from benchmarks import warm_up_torch
from benchmarks.bench_iid import ROUTE_OPTIONS, training_data
from benchmarks.iid_models import MODELS
from simgen.ensemble import member_seed
from simgen.estimators.compose import compose_denoisers, floor_ratio, gaussian_denoiser
from simgen.estimators.compose_sampler import TrialComposition

N_TRIALS = 100
POINTS = 64
RATIOS = torch.logspace(-2, 1, 25, dtype=torch.float64)  # r in standardised units


def fit(
    estimator: str, budget: int, seed: int, member: int, train: dict, options: dict
) -> torch.nn.Module:
    """One trained estimator on ``bench_iid``'s data of ``(budget, seed)`` (``train``: extra
    :class:`simgen.TrainConfig` fields), with the prior attached for composing."""
    model = MODELS["gauss"]
    theta, x = training_data(model, budget, seed)
    options = {**ROUTE_OPTIONS.get(estimator, {}), **options}
    front = simgen.NPE(model.prior, estimator=estimator, **options)
    run_seed = seed if member == 0 else member_seed(seed, member)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = front.fit(theta, x, progress=False, seed=run_seed, **train)
    est = posterior.estimator
    est.compose_with_prior(model.prior, "reject")
    return est.eval()


def time_of(est, r: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t, alpha_t, sigma_t)`` of the family whose noise-to-signal ratio is ``r``."""
    if est.name == "diffusion":
        t = est.time_of_ratio(torch.tensor(r, dtype=torch.float32))
        return (t, *est.marginal(t))
    k = 1 - est.sigma_min
    t = torch.tensor(1 / (k + r))
    return t, t, 1 - k * t


def per_trial_denoisers(est, xo: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """The network's floored per-trial denoisers ``(P, n, D)`` at the standardised points
    ``y`` ``(P, D)`` (the sampler's own path, ``TrialComposition.per_trial``)."""
    c, m, mask = est._trial_parts(xo[None])
    precisions = est.trial_covariances(xo.device)
    if est.name == "diffusion":
        t_c = est.time_of_ratio(torch.tensor(floor_ratio(est.baseline.eigvals))).clamp(est.eps, 1)
        a_c, s_c = est.marginal(t_c)
        r_c = float(s_c / a_c)

        def denoise(yy, t):
            alpha, sigma = est.marginal(t)
            return (yy - sigma * est.noise(yy, t, comp.cs, comp.ms)) / alpha
    else:
        k = 1 - est.sigma_min
        r_c = floor_ratio(est.baseline.eigvals)
        t_c = a_c = torch.tensor(1 / (k + r_c))

        def denoise(yy, t):
            return (1 - k * t) * est.velocity(yy, t, comp.cs, comp.ms) + k * yy

    comp = TrialComposition(est, len(y), c, m, mask, precisions, r_c, t_c, a_c, None)
    t, alpha, sigma = time_of(est, r)
    with torch.no_grad():
        mu = comp.per_trial(denoise, (alpha * y)[:, None, :].float(), t, alpha, sigma)
    lam, vecs = est.baseline.eigvals.double(), est.baseline.eigvecs.double()
    base = gaussian_denoiser(y[:, None, :], r, m[0].double(), lam, vecs)  # the baseline alone
    return mu[:, 0].double(), base, precisions


def exact(est, xo: torch.Tensor):
    """``(m_i (n, D), V (D,), m (D,), v (D,))`` in the estimator's standardised coordinates."""
    std = est.target_standardizer
    loc, scale = std.loc.detach().double().reshape(-1), std.scale.detach().double().reshape(-1)
    x = xo.double()
    n = len(x)
    m_i = (x / 2 - loc) / scale
    m = (x.sum(0) / (n + 1) - loc) / scale
    return m_i, 0.5 / scale**2, m, 1 / (n + 1) / scale**2


def profile(ests: list, xo: torch.Tensor, seed: int) -> list[dict]:
    """Per ratio: the error measures of the module docstring for each member alone (means
    over members) and for the members' averaged denoisers."""
    est0 = ests[0]
    m_i, V, m, v = exact(est0, xo)
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in RATIOS.tolist():
        y = m + (v + r * r).sqrt() * torch.randn(POINTS, len(m), generator=g, dtype=torch.float64)
        star = m_i + V / (V + r * r) * (y[:, None, :] - m_i)  # (P, n, D)
        errs, bases, precisions = [], [], None
        for est in ests:
            mu, base, precisions = per_trial_denoisers(est, xo, y, r)
            errs.append(mu - star)
            bases.append(base - star)
        rows = {"r": r}
        groups = [("single", errs), ("average", [sum(errs) / len(errs)]), ("baseline", bases)]
        for label, delta in groups:
            rows[label] = [measures(d, y, m, v, V, r, precisions) for d in delta]
        out.append(rows)
    return out


def measures(delta, y, m, v, V, r, precisions) -> dict:
    sigma_inv, prior_inv = precisions
    n = delta.shape[1]
    mask = torch.ones(1, n, dtype=torch.bool)
    zero = torch.zeros(len(y), 1, len(m), dtype=torch.float64)
    comp = compose_denoisers(delta[:, None].double(), mask, zero, sigma_inv, prior_inv, 1 / r**2)
    comp = comp[:, 0]  # (P, D): the composed denoiser's error (linear in the mu_i)
    sd_trial = V.sqrt()
    trial = ((delta / r**2 * sd_trial).square().mean()).sqrt()
    shared = ((delta.mean(1) / r**2 * sd_trial).square().mean()).sqrt()
    yc = y - y.mean(0)
    b = comp.mean(0)
    jac = torch.linalg.lstsq(yc, comp - b).solution.T  # comp - b ~ J yc
    return {
        "trial": float(trial),
        "shared": float(shared),
        "mean": (b / (v + r * r).sqrt()).tolist(),
        "sd": jac.diagonal().tolist(),
    }


def mean_dict(rows: list[dict]) -> dict:
    return {
        k: (
            statistics.mean(r[k] for r in rows)
            if not isinstance(rows[0][k], list)
            else [statistics.mean(r[k][j] for r in rows) for j in range(len(rows[0][k]))]
        )
        for k in rows[0]
    }


def integrate(prof: list[dict], label: str, key: str, member: int) -> list[float]:
    """The trapezoid integral over log r of ``key`` (per coordinate) for one member."""
    logs = [math.log(p["r"]) for p in prof]
    dim = len(prof[0][label][member][key])
    total = [0.0] * dim
    for a, b, la, lb in zip(prof, prof[1:], logs, logs[1:]):
        for j in range(dim):
            total[j] += 0.5 * (a[label][member][key][j] + b[label][member][key][j]) * (lb - la)
    return total


def implied(profs: list[list[dict]], label: str) -> tuple[float, float]:
    """The implied largest-coordinate mean error (sds) and log sd ratio of the largest size,
    each the mean over the observations and the members (each member alone)."""
    means, sds = [], []
    for p in profs:
        for k in range(len(p[0][label])):
            means.append(max(map(abs, integrate(p, label, "mean", k))))
            sds.append(max(integrate(p, label, "sd", k), key=abs))
    return statistics.mean(means), statistics.mean(sds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--estimator", default="diffusion", choices=["diffusion", "flow_matching"])
    parser.add_argument("--train", nargs="*", default=[], help="TrainConfig fields, e.g. ema=0.999")
    parser.add_argument(
        "--option", nargs="*", default=[], help="estimator options, e.g. time_power=3"
    )
    args = parser.parse_args()
    train = {k: float(v) for k, v in (kv.split("=") for kv in args.train)}
    options = {k: float(v) for k, v in (kv.split("=") for kv in args.option)}
    torch.set_num_threads(1)
    warm_up_torch()
    obs = [o[:N_TRIALS] for o in MODELS["gauss"].observations()]
    for budget in args.budgets:
        summary = []
        for seed in args.seeds:
            start = time.process_time()
            ests = [
                fit(args.estimator, budget, seed, k, train, options) for k in range(args.members)
            ]
            train_s = time.process_time() - start
            profs = [profile(ests, xo, 50 + k) for k, xo in enumerate(obs)]
            prof = [  # mean over the observations and members, per ratio
                {
                    "r": p[0]["r"],
                    **{
                        lab: mean_dict([row for q in p for row in q[lab]])
                        for lab in p[0]
                        if lab != "r"
                    },
                }
                for p in zip(*profs)
            ]
            print(
                f"\n{args.estimator} {train} {options} N={budget} seed={seed} "
                f"members={args.members} "
                f"train {train_s:.0f} CPU-s; mean over 3 observations, n = {N_TRIALS}"
            )
            print(
                "| r | trial | shared | mean/dlog r | sd/dlog r | baseline alone: trial | "
                "mean/dlog r | averaged: trial | shared |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for p in prof:
                s, b, a = p["single"], p["baseline"], p["average"]
                print(
                    f"| {p['r']:.3g} | {s['trial']:.3f} | {s['shared']:.3f} | "
                    f"{max(s['mean'], key=abs):+.3f} | {max(s['sd'], key=abs):+.3f} | "
                    f"{b['trial']:.3f} | {max(b['mean'], key=abs):+.3f} | "
                    f"{a['trial']:.3f} | {a['shared']:.3f} |"
                )
            row = {lab: implied(profs, lab) for lab in ("single", "average", "baseline")}
            summary.append(row)
            print(
                f"implied at n = {N_TRIALS}: mean error {row['single'][0]:.2f} sds, log sd ratio "
                f"{row['single'][1]:+.2f} (one member); averaged over {args.members}: "
                f"{row['average'][0]:.2f} sds, {row['average'][1]:+.2f}; baseline alone "
                f"{row['baseline'][0]:.2f} sds, {row['baseline'][1]:+.2f}",
                flush=True,
            )
        for lab in ("single", "average", "baseline"):
            vals = [r[lab][0] for r in summary]
            sds = [r[lab][1] for r in summary]
            print(
                f"N={budget} {lab}: implied mean error per seed "
                f"{', '.join(f'{x:.2f}' for x in vals)}"
                f" (mean {statistics.mean(vals):.2f}); log sd ratio "
                f"{', '.join(f'{x:+.2f}' for x in sds)}"
            )


if __name__ == "__main__":
    main()
