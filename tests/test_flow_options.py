"""NSF's spline ``bound``: the default builds zuko's NSF bit for bit, a bad value raises
naming the option, the spline is the identity outside ``[-B, B]`` and the map inside it, and
the fast sampler inverts the flow at the bound it was built with."""

from __future__ import annotations

import math

import pytest
import torch
import zuko

from simgen.errors import ConfigError
from simgen.estimators.fast_inverse import sample_flow, supports_fast_inverse
from simgen.estimators.flows import NSF, SplineFlow
from simgen.estimators.registry import build_estimator


def test_default_bound_is_zukos_nsf_bit_for_bit():
    torch.manual_seed(0)
    ours = SplineFlow(3, 2, transforms=2, passes=2)
    torch.manual_seed(0)
    theirs = zuko.flows.NSF(3, 2, transforms=2, passes=2)
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    theta, c = torch.randn(5, 3), torch.randn(5, 2)
    assert torch.equal(ours(c).log_prob(theta), theirs(c).log_prob(theta))
    assert NSF(3, (2,)).options["bound"] == 5.0


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "3", True, None])
def test_bad_bound_raises_naming_it(bad):
    with pytest.raises(ConfigError, match="bound"):
        build_estimator("nsf", 2, (2,), bound=bad)


def test_bound_is_not_an_affine_flow_option():
    with pytest.raises(ConfigError, match="bound"):
        build_estimator("maf", 2, (2,), bound=3.0)


def _perturbed(bound: float) -> SplineFlow:
    torch.manual_seed(0)
    flow = SplineFlow(2, 1, transforms=1, passes=2, bound=bound).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("bound", [2.0, 3.0])
def test_spline_is_identity_outside_the_bound_only(bound):
    """A coupling transform's first group depends on the context alone: its spline leaves
    points beyond ``B`` unchanged and moves points inside. Control: the same point at
    ``0.8 B`` moves, so the check can fail."""
    flow = _perturbed(bound)
    c = torch.zeros(1, 1, dtype=torch.float64)
    transform = flow(c).transform.transforms[0]
    first = int(torch.nonzero(flow.transform.transforms[0].order == 0)[0])
    for value, moves in [(1.5 * bound, False), (-1.2 * bound, False), (0.8 * bound, True)]:
        theta = torch.zeros(1, 2, dtype=torch.float64)
        theta[0, first] = value
        out = transform(theta)[0, first]
        assert bool(abs(out - value) > 1e-6) == moves, (value, float(out))


def test_fast_sampler_uses_the_flows_bound():
    """Draws by the fast inverse, pushed forward, give back the base noise (to 1e-8 in float64)
    at ``B = 2``, where many draws fall beyond the bound and many inside it."""
    flow = _perturbed(2.0)
    assert supports_fast_inverse(flow)
    c = torch.randn(4, 1, dtype=torch.float64)
    torch.manual_seed(1)
    noise = flow.base(c).expand(c.shape[:-1]).sample((200,))
    torch.manual_seed(1)
    draws = sample_flow(flow, c, 200)
    inside = (draws.abs() < 2.0).double().mean()
    assert 0.2 < inside < 0.98
    back = flow(c).transform(draws)
    torch.testing.assert_close(back, noise, rtol=0, atol=1e-8)
