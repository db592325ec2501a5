"""Generative estimator families: flow matching, diffusion, consistency, VAE, GAN.

Fast tests use a 2-D linear-Gaussian task (closed-form posterior) and short training; the
tolerances are loose but a posterior shifted by one posterior standard deviation fails them
(checked explicitly). Thorough C2ST checks are marked ``slow``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import MultivariateNormal

import simgen
from simgen.diagnostics.c2st import c2st
from simgen.errors import ConfigError, ConvergenceWarning, NoDensityError
from simgen.estimators.base import DensityEstimator, SampleOnlyEstimator
from simgen.estimators.diffusion import Diffusion
from simgen.estimators.flow_matching import FlowMatching
from simgen.estimators.ode import SolverConfig
from simgen.estimators.registry import build_estimator
from simgen.estimators.vae import VAE
from simulators import gaussian_linear

FAMILIES = ["flow_matching", "diffusion", "consistency", "vae", "gan", "joint_transformer"]


def _data(n: int, dim: int = 2):
    task = gaussian_linear.make(dim=dim)
    g = torch.Generator().manual_seed(0)
    theta = task.prior.loc + torch.randn(n, dim, generator=g) @ task.prior.scale_tril.T
    x = task.simulator(theta, generator=torch.Generator().manual_seed(1))
    return task, theta, x


@pytest.fixture(scope="module")
def trained():
    task, theta, x = _data(3000)
    out = {}
    for name in FAMILIES:
        opts = {"steps": 10} if name in ("flow_matching", "diffusion") else {}
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            out[name] = simgen.NPE(task.prior, estimator=name, **opts).fit(
                theta,
                x,
                max_epochs=80 if name in ("consistency", "joint_transformer") else 40,
                progress=False,
                patience=80,
            )
    return task, out


@pytest.mark.parametrize("name", FAMILIES)
def test_family_types(name):
    est = build_estimator(name, 2, (2,))
    sample_only = name in ("gan", "consistency")
    assert isinstance(est, SampleOnlyEstimator) == sample_only
    assert isinstance(est, DensityEstimator) == (not sample_only)
    d = est(torch.randn(5, 2))
    assert d.batch_shape == (5,) and d.event_shape == (2,)
    assert d.sample((3,)).shape == (3, 5, 2)
    assert est.loss(torch.randn(7, 2), torch.randn(7, 2)).shape == (7,)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", FAMILIES)
def test_samples_match_closed_form(trained, name):
    task, posts = trained
    post = posts[name]
    ref = task.reference_posterior(task.x_o, 500, seed=3)
    samples = post.sample((500,), x=task.x_o, seed=0)
    assert samples.shape == (500, 2)
    exact = task.posterior(task.x_o)
    sd = exact.stddev.reshape(-1)
    shift = ref + sd  # a posterior shifted by one standard deviation
    score, wrong = c2st(samples, ref, seed=0), c2st(shift, ref, seed=0)
    assert float(wrong) > 0.75
    assert float(score) < 0.70, f"{name}: C2ST {float(score):.3f}"
    mean_err = (samples.mean(0) - exact.mean.reshape(-1)).abs() / sd
    assert (mean_err < 0.5).all(), f"{name}: mean error {mean_err}"
    batched = post.sample_batched((50,), x=torch.stack([task.x_o, task.x_o + 0.1]))
    assert batched.shape == (50, 2, 2)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", ["flow_matching", "diffusion", "vae"])
def test_log_prob_close_to_exact(trained, name):
    task, posts = trained
    exact = task.posterior(task.x_o)
    theta = exact.sample((200,)).reshape(200, -1)
    logq = posts[name].log_prob(theta, x=task.x_o).detach()
    logp = exact.log_prob(theta).reshape(-1)
    assert logq.shape == (200,)
    assert (logq - logp).abs().mean() < 0.5, f"{name}: {(logq - logp).abs().mean():.3f}"


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", ["gan", "consistency"])
def test_sample_only_log_prob_raises(trained, name):
    task, posts = trained
    with pytest.raises(NoDensityError, match="flow_matching"):
        posts[name].log_prob(torch.zeros(3, 2), x=task.x_o)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip(trained, tmp_path, name):
    task, posts = trained
    post = posts[name]
    path = tmp_path / f"{name}.simgen"
    post.save(path)
    loaded = simgen.load(path)
    a = post.sample((20,), x=task.x_o, seed=5)
    b = loaded.sample((20,), x=task.x_o, seed=5)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dim", [1, 2])
def test_ode_log_prob_integrates_to_one(dim):
    """Untrained fields still define densities: the ODE log_prob integrates to about 1."""
    torch.manual_seed(0)
    for cls in (FlowMatching,):  # an untrained diffusion's field explodes as t -> eps
        est = cls(dim, (1,), steps=20, solver="rk4").eval()
        n = 400 if dim == 1 else 60
        grid = torch.linspace(-6, 6, n)
        pts = grid[:, None] if dim == 1 else torch.cartesian_prod(grid, grid)
        with torch.no_grad():
            dist = est(torch.zeros(1))
        logq = dist.log_prob(pts).detach()
        cell = (grid[1] - grid[0]) ** dim
        mass = float(logq.exp().sum() * cell)
        assert abs(mass - 1) < 0.05, f"{cls.__name__} dim={dim}: mass {mass:.3f}"


def test_ode_log_prob_matches_change_of_variables_for_linear_field():
    """With an exactly linear velocity the ODE density is Gaussian in closed form."""
    est = FlowMatching(2, (1,), steps=20, solver="rk4")
    a = torch.tensor([0.3, -0.5])
    est.velocity = lambda y, t, c, m: a * y  # y(1) = e^a y(0)
    theta = torch.randn(50, 2)
    logq = est(torch.zeros(50, 1)).log_prob(theta)
    exact = MultivariateNormal(torch.zeros(2), torch.diag((2 * a).exp())).log_prob(theta)
    torch.testing.assert_close(logq, exact, atol=1e-4, rtol=1e-4)


def test_hutchinson_above_threshold_is_unbiased():
    est = FlowMatching(6, (1,), steps=8, exact_trace_max_dim=4)
    theta = torch.randn(1, 6).expand(4000, 6)
    with torch.no_grad():
        dist = est(torch.zeros(1))
    hutch = dist.log_prob(theta)
    est.solver = SolverConfig(steps=8, exact_trace_max_dim=10)
    exact = est(torch.zeros(1)).log_prob(theta[:1])
    assert hutch.std() > 0  # it really is stochastic
    assert abs(float(hutch.mean() - exact[0])) < 4 * float(hutch.std()) / math.sqrt(4000) + 1e-3


def test_vae_bound_tightens_with_importance_samples():
    """E[log p_K] rises with K towards log q(θ|x) (Burda et al., 2016); K = 1 is the ELBO.

    Two moons, because on a Gaussian posterior the decoder ignores z and every K agrees.
    Averages over 40 repetitions; differences are compared with their standard errors.
    """
    from simgen.priors import support_transform
    from simulators import two_moons

    torch.manual_seed(0)
    theta, x = simgen.simulate(two_moons.simulator, two_moons.prior, 2000, seed=0)
    post = simgen.NPE(two_moons.prior, estimator="vae").fit(
        theta, x, max_epochs=30, progress=False, patience=50
    )
    est = post.estimator
    u = support_transform(two_moons.prior).inv(two_moons.reference_posterior(two_moons.x_o, 100))
    c = est.embed(two_moons.x_o[None]).expand(100, -1)
    y = est.target_standardizer(u)
    torch.manual_seed(1)
    with torch.no_grad():
        reps = {
            k: torch.stack([est.iw_log_prob(y, c, k).mean() for _ in range(40)])
            for k in (1, 10, 300)
        }
        elbo = float(torch.stack([est.elbo(y, c).mean() for _ in range(40)]).mean())
    mean = {k: float(v.mean()) for k, v in reps.items()}
    se = {k: float(v.std()) / 40**0.5 for k, v in reps.items()}
    assert abs(mean[1] - elbo) < 4 * se[1] + 0.01  # K = 1 is the ELBO
    assert mean[10] - mean[1] > 2 * (se[1] + se[10])
    assert mean[300] - mean[10] > -2 * (se[10] + se[300])
    assert mean[300] - mean[1] > 3 * (se[1] + se[300])


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"solver": "dopri"},
        {"guidance": -1.0},
        {"guidance": 2.0},  # guidance without context dropout
    ],
)
def test_solver_options_validated(options):
    for name in ("flow_matching", "diffusion"):
        with pytest.raises(ConfigError):
            build_estimator(name, 2, (2,), **options)


def test_family_specific_options_validated():
    with pytest.raises(ConfigError, match="sde"):
        Diffusion(2, (2,), sde="subvp")
    with pytest.raises(ConfigError, match="sampler"):
        Diffusion(2, (2,), sampler="langevin")
    with pytest.raises(ConfigError, match="steps"):
        build_estimator("consistency", 2, (2,), steps=0)
    with pytest.raises(ConfigError, match="importance_samples"):
        VAE(2, (2,), importance_samples=0)


def test_guidance_runs_with_context_dropout():
    est = FlowMatching(2, (2,), context_dropout=0.2, guidance=2.0, steps=4)
    assert est(torch.randn(3, 2)).sample((5,)).shape == (5, 3, 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", FAMILIES + ["diffusion_ve_sde"])
def test_c2st_thorough(name):
    """10k simulations, 3-D: C2ST < 0.6 (GAN < 0.65) against the closed form."""
    task, theta, x = _data(10_000, dim=3)
    opts = {"sde": "ve", "sampler": "sde"} if name == "diffusion_ve_sde" else {}
    family = "diffusion" if name == "diffusion_ve_sde" else name
    post = simgen.NPE(task.prior, estimator=family, **opts).fit(
        theta, x, max_epochs=200, progress=False
    )
    ref = task.reference_posterior(task.x_o, 5000, seed=3)
    score = float(c2st(post.sample((5000,), x=task.x_o, seed=0), ref, seed=0))
    assert score < (0.65 if name == "gan" else 0.6), f"{name}: {score:.3f}"


@pytest.mark.parametrize("architecture", ["mlp", "resnet"])
def test_precomputed_context_matches_forward(architecture):
    """The sampler's split first layer gives the network's own output (to float rounding)."""
    from simgen.estimators._nets import ConditionalNet

    torch.manual_seed(0)
    net = ConditionalNet(3, 4, 3, (32, 32, 32), architecture=architecture).eval()
    for p in net.parameters():  # the residual output layer starts at zero: perturb it
        torch.nn.init.normal_(p, std=0.3)
    y, t = torch.randn(6, 2, 3), torch.tensor(0.37)
    c = torch.randn(2, 4)
    full = net(y, t, c.expand(6, 2, 4))
    fast = net.forward_conditioned(y, t, net.condition(c))
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    one = net.forward_conditioned(y[:, :1], t, net.condition(c[:1]))  # fused addmm path
    torch.testing.assert_close(one, full[:, :1], atol=1e-5, rtol=1e-5)


def test_flow_matching_fast_sampler_is_the_ode_sampler():
    """Same random draws through the fast path and the generic row-wise path agree."""
    est = FlowMatching(2, (3,), steps=4).eval()
    dist = est(torch.randn(5, 3))
    torch.manual_seed(1)
    fast = dist.sample((7,))
    torch.manual_seed(1)
    generic = super(type(dist), dist).sample((7,))
    assert fast.shape == (7, 5, 2)
    torch.testing.assert_close(fast, generic, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["flow_matching", "diffusion", "consistency"])
def test_validation_loss_is_deterministic(name):
    """In eval mode the Monte-Carlo loss uses fixed noise (early stopping sees weights only)."""
    est = build_estimator(name, 2, (2,))
    theta, x = torch.randn(50, 2), torch.randn(50, 2)
    est.eval()
    a, b = est.loss(theta, x), est.loss(theta, x)
    assert a.shape == (50,)
    torch.testing.assert_close(a, b)
    est.train()
    assert not torch.equal(est.loss(theta, x), est.loss(theta, x))


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_diffusion_time_grid_inverts_the_noise_ratio(sde):
    """``times`` spaces log(σ_t/α_t) evenly from t = eps to t = 1."""
    est = Diffusion(2, (2,), sde=sde)
    t = torch.linspace(est.eps, 1, 9)
    torch.testing.assert_close(est.time_of_ratio(est.ratio(t)), t, atol=1e-5, rtol=1e-4)
    grid = est.times(torch.linspace(0, 1, 6))
    assert abs(float(grid[0]) - est.eps) < 1e-6 and abs(float(grid[-1]) - 1) < 1e-6
    steps = est.ratio(grid).log().diff()
    torch.testing.assert_close(steps, steps.mean().expand(5), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
def test_flow_matching_round_trip_keeps_net_and_baseline(tmp_path):
    task, theta, x = _data(300)
    post = simgen.NPE(task.prior, estimator="flow_matching", hidden_features=[32, 32]).fit(
        theta, x, max_epochs=2, progress=False
    )
    post.save(tmp_path / "fm.simgen")
    loaded = simgen.load(tmp_path / "fm.simgen")
    a = post.sample((20,), x=task.x_o, seed=5)
    torch.testing.assert_close(a, loaded.sample((20,), x=task.x_o, seed=5))
    with pytest.raises(ConfigError, match="equal hidden widths"):
        FlowMatching(2, (2,), hidden_features=[32, 16])
    with pytest.raises(ConfigError, match="architecture"):
        FlowMatching(2, (2,), architecture="transformer")
    with pytest.raises(ConfigError, match="time_embedding"):
        FlowMatching(2, (2,), time_embedding="learned")


def test_gaussian_baseline_velocity_is_the_exact_gaussian_velocity():
    """v0 equals E[u_t | y_t] of the linear path for a Gaussian target, by Monte Carlo.

    Draw (y0, y1) with y1 ~ N(m, Sigma), bin on a thin slab around a point y*, and compare
    the mean conditional velocity there with v0(y*): tolerance 0.05 (MC s.e. ~0.01). A
    baseline with a wrong covariance (Sigma doubled) fails the same check.
    """
    from simgen.estimators.baseline import GaussianBaseline

    torch.manual_seed(0)
    d, sigma_min = 1, 1e-3
    base = GaussianBaseline(1, d)
    m = torch.tensor([[0.7]])
    x = torch.randn(20_000, 1)
    y = 0.7 + 0.0 * x + 0.5 * torch.randn(20_000, d)  # m = 0.7, Sigma = 0.25, no x-dependence
    base.fit(y, x)
    torch.testing.assert_close(base.eigvals, torch.tensor([0.25]), atol=0.01, rtol=0)
    t, y_star = torch.tensor(0.6), torch.tensor([[0.3]])
    n = 4_000_000
    y0, y1 = torch.randn(n, d), 0.7 + 0.5 * torch.randn(n, d)
    yt = (1 - (1 - sigma_min) * t) * y0 + t * y1
    near = (yt - y_star).abs()[:, 0] < 0.01
    u = (y1 - (1 - sigma_min) * y0)[near].mean()
    v0 = base.velocity(y_star, t, m, sigma_min)[0, 0]
    assert abs(float(v0 - u)) < 0.05, (float(v0), float(u))
    base.eigvals.mul_(2.0)  # control: wrong covariance
    assert abs(float(base.velocity(y_star, t, m, sigma_min)[0, 0] - u)) > 0.05


def test_gaussian_baseline_regresses_on_x():
    """The ridge fit recovers a linear posterior mean m(x) = A x + b and its residual spread."""
    from simgen.estimators.baseline import GaussianBaseline

    torch.manual_seed(0)
    x = torch.randn(5000, 3)
    a = torch.tensor([[1.0, -0.5], [0.0, 2.0], [0.3, 0.0]])
    y = x @ a + 0.2 + 0.1 * torch.randn(5000, 2)
    base = GaussianBaseline(3, 2)
    base.fit(y, x)
    torch.testing.assert_close(base.weight, a, atol=0.01, rtol=0)
    torch.testing.assert_close(base.eigvals, torch.full((2,), 0.01), atol=0.002, rtol=0)
    big = GaussianBaseline(5000, 2)  # too many context features: unconditional Gaussian
    assert big.weight.numel() == 0
    assert big.mean(torch.randn(4, 5000)).shape == (4, 2)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
def test_baseline_auto_switches_on_for_gaussian_residuals_only(tmp_path):
    """``gaussian_baseline="auto"`` keeps the baseline when the ridge residual is Gaussian.

    Linear-Gaussian data give a non-Gaussianity E ~ 1e-2 (kept); a crescent-shaped residual
    (y depends on |x|, so the linear fit leaves a folded, skewed residual) gives E >> 0.05
    (dropped). The decision is a saved buffer: the loaded model samples identically.
    """
    from simgen.estimators.baseline import GaussianBaseline

    torch.manual_seed(0)
    x = torch.randn(2000, 2)
    gauss = GaussianBaseline(2, 2, auto=True)
    gauss.fit(x @ torch.tensor([[1.0, 0.5], [0.0, 1.0]]) + 0.3 * torch.randn(2000, 2), x)
    assert gauss.on and gauss.non_gaussianity < 0.05
    folded = GaussianBaseline(2, 2, auto=True)
    folded.fit(torch.stack([x[:, 0].abs(), x[:, 1] ** 2], -1) + 0.05 * torch.randn(2000, 2), x)
    assert not folded.on and folded.non_gaussianity > 0.5
    # Mild but real non-Gaussianity (one of five residual directions uniform, as a box
    # prior's unidentified parameter leaves it: E ~ 1.2^2 / 4 / 5 = 0.07, 6x the Gaussian
    # null 12/N): a threshold of 0.1 keeps the baseline, flow matching's and diffusion's
    # (0.05) drop it.
    x5 = torch.randn(2000, 5)
    resid = torch.cat([torch.randn(2000, 4), torch.rand(2000, 1) * 2 - 1], -1)
    for threshold, kept in ((0.1, True), (0.05, False)):
        mild = GaussianBaseline(5, 5, auto=True, threshold=threshold)
        mild.fit(x5 + resid, x5)
        assert 0.05 < mild.non_gaussianity < 0.1 and mild.on == kept
    assert FlowMatching(2, (2,)).baseline.threshold == 0.05
    assert Diffusion(2, (2,)).baseline.threshold == 0.05
    assert GaussianBaseline(2, 2).on  # a fixed baseline ignores the statistic
    with pytest.raises(ConfigError, match="gaussian_baseline"):
        FlowMatching(2, (2,), gaussian_baseline="sometimes")

    task, theta, x = _data(300)
    for kind in ("flow_matching", "diffusion"):
        post = simgen.NPE(
            task.prior, estimator=kind, hidden_features=[32, 32], gaussian_baseline="auto"
        ).fit(theta, x, max_epochs=2, progress=False)
        assert post.estimator.baseline.on
        post.save(tmp_path / f"{kind}.simgen")
        loaded = simgen.load(tmp_path / f"{kind}.simgen")
        a = post.sample((20,), x=task.x_o, seed=5)
        torch.testing.assert_close(a, loaded.sample((20,), x=task.x_o, seed=5))


def test_diffusion_gaussian_baseline_is_the_exact_noise_of_a_gaussian():
    """With the baseline, an untrained (zero-output) diffusion is exactly q0 = N(m(x), Sigma).

    The resnet's output layer starts at zero, so the noise prediction is the baseline's
    sigma (alpha^2 Sigma + sigma^2)^{-1} (y - alpha m): the probability-flow ODE then carries
    N(0, (1 + sigma_max^2) I) to N(m, Sigma) up to solver error. Checked on the mean and
    covariance of 5,000 samples (tolerance 0.04, about 4 standard errors) for VE and VP;
    without the baseline the same untrained model is far off.
    """
    torch.manual_seed(0)
    x = torch.randn(4000, 2)
    a = torch.tensor([[1.0, -0.5], [0.0, 2.0]])
    theta = x @ a + 0.2 + torch.randn(4000, 2) @ torch.tensor([[0.3, 0.0], [0.2, 0.4]])
    x_o = torch.tensor([[0.5, -1.0]])
    cov = torch.tensor([[0.3, 0.0], [0.2, 0.4]]).T @ torch.tensor([[0.3, 0.0], [0.2, 0.4]])
    mean = x_o @ a + 0.2
    for sde in ("ve", "vp"):
        est = Diffusion(2, (2,), sde=sde, architecture="resnet", gaussian_baseline=True)
        est.fit_standardization(theta, x)
        est.eval()
        s = est(x_o).sample((5000,))[:, 0]
        torch.testing.assert_close(s.mean(0), mean[0], atol=0.04, rtol=0)
        torch.testing.assert_close(torch.cov(s.T), cov, atol=0.04, rtol=0)
    plain = Diffusion(2, (2,), architecture="resnet", gaussian_baseline=False)
    plain.fit_standardization(theta, x)
    plain.eval()
    assert (plain(x_o).sample((1000,))[:, 0].mean(0) - mean[0]).abs().max() > 0.3


def test_diffusion_spec_from_before_the_baseline_still_loads():
    """A diffusion spec without the baseline options (an mlp net) rebuilds the same model."""
    from simgen.estimators.registry import from_spec

    old = Diffusion(
        2, (2,), architecture="mlp", time_embedding="sinusoidal", gaussian_baseline=False
    )
    spec = old.spec
    for key in ("gaussian_baseline", "precondition", "repeats"):
        del spec["options"][key]
    new = from_spec(spec)
    new.load_state_dict(old.state_dict())
    assert new.baseline is None and new.options["architecture"] == "mlp"
    assert Diffusion(2, (2,)).baseline is not None  # today's default has one


def test_diffusion_control_variate_has_zero_mean():
    """The control variate changes the loss's noise, not its expectation (same weights)."""
    torch.manual_seed(0)
    theta, x = torch.randn(4000, 2), torch.randn(4000, 2)
    with_cv = Diffusion(2, (2,), architecture="mlp", control_variate=10.0)
    plain = Diffusion(2, (2,), architecture="mlp", control_variate=0.0)
    plain.load_state_dict(with_cv.state_dict())
    for est in (with_cv, plain):
        est.fit_standardization(theta, x)
    torch.manual_seed(1)
    a = with_cv.loss(theta, x)
    torch.manual_seed(1)
    b = plain.loss(theta, x)
    diff = a - b  # the control variate itself: zero mean, s.e. ~ 0.05 here
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / 4000**0.5
    assert float(a.var()) < float(b.var())  # and it reduces the variance


def test_flow_matching_time_grid_is_warped_toward_the_data_end():
    """Default grid t_k = 1 - (1 - k/K)^2: shorter steps near t = 1; old specs stay uniform."""
    from simgen.estimators.registry import from_spec

    fm = FlowMatching(2, (2,))
    ts = fm.time_grid()
    assert len(ts) == fm.solver.steps + 1 and float(ts[0]) == 0 and float(ts[-1]) == 1
    steps = ts.diff()
    assert bool((steps > 0).all()) and float(steps[-1]) < float(steps[0]) / 10
    uniform = FlowMatching(2, (2,), grid_power=1.0, steps=4).time_grid()
    assert torch.equal(uniform, torch.linspace(0, 1, 5))
    spec = FlowMatching(2, (2,), steps=8).spec
    del spec["options"]["grid_power"]  # a model saved before the option existed
    assert torch.equal(from_spec(spec).time_grid(), torch.linspace(0, 1, 9))
    for bad in (0, -1.0, True, "2"):
        with pytest.raises(ConfigError, match="grid_power"):
            FlowMatching(2, (2,), grid_power=bad)
