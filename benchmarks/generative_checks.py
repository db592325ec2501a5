r"""Why a vector-field family misses a task: the baseline's residual and the draws' moments.

``--residual`` prints, per task and training seed (1,000 simulations of
:func:`benchmarks.evaluation.training_data`), the statistics behind
``gaussian_baseline="auto"`` (:mod:`simgen.estimators.baseline`): the ridge residual of the
standardised θ on the standardised x, whitened by its covariance, its non-Gaussianity
:math:`E = \frac1D\sum_d (S_d^2 + K_d^2/4)`, the mean squared skewness and each direction's
excess kurtosis :math:`K_d`. A posterior whose width varies with x leaves a scale mixture of
Gaussians, :math:`K_d > 0`; a multimodal one leaves :math:`K_d < 0`.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.generative_checks --residual \
        --tasks bernoulli_glm gaussian_mixture two_moons slcp

Otherwise each method spec (``benchmarks.evaluation`` syntax) is trained on the seed's
simulations and sampled at the ten tuning observations (2,000 draws each, torch seeded by
``1000 * seed + i``), against the cached reference: the mean over coordinates and
observations of the mean's error in reference sds, of the sd ratio and of the
interquartile-range ratio (the last sees a narrow core that the sd, set by the tails,
misses), with the baseline's decision and the epochs trained. One JSON line per spec.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.generative_checks --task gaussian_mixture \
        --seed 0 diffusion 'diffusion:gaussian_baseline=true;precondition=true'
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from benchmarks import evaluation, harness, warm_up_torch


def residual_stats(name: str, seed: int, budget: int = 1000, ridge: float = 1e-3) -> dict:
    """The whitened ridge residual's :math:`E`, mean :math:`S_d^2` and :math:`K_d`."""
    task = harness.load_task(name)
    theta, x = evaluation.training_data(task, budget, seed)
    y = ((theta - theta.mean(0)) / theta.std(0)).double()
    flat = x.reshape(len(x), -1)
    xs = ((flat - flat.mean(0)) / flat.std(0).clamp_min(1e-12)).double()
    design = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
    gram = design.T @ design / len(design) + ridge * torch.eye(design.shape[1], dtype=xs.dtype)
    residual = y - design @ torch.linalg.solve(gram, design.T @ y / len(design))
    lam, vecs = torch.linalg.eigh(residual.T @ residual / len(residual))
    z = residual @ (vecs / lam.sqrt())
    skew, kurt = z.pow(3).mean(0), z.pow(4).mean(0) - 3
    return {
        "task": name,
        "seed": seed,
        "E": round(float((skew.square() + kurt.square() / 4).mean()), 3),
        "mean_S2": round(float(skew.square().mean()), 3),
        "K": [round(v, 2) for v in kurt.tolist()],
    }


def moments(name: str, seed: int, spec: str, draws: int = 2000, budget: int = 1000) -> dict:
    """Mean error (reference sds), sd and IQR ratios of ``spec``'s draws at the tuning set."""
    task = harness.load_task(name)
    _, xs = harness.observations(name, "tuning", harness.NUM_OBSERVATIONS)
    refs = [harness.reference(name, "tuning", i)["samples"] for i in range(len(xs))]
    theta, x = evaluation.training_data(task, budget, seed)
    method = evaluation.parse_method(spec)[2]
    q = torch.tensor([0.25, 0.75])

    def iqr(a: torch.Tensor) -> torch.Tensor:
        return a.quantile(q[1], 0) - a.quantile(q[0], 0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.process_time()
        posterior = method(task, theta, x, seed)
        fit_s = time.process_time() - start
        errors, sds, iqrs = [], [], []
        for i, (x_o, ref) in enumerate(zip(xs, refs)):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(1000 * seed + i)
                s = posterior.sample((draws,), x=x_o).reshape(draws, -1)
            s = s[torch.isfinite(s).all(-1)]
            sd = ref.std(0)
            errors.append(((s.mean(0) - ref.mean(0)).abs() / sd).mean().item())
            sds.append((s.std(0) / sd).mean().item())
            iqrs.append((iqr(s) / iqr(ref)).mean().item())
    row = {
        "task": name,
        "seed": seed,
        "spec": spec,
        "mean_err_sd": round(sum(errors) / len(errors), 3),
        "sd_ratio": round(sum(sds) / len(sds), 3),
        "sd_ratio_range": [round(min(sds), 2), round(max(sds), 2)],
        "iqr_ratio": round(sum(iqrs) / len(iqrs), 3),
        "fit_cpu_s": round(fit_s, 1),
    }
    baseline = getattr(getattr(posterior, "estimator", None), "baseline", None)
    if baseline is not None:
        row["baseline_on"] = baseline.on
    history = getattr(posterior, "history", None)
    if history is not None:
        row.update(epochs=history.epochs, best_epoch=history.best_epoch)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("specs", nargs="*", help="method specs, as bench_report's --methods")
    parser.add_argument("--task", default="bernoulli_glm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--residual", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["bernoulli_glm", "gaussian_mixture"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.residual:
        for name in args.tasks:
            for seed in (0, 1):
                print(json.dumps(residual_stats(name, seed)), flush=True)
        return
    warm_up_torch()
    for spec in args.specs:
        print(json.dumps(moments(args.task, args.seed, spec)), flush=True)


if __name__ == "__main__":
    main()
