"""Figures of samples and of training: corner plots (several sets overlaid), posterior
predictive checks, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from ._base import (
    LEGEND_OUTSIDE,
    Labels,
    _figure,
    _finish,
    as_labels,
    as_sets,
    quantile_ranges,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# 2-D contours at the mass a 2-D Gaussian holds within 1 and 2 sigma, 1 - exp(-k^2 / 2)
CONTOUR_LEVELS = (1 - np.exp(-0.5), 1 - np.exp(-2.0))
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def corner(
    samples: Any,
    truth: Any = None,
    labels: Labels | Sequence[str] | None = None,
    path: str | Path | None = None,
    *,
    quantiles: tuple[float, float] = (0.005, 0.995),
    bins: int = 30,
    **corner_kwargs: Any,
) -> Figure:
    """Corner plot of one or several sample sets, overlaid, with the true parameters marked.

    Diagonal: each set's marginal histogram, normalised to unit mass so sets of different
    sizes compare. Off the diagonal: each set's 2-D contours at the mass a 2-D Gaussian holds
    within 1 and 2 standard deviations (39.3 % and 86.5 %), from a histogram smoothed by a
    Gaussian one bin wide, so a few hundred draws give contours rather than noise. Axis
    ranges come from the sets' quantiles (:func:`quantile_ranges`, 0.5 %–99.5 % by default),
    not from their extremes, so one stray draw does not squash the bulk. Several sets get a
    legend; one set gets its 16 %/50 %/84 % quantiles as titles.

    Args:
        samples: An array or tensor ``(n, D)``, or a mapping name → ``(n_i, D)`` to overlay
            (e.g. ``{"posterior": s, "reference": ref}`` or ``{"round 1": s1, ...}``).
        truth: True parameters ``(D,)``, drawn as lines; ``None`` for none.
        labels: A :class:`Labels` or one axis label per parameter; default :math:`\\theta_d`.
        path: Where to write the figure.
        quantiles: Lower and upper quantile that set each axis range.
        bins: Histogram bins per axis.
        **corner_kwargs: Passed to :func:`corner.corner` (e.g. ``range`` overrides the
            quantile ranges, ``smooth``).

    Example:
        >>> plots.corner({"NPE": s, "reference": ref}, truth=theta_o,
        ...              labels=plots.Labels(("m", "w"), ("GeV", "GeV")), path="corner.pdf")
    """
    import corner as corner_lib
    from matplotlib.lines import Line2D

    sets = as_sets(samples)
    dim = next(iter(sets.values())).shape[1]
    axis_labels = as_labels(labels).parameters(dim)
    truth_arr = None
    if truth is not None:
        truth_arr = np.asarray(torch.as_tensor(truth).detach().cpu(), dtype=np.float64)
        truth_arr = truth_arr.reshape(-1)
        if truth_arr.shape != (dim,):
            raise ShapeError(f"truth must have {dim} entries, one per parameter, got {truth_arr}.")
    if len(sets) > len(COLORS):
        raise ConfigError(f"corner overlays at most {len(COLORS)} sample sets, got {len(sets)}.")
    ranges = corner_kwargs.pop("range", None) or quantile_ranges(sets, quantiles, truth_arr)
    size = max(2.0 * dim, 3.0)
    fig = _figure(figsize=(size, size))
    fig.subplots(dim, dim)
    single = len(sets) == 1
    for i, arr in enumerate(sets.values()):
        kwargs = {
            "labels": axis_labels,
            "range": ranges,
            "bins": bins,
            "color": COLORS[i],
            "weights": np.full(len(arr), 1.0 / len(arr)),
            "levels": CONTOUR_LEVELS,
            "plot_datapoints": single,
            "plot_density": False,
            "no_fill_contours": True,
            "fill_contours": False,
            "show_titles": single,
            "quantiles": [0.16, 0.5, 0.84] if single else [],
            "title_fmt": ".3g",
            "hist_kwargs": {"linewidth": 1.4},
            "max_n_ticks": 4,
            "smooth": 1.0,  # contours of a few hundred draws, not of histogram noise
            **corner_kwargs,
        }
        last = i == len(sets) - 1
        if last and truth_arr is not None:
            kwargs.update(truths=truth_arr, truth_color="k")
        corner_lib.corner(arr, fig=fig, **kwargs)
    if not single:
        handles = [Line2D([], [], color=COLORS[i], label=n) for i, n in enumerate(sets)]
        if truth_arr is not None:
            handles.append(Line2D([], [], color="k", label="truth"))
        fig.legend(handles=handles, loc="upper right", frameon=False)
    return _finish(fig, path)


def predictive(
    result: Any,
    path: str | Path | None = None,
    labels: Labels | Sequence[str] | None = None,
    max_features: int = 12,
) -> Figure:
    """Posterior predictive histograms of the first ``max_features`` features of x, each
    axis named by its feature (``labels.features``, default ``x[f]``), with ``x_o`` marked
    and its predictive quantile in the panel's title."""
    xp = result.x_predictive.reshape(len(result.x_predictive), -1)
    xo = result.x_o.reshape(-1)
    num = min(xp.shape[1], max_features)
    names = as_labels(labels).feature_labels(num)
    cols = min(num, 4)
    rows = -(-num // cols)
    fig = _figure(figsize=(3 * cols, 2.5 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for f, ax in enumerate(axes):
        if f >= num:
            ax.set_axis_off()
            continue
        column = xp[:, f][np.isfinite(xp[:, f])]
        ax.hist(column, bins=30, color="0.6", label="posterior predictive")
        ax.axvline(xo[f], color="tab:red", label=r"$x_o$")
        ax.set_xlabel(names[f])
        ax.set_title(f"quantile of $x_o$: {result.feature_quantiles[f]:.2f}", fontsize="small")
        if f % cols == 0:
            ax.set_ylabel("draws")
    handles, texts = axes[0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle(f"posterior predictive check (joint quantile of $x_o$: {result.quantile:.2f})")
    return _finish(fig, path)


def training_curve(
    history: Any,
    path: str | Path | None = None,
    *,
    loss_label: str = "loss per sample",
) -> Figure:
    """Training and validation loss against epoch, the best (kept) epoch marked.

    Args:
        history: A :class:`~simgen.training.History` (``posterior.history``) or its
            ``to_dict()``, or a mapping name → History to overlay several runs (e.g. the
            rounds of a sequential fit).
        path: Where to write the figure.
        loss_label: The y-axis label; the loss is the method's training objective (for NPE
            and NLE the negative log-density of a held-out pair).
    """
    from matplotlib.ticker import MaxNLocator

    if isinstance(history, Mapping) and "validation_loss" in history:
        history = SimpleNamespace(**history)  # a History's to_dict(), as model files keep it
    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    if not runs:
        raise ShapeError("history is an empty mapping; give at least one History.")
    fig = _figure(figsize=(5.6, 3.4))
    ax = fig.subplots()
    for i, (name, run) in enumerate(runs.items()):
        if not hasattr(run, "train_loss") or not hasattr(run, "validation_loss"):
            raise ConfigError(
                f"training_curve takes a History (posterior.history), got {type(run).__name__}."
            )
        if not run.validation_loss:
            raise ShapeError(f"History {name!r} has no epochs to plot; train first.")
        color = COLORS[i % len(COLORS)]
        epochs = np.arange(1, len(run.validation_loss) + 1)
        prefix = f"{name}: " if name else ""
        ax.plot(epochs, run.train_loss, color=color, ls="--", lw=1.0, label=f"{prefix}training")
        ax.plot(epochs, run.validation_loss, color=color, lw=1.6, label=f"{prefix}validation")
        best = run.best_epoch
        ax.plot(
            [best + 1],
            [run.validation_loss[best]],
            marker="o",
            color=color,
            ls="none",
            label=f"{prefix}best epoch ({best + 1})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=loss_label, title="training curve")
    ax.legend(fontsize="small", **LEGEND_OUTSIDE)
    return _finish(fig, path)
