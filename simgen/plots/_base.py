"""The canvas, the writer and the axis labels every figure shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150  # print quality at the figure sizes used here (3-4 inches a panel)
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def _figure(**kwargs: Any) -> Figure:
    """A :class:`~matplotlib.figure.Figure` on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` (format from the extension) if given; return it."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


@dataclass(frozen=True)
class Labels:
    """Names and units of the parameters and of the features of x, for axis labels.

    ``Labels(names=("m", "tau"), units=("GeV", "ps"))`` labels the axes ``m [GeV]`` and
    ``tau [ps]``; an empty unit gives the bare name. Without names the parameters are
    :math:`\\theta_0, \\theta_1, \\dots` and the features ``x[0], x[1], ...``. Every figure
    function takes ``labels=`` as a :class:`Labels`, or as a list of parameter labels.

    Attributes:
        names: One name per parameter (matplotlib mathtext such as ``r"$\\Omega_m$"`` works).
        units: One unit per parameter, ``""`` for none; empty for no units at all.
        features: One name per feature of the flattened x, for predictive checks.
        feature_units: One unit per feature, ``""`` for none.
    """

    names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    feature_units: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("names", "units", "features", "feature_units"):
            value = getattr(self, field_name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(
                    f"Labels.{field_name} must be a sequence of strings, got {value!r}."
                )
            object.__setattr__(self, field_name, tuple(value))
        for names, units, what in (
            (self.names, self.units, "names"),
            (self.features, self.feature_units, "features"),
        ):
            if units and len(units) != len(names):
                raise ConfigError(
                    f"Labels has {len(names)} {what} but {len(units)} units; give one unit "
                    "per name ('' where there is none)."
                )

    def parameters(self, dim: int) -> list[str]:
        """The ``dim`` parameter axis labels, ``name [unit]``."""
        if not self.names:
            return [rf"$\theta_{{{d}}}$" for d in range(dim)]
        if len(self.names) != dim:
            raise ShapeError(
                f"Labels has {len(self.names)} parameter names but the samples have {dim} "
                "parameters; give one name per parameter."
            )
        return _with_units(self.names, self.units)

    def feature_labels(self, num: int) -> list[str]:
        """The first ``num`` feature axis labels, ``name [unit]``."""
        if not self.features:
            return [f"x[{f}]" for f in range(num)]
        if len(self.features) < num:
            raise ShapeError(
                f"Labels has {len(self.features)} feature names but {num} features are "
                "plotted; give one name per feature of the flattened x."
            )
        return _with_units(self.features, self.feature_units)[:num]


def _with_units(names: Sequence[str], units: Sequence[str]) -> list[str]:
    units = list(units) or [""] * len(names)
    return [f"{n} [{u}]" if u else n for n, u in zip(names, units)]


def as_labels(labels: Labels | Sequence[str] | None) -> Labels:
    """A :class:`Labels` from ``None``, a list of parameter labels, or a :class:`Labels`."""
    if labels is None:
        return Labels()
    if isinstance(labels, Labels):
        return labels
    if isinstance(labels, str):
        raise ConfigError(f"labels must be a list of strings, one per parameter, got {labels!r}.")
    return Labels(names=tuple(labels))


def as_array(values: Any, what: str) -> np.ndarray:
    """Samples (tensor or array) as a float64 array ``(n, D)``."""
    arr = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ShapeError(f"{what} must have shape (n, D) with n > 0, got {tuple(arr.shape)}.")
    return arr.reshape(-1, arr.shape[-1])


def as_sets(samples: Any, what: str = "samples") -> dict[str, np.ndarray]:
    """One or several named sample sets: an array ``(n, D)`` or a mapping name → array."""
    if isinstance(samples, Mapping):
        sets = {str(k): as_array(v, f"{what}[{k!r}]") for k, v in samples.items()}
    else:
        sets = {"posterior": as_array(samples, what)}
    if not sets:
        raise ShapeError(f"{what} is an empty mapping; give at least one sample set.")
    dims = {name: arr.shape[1] for name, arr in sets.items()}
    if len(set(dims.values())) != 1:
        raise ShapeError(f"the sample sets have different dimensions: {dims}.")
    return sets


def quantile_ranges(
    sets: Mapping[str, np.ndarray],
    quantiles: tuple[float, float] = (0.005, 0.995),
    truth: np.ndarray | None = None,
    pad: float = 0.05,
) -> list[tuple[float, float]]:
    """Axis range per dimension from the sets' quantiles, not their extremes.

    Per dimension: from the smallest lower quantile to the largest upper quantile over the
    sets (widened to include ``truth``), padded by ``pad`` of the width on each side. The
    default 0.5 %–99.5 % keeps 99 % of each set on the axes while one stray draw (a flow's
    tail, an MCMC chain before it mixed) cannot shrink the bulk to a sliver.
    """
    lo_q, hi_q = quantiles
    if not 0 <= lo_q < hi_q <= 1:
        raise ConfigError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}.")
    lows = np.min([np.nanquantile(a, lo_q, axis=0) for a in sets.values()], axis=0)
    highs = np.max([np.nanquantile(a, hi_q, axis=0) for a in sets.values()], axis=0)
    if truth is not None:
        lows, highs = np.minimum(lows, truth), np.maximum(highs, truth)
    width = highs - lows
    width = np.where(width > 0, width, np.maximum(np.abs(lows), 1.0) * 1e-3)
    return [(float(lo - pad * w), float(hi + pad * w)) for lo, hi, w in zip(lows, highs, width)]
