r"""What every conditional estimator shares: z-scoring, the embedding of the context, a spec.

A conditional estimator models a distribution over a *target* (``(D,)`` vectors) given a
*context* (``(*context_shape)`` arrays): :math:`q_\phi(\theta \mid x)` for NPE (target θ,
context x), :math:`q_\phi(x \mid \theta)` for NLE (target x, context θ). Estimators speak
only of target and context, in signatures and in specs (``target_dim``,
``context_shape``); the methods speak of θ and x. ``estimator(context)`` returns a
:class:`torch.distributions.Distribution` with batch shape
``context.shape[:-len(context_shape)]`` and event shape ``(D,)``.

z-scoring is learned from the training data and stored in buffers (so it is saved with the
weights): the context is standardised elementwise, :math:`\tilde x = (x - \mu_x)/\sigma_x`,
and each family models the standardised target :math:`\tilde\theta = (\theta -
\mu_\theta)/\sigma_\theta`, mapping back with the exact affine Jacobian
:math:`-\sum_i \log\sigma_{\theta,i}` in the density.

Two kinds, told apart by type: :class:`DensityEstimator` (``log_prob`` exact or a stated
estimate) and :class:`SampleOnlyEstimator` (GANs: ``log_prob`` raises
:class:`~simgen.errors.NoDensityError`).
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ..moments import Chunks, Moments, in_chunks
from ..nets import Identity, build_embedding, embedding_spec

__all__ = ["Standardizer", "ConditionalEstimator", "DensityEstimator", "SampleOnlyEstimator"]

_MIN_SCALE = 1e-6


class Standardizer(nn.Module):
    """Elementwise z-scoring with statistics stored as buffers."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.register_buffer("loc", torch.zeros(tuple(shape)))
        self.register_buffer("scale", torch.ones(tuple(shape)))

    def fit(self, data: Tensor) -> None:
        """Set the statistics from ``data`` of shape ``(N, *shape)``."""
        self.fit_moments(Moments.of(data))

    @torch.no_grad()
    def fit_moments(self, moments: Moments) -> None:
        """Set the statistics from :class:`~simgen.streaming.Moments` of the data (a scale
        below ``1e-6``, a constant entry, stays 1)."""
        scale = moments.std.to(self.scale)
        self.loc.copy_(moments.mean)
        self.scale.copy_(torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale)))

    def forward(self, data: Tensor) -> Tensor:
        return (data - self.loc) / self.scale

    def inverse(self, data: Tensor) -> Tensor:
        return data * self.scale + self.loc


