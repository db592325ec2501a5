"""Simulations per second of every simulator in ``simulators/``, on one CPU core.

Run ``python -m benchmarks.bench_simulators``: prints a Markdown table and writes it to
``benchmarks/results_simulators.md``. Each simulator gets one warm-up call, then five timed
calls on ``num_simulations`` prior draws in a single batch (torch limited to one thread); the
table gives the best and the median rate. Simulators with a ``trace`` method also get a row
for ``trace`` (latents, joint log-prob and joint score).

The machine may be shared, so the load average is recorded with the numbers, and the
cosmology simulator is also timed against the same law drawn with an ``rfft2``/``irfft2``
pair (:func:`cosmology_fft_pair`) in the same process, calls interleaved, as a ratio that
contention affects far less than the absolute rates.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import simulators
from simgen.simulate import sample_prior

__all__ = ["time_simulator", "cosmology_fft_pair", "compare_cosmology", "main"]

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


def time_simulator(fn, theta: torch.Tensor, repeats: int = 5) -> tuple[float, float]:
    """Best and median simulations per second of ``fn(theta)`` over ``repeats`` calls."""
    fn(theta[:10], torch.Generator().manual_seed(0))
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(theta, torch.Generator().manual_seed(r))
        times.append(time.perf_counter() - t0)
    return len(theta) / min(times), len(theta) / statistics.median(times)


def cosmology_fft_pair(theta: torch.Tensor, generator: torch.Generator | None = None):
    """cosmology_field's law drawn the FFT way: white noise, ``rfft2``, scale, ``irfft2``."""
    from simulators import cosmology_field as cf

    eps = torch.randn((theta.shape[0], cf.SIZE, cf.SIZE), generator=generator, dtype=theta.dtype)
    amp = (cf.power_spectrum(theta)[..., : cf.SIZE // 2 + 1] + cf.NOISE**2).sqrt()
    return torch.fft.irfft2(amp * torch.fft.rfft2(eps), s=(cf.SIZE, cf.SIZE))


def compare_cosmology(theta: torch.Tensor, rounds: int = 7) -> tuple[float, float, float]:
    """Median per-round speed-up of the current cosmology simulator over
    :func:`cosmology_fft_pair` (calls interleaved), and both medians in simulations / s."""
    from simulators import cosmology_field as cf

    fns = (cf.simulator, cosmology_fft_pair)
    for fn in fns:
        fn(theta[:10], torch.Generator().manual_seed(0))
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn(theta, torch.Generator().manual_seed(r))
            t.append(time.perf_counter() - t0)
    ratio = statistics.median(old / new for new, old in zip(*times))
    return ratio, len(theta) / statistics.median(times[0]), len(theta) / statistics.median(times[1])


def main(num_simulations: int = 10_000, out: Path | None = None) -> str:
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = []
    for name in simulators.list():
        mod = simulators.get(name)
        theta = sample_prior(mod.prior, num_simulations, seed=0)
        best, median = time_simulator(mod.simulator, theta)
        target = f"≥ {TARGET:,}" if name in TARGETED else "–"
        ok = ("yes" if best >= TARGET else "no") if name in TARGETED else "–"
        rows.append((name, "simulate", best, median, target, ok))
        trace = getattr(type(mod.simulator), "trace", None)
        if trace is not None:
            n = min(num_simulations, 2000)
            best, median = time_simulator(
                lambda th, g, sim=mod.simulator: sim.trace(th, generator=g), theta[:n].double()
            )
            rows.append((name, "trace (float64)", best, median, "–", "–"))
    theta = sample_prior(simulators.get("cosmology_field").prior, num_simulations, seed=0)
    ratio, new, old = compare_cosmology(theta)
    load_after = os.getloadavg()
    lines = [
        f"Simulations per second, one CPU thread ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}), batch of {num_simulations:,} "
        "(trace: up to 2,000); best and median of five calls. 'met' compares the best call with "
        "the target.",
        "",
        f"Load average (1, 5, 15 min) before: {_fmt(load_before)}; after: {_fmt(load_after)}.",
        "",
        "| simulator | call | best / s | median / s | target | met |",
        "|---|---|---:|---:|---|---|",
    ]
    lines += [f"| {n} | {c} | {b:,.0f} | {m:,.0f} | {t} | {ok} |" for n, c, b, m, t, ok in rows]
    lines += [
        "",
        "cosmology_field (real Fourier basis, two GEMMs) against the rfft2/irfft2 pair, "
        f"same process, calls interleaved, 7 rounds: median speed-up **{ratio:.2f}×** "
        f"(medians {new:,.0f}/s against {old:,.0f}/s).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    out = out or Path(__file__).with_name("results_simulators.md")
    out.write_text("# Simulator throughput\n\n" + table)
    return table


def _fmt(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    main(parser.parse_args().num_simulations)
