r"""The linear-Gaussian baseline of the vector-field families (flow matching, diffusion) and
the flows' base (:mod:`simgen.estimators.flows`, ``gaussian_baseline``).

Before training, a ridge regression of the standardised target :math:`\tilde\theta` on the
standardised, flattened context :math:`\tilde x` fits

.. math::
    q_0(\tilde\theta\mid x) = \mathcal N\big(m(x), \Sigma\big), \qquad
    m(x) = W^\top\tilde x + b, \qquad \Sigma = V\Lambda V^\top,

with :math:`\Sigma` the residual covariance. A Gaussian stays Gaussian along both families'
paths, so its velocity (flow matching) or noise prediction (diffusion) is exact and affine in
:math:`y`, and the network learns only the residual. A linear-Gaussian posterior is then right
from the first step, and the network's capacity goes to the non-Gaussian part. Contexts with
more than ``BASELINE_MAX_FEATURES`` entries use :math:`W = 0` (an unconditional Gaussian).

For flow matching's path :math:`y_t = a_t y_0 + t\tilde\theta`, :math:`a_t = 1 -
(1-\sigma_{\min})t`, the marginal velocity of :math:`q_0` is, with :math:`C_t = a_t^2 I +
t^2\Sigma`,

.. math::
    v_0(y, t; x) = \mathbb E[u_t \mid y_t = y]
      = m + \big(t\Sigma - (1-\sigma_{\min})a_t I\big) C_t^{-1} (y - t\,m),

computed in the eigenbasis of :math:`\Sigma` (diagonal, so no solve per step).

**``gaussian_baseline="auto"``** decides from the data whether the baseline is right. With
:math:`z` the ridge residual whitened by :math:`\Sigma`, per-direction skewness
:math:`S_d = \overline{z_d^3}` and excess kurtosis :math:`K_d = \overline{z_d^4} - 3`, the
non-Gaussianity

.. math:: E = \frac1D\sum_d \big(S_d^2 + K_d^2/4\big)

(the Jarque-Bera statistic divided by :math:`N/6`; its mean under a Gaussian residual is
:math:`12/N`) keeps the baseline iff :math:`E \le \max(\tau, 36/N)`. A linear-Gaussian
posterior leaves a Gaussian, x-independent residual; a nonlinear or non-Gaussian one leaves a
skewed, heavy- or light-tailed residual whose affine field the network would have to cancel.
Each family sets its threshold :math:`\tau` (``baseline_threshold``: 0.05 for flow matching
and diffusion), measured in ``benchmarks/results_seeds.md`` and
``benchmarks/results_report_generative.md``.

``auto`` also refuses a regression that the simulations cannot pin down: with
:math:`\lambda_j` the eigenvalues of the standardised contexts' covariance and :math:`\rho`
the ridge, the fit's effective degrees of freedom
:math:`\nu = \sum_j \lambda_j/(\lambda_j + \rho)` must be at most
``BASELINE_MAX_DOF_SHARE`` :math:`= 0.1` of :math:`N`. For least squares the in-sample
residual variance is :math:`(1-\nu/N)\sigma^2` and a new x's prediction error about
:math:`\sigma^2/(1-\nu/N)`, so past that share :math:`\Sigma` understates the error at an
observation by more than a factor 1.23 and :math:`E`, computed on residuals the fit has
absorbed, says nothing. cosmology_field at 1,000 simulations (1,024 pixels, :math:`\nu/N`
= 0.95) shows why: its baseline put :math:`m(x_o)` outside the prior's box for 7 of the 10
tuning observations, up to 4.5 prior standard deviations from its mean (the box ends at
1.7), with residual standard deviations of 0.13-0.17; kept, no draw fell inside
(``benchmarks/results_report_generative.md``). Every other task has at most 20 context
entries, :math:`\nu/N \le 0.02` at 1,000 simulations.

The flows add a **support check** (``support_check``): the base's mean mass outside the range
:math:`[\ell_d, u_d]` of the training targets,
:math:`M = \frac1{ND}\sum_{n,d} q_0(\tilde\theta_d\notin[\ell_d, u_d]\mid x_n)`, must be at
most ``EDGE_MASS_FACTOR`` :math:`\cdot 2/(N+1)`. If the base is the posterior, averaging it
over the x's of the joint gives the prior, whose mass outside the range of N draws of a
continuous unbounded marginal is :math:`2/(N+1)` in expectation; a posterior cut by a bounded
prior leaves the Gaussian base's tails outside the box (gaussian_linear_uniform: :math:`M` =
0.077 against 0.0002 on gaussian_linear at 10,000 simulations,
``benchmarks/results_defaults.md``). A flow in the base's coordinates would have to learn
faces that move with x; in :math:`\tilde\theta` they stay where they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import ConfigError, NoDensityError, NotFittedError
from ..moments import Chunks, CrossMoments, in_chunks
from ._nets import GenerativeDistribution, NetConfig
from .base import DensityEstimator
from .compose import StandardPrior, compose_denoisers, composed_precision, standard_prior
from .ode import SolverConfig

__all__ = [
    "GaussianBaseline",
    "BaselineEstimator",
    "BaselineDistribution",
    "BASELINE_MAX_FEATURES",
    "BASELINE_MAX_DOF_SHARE",
    "BASELINE_CHOICES",
    "fit_baseline",
    "flat_context",
]

#: Largest flattened context for which the baseline regresses on x (a ridge solve of this size).
BASELINE_MAX_FEATURES = 4096
#: :math:`\tau` of ``auto`` for a baseline built without one (each family sets its own).
NON_GAUSSIANITY_THRESHOLD = 0.1
#: Largest share of N the ridge fit's effective degrees of freedom may take under ``auto``.
BASELINE_MAX_DOF_SHARE = 0.1
BASELINE_CHOICES = (True, False, "auto")
#: ``support_check``'s bound on :math:`M` in units of :math:`2/(N+1)`, its expectation when
#: the base is the posterior of a prior with unbounded support.
EDGE_MASS_FACTOR = 5.0
#: Rows (samples × sets × trials) per network call when composing trials, bounding memory.
TRIAL_ROWS = 1 << 18


class GaussianBaseline(nn.Module):
    r"""The linear-Gaussian :math:`q_0(\tilde\theta\mid x)` and its exact velocity :math:`v_0`.

    See the module docstring. Its buffers are saved with the weights, so a loaded model
    needs no refit.

    Args:
        context_dim: Entries of one flattened context.
        target_dim: ``D``.
        auto: Decide at :meth:`fit` whether the baseline is used (``gaussian_baseline="auto"``).
        threshold: :math:`\tau` of that decision.
    """

    def __init__(
        self,
        context_dim: int,
        target_dim: int,
        auto: bool = False,
        threshold: float = NON_GAUSSIANITY_THRESHOLD,
        support_check: bool = False,
    ):
        super().__init__()
        self.auto = bool(auto)
        #: ``auto`` keeps the baseline iff :math:`E \le \max(\text{threshold}, 36/N)` and
        #: :math:`\nu/N \le` ``BASELINE_MAX_DOF_SHARE`` (module docstring).
        self.threshold = float(threshold)
        #: :math:`E`, the residual's non-Gaussianity at the last :meth:`fit` (not saved).
        self.non_gaussianity = float("nan")
        #: :math:`\nu/N`, the regression's degrees of freedom per simulation (``auto`` only).
        self.dof_share = float("nan")
        #: ``auto`` also refuses a base whose mass falls outside the training targets' range
        #: (:attr:`edge_mass`; the flows set it, module docstring).
        self.support_check = bool(support_check)
        #: :math:`M`, the base's mean mass outside that range (``support_check`` only).
        self.edge_mass = float("nan")
        if self.auto:  # only then, so models saved with a fixed baseline load unchanged
            self.register_buffer("active", torch.ones(()))
        self.regress = context_dim <= BASELINE_MAX_FEATURES
        rows = context_dim if self.regress else 0
        self.register_buffer("weight", torch.zeros(rows, target_dim))
        self.register_buffer("bias", torch.zeros(target_dim))
        self.register_buffer("eigvecs", torch.eye(target_dim))
        self.register_buffer("eigvals", torch.ones(target_dim))

    def fit(self, target: Tensor, context: Tensor, ridge: float = 1e-3) -> None:
        """Ridge regression of ``target`` ``(N, D)`` on ``context`` ``(N, F)`` (both
        standardised, the context flattened)."""
        self.fit_chunks(in_chunks(target, context), ridge)

    @torch.no_grad()
    def fit_chunks(self, chunks: Chunks, ridge: float = 1e-3) -> None:
        r"""The same from :data:`~simgen.streaming.Chunks` of ``(target, context)``, in two
        passes: the means and cross-moments (:class:`~simgen.streaming.CrossMoments`) give
        :math:`W`, :math:`b` and the residual covariance
        :math:`\Sigma = C_{yy} - C_{xy}^\top W - W^\top C_{xy} + W^\top C_{xx} W`; the
        second pass sums the whitened residual's third and fourth powers."""
        m = CrossMoments()
        for y, x in chunks():
            m.update(y, x if self.regress else x[:, :0])
        n = m.count
        d = m.cyy.shape[0]
        cov = m.cyy / n
        weight = None
        if self.regress:
            cxx, cxy = m.cxx / n, m.cxy / n
            gram = cxx + ridge * torch.eye(cxx.shape[0], dtype=cxx.dtype)
            weight = torch.linalg.solve(gram, cxy)
            cov = cov - cxy.T @ weight - weight.T @ cxy + weight.T @ cxx @ weight
            self.weight.copy_(weight)
            self.bias.copy_(m.mean_y - m.mean_x @ weight)
        else:
            self.bias.copy_(m.mean_y)
        cov = (cov + cov.T) / 2 + 1e-6 * torch.eye(d, dtype=cov.dtype)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        self.eigvals.copy_(eigvals.clamp_min(1e-6))
        self.eigvecs.copy_(eigvecs)
        whiten = eigvecs / eigvals.clamp_min(1e-12).sqrt()
        third = fourth = torch.zeros(d, dtype=cov.dtype)
        for y, x in chunks():
            residual = y.double() - m.mean_y
            if weight is not None:
                residual = residual - (x.double() - m.mean_x) @ weight
            z = residual @ whiten
            third, fourth = third + z.pow(3).sum(0), fourth + z.pow(4).sum(0)
        skew, kurt = third / n, fourth / n - 3
        self.non_gaussianity = float((skew.square() + kurt.square() / 4).mean())
        if self.auto:
            self.dof_share = 0.0
            if weight is not None:
                lam = torch.linalg.eigvalsh(cxx).clamp_min(0)
                self.dof_share = float((lam / (lam + ridge)).sum()) / n
            threshold = max(self.threshold, 36 / n)
            keep = self.non_gaussianity <= threshold and self.dof_share <= BASELINE_MAX_DOF_SHARE
            if self.support_check:
                self.edge_mass = self._edge_mass(chunks, m, weight, cov)
                keep = keep and self.edge_mass <= EDGE_MASS_FACTOR * 2 / (n + 1)
            self.active.fill_(float(keep))

    @staticmethod
    def _edge_mass(chunks: Chunks, m: CrossMoments, weight: Tensor | None, cov: Tensor) -> float:
        r""":math:`M = \frac1{ND}\sum_{n,d} q_0\big(\tilde\theta_d \notin [\ell_d, u_d]
        \mid x_n\big)`, :math:`[\ell_d, u_d]` the range of the training targets (two more
        passes: the range, then the marginals' tail masses)."""
        lo = hi = None
        for y, _ in chunks():
            y_lo, y_hi = y.double().min(0).values, y.double().max(0).values
            lo = y_lo if lo is None else torch.minimum(lo, y_lo)
            hi = y_hi if hi is None else torch.maximum(hi, y_hi)
        sd = cov.diagonal().sqrt()
        total = 0.0
        for _, x in chunks():
            mean = m.mean_y.expand(len(x), -1)
            if weight is not None:
                mean = mean + (x.double() - m.mean_x) @ weight
            outside = torch.special.ndtr((lo - mean) / sd) + torch.special.ndtr((mean - hi) / sd)
            total += float(outside.sum())
        return total / (m.count * len(sd))

    @property
    def on(self) -> bool:
        """Whether the baseline is used (always, unless ``auto`` switched it off)."""
        return not self.auto or bool(self.active)

    def mean(self, context: Tensor) -> Tensor:
        """:math:`m(x)` ``(..., D)`` for flattened standardised contexts ``(..., F)``."""
        if not self.regress:
            return self.bias.expand(*context.shape[:-1], -1)
        return context @ self.weight + self.bias

    def root(self) -> tuple[Tensor, Tensor, Tensor]:
        r""":math:`\Sigma^{1/2} = V\Lambda^{1/2}V^\top`, :math:`\Sigma^{-1/2}` and
        :math:`\log|\det\Sigma^{1/2}| = \tfrac12\sum_d\log\lambda_d` (the symmetric root:
        of all :math:`L` with :math:`LL^\top = \Sigma` the one closest to a rescaling of the
        axes, so a nearly diagonal :math:`\Sigma` keeps the coordinates where they are)."""
        vecs, half = self.eigvecs, self.eigvals.sqrt()
        return (vecs * half) @ vecs.T, (vecs / half) @ vecs.T, self.eigvals.log().sum() / 2

    def velocity(self, y: Tensor, t: Tensor, m: Tensor, sigma_min: float) -> Tensor:
        """:math:`v_0(y, t)`; ``t`` is a scalar or one time per row of ``y``."""
        tt = t[..., None] if t.ndim else t
        a = 1 - (1 - sigma_min) * tt
        lam = self.eigvals
        gain = (tt * lam - (1 - sigma_min) * a) / (a * a + tt * tt * lam)
        z = (y - tt * m) @ self.eigvecs
        return m + (z * gain) @ self.eigvecs.T


