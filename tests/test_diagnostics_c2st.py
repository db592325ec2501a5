"""C2ST: known answers (0.5 on identical, 1 on disjoint) and agreement with sbi's metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simgen.diagnostics import c2st, c2st_posterior
from simgen.errors import ShapeError
from simulators import gaussian_linear


def _normal(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + shift


def test_identical_distributions_give_chance_accuracy() -> None:
    acc = c2st(_normal(1000, 0), _normal(1000, 1), seed=0)
    # Null std of the accuracy over 2000 points is ~0.011; 0.05 allows classifier noise.
    assert abs(acc - 0.5) < 0.05


def test_disjoint_distributions_give_accuracy_one() -> None:
    assert c2st(_normal(500, 0), _normal(500, 1, shift=20.0), seed=0) > 0.98


def test_detects_a_moderate_shift() -> None:
    # Bayes accuracy for a 1-sigma shift along both axes is Phi(sqrt(2)/2) ~= 0.76.
    acc = c2st(_normal(1000, 0), _normal(1000, 1, shift=1.0), seed=0)
    assert 0.68 < acc < 0.82


def test_deterministic_and_accepts_numpy() -> None:
    p, q = _normal(300, 0), _normal(300, 1, shift=0.5)
    assert c2st(p, q, seed=3) == c2st(p.numpy(), q.numpy(), seed=3)


def test_matches_sbi_c2st_exactly() -> None:
    metrics = pytest.importorskip("sbi.utils.metrics")
    p, q = _normal(400, 0), _normal(400, 1, shift=0.3)
    ours = c2st(p, q, seed=0)
    theirs = float(metrics.c2st(p, q, seed=0, classifier="mlp"))
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_shape_errors_say_how_to_fix() -> None:
    with pytest.raises(ShapeError, match="same"):
        c2st(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ShapeError, match="reshape"):
        c2st(np.zeros((2, 10, 2)), np.zeros((10, 2)))


def test_c2st_posterior_passes_exact_and_flags_biased() -> None:
    task = gaussian_linear.make(dim=2)
    ref = task.reference_posterior(task.x_o, 1000, seed=5)

    class Exact:
        def __init__(self, shift: float) -> None:
            self.shift = shift

        def sample(self, sample_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
            return task.posterior(x).sample(sample_shape).reshape(*sample_shape, 2) + self.shift

    good = c2st_posterior(Exact(0.0), ref, task.x_o, seed=0)
    bad = c2st_posterior(Exact(0.3), ref, task.x_o, seed=0)  # 0.3 = 1.3 posterior std
    assert good.passed and abs(float(good) - 0.5) < 0.06
    assert not bad.passed and float(bad) > 0.7
    assert good.to_dict()["passed"] is True
