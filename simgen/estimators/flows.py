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
  instead of D; ``passes=None`` makes it fully autoregressive; an LU layer after each
  transform by default (``mixing="lu"``, below). Each spline maps :math:`[-B, B]` onto itself
  with ``bins`` = K bins and is the identity outside (``bound`` = B, 5 by default as zuko's;
  sbi's ``"nsf"`` uses 3 with 10 bins), so a standardised feature reaches
  :math:`K / 2B` knots per unit. The defaults stay 5 and 8 because no finer grid wins on
  both budgets: ``bound=3.0, bins=16`` gains 0.019 C2ST on gaussian_linear_uniform at 10,000
  simulations and loses 0.020 at 1,000 (``benchmarks/results_report_settings.md``).
  The bin widths and heights of a feature's spline are :math:`\mathrm{softmax}(u_w / T)` and
  :math:`\mathrm{softmax}(u_h / T)` of the conditioner's outputs :math:`u`
  (``bin_temperature`` = T, applied as a fixed scale on those rows of the conditioner's last
  layer; the knot derivatives are not scaled). :math:`T = \sqrt{H}`, with H the last hidden
  width (8 for the default (64, 64)), is the scaling of nflows' spline couplings, which sbi's
  ``"nsf"`` trains: the flow starts closer to the identity (near-uniform bins) and Adam's
  steps, about the learning rate per weight, move the bin logits T times less, while the
  knot derivatives keep the full step. The default stays 1, zuko's: the report set over three
  seeds exists for gaussian_linear_uniform only (C2ST 0.592 against 0.628 at 10,000
  simulations, 0.683 against 0.720 at 1,000, ``benchmarks/results_report_settings.md``); on
  the tuning set at 1,000 it is better on 7 of 10 tasks and within the seed spread on the
  others (``benchmarks/results_bin_temperature.md``), but on the report set at 1,000 it is
  behind on bernoulli_glm on both seeds run. Use it for near-Gaussian, box-cut or linear
  posteriors (gaussian_linear_uniform, gaussian_linear).
* ``"maf"``: masked autoregressive flow with affine transforms (Papamakarios et al., 2017).
* ``"realnvp"``: affine coupling flow (Dinh et al., 2017).

Mixing between transforms (``mixing``, every family). A 2-pass coupling transform splits the
features into two fixed halves, so two features of the same half interact only through the
other half; correlated, near-Gaussian posteriors need several transforms to be expressed.

* ``"none"``: zuko's orders, ascending and descending in turn.
* ``"permutation"``: a random order per transform (zuko's ``randperm``; the order is a buffer,
  saved with the weights).
* ``"lu"``: an invertible linear map after each transform, :math:`z \mapsto W z` with
  :math:`W = L U`, :math:`L` lower triangular with diagonal :math:`\operatorname{softplus}(d)
  + \epsilon` and :math:`U` unit upper triangular (as sbi's ``"nsf"`` through nflows'
  ``LULinear``), started at :math:`W = I`. Its log-determinant is :math:`\sum_i
  \log(\operatorname{softplus}(d_i) + \epsilon)`, exact and :math:`O(D)`; it costs
  :math:`D^2` parameters per transform and one triangular solve per transform when sampling.

A log context (``log_context``, every family). With ``log_context=True`` the context is
z-scored on the log scale, :math:`c = \mathrm{embed}\big((\log x - \mu_{\log x}) /
\sigma_{\log x}\big)`, for positive summaries spread over orders of magnitude (counts,
populations with log-normal noise), where z-scoring x itself leaves the small values in a
sliver near :math:`-\mu_x/\sigma_x` and the large ones many sds out; every x must be
positive (:class:`~simgen.errors.SupportError` otherwise). Off by default: a log suits
positive, multiplicative summaries only.

A linear-Gaussian base (``gaussian_baseline``, every family). The ridge regression of
:mod:`simgen.estimators.baseline`, fitted with the z-scoring before training, gives
:math:`q_0(\tilde\theta\mid x) = \mathcal N(m(x), \Sigma)`; the flow then models the
whitened residual :math:`\epsilon = \Sigma^{-1/2}(\tilde\theta - m(x))` given :math:`c`,

.. math::
    \log q_\phi(\theta \mid x) = \log q_{\text{flow}}(\epsilon \mid c)
      - \tfrac12 \log\det\Sigma - \sum_i \log \sigma_{\theta, i},

exact, and a draw is :math:`\tilde\theta = m(x) + \Sigma^{1/2}\epsilon` (the fast inverse
samples :math:`\epsilon`). A flow at the identity is then the linear-Gaussian posterior, so a
Gaussian posterior whose mean is linear in x needs no conditioning learned, and the
conditioner's capacity goes to what the baseline misses. :math:`\Sigma^{1/2}` is the
symmetric root, which keeps the axes of a nearly diagonal :math:`\Sigma` (a box prior's faces
stay aligned with the coupling's coordinates). ``"auto"`` keeps the base by the baseline
module's rule (residual non-Gaussianity, the regression's degrees of freedom, and the support
check: no base mass outside the training θ's range); NSF's default, the others' is ``False``. The
statistics are buffers of the state dict; model files without the option load as
``gaussian_baseline=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution, Transform, constraints
from zuko.distributions import NormalizingFlow
from zuko.lazy import UnconditionalTransform
from zuko.transforms import ComposedTransform, LULinearTransform, MonotonicRQSTransform

from ..errors import ConfigError, SupportError
from .base import DensityEstimator, Standardizer
from .baseline import GaussianBaseline, fit_baseline, flat_context
from .fast_inverse import sample_flow, supports_fast_inverse

__all__ = ["Flow", "NSF", "MAF", "RealNVP", "SplineFlow", "ACTIVATIONS", "MIXINGS", "lu_linear"]

#: Conditioner nonlinearities by name (stored by name in model files).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}

#: What mixes the features between transforms (see the module docstring).
MIXINGS = ("none", "permutation", "lu")

#: Lower bound on the LU layer's diagonal, so that :math:`W` stays invertible.
LU_EPS = 1e-3


def lu_linear(entries: Tensor, diagonal: Tensor) -> LULinearTransform:
    r""":math:`z \mapsto L U z` from unconstrained parameters: the strict triangles of
    ``entries`` (``(D, D)``) give :math:`L` below the diagonal and :math:`U` above it, and
    :math:`L_{ii} = \operatorname{softplus}(d_i) + \epsilon` (zuko's :math:`U` has a unit
    diagonal)."""
    lu = torch.tril(entries, -1) + torch.triu(entries, 1)
    return LULinearTransform(lu + torch.diag_embed(nn.functional.softplus(diagonal) + LU_EPS))


def lu_layer(features: int) -> UnconditionalTransform:
    """A learned :func:`lu_linear` layer started at the identity."""
    start = torch.full((features,), 1.0 - LU_EPS).expm1().log()  # softplus(start) + eps = 1
    return UnconditionalTransform(lu_linear, torch.zeros(features, features), start)


#: :math:`\tau` of ``gaussian_baseline="auto"`` for the flows: flow matching's and diffusion's.
FLOW_BASELINE_THRESHOLD = 0.05


class Whitening(Transform):
    r""":math:`\tilde\theta \mapsto \epsilon = \Sigma^{-1/2}(\tilde\theta - m)` for the
    baseline means ``m`` ``(*batch, D)``; :math:`\log|\det| = -\log|\det\Sigma^{1/2}|`."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, mean: Tensor, root: Tensor, inv_root: Tensor, log_det_root: Tensor):
        super().__init__()
        self.mean, self.root, self.inv_root, self.log_det_root = mean, root, inv_root, log_det_root

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.mean) @ self.inv_root

    def _inverse(self, y: Tensor) -> Tensor:
        return y @ self.root + self.mean

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(x.shape[:-1], self.mean.shape[:-1])
        return (-self.log_det_root).expand(shape)


class LogStandardizer(Standardizer):
    r""":math:`x \mapsto (\log x - \mu)/\sigma`, its statistics those of :math:`\log x`
    (fitted from :func:`log_context_of` of the training contexts)."""

    def forward(self, data: Tensor) -> Tensor:
        return (log_context_of(data) - self.loc) / self.scale

    def inverse(self, data: Tensor) -> Tensor:
        return (data * self.scale + self.loc).exp()


def log_context_of(context: Tensor) -> Tensor:
    """``log(context)``; a context entry that is not positive raises naming the option."""
    if not bool((context > 0).all()):
        bad = context[~(context > 0)].flatten()[0].item()
        raise SupportError(
            f"log_context=True takes the log of x, which needs every entry of x > 0; found "
            f"{bad!r}. Use log_context=False, or simulate a positive summary."
        )
    return context.log()


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
        mixing: What mixes the features between transforms: ``"none"``, ``"permutation"``
            or ``"lu"`` (module docstring); each family's default is :attr:`default_mixing`.
        log_context: Whether the context is z-scored on the log scale (module docstring);
            ``False`` by default, as a log suits positive, multiplicative summaries only
            (lotka_volterra: ``benchmarks/results_report_settings.md``).
        gaussian_baseline: Whether the flow models the residual of the linear-Gaussian
            baseline (module docstring): ``True``, ``False`` or ``"auto"`` (the rule of
            :mod:`simgen.estimators.baseline`, with :math:`\tau` =
            :data:`FLOW_BASELINE_THRESHOLD` and its support check); each family's default
            is :attr:`default_baseline`, ``False`` behind a set embedding (its padded sets
            are no vector to regress on).
        **options: The family's own options (:attr:`family_options`: ``bins``, ``passes``,
            ``bound`` and ``bin_temperature`` for :class:`NSF`, none for the others); any
            other name raises :class:`~simgen.errors.ConfigError` listing the valid ones.

    Example:
        >>> flow = NSF(2, (3,))
        >>> flow(torch.randn(3)).sample((10,)).shape
        torch.Size([10, 2])
    """

    #: The zuko flow class that builds the transforms.
    zuko_flow: ClassVar[type[zuko.flows.Flow]]
    #: Options of this family beyond the shared ones, with their defaults.
    family_options: ClassVar[dict[str, Any]] = {}
    #: The ``mixing`` a family takes when none is given.
    default_mixing: ClassVar[str] = "none"
    #: zuko's keyword that draws a random order (or coupling mask) per transform.
    permutation_keyword: ClassVar[str] = "randperm"
    #: Model files saved before ``mixing`` existed had none.
    #: The ``gaussian_baseline`` a family takes when none is given.
    default_baseline: ClassVar[bool | str] = False
    #: What a padded-set embedding gets without an explicit ``gaussian_baseline``
    #: (read by :func:`simgen.iid.check_set_simulations`).
    set_baseline: ClassVar[bool] = False
    LEGACY_OPTIONS: ClassVar[dict[str, Any]] = {"mixing": "none", "gaussian_baseline": False}
    baseline: GaussianBaseline | None

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "relu",
        mixing: str | None = None,
        gaussian_baseline: bool | str | None = None,
        log_context: bool = False,
        **options: Any,
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        if not isinstance(log_context, bool):
            raise ConfigError(f"log_context must be True or False, got {log_context!r}.")
        if log_context:
            self.context_standardizer = LogStandardizer(self.context_shape)
        self.check_options(options)
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}."
            )
        mixing = self.default_mixing if mixing is None else mixing
        if mixing not in MIXINGS:
            raise ConfigError(f"Unknown mixing {mixing!r}; choose one of {list(MIXINGS)}.")
        if gaussian_baseline is None:
            sets = getattr(embedding_net, "takes_sets", False)
            gaussian_baseline = self.set_baseline if sets else self.default_baseline
        if not isinstance(gaussian_baseline, bool) and gaussian_baseline != "auto":
            raise ConfigError(
                f"gaussian_baseline must be True, False or 'auto', got {gaussian_baseline!r}."
            )
        self.options = {
            "transforms": transforms,
            "hidden_features": list(hidden_features),
            "activation": activation,
            "mixing": mixing,
            "gaussian_baseline": gaussian_baseline,
            "log_context": log_context,
            **self.family_options,
            **options,
        }
        ours = ("mixing", "gaussian_baseline", "log_context")
        zuko_options = {k: v for k, v in self.options.items() if k not in ours}
        self.flow = self.zuko_flow(
            self.target_dim,
            self.context_features,
            **{self.permutation_keyword: mixing == "permutation"},
            **dict(zuko_options, activation=ACTIVATIONS[activation]),
        )
        if mixing == "lu":
            layers = []
            for t in self.flow.transform.transforms:
                layers += [t, lu_layer(self.target_dim)]
            self.flow = zuko.flows.Flow(layers, self.flow.base)
        # Built after the flow and drawing no random numbers, so the flow's initial weights
        # are the same with and without it.
        self.baseline = None
        if gaussian_baseline is not False:
            self.baseline = GaussianBaseline(
                math.prod(self.context_shape),
                self.target_dim,
                auto=gaussian_baseline == "auto",
                threshold=FLOW_BASELINE_THRESHOLD,
                support_check=True,
            )

    def fit_standardization_chunks(self, chunks) -> None:
        if isinstance(self.context_standardizer, LogStandardizer):

            def logged():
                for target, context in chunks():
                    yield target, log_context_of(context)

            super().fit_standardization_chunks(logged)
        else:
            super().fit_standardization_chunks(chunks)
        if self.baseline is not None:
            fit_baseline(self.baseline, self, chunks)

    @property
    def uses_baseline(self) -> bool:
        """Whether the flow models the baseline's residual (``"auto"`` decides at the fit)."""
        return self.baseline is not None and self.baseline.on

    @classmethod
    def option_names(cls) -> list[str]:
        return sorted({*super().option_names(), *cls.family_options})

    def forward(self, context: Tensor) -> Distribution:
        inner = self.flow(self.embed(context))
        s = self.target_standardizer
        # data -> base: first standardise (θ - μ)/σ, then the flow's own transform.
        standardise = AffineTransform(-s.loc / s.scale, 1 / s.scale, event_dim=1)
        if not self.uses_baseline:
            return NormalizingFlow(ComposedTransform(standardise, inner.transform), inner.base)
        whiten = Whitening(self._baseline_mean(context), *self.baseline.root())
        return NormalizingFlow(ComposedTransform(standardise, whiten, inner.transform), inner.base)

    def _baseline_mean(self, context: Tensor) -> Tensor:
        assert self.baseline is not None
        return self.baseline.mean(flat_context(self, context))

    def draw(self, num: int, context: Tensor) -> Tensor:
        """``(num, B, D)`` samples; masked autoregressive/coupling flows take the fast inverse.

        :func:`~simgen.estimators.fast_inverse.sample_flow` computes zuko's inverse exactly,
        skipping the work that sampling does not need (see that module).
        """
        if not supports_fast_inverse(self.flow):
            return super().draw(num, context)
        s = self.target_standardizer
        y = sample_flow(self.flow, self.embed(context), num)
        if self.uses_baseline:
            root = self.baseline.root()[0]
            y = y @ root + self._baseline_mean(context)
        return y * s.scale + s.loc


