"""The prior-predictive typicality test and the out-of-distribution warning of ``sample``.

On the 2-d Gaussian linear model a typical x_o (the task's, drawn from the prior predictive)
must pass and x_o shifted by 6 prior-predictive sd in one coordinate must be flagged; the
conformal p-values of 200 typical observations must be uniform within binomial error (the
control that the flagging is not a test that flags everything).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import simgen
from simgen.diagnostics import OutOfDistributionWarning, misspecification
from simgen.diagnostics.misspecification import MAX_REFERENCE_ROWS, training_sample
from simgen.diagnostics.sampling import simulate_pairs
from simgen.errors import ConfigError, ShapeError
from simgen.nets import MLP
from simulators import gaussian_linear

TASK = gaussian_linear.make(dim=2)
SHIFT = torch.tensor([6.0 * (gaussian_linear.PRIOR_VAR + gaussian_linear.LIKELIHOOD_VAR) ** 0.5, 0])


@pytest.fixture(scope="module")
def simulations() -> tuple[torch.Tensor, torch.Tensor]:
    return simulate_pairs(TASK.prior, TASK.simulator, 2000, seed=0)


def test_typical_passes_and_shifted_is_flagged(simulations) -> None:  # noqa: ANN001
    typical = misspecification(TASK.x_o, simulations=simulations)
    assert typical.passed and typical.p_values["x"][0] > 0.05, typical
    shifted = misspecification(TASK.x_o + SHIFT, simulations=simulations)
    # Farther than every reference point: the smallest conformal p-value, 1 / 2001.
    assert not shifted.passed and shifted.p_values["x"][0] == pytest.approx(1 / 2001)
    assert shifted.distance_ratio["x"][0] > 5 and "observation 0 in x space" in shifted.failure
    by_simulator = misspecification(TASK.x_o + SHIFT, simulator=TASK.simulator, prior=TASK.prior)
    assert not by_simulator.passed


def test_p_values_of_typical_observations_are_uniform(simulations) -> None:  # noqa: ANN001
    _, x = simulate_pairs(TASK.prior, TASK.simulator, 200, seed=123)
    result = misspecification(x, simulations=simulations)
    p = result.p_values["x"]
    # Uniform p: 200 draws put 5% +- 1.5% (1 SE) at or below 0.05; 3 SE either side.
    assert 0.005 <= np.mean(p <= 0.05) <= 0.095
    assert abs(np.mean(p) - 0.5) < 3 * (1 / 12 / 200) ** 0.5
    assert result.passed and result.level == pytest.approx(0.05 / 200)  # Bonferroni over 200


def test_posterior_keeps_training_x_in_its_file(linear2_posterior, tmp_path) -> None:  # noqa: ANN001
    kept = linear2_posterior.training_x
    assert kept is not None and kept.shape == (MAX_REFERENCE_ROWS, 2)
    path = tmp_path / "model.simgen"
    linear2_posterior.save(path)
    loaded = simgen.load(path)  # weights_only=True
    torch.testing.assert_close(loaded.training_x, kept)
    result = misspecification(loaded, TASK.x_o + SHIFT)
    assert not result.passed and set(result.p_values) == {"x"}  # Identity embedding
    assert misspecification(loaded, TASK.x_o).passed


def test_sample_warns_only_far_outside_the_training_data(linear2_posterior) -> None:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        linear2_posterior.sample((10,), x=TASK.x_o)
    with pytest.warns(OutOfDistributionWarning, match="farther from the training simulations"):
        linear2_posterior.sample((10,), x=TASK.x_o + SHIFT)


def test_embedding_space_is_tested_too(linear2) -> None:  # noqa: ANN001
    theta, x = simgen.simulate(linear2.simulator, linear2.prior, 500, seed=0)
    posterior = simgen.NPE(linear2.prior, embedding_net=MLP(2, 4)).fit(
        theta, x, max_epochs=3, progress=False
    )
    result = misspecification(posterior, TASK.x_o + SHIFT)
    assert set(result.p_values) == {"x", "embedding"} and result.num_tests == 2
    assert "MisspecificationResult(passed=False" in repr(result)


def test_bad_input_says_how_to_fix(simulations) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="reference simulations"):
        misspecification(TASK.x_o)
    with pytest.raises(ConfigError, match="both simulator= and prior="):
        misspecification(TASK.x_o, simulator=TASK.simulator)
    with pytest.raises(ShapeError, match="x shape"):
        misspecification(torch.zeros(3), simulations=simulations)
    big = torch.zeros(5000, 1000)
    assert training_sample(big).shape == (1000, 1000)  # bounded to 1e6 numbers
