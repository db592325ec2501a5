"""Each figure is rendered on an Agg canvas and checked for what a reader needs: parameter
names and units on the axes, one legend entry per curve or sample set, bands at their stated
level, integer rank bins, quantile (not outlier) ranges; the report embeds them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from simgen import plots
from simgen.diagnostics import diagnose
from simgen.diagnostics.coverage import coverage_from_log_probs
from simgen.diagnostics.predictive import PredictiveResult
from simgen.diagnostics.sbc import sbc_from_samples
from simgen.diagnostics.tarp import tarp_from_samples
from simgen.diagnostics.zscore import zscore_from_samples
from simgen.errors import ConfigError, ShapeError, SimgenError
from simgen.training import History
from simulators import gaussian_linear

TASK = gaussian_linear.make(dim=2)
LABELS = plots.Labels(names=("mass", "width"), units=("GeV", ""))


class Exact:
    def sample_batched(self, sample_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        return x / 2 + 0.05**0.5 * torch.randn(*sample_shape, *x.shape)

    def sample(self, sample_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        return self.sample_batched(sample_shape, x.reshape(1, 2)).squeeze(-2)

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(x.reshape(2) / 2, 0.05**0.5).log_prob(theta).sum(-1)


def _nonempty_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def _legend_texts(legend) -> list[str]:  # noqa: ANN001
    return [t.get_text() for t in legend.get_texts()]


@pytest.fixture(scope="module")
def truths_and_samples() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(100, 2, generator=g)
    return theta, theta + torch.randn(80, 100, 2, generator=g)


# -- labels -------------------------------------------------------------------------------


def test_labels_join_names_and_units_and_reject_mismatches() -> None:
    assert LABELS.parameters(2) == ["mass [GeV]", "width"]
    assert plots.Labels().parameters(2) == [r"$\theta_{0}$", r"$\theta_{1}$"]
    assert plots.as_labels(["a", "b"]).parameters(2) == ["a", "b"]
    with pytest.raises(ConfigError, match="one unit per name"):
        plots.Labels(names=("a", "b"), units=("GeV",))
    with pytest.raises(ShapeError, match="one name per parameter"):
        LABELS.parameters(3)
    with pytest.raises(SimgenError, match="list of strings"):
        plots.as_labels("mass")


# -- corner -------------------------------------------------------------------------------


def test_corner_overlays_sets_with_legend_names_and_units(tmp_path: Path) -> None:
    posterior = TASK.reference_posterior(TASK.x_o, 500)
    reference = TASK.reference_posterior(TASK.x_o, 800, seed=1)
    fig = plots.corner(
        {"posterior": posterior, "reference": reference},
        truth=TASK.theta_o,
        labels=LABELS,
        path=tmp_path / "c.pdf",
    )
    assert (tmp_path / "c.pdf").read_bytes()[:4] == b"%PDF"
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_xlabel() for ax in axes[-1]] == ["mass [GeV]", "width"]
    assert axes[1, 0].get_ylabel() == "width"
    assert _legend_texts(fig.legends[0]) == ["posterior", "reference", "truth"]
    # one step histogram per set on each diagonal panel
    assert [len(axes[d, d].patches) for d in range(2)] == [2, 2]


def test_corner_ranges_follow_quantiles_not_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(4000, 2, generator=g)
    samples[0] = torch.tensor([1e3, -1e3])  # one stray draw
    fig = plots.corner(samples)
    low, high = fig.axes[0].get_xlim()
    assert -4 < low < -2 and 2 < high < 4, (low, high)
    # control: the full range (quantiles 0 and 1) is stretched by the outlier
    wide = plots.corner(samples, quantiles=(0.0, 1.0))
    assert wide.axes[0].get_xlim()[1] > 900
    with pytest.raises(ShapeError, match="one per parameter"):
        plots.corner(samples, truth=torch.zeros(3))


# -- SBC ----------------------------------------------------------------------------------


def test_rank_histogram_bins_hold_whole_rank_values_and_band_is_binomial() -> None:
    rng = np.random.default_rng(0)
    num_obs, num_samples = 2000, 99
    ranks = rng.integers(0, num_samples + 1, size=(num_obs, 10))
    hist = plots.rank_histogram(ranks, num_samples, num_bins=20)
    assert np.allclose(hist.edges + 0.5, np.round(hist.edges + 0.5))  # half-integer edges
    assert hist.edges[0] == -0.5 and hist.edges[-1] == num_samples + 0.5
    assert (hist.counts.sum(axis=1) == num_obs).all()
    width = np.diff(hist.edges)  # rank values per bin: 5 each for 100 values in 20 bins
    assert (width == 5).all()
    assert hist.lower[0] == stats.binom.ppf(0.005, num_obs, 0.05)
    assert hist.upper[0] == stats.binom.ppf(0.995, num_obs, 0.05)
    # calibrated ranks: a pointwise 99 % band leaves about 1 % of the 200 bins outside
    # (binomial(200, 0.01): P(more than 8 outside) < 1e-3)
    outside = (hist.counts < hist.lower) | (hist.counts > hist.upper)
    assert outside.sum() <= 8, outside.sum()
    # control: U-shaped ranks of an overconfident posterior leave most bins outside
    u_shaped = np.round(rng.beta(0.5, 0.5, size=(num_obs, 10)) * num_samples).astype(int)
    bad = plots.rank_histogram(u_shaped, num_samples, num_bins=20)
    outside = (bad.counts < bad.lower) | (bad.counts > bad.upper)
    assert outside.mean() > 0.5, outside.mean()
    with pytest.raises(ConfigError, match="num_bins"):
        plots.rank_histogram(ranks, 3, num_bins=10)


def test_sbc_rank_figure_has_integer_bins_and_stated_band(truths_and_samples) -> None:  # noqa: ANN001
    theta, samples = truths_and_samples
    result = sbc_from_samples(theta, samples)
    fig = plots.sbc_ranks(result, labels=LABELS)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_xlabel() for ax in panels] == ["rank of mass [GeV]", "rank of width"]
    expected = plots.rank_histogram(result.ranks, result.num_samples)
    for d, ax in enumerate(panels):
        (stairs,) = [p for p in ax.patches if p.get_label() == "ranks"]
        values, edges, _ = stairs.get_data()
        assert np.array_equal(values, expected.counts[d])
        assert np.allclose(edges + 0.5, np.round(edges + 0.5))
    assert _legend_texts(fig.legends[0]) == ["99% binomial band per bin", "ranks"]


def test_sbc_ecdf_states_band_level_and_keeps_legend_outside(truths_and_samples) -> None:  # noqa: ANN001
    theta, samples = truths_and_samples
    result = sbc_from_samples(theta, samples, alpha=0.05)
    fig = plots.sbc_ecdf(result, labels=LABELS)
    (ax,) = fig.axes
    texts = _legend_texts(ax.get_legend())
    assert texts[0] == "97.5% simultaneous band per parameter (95% jointly)"
    assert [t.removesuffix(" (outside)") for t in texts[1:]] == ["mass [GeV]", "width"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert legend_box.x0 >= ax.get_window_extent(renderer).x1  # right of the curves
    assert len(ax.get_lines()) == 2 + 1  # one per parameter and the zero line


# -- other diagnostics --------------------------------------------------------------------


def test_predictive_names_each_feature() -> None:
    rng = np.random.default_rng(0)
    result = PredictiveResult(
        x_predictive=rng.normal(size=(200, 3)),
        x_o=np.zeros(3),
        distance=0.1,
        quantile=0.4,
        feature_quantiles=np.array([0.5, 0.4, 0.6]),
        alpha=0.05,
    )
    names = plots.Labels(features=("energy", "count", "angle"), feature_units=("MeV", "", "rad"))
    fig = plots.predictive(result, labels=names)
    shown = [ax.get_xlabel() for ax in fig.axes if ax.axison]
    assert shown == ["energy [MeV]", "count", "angle [rad]"]
    assert _legend_texts(fig.legends[0]) == ["posterior predictive", "$x_o$"]
    with pytest.raises(ShapeError, match="one name per feature"):
        plots.predictive(result, labels=plots.Labels(features=("energy",)))


def test_training_curve_marks_best_epoch_per_run() -> None:
    run = History(train_loss=[3.0, 2.0, 1.5, 1.4], validation_loss=[3.1, 2.2, 2.0, 2.1])
    run.best_epoch = 2
    fig = plots.training_curve(run)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
    assert _legend_texts(ax.get_legend()) == ["training", "validation", "best epoch (3)"]
    marker = ax.get_lines()[2]
    assert marker.get_xdata()[0] == 3 and marker.get_ydata()[0] == 2.0
    assert all(float(t).is_integer() for t in ax.get_xticks())
    from_dict = plots.training_curve(run.to_dict())  # as a model file keeps it
    assert list(from_dict.axes[0].get_lines()[1].get_ydata()) == run.validation_loss
    rounds = plots.training_curve({"round 1": run, "round 2": run})
    assert len(rounds.axes[0].get_legend().get_texts()) == 6
    with pytest.raises(ConfigError, match="History"):
        plots.training_curve([1.0, 2.0])
    with pytest.raises(ShapeError, match="no epochs"):
        plots.training_curve(History())


def test_diagnostic_plots_state_band_levels(tmp_path: Path, truths_and_samples) -> None:  # noqa: ANN001
    theta, samples = truths_and_samples
    lp = torch.distributions.Normal(theta, 1.0)
    results = {
        "tarp": tarp_from_samples(theta, samples, alpha=0.05),
        "coverage": coverage_from_log_probs(
            lp.log_prob(theta).sum(-1), lp.log_prob(samples).sum(-1), alpha=0.01
        ),
        "zscore": zscore_from_samples(theta, samples, torch.ones(2)),
    }
    bands = {"tarp": "0.95 bootstrap band", "coverage": "0.99 binomial band"}
    for name, result in results.items():
        path = tmp_path / "sub" / f"{name}.png"
        fig = result.plot(path=path)
        assert _nonempty_png(path), name
        if name in bands:
            assert bands[name] in _legend_texts(fig.axes[0].get_legend()), name
    fig = plots.zscore(results["zscore"], labels=LABELS)
    assert _legend_texts(fig.axes[0].get_legend())[:2] == ["mass [GeV]", "width"]


# -- the report ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_report():  # noqa: ANN201
    return diagnose(
        Exact(),
        TASK.prior,
        TASK.simulator,
        x_o=TASK.x_o,
        theta_o=TASK.theta_o,
        reference_samples=TASK.reference_posterior(TASK.x_o, 300),
        num_simulations=100,
        num_samples=100,
        labels=LABELS,
    )


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_diagnose_writes_report_with_labelled_figures(
    tmp_path: Path,
    suffix: str,
    labelled_report,  # noqa: ANN001
) -> None:
    report = labelled_report
    path = report.write(tmp_path / f"report{suffix}")
    text = path.read_text()
    names = {"sbc", "tarp", "coverage", "zscore", "predictive", "lc2st", "misspecification"}
    assert set(report.results) == names | {"c2st"}
    assert "| sbc |" in text or "<td>sbc</td>" in text
    figures = ["posterior", "sbc", "sbc_ranks", *sorted(names - {"sbc"}), "c2st"]
    if suffix == ".md":
        written = sorted(p.stem for p in (tmp_path / "report_figures").glob("*.png"))
        assert written == sorted(figures)
        assert all(_nonempty_png(f) for f in (tmp_path / "report_figures").glob("*.png"))
        assert "report_figures/posterior.png" in text
    else:
        assert text.count("data:image/png;base64,") == len(figures)
        assert text.count("<figcaption>") == len(figures)
    drawn = report.figures()
    corner_axes = np.array(drawn["posterior"].axes).reshape(2, 2)
    assert corner_axes[-1, 0].get_xlabel() == "mass [GeV]"
    assert _legend_texts(drawn["posterior"].legends[0]) == ["posterior", "reference", "truth"]
    assert report.to_dict()["passed"] == report.passed


def test_report_draws_the_training_curve_of_a_trained_posterior() -> None:
    posterior = Exact()
    posterior.history = History(train_loss=[2.0, 1.0, 0.9], validation_loss=[2.1, 1.2, 1.3])
    report = diagnose(posterior, TASK.prior, TASK.simulator, num_simulations=40, num_samples=40)
    figures = report.figures()
    assert list(figures) == ["training", "sbc", "sbc_ranks", "tarp", "coverage", "zscore"]
    (ax,) = figures["training"].axes
    assert list(ax.get_lines()[1].get_ydata()) == [2.1, 1.2, 1.3]
    # a History's to_dict(), as a model file keeps it, draws the same curve
    report.history = posterior.history.to_dict()
    assert list(report.figures()["training"].axes[0].get_lines()[1].get_ydata()) == [2.1, 1.2, 1.3]
    # a posterior without a history (sbi's, a closed form) gets no training curve
    assert (
        "training"
        not in diagnose(
            Exact(), TASK.prior, TASK.simulator, num_simulations=40, num_samples=40
        ).figures()
    )
