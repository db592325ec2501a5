"""The linear-Gaussian baseline's ``auto`` rule refuses a regression the simulations cannot
pin down (effective degrees of freedom above ``BASELINE_MAX_DOF_SHARE`` of N)."""

from __future__ import annotations

import pytest
import torch

import simgen
import simulators
from simgen.estimators import baseline as baseline_module
from simgen.estimators.baseline import BASELINE_MAX_DOF_SHARE, GaussianBaseline
from simgen.estimators.flow_matching import FlowMatching


def _linear(n: int, features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """θ ``(n, 2)`` = the first two of ``features`` standard-normal x entries plus N(0, 0.5²)
    noise: a linear-Gaussian posterior whose residual variance is 0.25."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    return x[:, :2] + 0.5 * torch.randn(n, 2, generator=gen), x


def _fit(n: int, features: int) -> tuple[GaussianBaseline, float]:
    """An ``auto`` baseline with no non-Gaussianity limit, and the ratio of its residual
    variance on 4,000 fresh simulations to the fitted Σ's (mean over the two directions)."""
    theta, x = _linear(n, features, seed=0)
    base = GaussianBaseline(features, 2, auto=True, threshold=float("inf"))
    base.fit(theta, x)
    theta_new, x_new = _linear(4000, features, seed=1)
    error = (theta_new - base.mean(x_new)) @ base.eigvecs
    return base, float((error.square().mean(0) / base.eigvals).mean())


def test_auto_refuses_an_overfitted_regression_and_keeps_a_determined_one():
    """300 features on 320 simulations (ν/N ≈ 0.94) interpolate: Σ understates the error on
    new x more than 5-fold (the least-squares factor (1 - ν/N)⁻² is about 280), so ``auto``
    refuses it; the same model on 4,000 simulations (ν/N = 0.075, factor 1.17) keeps it and
    its Σ is within 30% of the fresh error. A rule without the degrees-of-freedom limit
    (the threshold alone, here infinite) keeps both: the overfitted one is the defect."""
    over, ratio = _fit(320, 300)
    assert over.dof_share > 0.9 and ratio > 5
    assert not over.on

    fine, ratio = _fit(4000, 300)
    assert abs(fine.dof_share - 0.075) < 0.005 and abs(ratio - 1) < 0.3
    assert fine.on
    assert fine.dof_share <= BASELINE_MAX_DOF_SHARE < over.dof_share


def test_fixed_baseline_is_not_refused():
    """``gaussian_baseline=True`` is the caller's choice: the limit applies to ``auto`` only."""
    theta, x = _linear(320, 300, seed=0)
    base = GaussianBaseline(300, 2, auto=False)
    base.fit(theta, x)
    assert base.on


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("dof_limit", [BASELINE_MAX_DOF_SHARE, float("inf")])
def test_cosmology_field_flow_matching_lands_in_the_prior(monkeypatch, dof_limit):
    """cosmology_field at 1,000 simulations (1,024 pixels, ν/N = 0.95) with a non-Gaussianity
    threshold the statistic passes (the 0.1 that failed the benchmark): with the limit the
    baseline is refused and sampling x_o succeeds; the control without the limit keeps the
    baseline and no draw falls inside the prior's box (SupportError)."""
    monkeypatch.setattr(FlowMatching, "baseline_threshold", 0.1)
    monkeypatch.setattr(baseline_module, "BASELINE_MAX_DOF_SHARE", dof_limit)
    task = simulators.get("cosmology_field")
    sims = simgen.simulate(task.simulator, task.prior, 1000, seed=1_001_003)
    posterior = simgen.NPE(task.prior, estimator="flow_matching").fit(
        sims.theta, sims.x, progress=False, seed=0, max_epochs=30
    )
    fitted = posterior.estimator.baseline
    assert fitted.non_gaussianity < 0.1 and fitted.dof_share > 0.9
    if dof_limit == float("inf"):
        assert fitted.on
        with pytest.raises(simgen.errors.SupportError):
            posterior.sample((1000,), x=task.x_o, seed=0)
    else:
        assert not fitted.on
        draws = posterior.sample((1000,), x=task.x_o, seed=0)
        assert draws.shape == (1000, 2) and bool(task.prior.support.check(draws).all())
