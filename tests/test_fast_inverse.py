"""The fast flow sampler computes exactly zuko's inverse (to float rounding)."""

import pytest
import torch
import zuko

from simgen.estimators.fast_inverse import sample_flow, supports_fast_inverse


def _zuko_samples(flow, c, num, seed):
    torch.manual_seed(seed)
    return flow(c).sample((num,))


@pytest.mark.parametrize(
    "make",
    [
        lambda: zuko.flows.NSF(5, 3, transforms=3, passes=2),  # coupling spline (simgen's nsf)
        lambda: zuko.flows.NSF(4, 3, transforms=2, passes=2, activation=torch.nn.Tanh),
        lambda: zuko.flows.MAF(4, 3, transforms=2, passes=2),  # affine coupling
        lambda: zuko.flows.NSF(2, 3, transforms=2, passes=2),  # one feature per group
    ],
)
@pytest.mark.parametrize("chunk_rows", [7, 4096])
def test_fast_inverse_equals_zuko(make, chunk_rows):
    torch.manual_seed(0)
    flow = make().double()  # float64: the spline inverse is ill-conditioned in float32
    # Perturb every parameter so the splines are far from the identity.
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert supports_fast_inverse(flow)
    c = torch.randn(6, 3, dtype=torch.float64)
    expected = _zuko_samples(flow, c, 11, seed=1)
    torch.manual_seed(1)
    got = sample_flow(flow, c, 11, chunk_rows=chunk_rows)
    assert got.shape == expected.shape == (11, 6, flow.base(c).event_shape[0])
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)
    # And it is the inverse: pushing the samples forward gives back the base noise.
    torch.manual_seed(1)
    z = flow.base(c).expand((6,)).sample((11,))
    torch.testing.assert_close(flow(c).transform(got), z, rtol=1e-6, atol=1e-6)


def test_wrong_flow_would_be_caught():
    """The comparison above is sharp: another flow's samples do not pass it."""
    torch.manual_seed(0)
    flow, other = zuko.flows.NSF(3, 2, passes=2), zuko.flows.NSF(3, 2, passes=2)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    c = torch.randn(4, 2)
    torch.manual_seed(1)
    got = sample_flow(other, c, 5)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, _zuko_samples(flow, c, 5, seed=1), rtol=1e-4, atol=1e-4)


def test_unsupported_flows_fall_back():
    assert not supports_fast_inverse(zuko.flows.NICE(3, 2))
    assert not supports_fast_inverse(zuko.flows.NSF(1, 2))  # element-wise in one dimension
    assert not supports_fast_inverse(zuko.flows.MAF(3, 2))  # one pass per feature
    assert not supports_fast_inverse(torch.nn.Linear(2, 2))
