"""bench_iid's models and its check of sbi's MAF (benchmarks/iid_models.py, bench_iid.py)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_iid import unconditioned
from benchmarks.iid_models import HIGH, LOW, MODELS


def grid_moments(x: torch.Tensor, truncate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of each rate's posterior from its density on a fine grid."""
    n, s = len(x), x.double().sum(0)
    grid = (
        torch.linspace(LOW, HIGH, 50_001).double()
        if truncate
        else torch.linspace(1e-4, 40, 200_001).double()
    )
    means, sds = [], []
    for j in range(2):
        logp = n * grid.log() - grid * s[j]
        w = (logp - logp.max()).exp()
        w = w / w.sum()
        mean = (w * grid).sum()
        means.append(mean)
        sds.append((w * (grid - mean).square()).sum().sqrt())
    return torch.stack(means), torch.stack(sds)


@pytest.mark.parametrize("n", [1, 10, 100])
def test_exp_reference_matches_the_truncated_gamma_density(n: int) -> None:
    """20,000 exact draws: mean within 4 standard errors of the grid's, sd within 3%;
    the untruncated Gamma (the control) fails the same check at n = 1 and on observation
    2, whose rate sits at the box's edge."""
    model = MODELS["exp"]
    for k, full in enumerate(model.observations()):
        x = full[:n]
        draws = model.reference(x, 20_000, 0).double()
        assert ((draws >= LOW) & (draws <= HIGH)).all()
        mean, sd = grid_moments(x, truncate=True)
        se = sd / 20_000**0.5
        assert ((draws.mean(0) - mean).abs() < 4 * se).all()
        assert ((draws.std(0) / sd - 1).abs() < 0.03).all()
        if n == 1 or k == 2:
            wrong_mean, _ = grid_moments(x, truncate=False)
            assert ((draws.mean(0) - wrong_mean).abs() > 4 * se).any()


def test_gauss_model_draws_the_closed_form() -> None:
    model = MODELS["gauss"]
    x = model.observations()[0][:10]
    draws = model.reference(x, 20_000, 0)
    sd = 1 / 11**0.5
    assert ((draws.mean(0) - x.sum(0) / 11).abs() < 4 * sd / 20_000**0.5).all()
    assert ((draws.std(0) / sd - 1).abs() < 0.03).all()


def _maf(perms: list[list[int]]) -> torch.nn.Module:
    """sbi's MAF layout: a conditional MADE, then a permutation, per layer."""
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        RandomPermutation,
    )

    layers = []
    for perm in perms:
        layers.append(
            MaskedAffineAutoregressiveTransform(features=2, hidden_features=8, context_features=2)
        )
        shuffle = RandomPermutation(features=2)
        shuffle._permutation.copy_(torch.tensor(perm))
        layers.append(shuffle)
    return CompositeTransform(layers)


def test_unconditioned_names_a_feature_first_in_every_made() -> None:
    """Identity permutations keep feature 0 first in every MADE; one swap conditions it."""
    assert unconditioned(_maf([[0, 1]] * 5)) == [0]
    assert unconditioned(_maf([[0, 1], [1, 0], [0, 1], [0, 1], [0, 1]])) == []
    assert unconditioned(_maf([[1, 0]] * 5)) == []


def test_unconditioned_context_really_is_ignored() -> None:
    """The defect itself: a conditional MADE's first output does not move with the context
    (nflows pull request 85), while the second does (the control)."""
    from nflows.transforms import MaskedAffineAutoregressiveTransform

    torch.manual_seed(0)
    made = MaskedAffineAutoregressiveTransform(features=2, hidden_features=8, context_features=2)
    for p in made.parameters():
        torch.nn.init.normal_(p)
    x = torch.zeros(4, 2)
    z, _ = made(x, context=torch.randn(4, 2))
    assert torch.allclose(z[:, 0], z[0, 0].expand(4))
    assert not torch.allclose(z[:, 1], z[0, 1].expand(4))
