"""The joint transformer family and the Joint object (posterior, likelihood, conditionals).

The closed-form checks use a linear-Gaussian joint, θ ~ N(0, I_2), x = Aθ + σε with x of
size 4, where every conditional is Gaussian with known moments.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import simgen
from simgen.errors import ConfigError, ShapeError, SimgenError
from simgen.estimators._tokens import ABSENT, FREE, OBSERVED
from simgen.estimators.joint_transformer import JointTransformer
from simgen.estimators.registry import from_spec
from simgen.posterior import DirectPosterior

A = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.8, -0.3], [0.2, 0.9]])
SIGMA = 0.5
PRIOR = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
X_O = torch.tensor([1.0, 0.0, 0.5, -0.5])
TINY = {"width": 16, "layers": 1, "heads": 2, "steps": 4}


def simulate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta @ A.T + SIGMA * torch.randn(n, 4, generator=g)


def gaussian_posterior(rows: list[int], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of θ given the x entries ``rows``."""
    a = A[rows]
    cov = torch.linalg.inv(torch.eye(2) + a.T @ a / SIGMA**2)
    return cov @ a.T @ x[rows] / SIGMA**2, cov


def tiny_joint(n: int = 200, **options) -> simgen.Joint:
    theta, x = simulate(n, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simgen.Joint(PRIOR, **{**TINY, **options}).fit(theta, x, max_epochs=2)


def test_npe_family_shapes_and_spec_round_trip():
    theta, x = simulate(200, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = simgen.NPE(PRIOR, estimator="joint_transformer", **TINY).fit(theta, x, max_epochs=2)
    assert post.sample((7,), x=X_O).shape == (7, 2)
    assert post.sample_batched((3,), x=x[:5]).shape == (3, 5, 2)
    assert post.log_prob(theta[:6], x=X_O, norm_posterior=False).shape == (6,)
    est = post.estimator
    rebuilt = from_spec(est.spec)
    rebuilt.load_state_dict(est.state_dict())
    assert rebuilt.spec == est.spec


def test_untrained_field_is_the_identity_flow():
    """The zero-initialised head gives v = 0, so the posterior is the base N(loc, scale²):
    checks the ODE density and the z-scoring Jacobian exactly (to float error)."""
    est = JointTransformer(2, (4,), **TINY).eval()
    theta, x = simulate(300, 1)
    est.fit_standardization(theta, x)
    loc, scale = est.target_standardizer.loc, est.target_standardizer.scale
    base = torch.distributions.Normal(loc, scale)
    points = torch.randn(5, 2)
    got = est(X_O).log_prob(points)
    assert torch.allclose(got, base.log_prob(points).sum(-1), atol=1e-4)


def test_absent_tokens_change_nothing_and_observed_tokens_stay():
    est = JointTransformer(2, (4,), **TINY)
    for p in est.net.parameters():  # a non-trivial network, heads included
        torch.nn.init.normal_(p, std=0.3)
    states = torch.tensor([FREE, ABSENT, OBSERVED, ABSENT, OBSERVED, FREE])
    z = torch.randn(8, 6)
    t = torch.rand(8)
    changed = z.clone()
    changed[:, [1, 3]] = torch.randn(8, 2) * 10  # absent entries
    v, v2 = est.net(z, t, states), est.net(changed, t, states)
    present = [0, 2, 4, 5]
    assert torch.allclose(v[:, present], v2[:, present], atol=1e-5)
    # control: moving an observed entry does change the free outputs
    moved = z.clone()
    moved[:, 2] += 3.0
    assert not torch.allclose(est.net(moved, t, states)[:, [0, 5]], v[:, [0, 5]], atol=1e-3)
    drawn = est.sample_pattern(z, states)
    assert torch.equal(drawn[:, [2, 4]], z[:, [2, 4]])
    assert torch.equal(drawn[:, [1, 3]], torch.zeros(8, 2))


def test_training_masks_cover_every_kind():
    est = JointTransformer(2, (4,), **TINY)
    from simgen.estimators._nets import LossNoise

    states = est._draw_states(4000, LossNoise(True, 4000, torch.device("cpu")))
    assert ((states == FREE).any(-1)).all()
    post = (states[:, :2] == FREE).all(-1) & (states[:, 2:] == OBSERVED).all(-1)
    lik = (states[:, :2] == OBSERVED).all(-1) & (states[:, 2:] == FREE).all(-1)
    # 0.7 posterior weight, plus 0.1 x 0.2 from subsets that keep every x token (E[U^4]);
    # bounds about 6 standard errors of 4,000 rows wide
    assert 0.67 < post.float().mean() < 0.77 and 0.08 < lik.float().mean() < 0.13
    assert (states == ABSENT).any()


def test_conditional_mask_and_nan_agree_and_nan_is_refused_elsewhere():
    joint = tiny_joint()
    mask = torch.tensor([True, True, False, False])
    x_nan = X_O.clone()
    x_nan[2:] = float("nan")
    by_mask = joint.conditional(observed=mask).sample((50,), x=X_O, seed=3)
    by_nan = joint.conditional().sample((50,), x=x_nan, seed=3)
    assert torch.equal(by_mask, by_nan)
    lp_mask = joint.conditional(observed=mask).log_prob(by_mask[:4], x=X_O)
    lp_nan = joint.conditional().log_prob(by_mask[:4], x=x_nan)
    assert torch.allclose(lp_mask, lp_nan)
    assert joint.conditional(theta=[1]).sample((9,), x=X_O).shape == (9, 1)
    with pytest.raises(SimgenError):
        joint.posterior().sample((5,), x=x_nan)
    with pytest.raises(ShapeError):
        joint.likelihood().sample(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ShapeError):
        joint.conditional(observed=torch.tensor([True, False]))
    with pytest.raises(ConfigError):
        joint.conditional(theta=[2])


def test_save_load_round_trip(tmp_path):
    joint = tiny_joint()
    path = tmp_path / "joint.model"
    joint.save(path)
    loaded = simgen.Joint.load(path)
    theta = torch.randn(4, 2)
    assert torch.allclose(
        loaded.posterior().log_prob(theta, x=X_O, norm_posterior=False),
        joint.posterior().log_prob(theta, x=X_O, norm_posterior=False),
    )
    assert torch.equal(
        loaded.likelihood().sample(theta, seed=1), joint.likelihood().sample(theta, seed=1)
    )
    assert isinstance(simgen.load(path).estimator, JointTransformer)


@pytest.mark.parametrize(
    "options",
    [
        {"heads": 3},
        {"x_token_size": 3},
        {"mask_weights": [0.0, 1, 1, 1, 1]},
        {"mask_weights": [1, 1]},
        {"layers": 0},
        {"x_blocks": 3},
        {"x_blocks": 0},
        {"identity_scale": 0.0},
        {"identity_scale": float("inf")},
        {"identity_scale": "1"},
    ],
)
def test_bad_options_raise(options):
    with pytest.raises(ConfigError):
        JointTransformer(2, (4,), **{**TINY, **options})


def test_identity_scale_sets_the_spread_of_the_token_identities():
    # seeded; 6 tokens x 64 widths = 384 draws: the sample std is within 10% of its scale
    # with probability > 0.99; the default's 0.02 is the control a scale of 1 must not match
    torch.manual_seed(0)
    default = JointTransformer(2, (4,), width=64, heads=4)
    wide = JointTransformer(2, (4,), width=64, heads=4, identity_scale=1.0)
    assert abs(default.net.identity.std().item() / 0.02 - 1) < 0.1
    assert abs(wide.net.identity.std().item() - 1) < 0.1
    rebuilt = from_spec(wide.spec)
    assert rebuilt.options["identity_scale"] == 1.0
    assert abs(rebuilt.net.identity.std().item() - 1) < 0.1


def test_embedding_net_is_refused():
    with pytest.raises(ConfigError, match="x_token_size"):
        JointTransformer(2, (4,), torch.nn.Linear(4, 3))


def test_grouped_x_tokens():
    est = JointTransformer(2, (4,), x_token_size=2, **TINY)
    assert est.tokens == 4
    assert est(torch.randn(3, 4)).sample((2,)).shape == (2, 3, 2)


def _random_net(**options) -> JointTransformer:
    est = JointTransformer(2, (4,), **{**TINY, **options})
    for p in est.net.parameters():  # weights large enough that every path shows
        torch.nn.init.normal_(p, std=1.0)
    return est


def test_block_mask_isolates_blocks_except_through_theta():
    """x = two blocks of two tokens. With one layer, an x token reads θ and its own block
    only: moving the other block changes nothing; with full attention (the control) it
    does. With θ absent, no path joins the blocks at any depth."""
    z, t = torch.randn(8, 6), torch.rand(8)
    moved = z.clone()
    moved[:, 4:] += 3.0  # the second block
    every = torch.full((6,), FREE)
    est = _random_net(x_blocks=2)
    v, v2 = est.net(z, t, every), est.net(moved, t, every)
    assert torch.allclose(v[:, 2:4], v2[:, 2:4], atol=1e-5)
    assert not torch.allclose(v[:, :2], v2[:, :2], atol=1e-2)  # θ reads every block
    full = _random_net(x_blocks=1)
    assert not torch.allclose(full.net(z, t, every)[:, 2:4], full.net(moved, t, every)[:, 2:4],
                              atol=1e-2)  # fmt: skip
    deep = _random_net(x_blocks=2, layers=3)
    no_theta = torch.tensor([ABSENT, ABSENT, FREE, FREE, OBSERVED, FREE])
    a, b = deep.net(z, t, no_theta), deep.net(moved, t, no_theta)
    assert torch.allclose(a[:, 2:4], b[:, 2:4], atol=1e-5)
    assert torch.isfinite(a).all()
    with_theta = torch.tensor([FREE, ABSENT, FREE, FREE, OBSERVED, FREE])
    a, b = deep.net(z, t, with_theta), deep.net(moved, t, with_theta)
    assert not torch.allclose(a[:, 2:4], b[:, 2:4], atol=1e-2)  # the path through θ


def _moment_error(samples, mean, cov):
    """Largest mean error in posterior standard deviations, and the largest relative error
    of a standard deviation."""
    sd = cov.diagonal().sqrt()
    mean_err = ((samples.mean(0) - mean).abs() / sd).max()
    sd_err = (samples.std(0) / sd - 1).abs().max()
    return float(mean_err), float(sd_err)


@pytest.mark.slow
def test_every_conditional_of_a_linear_gaussian_joint():
    """Seeded (simulations 0, training 0, draws 1). Tolerance: means within 0.25 posterior
    standard deviations, standard deviations within 25%, for the posterior, the posterior
    from half of x, the marginal of θ_0 given half of x, and the likelihood; the MAP within
    0.25 posterior standard deviations of the mode. The control
    answers the half-x question with the full posterior (a mask-ignoring model), which
    fails the same check."""
    theta, x = simulate(5000, 0)
    joint = simgen.Joint(PRIOR).fit(theta, x, max_epochs=500)
    half = torch.tensor([True, True, False, False])
    m, c = gaussian_posterior([0, 1, 2, 3], X_O)
    mh, ch = gaussian_posterior([0, 1], X_O)
    checks = {
        "posterior": (joint.posterior().sample((5000,), x=X_O, seed=1), m, c),
        "half": (joint.conditional(observed=half).sample((5000,), x=X_O, seed=1), mh, ch),
        "marginal": (
            joint.conditional(observed=half, theta=[0]).sample((5000,), x=X_O, seed=1),
            mh[:1],
            ch[:1, :1],
        ),
    }
    theta_q = torch.tensor([0.5, -0.5])
    lik = joint.likelihood().sample(theta_q.expand(5000, 2), seed=1)
    checks["likelihood"] = (lik, A @ theta_q, SIGMA**2 * torch.eye(4))
    for name, (samples, mean, cov) in checks.items():
        mean_err, sd_err = _moment_error(samples, mean, cov)
        assert mean_err < 0.25 and sd_err < 0.25, (name, mean_err, sd_err)
    full = checks["posterior"][0]
    mean_err, sd_err = _moment_error(full, mh, ch)
    assert not (mean_err < 0.25 and sd_err < 0.25), "control passed"
    # the MAP (field_map) is the Gaussian's mean, within the same 0.25 posterior sds
    mode_err = ((joint.posterior().map(x=X_O) - m).abs() / c.diagonal().sqrt()).max()
    assert mode_err < 0.25, mode_err
    # the posterior density agrees with the closed form up to a constant error of the ODE
    gauss = torch.distributions.MultivariateNormal(m, c)
    diff = joint.posterior().log_prob(full[:200], x=X_O) - gauss.log_prob(full[:200])
    assert diff.std() < 0.3


def test_differentiable_log_prob_matches_finite_differences():
    """θ requiring grad (MAP's gradient route, HMC) differentiates the ODE density, the
    divergence included (second derivatives through attention). Float64, exact trace, a
    random network: the gradient agrees with central differences to 1e-5."""
    est = JointTransformer(2, (4,), **TINY).double().eval()
    for p in est.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    theta, x = simulate(300, 1)
    est.fit_standardization(theta.double(), x.double())
    dist = est(X_O.double())
    points = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(dist.log_prob(points).sum(), points)
    h, fd = 1e-5, torch.zeros_like(grad)
    with torch.no_grad():
        for i in range(2):
            step = torch.zeros(2, dtype=torch.float64)
            step[i] = h
            fd[:, i] = (dist.log_prob(points + step) - dist.log_prob(points - step)) / (2 * h)
    assert grad.abs().max() > 1e-2  # a non-trivial gradient
    torch.testing.assert_close(grad, fd, atol=1e-5, rtol=1e-4)


def test_map_reaches_the_mode_of_an_exact_gaussian_field(monkeypatch):
    """With the exact velocity of a Gaussian posterior N(m, diag(s²)) (standardised units),
    ``map`` (field_map's denoising steps) lands on the mode m to 0.005 posterior standard
    deviations. Control: without steps (num_iter=0, the best of the draws alone) it does
    not, so the steps do the work. Seeded by conftest."""
    est = JointTransformer(2, (4,), **TINY).eval()
    theta, x = simulate(300, 1)
    est.fit_standardization(theta, x)
    m, s, smin = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.6]), est.sigma_min

    def field(z, t, states):
        sigma = 1 - (1 - smin) * t
        dev = z[:, :2] - t * m
        var = sigma**2 + t**2 * s**2
        e1, e0 = m + t * s**2 * dev / var, sigma * dev / var
        return torch.cat([e1 - (1 - smin) * e0, torch.zeros_like(z[:, 2:])], dim=1)

    monkeypatch.setattr(est.net, "forward", field)
    post = DirectPosterior(est, PRIOR, support="reject")
    std = est.target_standardizer
    mode, sd = m * std.scale + std.loc, s * std.scale

    def error(point):
        assert point.shape == (2,)
        return float(((point - mode) / sd).abs().max())

    assert error(post.map(x=X_O)) < 0.005
    assert error(post.map(x=X_O, num_iter=0)) > 0.005


