"""Figures of the calibration diagnostics: SBC (ECDF difference and rank histograms),
HPD coverage, TARP, C2ST folds and posterior z-scores.

Every band is drawn with its level in the legend, and legends sit outside the curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._base import LEGEND_OUTSIDE, Labels, _figure, _finish, as_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RANK_BAND_LEVEL = 0.99  # Talts et al. (2018) draw the 99 % binomial interval per bin


def _percent(p: float) -> str:
    """A level as a percentage to 4 significant digits: 0.975 -> '97.5%'."""
    return f"{100 * p:.4g}%"


def sbc_ecdf(
    result: Any, path: str | Path | None = None, labels: Labels | Sequence[str] | None = None
) -> Figure:
    """SBC: the ECDF of each parameter's normalised ranks minus the uniform CDF, inside the
    simultaneous confidence band that decides ``result.passed``.

    The band has level ``result.band_level`` = :math:`1-\\alpha/D` for each parameter, so
    that all :math:`D` curves stay inside it together with probability at least
    :math:`1-\\alpha` for a calibrated posterior; the legend states both, and sits to the
    right of the axes so it never covers a curve.
    """
    dim = result.ecdf_diff.shape[0]
    names = as_labels(labels).parameters(dim)
    fig = _figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    z = result.eval_points
    ax.fill_between(
        z,
        result.band_lower,
        result.band_upper,
        color="0.85",
        label=(
            f"{_percent(result.band_level)} simultaneous band per parameter "
            f"({_percent(1 - result.alpha)} jointly)"
        ),
    )
    inside = result.within_band
    for d in range(dim):
        mark = "" if inside[d] else " (outside)"
        ax.plot(z, result.ecdf_diff[d], lw=1.4, label=f"{names[d]}{mark}")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(
        xlim=(0, 1),
        xlabel="normalised rank $r/L$",
        ylabel=r"ECDF $-$ uniform CDF",
        title=f"SBC: {result.ranks.shape[0]} simulations, L = {result.num_samples}",
    )
    ax.legend(fontsize="small", **LEGEND_OUTSIDE)
    return _finish(fig, path)


@dataclass(frozen=True)
class RankHistogram:
    """Binned SBC ranks and the binomial band of each bin.

    Ranks take the :math:`L+1` integer values :math:`0, \\dots, L`; each bin holds a whole
    number of them, with edges at half-integers. Bin :math:`b` holding :math:`w_b` values has
    count :math:`\\mathrm{Binomial}(B, w_b/(L+1))` for a calibrated posterior, and
    ``lower``/``upper`` are that distribution's :math:`(1-\\text{level})/2` and
    :math:`(1+\\text{level})/2` quantiles: a pointwise band, so about a share
    :math:`1-\\text{level}` of the bins of a calibrated posterior fall outside it.

    Attributes:
        edges: Bin edges ``(K + 1,)``, at half-integers.
        counts: Ranks per bin ``(D, K)``.
        lower: Lower band per bin ``(K,)``.
        upper: Upper band per bin ``(K,)``.
        level: The band's level per bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float


