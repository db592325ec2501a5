"""The joint transformer against simgen flow matching and sbi FMPE on the same simulations.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint [--budget 1000] [--observations 3]
        [--seeds 0] [--task two_moons]

Each method trains once per seed on the same simulations (``evaluation.training_data``) in
this process; C2ST (``simgen.diagnostics.c2st``) against the cached reference of each of the
first ``--observations`` report observations, 1,000 draws each; CPU seconds
(``time.process_time``) to train and to draw the samples. Writes ``results_joint.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks import evaluation, harness, warm_up_torch
from simgen.diagnostics import c2st

RESULTS = Path(__file__).with_name("results_joint.md")
METHODS = {
    "joint_transformer": 'npe:estimator="joint_transformer"',
    "flow_matching": "fm",
    "sbi FMPE": "sbi_fmpe",
}


def run(task_name: str, budget: int, num_obs: int, seeds: list[int]) -> list[dict]:
    task = harness.load_task(task_name)
    _, xs = harness.observations(task_name, "report", num_obs)
    refs = [harness.reference(task_name, "report", i, num=1000)["samples"] for i in range(num_obs)]
    rows = []
    for seed in seeds:
        theta, x = evaluation.training_data(task, budget, seed)
        for label, spec in METHODS.items():
            _, _, fit = evaluation.parse_method(spec)
            start = time.process_time()
            posterior = fit(task, theta, x, seed)
            train_s = time.process_time() - start
            scores, sample_s = [], 0.0
            for i in range(num_obs):
                start = time.process_time()
                samples = posterior.sample((1000,), x=xs[i])
                sample_s += time.process_time() - start
                scores.append(float(c2st(samples, refs[i], seed=0)))
            rows.append(
                {
                    "method": label,
                    "seed": seed,
                    "c2st": scores,
                    "train_s": train_s,
                    "sample_s": sample_s / num_obs,
                }
            )
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| method | seed | C2ST per observation | mean C2ST | train CPU s | CPU s / 1,000 draws |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"{s:.3f}" for s in r["c2st"])
        mean = sum(r["c2st"]) / len(r["c2st"])
        lines.append(
            f"| {r['method']} | {r['seed']} | {per} | {mean:.3f} | {r['train_s']:.0f} | "
            f"{r['sample_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="two_moons")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(sys.argv[1:])
    torch.set_num_threads(1)
    warm_up_torch()
    rows = run(args.task, args.budget, args.observations, args.seeds)
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --task {args.task} "
        f"--budget {args.budget} --observations {args.observations} --seeds {seeds}"
    )
    print(table(rows))
    RESULTS.write_text(
        f"# Joint transformer vs flow matching and sbi FMPE\n\n`{command}`\n\n{table(rows)}\n"
    )


if __name__ == "__main__":
    main()
