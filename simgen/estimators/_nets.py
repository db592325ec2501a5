r"""Pieces shared by the generative families: small MLPs, time embeddings, a distribution base.

The families (flow matching, diffusion, consistency, VAE, GAN) all model the *standardised*
target :math:`\tilde\theta = (\theta - \mu_\theta)/\sigma_\theta` given the embedded context
:math:`c`. :class:`GenerativeDistribution` does the bookkeeping once: it broadcasts the context
against ``sample_shape``, flattens everything to ``(M, D)`` rows for one vectorised network
call, maps samples back with :math:`\theta = \mu_\theta + \sigma_\theta \tilde\theta`, and adds
the affine Jacobian :math:`-\sum_i \log\sigma_{\theta,i}` to densities.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import NoDensityError
from .base import Standardizer

__all__ = ["mlp", "TimeEmbedding", "ConditionalNet", "GenerativeDistribution"]


def mlp(in_features: int, out_features: int, hidden_features: Sequence[int]) -> nn.Sequential:
    """``Linear → SiLU → ... → Linear``."""
    layers: list[nn.Module] = []
    for width in hidden_features:
        layers += [nn.Linear(in_features, width), nn.SiLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class TimeEmbedding(nn.Module):
    r"""Sinusoidal features :math:`[\sin(2\pi\omega_k t), \cos(2\pi\omega_k t)]_k` of a time.

    The frequencies are fixed and log-spaced in :math:`[1, 2^{K-1}]`, enough to resolve
    :math:`t \in [0, 1]` (callers rescale other ranges, e.g. :math:`\log\sigma/4`).
    """

    def __init__(self, features: int = 16):
        super().__init__()
        half = max(features // 2, 1)
        self.register_buffer("freqs", 2.0 ** torch.arange(half) * math.pi, persistent=False)
        self.features = 2 * half

    def forward(self, t: Tensor) -> Tensor:
        arg = t[..., None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ConditionalNet(nn.Module):
    r"""MLP on :math:`[y, \mathrm{emb}(t), c]` → ``out_features`` (velocity, noise, denoiser).

    Args:
        in_features: Size of ``y``.
        context_features: Size of the context features ``c``.
        out_features: Output size.
        hidden_features: Hidden widths.
        time_features: Size of the sinusoidal time embedding.
        context_dropout: Training probability of replacing ``c`` by a learned null vector, so
            the same network also learns the unconditional field (needed for guidance).
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (128, 128, 128),
        time_features: int = 16,
        context_dropout: float = 0.0,
    ):
        super().__init__()
        self.time = TimeEmbedding(time_features)
        self.net = mlp(
            in_features + self.time.features + context_features, out_features, hidden_features
        )
        self.context_dropout = float(context_dropout)
        self.null = nn.Parameter(torch.zeros(context_features)) if context_dropout > 0 else None

    def forward(self, y: Tensor, t: Tensor, c: Tensor, unconditional: bool = False) -> Tensor:
        if self.null is not None:
            if unconditional:
                c = self.null.expand_as(c)
            elif self.training:
                drop = torch.rand(c.shape[:-1] + (1,), device=c.device) < self.context_dropout
                c = torch.where(drop, self.null.expand_as(c), c)
        t = t.expand(y.shape[:-1]) if t.ndim == 0 else t
        return self.net(torch.cat([y, self.time(t), c], dim=-1))


class GenerativeDistribution(Distribution, abc.ABC):
    r"""Base of the families' distributions over :math:`\theta` given context features.

    Subclasses implement :meth:`sample_standard` (and, for densities,
    :meth:`log_prob_standard`) on flat rows ``(M, D)`` / ``(M, F)`` in standardised space.

    Args:
        features: Context features ``(*batch, F)``.
        standardizer: The estimator's target standardizer.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, features: Tensor, standardizer: Standardizer):
        self.features = features
        self.loc, self.scale = standardizer.loc, standardizer.scale
        super().__init__(
            batch_shape=features.shape[:-1],
            event_shape=standardizer.loc.shape,
            validate_args=False,
        )

    @abc.abstractmethod
    def sample_standard(self, c: Tensor) -> Tensor:
        """One standardised sample ``(M, D)`` per row of ``c`` ``(M, F)``."""

    def log_prob_standard(self, y: Tensor, c: Tensor) -> Tensor:
        """Log-density ``(M,)`` of standardised rows ``y`` ``(M, D)`` given ``c``."""
        raise NoDensityError(
            f"{type(self).__name__} is sample-only and has no density; use a family with one "
            "('nsf', 'maf', 'realnvp', 'flow_matching', 'diffusion', or 'vae' for an estimate)."
        )

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        c = self.features.expand(shape + self.features.shape[-1:]).reshape(
            -1, self.features.shape[-1]
        )
        with torch.no_grad():
            y = self.sample_standard(c)
        return (y * self.scale + self.loc).reshape(shape + self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        y = ((value - self.loc) / self.scale).expand(shape + self.event_shape)
        c = self.features.expand(shape + self.features.shape[-1:])
        logp = self.log_prob_standard(y.reshape(-1, y.shape[-1]), c.reshape(-1, c.shape[-1]))
        return logp.reshape(shape) - self.scale.log().sum()


def standard_normal_log_prob(y: Tensor) -> Tensor:
    """:math:`\\log\\mathcal N(y; 0, I)` summed over the last axis."""
    return -0.5 * (y.square().sum(-1) + y.shape[-1] * math.log(2 * math.pi))
