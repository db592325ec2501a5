"""Figures for posteriors and diagnostics.

The only module that imports matplotlib and corner, and only inside functions. Figures are
built as :class:`matplotlib.figure.Figure` objects on an Agg canvas — no pyplot, so no global
figure state and no display backend is needed. Every function returns the figure and, given
``path``, also writes it there (format from the extension).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["corner", "sbc_ecdf", "coverage", "tarp", "c2st", "zscore", "predictive"]


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _names(dim: int, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [rf"$\theta_{{{d}}}$" for d in range(dim)]


def corner(
    samples: Any,
    truth: Any = None,
    param_names: Sequence[str] | None = None,
    path: str | Path | None = None,
    **corner_kwargs: Any,
) -> Figure:
    """Corner plot of posterior samples ``(n, D)`` with the true parameters marked.

    Args:
        samples: Posterior samples (tensor or array), ``(n, D)``.
        truth: True parameters ``(D,)``, drawn as lines; ``None`` for none.
        param_names: Axis labels; default :math:`\\theta_d`.
        path: Where to write the figure.
        **corner_kwargs: Passed to :func:`corner.corner` (e.g. ``bins``, ``range``).
    """
    import corner as corner_lib

    arr = np.asarray(torch.as_tensor(samples).detach().cpu(), dtype=np.float64)
    arr = arr.reshape(-1, arr.shape[-1])
    dim = arr.shape[1]
    fig = _figure(figsize=(2.2 * dim + 1, 2.2 * dim + 1))
    fig.subplots(dim, dim)
    if truth is not None:
        truth = np.asarray(torch.as_tensor(truth).detach().cpu(), dtype=np.float64).reshape(-1)
    kwargs = {
        "labels": _names(dim, param_names),
        "truths": truth,
        "truth_color": "tab:red",
        "show_titles": True,
        "quantiles": [0.16, 0.5, 0.84],
        **corner_kwargs,
    }
    corner_lib.corner(arr, fig=fig, **kwargs)
    return _finish(fig, path)


def sbc_ecdf(result: Any, path: str | Path | None = None) -> Figure:
    """SBC: ECDF of normalised ranks minus the uniform CDF, one line per parameter, inside
    the simultaneous confidence band; plus rank histograms."""
    dim = result.ecdf_diff.shape[0]
    fig = _figure(figsize=(9, 3.6))
    ax_ecdf, ax_hist = fig.subplots(1, 2)
    z = result.eval_points
    ax_ecdf.fill_between(z, result.band_lower, result.band_upper, color="0.85", label="band")
    for d in range(dim):
        ax_ecdf.plot(
            z, result.ecdf_diff[d], label=rf"$\theta_{{{d}}}$ (p={result.p_values[d]:.2g})"
        )
    ax_ecdf.axhline(0.0, color="k", lw=0.8)
    ax_ecdf.set(xlabel="normalised rank", ylabel="ECDF difference", title="SBC")
    ax_ecdf.legend(fontsize="small")
    num_bins = min(20, result.num_samples + 1)
    edges = np.linspace(0, result.num_samples + 1, num_bins + 1)
    for d in range(dim):
        ax_hist.hist(result.ranks[:, d], bins=edges, histtype="step", label=rf"$\theta_{{{d}}}$")
    ax_hist.axhline(len(result.ranks) / num_bins, color="k", lw=0.8, ls="--")
    ax_hist.set(xlabel="rank", ylabel="count", title="rank histograms")
    return _finish(fig, path)


def _coverage_axes(ax: Any, levels: np.ndarray, curve: np.ndarray, lower: Any, upper: Any) -> None:
    ax.fill_between(levels, lower, upper, color="0.85", label="band")
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="calibrated")
    ax.plot(levels, curve, color="tab:blue", label="estimate")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.legend(fontsize="small", loc="upper left")


def coverage(result: Any, path: str | Path | None = None) -> Figure:
    """Expected HPD coverage against credibility level, with the binomial band; above the
    diagonal is underconfident, below overconfident."""
    fig = _figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    _coverage_axes(
        ax, result.levels, result.expected_coverage, result.band_lower, result.band_upper
    )
    ax.set(
        xlabel="credibility level",
        ylabel="expected coverage",
        title=f"HPD coverage: {result.verdict}",
    )
    return _finish(fig, path)


def tarp(result: Any, path: str | Path | None = None) -> Figure:
    """TARP expected coverage probability against credibility, with the bootstrap band."""
    fig = _figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    _coverage_axes(ax, result.alphas, result.ecp, result.band_lower, result.band_upper)
    ax.set(
        xlabel="credibility level",
        ylabel="expected coverage probability",
        title=f"TARP (ATC={result.atc:.2f}, p={result.p_value:.2g})",
    )
    return _finish(fig, path)


def c2st(result: Any, path: str | Path | None = None) -> Figure:
    """C2ST accuracy per fold against chance (0.5) and the pass threshold."""
    fig = _figure(figsize=(4.2, 3.2))
    ax = fig.subplots()
    folds = np.arange(1, len(result.fold_accuracies) + 1)
    ax.bar(folds, result.fold_accuracies, color="tab:blue")
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
    ax.axhline(0.5 + result.tolerance, color="tab:red", lw=0.8, label="threshold")
    ax.set(ylim=(0, 1), xlabel="fold", ylabel="accuracy", title=f"C2ST = {result.accuracy:.3f}")
    ax.legend(fontsize="small")
    return _finish(fig, path)


def zscore(result: Any, path: str | Path | None = None) -> Figure:
    """Posterior z-score against contraction, one colour per parameter."""
    fig = _figure(figsize=(4.8, 4.0))
    ax = fig.subplots()
    for d in range(result.zscores.shape[1]):
        ax.scatter(
            result.contraction[:, d],
            result.zscores[:, d],
            s=4,
            alpha=0.5,
            label=rf"$\theta_{{{d}}}$",
        )
    ax.axhspan(-2, 2, color="0.9", zorder=0)
    ax.set(xlim=(min(0.0, result.contraction.min()), 1), xlabel="contraction", ylabel="z-score")
    ax.legend(fontsize="small", markerscale=3)
    return _finish(fig, path)


def predictive(result: Any, path: str | Path | None = None, max_features: int = 12) -> Figure:
    """Posterior predictive histograms of the first ``max_features`` features, ``x_o`` marked."""
    xp = result.x_predictive.reshape(len(result.x_predictive), -1)
    xo = result.x_o.reshape(-1)
    num = min(xp.shape[1], max_features)
    cols = min(num, 4)
    rows = -(-num // cols)
    fig = _figure(figsize=(3 * cols, 2.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for f, ax in enumerate(axes):
        if f >= num:
            ax.set_axis_off()
            continue
        column = xp[:, f][np.isfinite(xp[:, f])]
        ax.hist(column, bins=30, color="0.6")
        ax.axvline(xo[f], color="tab:red", label=r"$x_o$")
        ax.set_title(f"x[{f}]: q={result.feature_quantiles[f]:.2f}", fontsize="small")
    fig.suptitle(f"posterior predictive (quantile of x_o: {result.quantile:.2f})")
    return _finish(fig, path)
