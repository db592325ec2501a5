"""L-C2ST against known answers on the 2-d Gaussian conjugate model.

The exact posterior N(x/2, 0.05 I) must pass at x_o; the overconfident (std x0.6),
underconfident (std x1.6) and biased (mean + 1 sd) closed-form posteriors of
``test_diagnostics`` must each be flagged, and the classifier's reweighting must move the
posterior's draws towards the truth. With 500 calibration pairs, 39 relabellings and 20 epochs
the bad posteriors give the smallest possible p-value, 1/40, in 20 of 20 seeds and the exact
one p > 0.05 in 20 of 20 (measured on seeds 0-19); the tests use seed 0, level 0.05.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_diagnostics import POSTERIORS, TASK

from simgen.diagnostics import lc2st
from simgen.diagnostics.lc2st import lc2st_from_samples
from simgen.errors import ConfigError, ShapeError

SETTINGS = {"num_simulations": 500, "num_null": 39, "num_samples": 1000, "seed": 0}


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    return {
        name: lc2st(post, TASK.prior, TASK.simulator, TASK.x_o, **SETTINGS)
        for name, post in POSTERIORS.items()
    }


def test_exact_posterior_passes(results) -> None:  # noqa: ANN001
    result = results["exact"]
    assert result.passed and result.p_value > 0.05, result
    assert result.failure == "" and result.null_statistics.shape == (39,)


@pytest.mark.parametrize("name", ["overconfident", "underconfident", "biased"])
def test_bad_posteriors_are_flagged(name: str, results) -> None:  # noqa: ANN001
    result = results[name]
    assert not result.passed and result.p_value == pytest.approx(1 / 40), result
    assert "posterior differs at x_o" in result.failure


def test_reweighting_points_towards_the_true_posterior(results) -> None:  # noqa: ANN001
    # (1 - d) / d estimates p/q. The true corrections are: sd x1/0.6 (overconfident), x1/1.6
    # (underconfident), mean -1 sd (biased), none (exact). Reweighting can only spread mass
    # over q's own draws, so a too-narrow q is corrected only partly (about +6% on seeds 0-2).
    def moments(r):  # noqa: ANN001, ANN202
        w = r.weights[:, None]
        mean = (w * r.samples).mean(0)
        sd = np.sqrt((w * (r.samples - mean) ** 2).mean(0))
        return sd / r.samples.std(0), (mean - r.samples.mean(0)) / r.samples.std(0)

    sd_exact, shift_exact = moments(results["exact"])
    assert np.all(np.abs(sd_exact - 1) < 0.03) and np.all(np.abs(shift_exact) < 0.15)
    assert np.all(moments(results["overconfident"])[0] > 1.03)
    assert np.all(moments(results["underconfident"])[0] < 0.85)
    assert np.all(moments(results["biased"])[1] < -0.7)


def test_deterministic_summary_and_plot(results, tmp_path) -> None:  # noqa: ANN001
    again = lc2st(POSTERIORS["biased"], TASK.prior, TASK.simulator, TASK.x_o, **SETTINGS)
    assert again.statistic == results["biased"].statistic
    text = repr(results["biased"])
    assert len(text) < 200 and "p_value" in text and "[" not in text
    assert results["biased"].to_dict()["passed"] is False
    results["biased"].plot(path=tmp_path / "lc2st.png")
    assert (tmp_path / "lc2st.png").stat().st_size > 0


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="num_null"):
        lc2st(POSTERIORS["exact"], TASK.prior, TASK.simulator, TASK.x_o, num_null=10)
    with pytest.raises(ConfigError, match="hidden"):
        lc2st(POSTERIORS["exact"], TASK.prior, TASK.simulator, TASK.x_o, width=3)
    theta = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(ShapeError, match="x_o has 3 features"):
        lc2st_from_samples(theta, theta, theta, np.zeros(3), theta, num_null=20)
