"""The simulator collection: shapes, seeding, support, reference posteriors, failure handling."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import simgen
import simulators
from simgen.errors import SimulationWarning, UnknownEstimatorError, UnknownSimulatorError
from simgen.priors import in_support
from simgen.simulate import sample_prior

NAMES = simulators.list()
EXPECTED = {
    "particle_shower",
    "cosmology_field",
    "langevin",
    "sir",
    "lotka_volterra",
    "gaussian_linear",
    "gaussian_linear_uniform",
    "two_moons",
    "slcp",
    "gaussian_mixture",
    "bernoulli_glm",
}
SLOW_REFERENCE = {"sir"}  # particle MCMC: ~1-2 min for 10,000 samples, ~10 s for 400
# particle_shower's particle MCMC takes ~25 CPU-s for 400 samples: the same contract is
# checked with tiny settings (test_particle_shower_reference_runs_seeded_...).
OWN_REFERENCE_TEST = {"particle_shower"}
WITH_REFERENCE = [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_REFERENCE else n
    for n in NAMES
    if hasattr(simulators.get(n), "reference_posterior") and n not in OWN_REFERENCE_TEST
]


def test_collection_lists_every_simulator():
    assert set(NAMES) >= EXPECTED
    assert simulators.get("two_moons").__name__ == "simulators.two_moons"
    for bad in ("no_such_simulator", None):
        with pytest.raises(UnknownSimulatorError, match="No simulator named") as info:
            simulators.get(bad)
        assert "simulators.list()" in str(info.value) and "two_moons" in str(info.value)
        assert not isinstance(info.value, UnknownEstimatorError)


@pytest.mark.parametrize("name", NAMES)
def test_module_contract_shapes_seeding_and_support(name):
    mod = simulators.get(name)
    assert mod.__doc__ and len(mod.__doc__) > 200, "each simulator documents what it models"
    theta_o = mod.theta_o
    assert bool(in_support(mod.prior, theta_o[None]).all())
    theta = sample_prior(mod.prior, 50, seed=0)
    assert theta.shape == (50, theta_o.shape[0])
    x = mod.simulator(theta, generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, *mod.x_o.shape)
    again = mod.simulator(theta, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(again))
    other = mod.simulator(theta, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(torch.nan_to_num(x), torch.nan_to_num(other))
    assert bool(torch.isfinite(mod.x_o).all())
    x_at_o = mod.simulator(theta_o[None].repeat(20, 1), generator=torch.Generator().manual_seed(2))
    assert bool(torch.isfinite(x_at_o).all())


@pytest.mark.parametrize("name", NAMES)
def test_simulate_is_reproducible_for_every_simulator(name):
    mod = simulators.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        a = simgen.simulate(mod.simulator, mod.prior, 120, seed=4, batch_size=50)
        b = simgen.simulate(mod.simulator, mod.prior, 120, seed=4, batch_size=50)
    assert len(a.theta) >= 110 and torch.equal(a.x, b.x) and torch.equal(a.theta, b.theta)


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_reference_posteriors_are_seeded_and_in_the_support(name):
    mod = simulators.get(name)
    s = mod.reference_posterior(mod.x_o, 400, seed=0)
    assert s.shape == (400, mod.theta_o.shape[0]) and bool(torch.isfinite(s).all())
    assert bool(in_support(mod.prior, s).all())
    assert torch.equal(s, mod.reference_posterior(mod.x_o, 400, seed=0))
    assert not torch.equal(s, mod.reference_posterior(mod.x_o, 400, seed=1))


def test_gaussian_linear_reference_matches_closed_form():
    mod = simulators.get("gaussian_linear")
    s = mod.reference_posterior(mod.x_o, 20_000, seed=0).double()
    exact = mod.posterior(mod.x_o)
    sd = exact.variance.sqrt().reshape(-1).double()
    assert ((s.mean(0) - exact.loc.reshape(-1)).abs() / sd).max() < 4 / math.sqrt(20_000) * 1.5
    assert ((s.std(0) / sd) - 1).abs().max() < 0.03


def test_gaussian_linear_uniform_reference_matches_truncated_normal_moments():
    mod = simulators.get("gaussian_linear_uniform")
    s = mod.reference_posterior(mod.x_o, 20_000, seed=0).double()
    sd = math.sqrt(0.1)
    std = torch.distributions.Normal(0.0, 1.0)
    a, b = (-1 - mod.x_o.double()) / sd, (1 - mod.x_o.double()) / sd
    z = std.cdf(b) - std.cdf(a)
    mean = mod.x_o + sd * (std.log_prob(a).exp() - std.log_prob(b).exp()) / z
    assert (s.mean(0) - mean).abs().max() < 0.01  # ≈ 4.5 standard errors of the mean


def test_gaussian_mixture_reference_matches_the_mixture():
    mod = simulators.get("gaussian_mixture")
    # x_o lies > 8 wide standard deviations inside the box, so truncation is negligible and
    # the posterior is ½ N(x_o, I) + ½ N(x_o, 0.01 I): mean x_o, variance 0.505 per axis.
    s = mod.reference_posterior(mod.x_o, 20_000, seed=0).double()
    assert (s.mean(0) - mod.x_o).abs().max() < 4 * math.sqrt(0.505 / 20_000)
    assert (s.var(0) / 0.505 - 1).abs().max() < 0.05
    r2 = ((s - mod.x_o) ** 2).sum(-1)
    inside = float((r2 < 0.09).double().mean())  # P(|θ - x_o| < 0.3) under the mixture
    expected = 0.5 * (1 - math.exp(-0.045)) + 0.5 * (1 - math.exp(-4.5))
    assert abs(inside - expected) < 0.015


def test_bernoulli_glm_mcmc_reference_matches_laplace_importance_sampling():
    mod = simulators.get("bernoulli_glm")
    s = mod.reference_posterior(mod.x_o, 10_000, seed=0).double()
    # Independent check: self-normalised importance sampling from a widened Gaussian fit.
    prop = torch.distributions.MultivariateNormal(s.mean(0), 1.5 * torch.cov(s.T))
    g = torch.Generator().manual_seed(3)
    eps = torch.randn((100_000, 10), generator=g, dtype=torch.float64)
    theta = prop.loc + eps @ prop.scale_tril.T
    log_prior = mod.prior.log_prob(theta.float()).double()
    log_w = mod.log_likelihood(theta, mod.x_o.double()) + log_prior - prop.log_prob(theta)
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * theta).sum(0)
    sd = (w[:, None] * (theta - mean) ** 2).sum(0).sqrt()
    assert 1 / (w**2).sum() > 10_000
    assert ((s.mean(0) - mean) / sd).abs().max() < 0.1
    assert ((s.std(0) / sd) - 1).abs().max() < 0.1


def test_slcp_likelihood_matches_torch_and_reference_is_four_fold_symmetric():
    mod = simulators.get("slcp")
    theta = sample_prior(mod.prior, 5, seed=0).double()
    m, s1, s2, rho = theta[:, :2], theta[:, 2] ** 2, theta[:, 3] ** 2, torch.tanh(theta[:, 4])
    cov = torch.stack(
        [torch.stack([s1**2, rho * s1 * s2], -1), torch.stack([rho * s1 * s2, s2**2], -1)], -2
    )
    x = mod.x_o.double()
    ref = torch.distributions.MultivariateNormal(m[:, None], cov[:, None])
    expected = ref.log_prob(x.reshape(4, 2)).sum(-1)
    torch.testing.assert_close(mod.log_likelihood(theta, x), expected, rtol=1e-6, atol=1e-6)
    s = mod.reference_posterior(mod.x_o, 4000, seed=0)
    quadrant = (s[:, 2] > 0).long() * 2 + (s[:, 3] > 0).long()
    counts = torch.bincount(quadrant, minlength=4).double()
    assert ((counts / 1000 - 1).abs() < 0.15).all()  # 1000 ± ~27 per mode


def test_cosmology_likelihood_is_the_exact_gaussian_density():
    mod = simulators.get("cosmology_field")
    theta = torch.tensor([[0.25, 0.9]], dtype=torch.float64)
    lam = mod.power_spectrum(theta)[0] + mod.NOISE**2
    c = torch.fft.ifft2(lam).real  # circulant covariance: C[i, j] = c(i - j)
    idx = torch.arange(mod.SIZE)
    di = (idx[:, None, None, None] - idx[None, None, :, None]) % mod.SIZE
    dj = (idx[None, :, None, None] - idx[None, None, None, :]) % mod.SIZE
    cov = c[di, dj].reshape(mod.SIZE**2, mod.SIZE**2)
    x = mod.x_o.double()
    mvn = torch.distributions.MultivariateNormal(torch.zeros(mod.SIZE**2, dtype=torch.float64), cov)
    torch.testing.assert_close(mod.log_likelihood(theta, x), mvn.log_prob(x.reshape(-1))[None])
    # The simulator draws from that density: per-bin mean power matches Λ_k within 3 %.
    sims = mod.simulator(theta.repeat(2000, 1), generator=torch.Generator().manual_seed(0))
    emp = (torch.fft.fft2(sims).abs() ** 2 / mod.SIZE**2).mean(0).reshape(-1)
    bins = mod._bins(torch.float64)
    ratio = (emp @ bins) / (lam.reshape(-1) @ bins)
    assert (ratio - 1).abs().max() < 0.03
    assert mod.summary(sims[:3]).shape == (3, mod.NUM_BINS)


def test_cosmology_simulator_covariance_is_exactly_the_likelihoods():
    """x = Q (A ⊙ Ξ) Qᵀ has covariance (Q⊗Q) diag(A²) (Q⊗Q)ᵀ: build it and compare it with
    the circulant covariance U† diag(Λ) U that ``log_likelihood`` uses (to rounding)."""
    mod = simulators.get("cosmology_field")
    theta = torch.tensor([[0.25, 0.9], [0.12, 0.65]], dtype=torch.float64)
    q_t, *_, index = mod._basis(torch.float64)
    kron = torch.kron(q_t.T, q_t.T)  # vec(Q M Qᵀ) = (Q ⊗ Q) vec(M), row-major
    for t, a in zip(theta, mod._amplitude(theta)):
        cov = kron @ torch.diag(a[index] ** 2) @ kron.T
        lam = mod.power_spectrum(t[None])[0] + mod.NOISE**2
        circ = torch.fft.ifft2(lam).real
        idx = torch.arange(mod.SIZE)
        di = (idx[:, None, None, None] - idx[None, None, :, None]) % mod.SIZE
        dj = (idx[None, :, None, None] - idx[None, None, None, :]) % mod.SIZE
        expected = circ[di, dj].reshape(mod.SIZE**2, mod.SIZE**2)
        torch.testing.assert_close(cov, expected, rtol=0, atol=1e-12)
        # A wrong spectrum (Ωm off by 2 %) is far outside that tolerance.
        lam_off = mod.power_spectrum((t * torch.tensor([1.02, 1.0], dtype=t.dtype))[None])[0]
        assert (torch.fft.ifft2(lam_off + mod.NOISE**2).real - circ).abs().max() > 1e-4
    # float32 maps (the default) follow the same law: lag-(0, 1) autocovariance within 3 %.
    x = mod.simulator(theta[:1].float().repeat(4000, 1), generator=torch.Generator().manual_seed(5))
    assert x.dtype == torch.float32
    lag1 = (x * torch.roll(x, 1, -1)).mean().double()
    lam = mod.power_spectrum(theta[:1])[0] + mod.NOISE**2
    assert abs(lag1 / torch.fft.ifft2(lam).real[0, 1] - 1) < 0.03


def test_cosmology_reference_posterior_covers_truth_and_is_tight():
    mod = simulators.get("cosmology_field")
    s = mod.reference_posterior(mod.x_o, 5000, seed=0)
    z = (s.mean(0) - mod.theta_o) / s.std(0)
    assert z.abs().max() < 4 and (s.std(0) < 0.2 * (mod.prior.high - mod.prior.low)).all()


def test_lotka_volterra_reference_mcmc_converges_and_matches_importance_sampling():
    from simulators._mcmc import _student_t, _student_t_log_prob, split_rhat, tempered_fit

    mod = simulators.get("lotka_volterra")
    chains = mod.reference_chains(mod.x_o, 4000, seed=0)  # (40, 100, 4) states of log θ
    assert split_rhat(chains).max() < 1.01
    u = chains.reshape(-1, 4)
    # Independent estimate: self-normalised importance sampling from a widened t fit (its own
    # seed), exact as the number of draws grows. Both estimators' standard errors are about
    # 0.02 sd for the means and 0.015 for the sd ratios, so the tolerances are ~5 of them.
    x = mod.x_o.double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        loc, tril = tempered_fit(
            lambda t: mod.log_posterior(t, x),
            mod.PRIOR_LOC.double(),
            0.5 * torch.eye(4).double(),
            4096,
            g,
        )
        theta = _student_t(loc, 1.5 * tril, 5, 40_000, g)
        log_w = mod.log_posterior(theta, x) - _student_t_log_prob(theta, loc, 1.5 * tril, 5)
    w = torch.softmax(log_w, 0)
    assert 1 / (w**2).sum() > 10_000
    mean = (w[:, None] * theta).sum(0)
    sd = (w[:, None] * (theta - mean) ** 2).sum(0).sqrt()

    def agrees(s):
        return bool(((s.mean(0) - mean) / sd).abs().max() < 0.1) and bool(
            ((s.std(0) / sd) - 1).abs().max() < 0.07
        )

    assert agrees(u)
    assert not agrees(u + 0.25 * sd)  # a quarter-sd shift is detected
    assert not agrees(mean + (u - mean) * 1.15)  # and so is 15 % too wide
    assert bool(((mod.theta_o.log() - mean) / sd).abs().max() < 4)  # covers the truth


def _fd_error(log_prob, theta, score, h=1e-5):
    err = 0.0
    for j in range(theta.shape[1]):
        e = torch.zeros_like(theta)
        e[:, j] = h
        fd = (log_prob(theta + e) - log_prob(theta - e)) / (2 * h)
        err = max(err, float(((fd - score[:, j]) / (1 + score[:, j].abs())).abs().max()))
    return err


def test_particle_shower_joint_score_matches_finite_differences():
    mod = simulators.get("particle_shower")
    theta = sample_prior(mod.prior, 64, seed=0).double()
    tr = mod.simulator.trace(theta, seed=0)
    assert tr.x.shape == (64, 5) and tr.joint_score.shape == (64, 2)
    assert bool(torch.isfinite(tr.joint_log_prob).all() & torch.isfinite(tr.joint_score).all())
    z = {k: v for k, v in tr.latents.items() if not k.endswith("_mask")}

    def log_prob(t):
        return mod.simulator.log_prob(t, z, tr.x)

    assert _fd_error(log_prob, theta, tr.joint_score) < 1e-5
    wrong = tr.joint_score.clone()
    wrong[:, 0] += 0.05
    assert _fd_error(log_prob, theta, wrong) > 1e-3


def test_particle_shower_latents_are_a_consistent_tree():
    mod = simulators.get("particle_shower")
    tr = mod.simulator.trace(mod.theta_o[None].repeat(500, 1).double(), seed=1)
    detected = tr.latents["detected"].bool() & tr.latents["detected_mask"]
    # The observed multiplicity is the detected count smeared by 0.3.
    assert ((tr.x[:, 1] - detected.sum(-1)).abs() < 6 * 0.3).all()
    splits = sum(
        (tr.latents[f"split_{d}"].bool() & tr.latents[f"split_{d}_mask"]).sum(-1)
        for d in range(mod.MAX_DEPTH)
    )
    leaves = tr.latents["detected_mask"].sum(-1)
    assert torch.equal(leaves, splits + 1)  # a binary tree with s splittings has s + 1 leaves
    assert len(leaves.unique()) > 4  # the number of particles really varies
    lml = mod.simulator.marginal_log_prob(
        mod.theta_o[None].double(), mod.x_o.double()[None], num_particles=2000
    )
    assert bool(torch.isfinite(lml).all())


def test_langevin_path_score_matches_finite_differences():
    mod = simulators.get("langevin")
    theta = sample_prior(mod.prior, 32, seed=0).double()
    tr = mod.simulator.trace(theta, seed=0)
    assert tr.latents["path"].shape == (32, mod.NUM_STEPS + 1)
    torch.testing.assert_close(tr.x, mod.summaries(tr.latents["path"]))

    def log_prob(t):
        return mod.path_log_prob(t, tr.latents["path"])

    assert _fd_error(log_prob, theta, tr.joint_score) < 1e-5
    assert _fd_error(log_prob, theta, tr.joint_score * 1.01) > 1e-3


def test_failures_are_excluded_and_counted():
    lv = simulators.get("lotka_volterra")
    theta = torch.cat(
        [lv.theta_o[None].repeat(40, 1), torch.tensor([[20.0, 0.001, 0.1, 5.0]]).repeat(10, 1)]
    )
    with pytest.warns(SimulationWarning, match="10 of 50"):
        res = simgen.simulate.__globals__["run_simulator"](lv.simulator, theta, seed=0)
    assert res.num_nonfinite == 10 and res.num_raised == 0 and len(res.theta) == 40

    shower = simulators.get("particle_shower")

    def fragile(theta, generator=None):
        if bool((theta[:, 0] > 0.5).any()):
            raise RuntimeError("coupling too large for this toy")
        return shower.simulator(theta, generator=generator)

    with pytest.warns(SimulationWarning, match="raised"):
        res = simgen.simulate(fragile, shower.prior, 200, seed=0, batch_size=50)
    assert res.num_raised > 0 and len(res.theta) + res.num_raised == 200
    assert bool((res.failed_theta[:, 0] > 0.5).all()) and bool((res.theta[:, 0] <= 0.5).all())


def test_reference_mcmc_recovers_a_closed_form_posterior():
    from simulators._mcmc import metropolis, single_thread, sir_init

    mod = simulators.get("gaussian_linear")
    exact = mod.posterior(mod.x_o)
    loc, cov = exact.loc.reshape(-1).double(), exact.covariance_matrix[0].double()
    target = torch.distributions.MultivariateNormal(loc, cov)
    g = torch.Generator().manual_seed(0)
    with single_thread():
        draws = sample_prior(mod.prior, 20_000, seed=0).double()
        init, tril = sir_init(target.log_prob, draws, 1000, g)
        s = metropolis(target.log_prob, init, tril, 10_000, g, burn_in=200, thin=5)
    sd = cov.diagonal().sqrt()
    assert ((s.mean(0) - loc) / sd).abs().max() < 0.1
    assert (s.std(0) / sd - 1).abs().max() < 0.08


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["slcp", "bernoulli_glm", "cosmology_field", "lotka_volterra", "sir"]
)
def test_reference_posteriors_agree_across_seeds(name):
    mod = simulators.get(name)
    a = mod.reference_posterior(mod.x_o, 10_000, seed=0).double()
    b = mod.reference_posterior(mod.x_o, 10_000, seed=1).double()
    if name == "slcp":  # compare the identified (folded) parameters
        a[:, 2:4], b[:, 2:4] = a[:, 2:4].abs(), b[:, 2:4].abs()
    # Quantiles, not moments: SLCP's θ2 has a long tail that makes standard deviations
    # noisy at 10,000 correlated samples. Seed-to-seed spread seen: < 0.13 IQR.
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    qa, qb = a.quantile(q, 0), b.quantile(q, 0)
    iqr = qa[3] - qa[1]
    assert ((qa - qb) / iqr).abs().max() < 0.15
