"""Simulations per second of every simulator in ``simulators/``, on one CPU core.

Run ``python -m benchmarks.bench_simulators``: prints a Markdown table and writes it to
``benchmarks/results_simulators.md``. Each simulator gets one warm-up call, then the best of
three timed calls on ``num_simulations`` prior draws in a single batch (torch limited to one
thread). Simulators with a ``trace`` method also get a row for ``trace`` (latents, joint
log-prob and joint score).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import simulators
from simgen.simulate import sample_prior

__all__ = ["time_simulator", "main"]

TARGET = 10_000
TARGETED = {
    "gaussian_linear",
    "gaussian_linear_uniform",
    "two_moons",
    "slcp",
    "gaussian_mixture",
    "bernoulli_glm",
    "langevin",
    "cosmology_field",
}


def time_simulator(fn, theta: torch.Tensor, repeats: int = 3) -> float:
    """Best-of-``repeats`` simulations per second of ``fn(theta)``."""
    fn(theta[:10], torch.Generator().manual_seed(0))
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(theta, torch.Generator().manual_seed(r))
        best = min(best, time.perf_counter() - t0)
    return len(theta) / best


def main(num_simulations: int = 10_000, out: Path | None = None) -> str:
    torch.set_num_threads(1)
    rows = []
    for name in simulators.list():
        mod = simulators.get(name)
        theta = sample_prior(mod.prior, num_simulations, seed=0)
        rate = time_simulator(mod.simulator, theta)
        target = f"≥ {TARGET:,}" if name in TARGETED else "–"
        ok = "yes" if rate >= TARGET else "no"
        rows.append((name, "simulate", rate, target, ok if name in TARGETED else "–"))
        trace = getattr(type(mod.simulator), "trace", None)
        if trace is not None:
            n = min(num_simulations, 2000)
            rate = time_simulator(
                lambda th, g, sim=mod.simulator: sim.trace(th, generator=g), theta[:n].double()
            )
            rows.append((name, "trace (float64)", rate, "–", "–"))
    lines = [
        f"Simulations per second, one CPU thread ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}), batch of {num_simulations:,} (trace: up to 2,000).",
        "",
        "| simulator | call | simulations / s | target | met |",
        "|---|---|---:|---|---|",
    ]
    lines += [f"| {n} | {c} | {r:,.0f} | {t} | {m} |" for n, c, r, t, m in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    out = out or Path(__file__).with_name("results_simulators.md")
    out.write_text("# Simulator throughput\n\n" + table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    main(parser.parse_args().num_simulations)
