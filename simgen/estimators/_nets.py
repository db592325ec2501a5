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
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import ConfigError, NoDensityError
from .base import Standardizer

__all__ = [
    "mlp",
    "TimeEmbedding",
    "NetConfig",
    "ConditionalNet",
    "GenerativeDistribution",
    "LossNoise",
]

#: Rows (data rows x repeats) over which an evaluation-mode loss averages its fixed noise.
VALIDATION_ROWS = 1024


class LossNoise:
    r"""Source of the random times and noises in a family's Monte-Carlo loss.

    In training mode it is the global RNG with ``repeats`` draws per row (averaged by
    :meth:`reduce`: a lower-variance gradient for the same data). In evaluation mode (the
    training loop's validation pass) it repeats each row :math:`K = \lceil 1024 / N\rceil`
    times and draws from a generator seeded afresh at every call, and :meth:`reduce` averages
    the :math:`K` copies. The validation loss is then a deterministic function of the weights
    with a standard error about :math:`\sqrt K` times smaller, so early stopping compares
    weights, not noise draws: with 100 validation rows a one-draw denoising or flow-matching
    loss fluctuates by more than the improvement between epochs, stops training after too few
    steps and keeps a noise-favoured epoch.
    """

    def __init__(self, training: bool, rows: int, device: torch.device, repeats: int = 1):
        self.k = repeats if training else max(repeats, -(-VALIDATION_ROWS // max(rows, 1)))
        self.generator = None
        if not training:
            self.generator = torch.Generator(device=device).manual_seed(0)
        self.device = device

    def repeat(self, tensor: Tensor) -> Tensor:
        """``tensor`` ``(N, ...)`` stacked ``K`` times along the first axis."""
        return tensor if self.k == 1 else tensor.repeat(self.k, *[1] * (tensor.ndim - 1))

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def randint(self, high: int, *shape: int) -> Tensor:
        return torch.randint(0, high, shape, generator=self.generator, device=self.device)

    def reduce(self, per_row: Tensor) -> Tensor:
        """Average a ``(K N,)`` loss back to ``(N,)``."""
        return per_row if self.k == 1 else per_row.reshape(self.k, -1).mean(0)


def mlp(in_features: int, out_features: int, hidden_features: Sequence[int]) -> nn.Sequential:
    """``Linear → SiLU → ... → Linear``."""
    layers: list[nn.Module] = []
    for width in hidden_features:
        layers += [nn.Linear(in_features, width), nn.SiLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class TimeEmbedding(nn.Module):
    r"""Fourier features :math:`[\sin(2\pi\omega_k t), \cos(2\pi\omega_k t)]_k` of a time.

    ``kind="sinusoidal"``: fixed frequencies :math:`\omega_k = 2^{k-1}`, log-spaced in
    :math:`[1/2, 2^{K-2}]`, enough to resolve :math:`t \in [0, 1]` (callers rescale other
    ranges, e.g. :math:`\log\sigma/4`). ``kind="fourier"``: Gaussian random features
    :math:`\omega_k \sim \mathcal N(0, s^2)` with ``scale`` :math:`s` (Tancik et al. 2020),
    trained with the network; they are drawn at construction and saved with the weights.
    """

    def __init__(self, features: int = 16, kind: str = "sinusoidal", scale: float = 30.0):
        super().__init__()
        half = max(features // 2, 1)
        self.features = 2 * half
        if kind == "sinusoidal":
            self.register_buffer("freqs", 2.0 ** torch.arange(half) * math.pi, persistent=False)
        elif kind == "fourier":
            self.freqs = nn.Parameter(torch.randn(half) * (2 * math.pi * scale))
        else:
            raise ConfigError(f"time_embedding must be 'sinusoidal' or 'fourier', got {kind!r}.")

    def forward(self, t: Tensor) -> Tensor:
        arg = t[..., None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


ARCHITECTURES = ("resnet", "mlp")
TIME_EMBEDDINGS = ("sinusoidal", "fourier")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class NetConfig:
    """Validated options of a :class:`ConditionalNet`, shared by flow matching and diffusion.

    The defaults are the vector-field families' (``benchmarks/results_families.md``): the
    layer-normed residual net of width 64 with trained Fourier time features is what made
    flow matching accurate on two_moons, and diffusion measured the same net as better than
    a plain MLP of width 128 (``benchmarks/results_seeds.md``).

    Attributes:
        hidden_features: Hidden widths (equal widths for ``"resnet"``).
        time_features: Size of the time embedding.
        architecture: ``"resnet"`` or ``"mlp"`` (see :class:`ConditionalNet`).
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (see :class:`TimeEmbedding`).
        context_dropout: Training probability of dropping the context, in [0, 1) (needed
            for classifier-free guidance).
    """

    hidden_features: tuple[int, ...] = (64, 64, 64)
    time_features: int = 32
    architecture: str = "resnet"
    time_embedding: str = "fourier"
    context_dropout: float = 0.0

    def __post_init__(self) -> None:
        widths = self.hidden_features
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise ConfigError(f"hidden_features must be a list of widths, got {widths!r}.")
        object.__setattr__(self, "hidden_features", tuple(widths))
        if not widths:
            raise ConfigError("hidden_features must list at least one width.")
        if not all(_positive_int(w) for w in widths):
            raise ConfigError(f"hidden_features must be positive integers, got {list(widths)}.")
        if not _positive_int(self.time_features):
            raise ConfigError(
                f"time_features must be a positive integer, got {self.time_features!r}."
            )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}."
            )
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ConfigError(
                f"time_embedding must be 'sinusoidal' or 'fourier', got {self.time_embedding!r}."
            )
        if self.architecture == "resnet" and any(w != widths[0] for w in widths):
            raise ConfigError(
                f"architecture='resnet' needs equal hidden widths, got {list(widths)}."
            )
        p = self.context_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"context_dropout must be in [0, 1), got {p!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-able keywords (``hidden_features`` as a list)."""
        return {**asdict(self), "hidden_features": list(self.hidden_features)}

    def build(self, in_features: int, context_features: int, out_features: int) -> ConditionalNet:
        """The network :math:`f(y, t, c)` these options describe."""
        return ConditionalNet(in_features, context_features, out_features, **asdict(self))


class ConditionalNet(nn.Module):
    r"""Network :math:`f(y, t, c)` → ``out_features`` (a velocity, noise or denoiser).

    ``architecture="resnet"`` (the default): :math:`y` and :math:`c` are embedded apart and
    merged, the time enters every block, and each block is residual with a layer norm:

    .. math::
        h_0 &= \phi\big(M_y\,\phi(W_y y + b_y) + M_c\,\phi(W_c c + b_c) + b_0\big), \qquad
        e = W_t\,\mathrm{emb}(t) + b_t, \\
        h_{k+1} &= \mathrm{LN}_k\big(h_k + \phi(A_k h_k + a_k) + e\big), \qquad
        f = W_o h_K + b_o,

    with :math:`\phi` = SiLU and a zero-initialised output layer (training starts from the
    zero field). ``hidden_features`` lists the block widths, which must be equal. This is the
    shape of sbi's vector-field MLP; on two_moons the layer norm and the separate input
    embeddings are what make flow matching accurate (``benchmarks/results_families.md``).

    ``architecture="mlp"``: a plain MLP on :math:`[y, \mathrm{emb}(t), c]`.

    Both split off the context's contribution (:meth:`condition`), so a sampler that calls
    the network many times on the same contexts computes it once
    (:meth:`forward_conditioned`).

    Args:
        in_features: Size of ``y``.
        context_features: Size of the context features ``c``.
        out_features: Output size.
        hidden_features, time_features, context_dropout, architecture, time_embedding:
            See :class:`NetConfig`, which validates them.
    """

    def __init__(
        self,
        in_features: int,
        context_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (128, 128, 128),
        time_features: int = 16,
        context_dropout: float = 0.0,
        architecture: str = "resnet",
        time_embedding: str = "sinusoidal",
    ):
        super().__init__()
        NetConfig(hidden_features, time_features, architecture, time_embedding, context_dropout)
        self.architecture = architecture
        self.time = TimeEmbedding(time_features, time_embedding)
        if architecture == "mlp":
            total_in = in_features + self.time.features + context_features
            self.net = mlp(total_in, out_features, hidden_features)
        else:
            width = hidden_features[0]
            self.embed_y = nn.Linear(in_features, width)
            self.embed_c = nn.Linear(context_features, width)
            self.merge = nn.Linear(2 * width, width)
            self.embed_t = nn.Linear(self.time.features, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in hidden_features)
            self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in hidden_features)
            self.out = nn.Linear(width, out_features)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

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
        if self.architecture == "mlp":
            return self.net(torch.cat([y, self.time(t), c], dim=-1))
        return self.forward_conditioned(y, t, self.condition(c))

    def condition(self, c: Tensor, unconditional: bool = False) -> Tensor:
        r"""The context's share of the first layer, ``(M, H)``.

        ``"resnet"``: :math:`M_c\,\phi(W_c c + b_c) + b_0`. ``"mlp"``: the first layer is
        affine in :math:`[y, \mathrm{emb}(t), c]`, so it splits as
        :math:`W_y y + W_t\,\mathrm{emb}(t) + (W_c c + b)` and this is the last term.
        """
        if unconditional and self.null is not None:
            c = self.null.expand_as(c)
        if self.architecture == "mlp":
            first = self.net[0]
            start = first.in_features - c.shape[-1]
            return nn.functional.linear(c, first.weight[:, start:], first.bias)
        width = self.embed_c.out_features
        act = nn.functional.silu(self.embed_c(c))
        return nn.functional.linear(act, self.merge.weight[:, width:], self.merge.bias)

    def forward_conditioned(self, y: Tensor, t: Tensor, h: Tensor) -> Tensor:
        """The network given ``h = condition(c)``.

        Args:
            y: ``(S, B, D)`` points (or ``(B, D)``, or rows ``(M, D)`` with ``h`` ``(M, H)``).
            t: A scalar time (embedded once for all rows) or one time per row of ``y``.
            h: ``(B, H)`` context terms, broadcast over ``S``.
        """
        act = nn.functional.silu
        if self.architecture == "mlp":
            first = self.net[0]
            d, w, emb = y.shape[-1], first.weight, self.time(t)
            shift = h + nn.functional.linear(emb, w[:, d : d + self.time.features])
            if shift.ndim == 2 and shift.shape[0] == 1:  # one context: a fused addmm
                hidden = nn.functional.linear(y, w[:, :d], shift[0])
            else:
                hidden = nn.functional.linear(y, w[:, :d]) + shift
            for layer in self.net[1:]:
                hidden = layer(hidden)
            return hidden
        width = self.embed_y.out_features
        hidden = act(nn.functional.linear(act(self.embed_y(y)), self.merge.weight[:, :width]) + h)
        e = self.embed_t(self.time(t))
        for block, norm in zip(self.blocks, self.norms):
            hidden = norm(hidden + act(block(hidden)) + e)
        return self.out(hidden)


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
