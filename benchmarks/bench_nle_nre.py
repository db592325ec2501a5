"""simgen NLE/NRE next to sbi's NLE/NRE_C on the same simulations, in one process.

For each task: simulate once with ``simgen.simulate``, train both libraries on exactly those
pairs (each to its own early-stopping rule), draw 1,000 posterior samples at the task's x_o by
MCMC with each library's default sampler, and score them by C2ST against the task's reference
posterior. Also measures NLE's surrogate simulator at θ_o: C2ST of 1,000 surrogate draws
against 1,000 simulator draws, and the time of each for 10,000 draws.

sbi runs with its defaults (NLE: ``density_estimator="maf"``; NRE_C: ``"resnet"`` classifier,
``num_classes=5``; MCMC: ``slice_np_vectorized``, 20 chains, 200 warm-up steps). simgen: NLE
``"nsf"``; NRE-C, K=10; MCMC adaptive random-walk Metropolis, 50 chains, 100 warm-up steps,
thin max(5, 2D) (the 1,000/3,000-simulation rows in the results were run with thin 5).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_nle_nre [--quick] [--tasks two_moons,slcp]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

import simgen
import simulators
from simgen.diagnostics.c2st import c2st
from simgen.inference import NLE, NRE

OUT = os.path.join(os.path.dirname(__file__), "results_nle_nre.md")
N_SAMPLES = 1000


def sbi_prior(prior):
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        return SbiBox(prior.low, prior.high)
    return prior


def run_sbi(method: str, task, theta, x):
    from sbi.inference import NLE as SbiNLE
    from sbi.inference import NRE_C

    torch.manual_seed(0)
    prior = sbi_prior(task.prior)
    start = time.perf_counter()
    if method == "nle":
        inference = SbiNLE(prior=prior, show_progress_bars=False)
    else:
        inference = NRE_C(prior=prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(show_train_summary=False)
    train = time.perf_counter() - start
    posterior = inference.build_posterior()
    start = time.perf_counter()
    samples = posterior.sample((N_SAMPLES,), x=task.x_o, show_progress_bars=False)
    return samples, train, time.perf_counter() - start


def run_simgen(method: str, task, theta, x):
    start = time.perf_counter()
    front = NLE(task.prior) if method == "nle" else NRE(task.prior)
    posterior = front.fit(theta, x, progress=False, seed=0)
    train = time.perf_counter() - start
    start = time.perf_counter()
    samples = posterior.sample((N_SAMPLES,), x=task.x_o, seed=0)
    return samples, train, time.perf_counter() - start, posterior


def surrogate_row(task, posterior) -> tuple[float, float, float]:
    theta = task.theta_o[None].expand(N_SAMPLES, -1)
    fast = posterior.likelihood(theta, generator=torch.Generator().manual_seed(0))
    real = task.simulator(theta, generator=torch.Generator().manual_seed(1))
    score = c2st(fast, real)
    big = task.theta_o[None].expand(10_000, -1)
    start = time.perf_counter()
    posterior.likelihood(big)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    task.simulator(big)
    return score, t_fast, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 simulations")
    parser.add_argument("--tasks", default="two_moons,slcp,gaussian_linear")
    parser.add_argument("--simulations", type=int, default=5000)
    args = parser.parse_args()
    n = 1000 if args.quick else args.simulations
    warnings.filterwarnings("ignore")
    rows, surrogate = [], []
    for task_name in args.tasks.split(","):
        task = simulators.get(task_name)
        reference = task.reference_posterior(task.x_o, N_SAMPLES, seed=1)
        theta, x = simgen.simulate(task.simulator, task.prior, n, seed=n)
        for method in ("nle", "nre"):
            s_sbi, t_sbi, ts_sbi = run_sbi(method, task, theta, x)
            s_sg, t_sg, ts_sg, posterior = run_simgen(method, task, theta, x)
            c_sg, c_sbi = c2st(s_sg, reference), c2st(s_sbi, reference)
            ratio = (t_sg + ts_sg) / (t_sbi + ts_sbi)
            row = (task_name, method, n, c_sg, c_sbi, t_sg, t_sbi, ts_sg, ts_sbi, ratio)
            rows.append(row)
            print(
                "{} {} n={} c2st simgen={:.3f} sbi={:.3f} train {:.1f}s/{:.1f}s "
                "sample {:.1f}s/{:.1f}s total ratio={:.2f}".format(*row),
                flush=True,
            )
            if method == "nle":
                surrogate.append((task_name, *surrogate_row(task, posterior)))
                print("surrogate", surrogate[-1], flush=True)
    lines = [
        "| task | method | sims | C2ST simgen | C2ST sbi | train s simgen | train s sbi | "
        "sample s simgen | sample s sbi | total time simgen/sbi |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, m, k, c1, c2, a, b, sa, sb, r in rows:
        lines.append(
            f"| {t} | {m.upper()} | {k} | {c1:.3f} | {c2:.3f} | {a:.1f} | {b:.1f} | "
            f"{sa:.1f} | {sb:.1f} | {r:.2f} |"
        )
    lines += [
        "",
        "NLE surrogate simulator at θ_o (C2ST of 1,000 surrogate vs 1,000 simulator draws; "
        "seconds for 10,000 draws):",
        "",
        "| task | C2ST x | surrogate s | simulator s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for t, c, tf, ts in surrogate:
        lines.append(f"| {t} | {c:.3f} | {tf:.3f} | {ts:.3f} | {ts / tf:.1f}x |")
    table = "\n".join(lines)
    print(table)
    with open(OUT, "w") as fh:
        fh.write(
            "Command: `OMP_NUM_THREADS=1 python -m benchmarks.bench_nle_nre "
            f"{'--quick' if args.quick else f'--simulations {n}'} --tasks {args.tasks}` on a "
            "shared 2-core CPU machine (absolute seconds are noisy; compare ratios). "
            f"C2ST at the task's x_o, {N_SAMPLES} samples, against the reference posterior.\n\n"
            f"{table}\n"
        )


if __name__ == "__main__":
    main()
