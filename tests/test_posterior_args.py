"""Argument checks of the posterior interface: one policy on every posterior."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import simgen
from simgen.errors import ConfigError, ShapeError, SimgenError, SimulationError, SupportError
from simgen.posterior import SBI_PASSED_OPTIONS, Posterior, check_options, sample_shape_of


@pytest.fixture(scope="module")
def task():
    prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((300,))
    x = theta + 0.1 * torch.randn_like(theta)
    return prior, theta, x


@pytest.fixture(scope="module")
def posterior(task):
    prior, theta, x = task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simgen.NPE(prior, estimator="maf", transforms=1).fit(
            theta, x, max_epochs=2, progress=False, seed=0
        )


@pytest.fixture(scope="module")
def mcmc_posterior(task):
    prior, theta, x = task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simgen.NLE(prior, estimator="maf", transforms=1).fit(
            theta, x, max_epochs=2, progress=False, seed=0
        )


def test_sample_shape_of_accepts_counts():
    assert sample_shape_of(5) == (5,)
    assert sample_shape_of(np.int64(3)) == (3,)
    assert sample_shape_of([2, 3]) == (2, 3)
    assert sample_shape_of(torch.Size([4])) == (4,)
    assert sample_shape_of(()) == ()
    assert sample_shape_of((0,)) == (0,)


@pytest.mark.parametrize("bad", [(-1,), -1, True, (True,), (2.5,), "10", (3, -2), None])
def test_sample_shape_of_rejects(bad):
    with pytest.raises(ShapeError, match="sample_shape"):
        sample_shape_of(bad)


@pytest.mark.parametrize("bad", [(-1,), (True,), (1.5,)])
def test_sample_rejects_a_bad_shape_on_every_posterior(posterior, mcmc_posterior, bad):
    """A negative size was a torch RuntimeError; now a ShapeError on NPE's and NLE's."""
    for post in (posterior, mcmc_posterior):
        with pytest.raises(ShapeError, match="sample_shape"):
            post.sample(bad, x=torch.zeros(2))
        with pytest.raises(ShapeError, match="sample_shape"):
            post.sample_batched(bad, x=torch.zeros(3, 2))
    with pytest.raises(ShapeError, match="sample_shape"):
        posterior.sample(sample_shape=bad, x=torch.zeros(2))


def test_sample_shape_forms(posterior):
    x = torch.zeros(2)
    assert posterior.sample(4, x=x).shape == (4, 2)
    assert posterior.sample([2, 3], x=x).shape == (2, 3, 2)
    assert posterior.sample(torch.Size([5]), x=x).shape == (5, 2)
    assert posterior.sample((0,), x=x).shape == (0, 2)
    assert posterior.sample_batched(3, x=torch.zeros(4, 2)).shape == (3, 4, 2)


def test_subclasses_get_the_shape_check(posterior):
    """A posterior written outside simgen inherits the check without calling it."""

    class Wrapped(Posterior):
        def sample(self, sample_shape=(), x=None, **options):
            check_options(options, (), "Wrapped.sample")
            return posterior.sample(sample_shape, x=x)

        def log_prob(self, theta, x=None, **options):
            return posterior.log_prob(theta, x=x)

    wrapped = Wrapped(posterior.prior, (2,), 2)
    assert wrapped.sample((3,), x=torch.zeros(2)).shape == (3, 2)
    with pytest.raises(ShapeError, match="sample_shape"):
        wrapped.sample((-1,), x=torch.zeros(2))
    with pytest.raises(ShapeError, match="sample_shape"):
        wrapped.sample_batched((-1,), x=torch.zeros(3, 2))


@pytest.mark.parametrize("method", ["sample", "sample_batched", "log_prob", "log_prob_batched"])
def test_unknown_options_are_rejected(posterior, method):
    """``**_`` used to swallow any keyword (a typo such as ``sede=0`` did nothing)."""
    x = torch.zeros(2) if method in ("sample", "log_prob") else torch.zeros(3, 2)
    first = {
        "sample": (5,),
        "sample_batched": (5,),
        "log_prob": torch.zeros(4, 2),
        "log_prob_batched": torch.zeros(4, 3, 2),
    }[method]
    with pytest.raises(ConfigError, match=r"DirectPosterior\.\w+ got unknown option.*'sede'"):
        getattr(posterior, method)(first, x=x, sede=0)
    for name in SBI_PASSED_OPTIONS:  # sbi's keywords are accepted
        getattr(posterior, method)(first, x=x, **{name: False})


def test_check_options_message_lists_the_valid_ones():
    assert check_options({"a": 1, "show_progress_bars": True}, ("a", "b"), "f") == {"a": 1}
    assert check_options({"show_progress_bars": True}, ("show_progress_bars",), "f") == {
        "show_progress_bars": True
    }
    with pytest.raises(
        ConfigError, match=r"f got unknown option\(s\) \['c'\]; its options are: a, b"
    ):
        check_options({"c": 1}, ("a", "b"), "f")


def test_seed_is_checked(posterior):
    with pytest.raises(ConfigError, match="seed"):
        posterior.sample((2,), x=torch.zeros(2), seed="zero")
    a = posterior.sample((3,), x=torch.zeros(2), seed=np.int64(7))
    torch.testing.assert_close(a, posterior.sample((3,), x=torch.zeros(2), seed=7))


def test_x_is_checked(posterior, mcmc_posterior):
    for post in (posterior, mcmc_posterior):
        for bad in (torch.tensor([0.0, float("nan")]), torch.tensor([float("inf"), 0.0])):
            with pytest.raises(SimulationError, match="NaN or inf"):
                post.sample((2,), x=bad)
            with pytest.raises(SimulationError, match="NaN or inf"):
                post.log_prob(torch.zeros(1, 2), x=bad)
            with pytest.raises(SimulationError, match="NaN or inf"):
                post.sample_batched((2,), x=torch.stack([torch.zeros(2), bad]))
        with pytest.raises(ShapeError, match="x has shape"):
            post.sample((2,), x=torch.zeros(3))
        with pytest.raises(ShapeError, match="must be a tensor"):
            post.sample((2,), x="x_o")


def test_theta_is_checked(posterior, mcmc_posterior):
    x = torch.zeros(2)
    for post in (posterior, mcmc_posterior):
        with pytest.raises(ShapeError, match="last dimension"):
            post.log_prob(torch.zeros(4, 3), x=x)
        with pytest.raises(ShapeError, match="last dimension"):
            post.log_prob(torch.tensor(0.0), x=x)
        with pytest.raises(ShapeError, match="real numbers"):
            post.log_prob(torch.ones(4, 2, dtype=torch.bool), x=x)
        with pytest.raises(SupportError, match="NaN"):
            post.log_prob(torch.tensor([[0.0, float("nan")]]), x=x)
        with pytest.raises(SupportError, match="NaN or inf"):
            post.log_prob(torch.tensor([[float("inf"), 0.0]]), x=x)
        with pytest.raises(SupportError, match="NaN"):
            post.log_prob_batched(torch.full((1, 1, 2), float("nan")), x=x[None])
    with pytest.raises(ShapeError, match="log_prob_batched needs theta"):
        posterior.log_prob_batched(torch.zeros(4, 2, 2), x=torch.zeros(3, 2))
    assert posterior.log_prob_batched(torch.zeros(4, 1, 2), x=torch.zeros(3, 2)).shape == (4, 3)


@pytest.mark.parametrize(
    "options", [{"num_init": 0}, {"num_init": -5}, {"num_iter": -1}, {"learning_rate": 0.0}]
)
def test_map_options_are_checked(posterior, options):
    with pytest.raises(ConfigError, match="map: "):
        posterior.map(x=torch.zeros(2), **options)


def test_every_error_is_a_simgen_error(posterior):
    with pytest.raises(SimgenError):
        posterior.sample((-1,), x=torch.zeros(2))


def test_sbi_diagnostics_run_on_a_simgen_posterior(posterior, task):
    """sbi's run_sbc and run_tarp pass ``show_progress_bars``: accepted, not an error."""
    sbi_diagnostics = pytest.importorskip("sbi.diagnostics")
    prior, _, _ = task
    thetas = prior.sample((20,))
    xs = thetas + 0.1 * torch.randn_like(thetas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sbi warns that 20 SBC rounds are few
        for batched in (True, False):
            ranks, dap = sbi_diagnostics.run_sbc(
                thetas,
                xs,
                posterior,
                num_posterior_samples=30,
                show_progress_bar=False,
                use_batched_sampling=batched,
            )
            assert ranks.shape == (20, 2) and dap.shape == (20, 2)
            assert bool(((ranks >= 0) & (ranks <= 30)).all())
        ecp, alpha = sbi_diagnostics.run_tarp(
            thetas, xs, posterior, num_posterior_samples=30, show_progress_bar=False
        )
    assert ecp.shape == alpha.shape and bool(((ecp >= 0) & (ecp <= 1)).all())
