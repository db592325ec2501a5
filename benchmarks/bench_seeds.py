"""Seed-averaged C2ST and training CPU time of NPE configurations, next to sbi, same data.

The bake-off (``bench_families``) runs one seed per cell; C2ST on one seed moves by
±0.03-0.05 between seeds on two_moons, more than the differences it is asked to resolve.
This runs each configuration on several seeds (seed ``s`` simulates with ``s`` and trains
with ``s``) and reports the mean, the per-seed values and the mean training CPU seconds
(``time.process_time``, so other load on the machine does not inflate it).

Run (one thread, as in RESULTS.md)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_seeds --task two_moons --sims 1000 \\
        --seeds 0,1,2,3 --configs '{"fm": ["flow_matching", {}, {}]}' --sbi FMPE
    OMP_NUM_THREADS=1 python -m benchmarks.bench_seeds --task two_moons --sims 1000 \\
        --seeds 0,1,2,3 --configs '{"diffusion": ["diffusion", {}, {}]}' --sbi NPSE

sbi's methods train and sample with sbi's defaults (NPSE: VE SDE, its own sampler); only
training is timed, for simgen and sbi alike. ``--configs '{}'`` runs sbi alone.

``--configs`` maps a label to ``[estimator, estimator_options, training_options]``.
Rows are appended to ``--out`` (default ``results_seeds.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

import simgen
import simulators
from benchmarks import warm_up_torch
from simgen.diagnostics.c2st import c2st

__all__ = ["run"]

HEADER = [
    "| task | sims | configuration | mean C2ST | per seed | train CPU s (mean) |",
    "|---|---|---|---|---|---|",
]


def _data(task, n: int, seed: int):
    torch.manual_seed(seed)
    theta = task.prior.sample((n,))
    return theta, task.simulator(theta, generator=torch.Generator().manual_seed(seed + 1))


def _simgen(task, theta, x, seed, estimator, est_opts, train_opts):
    post = simgen.NPE(task.prior, estimator=estimator, **est_opts).fit(
        theta, x, progress=False, seed=seed, **train_opts
    )
    return lambda: post.sample((5000,), x=task.x_o, seed=1)


def _sbi(task, theta, x, seed, method):
    import sbi.inference as si

    torch.manual_seed(seed)
    inf = getattr(si, method)(prior=task.prior, show_progress_bars=False)
    inf.append_simulations(theta, x).train()
    post = inf.build_posterior()

    def draw():
        torch.manual_seed(1)
        return post.sample((5000,), x=task.x_o, show_progress_bars=False)

    return draw


def run(task_name: str, n: int, seeds: list[int], configs: dict, sbi: list[str], out: Path):
    warm_up_torch()
    task = simulators.get(task_name)
    ref = task.reference_posterior(task.x_o, 5000, seed=0)
    if not out.exists():
        out.write_text("# Seed-averaged comparisons\n\n" + "\n".join(HEADER) + "\n")
    jobs = [(label, spec) for label, spec in configs.items()] + [(f"sbi {m}", m) for m in sbi]
    for label, spec in jobs:
        scores, seconds = [], []
        for seed in seeds:
            theta, x = _data(task, n, seed)
            t0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if isinstance(spec, str):
                    draw = _sbi(task, theta, x, seed, spec)
                else:
                    draw = _simgen(task, theta, x, seed, *spec)
            seconds.append(time.process_time() - t0)
            scores.append(float(c2st(draw(), ref, seed=0)))
        per = ", ".join(f"{s:.3f}" for s in scores)
        row = (
            f"| {task_name} | {n} | {label} | {sum(scores) / len(scores):.3f} | {per} | "
            f"{sum(seconds) / len(seconds):.1f} |"
        )
        print(row, flush=True)
        with out.open("a") as fh:
            fh.write(row + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="two_moons")
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--configs", default='{"flow_matching": ["flow_matching", {}, {}]}')
    parser.add_argument("--sbi", default="", help="comma-separated sbi methods, e.g. FMPE,NPSE")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_seeds.md")))
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", flush=True)
    run(
        args.task,
        args.sims,
        [int(s) for s in args.seeds.split(",")],
        json.loads(args.configs),
        [m for m in args.sbi.split(",") if m],
        Path(args.out),
    )


if __name__ == "__main__":
    main()
