"""The flows' ``gaussian_baseline``: the linear-Gaussian base, its exact density, the fast
inverse through it, save/load, ``auto``'s refusal and bad values."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

import simgen
from simgen.errors import ConfigError
from simgen.estimators.flows import MAF, NSF
from simgen.estimators.registry import from_spec


def _linear_gaussian(n: int, seed: int, dim: int = 4):
    """θ ~ N(0, I), x = A θ + 0.3 ε with a fixed dense A: the posterior is
    N(P⁻¹ Aᵀ x / 0.09, P⁻¹), P = I + AᵀA / 0.09, correlated and x-dependent."""
    g = torch.Generator().manual_seed(123)
    a = torch.randn(dim, dim, generator=g) / dim**0.5 + torch.eye(dim)
    precision = torch.eye(dim) + a.T @ a / 0.09
    cov = torch.linalg.inv(precision)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, dim, generator=g)
    x = theta @ a.T + 0.3 * torch.randn(n, dim, generator=g)

    def posterior(x_rows):
        mean = x_rows @ a @ cov.T / 0.09
        return MultivariateNormal(mean, covariance_matrix=cov)

    return theta, x, posterior


def _train(flow, theta, x, epochs: int, seed: int = 0):
    """Adam at 1e-3, batch 256, ``epochs`` passes over the pairs."""
    flow.fit_standardization(theta, x)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(theta), generator=g).split(256):
            loss = -flow(x[idx]).log_prob(theta[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return flow


def _excess_nll(flow, posterior, n: int = 4000) -> float:
    """Held-out E[-log q(θ|x)] - E[-log p(θ|x)] = E_x KL(p(·|x) ‖ q(·|x)) (nats)."""
    theta, x, _ = _linear_gaussian(n, seed=99)
    with torch.no_grad():
        return float((posterior(x).log_prob(theta) - flow(x).log_prob(theta)).mean())


def test_baseline_flow_is_right_after_few_epochs_and_the_plain_flow_is_not():
    """On a linear-Gaussian posterior the base N(m(x), Σ) of the ridge fit is already the
    answer, so 3 epochs of 2,000 pairs leave a KL below 0.15 nats (measured 0.07); the same
    flow without it must learn the x-dependent mean and the correlations and stays above 0.5
    (measured 1.1): the control that fails. The Monte Carlo sd of the 4,000-draw KL estimate
    is about 0.01 nats. The draws (the fast inverse through the base) have the posterior's
    means within 0.2 posterior sd (ridge and flow error about 0.1, MC sd 0.016) and its sds
    within 10%; the plain flow's means miss by more than 0.3 sd."""
    theta, x, posterior = _linear_gaussian(2000, seed=0)
    torch.manual_seed(1)
    with_base = _train(NSF(4, (4,), gaussian_baseline=True), theta, x, epochs=3)
    torch.manual_seed(1)
    plain = _train(NSF(4, (4,), gaussian_baseline=False), theta, x, epochs=3)
    kl_base, kl_plain = _excess_nll(with_base, posterior), _excess_nll(plain, posterior)
    assert kl_base < 0.15, (kl_base, kl_plain)
    assert kl_plain > 0.5, (kl_base, kl_plain)
    x_o = x[:1]
    exact = posterior(x_o)
    sd = exact.covariance_matrix[0].diagonal().sqrt()

    def errors(flow):
        torch.manual_seed(0)
        draws = flow.draw(4000, x_o)[:, 0]
        return (draws.mean(0) - exact.mean[0]) / sd, draws.std(0) / sd

    z, ratio = errors(with_base)
    assert z.abs().max() < 0.2, z
    assert ((ratio - 1).abs() < 0.1).all(), ratio
    z_plain, _ = errors(plain)
    assert z_plain.abs().max() > 0.3, z_plain


