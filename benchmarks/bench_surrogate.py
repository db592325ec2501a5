"""NLE's surrogate simulator against the real simulators of the collection.

For each simulator: train NLE (``maf``, the default, and ``nsf``, whose coupling layers
sample in one pass through simgen's fast inverse) on ``--simulations`` draws from the prior,
then at θ_o compare

- fidelity: C2ST between 2,000 surrogate draws and 2,000 simulator draws of x (0.5 is
  indistinguishable; sbi's classifier, 5-fold);
- speed: CPU seconds (``time.process_time``, one thread) for 10,000 draws at θ_o from the
  surrogate and from the simulator, and their ratio.

The simulators here are vectorised torch programs (tens of microseconds per draw). The
per-draw cost of the surrogate is what a user compares with their own simulator's cost: it
is the break-even point, and the speed-up for a simulator costing ``c`` seconds per draw is
``c / (surrogate s per draw)``.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_surrogate [--tasks sir,langevin]``.
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

TASKS = ["sir", "lotka_volterra", "langevin", "particle_shower", "slcp", "two_moons"]


def _cpu(fn, theta, repeats: int = 3) -> float:
    """Best of ``repeats`` CPU times of ``fn(theta, generator=...)``."""
    best = float("inf")
    for r in range(repeats):
        t0 = time.process_time()
        fn(theta, generator=torch.Generator().manual_seed(r))
        best = min(best, time.process_time() - t0)
    return best


def _cpu_one_at_a_time(fn, theta: torch.Tensor, calls: int = 200) -> float:
    """CPU seconds per draw when the simulator is called with one θ at a time (how a
    non-vectorised program, e.g. an external physics code, is run), best of 3."""
    best = float("inf")
    for r in range(3):
        g = torch.Generator().manual_seed(r)
        t0 = time.process_time()
        for _ in range(calls):
            fn(theta[:1], generator=g)
        best = min(best, (time.process_time() - t0) / calls)
    return best


def _estimator(spec: str) -> tuple[str, dict]:
    """The family and NLE options of ``"nsf"``, ``"nsf:log_x"`` or ``"maf:transforms=10"``
    (options after ``:`` separated by ``;``, values as JSON; a bare name means ``True``)."""
    family, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, sep, value = item.partition("=")
        options[key] = json.loads(value) if sep else True
    return family, options


def run(tasks: list[str], estimators: list[str], n: int, out: Path) -> None:
    rows = []
    for name in tasks:
        task = simulators.get(name)
        sims = simgen.simulate(task.simulator, task.prior, n, seed=0)
        theta, x = sims.theta, sims.x
        at = task.theta_o[None].expand(2000, -1)
        real = task.simulator(at, generator=torch.Generator().manual_seed(1))
        big = task.theta_o[None].expand(10_000, -1)
        t_sim = _cpu(task.simulator, big)
        t_one = _cpu_one_at_a_time(task.simulator, big)
        for spec in estimators:
            estimator, options = _estimator(spec)
            if options.get("log_x") and not bool((x > 0).all() or (x >= 0).all()):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.process_time()
                post = simgen.NLE(task.prior, estimator=estimator, **options).fit(
                    theta, x, progress=False, seed=0
                )
                train = time.process_time() - t0
            surrogate = post.likelihood
            fake = surrogate(at, generator=torch.Generator().manual_seed(0))
            score = float(c2st(fake, real, seed=0))
            t_fast = _cpu(surrogate, big)
            per_draw = t_fast / 10_000
            row = (
                f"| {name} | {x.shape[-1]} | {spec} | {score:.3f} | {train:.0f} | "
                f"{t_fast:.3f} | {t_sim:.3f} | {t_sim / t_fast:.2f}x | "
                f"{1e6 * per_draw:.1f} | {1e6 * t_one:.0f} | {t_one / per_draw:.0f}x |"
            )
            print(row, flush=True)
            rows.append(row)
    header = [
        "# NLE surrogate simulator vs the simulator",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m "
        f"benchmarks.bench_surrogate --tasks {','.join(tasks)} --estimators "
        f"{','.join(estimators)} --simulations {n}`.",
        "",
        "Fidelity: C2ST of 2,000 surrogate vs 2,000 simulator draws of x at θ_o (0.5 = "
        "indistinguishable). Speed: CPU seconds for 10,000 draws at θ_o, best of 3, one "
        "thread. 'µs per draw' is the surrogate's cost: any simulator slower than that per "
        "draw is sped up by (its cost) / (that). 'one θ per call' times the simulator called "
        "with a single θ at a time (best of 3 × 200 calls), as a non-vectorised program runs; "
        "its speed-up is against the surrogate's batched per-draw cost. Surrogate "
        "`nsf:log_x` is `NLE(estimator='nsf', log_x=True)` (positive x only); count columns "
        "are dequantised by default.",
        "",
        "| task | x dim | surrogate | C2ST x | train CPU s | surrogate s | simulator s | "
        "speed-up (batched) | surrogate µs per draw | simulator µs per draw, one θ per call "
        "| speed-up (one θ per call) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    out.write_text("\n".join(header + rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--estimators", default="maf,nsf")
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_surrogate.md")))
    args = parser.parse_args()
    warm_up_torch()
    run(
        args.tasks.split(","),
        args.estimators.split(","),
        args.simulations,
        Path(args.out),
    )


if __name__ == "__main__":
    main()
