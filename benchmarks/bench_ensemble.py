"""An ensemble of K NPE posteriors against one of its members: C2ST and HPD coverage.

For each task and seed, ``NPE(prior, ensemble=K)`` trains K default NSF members on the same
simulations (``evaluation.training_data``: the same pairs as ``bench_report``); the single
posterior is member 0, so the comparison isolates what mixing adds. Reported per cell:

* C2ST against the cached reference on the first ``--obs`` observations of the ``report``
  set (``--samples`` draws each, simgen's classifier and folds);
* expected-coverage deviation of the HPD regions (mean of EC(c) - c over the credibility grid;
  negative means overconfident) and the coverage test's p-value, from ``--coverage`` prior
  predictive pairs with 500 posterior draws each, the same pairs for both;
* training CPU seconds (``time.process_time``) of all K members.

Run (one thread)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_ensemble --tasks two_moons slcp \\
        --sims 1000 --seeds 0 1 2 --k 5

Rows go to ``benchmarks/results_ensemble.md`` (rewritten), with the mean and the range over
seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import simgen
from benchmarks import evaluation, harness, warm_up_torch
from simgen.diagnostics import coverage
from simgen.diagnostics.c2st import c2st

OUT = Path(__file__).with_name("results_ensemble.md")


def cell(task_name: str, sims: int, seed: int, k: int, args: argparse.Namespace) -> dict:
    task = harness.load_task(task_name)
    theta, x = evaluation.training_data(task, sims, seed)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ens = simgen.NPE(task.prior, ensemble=k).fit(theta, x, progress=False, seed=seed)
    seconds = time.process_time() - start
    out = {"train_s": seconds}
    _, xs = harness.observations(task_name, "report", args.obs)
    for name, post in (("single", ens.members[0]), ("ensemble", ens)):
        scores = []
        for i in range(args.obs):
            ref = harness.reference(task_name, "report", i)["samples"][: args.samples]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                draws = post.sample((args.samples,), x=xs[i], seed=i)
            scores.append(c2st(ref, draws, seed=0))
        cov = coverage(post, task.prior, task.simulator, args.coverage, 500, seed=seed)
        out[name] = {"c2st": float(np.mean(scores)), "dev": cov.deviation, "p": cov.p_value}
    return out


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--obs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--coverage", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(sys.argv[1:])
    torch.set_num_threads(1)
    warm_up_torch()
    command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_ensemble " + " ".join(sys.argv[1:])
    lines = [
        "# Ensembles of NPE posteriors against one member",
        "",
        f"Command: `{command}`",
        "",
        f"K = {args.k} default NSF members on the same {args.sims} simulations per seed; "
        "'single' is member 0. C2ST: mean over the first "
        f"{args.obs} `report` observations, {args.samples} draws each (0.5 is exact). "
        "Coverage deviation: mean of EC(c) - c over the HPD credibility grid, "
        f"{args.coverage} prior-predictive pairs (negative: overconfident); p: the coverage "
        "test's p-value. Each entry: mean [min, max] over seeds "
        f"{', '.join(map(str, args.seeds))}.",
        "",
        "| task | posterior | C2ST | coverage deviation | coverage p | train CPU s (all K) |",
        "|---|---|---|---|---|---|",
    ]
    for task_name in args.tasks:
        cells = []
        for seed in args.seeds:
            result = cell(task_name, args.sims, seed, args.k, args)
            print(task_name, seed, result, flush=True)
            cells.append(result)
        train = summary([c["train_s"] for c in cells])
        for name in ("single", "ensemble"):
            lines.append(
                f"| {task_name} | {name} | {summary([c[name]['c2st'] for c in cells])} | "
                f"{summary([c[name]['dev'] for c in cells])} | "
                f"{summary([c[name]['p'] for c in cells])} | "
                f"{train if name == 'ensemble' else ''} |"
            )
        lines.append(
            f"| {task_name} | per seed (single → ensemble C2ST) | "
            + ", ".join(f"{c['single']['c2st']:.3f} → {c['ensemble']['c2st']:.3f}" for c in cells)
            + " | | | |"
        )
        args.out.write_text("\n".join(lines) + "\n")  # each finished task is kept
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
