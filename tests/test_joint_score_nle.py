"""NLE with the simulator's joint score (SCANDAL): the loss, the front door, and its effect."""

import pytest
import torch

import simgen
from simgen.errors import ConfigError, ShapeError
from simgen.estimators import build_estimator
from simgen.losses import JointScoreNLELoss, NLELoss
from simulators import _latent_chain as latent_chain

PRIOR = latent_chain.prior


def test_loss_uses_the_estimators_theta_gradient():
    """The score term is built from d/dθ log q(x|θ) (checked by finite differences), and
    with weight 0 the loss is plain NLE."""
    torch.manual_seed(0)
    est = build_estimator("maf", 1, (2,), transforms=2)
    theta, x = torch.randn(64, 2), torch.randn(64, 1)
    est.fit_standardization(x, theta)
    est.eval()
    with torch.no_grad():
        base = est(theta).log_prob(x)
        fd = torch.stack(
            [
                (est(theta + h).log_prob(x) - est(theta - h).log_prob(x)) / 2e-3
                for h in 1e-3 * torch.eye(2)[:, None, :]
            ],
            -1,
        )
    scale = torch.tensor([0.5, 2.0])
    loss = JointScoreNLELoss(est, weight=0.7, scale=scale).eval()
    # With t = fd, the score term nearly vanishes; with t = fd + scale it adds 0.7 * 2 a row.
    nll = float(-base.mean())
    assert abs(float(loss(theta, x, joint_score=fd).detach()) - nll) < 1e-3
    assert abs(float(loss(theta, x, joint_score=fd + scale).detach()) - (nll + 1.4)) < 1e-2
    plain = JointScoreNLELoss(est, weight=0.0, scale=scale).eval()
    assert torch.allclose(plain(theta, x, joint_score=fd + 5), NLELoss(est)(theta, x))


def test_front_door_checks_the_joint_score():
    data = simgen.simulate(latent_chain.simulator, PRIOR, 60, seed=0, joint=True)
    x = data.x.reshape(-1, 1)
    with pytest.raises(ShapeError, match="must match theta"):
        simgen.NLE(PRIOR).fit(data.theta, x, joint_score=data.joint_score[:, :1], max_epochs=1)
    bad = data.joint_score.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        simgen.NLE(PRIOR).fit(data.theta, x, joint_score=bad, max_epochs=1)
    with pytest.raises(ConfigError, match="flow estimator"):
        simgen.NLE(PRIOR, estimator="flow_matching").fit(
            data.theta, x, joint_score=data.joint_score, max_epochs=1
        )
    with pytest.raises(ConfigError, match="joint_score_weight"):
        simgen.NLE(PRIOR, joint_score_weight=-1.0)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
def test_joint_score_brings_the_likelihood_closer_and_a_wrong_score_does_not():
    """100 simulations of a latent chain with a closed-form likelihood, seeds 0-4.

    Held-out KL from the true likelihood (``benchmarks/bench_joint_score.py``): the joint
    score must cut the plain NLE's mean by at least 25% (here 0.304 → 0.162; over 10 seeds
    in ``results_joint_score.md`` 0.296 → 0.178). Control: the same scores with their sign
    flipped (wrong for every row) must do worse than no score at all (here 0.419), so the
    test can fail.
    """
    sim = latent_chain.simulator
    test = simgen.simulate(sim, PRIOR, 2000, seed=10_000)
    gaps = {"plain": [], "joint": [], "flipped": []}
    for seed in range(5):
        data = simgen.simulate(sim, PRIOR, 100, seed=seed, joint=True)
        x = data.x.reshape(-1, 1)
        for label, score in (
            ("plain", None),
            ("joint", data.joint_score),
            ("flipped", -data.joint_score),
        ):
            nle = simgen.NLE(PRIOR)
            nle.fit(data.theta, x, joint_score=score, progress=False, seed=seed)
            gaps[label].append(latent_chain.held_out_kl(nle, test))
    mean = {k: sum(v) / len(v) for k, v in gaps.items()}
    assert mean["joint"] < 0.75 * mean["plain"], mean
    assert mean["flipped"] > mean["plain"], mean


def test_npe_target_score_in_transformed_coordinates():
    """Under support="transform" on a box prior NPE models u = T^-1(θ); a posterior with
    θ-score g has u-score J^T g + d/du log|det J| (checked by finite differences)."""
    prior = simgen.BoxUniform(-torch.ones(2), 2 * torch.ones(2))
    npe = simgen.NPE(prior, support="transform")
    torch.manual_seed(0)
    theta = prior.sample((16,))
    g = torch.randn(16, 2)
    transform = simgen.priors.support_transform(prior)
    u = transform.inv(theta)
    score = npe._target_score(g, theta, u)

    def log_density_u(uu):  # log p(T(u)) + log|det J| with log p(θ) = g·θ near θ
        th = transform(uu)
        return (g * th).sum(-1) + transform.log_abs_det_jacobian(uu, th).reshape(16, -1).sum(-1)

    h = 1e-3
    fd = torch.stack(
        [
            (log_density_u(u + h * e) - log_density_u(u - h * e)) / (2 * h)
            for e in torch.eye(2)[:, None, :].double()
        ],
        -1,
    )
    torch.testing.assert_close(score.double(), fd, rtol=1e-3, atol=1e-3)
    # A Gaussian prior adds its own score; under support="reject" no transform applies.
    gauss = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    got = simgen.NPE(gauss)._target_score(g, theta, theta)
    torch.testing.assert_close(got, g - theta)


@pytest.mark.filterwarnings("ignore::simgen.errors.ConvergenceWarning")
def test_npe_joint_score_brings_the_posterior_closer():
    """300 simulations of the latent chain, seeds 0-1: posterior KL on a θ-grid against the
    closed form, averaged over 10 observations, must drop by at least 25% with the joint
    score (here 0.176 -> 0.046) and must rise with the sign-flipped score (0.468)."""
    kl = {"plain": [], "joint": [], "flipped": []}
    for seed in range(2):
        data = simgen.simulate(latent_chain.simulator, PRIOR, 300, seed=seed, joint=True)
        x = data.x.reshape(-1, 1)
        for label, score in (
            ("plain", None),
            ("joint", data.joint_score),
            ("flipped", -data.joint_score),
        ):
            post = simgen.NPE(PRIOR).fit(
                data.theta, x, joint_score=score, progress=False, seed=seed
            )
            kl[label].append(latent_chain.posterior_kl(post, num_obs=10, grid_size=61))
    mean = {k: sum(v) / len(v) for k, v in kl.items()}
    assert mean["joint"] < 0.75 * mean["plain"], mean
    assert mean["flipped"] > mean["plain"], mean
