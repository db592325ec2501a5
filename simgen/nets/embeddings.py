"""Embedding nets: MLP for vectors, CNNs for 1-D series and 2-D maps, DeepSets for sets.

:class:`SetPooling` and :class:`SetAttention` embed sets whose size varies from row to row:
an input ``(N, n_max, *element_shape)`` whose absent trials are rows of NaN (the padded
sets of :mod:`simgen.iid`). They set ``takes_sets = True``, which tells NPE and the
posterior that the trial axis is part of x (:func:`simgen.iid.set_element_shape`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnknownEstimatorError

__all__ = [
    "MLP",
    "CNN1d",
    "CNN2d",
    "DeepSet",
    "Identity",
    "SetAttention",
    "SetPooling",
    "build_embedding",
    "embedding_spec",
]


def _mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.GELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _conv_stack(
    conv: type[nn.Module],
    pool: type[nn.Module],
    channels: int,
    conv_channels: Sequence[int],
    kernel_size: int,
) -> nn.Sequential:
    """Blocks of same-padded convolution, GELU and 2x max-pooling (1-D or 2-D by ``conv``)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([channels, *conv_channels[:-1]], conv_channels):
        layers += [conv(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GELU(), pool(2)]
    return nn.Sequential(*layers)


class _Spec(nn.Module):
    """Mixin: remembers constructor keyword arguments as a JSON-able ``spec``."""

    name: str = ""

    def _remember(self, **kwargs: Any) -> None:
        self.spec = {"name": self.name, **kwargs}


class Identity(_Spec):
    """Flattens x to ``(N, prod(x_shape))``: the default embedding."""

    name = "identity"

    def __init__(self, in_shape: Sequence[int]):
        super().__init__()
        self._remember(in_shape=list(in_shape))
        self.out_features = int(torch.Size(in_shape).numel())

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(-len(self.spec["in_shape"])) if self.spec["in_shape"] else x[..., None]


class MLP(_Spec):
    """Multi-layer perceptron on flattened x.

    Args:
        in_features: Size of flattened x.
        out_features: Size of the summary.
        hidden_features: Widths of the hidden layers.
    """

    name = "mlp"

    def __init__(
        self, in_features: int, out_features: int = 32, hidden_features: Sequence[int] = (64, 64)
    ):
        super().__init__()
        self._remember(
            in_features=in_features,
            out_features=out_features,
            hidden_features=list(hidden_features),
        )
        self.out_features = out_features
        self.net = _mlp([in_features, *hidden_features, out_features])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(*x.shape[: x.ndim - 1], -1) if x.ndim > 1 else x)


