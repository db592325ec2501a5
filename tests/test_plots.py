"""Plots are written to files that exist and are non-empty; the report embeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simgen import plots
from simgen.diagnostics import diagnose
from simgen.diagnostics.coverage import coverage_from_log_probs
from simgen.diagnostics.sbc import sbc_from_samples
from simgen.diagnostics.tarp import tarp_from_samples
from simgen.diagnostics.zscore import zscore_from_samples
from simulators import gaussian_linear

TASK = gaussian_linear.make(dim=2)


class Exact:
    def sample_batched(self, sample_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        return x / 2 + 0.05**0.5 * torch.randn(*sample_shape, *x.shape)

    def sample(self, sample_shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        return self.sample_batched(sample_shape, x.reshape(1, 2)).squeeze(-2)

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(x.reshape(2) / 2, 0.05**0.5).log_prob(theta).sum(-1)


def _nonempty_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def truths_and_samples() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(100, 2, generator=g)
    return theta, theta + torch.randn(80, 100, 2, generator=g)


def test_corner_with_truth(tmp_path: Path) -> None:
    samples = TASK.reference_posterior(TASK.x_o, 500)
    fig = plots.corner(samples, truth=TASK.theta_o, param_names=["a", "b"], path=tmp_path / "c.png")
    assert _nonempty_png(tmp_path / "c.png")
    assert len(fig.axes) == 4


def test_diagnostic_plots_write_files(tmp_path: Path, truths_and_samples) -> None:  # noqa: ANN001
    theta, samples = truths_and_samples
    lp = torch.distributions.Normal(theta, 1.0)
    results = {
        "sbc": sbc_from_samples(theta, samples),
        "tarp": tarp_from_samples(theta, samples),
        "coverage": coverage_from_log_probs(
            lp.log_prob(theta).sum(-1), lp.log_prob(samples).sum(-1)
        ),
        "zscore": zscore_from_samples(theta, samples, torch.ones(2)),
    }
    for name, result in results.items():
        path = tmp_path / "sub" / f"{name}.png"
        result.plot(path=path)
        assert _nonempty_png(path), name


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_diagnose_writes_report_with_figures(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"report{suffix}"
    report = diagnose(
        Exact(),
        TASK.prior,
        TASK.simulator,
        x_o=TASK.x_o,
        theta_o=TASK.theta_o,
        num_simulations=100,
        num_samples=100,
        path=path,
    )
    text = path.read_text()
    assert set(report.results) == {
        "sbc",
        "tarp",
        "coverage",
        "zscore",
        "predictive",
        "lc2st",
        "misspecification",
    }
    assert "| sbc |" in text or "<td>sbc</td>" in text
    if suffix == ".md":
        figures = sorted((tmp_path / "report_figures").glob("*.png"))
        assert len(figures) == 8 and all(_nonempty_png(f) for f in figures)
        assert "report_figures/posterior.png" in text
    else:
        assert text.count("data:image/png;base64,") == 8
    assert report.to_dict()["passed"] == report.passed
    assert isinstance(np.asarray(report.to_dict()["results"]["sbc"]["p_values"]), np.ndarray)
