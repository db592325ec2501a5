"""Bake-off of every NPE estimator family (and sbi's NPSE/FMPE) on the same simulations.

For each simulator and simulation budget: C2ST against the reference posterior at ``x_o``,
training seconds, and seconds to draw 10,000 samples. Writes ``benchmarks/results_families.md``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_families [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import simgen
import simulators
from simgen.diagnostics.c2st import c2st

__all__ = ["run"]

FAMILIES = ["nsf", "flow_matching", "diffusion", "consistency", "vae", "gan"]


def _simulate(task, n: int, seed: int = 0):
    torch.manual_seed(seed)
    theta = task.prior.sample((n,))
    return theta, task.simulator(theta, generator=torch.Generator().manual_seed(seed + 1))


def _row(name, fit, task, ref, num_c2st):
    t0 = time.perf_counter()
    post = fit()
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = post.sample((10_000,), x=task.x_o)
    draw = time.perf_counter() - t0
    score = float(c2st(samples[:num_c2st], ref[:num_c2st], seed=0))
    return name, score, train, draw


def _sbi(method: str, task, theta, x, max_epochs):
    import sbi.inference as si

    def fit():
        inf = getattr(si, method)(prior=task.prior, show_progress_bars=False)
        inf.append_simulations(theta, x).train(max_num_epochs=max_epochs)
        return inf.build_posterior()

    return fit


def run(quick: bool = False) -> str:
    tasks = ["gaussian_linear"] if quick else ["gaussian_linear", "two_moons", "slcp"]
    budgets = [1000] if quick else [1000, 10_000]
    max_epochs = 60 if quick else 300
    num_c2st = 2000 if quick else 10_000
    lines = [
        "# Estimator families bake-off",
        "",
        f"Settings: max_epochs={max_epochs}, C2ST on {num_c2st} samples, CPU, "
        f"{torch.get_num_threads()} thread(s){' (--quick)' if quick else ''}.",
        "",
        "| task | sims | estimator | C2ST | train s | 10k samples s |",
        "|---|---|---|---|---|---|",
    ]
    for task_name in tasks:
        task = simulators.get(task_name)
        if task_name == "gaussian_linear":
            task = task.make(dim=3)
        ref = task.reference_posterior(task.x_o, num_c2st, seed=0)
        for n in budgets:
            theta, x = _simulate(task, n)
            fits = {
                f: (
                    lambda f=f, task=task, theta=theta, x=x: simgen.NPE(
                        task.prior, estimator=f
                    ).fit(theta, x, max_epochs=max_epochs, progress=False)
                )
                for f in FAMILIES
            }
            fits["sbi NPSE"] = _sbi("NPSE", task, theta, x, max_epochs)
            fits["sbi FMPE"] = _sbi("FMPE", task, theta, x, max_epochs)
            for name, fit in fits.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        _, score, train, draw = _row(name, fit, task, ref, num_c2st)
                        cells = f"{score:.3f} | {train:.1f} | {draw:.2f}"
                    except Exception as exc:  # report, don't hide, a failing baseline
                        cells = f"error: {type(exc).__name__}: {str(exc)[:60]} | | "
                print(f"{task_name} {n} {name}: {cells}", flush=True)
                lines.append(f"| {task_name} | {n} | {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one task, 1k sims, few epochs")
    args = parser.parse_args()
    text = run(args.quick)
    Path(__file__).with_name("results_families.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
