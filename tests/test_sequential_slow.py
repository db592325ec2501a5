"""Long checks of simgen.sequential: SNLE/SNRE rounds, and sequential vs amortised NPE over
seeds (``-m slow``)."""

from __future__ import annotations

import pytest
from test_sequential import PRIOR, X_O, gaussian_fit_kl, gaussian_simulator

import simgen

pytestmark = pytest.mark.slow


def test_snle_and_snre_rounds():
    nle = simgen.sequential(
        simgen.NLE(PRIOR, warmup=20),
        gaussian_simulator,
        X_O,
        num_simulations=200,
        num_rounds=2,
        seed=0,
        max_epochs=20,
    )
    assert nle.rounds[1].proposal.startswith("posterior") and nle.rounds[1].acceptance is None
    nre = simgen.sequential(
        simgen.NRE(PRIOR, warmup=20),
        gaussian_simulator,
        X_O,
        num_simulations=200,
        num_rounds=2,
        seed=0,
        proposal="truncated",
        num_region_draws=2000,
        max_epochs=20,
    )
    assert "HPD region" in nre.rounds[1].proposal
    assert nre.sample((20,)).shape == (20, 2)


def test_sequential_npe_beats_amortised_over_seeds():
    # Seeds 1-4 of the default test's task at 800 simulations (MAF; KL of the Gaussian fit
    # to 5,000 draws against the exact posterior). Sequential (4 rounds) passes KL <= 0.1 on
    # every seed and has the lower mean; the control (epsilon = 0.5: regions holding half
    # the posterior mass) fails KL <= 0.1 on every seed. At 400 simulations (100 a round)
    # sequential failed on seeds 1 and 3 (KL 1.10, 2.09): a broad round-2 fit made round
    # 3's region nearly the whole prior, and the final fit stayed broad in one coordinate.
    def kl(seed, rounds, epsilon=1e-4):
        posterior = simgen.sequential(
            simgen.NPE(PRIOR, estimator="maf"),
            gaussian_simulator,
            X_O,
            num_simulations=800,
            num_rounds=rounds,
            seed=seed,
            epsilon=epsilon,
        )
        return gaussian_fit_kl(posterior.sample((5000,), x=X_O, seed=0))

    seeds = [1, 2, 3, 4]
    sequential = [kl(s, 4) for s in seeds]
    amortised = [kl(s, 1) for s in seeds]
    control = [kl(s, 4, epsilon=0.5) for s in seeds]
    assert max(sequential) <= 0.1
    assert sum(sequential) < sum(amortised)
    assert min(control) > 0.1
