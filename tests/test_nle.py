"""NLE on gaussian_linear against the closed-form posterior; the surrogate simulator; errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import simgen
from simgen.diagnostics.c2st import c2st
from simgen.errors import ConfigError, ShapeError
from simgen.inference import NLE
from simgen.mcmc_posterior import MCMCPosterior
from simulators import gaussian_linear


def _train(num_simulations: int, max_epochs: int, seed: int = 0) -> tuple:
    task = gaussian_linear.make(dim=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theta = task.prior.sample((num_simulations,))
        x = task.simulator(theta)
    posterior = NLE(task.prior, transforms=3).fit(
        theta, x, max_epochs=max_epochs, progress=False, seed=seed
    )
    x_o = task.simulator(torch.tensor([[0.5, -0.5]]), generator=torch.Generator().manual_seed(1))
    return task, posterior, x_o[0]


@pytest.fixture(scope="module")
def trained() -> tuple:
    return _train(1000, 40)


def test_posterior_close_to_closed_form(trained: tuple) -> None:
    task, posterior, x_o = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample((1000,), x=x_o, seed=0)
    reference = task.posterior(x_o).sample((1000,)).reshape(-1, 2)
    assert samples.shape == (1000, 2)
    # 1,000 simulations, 40 epochs: a wrong posterior (e.g. the prior, or a shifted one) scores
    # > 0.9 here; tolerance 0.1 leaves room for the short training (the slow test asks 0.55).
    assert c2st(samples, reference) < 0.6
    info = posterior.mcmc_info
    assert info["chains"] == 40  # 1000 draws // 25 draws per chain
    assert info["rhat"] < 1.2
    assert 0.1 < info["acceptance_rate"] < 0.7


def test_gradient_samplers(trained: tuple) -> None:
    task, posterior, x_o = trained
    reference = task.posterior(x_o).sample((500,)).reshape(-1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hmc = posterior.sample(
            (500,), x=x_o, method="hmc", num_chains=25, warmup=40, seed=0,
            sampler_options={"num_steps": 4},
        )  # fmt: skip
    info = posterior.mcmc_info
    assert info["method"] == "hmc" and info["thin"] == 1 and "divergences" in info
    # Same tolerance as the random-walk test above (a wrong posterior scores > 0.9).
    assert c2st(hmc, reference) < 0.6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = posterior.sample((8,), x=x_o, method="nuts", warmup=10, seed=0)
    assert nuts.shape == (8, 2) and posterior.mcmc_info["chains"] == 4
    assert bool(task.prior.support.check(nuts).all())


def test_log_prob_is_unnormalised_posterior(trained: tuple) -> None:
    task, posterior, x_o = trained
    exact = task.posterior(x_o)
    theta = exact.sample((200,)).reshape(-1, 2)
    ours, truth = posterior.log_prob(theta, x=x_o), exact.log_prob(theta).reshape(-1)
    # Equal up to a constant in θ: differences from the mean agree.
    err = (ours - ours.mean()) - (truth - truth.mean())
    assert float(err.abs().median()) < 0.3
    assert torch.corrcoef(torch.stack([ours, truth]))[0, 1] > 0.95
    assert torch.isfinite(posterior.map(x=x_o, num_init=200, num_iter=50)).all()


def test_surrogate_simulator(trained: tuple) -> None:
    task, posterior, _ = trained
    theta = torch.tensor([[0.5, -0.5]]).expand(1000, 2)
    fast = posterior.likelihood(theta, generator=torch.Generator().manual_seed(0))
    real = task.simulator(theta, generator=torch.Generator().manual_seed(0))
    assert fast.shape == real.shape
    assert c2st(fast, real) < 0.6
    with pytest.raises(ShapeError):
        posterior.likelihood(torch.zeros(3))


def test_batched_save_load_and_arviz(trained: tuple, tmp_path) -> None:
    task, posterior, x_o = trained
    xs = task.simulator(task.prior.sample((3,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = posterior.sample_batched((40,), x=xs, num_chains=10, warmup=20, seed=0)
        assert batched.shape == (40, 3, 2)
        idata = posterior.to_arviz(x=x_o, num_samples=100)
    assert (
        "sample_stats" in idata.groups() and idata.posterior["theta_0"].shape[0] == 4
    )  # 100 draws: 4 chains of 25
    posterior.save(tmp_path / "nle.pt")
    loaded = simgen.load(tmp_path / "nle.pt")
    assert isinstance(loaded, MCMCPosterior) and loaded.method == "nle"
    theta = task.prior.sample((10,))
    torch.testing.assert_close(loaded.log_prob(theta, x=x_o), posterior.log_prob(theta, x=x_o))


def test_errors(trained: tuple) -> None:
    task, posterior, x_o = trained
    with pytest.raises(ShapeError, match="shape"):
        posterior.sample((10,), x=torch.zeros(3))
    with pytest.raises(ConfigError):
        posterior.sample((10,), x=x_o, num_chains=1)
    with pytest.raises(ConfigError):
        posterior.sample((10,), x=x_o, method="gibbs")
    with pytest.raises(ConfigError, match="unknown option"):
        posterior.sample((10,), x=x_o, chains=4)
    theta = task.prior.sample((20,))
    with pytest.raises(ShapeError, match="NPE with an embedding net"):
        NLE(task.prior).fit(theta, torch.randn(20, 2, 3), max_epochs=1, progress=False)


def test_maf_likelihood_broadcasts_over_chains() -> None:
    task = gaussian_linear.make(dim=2)
    theta = task.prior.sample((200,))
    posterior = NLE(task.prior, estimator="maf", transforms=1).fit(
        theta, task.simulator(theta), max_epochs=2, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample((20,), x=task.simulator(theta[:1])[0], num_chains=4, warmup=5)
    assert samples.shape == (20, 2) and torch.isfinite(samples).all()


def test_default_maf_has_seven_transforms() -> None:
    prior = gaussian_linear.make(dim=2).prior
    assert NLE(prior).estimator_options == {"transforms": 7}
    assert NLE(prior, transforms=3, activation="tanh").estimator_options == {
        "transforms": 3,
        "activation": "tanh",
    }
    assert NLE(prior, estimator="nsf").estimator_options == {}


@pytest.mark.slow
def test_posterior_c2st_thorough() -> None:
    task, posterior, x_o = _train(5000, 200)
    samples = posterior.sample((2000,), x=x_o, seed=0, num_chains=100, warmup=300)
    reference = task.posterior(x_o).sample((2000,)).reshape(-1, 2)
    assert c2st(samples, reference) < 0.55


def test_batched_draws_pick_long_enough_chains(trained: tuple) -> None:
    """SBC-sized requests (100 draws x 40 observations) run 4 chains of 25, not 50 of 2, and
    do not warn on a well-fitted posterior; an explicit num_chains is honoured."""
    task, posterior, _ = trained
    xs = task.simulator(task.prior.sample((40,)), generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", simgen.errors.ConvergenceWarning)
        draws = posterior.sample_batched((100,), x=xs, seed=0)
    assert draws.shape == (100, 40, 2)
    assert posterior.last_mcmc.samples.shape[:2] == (4, 25)
    assert posterior.last_mcmc.extra["unconverged_observations"] <= 2  # of 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior.sample_batched((100,), x=xs[:2], seed=0, num_chains=10)
    assert posterior.last_mcmc.samples.shape[:2] == (10, 10)


def test_batched_warning_counts_unconverged_observations() -> None:
    """Chains stuck at their starting points (zero warm-up, 1-D steps far too small) warn, and
    the message says for how many observations."""
    from simgen.mcmc import run_mcmc

    init = torch.linspace(-3, 3, 8)[:, None, None].expand(8, 20, 1).clone()
    with pytest.warns(simgen.errors.ConvergenceWarning, match=r"for 20 of 20 observations"):
        run_mcmc(
            lambda u: -0.5 * u.square().sum(-1),
            init,
            30,
            warmup=0,
            method="rwm",
            seed=0,
            sampler_options={"scale": 1e-3},
        )
