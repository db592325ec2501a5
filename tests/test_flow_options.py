"""NSF's spline ``bound``: the default builds zuko's NSF bit for bit, a bad value raises
naming the option, the spline is the identity outside ``[-B, B]`` and the map inside it, and
the fast sampler inverts the flow at the bound it was built with. The flows' ``log_context``:
the context is z-scored on the log scale, a non-positive x raises naming the option, the
option survives a spec round trip, and off it changes nothing. NSF's ``bin_temperature``: it
divides the bin logits and nothing else, starts the spline nearer the identity, the fast
sampler inverts the tempered flow, a bad value raises naming it, and it survives the spec."""

from __future__ import annotations

import math

import pytest
import torch
import zuko

from simgen.errors import ConfigError, SupportError
from simgen.estimators.base import Standardizer
from simgen.estimators.fast_inverse import sample_flow, supports_fast_inverse
from simgen.estimators.flows import NSF, LogStandardizer, SplineFlow
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


def _positive_context(n: int = 400) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.exp(3.0 * torch.randn(n, 3))  # five orders of magnitude, as lotka_volterra


def test_log_context_standardises_log_x():
    x = _positive_context()
    theta = torch.randn(len(x), 2)
    flow = build_estimator("nsf", 2, (3,), log_context=True)
    assert isinstance(flow.context_standardizer, LogStandardizer)
    flow.fit_standardization(theta, x)
    log_x = x.log()
    z = flow.embed(x)
    torch.testing.assert_close(z, (log_x - log_x.mean(0)) / log_x.std(0), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(0), torch.ones(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(flow.context_standardizer.inverse(z), x, rtol=1e-4, atol=0)
    # Control: z-scoring x itself leaves most of these contexts in a sliver near its minimum.
    plain = build_estimator("nsf", 2, (3,))
    plain.fit_standardization(theta, x)
    raw = plain.embed(x)
    assert float((raw < raw.min(0).values + 0.1).double().mean()) > 0.5
    assert float((z < z.min(0).values + 0.1).double().mean()) < 0.05


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_log_context_refuses_non_positive_x(bad):
    x = _positive_context(50)
    flow = build_estimator("nsf", 2, (3,), log_context=True)
    with pytest.raises(SupportError, match="log_context"):
        flow.fit_standardization(torch.randn(50, 2), torch.cat([x, torch.full((1, 3), bad)]))
    flow.fit_standardization(torch.randn(50, 2), x)
    with pytest.raises(SupportError, match="log_context"):
        flow(torch.tensor([1.0, bad, 2.0]))


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_log_context_must_be_a_bool(bad):
    with pytest.raises(ConfigError, match="log_context"):
        build_estimator("maf", 2, (3,), log_context=bad)


def test_log_context_survives_the_spec_and_off_changes_nothing():
    x = _positive_context(100)
    theta = torch.randn(100, 2)
    flow = build_estimator("nsf", 2, (3,), log_context=True)
    flow.fit_standardization(theta, x)
    again = NSF.from_spec(flow.spec)
    again.load_state_dict(flow.state_dict())
    assert again.options["log_context"] is True
    torch.testing.assert_close(again(x[:5]).log_prob(theta[:5]), flow(x[:5]).log_prob(theta[:5]))
    off = build_estimator("nsf", 2, (3,))
    assert type(off.context_standardizer) is Standardizer and not off.options["log_context"]


def _spline_parameters(flow: SplineFlow, c: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The first transform's conditioner outputs ``(N, D, 3K - 1)`` at ``(theta, c)``."""
    t = flow.transform.transforms[0]
    with torch.no_grad():
        return t.hyper(torch.cat([theta, c], dim=-1)).unflatten(-1, (-1, t.total))


def test_bin_temperature_divides_the_bin_logits_only():
    """From one seed, ``bin_temperature=T`` gives the conditioner outputs of ``T = 1`` with
    the K width and K height logits divided by T and the K - 1 derivatives unchanged.
    Control: the width logits of the two flows differ, so the check can fail."""
    bins, c, theta = 6, torch.randn(7, 2), torch.randn(7, 3)
    torch.manual_seed(0)
    plain = _spline_parameters(SplineFlow(3, 2, bins=bins, transforms=1), c, theta)
    torch.manual_seed(0)
    hot = _spline_parameters(
        SplineFlow(3, 2, bins=bins, transforms=1, bin_temperature=8.0), c, theta
    )
    torch.testing.assert_close(hot[..., : 2 * bins] * 8.0, plain[..., : 2 * bins])
    assert torch.equal(hot[..., 2 * bins :], plain[..., 2 * bins :])
    assert float((hot[..., :bins] - plain[..., :bins]).abs().max()) > 0.05


def test_bin_temperature_starts_near_the_identity():
    """At initialisation a coupling transform with ``T = 8`` moves points by less than 0.05 on
    average (seeded; measured 0.022); control: zuko's ``T = 1`` moves them by more than 0.1
    (measured 0.146)."""
    c, theta = torch.randn(500, 3), 2 * torch.randn(500, 4)
    moved = {}
    for temperature in (1.0, 8.0):
        torch.manual_seed(0)
        flow = SplineFlow(4, 3, transforms=1, passes=2, bin_temperature=temperature)
        with torch.no_grad():
            moved[temperature] = float((flow(c).transform(theta) - theta).abs().mean())
    assert moved[8.0] < 0.05 < 0.1 < moved[1.0], moved


def test_fast_sampler_inverts_a_tempered_flow():
    """The fast inverse reads the tempered weights: its draws, pushed forward, give back the
    base noise (to 1e-8 in float64)."""
    torch.manual_seed(0)
    flow = SplineFlow(3, 1, transforms=2, passes=2, bound=2.0, bin_temperature=4.0).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert supports_fast_inverse(flow)
    c = torch.randn(4, 1, dtype=torch.float64)
    torch.manual_seed(1)
    noise = flow.base(c).expand(c.shape[:-1]).sample((200,))
    torch.manual_seed(1)
    draws = sample_flow(flow, c, 200)
    torch.testing.assert_close(flow(c).transform(draws), noise, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bad", [0, -2.0, math.inf, math.nan, "8", True, None])
def test_bad_bin_temperature_raises_naming_it(bad):
    with pytest.raises(ConfigError, match="bin_temperature"):
        build_estimator("nsf", 2, (2,), bin_temperature=bad)


def test_bin_temperature_survives_the_spec_and_is_nsf_only():
    flow = build_estimator("nsf", 2, (3,), bin_temperature=8.0)
    flow.fit_standardization(torch.randn(50, 2), torch.randn(50, 3))
    again = NSF.from_spec(flow.spec)
    again.load_state_dict(flow.state_dict())
    theta, x = torch.randn(5, 2), torch.randn(5, 3)
    assert again.options["bin_temperature"] == 8.0
    torch.testing.assert_close(again(x).log_prob(theta), flow(x).log_prob(theta))
    assert NSF(2, (3,)).options["bin_temperature"] == 1.0
    with pytest.raises(ConfigError, match="bin_temperature"):
        build_estimator("maf", 2, (3,), bin_temperature=8.0)