def flat_context(estimator: DensityEstimator, context: Tensor) -> Tensor:
    """The standardised context flattened, ``(*batch, F)``: what the baseline regresses on."""
    nd = len(estimator.context_shape)
    flat = estimator.context_standardizer(context)
    return flat.reshape(*context.shape[: context.ndim - nd], -1)


def fit_baseline(baseline: GaussianBaseline, estimator: DensityEstimator, chunks: Chunks) -> None:
    """Fit ``baseline`` to the standardised targets and flattened standardised contexts of
    ``chunks`` (after ``estimator``'s standardisers are fitted)."""
    standard = estimator.target_standardizer

    def standardised() -> Iterator[tuple[Tensor, Tensor]]:
        for target, context in chunks():
            yield standard(target), flat_context(estimator, context)

    baseline.fit_chunks(standardised)


def _configured(default: Any, given: Any, options: dict[str, Any], keyword: str) -> Any:
    """``given`` (or the family's ``default``) with the matching entries of ``options``
    popped into it; the dataclass re-validates the result."""
    base = default if given is None else given
    if not isinstance(base, type(default)):
        raise ConfigError(
            f"{keyword} must be a {type(default).__name__}, got {type(given).__name__}."
        )
    names = {f.name for f in dataclasses.fields(base)}
    mine = {k: options.pop(k) for k in list(options) if k in names}
    return dataclasses.replace(base, **mine) if mine else base


