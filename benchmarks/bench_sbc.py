"""SBC benchmark: simgen.diagnostics.sbc next to sbi's run_sbc on the same flow posterior.

Run with ``.venv/bin/python -m benchmarks.bench_sbc``. Trains simgen's NPE (NSF) briefly on the
10-d Gaussian linear task (sbi's run_sbc runs on simgen's posterior unchanged), then runs SBC
with 1,000 observations x 1,000 posterior samples through both libraries on the *same*
posterior object and the same (theta, x) pairs, and writes ``benchmarks/results_sbc.md``.
"""

from __future__ import annotations

import platform
import time
import warnings
from pathlib import Path

import torch

from simgen.diagnostics import sbc
from simgen.diagnostics.sampling import sample_posterior, seeded, simulate_pairs
from simgen.diagnostics.sbc import sbc_from_samples
from simulators import gaussian_linear

NUM_TRAIN = 2_000
NUM_SBC = 1_000
NUM_SAMPLES = 1_000
RESULTS = Path(__file__).with_name("results_sbc.md")


def train_flow(seed: int = 0) -> object:
    """simgen's NPE (coupling NSF, 3 transforms), at most 10 epochs on the 10-d Gaussian task."""
    import simgen

    theta, x = simulate_pairs(gaussian_linear.prior, gaussian_linear.simulator, NUM_TRAIN, seed)
    return simgen.NPE(gaussian_linear.prior, estimator="nsf", transforms=3).fit(
        theta, x, max_epochs=10, progress=False, seed=seed
    )


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    posterior = train_flow()
    t_train = time.perf_counter() - t0
    prior, simulator = gaussian_linear.prior, gaussian_linear.simulator

    # Warm-up so that neither library pays first-call overhead.
    sbc(posterior, prior, simulator, num_simulations=10, num_samples=10, seed=99)

    t0 = time.perf_counter()
    ours = sbc(posterior, prior, simulator, NUM_SBC, NUM_SAMPLES, seed=0)
    t_simgen = time.perf_counter() - t0

    from sbi.diagnostics import check_sbc, run_sbc

    thetas, xs = simulate_pairs(prior, simulator, NUM_SBC, seed=0)
    t0 = time.perf_counter()
    with seeded(2):
        ranks_sbi, dap = run_sbc(
            thetas, xs, posterior, num_posterior_samples=NUM_SAMPLES, show_progress_bar=False
        )
    t_sbi = time.perf_counter() - t0
    sbi_check = check_sbc(ranks_sbi, thetas, dap, num_posterior_samples=NUM_SAMPLES)

    # simgen's sbc simulated the same pairs (seed 0) and sampled under the same seed (2), so
    # the two libraries ranked identical samples: their ranks must agree exactly.
    agree = float((torch.as_tensor(ours.ranks) == ranks_sbi.long()).float().mean())
    samples = sample_posterior(posterior, xs[:100], NUM_SAMPLES)
    t0 = time.perf_counter()
    sbc_from_samples(thetas[:100], samples)
    t_stats = time.perf_counter() - t0

    ks = sbi_check["ks_pvals"].numpy()
    cpu = platform.processor() or platform.machine()
    lines = [
        "# SBC benchmark: simgen vs sbi",
        "",
        f"Flow NPE (simgen NPE, coupling NSF, {NUM_TRAIN} simulations, <=10 epochs, trained in "
        f"{t_train:.1f} s) on gaussian_linear (D=10); SBC with {NUM_SBC} observations x "
        f"{NUM_SAMPLES} posterior samples, same posterior object. CPU: {cpu}, "
        f"torch threads: {torch.get_num_threads()}.",
        "",
        "| implementation | wall time (s) | uniformity | passed |",
        "|---|---|---|---|",
        f"| simgen `diagnostics.sbc` (simulate + sample + ranks + tests) | {t_simgen:.2f} | "
        f"chi-square min p = {ours.p_values.min():.3g} | {ours.passed} |",
        f"| sbi `run_sbc` (sample + ranks) | {t_sbi:.2f} | KS min p = {ks.min():.3g} | "
        f"{bool(ks.min() > 0.05 / len(ks))} |",
        "",
        f"Ranks of simgen and sbi on the same pairs and sampling seed agree on {agree:.1%} of "
        "(observation, dimension) entries: both spend their time in the flow's "
        "sample_batched.",
        f"simgen's ranks, chi-square tests and simultaneous ECDF band add {t_stats:.2f} s "
        f"(measured on 100 observations x {NUM_SAMPLES} samples).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
