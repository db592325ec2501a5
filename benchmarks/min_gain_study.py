"""Where ``TrainConfig.min_gain_se`` stops NPE's default NSF, from one run with it off.

With the rule on, training follows the path of the rule off exactly and only stops sooner
(:mod:`simgen.stopping`), so one run that records every epoch's per-row validation losses
gives the stopping epoch of every threshold. For each (task, budget, seed) this fits the
default ``simgen.NPE`` with the rule off (``min_gain_se=0``, named so whatever the default) on the
benchmark's training simulations (those of
``benchmarks/evaluation.py``'s cells) and prints, per rule, the epoch it stops at and the
validation loss of the weights it keeps, for the paired test the option uses
(:class:`simgen.stopping.GainTest`) and, as the contrast, the unpaired one (the sd of the
per-row losses over sqrt(n)):

    OMP_NUM_THREADS=1 python -m benchmarks.min_gain_study --tasks gaussian_mixture --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

import simgen
import simgen.training as training
from benchmarks import evaluation, harness
from simgen.stopping import GainTest


def per_row_curve(task_name: str, budget: int, seed: int) -> tuple[torch.Tensor, int]:
    """``(epochs, n_val)`` per-row validation losses of the default NPE with the rule off,
    and its epochs."""
    recorded: list[torch.Tensor] = []
    plain = training._mean_loss

    def recording(loss, parts, chunk):
        parts = list(parts)
        with torch.no_grad():
            recorded.append(torch.cat([loss.estimator.loss(t, x) for t, x, _ in parts]).double())
        return plain(loss, parts, chunk)

    task = harness.load_task(task_name)
    theta, x = evaluation.training_data(task, budget, seed)
    training._mean_loss = recording  # the loop's validation pass, observed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            posterior = simgen.NPE(task.prior).fit(
                theta, x, seed=seed, progress=False, min_gain_se=0.0
            )
    finally:
        training._mean_loss = plain
    return torch.stack(recorded), posterior.history.epochs


def stop(rows: torch.Tensor, k: float, patience: int = 20, paired: bool = True) -> int:
    """The epochs a run of these per-row losses lasts under the rule: the loop's paired
    :class:`~simgen.stopping.GainTest`, or the unpaired bar ``k`` sd(rows) / sqrt(n)."""
    means = rows.mean(1)
    n = rows.shape[1]
    paired_test, ones = GainTest(k), torch.ones(n, dtype=torch.float64)
    paired_test(rows[0], ones)  # the first epoch is the first reference, as in the loop
    reference, best, since = rows[0], float(means[0]), 0
    for epoch in range(1, len(rows)):
        new = float(means[epoch]) < best
        best = min(best, float(means[epoch]))
        if paired:
            counted = new and paired_test(rows[epoch], ones)
        else:
            bar = k * float(rows[epoch].std()) / math.sqrt(n)
            counted = new and float((reference - rows[epoch]).mean()) > bar
            reference = rows[epoch] if counted else reference
        since = 0 if counted else since + 1
        if since >= patience:
            return epoch + 1
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["gaussian_mixture"])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--paired", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--unpaired", nargs="+", type=float, default=[0.5, 1.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rules = [(k, True) for k in args.paired] + [(k, False) for k in args.unpaired]
    print(
        "| task | seed | n val | sd of a row's loss | epochs (rule off) | best loss | "
        + " | ".join(f"{'paired' if p else 'unpaired'} k={k:g}" for k, p in rules)
        + " |\n|---|---|---|---|---|---|"
        + "---|" * len(rules)
    )
    for name in args.tasks:
        for seed in args.seeds:
            rows, epochs = per_row_curve(name, args.budget, seed)
            means = rows.mean(1)
            cells = []
            for k, paired in rules:
                end = stop(rows, k, paired=paired)
                cells.append(f"{end} ({float(means[:end].min()):.3f})")
            print(
                f"| {name} | {seed} | {rows.shape[1]} | {float(rows[-1].std()):.2f} | {epochs} "
                f"| {float(means.min()):.3f} | " + " | ".join(cells) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