class ConditionalEstimator(nn.Module, abc.ABC):
    """Base of every estimator: standardises and embeds the context; knows its spec.

    Args:
        target_dim: ``D``, the size of the modelled vector.
        context_shape: Shape of one context (``x_shape`` for NPE).
        embedding_net: Maps standardised contexts ``(*batch, *context_shape)`` to
            ``(*batch, F)``; needs an ``out_features`` attribute, else it is probed.
            Defaults to flattening.
    """

    #: The registry name (``"nsf"``, ``"flow_matching"``, ...), set by each family.
    name: str = ""
    #: Training options this family trains best with (measured), used where the caller
    #: passes neither a ``TrainConfig`` nor the option itself; read by
    #: :meth:`simgen.inference.base.Method._config` for NPE and NLE alike.
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: How NPE keeps a bounded prior's support with this family (``NPE(support=None)``):
    #: ``"transform"`` or ``"reject"`` (see :mod:`simgen.posterior`).
    npe_support: ClassVar[str] = "transform"
    #: Values of options added after a family's first saved models, for specs that lack them.
    LEGACY_OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, target_dim: int, context_shape: Sequence[int], embedding_net: nn.Module | None = None
    ):
        super().__init__()
        self.target_dim = int(target_dim)
        self.context_shape = tuple(int(s) for s in context_shape)
        self.embedding = (
            embedding_net if embedding_net is not None else Identity(self.context_shape)
        )
        self.context_features = _out_features(self.embedding, self.context_shape)
        self.target_standardizer = Standardizer((self.target_dim,))
        self.context_standardizer = Standardizer(self.context_shape)
        self.options: dict[str, Any] = {}

    @classmethod
    def option_names(cls) -> list[str]:
        """The family's options: its constructor's keywords after ``embedding_net``."""
        skip = {"self", "target_dim", "context_shape", "embedding_net"}
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.kind in kinds and p.name not in skip)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise :class:`~simgen.errors.ConfigError` naming any option the family lacks."""
        valid = cls.option_names()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(
                f"Estimator {cls.name!r} has no option(s) {unknown}; its options are {valid}."
            )

    def fit_standardization(self, target: Tensor, context: Tensor) -> None:
        """Learn the z-scoring from the training data (called once, before training)."""
        self.fit_standardization_chunks(in_chunks(target, context))

    def fit_standardization_chunks(self, chunks: Chunks) -> None:
        """The same from data in chunks (:mod:`simgen.streaming`: a bank read in passes);
        families with more data-dependent set-up extend this one method."""
        fit_standardizers(self.target_standardizer, self.context_standardizer, chunks)

    def embed(self, context: Tensor) -> Tensor:
        """Standardise and embed: ``(*batch, *context_shape) -> (*batch, F)``."""
        nd = len(self.context_shape)
        batch = context.shape[: context.ndim - nd]
        flat = self.context_standardizer(context).reshape(-1, *self.context_shape)
        return self.embedding(flat).reshape(*batch, -1)

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description from which :func:`~simgen.estimators.from_spec` rebuilds it."""
        return {
            "name": self.name,
            "target_dim": self.target_dim,
            "context_shape": list(self.context_shape),
            "embedding": embedding_spec(self.embedding),
            "options": dict(self.options),
        }

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], embedding_net: nn.Module | None = None
    ) -> ConditionalEstimator:
        """Rebuild from a spec; options missing from older specs take their old values
        (:attr:`LEGACY_OPTIONS`), so a saved model behaves as it did when it was saved."""
        embedding = build_embedding(spec["embedding"], custom=embedding_net)
        options = {**cls.LEGACY_OPTIONS, **spec["options"]}
        return cls(spec["target_dim"], spec["context_shape"], embedding, **options)

    @abc.abstractmethod
    def forward(self, context: Tensor) -> Distribution:
        """The distribution over the target given ``context`` (``(*batch, *context_shape)``)."""

    def draw(self, num: int, context: Tensor) -> Tensor:
        """``num`` samples for each of ``B`` contexts (``(B, *context_shape)``): ``(num, B, D)``.

        The generic path samples ``self(context)``; families with a faster sampler override it.
        """
        return self(context).sample((num,))

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        """Per-sample training loss, shape ``(N,)``; by default the negative log-density.

        Families trained otherwise (score matching, flow matching, ELBO, adversarial)
        override it; the losses in :mod:`simgen.losses` average it.
        """
        return -self(context).log_prob(target)


class DensityEstimator(ConditionalEstimator):
    """An estimator whose distribution has ``log_prob`` (exact, or an estimate it documents)."""

    #: True when ``log_prob`` is exact; False when it is an estimate or bound (VAE).
    exact_density: bool = True


class SampleOnlyEstimator(ConditionalEstimator):
    """An estimator that can sample but has no density (``log_prob`` raises)."""


def fit_standardizers(target: Standardizer, context: Standardizer, chunks: Chunks) -> None:
    """Fit both standardisers in one pass over ``chunks`` of ``(target, context)``."""
    target_moments, context_moments = Moments(), Moments()
    for target_rows, context_rows in chunks():
        target_moments.update(target_rows)
        context_moments.update(context_rows)
    target.fit_moments(target_moments)
    context.fit_moments(context_moments)


def _out_features(net: nn.Module, context_shape: tuple[int, ...]) -> int:
    out = getattr(net, "out_features", None)
    if isinstance(out, int):
        return out
    with torch.no_grad():
        return int(net(torch.zeros(2, *context_shape)).reshape(2, -1).shape[1])
