"""NPE end to end: accuracy against a closed form, support, save/load, determinism, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import simgen
from simgen.diagnostics.c2st import c2st
from simgen.errors import (
    ConfigError,
    ModelFileError,
    ShapeError,
    SimulationError,
    SupportError,
    UnknownEstimatorError,
)
from simulators import gaussian_linear, two_moons

# C2ST tolerance for 3,000 training simulations of the 2-D Gaussian linear task; sbi's own
# tests accept 0.5 ± 0.1 for NPE at this budget.
C2ST_TOLERANCE = 0.1


def test_npe_matches_closed_form_posterior(linear2, linear2_posterior):
    x_o = linear2.x_o
    samples = linear2_posterior.sample((2000,), x=x_o, seed=1)
    reference = linear2.reference_posterior(x_o, 2000, seed=2)
    assert samples.shape == (2000, 2)
    assert abs(c2st(samples, reference) - 0.5) < C2ST_TOLERANCE


def test_c2st_check_rejects_a_wrong_posterior(linear2, linear2_posterior):
    """The accuracy test above would fail on a posterior shifted by one posterior std."""
    x_o = linear2.x_o
    std = float(linear2.posterior(x_o).stddev[0, 0])
    wrong = linear2_posterior.sample((2000,), x=x_o, seed=1) + std
    reference = linear2.reference_posterior(x_o, 2000, seed=2)
    assert abs(c2st(wrong, reference) - 0.5) > C2ST_TOLERANCE


def test_log_prob_matches_closed_form_density(linear2, linear2_posterior):
    x_o = linear2.x_o
    theta = linear2.reference_posterior(x_o, 500, seed=3)
    exact = linear2.posterior(x_o).log_prob(theta)
    learned = linear2_posterior.log_prob(theta, x=x_o).detach()
    # Mean absolute log-density error over typical posterior draws, in nats.
    assert float((learned - exact).abs().mean()) < 0.25


def test_map_is_near_the_exact_mode(linear2, linear2_posterior):
    x_o = linear2.x_o
    mode = linear2.posterior(x_o).loc[0]
    std = linear2.posterior(x_o).stddev[0]
    estimate = linear2_posterior.map(x=x_o, num_iter=100)
    assert torch.all((estimate - mode).abs() < 0.3 * std)


def test_sample_batched_shapes_and_agrees_with_sample(linear2, linear2_posterior):
    xs = linear2.simulator(linear2.prior.sample((4,)))
    batched = linear2_posterior.sample_batched((1000,), x=xs, seed=0)
    assert batched.shape == (1000, 4, 2)
    means = batched.mean(0)
    for b in range(4):
        single = linear2_posterior.sample((1000,), x=xs[b], seed=5).mean(0)
        assert torch.allclose(means[b], single, atol=0.05)
    logp = linear2_posterior.log_prob_batched(batched[:10], x=xs)
    assert logp.shape == (10, 4)


def test_default_x_and_numpy_inputs(linear2, linear2_posterior):
    linear2_posterior.set_default_x(linear2.x_o.numpy())
    assert linear2_posterior.sample((3,)).shape == (3, 2)
    assert linear2_posterior.log_prob(np.zeros((5, 2), dtype=np.float32)).shape == (5,)


def test_save_load_round_trip(tmp_path, linear2, linear2_posterior):
    path = tmp_path / "model.simgen"
    linear2_posterior.save(path)
    loaded = simgen.load(path)
    theta = linear2.reference_posterior(linear2.x_o, 100)
    torch.testing.assert_close(
        loaded.log_prob(theta, x=linear2.x_o), linear2_posterior.log_prob(theta, x=linear2.x_o)
    )
    torch.testing.assert_close(
        loaded.sample((50,), x=linear2.x_o, seed=3),
        linear2_posterior.sample((50,), x=linear2.x_o, seed=3),
    )


@pytest.mark.parametrize("name", ["nsf", "maf", "realnvp"])
def test_bounded_prior_samples_stay_in_support(name):
    theta, x = simgen.simulate(two_moons.simulator, two_moons.prior, 500, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(two_moons.prior, estimator=name, transforms=2).fit(
            theta, x, max_epochs=3, progress=False
        )
    samples = posterior.sample((5000,), x=two_moons.x_o)
    assert bool(((samples > -1) & (samples < 1)).all())
    assert torch.isfinite(posterior.log_prob(samples, x=two_moons.x_o)).all()
    outside = torch.tensor([[1.5, 0.0], [0.0, -1.01]])
    assert torch.isneginf(posterior.log_prob(outside, x=two_moons.x_o)).all()


def _tiny_fit(seed: int) -> simgen.DirectPosterior:
    theta, x = simgen.simulate(two_moons.simulator, two_moons.prior, 300, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simgen.NPE(two_moons.prior, transforms=2).fit(
            theta, x, max_epochs=2, progress=False, seed=seed
        )


def test_same_seed_same_posterior():
    a, b = _tiny_fit(7), _tiny_fit(7)
    theta = torch.zeros(3, 2)
    torch.testing.assert_close(
        a.log_prob(theta, x=two_moons.x_o), b.log_prob(theta, x=two_moons.x_o)
    )
    assert not torch.equal(
        a.log_prob(theta, x=two_moons.x_o), _tiny_fit(8).log_prob(theta, x=two_moons.x_o)
    )


def test_simulate_is_seeded():
    a = simgen.simulate(two_moons.simulator, two_moons.prior, 100, seed=3)
    b = simgen.simulate(two_moons.simulator, two_moons.prior, 100, seed=3)
    c = simgen.simulate(two_moons.simulator, two_moons.prior, 100, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.theta, b.theta)
    assert not torch.equal(a.x, c.x)


def test_simulate_excludes_and_counts_failures():
    def flaky(theta: torch.Tensor) -> torch.Tensor:
        if (theta[:, 0] > 0.8).any():
            raise RuntimeError("solver diverged")
        x = theta.clone()
        x[theta[:, 1] > 0.8] = float("nan")
        return x

    with pytest.warns(simgen.errors.SimulationWarning, match="failed and were excluded"):
        result = simgen.simulate(flaky, two_moons.prior, 1000, seed=0, batch_size=64)
    theta, x = result
    expected_raised = int((result.failed_theta[:, 0] > 0.8).sum())
    assert result.num_raised == expected_raised > 0
    assert result.num_nonfinite > 0
    assert len(theta) + len(result.failed_theta) == 1000
    assert torch.isfinite(x).all() and (theta[:, 0] <= 0.8).all()
    assert "solver diverged" in result.errors[0]


def test_simulate_all_failing_raises():
    def broken(theta: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("nope")

    with pytest.raises(SimulationError, match="All 10 simulations raised"):
        simgen.simulate(broken, two_moons.prior, 10, seed=0)


# ---------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def data():
    return simgen.simulate(two_moons.simulator, two_moons.prior, 200, seed=0)


def test_error_wrong_theta_shape(data):
    theta, x = data
    with pytest.raises(ShapeError, match=r"must be \(N, 2\)"):
        simgen.NPE(two_moons.prior).fit(theta[:, :1], x)


def test_error_count_mismatch(data):
    theta, x = data
    with pytest.raises(ShapeError, match="theta has 200 rows but x has 199"):
        simgen.NPE(two_moons.prior).fit(theta, x[:-1])


def test_error_nan_in_x(data):
    theta, x = data
    x = x.clone()
    x[3, 0] = float("nan")
    with pytest.raises(SimulationError, match="1 of 200 rows of x contain NaN"):
        simgen.NPE(two_moons.prior).fit(theta, x)


def test_error_theta_outside_prior(data):
    theta, x = data
    theta = theta.clone()
    theta[0] = 3.0
    with pytest.raises(SupportError, match="outside the prior's support"):
        simgen.NPE(two_moons.prior).fit(theta, x)


def test_error_unknown_estimator():
    with pytest.raises(UnknownEstimatorError, match="choose one of"):
        simgen.NPE(two_moons.prior, estimator="nfs")


def test_error_bad_config(data):
    theta, x = data
    with pytest.raises(ConfigError, match="Unknown training option"):
        simgen.NPE(two_moons.prior).fit(theta, x, batchsize=10)
    with pytest.raises(ConfigError, match="learning_rate"):
        simgen.TrainConfig(learning_rate=-1.0)
    with pytest.raises(ConfigError, match="validation_fraction"):
        simgen.TrainConfig(validation_fraction=0.9)


def test_error_wrong_observation_shape(linear2_posterior):
    with pytest.raises(ShapeError, match="trained on x of shape"):
        linear2_posterior.sample((2,), x=torch.zeros(3))


def test_error_foreign_and_corrupt_files(tmp_path):
    text = tmp_path / "notes.simgen"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="not a simgen model file"):
        simgen.load(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a simgen model"):
        simgen.load(foreign)
    with pytest.raises(ModelFileError, match="No model file"):
        simgen.load(tmp_path / "missing.simgen")


def test_model_file_refuses_pickled_code(tmp_path):
    """A file carrying an arbitrary pickled object is refused, never executed."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.simgen"
    torch.save({"format": "simgen-model", "version": 1, "spec": "{}", "x": Evil()}, path)
    with pytest.raises(ModelFileError):
        simgen.load(path)


