"""Averaged score networks for composed i.i.d. posteriors (compose_sampler.average_scores).

On the conjugate model of ``test_iid`` two flow-matching members sit on the exact per-trial
posterior through their baseline, one with its network's output offset by +delta and the
other by -delta. The composition sums each member's per-trial error over the n trials, so
either member alone misses the closed form's moments (the control), while the averaged
network is exact and meets them within ``test_iid``'s tolerance (means within 0.16
posterior sds, sds within 12%, 1,000 seeded draws) at n = 10 and 100.
"""

from __future__ import annotations

import pytest
import torch
from test_iid import PRIOR, exact_field, moments_ok, trials
from torch import nn

from simgen.errors import ConfigError
from simgen.estimators.compose_sampler import AveragedNet, average_scores
from simgen.estimators.flow_matching import FlowMatching
from simgen.posterior import DirectPosterior

DELTA = 0.3


class Offset(nn.Module):
    def __init__(self, net: nn.Module, delta: float):
        super().__init__()
        self.inner, self.delta = net, delta

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.inner(*args, **kwargs) + self.delta


def member(delta: float):
    est = exact_field(FlowMatching, steps=16).estimator
    est.net = Offset(est.net, delta)
    return est


def test_averaged_scores_cancel_the_members_errors() -> None:
    plus, minus = member(DELTA), member(-DELTA)
    averaged = DirectPosterior(average_scores([plus, minus]), PRIOR, support="reject")
    for n in (10, 100):
        x = trials(n)
        assert moments_ok(averaged.sample((1000,), x=x, seed=0), x), n
        for est in (plus, minus):  # control: each member alone is off
            alone = DirectPosterior(est, PRIOR, support="reject")
            assert not moments_ok(alone.sample((1000,), x=x, seed=0), x), n


def test_averaged_net_is_the_mean_of_the_outputs() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    z = torch.randn(5, 3)
    assert torch.allclose(AveragedNet([a, b])(z), 0.5 * (a(z) + b(z)))


def test_members_must_share_everything_but_the_network() -> None:
    plus = member(DELTA)
    with pytest.raises(ConfigError, match="at least 2"):
        average_scores([plus])
    other = member(-DELTA)
    with torch.no_grad():
        other.baseline.bias.add_(0.1)
    with pytest.raises(ConfigError, match="same simulations"):
        average_scores([plus, other])
    with pytest.raises(ConfigError, match="same estimator and options"):
        average_scores([plus, exact_field(FlowMatching, steps=4).estimator])
    assert isinstance(plus.net, Offset)  # the members are left as they were
