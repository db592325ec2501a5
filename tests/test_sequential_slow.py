"""Long checks of simgen.sequential: SNLE/SNRE rounds, and sequential vs amortised NPE over
seeds (``-m slow``)."""

from __future__ import annotations

import pytest
from test_sequential import PRIOR, X_O, gaussian_fit_kl, gaussian_simulator, small_run

import simgen

pytestmark = pytest.mark.slow


def test_snle_and_snre_rounds():
    nle = small_run(simgen.NLE(PRIOR, warmup=20))
    assert nle.rounds[1].proposal.startswith("posterior") and nle.rounds[1].acceptance is None
    nre = small_run(simgen.NRE(PRIOR, warmup=20), proposal="truncated", num_region_draws=2000)
    assert "HPD region" in nre.rounds[1].proposal
    assert nre.sample((20,)).shape == (20, 2)


def test_sequential_npe_beats_amortised_over_seeds():
    # Seeds 1-4 of the default test's task and budget (400 simulations, MAF; KL of the
    # Gaussian fit to 5,000 draws against the exact posterior). Sequential (4 warm-started
    # rounds) passes KL <= 0.1 on every seed and amortised fails it on every seed. The
    # control (epsilon = 0.9: regions holding a tenth of the posterior mass) fails it on
    # average (0.36, 0.13, 0.03, 0.20: on seed 3 the final fit smooths over the narrow
    # regions). Measured values: benchmarks/results_sequential.md, "The fast test".
    def kl(seed, rounds, epsilon=1e-4):
        posterior = simgen.sequential(
            simgen.NPE(PRIOR, estimator="maf"),
            gaussian_simulator,
            X_O,
            num_simulations=400,
            num_rounds=rounds,
            seed=seed,
            epsilon=epsilon,
            warm_start=True,
        )
        return gaussian_fit_kl(posterior.sample((5000,), x=X_O, seed=0))

    seeds = [1, 2, 3, 4]
    sequential = [kl(s, 4) for s in seeds]
    amortised = [kl(s, 1) for s in seeds]
    control = [kl(s, 4, epsilon=0.9) for s in seeds]
    assert max(sequential) <= 0.1
    assert min(amortised) > 0.1
    assert sum(control) / len(control) > 0.1
