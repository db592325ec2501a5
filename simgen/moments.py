r"""Statistics of data in chunks, merged exactly: what estimator set-up computes from a pass.

Every data-dependent set-up of an estimator (z-scoring, the Gaussian baseline of flow
matching and diffusion, NLE's integer columns) reads :data:`Chunks`, a zero-argument
callable returning an iterable of ``(target, context)`` chunks, so a pass over a bank
(:mod:`simgen.streaming`) and tensors in memory (:func:`in_chunks`) go through the same
code. :class:`Moments` merges per-chunk means and centred second moments in float64
(Chan, Golub and LeVeque's pairwise update): for a chunk of :math:`n_b` rows with mean
:math:`\bar y_b` and centred sum of squares :math:`M_b`, merged into :math:`n_a, \bar y_a,
M_a`,

.. math::
    \delta = \bar y_b - \bar y_a, \quad
    \bar y = \bar y_a + \delta\,\frac{n_b}{n_a + n_b}, \quad
    M = M_a + M_b + \delta^2\,\frac{n_a n_b}{n_a + n_b},

which stays accurate when the mean is large against the spread, where summing
:math:`\sum y^2` would not. :class:`CrossMoments` does the same for the cross-products of two
blocks of columns (the baseline's ridge regression).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from .errors import ShapeError

__all__ = ["Chunks", "CrossMoments", "Moments", "in_chunks", "swapped"]

#: A re-iterable of data in chunks: calling it starts a new pass over ``(target, context)``.
Chunks = Callable[[], Iterable[tuple[Tensor, Tensor]]]

#: Numbers per float64 piece in :meth:`Moments.update` (2 MB), so that merging a wide chunk
#: needs no more memory than that whatever the chunk's size.
PIECE_NUMBERS = 1 << 18

#: Rows per chunk when :func:`in_chunks` cuts in-memory tensors (bounds float64 copies).
MEMORY_CHUNK_ROWS = 1 << 16


def in_chunks(target: Tensor, context: Tensor, rows: int = MEMORY_CHUNK_ROWS) -> Chunks:
    """In-memory tensors as :data:`Chunks` of at most ``rows`` rows."""

    def chunks() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(target), rows):
            yield target[start : start + rows], context[start : start + rows]

    return chunks


class Moments:
    """Elementwise mean and variance over rows, merged chunk by chunk in float64.

    ``update(rows)`` takes ``(n, *shape)``; :attr:`mean` and :attr:`std` (unbiased, as
    ``Tensor.std``) are ``shape``. See the module docstring for the merge.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    @classmethod
    def of(cls, data: Tensor, rows: int = MEMORY_CHUNK_ROWS) -> Moments:
        moments = cls()
        for start in range(0, len(data), rows):
            moments.update(data[start : start + rows])
        return moments

    def update(self, rows: Tensor) -> None:
        n = len(rows)
        if n == 0:
            return
        per = max(1, PIECE_NUMBERS // max(rows[0].numel(), 1))
        if n > per:  # bound the float64 copies: a wide chunk is merged in pieces
            for start in range(0, n, per):
                self.update(rows[start : start + per])
            return
        var, mean = torch.var_mean(rows.detach().double(), 0, correction=0)
        m2 = var * n
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> Tensor:
        if self.m2 is None:
            raise ShapeError("No rows to compute statistics from; the data is empty.")
        if self.count < 2:
            return torch.ones_like(self.m2)
        return (self.m2 / (self.count - 1)).sqrt()


class CrossMoments:
    """Means and centred cross-product sums of two column blocks ``y (n, D)``, ``x (n, F)``.

    After a pass, ``cyy``, ``cxy``, ``cxx`` are :math:`\\sum (y-\\bar y)(y-\\bar y)^\\top`,
    :math:`\\sum (x-\\bar x)(y-\\bar y)^\\top` and :math:`\\sum (x-\\bar x)(x-\\bar x)^\\top`
    in float64; ``x`` may have zero columns.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean_y = self.mean_x = self.cyy = self.cxy = self.cxx = torch.zeros(0)

    def update(self, y: Tensor, x: Tensor) -> None:
        n = len(y)
        if n == 0:
            return
        y, x = y.detach().double(), x.detach().double()
        my, mx = y.mean(0), x.mean(0)
        yc, xc = y - my, x - mx
        parts = (yc.T @ yc, xc.T @ yc, xc.T @ xc)
        if self.count == 0:
            self.count, self.mean_y, self.mean_x = n, my, mx
            self.cyy, self.cxy, self.cxx = parts
            return
        total = self.count + n
        w = self.count * n / total
        dy, dx = my - self.mean_y, mx - self.mean_x
        self.cyy = self.cyy + parts[0] + w * torch.outer(dy, dy)
        self.cxy = self.cxy + parts[1] + w * torch.outer(dx, dy)
        self.cxx = self.cxx + parts[2] + w * torch.outer(dx, dx)
        self.mean_y = self.mean_y + dy * (n / total)
        self.mean_x = self.mean_x + dx * (n / total)
        self.count = total


def swapped(chunks: Chunks) -> Chunks:
    """``chunks`` of ``(theta, x)`` as ``(x, theta)`` (NLE's target is x)."""
    return lambda: ((x, theta) for theta, x in chunks())