class BaselineEstimator(DensityEstimator):
    """What flow matching and diffusion share: a :class:`~simgen.estimators._nets.NetConfig`
    and a :class:`~simgen.estimators.ode.SolverConfig` (each family's defaults, updated by
    the keywords that name their fields), a network built from the first, and an optional
    :class:`GaussianBaseline` fitted with the standardisation.

    A subclass validates its own options and passes them, with everything else as
    ``options``, to :meth:`_configure`; an option that is neither a family option nor a
    config field raises :class:`~simgen.errors.ConfigError` listing the valid ones. The spec
    stores all of them flat (``self.options``), so a spec's options are the constructor's
    keywords.
    """

    #: The family's network and solver defaults.
    net_defaults: ClassVar[NetConfig] = NetConfig()
    solver_defaults: ClassVar[SolverConfig] = SolverConfig()
    #: The threshold tau of ``gaussian_baseline="auto"`` (see the module docstring).
    baseline_threshold: ClassVar[float] = NON_GAUSSIANITY_THRESHOLD
    baseline: GaussianBaseline | None

    def _configure(
        self,
        family_options: dict[str, Any],
        net_config: NetConfig | None,
        solver_config: SolverConfig | None,
        options: dict[str, Any],
        build_baseline: bool,
    ) -> None:
        """Validate and set the configs, options, network and baseline (called by a
        subclass after ``super().__init__``)."""
        options = dict(options)
        self.solver = _configured(self.solver_defaults, solver_config, options, "solver_config")
        self.net_config = _configured(self.net_defaults, net_config, options, "net_config")
        self.check_options(options)
        repeats, baseline = family_options["repeats"], family_options["gaussian_baseline"]
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(f"repeats must be a positive integer, got {repeats!r}.")
        if baseline not in BASELINE_CHOICES:
            raise ConfigError(f"gaussian_baseline must be True, False or 'auto', got {baseline!r}.")
        if self.solver.guidance != 1.0 and self.net_config.context_dropout == 0:
            raise ConfigError(
                "guidance != 1 needs an unconditional field; train with context_dropout > 0 "
                "(e.g. 0.1) or leave guidance=1.0."
            )
        self.options = {**family_options, **self.net_config.to_dict(), **self.solver.to_dict()}
        self.repeats = int(repeats)
        self.net = self.net_config.build(self.target_dim, self.context_features, self.target_dim)
        self.baseline = None
        if build_baseline:
            self.baseline = GaussianBaseline(
                math.prod(self.context_shape),
                self.target_dim,
                auto=baseline == "auto",
                threshold=self.baseline_threshold,
            )

    @classmethod
    def option_names(cls) -> list[str]:
        fields = [f.name for f in dataclasses.fields(NetConfig) + dataclasses.fields(SolverConfig)]
        return sorted({*super().option_names(), *fields})

    def fit_standardization_chunks(self, chunks: Chunks) -> None:
        super().fit_standardization_chunks(chunks)
        if self.baseline is not None:
            fit_baseline(self.baseline, self, chunks)

    def _flat_context(self, context: Tensor) -> Tensor:
        return flat_context(self, context)

    def baseline_mean(self, context: Tensor) -> Tensor:
        """:math:`m(x)` ``(*batch, D)`` (zeros without a baseline)."""
        if self.baseline is None:
            nd = len(self.context_shape)
            return context.new_zeros(*context.shape[: context.ndim - nd], self.target_dim)
        return self.baseline.mean(self._flat_context(context))

    # -- i.i.d. trials (simgen.iid, simgen.estimators.compose) ----------------------------
    #: The prior in standardised coordinates, set by :meth:`compose_with_prior`.
    _trial_prior: StandardPrior | None = None

    def compose_with_prior(self, prior: Distribution, support: str) -> None:
        """Attach the prior that composing i.i.d. trials needs (a posterior calls this before
        drawing for a trial set). The estimator must model θ itself: ``support="reject"``,
        or ``"transform"`` with an unbounded prior."""
        unbounded = prior.support in (constraints.real, constraints.real_vector) or (
            isinstance(prior.support, constraints.independent)
            and prior.support.base_constraint is constraints.real
        )
        if support != "reject" and not unbounded:
            raise ConfigError(
                "Composing i.i.d. trials needs the family to model θ itself, but this "
                "posterior models the logit-transformed θ of a bounded prior. Train with "
                "NPE(..., support='reject') (the default of 'diffusion' and 'flow_matching')."
            )
        std = self.target_standardizer
        self._trial_prior = standard_prior(prior, std.loc.detach(), std.scale.detach())

    def is_trial_context(self, context: Tensor) -> bool:
        """Whether ``context`` is padded trial sets ``(B, n, *context_shape)``."""
        return context.ndim == len(self.context_shape) + 2

    def _trial_parts(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embedded trials ``(B, n, F)``, their baseline means ``(B, n, D)``, and the mask of
        trials present ``(B, n)`` (missing trials are rows of NaN, filled with trial 0)."""
        if self._trial_prior is None:
            raise NotFittedError(
                "A trial set reached the estimator without its prior; sample through the "
                "posterior (posterior.sample(shape, x=trials)), which attaches it."
            )
        nd = len(self.context_shape)
        mask = ~torch.isnan(context).reshape(*context.shape[:2], -1).all(-1)
        shaped = mask.reshape(*mask.shape, *([1] * nd))
        context = torch.where(shaped, context, context[:, :1].expand_as(context))
        return self.embed(context), self.baseline_mean(context), mask

    def trial_covariances(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The clipped per-trial posterior precision and the prior's, ``(D, D)`` each, in
        standardised coordinates (float64; :mod:`simgen.estimators.compose`)."""
        assert self._trial_prior is not None
        if self.baseline is None:
            raise ConfigError(
                "Composing i.i.d. trials needs the per-trial posterior covariance of the "
                "linear-Gaussian baseline; train with gaussian_baseline='auto' (default) or True."
            )
        vals, vecs = self.baseline.eigvals.double(), self.baseline.eigvecs.double()
        sigma_inv = (vecs / vals) @ vecs.T
        prior_inv = torch.linalg.inv(self._trial_prior.covariance().to(device))
        return composed_precision(sigma_inv.to(device), prior_inv), prior_inv

    def composed_denoiser(
        self, y: Tensor, alpha: Tensor, sigma: Tensor, per_trial: Tensor, mask: Tensor,
        precisions: tuple[Tensor, Tensor],
    ) -> Tensor:  # fmt: skip
        """:func:`~simgen.estimators.compose.compose_denoisers` for points ``y`` ``(S, B, D)``
        and per-trial denoisers ``(S, B, n, D)`` at one time."""
        assert self._trial_prior is not None
        mu_prior, extra = self._trial_prior.denoiser(y, alpha, sigma)
        sigma_inv, prior_inv = precisions
        r = float((alpha / sigma) ** 2)
        prior_extra = prior_inv if extra is None else extra
        return compose_denoisers(per_trial, mask, mu_prior, sigma_inv, prior_extra, r)

    def draw(self, num: int, context: Tensor) -> Tensor:
        """``(num, B, D)`` draws; for padded trial sets ``(B, n, *context_shape)`` from the
        composed posterior of each set (:mod:`simgen.estimators.compose`)."""
        if not self.is_trial_context(context):
            return super().draw(num, context)
        with torch.no_grad():
            c, m, mask = self._trial_parts(context)
            precisions = self.trial_covariances(context.device)
            per = max(1, TRIAL_ROWS // mask.numel())
            parts = [
                self._sample_trials(min(per, num - start), c, m, mask, precisions)
                for start in range(0, num, per)
            ]
            y = torch.cat(parts) if parts else c.new_zeros(0, len(c), self.target_dim)
            return self.target_standardizer.inverse(y)

    def _sample_trials(
        self, num: int, c: Tensor, m: Tensor, mask: Tensor, precisions: tuple[Tensor, Tensor]
    ) -> Tensor:
        """``(num, B, D)`` standardised draws of the composed posteriors (per family)."""
        raise NotImplementedError

    def forward_trials_error(self) -> NoDensityError:
        return NoDensityError(
            f"The {self.name!r} posterior of several i.i.d. trials is composed from per-trial "
            "scores and has no density (simgen.estimators.compose); sample it, or use NLE "
            "or NRE, whose log_prob sums over trials."
        )

    def joint_features(self, context: Tensor) -> Tensor:
        """The embedded context with the baseline mean as its last ``D`` columns
        ``(*batch, F + D)``, so a distribution's broadcasting and flattening carry both."""
        return torch.cat([self.embed(context), self.baseline_mean(context)], dim=-1)


class BaselineDistribution(GenerativeDistribution):
    """Base of the distributions of a :class:`BaselineEstimator`, whose feature rows are
    :meth:`BaselineEstimator.joint_features`."""

    def __init__(self, estimator: BaselineEstimator, features: Tensor):
        self.estimator = estimator
        super().__init__(features, estimator.target_standardizer)

    def _split(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Context features and baseline means from the joint feature rows."""
        d = self.event_shape[0]
        return features[..., :-d], features[..., -d:]
