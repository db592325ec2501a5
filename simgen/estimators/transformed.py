r"""Discrete and positive data for likelihood estimation: dequantisation and log columns.

A flow puts a *density* on the reals. Two kinds of simulator output break that:

* **Counts** (integer-valued columns: cases in an epidemic, hits in a detector). A density
  fitted to integers can pile up without bound on them, and its samples fall between them.
  Uniform dequantisation (Uria et al., 2013; Theis et al., 2016) models instead the
  continuous :math:`v = x + u`, :math:`u \sim \mathcal U[0, 1)^{d}` on those columns, whose
  density :math:`q_v` gives the probability mass of :math:`x` as
  :math:`P(x) = \int_{[0,1)^d} q_v(x + u)\,du`. Training on fresh :math:`u` every step
  maximises a lower bound on :math:`\log P(x)` (Jensen); samples are
  :math:`x = \lfloor v \rfloor`, exactly integer; and :math:`\log P(x)` is evaluated by the
  midpoint rule, :math:`\log q_v(x + \tfrac12)`, which is what MCMC on an NLE posterior uses.
* **Positive, heavy-tailed columns** (populations, energies). The flow models
  :math:`y = \log v` on those columns, and the density of :math:`v` follows by the change of
  variables, :math:`\log q_v(v) = \log q_y(\log v) - \sum_{j \in \text{log}} \log v_j`.
  Counts that are also logged use :math:`\log(x + u)`, finite at :math:`x = 0`.

:class:`TransformedEstimator` wraps any estimator of the target with these per-column maps;
the column choices are buffers and spec fields, so saved models keep them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import ConfigError, SupportError
from ..moments import Chunks
from .base import DensityEstimator

__all__ = ["TransformedEstimator", "integer_columns"]


def integer_columns(data: Tensor | Iterable[Tensor]) -> list[int]:
    """Columns of ``data`` ``(N, F)`` (or of its chunks, an iterable of ``(n, F)``) whose
    values are all integers (and not all equal)."""
    whole = varies = first = None
    for chunk in [data] if isinstance(data, Tensor) else data:
        first = chunk[:1] if first is None else first
        w, v = (chunk == chunk.round()).all(0), (chunk != first).any(0)
        whole, varies = (w, v) if whole is None else (whole & w, varies | v)
    if whole is None:
        return []
    return [int(i) for i in torch.nonzero(whole & varies).flatten()]


class _TransformedDistribution(Distribution):
    """``q(v | context)`` from the wrapped ``q(y | context)``; see the module docstring."""

    arg_constraints: dict[str, constraints.Constraint] = {}

    def __init__(self, inner: Distribution, owner: TransformedEstimator):
        self.inner, self.owner = inner, owner
        super().__init__(inner.batch_shape, inner.event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        y, log_det = self.owner.to_model(value, midpoint=True)
        return self.inner.log_prob(y) + log_det

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.owner.from_model(self.inner.sample(torch.Size(sample_shape)))


class TransformedEstimator(DensityEstimator):
    r"""An estimator of a target with integer and/or log-modelled columns.

    Args:
        inner: The estimator of the transformed target :math:`y` (a flow for NLE).
        integer_columns: Columns dequantised (counts); see the module docstring.
        log_columns: Columns modelled as :math:`\log` (must be positive, or non-negative
            counts).

    ``log_prob`` is the midpoint-rule estimate of the mass on integer columns times the
    density on the others; ``draw`` returns exact integers on integer columns.

    Example:
        >>> est = TransformedEstimator(build_estimator("maf", 3, (2,)), [0], [0, 1])
    """

    name = "transformed"

    def __init__(
        self,
        inner: DensityEstimator,
        integer_columns: Sequence[int] = (),
        log_columns: Sequence[int] = (),
    ):
        # The inner estimator z-scores and embeds; this wrapper only maps columns, so it
        # skips the base initialiser's standardisers and embedding.
        nn.Module.__init__(self)
        self.inner = inner
        self.target_dim, self.context_shape = inner.target_dim, inner.context_shape
        self.context_features = inner.context_features
        self.options: dict[str, Any] = {}
        self.exact_density = False  # midpoint rule on integer columns
        for label, columns in (("integer_columns", integer_columns), ("log_columns", log_columns)):
            bad = [c for c in columns if not (isinstance(c, int) and 0 <= c < self.target_dim)]
            if bad:
                raise ConfigError(
                    f"{label} {list(columns)} must be column indices in [0, {self.target_dim})."
                )
            mask = torch.zeros(self.target_dim, dtype=torch.bool)
            mask[list(columns)] = True
            self.register_buffer(label.replace("_columns", "_mask"), mask)

    @property
    def integer_columns(self) -> list[int]:
        return torch.nonzero(self.integer_mask).flatten().tolist()

    @property
    def log_columns(self) -> list[int]:
        return torch.nonzero(self.log_mask).flatten().tolist()

    # -- the column maps ---------------------------------------------------------------
    def to_model(self, target: Tensor, midpoint: bool) -> tuple[Tensor, Tensor]:
        r"""``(y, log_det)``: :math:`v` = ``target`` dequantised (midpoint :math:`\lfloor x\rfloor
        + \frac12`, or :math:`x + u` with fresh uniforms), :math:`y` = ``v`` with logs taken,
        and :math:`-\sum_{\log} \log v`, the log-Jacobian from :math:`y` back to :math:`v`.
        Values that a log column cannot take get :math:`-\infty` density."""
        v = target
        if bool(self.integer_mask.any()):
            offset = torch.full_like(target, 0.5) if midpoint else torch.rand_like(target)
            base = torch.floor(target) if midpoint else target
            v = torch.where(self.integer_mask, base + offset, target)
        if not bool(self.log_mask.any()):
            return v, torch.zeros(v.shape[:-1], dtype=v.dtype, device=v.device)
        positive = torch.where(self.log_mask, v, torch.ones_like(v))
        valid = (positive > 0).all(-1)
        logs = torch.log(positive.clamp(min=torch.finfo(v.dtype).tiny))
        y = torch.where(self.log_mask, logs, v)
        log_det = -logs.masked_fill(~self.log_mask, 0.0).sum(-1)
        return y, torch.where(valid, log_det, torch.full_like(log_det, -torch.inf))

    def from_model(self, y: Tensor) -> Tensor:
        """Samples ``y`` of the inner estimator back to data: exp on log columns, floor on
        integer columns."""
        v = torch.where(self.log_mask, torch.exp(y), y)
        return torch.where(self.integer_mask, torch.floor(v), v)

    def check_data(self, target: Tensor, what: str = "x") -> None:
        """Raise :class:`SupportError` if a log column of ``target`` is not positive (counts:
        negative); ``what`` names it in the message (NLE's target is x)."""
        if not bool(self.log_mask.any()):
            return
        floor = torch.where(self.integer_mask, 0.0, torch.finfo(target.dtype).tiny)
        bad = self.log_mask & (target < floor).reshape(-1, self.target_dim).any(0)
        if bool(bad.any()):
            cols = torch.nonzero(bad).flatten().tolist()
            raise SupportError(
                f"{what} has non-positive values in column(s) {cols}, which are modelled on "
                "the log scale (log_x). Drop those columns from log_x, or shift the data."
            )

    # -- the estimator interface ------------------------------------------------------
    def fit_standardization_chunks(self, chunks: Chunks) -> None:
        def mapped() -> Iterator[tuple[Tensor, Tensor]]:
            for target, context in chunks():
                self.check_data(target)
                yield self.to_model(target, midpoint=True)[0], context

        self.inner.fit_standardization_chunks(mapped)

    def forward(self, context: Tensor) -> Distribution:
        return _TransformedDistribution(self.inner(context), self)

    def draw(self, num: int, context: Tensor) -> Tensor:
        return self.from_model(self.inner.draw(num, context))

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        """The inner loss on :math:`y` minus the log-Jacobian: for a flow, the negative
        log-density of :math:`v`; fresh dequantisation noise in training mode, the midpoint
        in evaluation (validation) mode."""
        y, log_det = self.to_model(target, midpoint=not self.training)
        return self.inner.loss(y, context) - log_det

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner": self.inner.spec,
            "integer_columns": self.integer_columns,
            "log_columns": self.log_columns,
        }

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], embedding_net: nn.Module | None = None
    ) -> TransformedEstimator:
        from .registry import from_spec

        inner = from_spec(spec["inner"], embedding_net)
        return cls(inner, spec["integer_columns"], spec["log_columns"])  # type: ignore[arg-type]
