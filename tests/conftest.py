"""Shared fixtures. Tests are seeded; a small trained posterior is trained once per test run."""

from __future__ import annotations

import pytest
import torch

import simgen
from simulators import gaussian_linear


@pytest.fixture(scope="session")
def linear2():
    """The 2-D Gaussian linear task (closed-form posterior)."""
    return gaussian_linear.make(dim=2)


@pytest.fixture(scope="session")
def linear2_posterior(linear2):
    """An NSF NPE trained on 3,000 simulations of the 2-D Gaussian linear task."""
    theta, x = simgen.simulate(linear2.simulator, linear2.prior, 3000, seed=0)
    return simgen.NPE(linear2.prior, estimator="nsf", transforms=3).fit(
        theta, x, max_epochs=150, patience=15, progress=False, seed=0
    )


# Small models gain nothing from intra-op threads, and on a shared 2-core machine extra
# threads make torch many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