def test_sbi_prior_accepted_unchanged():
    from sbi.utils import BoxUniform as SbiBoxUniform

    prior = SbiBoxUniform(low=-torch.ones(2), high=torch.ones(2))
    theta, x = simgen.simulate(two_moons.simulator, prior, 300, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(prior, transforms=2).fit(theta, x, max_epochs=2, progress=False)
    samples = posterior.sample((2000,), x=two_moons.x_o)
    assert bool(((samples > -1) & (samples < 1)).all())


def test_embedding_net_is_used_and_saved(tmp_path):
    """A built-in embedding net trains with the flow and is rebuilt from the model file."""
    from simgen.nets import MLP

    theta, x = simgen.simulate(two_moons.simulator, two_moons.prior, 300, seed=0)
    net = MLP(in_features=2, out_features=8, hidden_features=(16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(two_moons.prior, embedding_net=net, transforms=2).fit(
            theta, x, max_epochs=2, progress=False
        )
    assert posterior.estimator.embedding is net
    assert posterior.estimator.context_features == 8
    path = tmp_path / "embedded.simgen"
    posterior.save(path)
    loaded = simgen.load(path)
    probe = torch.zeros(4, 2)
    torch.testing.assert_close(
        loaded.log_prob(probe, x=two_moons.x_o), posterior.log_prob(probe, x=two_moons.x_o)
    )


def test_custom_embedding_net_must_be_passed_again(tmp_path):
    theta, x = simgen.simulate(two_moons.simulator, two_moons.prior, 300, seed=0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(two_moons.prior, embedding_net=net, transforms=2).fit(
            theta, x, max_epochs=1, progress=False
        )
    path = tmp_path / "custom.simgen"
    posterior.save(path)
    with pytest.raises(UnknownEstimatorError, match="custom embedding net"):
        simgen.load(path)
    loaded = simgen.load(
        path, embedding_net=torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh())
    )
    probe = torch.zeros(3, 2)
    torch.testing.assert_close(
        loaded.log_prob(probe, x=two_moons.x_o), posterior.log_prob(probe, x=two_moons.x_o)
    )


def test_cnn_embeddings_on_maps_and_series(tmp_path):
    """CNN2d on 32x32 cosmology maps trains, saves and loads; CNN1d handles (N, L) series."""
    from simgen.nets import CNN1d, CNN2d
    from simulators import cosmology_field

    assert CNN1d(64, out_features=5)(torch.randn(3, 64)).shape == (3, 5)
    assert CNN2d(32, 32, channels=2, out_features=6)(torch.randn(3, 2, 32, 32)).shape == (3, 6)
    theta, x = simgen.simulate(cosmology_field.simulator, cosmology_field.prior, 200, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = simgen.NPE(
            cosmology_field.prior, embedding_net=CNN2d(32, 32, out_features=8), transforms=2
        ).fit(theta, x, max_epochs=1, progress=False)
    path = tmp_path / "cnn.simgen"
    posterior.save(path)
    loaded = simgen.load(path)
    torch.testing.assert_close(
        loaded.log_prob(theta[:3], x=cosmology_field.x_o),
        posterior.log_prob(theta[:3], x=cosmology_field.x_o),
    )


@pytest.mark.parametrize("estimator", ["nsf", "flow_matching"])
def test_log_prob_requires_grad_only_when_theta_does(estimator):
    """Flows and ODE families agree: plain θ gives a plain tensor; θ with grad is
    differentiable (as MAP and HMC need)."""
    from simulators import two_moons

    torch.manual_seed(0)
    theta = two_moons.prior.sample((200,))
    x = two_moons.simulator(theta)
    post = simgen.NPE(two_moons.prior, estimator=estimator).fit(
        theta, x, max_epochs=2, progress=False
    )
    t = theta[:5].clone()
    assert not post.log_prob(t, x=two_moons.x_o).requires_grad
    t.requires_grad_(True)
    post.log_prob(t, x=two_moons.x_o).sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()


def test_family_training_defaults_yield_to_the_caller():
    """A family's measured training defaults apply only where the caller is silent."""
    from simgen.estimators.flow_matching import FlowMatching
    from simgen.inference.base import Method
    from simgen.training import TrainConfig

    defaults = FlowMatching.train_defaults
    assert defaults["learning_rate"] == 3e-3
    assert Method._config(None, {}, FlowMatching).learning_rate == 3e-3
    assert Method._config(None, {}, FlowMatching).patience == defaults["patience"]
    assert Method._config(None, {"learning_rate": 1e-4}, FlowMatching).learning_rate == 1e-4
    assert Method._config(TrainConfig(), {}, FlowMatching).learning_rate == 1e-3
    assert Method._config(TrainConfig(), {}, FlowMatching).patience == TrainConfig.patience


def test_family_min_epochs_is_capped_by_the_callers_max_epochs():
    """Diffusion's default ``min_epochs`` (100) must not make ``max_epochs=5`` invalid."""
    from simgen.estimators.diffusion import Diffusion
    from simgen.inference.base import Method

    defaults = Diffusion.train_defaults
    assert defaults["min_epochs"] > 5
    assert Method._config(None, {}, Diffusion).ema == defaults["ema"] == 0.99
    assert Method._config(None, {"ema": 0.0}, Diffusion).ema == 0.0
    assert Method._config(None, {}, Diffusion).min_epochs == defaults["min_epochs"]
    capped = Method._config(None, {"max_epochs": 5}, Diffusion)
    assert (capped.min_epochs, capped.max_epochs) == (5, 5)
    assert Method._config(None, {"max_epochs": 5, "min_epochs": 2}, Diffusion).min_epochs == 2
    with pytest.raises(ConfigError, match="min_epochs"):
        Method._config(None, {"max_epochs": 5, "min_epochs": 50}, Diffusion)


def test_every_method_reads_the_family_training_defaults(monkeypatch):
    """NPE, NLE and NRE all take their measured defaults from the trained class's
    ``train_defaults``: a learning rate set there is the one each method trains with."""
    from simgen.estimators.classifier import RatioClassifier
    from simgen.estimators.flows import MAF, NSF
    from simgen.inference import base

    seen = []
    real = base.Method._config

    def spy(config, overrides, family=None):
        out = real(config, overrides, family)
        seen.append(out.learning_rate)
        return out

    monkeypatch.setattr(base.Method, "_config", staticmethod(spy))
    for family in (NSF, MAF, RatioClassifier):
        monkeypatch.setattr(family, "train_defaults", {"learning_rate": 7e-4})
    task = gaussian_linear.make(dim=2)
    theta = task.prior.sample((60,))
    x = task.simulator(theta, generator=torch.Generator().manual_seed(0))
    opts = {"max_epochs": 1, "progress": False}
    simgen.NPE(task.prior, estimator="nsf").fit(theta, x, **opts)
    simgen.NLE(task.prior, estimator="maf").fit(theta, x, **opts)
    simgen.NRE(task.prior).fit(theta, x, **opts)
    assert seen == [7e-4, 7e-4, 7e-4]


def test_weight_average_still_stops_early():
    """With ``ema > 0`` early stopping must still count epochs without improvement.

    The loss ``(w - mean θ)²`` is minimised within a few epochs; after that the averaged
    weight only jitters, so training must stop long before ``max_epochs``.
    """
    from torch import nn

    from simgen.training import TrainConfig, fit, make_config

    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(3.0))

        def forward(self, theta, x):
            return (self.w - theta).square().mean()

    g = torch.Generator().manual_seed(0)
    theta = torch.randn(500, 1, generator=g)
    config = TrainConfig(
        max_epochs=2000, patience=10, ema=0.9, learning_rate=0.05, progress=False, batch_size=50
    )
    history = fit(Mean(), theta, torch.zeros(500, 1), config)
    assert history.stopped_early
    assert history.epochs < 500
    # min_steps holds early stopping off: 10 steps an epoch, so at least 60 epochs.
    held = fit(Mean(), theta, torch.zeros(500, 1), make_config(config, min_steps=600))
    assert held.stopped_early and held.epochs >= 60 > history.epochs
    with pytest.raises(ConfigError, match="min_steps"):
        make_config(config, min_steps=-1)