@pytest.mark.parametrize("cls", [NSF, MAF])
def test_density_with_the_baseline_is_normalised(cls):
    """The change of variables through ε = Σ^{-1/2}(θ̃ - m(x)) is exact: a 2-D flow's density
    integrates to 1 on a grid (trapezoid rule on [-8, 8]^2, 241^2 points; tolerance 0.005 as
    in test_flow_mixing). The fitted Σ has log|det Σ^{1/2}| far from 0 and m(x) is far from 0,
    so a missing log-determinant or a dropped mean would fail it."""
    torch.manual_seed(0)
    theta = torch.randn(3000, 2) @ torch.tensor([[1.0, 0.0], [0.8, 0.3]])
    x = theta[:, :1] + 0.2 * torch.randn(3000, 1)
    flow = cls(2, (1,), transforms=3, gaussian_baseline=True)
    flow.fit_standardization(theta, x)
    with torch.no_grad():
        for p in flow.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    flow = flow.double()
    _, _, log_det = flow.baseline.root()
    assert abs(float(log_det)) > 1, float(log_det)
    context = torch.tensor([1.5], dtype=torch.float64)
    assert flow._baseline_mean(context).abs().max() > 1
    g = torch.linspace(-8, 8, 241, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        density = flow(context).log_prob(grid).exp()
    h = float(g[1] - g[0])
    w = torch.ones(241, dtype=torch.float64)
    w[0] = w[-1] = 0.5
    mass = float((density.reshape(241, 241) * w[:, None] * w[None, :]).sum()) * h * h
    assert abs(mass - 1) < 0.005, mass


def test_fast_inverse_through_the_baseline_equals_the_distributions_sample():
    """``draw`` (the fast coupling inverse, then θ̃ = m(x) + Σ^{1/2} ε) gives the same draws
    as sampling the distribution, whose transform inverts the whitening; a flow without
    the base step fails the same comparison."""
    theta, x, _ = _linear_gaussian(500, seed=0)
    torch.manual_seed(0)
    flow = NSF(4, (4,), transforms=3, gaussian_baseline=True)
    flow.fit_standardization(theta, x)
    with torch.no_grad():
        for p in flow.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow = flow.double()
    c = x[:6].double()
    torch.manual_seed(1)
    expected = flow(c).sample((11,))
    torch.manual_seed(1)
    got = flow.draw(11, c)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    flow.baseline = None  # the same weights without the base step
    torch.manual_seed(1)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(flow.draw(11, c), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("choice", [True, "auto"])
def test_spec_round_trip_keeps_the_baseline(choice):
    """Rebuilding from the spec and loading the weights gives the same densities and draws;
    the baseline's statistics are buffers of the state dict (tensors, no code)."""
    theta, x, _ = _linear_gaussian(500, seed=0)
    torch.manual_seed(0)
    flow = NSF(4, (4,), gaussian_baseline=choice)
    flow.fit_standardization(theta, x)
    assert flow.uses_baseline
    assert flow.spec["options"]["gaussian_baseline"] == choice
    rebuilt = from_spec(flow.spec)
    assert not torch.equal(rebuilt.baseline.weight, flow.baseline.weight)  # before loading
    rebuilt.load_state_dict(flow.state_dict())
    assert rebuilt.uses_baseline
    t, c = torch.randn(9, 4), x[:9]
    torch.testing.assert_close(rebuilt(c).log_prob(t), flow(c).log_prob(t))
    torch.manual_seed(2)
    expected = flow.draw(5, c)
    torch.manual_seed(2)
    torch.testing.assert_close(rebuilt.draw(5, c), expected)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
def test_npe_saves_and_loads_a_baseline_flow(tmp_path):
    prior = simgen.BoxUniform(-3 * torch.ones(2), 3 * torch.ones(2))
    theta = prior.sample((300,))
    x = theta + 0.3 * torch.randn(300, 2)
    post = simgen.NPE(prior, gaussian_baseline=True).fit(theta, x, max_epochs=2, seed=0)
    assert post.estimator.uses_baseline
    post.save(tmp_path / "p.model")
    loaded = simgen.load(tmp_path / "p.model")
    x_o = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(loaded.log_prob(theta[:7], x=x_o), post.log_prob(theta[:7], x=x_o))
    torch.testing.assert_close(
        loaded.sample((20,), x=x_o, seed=3), post.sample((20,), x=x_o, seed=3)
    )


def test_specs_and_weights_without_the_baseline_load_unchanged():
    """A spec saved before the option has none, and its state dict has no baseline buffers."""
    torch.manual_seed(0)
    old = NSF(3, (2,), gaussian_baseline=False)
    spec, state = old.spec, old.state_dict()
    del spec["options"]["gaussian_baseline"]
    rebuilt = from_spec(spec)
    assert rebuilt.options["gaussian_baseline"] is False and rebuilt.baseline is None
    rebuilt.load_state_dict(state)  # strict: the same keys
    t, c = torch.randn(5, 3), torch.randn(5, 2)
    torch.testing.assert_close(rebuilt(c).log_prob(t), old(c).log_prob(t))


def test_auto_refusing_the_baseline_trains_bit_identically_to_none():
    """A strongly skewed residual (θ² in the target) makes ``auto`` refuse the base; the flow
    then computes exactly what ``gaussian_baseline=False`` computes, weights and densities,
    so cells of tasks where ``auto`` refuses stand unchanged."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1000, 1, generator=g)
    theta = torch.cat([u, u**2 + 0.1 * torch.randn(1000, 1, generator=g)], dim=1)
    x = u + 0.1 * torch.randn(1000, 1, generator=g)
    torch.manual_seed(1)
    auto = _train(NSF(2, (1,), gaussian_baseline="auto"), theta, x, epochs=2)
    torch.manual_seed(1)
    plain = _train(NSF(2, (1,), gaussian_baseline=False), theta, x, epochs=2)
    assert not auto.uses_baseline
    assert auto.baseline.non_gaussianity > 1, auto.baseline.non_gaussianity
    for (name, p), q in zip(plain.flow.named_parameters(), auto.flow.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(auto(x[:5]).log_prob(theta[:5]), plain(x[:5]).log_prob(theta[:5]))
    # On the linear-Gaussian task the same rule keeps it.
    lt, lx, _ = _linear_gaussian(1000, seed=0)
    kept = NSF(4, (4,), gaussian_baseline="auto")
    kept.fit_standardization(lt, lx)
    assert kept.uses_baseline, kept.baseline.non_gaussianity


def test_auto_refuses_a_base_that_puts_mass_outside_a_box_prior():
    """x = θ + 0.1 ε with θ uniform on [-1, 1]^3: the residual is Gaussian to the eye of E
    (0.005, below the threshold), but the posterior is cut at the box, so the base's mean
    mass outside the targets' range, M, is 0.043 against its bound 10/(N+1) = 0.005 at
    N = 2,000; the same data with θ ~ N(0, 0.33²) keep the base (M = 0.0005: under a prior
    with unbounded support M averages 2/(N+1) = 0.001 when the base is the posterior)."""
    g = torch.Generator().manual_seed(0)
    box = 2 * torch.rand(2000, 3, generator=g) - 1
    normal = torch.randn(2000, 3, generator=g) / 3
    for theta, kept in ((box, False), (normal, True)):
        x = theta + 0.1 * torch.randn(2000, 3, generator=g)
        flow = NSF(3, (3,), gaussian_baseline="auto")
        flow.fit_standardization(theta, x)
        b = flow.baseline
        assert b.non_gaussianity < 0.05, b.non_gaussianity
        assert flow.uses_baseline is kept, (b.edge_mass, kept)
        assert (b.edge_mass > 10 / 2001) is not kept, b.edge_mass


def test_defaults_per_family_and_behind_set_embeddings():
    """NSF decides by ``auto`` (results_defaults.md, "The linear-Gaussian base"); the
    unmeasured families keep none; a set embedding gets none, so NPE on sets trains as
    before."""
    assert NSF(3, (2,)).options["gaussian_baseline"] == "auto"
    assert MAF(3, (2,)).options["gaussian_baseline"] is False and MAF(3, (2,)).baseline is None
    sets = simgen.nets.SetPooling(2, out_features=4)
    flow = NSF(3, (5, 2), embedding_net=sets)
    assert flow.options["gaussian_baseline"] is False and flow.baseline is None


@pytest.mark.parametrize("bad", [1, 0, "yes"])
def test_bad_gaussian_baseline_raises(bad):
    with pytest.raises(ConfigError, match="gaussian_baseline must be True, False or 'auto'"):
        NSF(3, (2,), gaussian_baseline=bad)
