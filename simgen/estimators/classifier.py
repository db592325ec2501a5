r"""A classifier of :math:`(\theta, x)` pairs; its logit is the log likelihood-to-evidence ratio.

.. math:: f_\phi(\theta, x) \approx \log r(\theta, x) = \log \frac{p(x \mid \theta)}{p(x)}
   = \log \frac{p(\theta \mid x)}{p(\theta)},

an MLP on :math:`[\tilde\theta, e(\tilde x)]` where :math:`\tilde\theta, \tilde x` are z-scored
with statistics learned from the training data (stored as buffers) and :math:`e` is the
embedding net (flattening by default). Trained by :mod:`simgen.losses.ratio`.

It speaks the estimators' language (:mod:`simgen.estimators.base`) with NPE's roles: the
*target* is θ (``(D,)`` vectors) and the *context* is x (``(*x_shape)`` arrays, standardised
and embedded), and every method takes them in that order, ``classifier(target, context)``,
``fit_standardization(target, context)``. Files written with the older names of the same
fields (``theta_dim``/``x_shape`` in the spec, ``theta_standardizer``/``x_standardizer`` in
the weights) load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..moments import Chunks, in_chunks
from ..nets import Identity, build_embedding, embedding_spec
from .base import Standardizer, _out_features, fit_standardizers

__all__ = ["RatioClassifier"]


class RatioClassifier(nn.Module):
    """MLP classifier :math:`f_\\phi(\\theta, x)`; ``forward(target, context) -> (*)`` logits.

    Args:
        target_dim: ``D``, the number of parameters θ.
        context_shape: Shape of one observation x.
        embedding_net: Optional embedding of the standardised context.
        hidden_features: Widths of the hidden layers.

    Example:
        >>> clf = RatioClassifier(2, (3,))
        >>> clf(torch.randn(10, 2), torch.randn(10, 3)).shape
        torch.Size([10])
    """

    #: Training options NRE uses unless the caller passes a ``TrainConfig`` or the option
    #: (read by :meth:`simgen.inference.base.Method._config`). With the default 3 x 64
    #: classifier and K = 5 atoms, learning rate 3e-3 is as accurate as a 3 x 128
    #: classifier with K = 5 (C2ST two_moons 0.652 vs 0.642, slcp 0.894 vs 0.895) and with
    #: K = 10 (0.634, 0.887), in 1/2-1/3 of the CPU time (3 seeds on the same simulations,
    #: ``benchmarks/results_nle_nre.md``, the NRE tables).
    train_defaults: ClassVar[dict[str, Any]] = {"learning_rate": 3e-3}
    #: Older names of the same fields, read from files that use them.
    LEGACY_SPEC_KEYS: ClassVar[dict[str, str]] = {
        "theta_dim": "target_dim",
        "x_shape": "context_shape",
    }
    LEGACY_STATE_PREFIXES: ClassVar[dict[str, str]] = {
        "theta_standardizer.": "target_standardizer.",
        "x_standardizer.": "context_standardizer.",
    }

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (64, 64, 64),
    ):
        super().__init__()
        self.target_dim = int(target_dim)
        self.context_shape = tuple(int(s) for s in context_shape)
        self.embedding = (
            embedding_net if embedding_net is not None else Identity(self.context_shape)
        )
        self.target_standardizer = Standardizer((self.target_dim,))
        self.context_standardizer = Standardizer(self.context_shape)
        self.options: dict[str, Any] = {"hidden_features": list(hidden_features)}
        layers: list[nn.Module] = []
        width = self.target_dim + _out_features(self.embedding, self.context_shape)
        for h in hidden_features:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def fit_standardization(self, target: Tensor, context: Tensor) -> None:
        """Learn the z-scoring from the training data (called once, before training)."""
        self.fit_standardization_chunks(in_chunks(target, context))

    def fit_standardization_chunks(self, chunks: Chunks) -> None:
        """The same from data in chunks (:mod:`simgen.streaming`)."""
        fit_standardizers(self.target_standardizer, self.context_standardizer, chunks)

    def embed(self, context: Tensor) -> Tensor:
        """Standardise and embed ``(*batch, *context_shape)`` → ``(*batch, F)``."""
        batch = context.shape[: context.ndim - len(self.context_shape)]
        flat = self.context_standardizer(context).reshape(-1, *self.context_shape)
        return self.embedding(flat).reshape(*batch, -1)

    def forward(self, target: Tensor, context: Tensor) -> Tensor:
        """Logits for θ ``target`` ``(*, D)`` and x ``context`` ``(*, *context_shape)``
        (broadcast against each other) → ``(*)``."""
        t, e = self.target_standardizer(target), self.embed(context)
        shape = torch.broadcast_shapes(t.shape[:-1], e.shape[:-1])
        t = t.expand(*shape, t.shape[-1])
        e = e.expand(*shape, e.shape[-1])
        return self.net(torch.cat([t, e], -1))[..., 0]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Weights saved under the older standardizer names load into the current ones.
        for old, new in self.LEGACY_STATE_PREFIXES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_spec` rebuilds the (untrained) module."""
        return {
            "name": "ratio_classifier",
            "target_dim": self.target_dim,
            "context_shape": list(self.context_shape),
            "embedding": embedding_spec(self.embedding),
            "options": dict(self.options),
        }

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], embedding_net: nn.Module | None = None
    ) -> RatioClassifier:
        spec = {cls.LEGACY_SPEC_KEYS.get(k, k): v for k, v in spec.items()}
        embedding = build_embedding(spec["embedding"], custom=embedding_net)
        return cls(spec["target_dim"], spec["context_shape"], embedding, **spec["options"])