@pytest.mark.parametrize("support", ["reject", "transform"])
def test_joint_routes_compute_on_the_estimators_device(support):
    """The likelihood and the conditionals under the simulated second device of
    ``test_device`` (float64 = the estimator's home, float32 = elsewhere): no op mixes the
    two, every output is home. A box prior, so ``"transform"`` maps θ through T."""
    from test_device import SimulatedDevice

    box = simgen.BoxUniform(-5 * torch.ones(2), 5 * torch.ones(2))
    theta, x = simulate(200, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = simgen.Joint(box, support=support, **TINY).fit(theta, x, max_epochs=1)
    joint.posterior().to(torch.float64)
    half = torch.tensor([True, True, False, False])
    x_nan = X_O.clone()
    x_nan[2:] = float("nan")
    with SimulatedDevice() as audit:
        outputs = [joint.likelihood().sample(theta[:5], seed=0)]
        outputs.append(joint.likelihood().log_prob(x[:5], theta[:5]))
        marginal = joint.conditional(observed=half, theta=[0])
        outputs.append(marginal.sample((6,), x=X_O, seed=0))
        outputs.append(marginal.log_prob(outputs[-1], x=X_O))
        outputs.append(joint.conditional().log_prob(theta[:3], x=x_nan))
    assert not audit.mixed, audit.report()
    for value in outputs:
        assert value.dtype == torch.float64