def rank_histogram(
    ranks: np.ndarray,
    num_samples: int,
    num_bins: int | None = None,
    level: float = RANK_BAND_LEVEL,
) -> RankHistogram:
    """Bin integer ranks ``(B, D)`` in ``0..num_samples`` and compute the binomial band.

    ``num_bins`` defaults to ``min(20, B // 10, L + 1)`` (at least 2), so that every bin
    expects about 10 ranks or more and the band is not all zeros.
    """
    from scipy import stats

    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}.")
    ranks = np.asarray(ranks)
    num_obs = ranks.shape[0]
    num_values = int(num_samples) + 1
    if num_bins is None:
        num_bins = max(2, min(20, num_obs // 10, num_values))
    if not 1 <= num_bins <= num_values:
        raise ConfigError(
            f"num_bins must be between 1 and L + 1 = {num_values} (one rank value a bin), "
            f"got {num_bins}."
        )
    cuts = np.unique(np.round(np.linspace(0, num_values, num_bins + 1)).astype(int))
    edges = cuts - 0.5
    counts = np.stack([np.histogram(ranks[:, d], bins=edges)[0] for d in range(ranks.shape[1])])
    p = np.diff(cuts) / num_values
    tail = (1 - level) / 2
    lower = stats.binom.ppf(tail, num_obs, p)
    upper = stats.binom.ppf(1 - tail, num_obs, p)
    return RankHistogram(edges, counts, lower, upper, float(level))


def sbc_ranks(
    result: Any,
    path: str | Path | None = None,
    labels: Labels | Sequence[str] | None = None,
    num_bins: int | None = None,
    level: float = RANK_BAND_LEVEL,
) -> Figure:
    """SBC rank histograms, one panel per parameter, with integer bins (each holds a whole
    number of the :math:`L+1` rank values) and the pointwise binomial band at ``level``
    (99 % by default, as Talts et al. 2018 draw it; :func:`rank_histogram`). Overconfident
    posteriors pile ranks at both ends (U), underconfident ones in the middle (∩), biased
    ones on one side."""
    hist = rank_histogram(result.ranks, result.num_samples, num_bins, level)
    dim = hist.counts.shape[0]
    names = as_labels(labels).parameters(dim)
    cols = min(dim, 4)
    rows = -(-dim // cols)
    fig = _figure(figsize=(3.2 * cols + 1.8, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    band_x = np.repeat(hist.edges, 2)[1:-1]
    for d, ax in enumerate(axes):
        if d >= dim:
            ax.set_axis_off()
            continue
        ax.fill_between(
            band_x,
            np.repeat(hist.lower, 2),
            np.repeat(hist.upper, 2),
            color="0.85",
            label=f"{hist.level:.0%} binomial band per bin",
        )
        ax.stairs(
            hist.counts[d], hist.edges, baseline=None, color="tab:blue", lw=1.4, label="ranks"
        )
        ax.set(xlim=(hist.edges[0], hist.edges[-1]), xlabel=f"rank of {names[d]}")
        if d % cols == 0:
            ax.set_ylabel("simulations per bin")
    handles, texts = axes[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside right upper", fontsize="small", frameon=False)
    fig.suptitle(f"SBC ranks: {result.ranks.shape[0]} simulations, L = {result.num_samples}")
    return _finish(fig, path)


def _coverage_axes(
    ax: Any, levels: np.ndarray, curve: np.ndarray, lower: Any, upper: Any, band: str
) -> None:
    ax.fill_between(levels, lower, upper, color="0.85", label=band)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="calibrated")
    ax.plot(levels, curve, color="tab:blue", lw=1.6, label="estimate")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.legend(fontsize="small", **LEGEND_OUTSIDE)


def coverage(result: Any, path: str | Path | None = None) -> Figure:
    """Expected HPD coverage against credibility level, with the binomial band of level
    :math:`1-\\alpha`; above the diagonal is underconfident, below overconfident."""
    fig = _figure(figsize=(5.6, 3.6))
    ax = fig.subplots()
    _coverage_axes(
        ax,
        result.levels,
        result.expected_coverage,
        result.band_lower,
        result.band_upper,
        f"{1 - result.alpha:.3g} binomial band",
    )
    ax.set(
        xlabel="credibility level",
        ylabel="expected coverage",
        title=f"HPD coverage: {result.verdict}",
    )
    return _finish(fig, path)


def tarp(result: Any, path: str | Path | None = None) -> Figure:
    """TARP expected coverage probability against credibility, with the simultaneous
    bootstrap band of level :math:`1-\\alpha`."""
    fig = _figure(figsize=(5.6, 3.6))
    ax = fig.subplots()
    _coverage_axes(
        ax,
        result.alphas,
        result.ecp,
        result.band_lower,
        result.band_upper,
        f"{1 - result.alpha:.3g} bootstrap band",
    )
    ax.set(
        xlabel="credibility level",
        ylabel="expected coverage probability",
        title=f"TARP (ATC={result.atc:.2f}, p={result.p_value:.2g})",
    )
    return _finish(fig, path)


def c2st(result: Any, path: str | Path | None = None) -> Figure:
    """C2ST accuracy per fold against chance (0.5) and the pass threshold."""
    fig = _figure(figsize=(5.4, 3.2))
    ax = fig.subplots()
    folds = np.arange(1, len(result.fold_accuracies) + 1)
    ax.bar(folds, result.fold_accuracies, color="tab:blue", label="fold accuracy")
    ax.axhline(0.5, color="k", ls="--", lw=0.8, label="chance")
    ax.axhline(0.5 + result.tolerance, color="tab:red", lw=0.8, label="threshold")
    ax.set(ylim=(0, 1), xlabel="fold", ylabel="accuracy", title=f"C2ST = {result.accuracy:.3f}")
    ax.set_xticks(folds)
    ax.legend(fontsize="small", **LEGEND_OUTSIDE)
    return _finish(fig, path)


def zscore(
    result: Any, path: str | Path | None = None, labels: Labels | Sequence[str] | None = None
) -> Figure:
    """Posterior z-score against contraction, one colour per parameter; the grey strip is
    :math:`|z| < 2`."""
    dim = result.zscores.shape[1]
    names = as_labels(labels).parameters(dim)
    fig = _figure(figsize=(5.6, 3.8))
    ax = fig.subplots()
    for d in range(dim):
        ax.scatter(result.contraction[:, d], result.zscores[:, d], s=4, alpha=0.5, label=names[d])
    ax.axhspan(-2, 2, color="0.9", zorder=0, label="|z| < 2")
    ax.set(
        xlim=(min(0.0, float(result.contraction.min())), 1),
        xlabel="posterior contraction",
        ylabel="posterior z-score",
    )
    ax.legend(fontsize="small", markerscale=3, **LEGEND_OUTSIDE)
    return _finish(fig, path)
