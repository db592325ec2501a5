r"""The validation pass of :func:`simgen.training.fit` and its minimum-gain rule for early stopping.

``fit`` stops after ``patience`` epochs without a new best validation loss. On a small
validation set (100 rows at 1,000 simulations) a flow whose learning rate has decayed still
makes new bests every few epochs by 0.0001-0.005 nats, far inside the validation loss's own
noise, and each one restarts the patience count. With ``TrainConfig.min_gain_se = k > 0`` a
new best restarts the count only if it beats the *reference* epoch :math:`r` (the last one
that did) by more than ``k`` standard errors of the paired difference on the same rows:

.. math::
    d_i = \ell_i^{(r)} - \ell_i^{(e)}, \qquad
    \bar d = \frac1n \sum_i d_i, \qquad
    \widehat{\mathrm{se}}(\bar d) = \frac{s_d}{\sqrt n}, \qquad
    \text{new best} \iff \bar d > k\, \widehat{\mathrm{se}}(\bar d),

where :math:`\ell_i^{(e)}` is row :math:`i`'s loss at epoch :math:`e` (computed in the same
validation pass as the mean) and :math:`s_d` the sample sd of the :math:`d_i`. This is a
one-sided paired z-test of "epoch ``e``'s weights have a lower expected loss than the
reference's" at level :math:`1 - \Phi(k)`: it is scale-free (nats, bits or a score-matching
loss alike) and the bar falls with :math:`1/\sqrt n` as the validation set grows, so slow but
real progress still counts (the gain is measured from the reference, so it accumulates
over epochs until it clears the bar). The paired standard error is the right one: the rows
are the same at every epoch, so the sd of the mean itself (:math:`s_\ell/\sqrt n`, 0.26
nats for gaussian_mixture's 100 rows) measures which rows were drawn, not whether the weights
got better: as the bar it stops that task at epoch 39-64, 0.3-0.5 nats above the loss
training still reaches (``benchmarks/results_defaults.md``, "A minimum gain for a new best").
The default is ``k = 0`` (every new best counts): on the report observations ``k = 0.5``
(a test at level :math:`1 - \Phi(0.5) = 0.31`) holds C2ST within the seed spread on nine
tasks at 1,000 simulations and on eight of nine at 10,000, where it stops gaussian_mixture
at C2ST 0.551 against 0.536 (seed spread 0.012) for 29% less CPU.

Only the patience count uses the rule: the learning rate still decays after epochs without
a new lowest loss and the weights kept are the lowest loss's, so training follows the path
of ``k = 0`` exactly (the rule's validation pass gives the same mean, bit for bit, for a
loss with per-row values) and stops at the same epoch or sooner.

A loss gives per-row values through a ``row_losses(theta, x, **extras) -> (N,)`` method, or
as :class:`~simgen.losses.NPELoss` / :class:`~simgen.losses.NLELoss` (the estimator's own
per-sample loss, which they average). Any other loss (a contrastive ratio loss, whose value
is not a mean over rows) is evaluated in about ``GROUPS`` equal groups of rows and the
groups take the rows' place (each weighted by its size); with fewer than two groups the
standard error is taken as 0, so any gain counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

__all__ = ["GROUPS", "GainTest", "mean_loss", "row_losses", "unit_losses"]

#: Groups of rows a loss without per-row values is evaluated in when the rule is on.
GROUPS = 10

Batch = tuple[Tensor, Tensor, dict[str, Tensor]]


@torch.no_grad()
def mean_loss(loss: nn.Module, parts: Iterable[Batch], chunk: int) -> float:
    """The mean of ``loss`` over the rows of ``parts``, evaluated ``chunk`` rows at a time."""
    total, count = 0.0, 0
    for theta, x, extras in parts:
        for start in range(0, len(theta), chunk):
            part = slice(start, start + chunk)
            rows = {k: v[part] for k, v in extras.items()}
            total += float(loss(theta[part], x[part], **rows)) * len(theta[part])
            count += len(theta[part])
    return total / max(count, 1)


def row_losses(loss: nn.Module) -> Callable[..., Tensor] | None:
    """``(theta, x, **extras) -> (N,)`` per-row losses whose mean is ``loss``, if known."""
    rows = getattr(loss, "row_losses", None)
    if callable(rows):
        return rows
    from .losses.likelihood import NLELoss, NPELoss

    if type(loss) is NPELoss:
        return lambda theta, x: loss.estimator.loss(theta, x)
    if type(loss) is NLELoss:
        return lambda theta, x: loss.estimator.loss(x, theta)
    return None


@torch.no_grad()
def unit_losses(
    loss: nn.Module, parts: Iterable[Batch], chunk: int, group_rows: int
) -> tuple[Tensor, Tensor, float]:
    """Per-row losses (or, for a loss without them, the loss of each group of
    ``group_rows``) in float64, their weights (1, or the group's size) and the mean loss,
    for a loss with per-row values the same float as :func:`mean_loss` gives."""
    rows_of = row_losses(loss)
    size = chunk if rows_of is not None else max(1, min(chunk, group_rows))
    values, weights, total, count = [], [], 0.0, 0
    for theta, x, extras in parts:
        for start in range(0, len(theta), size):
            part = slice(start, start + size)
            rows = {k: v[part] for k, v in extras.items()}
            n = len(theta[part])
            if rows_of is not None:
                value = rows_of(theta[part], x[part], **rows).reshape(n)
                total += float(value.mean()) * n  # as mean_loss: the loss is this mean
                values.append(value.double().cpu())
                weights.append(torch.ones(n, dtype=torch.float64))
            else:
                value = loss(theta[part], x[part], **rows)
                total += float(value) * n
                values.append(value.double().reshape(1).cpu())
                weights.append(torch.full((1,), float(n), dtype=torch.float64))
            count += n
    return torch.cat(values), torch.cat(weights), total / max(count, 1)


class GainTest:
    """The paired minimum-gain test against the last epoch that passed it (module doc)."""

    def __init__(self, k: float):
        self.k = k
        self.reference: Tensor | None = None
        self.last_z = math.nan  # the last epoch's gain over the reference in standard errors

    def __call__(self, values: Tensor, weights: Tensor) -> bool:
        """Whether these per-unit losses restart the patience count (and become the
        reference); the first finite epoch always does."""
        if not bool(torch.isfinite(values).all()):
            return False
        if self.reference is None or len(self.reference) != len(values):
            self.reference, self.last_z = values, math.inf
            return True
        diff = self.reference - values
        total = weights.sum()
        gain = float((weights * diff).sum() / total)
        m = len(values)
        var = (
            float((weights**2 * (diff - gain) ** 2).sum() / total**2) * m / (m - 1)
            if m > 1
            else 0.0
        )
        se = math.sqrt(var)
        self.last_z = gain / se if se > 0 else (math.inf if gain > 0 else -math.inf)
        if gain > 0 and gain > self.k * se:
            self.reference = values
            return True
        return False
