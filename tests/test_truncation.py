"""Where the truncation regions and the truncated prior compute (simgen.sequential).

The contract (``simgen/devices.py``, ``simgen/sequential/truncation.py``): a region built
from a posterior computes where the posterior's estimator lives (its home), and a truncated
prior samples where its prior lives, because ``simulate`` hands its draws to the simulator.
The nested regions of ``simgen.sequential`` (``IntersectionRegion``) close the file.
On a CPU-only machine the home is simulated with ``test_device.SimulatedDevice``: the
posterior moved to float64 is home, the prior and the caller's float32 θ are off, and an op
mixing the two (what raises on a GPU) is recorded. The control re-creates a tensor made
without ``device=`` and checks that the audit records it.
"""

from __future__ import annotations

import pytest
import torch
from test_device import PRIORS, SimulatedDevice, _train

import simgen
from simgen.errors import ConfigError
from simgen.sequential import HPDRegion, IntersectionRegion, TruncatedPrior, posterior_region
from simgen.sequential.truncation import _Kernel


@pytest.fixture(scope="module")
def home_posterior():
    posterior, x = _train("npe", PRIORS["box"](), "maf")
    posterior.to(torch.float64)
    return posterior, x[0]


@pytest.mark.parametrize("kind", ["hpd", "ellipsoid"])
def test_regions_compute_on_the_estimators_device(home_posterior, kind):
    posterior, x_o = home_posterior
    draws = posterior.sample((400,), x=x_o)  # sampling is test_device's audit
    with SimulatedDevice() as audit:
        region, _ = posterior_region(posterior, x_o, kind=kind, draws=draws)
        inside = region.contains(draws)
        kernel = _Kernel(draws)
        kernel.log_prob(kernel.sample(16))
    assert not audit.mixed, "ops mixing the home device with another:\n" + audit.report()
    assert draws.dtype == torch.float64 and inside.dtype == torch.bool
    assert float(inside.double().mean()) > 0.99  # the region holds 1 - 1e-4 of its draws


def test_the_audit_records_a_tensor_made_without_device(home_posterior, monkeypatch):
    """Control: ``torch.eye`` with its ``device=`` dropped (a factory left on the CPU) makes
    the ellipsoid's covariance jitter off-device, and the same audit records the mixed op."""
    posterior, x_o = home_posterior
    eye = torch.eye
    monkeypatch.setattr(torch, "eye", lambda *a, device=None, dtype=None, **k: eye(*a, **k))
    draws = posterior.sample((400,), x=x_o)
    with SimulatedDevice() as audit:
        posterior_region(posterior, x_o, kind="ellipsoid", draws=draws)
    assert audit.mixed, "the audit missed a tensor made without device="


@pytest.mark.parametrize("kind", ["hpd", "ellipsoid"])
@pytest.mark.parametrize("min_acceptance", [0.0, 2.0])  # rejection; SIR forced (mass < 2)
def test_truncated_prior_lives_where_its_prior_lives(home_posterior, kind, min_acceptance):
    posterior, x_o = home_posterior
    prior = posterior.prior
    region, draws = posterior_region(posterior, x_o, num_draws=400, kind=kind)
    truncated = TruncatedPrior(
        prior, region, proposal_draws=draws, num_mass_draws=2000, min_acceptance=min_acceptance
    )
    assert truncated.method == ("sir" if min_acceptance > 1 else "rejection")
    theta = truncated.sample((50,))
    reference = prior.sample((1,))
    assert theta.dtype == reference.dtype and theta.device == reference.device
    assert bool(truncated.support.check(theta).all())
    mask = region.contains(theta)
    assert mask.device == theta.device and bool(mask.all())
    log_p = truncated.log_prob(theta)
    assert log_p.dtype == torch.float32 and bool(torch.isfinite(log_p).all())


class _Counting(simgen.Simulator):
    """A batched simulator naming its own batch size; records the rows of each call."""

    default_batch_size = 7

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, theta, generator=None):
        self.calls.append(len(theta))
        return theta + 0.1 * torch.randn(theta.shape, generator=generator)


def test_sequential_takes_the_simulators_batch_size_by_default():
    simulator = _Counting()
    prior = PRIORS["box"]()
    simgen.sequential(
        simgen.NPE(prior, estimator="maf"), simulator, torch.zeros(2), 50, 1, max_epochs=1
    )
    assert simulator.calls == [7] * 7 + [1]  # 50 rows in batches of the simulator's 7


# -- nested regions -------------------------------------------------------------------------
class _Disk(simgen.sequential.Region):
    def __init__(self, centre, radius):
        self.centre, self.radius = torch.tensor(centre), radius

    def contains(self, theta):
        return (theta - self.centre).norm(dim=-1) <= self.radius

    def describe(self):
        return f"disk at {self.centre.tolist()}"


def test_intersection_region_holds_exactly_the_points_in_every_member():
    a, b, c = _Disk([0.0, 0.0], 1.0), _Disk([0.5, 0.0], 1.0), _Disk([0.0, 0.5], 1.0)
    nested = IntersectionRegion([IntersectionRegion([a, b]), c])
    assert nested.regions == [a, b, c]  # flattened
    theta = torch.rand(5000, 2) * 4 - 2
    expected = a.contains(theta) & b.contains(theta) & c.contains(theta)
    assert torch.equal(nested.contains(theta), expected)
    assert torch.equal(nested.contains(theta.reshape(50, 100, 2)), expected.reshape(50, 100))
    assert 0 < int(expected.sum()) < int(a.contains(theta).sum())  # a real intersection
    assert "intersection of 3 regions" in nested.describe()
    with pytest.raises(ConfigError, match="at least one region"):
        IntersectionRegion([])


@pytest.mark.parametrize("nested", [True, False])
def test_sequential_nests_its_truncated_proposals(nested):
    prior = PRIORS["box"]()
    proposals = []
    simgen.sequential(
        simgen.NPE(prior, estimator="maf"),
        lambda theta, generator=None: theta + 0.3 * torch.randn(theta.shape, generator=generator),
        torch.tensor([0.5, -0.5]),
        num_simulations=150,
        num_rounds=3,
        num_region_draws=2000,
        max_epochs=20,
        nested=nested,
        callback=lambda record, posterior, proposal: proposals.append(proposal),
    )
    second, third = proposals[0], proposals[1]  # the proposals of rounds 2 and 3
    theta = third.sample((500,))
    assert bool(third.region.contains(theta).all())
    in_second = second.region.contains(theta)
    if nested:
        assert isinstance(third.region, IntersectionRegion) and bool(in_second.all())
        assert third.region.regions[0] is second.region
    else:
        assert isinstance(third.region, HPDRegion)
