r"""A classifier of :math:`(\theta, x)` pairs; its logit is the log likelihood-to-evidence ratio.

.. math:: f_\phi(\theta, x) \approx \log r(\theta, x) = \log \frac{p(x \mid \theta)}{p(x)}
   = \log \frac{p(\theta \mid x)}{p(\theta)},

an MLP on :math:`[\tilde\theta, e(\tilde x)]` where :math:`\tilde\theta, \tilde x` are z-scored
with statistics learned from the training data (stored as buffers) and :math:`e` is the
embedding net (flattening by default). Trained by :mod:`simgen.losses.ratio`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nets import Identity, build_embedding, embedding_spec
from .base import Standardizer, _out_features

__all__ = ["RatioClassifier"]


class RatioClassifier(nn.Module):
    """MLP classifier :math:`f_\\phi(\\theta, x)`; ``forward(theta, x) -> (*)`` logits.

    Args:
        theta_dim: ``D``.
        x_shape: Shape of one observation.
        embedding_net: Optional embedding of the standardised x.
        hidden_features: Widths of the hidden layers.

    Example:
        >>> clf = RatioClassifier(2, (3,))
        >>> clf(torch.randn(10, 2), torch.randn(10, 3)).shape
        torch.Size([10])
    """

    def __init__(
        self,
        theta_dim: int,
        x_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (64, 64, 64),
    ):
        super().__init__()
        self.theta_dim = int(theta_dim)
        self.x_shape = tuple(int(s) for s in x_shape)
        self.embedding = embedding_net if embedding_net is not None else Identity(self.x_shape)
        self.theta_standardizer = Standardizer((self.theta_dim,))
        self.x_standardizer = Standardizer(self.x_shape)
        self.options: dict[str, Any] = {"hidden_features": list(hidden_features)}
        layers: list[nn.Module] = []
        width = self.theta_dim + _out_features(self.embedding, self.x_shape)
        for h in hidden_features:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """Learn the z-scoring from the training data (called once, before training)."""
        self.theta_standardizer.fit(theta)
        self.x_standardizer.fit(x)

    def embed(self, x: Tensor) -> Tensor:
        """Standardise and embed ``(*batch, *x_shape)`` → ``(*batch, F)``."""
        batch = x.shape[: x.ndim - len(self.x_shape)]
        flat = self.x_standardizer(x).reshape(-1, *self.x_shape)
        return self.embedding(flat).reshape(*batch, -1)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits for ``theta`` ``(*, D)`` and ``x`` ``(*, *x_shape)`` (broadcast) → ``(*)``."""
        t, e = self.theta_standardizer(theta), self.embed(x)
        shape = torch.broadcast_shapes(t.shape[:-1], e.shape[:-1])
        t = t.expand(*shape, t.shape[-1])
        e = e.expand(*shape, e.shape[-1])
        return self.net(torch.cat([t, e], -1))[..., 0]

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_spec` rebuilds the (untrained) module."""
        return {
            "name": "ratio_classifier",
            "theta_dim": self.theta_dim,
            "x_shape": list(self.x_shape),
            "embedding": embedding_spec(self.embedding),
            "options": dict(self.options),
        }

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], embedding_net: nn.Module | None = None
    ) -> RatioClassifier:
        embedding = build_embedding(spec["embedding"], custom=embedding_net)
        return cls(spec["theta_dim"], spec["x_shape"], embedding, **spec["options"])
