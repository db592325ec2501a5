r"""Conditional flow matching (FMPE, Dax et al. 2023): ``"flow_matching"``.

A time-dependent velocity field :math:`v_\phi(y, t; c)` transports the standard normal at
:math:`t = 0` to the standardised posterior at :math:`t = 1`. Training regresses it onto the
velocity of the linear (rectified, optimal-transport) conditional path

.. math::
    y_t = \big(1 - (1 - \sigma_{\min})t\big)\,y_0 + t\,\tilde\theta, \qquad
    u_t = \tilde\theta - (1 - \sigma_{\min})\,y_0, \qquad y_0 \sim \mathcal N(0, I),

.. math::
    \mathcal L(\phi) = \mathbb E_{t \sim p(t),\,(\theta, x),\,y_0}
      \big\| v_\phi(y_t, t; c) - u_t \big\|^2 .

Because :math:`u_t` is the conditional velocity of a path whose marginal at :math:`t=1` is
:math:`p(\theta\mid x)` (up to :math:`\sigma_{\min}`), the minimiser's marginal velocity
field generates the posterior (Lipman et al., 2023). :math:`t` is drawn with density
:math:`\propto t^{a}` (``time_power`` :math:`a`; ``0`` is uniform, :math:`a > 0` emphasises
the data end as the FMPE paper does). :math:`a = 1` is the default: over seeds 0-7 at 1,000
simulations it moved two_moons from C2ST 0.779 to 0.729, gaussian_linear 0.547 to 0.547 and
slcp 0.946 to 0.952, and at 10,000 (seed 0) two_moons 0.648 to 0.631 and slcp 0.847 to 0.788
(sbi's FMPE 0.792, 0.621, 0.944, 0.752, 0.806; ``benchmarks/results_seeds.md``).

**Linear-Gaussian baseline** (``gaussian_baseline``; ``"auto"`` by default). Before training, a
ridge regression of :math:`\tilde\theta` on the standardised, flattened :math:`\tilde x`
fits :math:`q_0(\tilde\theta\mid x) = \mathcal N(m(x), \Sigma)` with
:math:`m(x) = W^\top\tilde x + b` and :math:`\Sigma` the residual covariance. For a
Gaussian target the marginal velocity of the path above is exact and affine: with
:math:`a_t = 1 - (1-\sigma_{\min})t` and :math:`C_t = a_t^2 I + t^2\Sigma`,

.. math::
    v_0(y, t; x) = \mathbb E[u_t \mid y_t = y]
      = m + \big(t\Sigma - (1-\sigma_{\min})a_t I\big) C_t^{-1} (y - t\,m),

computed in the eigenbasis of :math:`\Sigma` (diagonal, so no solve per step). The network
learns only the residual :math:`v_\phi = v_0 + r_\phi`. A linear-Gaussian posterior is then
right from the first step, and the network's capacity (and layer norm, which discards the
scale a linear map needs) goes to the non-Gaussian part. Contexts with more than
``BASELINE_MAX_FEATURES`` entries use :math:`W = 0` (an unconditional Gaussian).

``gaussian_baseline="auto"`` decides from the data whether the baseline is right: with
:math:`z` the ridge residual whitened by :math:`\Sigma` (in its eigenbasis), per-direction
skewness :math:`S_d = \overline{z_d^3}` and excess kurtosis :math:`K_d = \overline{z_d^4} - 3`,
the non-Gaussianity :math:`E = \frac1D\sum_d (S_d^2 + K_d^2/4)` (the Jarque-Bera statistic
divided by :math:`N/6`, so :math:`N E/6 \sim \chi^2_2`-like per direction under a Gaussian
residual; its null mean is :math:`12/N`) keeps the baseline iff
:math:`E \le \max(0.1, 36/N)`. A linear-Gaussian posterior leaves a Gaussian,
x-independent residual; a nonlinear or non-Gaussian one (two_moons' crescent, slcp's sign
symmetry) leaves a skewed, heavy- or light-tailed residual whose affine field the network would
have to cancel. In :math:`\theta` coordinates (``support="reject"``, the default since session
6), at 1,000 simulations, seeds 0-3: gaussian_linear :math:`E = 0.011`-:math:`0.021`,
gaussian_linear_uniform 0.006-0.014; slcp 0.087-0.171 (0.066-0.189 over seeds 0-7), langevin
0.094-0.108, cosmology_field 0.088-0.61, two_moons 0.27-0.33, particle_shower 0.21-0.43,
bernoulli_glm 0.51-1.1, gaussian_mixture 1.2-3.6, sir 30-95. The threshold 0.1 was placed in
the gap of the logit coordinates (slcp 0.33-2.0 there); in :math:`\theta` coordinates slcp
straddles it. Diffusion uses 0.05 instead (session 7). For flow matching 0.1 stays, by
measurement (``benchmarks/results_seeds.md``, session 7). On slcp at 1,000 simulations,
dropping the baseline on the two seeds it keeps (0 and 5) gives 0.932 / 0.929 instead of
0.944 / 0.960. Over 8 seeds that is 0.926 against 0.932, but training costs 2.8 s against
2.5 s, and FMPE's time on the same data is 4.9-5.8 s. At 10,000 simulations the baseline is
the better choice on 2 of 3 such seeds (0.769 / 0.722 against 0.815 / 0.763).

**Bounded priors.** Under NPE this family models :math:`\theta` itself and rejects draws
outside a bounded prior's support (``npe_support = "reject"``, see :mod:`simgen.posterior`),
rather than modelling :math:`\mathrm{logit}`-type coordinates. Fitted on 1,000 slcp
simulations in logit space the field stays broad there, and a broad law in logit space
piles mass against the faces of the box (posterior std of :math:`\theta_1` 1.6 against the
reference's 0.7): over seeds 0-7 slcp went from C2ST 0.952 to 0.932 (sbi's FMPE, which
also rejects, 0.943 in the same run), and at 10,000 simulations (seed 0) from 0.788 to
0.738 (FMPE 0.806). Unbounded priors (gaussian_linear) are unaffected.

**Sampling** integrates :math:`\dot y = v_\phi` from 0 to 1 with a fixed-step solver
(:class:`~simgen.estimators.ode.SolverConfig`) on the grid :math:`t_k = 1 - (1 - k/K)^p`
(``steps`` :math:`K = 16`, ``grid_power`` :math:`p = 2`), whose short steps sit at the data end,
where the field of a concentrated posterior bends hardest. Measured on two_moons (C2ST of
5,000 draws from one trained model, seed 0): at 10,000 simulations 8 uniform Heun steps
gave 0.805, 16 uniform 0.696, 16 with :math:`p = 2` 0.648, 32 uniform 0.635 (sbi's FMPE on
the same data: 0.752); at 1,000 simulations, where the learned field's own error dominates,
it moved the mean over seeds 0-3 by 0.02 (0.788 to 0.767, ``benchmarks/results_seeds.md``);
on slcp no grid moved C2ST by more than 0.005.
10,000 draws cost ~0.4 CPU-s. **log_prob** integrates back from the sample
to the base with the instantaneous change of variables (:func:`~simgen.estimators.ode.
ode_log_prob`): exact divergence for :math:`D \le` ``exact_trace_max_dim`` (default 4),
Hutchinson's unbiased single-probe estimate above it, so ``log_prob`` is then a stochastic
estimate. The solver's discretisation error also enters the density.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ._nets import ConditionalNet, GenerativeDistribution, LossNoise, standard_normal_log_prob
from .base import DensityEstimator
from .ode import SolverConfig, ode_log_prob, odeint

__all__ = ["FlowMatching", "FlowMatchingDistribution", "GaussianBaseline"]

#: Largest flattened context for which the baseline regresses on x (a ridge solve of this size).
BASELINE_MAX_FEATURES = 4096
#: ``gaussian_baseline="auto"`` drops the baseline when the ridge residual's non-Gaussianity
#: :math:`E` exceeds this (and three times its null mean, :math:`36/N`); see the module
#: docstring. Flow matching's threshold; diffusion's is lower (0.05, session 7).
NON_GAUSSIANITY_THRESHOLD = 0.1


class GaussianBaseline(nn.Module):
    r"""The linear-Gaussian :math:`q_0(\tilde\theta\mid x)` and its exact velocity :math:`v_0`.

    See the module docstring. Its buffers are saved with the weights, so a loaded model
    needs no refit.
    """

    def __init__(
        self,
        context_dim: int,
        target_dim: int,
        auto: bool = False,
        threshold: float = NON_GAUSSIANITY_THRESHOLD,
    ):
        super().__init__()
        self.auto = bool(auto)
        #: ``auto`` keeps the baseline iff :math:`E \le \max(\text{threshold}, 36/N)`.
        self.threshold = float(threshold)
        #: :math:`E`, the residual's non-Gaussianity at the last :meth:`fit` (not saved).
        self.non_gaussianity = float("nan")
        if self.auto:  # only then, so models saved with a fixed baseline load unchanged
            self.register_buffer("active", torch.ones(()))
        self.regress = context_dim <= BASELINE_MAX_FEATURES
        rows = context_dim if self.regress else 0
        self.register_buffer("weight", torch.zeros(rows, target_dim))
        self.register_buffer("bias", torch.zeros(target_dim))
        self.register_buffer("eigvecs", torch.eye(target_dim))
        self.register_buffer("eigvals", torch.ones(target_dim))

    @torch.no_grad()
    def fit(self, y: Tensor, x: Tensor, ridge: float = 1e-3) -> None:
        """Ridge regression of ``y`` ``(N, D)`` on ``x`` ``(N, F)`` (both standardised)."""
        y, x = y.double(), x.double()
        residual = y - y.mean(0)
        if self.regress:
            xc = x - x.mean(0)
            gram = xc.T @ xc / len(x) + ridge * torch.eye(x.shape[1], dtype=x.dtype)
            weight = torch.linalg.solve(gram, xc.T @ residual / len(x))
            residual = residual - xc @ weight
            self.weight.copy_(weight)
            self.bias.copy_(y.mean(0) - x.mean(0) @ weight)
        else:
            self.bias.copy_(y.mean(0))
        cov = residual.T @ residual / len(y) + 1e-6 * torch.eye(y.shape[1], dtype=y.dtype)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        self.eigvals.copy_(eigvals.clamp_min(1e-6))
        self.eigvecs.copy_(eigvecs)
        z = residual @ eigvecs / eigvals.clamp_min(1e-12).sqrt()
        skew, kurt = z.pow(3).mean(0), z.pow(4).mean(0) - 3
        self.non_gaussianity = float((skew.square() + kurt.square() / 4).mean())
        if self.auto:
            threshold = max(self.threshold, 36 / len(y))
            self.active.fill_(float(self.non_gaussianity <= threshold))

    @property
    def on(self) -> bool:
        """Whether the baseline velocity is used (always, unless ``auto`` switched it off)."""
        return not self.auto or bool(self.active)

    def mean(self, x: Tensor) -> Tensor:
        """:math:`m(x)` for flattened standardised contexts ``(..., F)``."""
        if not self.regress:
            return self.bias.expand(*x.shape[:-1], -1)
        return x @ self.weight + self.bias

    def velocity(self, y: Tensor, t: Tensor, m: Tensor, sigma_min: float) -> Tensor:
        """:math:`v_0(y, t)`; ``t`` is a scalar or one time per row of ``y``."""
        tt = t[..., None] if t.ndim else t
        a = 1 - (1 - sigma_min) * tt
        lam = self.eigvals
        gain = (tt * lam - (1 - sigma_min) * a) / (a * a + tt * tt * lam)
        z = (y - tt * m) @ self.eigvecs
        return m + (z * gain) @ self.eigvecs.T


class BaselineEstimator(DensityEstimator):
    """A density estimator that may learn its residual from a :class:`GaussianBaseline`
    (``self.baseline``, or ``None``), fitted with the standardisation: the shared part of
    flow matching and diffusion."""

    baseline: GaussianBaseline | None

    def fit_standardization(self, target: Tensor, context: Tensor) -> None:
        super().fit_standardization(target, context)
        if self.baseline is not None:
            self.baseline.fit(self.target_standardizer(target), self._flat_context(context))

    def _flat_context(self, context: Tensor) -> Tensor:
        nd = len(self.context_shape)
        flat = self.context_standardizer(context)
        return flat.reshape(*context.shape[: context.ndim - nd], -1)

    def baseline_mean(self, context: Tensor) -> Tensor:
        """:math:`m(x)` ``(*batch, D)`` (zeros without a baseline)."""
        if self.baseline is None:
            nd = len(self.context_shape)
            return context.new_zeros(*context.shape[: context.ndim - nd], self.target_dim)
        return self.baseline.mean(self._flat_context(context))


class FlowMatching(BaselineEstimator):
    r"""Conditional flow matching :math:`q_\phi(\theta\mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        hidden_features: Hidden widths of the velocity MLP.
        time_features: Size of the sinusoidal time embedding.
        sigma_min: Width of the path at the data end.
        time_power: Train times are drawn with density :math:`\propto t^{a}` (default 1).
        context_dropout: Probability of dropping the context in training (for guidance).
        architecture, time_embedding: See :class:`~simgen.estimators._nets.ConditionalNet`.
        gaussian_baseline: Learn the residual from a linear-Gaussian velocity (see above):
            ``True``, ``False`` or ``"auto"`` (the default: on iff the ridge residual is
            Gaussian). Measured over 4 seeds at 1,000 simulations (``results_seeds.md``):
            the baseline gives gaussian_linear 0.547 (0.758 without) but two_moons 0.918
            (0.802 without) and slcp 0.958 (0.950 without); ``"auto"`` picks the better one
            on all three.
        grid_power: Exponent :math:`p` of the solver's time grid (see the module
            docstring); 1 is uniform.
        steps, solver, guidance, exact_trace_max_dim: See
            :class:`~simgen.estimators.ode.SolverConfig`.

    Example:
        >>> fm = FlowMatching(2, (3,))
        >>> fm(torch.randn(5, 3)).sample((10,)).shape
        torch.Size([10, 5, 2])
    """

    name = "flow_matching"
    npe_support = "reject"
    #: Measured on two_moons (4 seeds, no baseline): 3e-3 reached C2ST 0.80 where 1e-3
    #: stopped at 0.92 (the layer-normed net tolerates the larger step). Patience 35 rather
    #: than the loop's 20 (seeds 0-3, ``results_seeds.md``): two_moons 0.788 vs 0.797,
    #: slcp 0.944 vs 0.950, gaussian_linear 0.545 vs 0.548, for ~1.5x the epochs.
    train_defaults = {"learning_rate": 3e-3, "patience": 35}
    #: Options of models saved before they existed: a uniform solver grid, uniform train times.
    LEGACY_OPTIONS = {"grid_power": 1.0, "time_power": 0.0}

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (64, 64, 64),
        time_features: int = 32,
        sigma_min: float = 1e-3,
        time_power: float = 1.0,
        context_dropout: float = 0.0,
        repeats: int = 1,
        architecture: str = "resnet",
        time_embedding: str = "fourier",
        gaussian_baseline: bool | str = "auto",
        grid_power: float = 2.0,
        steps: int = 16,
        solver: str = "heun",
        guidance: float = 1.0,
        exact_trace_max_dim: int = 4,
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        self.solver = SolverConfig(steps, solver, guidance, exact_trace_max_dim)
        if not 0 <= sigma_min < 1:
            raise ConfigError(f"sigma_min must be in [0, 1), got {sigma_min!r}.")
        if not time_power > -1:
            raise ConfigError(f"time_power must be > -1, got {time_power!r}.")
        if isinstance(grid_power, bool) or not (
            isinstance(grid_power, (int, float)) and grid_power > 0
        ):
            raise ConfigError(f"grid_power must be a number > 0, got {grid_power!r}.")
        if not 0 <= context_dropout < 1:
            raise ConfigError(f"context_dropout must be in [0, 1), got {context_dropout!r}.")
        if guidance != 1.0 and context_dropout == 0:
            raise ConfigError(
                "guidance != 1 needs an unconditional field; train with context_dropout > 0 "
                "(e.g. 0.1) or leave guidance=1.0."
            )
        if gaussian_baseline not in (True, False, "auto"):
            raise ConfigError(
                f"gaussian_baseline must be True, False or 'auto', got {gaussian_baseline!r}."
            )
        self.options = {
            "hidden_features": list(hidden_features),
            "time_features": time_features,
            "sigma_min": sigma_min,
            "time_power": time_power,
            "context_dropout": context_dropout,
            "repeats": repeats,
            "architecture": architecture,
            "time_embedding": time_embedding,
            "gaussian_baseline": gaussian_baseline,
            "grid_power": grid_power,
            **self.solver.to_dict(),
        }
        self.grid_power = float(grid_power)
        self.sigma_min = float(sigma_min)
        self.time_power = float(time_power)
        self.repeats = int(repeats)
        self.net = ConditionalNet(
            target_dim,
            self.context_features,
            target_dim,
            hidden_features,
            time_features,
            context_dropout,
            architecture,
            time_embedding,
        )
        context_dim = math.prod(self.context_shape)
        self.baseline = (
            GaussianBaseline(context_dim, target_dim, auto=gaussian_baseline == "auto")
            if gaussian_baseline
            else None
        )

    def time_grid(self, device: torch.device | str | None = None) -> Tensor:
        """The solver's times :math:`t_k = 1 - (1 - k/K)^p`, ``k = 0..K`` (``K = steps``,
        ``p = grid_power``): from the base (0) to the data (1), with the short steps at
        the data end when ``p > 1``."""
        s = torch.linspace(0, 1, self.solver.steps + 1, device=device)
        return s if self.grid_power == 1 else 1 - (1 - s) ** self.grid_power

    def _with_base(self, v: Tensor, y: Tensor, t: Tensor, m: Tensor) -> Tensor:
        """The network's residual ``v`` plus the baseline velocity (``v`` itself without one)."""
        if self.baseline is None or not self.baseline.on:
            return v
        return v + self.baseline.velocity(y, t, m, self.sigma_min)

    def velocity(self, y: Tensor, t: Tensor, c: Tensor, m: Tensor) -> Tensor:
        """The (guided) velocity :math:`v_\\phi(y, t; c)` on rows ``(M, D)``; ``m`` is the
        baseline mean of each row."""
        v = self.net(y, t, c)
        w = self.solver.guidance
        if w != 1.0:
            v0 = self.net(y, t, c, unconditional=True)
            v = v0 + w * (v - v0)
        return self._with_base(v, y, t, m)

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y1 = self.target_standardizer(target)
        c, m = self.embed(context), self.baseline_mean(context)
        draw = LossNoise(self.training, len(y1), y1.device, self.repeats)
        y1, c, m = draw.repeat(y1), draw.repeat(c), draw.repeat(m)
        y0 = draw.randn(*y1.shape)
        t = draw.rand(len(y1)) ** (1 / (1 + self.time_power))
        tt = t[..., None]
        yt = (1 - (1 - self.sigma_min) * tt) * y0 + tt * y1
        u = y1 - (1 - self.sigma_min) * y0
        v = self._with_base(self.net(yt, t, c), yt, t, m)
        return draw.reduce((v - u).square().sum(-1))

    def forward(self, context: Tensor) -> Distribution:
        # The baseline mean rides along as the last D feature columns, so the
        # distribution's broadcasting and flattening carry it with the context.
        features = torch.cat([self.embed(context), self.baseline_mean(context)], dim=-1)
        return FlowMatchingDistribution(self, features)


class FlowMatchingDistribution(GenerativeDistribution):
    """:math:`q_\\phi(\\theta\\mid x)` of a :class:`FlowMatching` (ODE sampling, density)."""

    def __init__(self, estimator: FlowMatching, features: Tensor):
        self.estimator = estimator
        super().__init__(features, estimator.target_standardizer)

    def _split(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Context features and baseline means from the joint feature rows."""
        d = self.event_shape[0]
        return features[..., :-d], features[..., -d:]

    def _field(self, features: Tensor):
        c, m = self._split(features)
        return lambda y, t: self.estimator.velocity(y, t, c, m)

    def _fast_field(self, features: Tensor):
        """The sampling field with the context's first-layer term computed once per context.

        ``features`` is ``(B, F + D)``, one row per distinct context; the field acts on
        ``(S, B, D)`` so every sample of a context shares its ``(B, H)`` term.
        """
        est = self.estimator
        net, w = est.net, est.solver.guidance
        features, m = self._split(features)
        h = net.condition(features)
        if w == 1.0:
            return lambda y, t: est._with_base(net.forward_conditioned(y, t, h), y, t, m)
        h0 = net.condition(features, unconditional=True)

        def field(y: Tensor, t: Tensor) -> Tensor:
            v0 = net.forward_conditioned(y, t, h0)
            v = v0 + w * (net.forward_conditioned(y, t, h) - v0)
            return est._with_base(v, y, t, m)

        return field

    def sample_standard(self, c: Tensor) -> Tensor:
        cfg = self.estimator.solver
        ts = self.estimator.time_grid(c.device)
        y0 = torch.randn(c.shape[0], self.event_shape[0], device=c.device)
        return odeint(self._field(c), y0, ts, cfg.solver)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Draws by the ODE sampler, integrating all ``(sample, context)`` pairs at once."""
        if self.estimator.training:  # context dropout is live: use the plain path
            return super().sample(sample_shape)
        shape = torch.Size(sample_shape) + self.batch_shape
        cfg = self.estimator.solver
        features = self.features.reshape(-1, self.features.shape[-1])
        with torch.no_grad():
            ts = self.estimator.time_grid(features.device)
            y0 = torch.randn(
                shape.numel() // len(features),
                len(features),
                self.event_shape[0],
                device=features.device,
            )
            y = odeint(self._fast_field(features), y0, ts, cfg.solver)
            return (y * self.scale + self.loc).reshape(shape + self.event_shape)

    def log_prob_standard(self, y: Tensor, c: Tensor) -> Tensor:
        cfg = self.estimator.solver
        ts = self.estimator.time_grid(c.device).flip(0)
        y0, ell = ode_log_prob(self._field(c), y, ts, cfg.solver, cfg.exact_trace_max_dim)
        return standard_normal_log_prob(y0) + ell
