"""Embedding nets: MLP for vectors, CNNs for 1-D series and 2-D maps, DeepSets for sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnknownEstimatorError

__all__ = ["MLP", "CNN1d", "CNN2d", "DeepSet", "Identity", "build_embedding", "embedding_spec"]


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


_NETS: dict[str, type[_Spec]] = {cls.name: cls for cls in (Identity, MLP, CNN1d, CNN2d, DeepSet)}


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
