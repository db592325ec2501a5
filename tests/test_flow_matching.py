"""Flow matching's ``gaussian_baseline="auto"`` decision at its threshold (0.05)."""

from __future__ import annotations

import torch

from simgen.estimators.baseline import GaussianBaseline
from simgen.estimators.flow_matching import FlowMatching


def _data(non_gaussian: bool, n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``(n, 5)`` and θ = A x + residual: Gaussian, or with one residual direction uniform
    (E = (1.2²/4)/5 = 0.072 in the limit, the range of slcp's statistic at 1k)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, generator=gen)
    resid = torch.randn(n, 5, generator=gen)
    if non_gaussian:
        resid[:, 4] = torch.rand(n, generator=gen) * 2 - 1  # variance 1/3: its own eigenvector
    a = torch.eye(5) + 0.3 * torch.ones(5, 5)
    return x @ a + 0.5 * resid, x


def test_auto_baseline_keeps_gaussian_residuals_and_drops_mild_non_gaussian_ones():
    """The Gaussian residual's statistic is near its null 12/N = 0.003 and the baseline stays;
    the one-uniform-direction residual lies between 0.05 and 0.1, so flow matching drops the
    baseline there, and the control with threshold 0.1 on the same data keeps it."""
    theta, x = _data(non_gaussian=False)
    fm = FlowMatching(5, (5,))
    fm.fit_standardization(theta, x)
    assert fm.baseline.on and fm.baseline.non_gaussianity < 0.02

    theta, x = _data(non_gaussian=True)
    fm = FlowMatching(5, (5,))
    fm.fit_standardization(theta, x)
    assert 0.05 < fm.baseline.non_gaussianity < 0.1
    assert not fm.baseline.on

    control = GaussianBaseline(5, 5, auto=True, threshold=0.1)
    control.fit(fm.target_standardizer(theta), fm.context_standardizer(x))
    assert abs(control.non_gaussianity - fm.baseline.non_gaussianity) < 1e-9
    assert control.on


def test_fixed_baseline_ignores_the_statistic():
    """``gaussian_baseline=True`` keeps the baseline whatever the residual looks like."""
    theta, x = _data(non_gaussian=True)
    fm = FlowMatching(5, (5,), gaussian_baseline=True)
    fm.fit_standardization(theta, x)
    assert fm.baseline.on
