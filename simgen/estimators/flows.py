r"""Conditional normalizing flows: ``"nsf"``, ``"maf"``, ``"realnvp"`` (zuko backend).

A flow is a bijection :math:`f_\phi(\cdot\,; c)` from the standardised target to a standard
normal base, so its density is exact by the change of variables

.. math::
    \log q_\phi(\theta \mid x) = \log \mathcal N\big(f_\phi(\tilde\theta; c); 0, I\big)
      + \log\Big|\det \frac{\partial f_\phi(\tilde\theta; c)}{\partial \tilde\theta}\Big|
      - \sum_i \log \sigma_{\theta, i},

with :math:`\tilde\theta = (\theta - \mu_\theta)/\sigma_\theta` and :math:`c` the embedded,
standardised context. Sampling inverts :math:`f_\phi`.

Why zuko rather than nflows: zuko builds the distribution lazily from the context (the
``forward(context) -> Distribution`` shape simgen uses everywhere) and its autoregressive
spline flows train faster per step on CPU (see ``benchmarks/RESULTS.md``, where sbi's
``"nsf"`` runs on nflows).

Families:

* ``"nsf"``: rational-quadratic neural spline flow (Durkan et al., 2019); coupling layers by
  default (``passes=2``, as sbi's ``"nsf"``), so sampling costs 2 network passes per transform
  instead of D; ``passes=None`` makes it fully autoregressive.
* ``"maf"``: masked autoregressive flow with affine transforms (Papamakarios et al., 2017).
* ``"realnvp"``: affine coupling flow (Dinh et al., 2017).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution
from zuko.distributions import NormalizingFlow
from zuko.transforms import ComposedTransform

from ..errors import ConfigError
from .base import DensityEstimator
from .fast_inverse import sample_flow, supports_fast_inverse

__all__ = ["Flow", "NSF", "MAF", "RealNVP", "ACTIVATIONS"]

#: Conditioner nonlinearities by name (stored by name in model files).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


class Flow(DensityEstimator):
    r"""A conditional flow :math:`q_\phi(\theta \mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        transforms: Number of flow transforms.
        hidden_features: Widths of each conditioner's hidden layers.
        activation: Hidden-layer nonlinearity of the conditioners: ``"relu"`` (default),
            ``"tanh"`` (sbi's choice for MAF), ``"elu"`` or ``"silu"``.

    :class:`NSF` adds ``bins`` and ``passes``; the other families have no such options and
    reject them (``build_estimator`` raises :class:`~simgen.errors.ConfigError`).

    Example:
        >>> flow = NSF(2, (3,))
        >>> flow(torch.randn(3)).sample((10,)).shape
        torch.Size([10, 2])
    """

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}."
            )
        self.options = {
            "transforms": transforms,
            "hidden_features": list(hidden_features),
            "activation": activation,
            **self._family_options(),
        }
        options = dict(self.options, activation=ACTIVATIONS[activation])
        self.flow = self._build(**options)

    def _family_options(self) -> dict[str, object]:
        """Options of this family beyond the shared ones (stored in the spec)."""
        return {}

    @abc.abstractmethod
    def _build(self, **options: object) -> zuko.flows.Flow:
        """The zuko flow over the standardised target, conditioned on the embedding."""

    def forward(self, context: Tensor) -> Distribution:
        inner = self.flow(self.embed(context))
        s = self.target_standardizer
        # data -> base: first standardise (θ - μ)/σ, then the flow's own transform.
        standardise = AffineTransform(-s.loc / s.scale, 1 / s.scale, event_dim=1)
        return NormalizingFlow(ComposedTransform(standardise, inner.transform), inner.base)

    def draw(self, num: int, context: Tensor) -> Tensor:
        """``(num, B, D)`` samples; masked autoregressive/coupling flows take the fast inverse.

        :func:`~simgen.estimators.fast_inverse.sample_flow` computes zuko's inverse exactly,
        skipping the work that sampling does not need (see that module).
        """
        if not supports_fast_inverse(self.flow):
            return super().draw(num, context)
        s = self.target_standardizer
        return sample_flow(self.flow, self.embed(context), num) * s.scale + s.loc


class NSF(Flow):
    """Rational-quadratic spline flow: coupling (``passes=2``) or autoregressive (``None``).

    Args:
        bins: Spline bins per transformed feature.
        passes: 2 for coupling layers, ``None`` for fully autoregressive ones.
        target_dim, context_shape, embedding_net, transforms, hidden_features, activation:
            See :class:`Flow`.
    """

    name = "nsf"

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        bins: int = 8,
        passes: int | None = 2,
        activation: str = "relu",
    ):
        self._bins, self._passes = bins, passes
        super().__init__(
            target_dim, context_shape, embedding_net, transforms, hidden_features, activation
        )

    def _family_options(self) -> dict[str, object]:
        return {"bins": self._bins, "passes": self._passes}

    def _build(
        self,
        transforms: int,
        hidden_features: list[int],
        activation: type[nn.Module],
        bins: int,
        passes: int | None,
    ) -> zuko.flows.Flow:
        return zuko.flows.NSF(
            self.target_dim,
            self.context_features,
            bins=bins,
            transforms=transforms,
            hidden_features=hidden_features,
            passes=passes,
            activation=activation,
        )


class MAF(Flow):
    """Masked autoregressive flow with monotonic affine transforms."""

    name = "maf"

    def _build(
        self, transforms: int, hidden_features: list[int], activation: type[nn.Module]
    ) -> zuko.flows.Flow:
        return zuko.flows.MAF(
            self.target_dim,
            self.context_features,
            transforms=transforms,
            hidden_features=hidden_features,
            activation=activation,
        )


class RealNVP(Flow):
    """Affine coupling flow (RealNVP)."""

    name = "realnvp"

    def _build(
        self, transforms: int, hidden_features: list[int], activation: type[nn.Module]
    ) -> zuko.flows.Flow:
        return zuko.flows.RealNVP(
            self.target_dim,
            self.context_features,
            transforms=transforms,
            hidden_features=hidden_features,
            activation=activation,
        )
