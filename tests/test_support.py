"""NPE's two ways of keeping a bounded prior's support: transform (logit) and reject."""

from __future__ import annotations

import math

import pytest
import torch

import simgen
from simgen.errors import ConfigError, SupportError
from simgen.posterior import DirectPosterior
from simgen.priors import in_support

PRIOR = simgen.BoxUniform(-torch.ones(1), torch.ones(1))


def _simulate(n: int = 600, seed: int = 0):
    """θ ~ U(-1, 1), x = θ + N(0, 0.5²): the posterior at x = 0.9 leans on the upper bound."""
    g = torch.Generator().manual_seed(seed)
    theta = PRIOR.sample((n,))
    return theta, theta + 0.5 * torch.randn(n, 1, generator=g)


@pytest.fixture(scope="module")
def leaky_posterior():
    """A briefly trained NSF over θ itself: its tails leak well past the box."""
    theta, x = _simulate()
    return simgen.NPE(PRIOR, estimator="nsf", transforms=2, support="reject").fit(
        theta, x, max_epochs=3, progress=False, seed=0
    )


def test_each_family_states_its_support_mode():
    assert simgen.NPE(PRIOR, estimator="nsf").support == "reject"
    assert simgen.NPE(PRIOR, estimator="maf").support == "transform"
    assert simgen.NPE(PRIOR, estimator="flow_matching").support == "reject"
    assert simgen.NPE(PRIOR, estimator="diffusion").support == "reject"
    assert simgen.NPE(PRIOR, estimator="nsf", support="transform").support == "transform"
    with pytest.raises(ConfigError, match="support"):
        simgen.NPE(PRIOR, estimator="nsf", support="clip")


def test_rejected_draws_stay_in_the_support(leaky_posterior):
    x_o = torch.tensor([0.9])
    leak = leaky_posterior._log_acceptance(x_o[None]).exp().item()
    assert leak < 0.9, "the fixture must leak for this test to mean anything"
    samples = leaky_posterior.sample((2000,), x=x_o, seed=0)
    assert samples.shape == (2000, 1) and bool(in_support(PRIOR, samples).all())
    batched = leaky_posterior.sample_batched((300,), x=torch.tensor([[0.9], [-0.5], [0.0]]))
    assert batched.shape == (300, 3, 1) and bool(in_support(PRIOR, batched).all())


def test_rejection_density_is_renormalised_over_the_support(leaky_posterior):
    """∫ q(θ | x) dθ over the box is 1 (midpoint rule on 2,000 cells); without dividing by
    the Monte-Carlo Z(x) it would be Z(x) < 0.9. Tolerance 0.03: Z's standard error at
    10,000 draws is under 0.005, the quadrature error far smaller."""
    x_o = torch.tensor([0.9])
    grid = torch.linspace(-1, 1, 2001)
    mid = ((grid[1:] + grid[:-1]) / 2)[:, None]
    density = leaky_posterior.log_prob(mid, x=x_o).exp()
    integral = float(density.sum() * (grid[1] - grid[0]))
    assert integral == pytest.approx(1.0, abs=0.03)
    assert leaky_posterior.log_prob(torch.tensor([[1.5]]), x=x_o).item() == -math.inf
    batched = leaky_posterior.log_prob_batched(mid[:5, None, :].expand(5, 2, 1), x=[[0.9], [0.0]])
    assert torch.allclose(batched[:, 0], leaky_posterior.log_prob(mid[:5], x=x_o), atol=1e-5)


def test_rejection_gives_up_with_a_clear_error(leaky_posterior):
    """An estimator whose draws all miss the support must not loop forever."""
    far = simgen.BoxUniform(torch.tensor([50.0]), torch.tensor([51.0]))
    posterior = DirectPosterior(leaky_posterior.estimator, far, support="reject")
    with pytest.raises(SupportError, match="support='transform'"):
        posterior.sample((100,), x=torch.tensor([0.0]))


def test_support_mode_survives_save_and_load(leaky_posterior, tmp_path):
    path = tmp_path / "reject.simgen"
    leaky_posterior.save(path)
    loaded = simgen.load(path)
    assert loaded.support == "reject"
    theta = torch.tensor([[0.2], [0.8]])
    x_o = torch.tensor([0.9])
    assert torch.allclose(loaded.log_prob(theta, x=x_o), leaky_posterior.log_prob(theta, x=x_o))


def test_unnormalised_density_skips_the_acceptance(leaky_posterior):
    """``norm_posterior=False`` (what coverage passes) differs by exactly log Z(x) and draws
    nothing for Z."""
    theta, x_o = torch.tensor([[0.2], [0.8]]), torch.tensor([0.7])
    raw = leaky_posterior.log_prob(theta, x=x_o, norm_posterior=False)
    assert x_o.numpy().tobytes() not in leaky_posterior._log_z
    normed = leaky_posterior.log_prob(theta, x=x_o)
    assert x_o.numpy().tobytes() in leaky_posterior._log_z
    log_z = leaky_posterior._log_acceptance(x_o[None])[0]
    assert log_z < 0 and torch.allclose(normed, raw - log_z)
    batched = leaky_posterior.log_prob_batched(theta[:, None], x=[[0.7]], norm_posterior=False)
    assert torch.allclose(batched[:, 0], raw, atol=1e-5)