class RowScale(nn.Module):
    r"""The parametrization :math:`p \mapsto s \odot p` along a layer's output rows, ``s`` a
    fixed buffer: the optimiser steps on :math:`p`, the layer computes with :math:`s \odot p`."""

    def __init__(self, scale: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, p: Tensor) -> Tensor:
        return p * self.scale.reshape(-1, *[1] * (p.dim() - 1))


def _positive(value: Any, name: str, example: str) -> float:
    """``value`` as a float if it is a positive, finite number; otherwise raise naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive, finite number ({example}), got {value!r}.")
    return float(value)


class SplineFlow(zuko.flows.MAF):
    r"""zuko's NSF with the spline's bound :math:`B` and its bin temperature :math:`T` as
    arguments (zuko fixes :math:`B = 5` and :math:`T = 1`).

    Args:
        features, context, bins, slope: As :class:`zuko.flows.NSF`.
        bound: The spline's (co)domain :math:`[-B, B]`; a positive, finite number.
        bin_temperature: :math:`T`: the bin widths and heights are :math:`\mathrm{softmax}
            (u / T)` of the conditioner's outputs :math:`u` (module docstring); 1 is zuko's.
        **kwargs: Passed to :class:`zuko.flows.MAF` (``transforms``, ``passes``, ...).
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        bins: int = 8,
        bound: float = 5.0,
        slope: float = 1e-3,
        bin_temperature: float = 1.0,
        **kwargs: Any,
    ):
        bound = _positive(bound, "bound", "the spline's half-width in standardised units, "
                          "e.g. 3.0 or 5.0")  # fmt: skip
        temperature = _positive(bin_temperature, "bin_temperature", "1.0 for zuko's spline, "
                                "8.0 = sqrt(64) for nflows' scaling at width 64")  # fmt: skip
        super().__init__(
            features=features,
            context=context,
            univariate=partial(MonotonicRQSTransform, bound=bound, slope=slope),
            shapes=[(bins,), (bins,), (bins - 1,)],
            **kwargs,
        )
        if temperature != 1.0:
            for t in self.transform.transforms:
                if getattr(t, "hyper", None) is None:
                    raise ConfigError(
                        "bin_temperature scales the conditioner's outputs, and an "
                        "unconditional one-feature spline has none; use bin_temperature=1.0."
                    )
                _temper(t.hyper[-1], t.total, 2 * bins, temperature)


