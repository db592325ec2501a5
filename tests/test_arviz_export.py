"""to_inference_data: groups, shapes and names that ArviZ tools rely on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from simgen.arviz_export import to_inference_data
from simgen.errors import ShapeError


def test_independent_samples_become_one_chain_with_observed_data() -> None:
    samples = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    idata = to_inference_data(samples, x_o=torch.tensor([0.1, 0.2, 0.3]))
    assert set(idata.groups()) == {"posterior", "observed_data"}
    assert idata.posterior["theta_2"].shape == (1, 500)
    np.testing.assert_allclose(idata.posterior["theta_1"].values[0], samples[:, 1].numpy())
    np.testing.assert_allclose(idata.observed_data["x"].values, [0.1, 0.2, 0.3], rtol=1e-6)


def test_mcmc_chains_names_and_sample_stats_feed_arviz_diagnostics() -> None:
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(4, 200, 2))
    stats = {"lp": rng.normal(size=(4, 200)), "diverging": np.zeros((4, 200), dtype=bool)}
    idata = to_inference_data(samples, param_names=["mu", "sigma"], sample_stats=stats)
    assert idata.sample_stats["lp"].shape == (4, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

        rhat = arviz.rhat(idata)
    # Independent normal draws in every chain: R-hat within 1% of 1.
    assert abs(float(rhat["mu"]) - 1.0) < 0.01


def test_bad_shapes_raise_with_advice() -> None:
    with pytest.raises(ShapeError, match="reshape"):
        to_inference_data(np.zeros(10))
    with pytest.raises(ShapeError, match="distinct"):
        to_inference_data(np.zeros((10, 2)), param_names=["a"])
    with pytest.raises(ShapeError, match="sample_stats"):
        to_inference_data(np.zeros((10, 2)), sample_stats={"lp": np.zeros(5)})
