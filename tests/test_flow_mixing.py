"""The flows' ``mixing`` option: exact densities, the fast inverse, save/load, bad values."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import simgen
from simgen.errors import ConfigError
from simgen.estimators.fast_inverse import sample_flow, supports_fast_inverse
from simgen.estimators.flows import MAF, MIXINGS, NSF, RealNVP, lu_layer, lu_linear
from simgen.estimators.registry import from_spec


def _perturbed(flow, scale=0.3):
    """Every parameter moved, so splines and LU layers are far from the identity."""
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


def test_lu_layer_starts_at_the_identity_and_has_the_triangular_log_det():
    layer = lu_layer(4)
    x = torch.randn(7, 4)
    torch.testing.assert_close(layer()(x), x)
    entries, diagonal = torch.randn(4, 4), torch.randn(4)
    t = lu_linear(entries, diagonal)
    w = t.L @ t.U
    y = t(x)
    torch.testing.assert_close(y, x @ w.T)
    # log|det W| from the matrix itself, not from the formula the transform uses.
    expected = torch.linalg.slogdet(w).logabsdet.expand(7)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), expected)
    torch.testing.assert_close(t.inv(y), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [NSF, MAF, RealNVP])
@pytest.mark.parametrize("mixing", MIXINGS)
def test_density_is_normalised(cls, mixing):
    """The change of variables is exact: the density of a 2-D flow integrates to 1 on a grid
    (trapezoid rule on [-8, 8]^2 with 241^2 points; against a [-12, 12]^2 grid of 601^2
    points these flows' masses agree to 3e-4, so the tolerance is 0.005). The LU layers'
    determinants are far enough from 1 that a missing log-determinant would fail it."""
    torch.manual_seed(0)
    flow = _perturbed(cls(2, (1,), mixing=mixing, transforms=3), scale=0.1).double()
    if mixing == "lu":
        layers = [t for t in flow.flow.transform.transforms if not list(t.buffers())]
        with torch.no_grad():
            for t in layers:
                t._1.add_(0.5)  # the diagonal's parameters: |det W| well above 1
            log_det = sum(float(torch.linalg.slogdet(t().L @ t().U).logabsdet) for t in layers)
        assert log_det > 1, log_det
    g = torch.linspace(-8, 8, 241, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        density = flow(torch.zeros(1, dtype=torch.float64)).log_prob(grid).exp()
    h = float(g[1] - g[0])
    w = torch.ones(241, dtype=torch.float64)
    w[0] = w[-1] = 0.5
    mass = float((density.reshape(241, 241) * w[:, None] * w[None, :]).sum()) * h * h
    assert abs(mass - 1) < 0.005, mass


@pytest.mark.parametrize("mixing", MIXINGS)
@pytest.mark.parametrize("chunk_rows", [7, 4096])
def test_fast_inverse_equals_zuko_with_mixing(mixing, chunk_rows):
    torch.manual_seed(0)
    flow = _perturbed(NSF(5, (3,), mixing=mixing, transforms=3)).double()
    assert supports_fast_inverse(flow.flow)
    c = torch.randn(6, 3, dtype=torch.float64)
    torch.manual_seed(1)
    expected = flow.flow(c).sample((11,))
    torch.manual_seed(1)
    got = sample_flow(flow.flow, c, 11, chunk_rows=chunk_rows)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def test_fast_inverse_would_catch_a_wrong_lu_inverse():
    """The comparison above is sharp: the same flow with one LU layer changed fails it."""
    torch.manual_seed(0)
    flow = _perturbed(NSF(4, (2,), mixing="lu", transforms=2)).double()
    c = torch.randn(3, 2, dtype=torch.float64)
    torch.manual_seed(1)
    expected = flow.flow(c).sample((5,))
    lu = next(t for t in flow.flow.transform.transforms if t.__class__.__name__.startswith("Unc"))
    with torch.no_grad():
        lu._0[2, 0] += 0.5  # one entry of L
    torch.manual_seed(1)
    got = sample_flow(flow.flow, c, 5)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mixing", MIXINGS)
def test_spec_round_trip_keeps_the_mixing(mixing):
    """Rebuilding from the spec and loading the weights gives the same densities, also for
    random orders (a buffer) and LU layers (parameters)."""
    torch.manual_seed(0)
    flow = _perturbed(NSF(4, (2,), mixing=mixing))
    assert flow.spec["options"]["mixing"] == mixing
    torch.manual_seed(123)  # a rebuilt random order differs until the weights are loaded
    rebuilt = from_spec(flow.spec)
    rebuilt.load_state_dict(flow.state_dict())
    theta, c = torch.randn(9, 4), torch.randn(9, 2)
    torch.testing.assert_close(rebuilt(c).log_prob(theta), flow(c).log_prob(theta))


def test_specs_without_mixing_load_as_unmixed():
    spec = NSF(3, (2,), mixing="none").spec
    del spec["options"]["mixing"]
    assert from_spec(spec).options["mixing"] == "none"


def test_unknown_mixing_raises():
    with pytest.raises(ConfigError, match="mixing.*'lu'"):
        NSF(3, (2,), mixing="householder")
    prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((20,))
    with pytest.raises(ConfigError, match="mixing"):
        simgen.NPE(prior, mixing="rotation").fit(theta, theta, max_epochs=1)


def test_lu_mixing_fits_a_correlated_gaussian_better_with_one_coupling():
    """One coupling transform splits 4 features into the fixed halves {0, 1} and {2, 3}; the
    first half gets context-only element-wise splines and the second is element-wise given
    the first, so a Gaussian correlated within the halves (rho = 0.9 in each) is out of its
    reach: its held-out negative log-likelihood exceeds the exact one by the mutual
    information within the halves, 2 * (-0.5 log(1 - rho^2)) = 1.66 nats. An LU layer after
    the coupling makes the base a correlated Gaussian, so it reaches the exact value. The
    margins (0.3 nats between the two; 0.15 to the exact NLL, which 300 steps reach to
    within 0.06) are several times the Monte Carlo error of the 2,000 held-out draws (sd of
    the NLL mean about 0.03)."""
    torch.manual_seed(0)
    block = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    cov = torch.block_diag(block, block)
    target = MultivariateNormal(torch.zeros(4), cov)
    train, test = target.sample((4000,)), target.sample((2000,))
    exact = float(-target.log_prob(test).mean())

    def held_out_nll(mixing: str) -> float:
        torch.manual_seed(1)
        flow = NSF(4, (1,), mixing=mixing, transforms=1, hidden_features=(32, 32))
        c = torch.zeros(len(train), 1)
        opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
        for _ in range(300):
            idx = torch.randint(len(train), (256,))
            loss = -flow(c[idx]).log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(-flow(torch.zeros(len(test), 1)).log_prob(test).mean())

    plain, lu = held_out_nll("none"), held_out_nll("lu")
    assert lu < plain - 0.3, (lu, plain, exact)
    assert lu - exact < 0.15, (lu, exact)
    assert plain - exact > 2 * -0.5 * math.log(1 - 0.9**2) - 0.3, (plain, exact)
