"""simgen NLE/NRE next to sbi's NLE/NRE_C on the same simulations, in one process.

For each task and seed: simulate once with ``simgen.simulate``, train both libraries on exactly
those pairs (each to its own early-stopping rule), draw 1,000 posterior samples at the task's
x_o by MCMC with each library's default sampler, and score them by C2ST against the task's
reference posterior. Also measures NLE's surrogate simulator at θ_o (seed 0): C2ST of 1,000
surrogate draws against 1,000 simulator draws, and the time of each for 10,000 draws.

sbi runs with its defaults (NLE: ``density_estimator="maf"``, 5 transforms, 50 hidden units,
batch 200, learning rate 5e-4; NRE_C: ``"resnet"`` classifier, ``num_classes=5``; MCMC:
``slice_np_vectorized``, 20 chains, 200 warm-up steps). simgen runs with its defaults too (see
``simgen.NLE``/``simgen.NRE`` and ``results_nle_nre.md`` for how they were chosen).

``--sweep CONFIGS`` instead compares NLE likelihood estimators on the same simulations: mean
negative log-likelihood of 5,000 fresh test simulations under the trained q(x | θ) (the direct
measure of the fit; lower is better) and the C2ST of the MCMC posterior. A config is
``label=estimator[:key=value;...]``, e.g. ``maf10=maf:transforms=10``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_nle_nre [--quick] [--seeds 0,1,2]
        [--tasks two_moons,slcp] [--methods nle,nre] [--sweep "nsf=nsf,maf=maf"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

import simgen
import simulators
from benchmarks import warm_up_torch
from simgen.diagnostics.c2st import c2st
from simgen.inference import NLE, NRE

OUT = os.path.join(os.path.dirname(__file__), "results_nle_nre.md")
N_SAMPLES = 1000

#: The timer: wall seconds (``time.perf_counter``) or, with ``--clock cpu``, the process's
#: CPU seconds (``time.process_time``), which other jobs on a shared machine do not inflate
#: (both libraries run single-threaded here: ``OMP_NUM_THREADS=1``, one MCMC worker).
clock = time.perf_counter


def sbi_prior(prior):
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        return SbiBox(prior.low, prior.high)
    return prior


def run_sbi(method: str, task, theta, x, seed: int):
    from sbi.inference import NLE as SbiNLE
    from sbi.inference import NRE_C

    torch.manual_seed(seed)
    prior = sbi_prior(task.prior)
    start = clock()
    if method == "nle":
        inference = SbiNLE(prior=prior, show_progress_bars=False)
    else:
        inference = NRE_C(prior=prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(show_train_summary=False)
    train = clock() - start
    posterior = inference.build_posterior()
    start = clock()
    samples = posterior.sample((N_SAMPLES,), x=task.x_o, show_progress_bars=False)
    return samples, train, clock() - start


def run_simgen(method: str, task, theta, x, seed: int, estimator: str | None = None, **opts):
    start = clock()
    if method == "nle":
        front = NLE(task.prior, **({"estimator": estimator} if estimator else {}), **opts)
    else:
        front = NRE(task.prior, **opts)
    posterior = front.fit(theta, x, progress=False, seed=seed)
    train = clock() - start
    start = clock()
    samples = posterior.sample((N_SAMPLES,), x=task.x_o, seed=seed)
    return samples, train, clock() - start, posterior


def surrogate_row(task, posterior) -> tuple[float, float, float]:
    theta = task.theta_o[None].expand(N_SAMPLES, -1)
    fast = posterior.likelihood(theta, generator=torch.Generator().manual_seed(0))
    real = task.simulator(theta, generator=torch.Generator().manual_seed(1))
    score = c2st(fast, real)
    big = task.theta_o[None].expand(10_000, -1)
    start = clock()
    posterior.likelihood(big)
    t_fast = clock() - start
    start = clock()
    task.simulator(big)
    return score, t_fast, clock() - start


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def simulations(task, n: int, seed: int):
    return simgen.simulate(task.simulator, task.prior, n, seed=n + 1000 * seed)


def parse_config(text: str) -> tuple[str, str, dict]:
    label, _, rest = text.partition("=")
    estimator, _, opts = rest.partition(":")
    options = {}
    for item in filter(None, opts.split(";")):
        key, value = item.split("=")
        options[key] = json.loads(value)
    return label, estimator, options


def sweep(args, n: int) -> list[str]:
    configs = [parse_config(c) for c in args.sweep.split(",")]
    lines = [
        f"## NLE estimator sweep ({n} simulations, seeds {args.seeds}; load {load()})",
        "",
        "| task | seed | estimator | test NLL | C2ST | train s | sample s | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task_name in args.tasks.split(","):
        task = simulators.get(task_name)
        reference = task.reference_posterior(task.x_o, N_SAMPLES, seed=1)
        theta_test, x_test = simgen.simulate(task.simulator, task.prior, 5000, seed=99)
        for seed in map(int, args.seeds.split(",")):
            theta, x = simulations(task, n, seed)
            for label, estimator, options in configs:
                s, t, ts, post = run_simgen("nle", task, theta, x, seed, estimator, **options)
                nll = -float(post.likelihood.log_prob(x_test, theta_test).mean())
                row = (
                    f"| {task_name} | {seed} | {label} | {nll:.3f} | {c2st(s, reference):.3f} "
                    f"| {t:.1f} | {ts:.1f} | {post.history.epochs} |"
                )
                print(row, flush=True)
                lines.append(row)
    lines.append(f"\nLoad at the end: {load()}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 simulations")
    parser.add_argument("--tasks", default="two_moons,slcp,gaussian_linear")
    parser.add_argument("--methods", default="nle,nre")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--simulations", type=int, default=3000)
    parser.add_argument("--sweep", default=None, help="NLE estimator configs to compare")
    parser.add_argument("--options", default="", help="simgen front options, 'key=json;key=json'")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    warm_up_torch()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    n = 1000 if args.quick else args.simulations
    warnings.filterwarnings("ignore")
    command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_nle_nre " + " ".join(
        f"--{k} {v}" if not isinstance(v, bool) else f"--{k}"
        for k, v in vars(args).items()
        if v and k != "out" and not (k == "clock" and v == "wall")
    )
    if args.sweep:
        lines = sweep(args, n)
        with open(args.out, "a") as fh:
            fh.write(f"\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n")
        return
    start_load = load()
    rows, surrogate = [], []
    for task_name in args.tasks.split(","):
        task = simulators.get(task_name)
        reference = task.reference_posterior(task.x_o, N_SAMPLES, seed=1)
        for seed in map(int, args.seeds.split(",")):
            theta, x = simulations(task, n, seed)
            for method in args.methods.split(","):
                s_sbi, t_sbi, ts_sbi = run_sbi(method, task, theta, x, seed)
                s_sg, t_sg, ts_sg, posterior = run_simgen(
                    method, task, theta, x, seed, **parse_config("_=_:" + args.options)[2]
                )
                c_sg, c_sbi = c2st(s_sg, reference), c2st(s_sbi, reference)
                ratio = (t_sg + ts_sg) / (t_sbi + ts_sbi)
                row = (task_name, method, seed, c_sg, c_sbi, t_sg, t_sbi, ts_sg, ts_sbi, ratio)
                rows.append(row)
                print(
                    "{} {} seed={} c2st simgen={:.3f} sbi={:.3f} train {:.1f}s/{:.1f}s "
                    "sample {:.1f}s/{:.1f}s total ratio={:.2f}".format(*row),
                    flush=True,
                )
                if method == "nle" and seed == int(args.seeds.split(",")[0]):
                    surrogate.append((task_name, *surrogate_row(task, posterior)))
    lines = [
        "| task | method | seed | C2ST simgen | C2ST sbi | train s simgen | train s sbi | "
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
        "Mean over seeds (target: C2ST simgen <= sbi, total time ratio <= 0.5):",
        "",
        "| task | method | seeds | C2ST simgen | C2ST sbi | total time simgen/sbi |",
        "|---|---|---|---|---|---|",
    ]
    for task_name in args.tasks.split(","):
        for method in args.methods.split(","):
            sel = [r for r in rows if r[0] == task_name and r[1] == method]
            lines.append(
                f"| {task_name} | {method.upper()} | {len(sel)} | "
                f"{statistics.mean(r[3] for r in sel):.3f} | "
                f"{statistics.mean(r[4] for r in sel):.3f} | "
                f"{statistics.mean(r[9] for r in sel):.2f} |"
            )
    if surrogate:
        lines += [
            "",
            "NLE surrogate simulator at θ_o (C2ST of 1,000 surrogate vs 1,000 simulator draws; "
            "seconds for 10,000 draws):",
            "",
            "| task | C2ST x | surrogate s | simulator s | speed-up |",
            "|---|---|---|---|---|",
        ]
        for t, c, tf, ts in surrogate:
            lines.append(f"| {t} | {c:.3f} | {tf:.3f} | {ts:.3f} | {ts / tf:.2f}x |")
    table = "\n".join(lines)
    print(table)
    with open(args.out, "w") as fh:
        fh.write(
            f"Command: `{command}` on a shared 2-core CPU machine, load average (1/5/15 min) "
            f"{start_load} at the start and {load()} at the end: absolute seconds are noisy, "
            "compare the same-process ratios. "
            f"Seconds are {'CPU' if args.clock == 'cpu' else 'wall-clock'} seconds. "
            f"{n} simulations; C2ST at the task's x_o, {N_SAMPLES} samples, against the "
            "reference posterior.\n\n"
            f"{table}\n"
        )


if __name__ == "__main__":
    main()
