"""simgen NPE vs sbi NPE (``density_estimator="nsf"``) on the same simulations, one process.

For each task and simulation budget: simulate once with ``simgen.simulate``, train both
libraries on exactly those pairs, draw 10,000 posterior samples at each of the task's
observations, and score them with C2ST against the task's reference posterior. Reported:
mean C2ST over the observations and training seconds, with the ratio simgen/sbi (ratios, not
absolute seconds, since the machines are shared and noisy).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_npe [--quick] [--tasks two_moons,...]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

import simgen
import simulators
from benchmarks import warm_up_torch
from simgen.diagnostics.c2st import c2st

OUT = os.path.join(os.path.dirname(__file__), "results_npe.md")


def observations(task, num: int) -> list[torch.Tensor]:
    """The task's x_o plus ``num - 1`` more simulated at fixed prior draws."""
    xs = [task.x_o]
    if num > 1:
        theta, x = simgen.simulate(task.simulator, task.prior, num - 1, seed=12345)
        xs += list(x)
    return xs


def run_sbi(task, theta, x, xs, n_samples):
    from sbi.inference import NPE as SbiNPE

    prior = task.prior
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        prior = SbiBox(prior.low, prior.high)
    torch.manual_seed(0)
    start = time.perf_counter()
    inference = SbiNPE(prior=prior, density_estimator="nsf", show_progress_bars=False)
    inference.append_simulations(theta, x).train(show_train_summary=False)
    seconds = time.perf_counter() - start
    posterior = inference.build_posterior()
    start = time.perf_counter()
    samples = [posterior.sample((n_samples,), x=xo, show_progress_bars=False) for xo in xs]
    return samples, seconds, time.perf_counter() - start


def run_simgen(task, theta, x, xs, n_samples):
    start = time.perf_counter()
    posterior = simgen.NPE(task.prior, estimator="nsf").fit(theta, x, progress=False, seed=0)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = [posterior.sample((n_samples,), x=xo) for xo in xs]
    return samples, seconds, time.perf_counter() - start, posterior.history.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k simulations, 1 observation")
    parser.add_argument("--tasks", default="two_moons,gaussian_linear")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--observations", type=int, default=1)
    parser.add_argument(
        "--c2st-samples",
        type=int,
        default=5000,
        help="samples per set in C2ST (sbibm uses 10,000; slower)",
    )
    args = parser.parse_args()
    warm_up_torch()
    sizes = [1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    n_obs = 1 if args.quick else args.observations
    n_samples = 10_000
    warnings.filterwarnings("ignore")
    rows = []
    for task_name in args.tasks.split(","):
        task = simulators.get(task_name)
        xs = observations(task, n_obs)
        refs = [task.reference_posterior(xo, n_samples, seed=1) for xo in xs]
        for n in sizes:
            theta, x = simgen.simulate(task.simulator, task.prior, n, seed=n)
            s_sbi, t_sbi, ts_sbi = run_sbi(task, theta, x, xs, n_samples)
            s_sg, t_sg, ts_sg, epochs = run_simgen(task, theta, x, xs, n_samples)
            m = args.c2st_samples
            c_sbi = sum(c2st(s[:m], r[:m]) for s, r in zip(s_sbi, refs)) / len(xs)
            c_sg = sum(c2st(s[:m], r[:m]) for s, r in zip(s_sg, refs)) / len(xs)
            row = (task_name, n, c_sg, c_sbi, t_sg, t_sbi, t_sg / t_sbi, ts_sg / ts_sbi, epochs)
            rows.append(row)
            print(
                "{} n={} c2st simgen={:.3f} sbi={:.3f} train simgen={:.1f}s sbi={:.1f}s "
                "ratio={:.2f} sample-ratio={:.2f} epochs={}".format(*row),
                flush=True,
            )
    lines = [
        "| task | sims | C2ST simgen | C2ST sbi | train s simgen | train s sbi | "
        "train time ratio | sampling time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, n, c1, c2, a, b, r, rs, _ in rows:
        lines.append(
            f"| {t} | {n} | {c1:.3f} | {c2:.3f} | {a:.1f} | {b:.1f} | {r:.2f} | {rs:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    with open(OUT, "w") as fh:
        fh.write(
            f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.bench_npe "
            f"--sizes {','.join(map(str, sizes))} --observations {n_obs} "
            f"--c2st-samples {args.c2st_samples}`; C2ST is the "
            f"mean over {n_obs} observation(s), {args.c2st_samples} samples per set.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
