"""Figures for posteriors and diagnostics, fit for a paper.

Every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas: no pyplot, so no
global figure state and no display is needed. matplotlib and corner are imported inside the
functions. Each function returns the figure and, given ``path``, also writes it there (format
from the extension: ``.png``, ``.pdf``, ``.svg``).

Parameter axes are labelled from ``labels=``, a :class:`Labels` (names and units of the
parameters and of x's features) or a list of labels; every band states its level in the
legend; legends sit outside the curves.

| function | figure |
|---|---|
| :func:`corner` | sample sets overlaid (posterior vs reference, rounds), quantile ranges |
| :func:`sbc_ecdf` | SBC: ECDF minus uniform CDF in the simultaneous band that decides the verdict |
| :func:`sbc_ranks` | SBC rank histograms, integer bins, binomial band per bin |
| :func:`coverage`, :func:`tarp` | expected coverage against credibility, with its band |
| :func:`c2st`, :func:`zscore` | C2ST folds; z-score against contraction |
| :func:`predictive` | posterior predictive histogram per named feature, ``x_o`` marked |
| :func:`training_curve` | training and validation loss per epoch from a ``History`` |
"""

from ._base import Labels, _figure, _finish, as_labels, quantile_ranges
from .calibration import (
    RankHistogram,
    c2st,
    coverage,
    rank_histogram,
    sbc_ecdf,
    sbc_ranks,
    tarp,
    zscore,
)
from .samples import corner, predictive, training_curve

__all__ = [
    "Labels",
    "as_labels",
    "quantile_ranges",
    "corner",
    "predictive",
    "training_curve",
    "sbc_ecdf",
    "sbc_ranks",
    "rank_histogram",
    "RankHistogram",
    "coverage",
    "tarp",
    "c2st",
    "zscore",
    "_figure",
    "_finish",
]
