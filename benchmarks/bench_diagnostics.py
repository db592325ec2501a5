"""False alarms and power of ``diagnose``, and CPU seconds of each check next to sbi's.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_diagnostics [--quick]

Posteriors in closed form on the 2-d Gaussian linear task (exact N(x/2, 0.05 I); too narrow,
std x0.6; too wide, std x1.6; biased, mean + 1 sd). Table 1: over seeds s, ``diagnose`` at
family-wise level 0.05 with x_o the s-th of one prior-predictive draw (seed 1000), 300
simulations x 300 samples, ``seed=10 s`` (a call uses seeds seed..seed+5, and torch's
streams for equal seeds coincide, so consecutive seeds would share draws): the share of
seeds that fail overall and per check (for the exact posterior this is the false-alarm
rate, at most 0.05 by construction). Table 2: CPU seconds
(``time.process_time``, one thread) of simgen's SBC, TARP and L-C2ST and sbi's
``run_sbc``+``check_sbc``, ``run_tarp``+``check_tarp`` and ``LC2ST`` on the same exact
posterior, the same 1,000 simulations and 1,000 samples (L-C2ST: the same 1,000 calibration
pairs and 20 null trials each).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import warm_up_torch
from simgen.diagnostics import diagnose, draw, lc2st, sbc, tarp
from simgen.diagnostics.sampling import simulate_pairs
from simulators import gaussian_linear

TASK = gaussian_linear.make(dim=2)
POST_VAR = 1.0 / (1.0 / gaussian_linear.PRIOR_VAR + 1.0 / gaussian_linear.LIKELIHOOD_VAR)
RESULTS = Path(__file__).with_name("results_diagnostics.md")


class GaussianPosterior:
    """N(x/2 + shift, (scale^2 * 0.05) I) with the posterior interface."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        self.scale, self.shift, self.std = scale, shift, scale * POST_VAR**0.5

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return POST_VAR / gaussian_linear.LIKELIHOOD_VAR * x + self.shift

    def sample_batched(self, sample_shape, x, **_: object) -> torch.Tensor:  # noqa: ANN001
        mean = self._mean(x)
        return mean + self.std * torch.randn(*sample_shape, *mean.shape)

    def sample(self, sample_shape, x=None, **_: object) -> torch.Tensor:  # noqa: ANN001
        return self.sample_batched(sample_shape, x.reshape(1, 2)).squeeze(-2)

    def log_prob(self, theta, x=None, **_: object) -> torch.Tensor:  # noqa: ANN001
        return (
            torch.distributions.Normal(self._mean(x.reshape(2)), self.std).log_prob(theta).sum(-1)
        )


POSTERIORS = {
    "exact": GaussianPosterior(),
    "too narrow (x0.6)": GaussianPosterior(scale=0.6),
    "too wide (x1.6)": GaussianPosterior(scale=1.6),
    "biased (+1 sd)": GaussianPosterior(shift=POST_VAR**0.5),
}
CHECKS = ("sbc", "tarp", "coverage", "zscore", "predictive", "lc2st", "misspecification")


def error_rates(seeds: int) -> list[str]:
    rows = [
        "| posterior | seeds | fails overall | " + " | ".join(CHECKS) + " |",
        "|---|---|---|" + "---|" * len(CHECKS),
    ]
    for name, post in POSTERIORS.items():
        fails = np.zeros(len(CHECKS))
        overall = 0
        # One draw of all observations: seeding each from 1000 + s would reuse seed s + 1's
        # stream for the noise of seed s (simulate_pairs seeds x with seed + 1).
        observations = simulate_pairs(TASK.prior, TASK.simulator, seeds, seed=1000)[1]
        for s in range(seeds):
            x_o = observations[s]
            report = diagnose(
                post,
                TASK.prior,
                TASK.simulator,
                x_o=x_o,
                num_simulations=300,
                num_samples=300,
                seed=10 * s,
            )
            overall += not report.passed
            fails += [not report.results[c].passed for c in CHECKS]
        cells = " | ".join(f"{f / seeds:.2f}" for f in fails)
        rows.append(f"| {name} | {seeds} | {overall / seeds:.2f} | {cells} |")
        print(rows[-1], flush=True)
    return rows


def _cpu(fn) -> tuple[float, object]:  # noqa: ANN001
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def timings() -> list[str]:
    from sbi.diagnostics import LC2ST, check_sbc, check_tarp, run_sbc, run_tarp

    post = POSTERIORS["exact"]
    theta, x = simulate_pairs(TASK.prior, TASK.simulator, 1000, seed=0)
    rows = ["| check | simgen CPU s | sbi CPU s |", "|---|---|---|"]

    def ours_sbc():  # noqa: ANN202
        return sbc(post, TASK.prior, TASK.simulator, 1000, 1000, seed=0).passed

    def sbi_sbc():  # noqa: ANN202
        ranks, dap = run_sbc(theta, x, post, 1000, show_progress_bar=False)
        return check_sbc(ranks, TASK.prior.sample((1000,)), dap, 1000)

    def ours_tarp():  # noqa: ANN202
        return tarp(post, TASK.prior, TASK.simulator, 1000, 1000, seed=0).passed

    def sbi_tarp():  # noqa: ANN202
        ecp, alpha = run_tarp(theta, x, post, num_posterior_samples=1000, show_progress_bar=False)
        return check_tarp(ecp, alpha)

    draws = draw(post, TASK.prior, TASK.simulator, 1000, 1, seed=0)

    def ours_lc2st():  # noqa: ANN202
        return lc2st(post, TASK.prior, TASK.simulator, TASK.x_o, num_null=20, draws=draws).p_value

    def sbi_lc2st():  # noqa: ANN202
        test = LC2ST(draws.theta, draws.x, draws.samples[0], num_trials_null=20)
        test.train_under_null_hypothesis(verbosity=0)
        test.train_on_observed_data()
        return test.p_value(post.sample((1000,), x=TASK.x_o), TASK.x_o.reshape(1, -1))

    for name, ours, theirs in (
        ("SBC 1000 x 1000", ours_sbc, sbi_sbc),
        ("TARP 1000 x 1000", ours_tarp, sbi_tarp),
        ("L-C2ST 1000 pairs, 20 null trials", ours_lc2st, sbi_lc2st),
    ):
        torch.manual_seed(0)
        t_ours, _ = _cpu(ours)
        torch.manual_seed(0)
        t_sbi, _ = _cpu(theirs)
        rows.append(f"| {name} | {t_ours:.2f} | {t_sbi:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(1)
    warm_up_torch()
    quick = "--quick" in sys.argv
    seeds = 5 if quick else 20
    command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_diagnostics" + (
        " --quick" if quick else ""
    )
    lines = ["# Diagnostics: false alarms, power, CPU seconds", "", f"`{command}`", ""]
    lines += ["## Share of seeds failing `diagnose` (level 0.05, Bonferroni over 7 tests)", ""]
    lines += error_rates(seeds)
    lines += ["", "## CPU seconds on the exact posterior, same simulations", ""]
    lines += timings()
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