def _temper(last: nn.Linear, total: int, logits: int, temperature: float) -> None:
    """Divide the first ``logits`` of every ``total`` outputs of ``last`` (zuko's layout: the
    parameters of one feature's spline are adjacent, widths and heights first) by
    ``temperature``, as a parametrization of its weight and bias."""
    from torch.nn.utils import parametrize

    per_feature = torch.ones(total)
    per_feature[:logits] = 1 / temperature
    scale = per_feature.repeat(last.out_features // total)
    for name in ("weight", "bias"):
        parametrize.register_parametrization(last, name, RowScale(scale.clone()))


class NSF(Flow):
    """Rational-quadratic spline flow: coupling (``passes=2``) or autoregressive (``None``),
    with ``bins`` spline bins per transformed feature and an LU layer after each transform
    (``mixing="lu"``).

    The LU layer is the default because it fits correlated posteriors that fixed coupling
    halves reach only slowly (bernoulli_glm on the tuning observations: C2ST 0.826 against
    0.891 without it at 1,000 simulations, 0.703 against 0.726 at 10,000) and loses nowhere
    beyond the seed spread on the other tuning tasks, for 0.9-1.2x the training CPU
    (``benchmarks/results_defaults.md``, "The mixing layer").

    The linear-Gaussian base is decided by ``"auto"`` because it is right for a Gaussian
    posterior with a mean linear in x and an x-independent support, which a spline flow
    (no affine part) otherwise builds from knots (gaussian_linear on the tuning
    observations: C2ST 0.549 against 0.621 at 10,000 simulations, 0.626 against 0.722 at
    1,000), and wrong where a box cuts the posterior, whose faces move with x in the base's
    coordinates (gaussian_linear_uniform: 0.668 against 0.617 at 10,000), which the support
    check refuses; a refused base computes exactly what no base does
    (``benchmarks/results_defaults.md``, "The linear-Gaussian base").

    NPE fits it to θ itself and rejects draws outside a bounded prior's support
    (``npe_support = "reject"``, as sbi does): the logit map of ``"transform"`` stretches a
    box posterior near the faces into tails that 1,000 pairs fit worse (C2ST on the tuning
    observations of two_moons and gaussian_mixture, ``benchmarks/results_defaults.md``).
    """

    name = "nsf"
    npe_support = "reject"
    zuko_flow = SplineFlow
    family_options = {"bins": 8, "passes": 2, "bound": 5.0, "bin_temperature": 1.0}
    default_mixing = "lu"
    default_baseline = "auto"


class MAF(Flow):
    """Masked autoregressive flow with monotonic affine transforms."""

    name = "maf"
    zuko_flow = zuko.flows.MAF


class RealNVP(Flow):
    """Affine coupling flow (RealNVP)."""

    name = "realnvp"
    zuko_flow = zuko.flows.RealNVP
    permutation_keyword = "randmask"