class CNN1d(_Spec):
    """1-D convolutions over ``(N, L)`` or ``(N, C, L)`` series, then an MLP head."""

    name = "cnn1d"

    def __init__(
        self,
        length: int,
        channels: int = 1,
        out_features: int = 32,
        conv_channels: Sequence[int] = (16, 32),
        kernel_size: int = 5,
    ):
        super().__init__()
        self._remember(
            length=length,
            channels=channels,
            out_features=out_features,
            conv_channels=list(conv_channels),
            kernel_size=kernel_size,
        )
        self.conv = _conv_stack(nn.Conv1d, nn.MaxPool1d, channels, conv_channels, kernel_size)
        flat = conv_channels[-1] * (length // 2 ** len(conv_channels))
        self.head = _mlp([flat, 64, out_features])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x[:, None]
        return self.head(self.conv(x).flatten(1))


class CNN2d(_Spec):
    """2-D convolutions over ``(N, H, W)`` or ``(N, C, H, W)`` maps, then an MLP head."""

    name = "cnn2d"

    def __init__(
        self,
        height: int,
        width: int,
        channels: int = 1,
        out_features: int = 32,
        conv_channels: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
    ):
        super().__init__()
        self._remember(
            height=height,
            width=width,
            channels=channels,
            out_features=out_features,
            conv_channels=list(conv_channels),
            kernel_size=kernel_size,
        )
        self.conv = _conv_stack(nn.Conv2d, nn.MaxPool2d, channels, conv_channels, kernel_size)
        shrink = 2 ** len(conv_channels)
        flat = conv_channels[-1] * (height // shrink) * (width // shrink)
        self.head = _mlp([flat, 128, out_features])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            x = x[:, None]
        return self.head(self.conv(x).flatten(1))


class DeepSet(_Spec):
    r"""Permutation-invariant embedding of a set of ``M`` elements, x of shape ``(N, M, F)``.

    .. math:: s(x) = \rho\Big(\frac1M \sum_{m=1}^M \phi(x_m)\Big)
    """

    name = "deepset"

    def __init__(self, element_features: int, out_features: int = 32, hidden_features: int = 64):
        super().__init__()
        self._remember(
            element_features=element_features,
            out_features=out_features,
            hidden_features=hidden_features,
        )
        self.phi = _mlp([element_features, hidden_features, hidden_features])
        self.rho = _mlp([hidden_features, hidden_features, out_features])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.rho(self.phi(x).mean(-2))


def _set_mask(x: Tensor, element_dims: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(elements (N, n, F) with absent ones zeroed, mask (N, n), counts (N,))`` of padded
    sets ``(N, n, *element_shape)``; a trial is absent when all its numbers are NaN."""
    flat = x.reshape(*x.shape[: x.ndim - element_dims], -1) if element_dims else x[..., None]
    mask = ~torch.isnan(flat).all(-1)
    elements = torch.where(mask[..., None], torch.nan_to_num(flat, nan=0.0), 0.0)
    return elements, mask, mask.sum(-1)


def _log_count(n: Tensor) -> Tensor:
    r"""The set size as a feature, :math:`\log n`: unbounded in n, but slowly, so a set of
    1,000 trials is 6.9 against 0 for one."""
    return torch.log(n.clamp_min(1).to(torch.get_default_dtype()))[..., None]


class SetPooling(_Spec):
    r"""Masked pooling of a variable-size set: :math:`s(x) = \rho\big(\mathrm{pool}_{i \le n}
    \phi(x_i), \log n\big)` for the :math:`n` present trials of a padded set.

    ``pooling="mean"`` averages :math:`\phi` over the present trials, ``"sum"`` adds them
    up. The mean of :math:`n` i.i.d. :math:`\phi(x_i)` estimates :math:`E[\phi(x)\mid	heta]`
    with error :math:`O(n^{-1/2})`, and :math:`\log n` tells :math:`\rho` how much to trust
    it, which is what the posterior's width needs; a sum carries both in one number but
    grows with n, so the mean is the default. Invariant to the order of the trials (up to
    float32 rounding of the sum) and to NaN rows.

    Args:
        element_features: Numbers per trial (``prod(element_shape)``).
        out_features: Size of the summary.
        hidden_features: Width of :math:`\phi` and :math:`\rho` (two layers each).
        pooling: ``"mean"`` or ``"sum"``.
        element_dims: Number of dimensions of one trial (1 for vectors).
    """

    name = "set_pooling"
    takes_sets = True

    def __init__(
        self,
        element_features: int,
        out_features: int = 32,
        hidden_features: int = 64,
        pooling: str = "mean",
        element_dims: int = 1,
    ):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ConfigError(f"pooling must be 'mean' or 'sum', got {pooling!r}.")
        self._remember(
            element_features=element_features,
            out_features=out_features,
            hidden_features=hidden_features,
            pooling=pooling,
            element_dims=element_dims,
        )
        self.phi = _mlp([element_features, hidden_features, hidden_features])
        self.rho = _mlp([hidden_features + 1, hidden_features, out_features])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        elements, mask, n = _set_mask(x, self.spec["element_dims"])
        h = (self.phi(elements) * mask[..., None]).sum(-2)
        if self.spec["pooling"] == "mean":
            h = h / n.clamp_min(1)[..., None]
        return self.rho(torch.cat([h, _log_count(n)], -1))


class SetAttention(_Spec):
    r"""Pooling by multi-head attention (Lee et al., 2019): ``num_seeds`` learned queries
    attend over the present trials' :math:`\phi(x_i)`, absent trials masked out of the keys,
    then :math:`\rho` of the pooled seeds and :math:`\log n`.

    Attention weighs trials by what they show rather than equally, which helps when a few
    trials carry most of the information (rare, extreme events); the cost is
    ``num_seeds × n`` attention scores per set, linear in n. With
    ``self_attention=True`` one self-attention block over the trials runs first
    (quadratic in n: keep n in the hundreds). Invariant to the order of the trials (up to
    float32 rounding) and to NaN rows.

    Args:
        element_features: Numbers per trial.
        out_features: Size of the summary.
        hidden_features: Width of :math:`\phi`, of the attention and of :math:`\rho`.
        num_seeds: Learned queries (pooled vectors).
        num_heads: Attention heads (must divide ``hidden_features``).
        self_attention: Add one masked self-attention block over the trials.
        element_dims: Number of dimensions of one trial (1 for vectors).
    """

    name = "set_attention"
    takes_sets = True

    def __init__(
        self,
        element_features: int,
        out_features: int = 32,
        hidden_features: int = 64,
        num_seeds: int = 2,
        num_heads: int = 4,
        self_attention: bool = False,
        element_dims: int = 1,
    ):
        super().__init__()
        if hidden_features % num_heads:
            raise ConfigError(
                f"num_heads ({num_heads}) must divide hidden_features ({hidden_features})."
            )
        self._remember(
            element_features=element_features,
            out_features=out_features,
            hidden_features=hidden_features,
            num_seeds=num_seeds,
            num_heads=num_heads,
            self_attention=self_attention,
            element_dims=element_dims,
        )
        self.phi = _mlp([element_features, hidden_features, hidden_features])
        self.seeds = nn.Parameter(torch.randn(num_seeds, hidden_features) / hidden_features**0.5)
        self.pool = nn.MultiheadAttention(hidden_features, num_heads, batch_first=True)
        self.block = (
            nn.MultiheadAttention(hidden_features, num_heads, batch_first=True)
            if self_attention
            else None
        )
        self.norm = nn.LayerNorm(hidden_features)
        self.rho = _mlp([num_seeds * hidden_features + 1, hidden_features, out_features])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        elements, mask, n = _set_mask(x, self.spec["element_dims"])
        batch = elements.shape[:-2]
        elements = elements.reshape(-1, *elements.shape[-2:])
        mask, absent = mask.reshape(-1, mask.shape[-1]), ~mask.reshape(-1, mask.shape[-1])
        h = self.phi(elements)
        if self.block is not None:
            h = self.norm(h + self.block(h, h, h, key_padding_mask=absent, need_weights=False)[0])
        h = h * mask[..., None]
        queries = self.seeds.expand(len(h), *self.seeds.shape)
        pooled = self.pool(queries, h, h, key_padding_mask=absent, need_weights=False)[0]
        features = torch.cat([pooled.flatten(1), _log_count(n.reshape(-1))], -1)
        return self.rho(features).reshape(*batch, -1)


_NETS: dict[str, type[_Spec]] = {
    cls.name: cls for cls in (Identity, MLP, CNN1d, CNN2d, DeepSet, SetPooling, SetAttention)
}


def embedding_spec(net: nn.Module) -> dict[str, Any]:
    """The JSON-able spec of a built-in net, or ``{"name": "custom", ...}`` for a user's net."""
    spec = getattr(net, "spec", None)
    if isinstance(spec, dict) and spec.get("name") in _NETS:
        return dict(spec)
    return {"name": "custom", "class": type(net).__qualname__}


def build_embedding(spec: dict[str, Any], custom: nn.Module | None = None) -> nn.Module:
    """Rebuild a net from :func:`embedding_spec`'s output (``custom`` for a user's own net)."""
    name = spec.get("name")
    if name == "custom":
        if custom is None:
            raise UnknownEstimatorError(
                f"This model was trained with a custom embedding net ({spec.get('class')}); "
                "pass an instance of it: simgen.load(path, embedding_net=MyNet(...))."
            )
        return custom
    if name not in _NETS:
        raise UnknownEstimatorError(
            f"Unknown embedding net {name!r}; built-in nets are {sorted(_NETS)}."
        )
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return _NETS[name](**kwargs)
