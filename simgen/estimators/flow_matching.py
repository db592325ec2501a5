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
:math:`\propto t^{a}` (``time_power`` :math:`a`; ``0`` is uniform). The default :math:`a = 1`
emphasises the data end, as the FMPE paper does: it lowered two_moons' C2ST at 1,000 and
10,000 simulations and slcp's at 10,000, and left gaussian_linear's unchanged
(``benchmarks/results_seeds.md``).

**Linear-Gaussian baseline** (``gaussian_baseline``, ``"auto"`` by default; see
:mod:`simgen.estimators.baseline`). The network learns the residual
:math:`v_\phi = v_0 + r_\phi` from the exact velocity :math:`v_0` of a ridge-fitted Gaussian
:math:`q_0(\tilde\theta\mid x)`. The baseline makes gaussian_linear right at once
(C2ST 0.547 against 0.758 without) and costs two_moons accuracy. ``"auto"`` keeps it iff the
ridge residual's non-Gaussianity is at most 0.05 (diffusion's threshold too): the Gaussian
tasks sit at or below 0.02 at 1,000 simulations and keep it; slcp (0.05-0.19) and
cosmology_field (0.06-0.29) drop it, because a kept baseline held slcp's field near the
Gaussian (tuning-set C2ST 0.949 with it, 0.930 without, at 1k) and made one cosmology_field
posterior leave the prior's box entirely (``benchmarks/results_report_generative.md``,
"Tuning set: flow matching on slcp"); cosmology_field's 1,024 pixels on 1,000 simulations
are refused by the degrees-of-freedom limit of :mod:`simgen.estimators.baseline` whatever
the statistic. The trade-off: on slcp at 10k the baseline helped 2
of 3 seeds in ``benchmarks/results_seeds.md`` but trailed by 0.012 on the one tuning seed.

**Bounded priors.** Under NPE this family models :math:`\theta` itself and rejects draws
outside a bounded prior's support (``npe_support = "reject"``, see :mod:`simgen.posterior`):
in logit-type coordinates a field that stays broad piles mass against the faces of the box,
and slcp's C2ST was worse there (``benchmarks/results_seeds.md``).

**Sampling** integrates :math:`\dot y = v_\phi` from 0 to 1 with a fixed-step solver
(:class:`~simgen.estimators.ode.SolverConfig`) on the grid :math:`t_k = 1 - (1 - k/K)^p`
(``steps`` :math:`K = 16`, ``grid_power`` :math:`p = 2`), whose short steps sit at the data
end, where the field of a concentrated posterior bends hardest: on two_moons at 10,000
simulations 16 such steps gave C2ST 0.648, 16 uniform ones 0.696 and 32 uniform ones 0.635
(``benchmarks/results_seeds.md``).
**I.i.d. trials.** For padded trial sets ``(B, n, *x_shape)``, :meth:`draw` integrates the
composed velocity (:mod:`simgen.estimators.compose`, through the velocity-to-denoiser
relation; an approximation, exact for a linear-Gaussian model, without a density).
**log_prob** integrates back from the sample to the base with the instantaneous change of
variables (:func:`~simgen.estimators.ode.ode_log_prob`): exact divergence for
:math:`D \le` ``exact_trace_max_dim`` (default 4), Hutchinson's unbiased single-probe
estimate above it, so ``log_prob`` is then a stochastic estimate. The solver's
discretisation error also enters the density.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ._nets import LossNoise, NetConfig, standard_normal_log_prob
from .baseline import BaselineDistribution, BaselineEstimator
from .compose import check_trial_precision, floor_ratio
from .compose_sampler import CORRECTOR_STEP, TrialComposition, check_corrector
from .ode import SolverConfig, ode_log_prob, odeint

__all__ = ["FlowMatching", "FlowMatchingDistribution"]


def check_path_options(sigma_min: float, time_power: float, grid_power: float) -> None:
    """Validate the flow-matching path's options: ``sigma_min`` in [0, 1), ``time_power`` >
    −1 (the train-time density ∝ t^time_power must be integrable), ``grid_power`` > 0."""
    if not 0 <= sigma_min < 1:
        raise ConfigError(f"sigma_min must be in [0, 1), got {sigma_min!r}.")
    if not time_power > -1:
        raise ConfigError(f"time_power must be > -1, got {time_power!r}.")
    if isinstance(grid_power, bool) or not (
        isinstance(grid_power, (int, float)) and grid_power > 0
    ):
        raise ConfigError(f"grid_power must be a number > 0, got {grid_power!r}.")


class FlowMatching(BaselineEstimator):
    r"""Conditional flow matching :math:`q_\phi(\theta\mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        sigma_min: Width of the path at the data end.
        time_power: Train times are drawn with density :math:`\propto t^{a}` (default 1).
        repeats: Noise draws per training row and step (averaged).
        gaussian_baseline: Learn the residual from a linear-Gaussian velocity: ``True``,
            ``False`` or ``"auto"`` (the default: on iff the ridge residual is Gaussian).
        grid_power: Exponent :math:`p` of the solver's time grid (see the module
            docstring); 1 is uniform.
        trial_precision: Composing i.i.d. trials, ``"shared"`` (the baseline's one per-trial
            covariance) or ``"per_trial"`` (each trial's, from draws of its own posterior;
            :mod:`simgen.estimators.compose`, where ``benchmarks/results_iid.md`` shows why
            the default is shared). Single observations ignore it.
        corrector_steps, corrector_step: Composing i.i.d. trials, the Langevin moves after the
            ODE and their step :math:`\epsilon` (:mod:`simgen.estimators.compose_sampler`;
            0 moves, off, by default: ``benchmarks/results_iid.md``).
        net_config: A :class:`~simgen.estimators._nets.NetConfig`; its fields
            (``hidden_features``, ``time_features``, ``architecture``, ``time_embedding``,
            ``context_dropout``) may also be passed as keywords, which override it.
        solver_config: A :class:`~simgen.estimators.ode.SolverConfig` (default 16 Heun
            steps); its fields (``steps``, ``solver``, ``guidance``,
            ``exact_trace_max_dim``) may also be passed as keywords.

    Example:
        >>> fm = FlowMatching(2, (3,), hidden_features=(32, 32), steps=8)
        >>> fm(torch.randn(5, 3)).sample((10,)).shape
        torch.Size([10, 5, 2])
    """

    name = "flow_matching"
    npe_support = "reject"
    solver_defaults = SolverConfig(steps=16)
    #: The ``"auto"`` baseline's threshold (module docstring).
    baseline_threshold = 0.05
    #: Learning rate 3e-3 (the layer-normed net tolerates the larger step; two_moons C2ST
    #: 0.80 against 0.92 at 1e-3) and a longer patience than the training loop's, which
    #: lowered C2ST on two_moons and slcp for ~1.5x the epochs (``results_seeds.md``).
    #: Patience 34: it stops after 34 epochs without improvement, as measured there.
    train_defaults = {"learning_rate": 3e-3, "patience": 34}
    #: Options of models saved before they existed: a uniform solver grid, uniform train times.
    LEGACY_OPTIONS = {"grid_power": 1.0, "time_power": 0.0}

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        *,
        sigma_min: float = 1e-3,
        time_power: float = 1.0,
        repeats: int = 1,
        gaussian_baseline: bool | str = "auto",
        grid_power: float = 2.0,
        trial_precision: str = "shared",
        corrector_steps: int = 0,
        corrector_step: float = CORRECTOR_STEP,
        net_config: NetConfig | None = None,
        solver_config: SolverConfig | None = None,
        **options: Any,
    ):
        check_path_options(sigma_min, time_power, grid_power)
        family = {
            "sigma_min": sigma_min,
            "time_power": time_power,
            "repeats": repeats,
            "gaussian_baseline": gaussian_baseline,
            "grid_power": grid_power,
            "trial_precision": check_trial_precision(trial_precision),
        }
        family["corrector_steps"], family["corrector_step"] = check_corrector(
            corrector_steps, corrector_step
        )
        super().__init__(target_dim, context_shape, embedding_net)
        self._configure(
            family, net_config, solver_config, options, build_baseline=bool(gaussian_baseline)
        )
        self.grid_power = float(grid_power)
        self.sigma_min = float(sigma_min)
        self.time_power = float(time_power)
        self.trial_precision = trial_precision
        self.corrector_steps, self.corrector_step = (
            family["corrector_steps"],
            family["corrector_step"],
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
        if self.is_trial_context(context):
            raise self.forward_trials_error()
        return FlowMatchingDistribution(self, self.joint_features(context))

    def _sample_trials(
        self, num: int, c: Tensor, m: Tensor, mask: Tensor, precisions: tuple[Tensor, Tensor]
    ) -> Tensor:
        r"""The ODE sampler on the composed velocity, then the Langevin corrector at
        :math:`t = 1` (:mod:`simgen.estimators.compose_sampler`). The path has
        :math:`\alpha_t = t`, :math:`\sigma_t = a_t = 1 - (1 - \sigma_{\min})t`, and the
        denoiser is :math:`\mu = a_t v + (1 - \sigma_{\min})y`
        (:mod:`simgen.estimators.compose`)."""
        k = 1 - self.sigma_min
        assert self.baseline is not None  # trial_covariances checked it
        r_c = floor_ratio(
            self.baseline.eigvals
        )  # residual floor; its time solves (1 - k t) / t = r_c
        t_c = torch.tensor(1 / (k + r_c), device=c.device)
        single = lambda f: FlowMatchingDistribution(self, f).sample_standard(f)  # noqa: E731
        comp = TrialComposition(self, num, c, m, mask, precisions, r_c, t_c, t_c, single)

        def denoise(y: Tensor, t: Tensor) -> Tensor:
            return (1 - k * t) * self.velocity(y, t, comp.cs, comp.ms) + k * y

        def velocity(y: Tensor, t: Tensor) -> Tensor:
            a = 1 - k * t
            mu = comp.denoiser(denoise, y, t, t, a)
            return mu - k * (y - t * mu) / a

        y = torch.randn(num, len(c), self.target_dim, device=c.device)
        ts = self.time_grid(c.device)
        y = odeint(velocity, y, ts, self.solver.solver)
        return comp.correct(denoise, y, ts[-1], ts[-1], 1 - k * ts[-1])


class FlowMatchingDistribution(BaselineDistribution):
    """:math:`q_\\phi(\\theta\\mid x)` of a :class:`FlowMatching` (ODE sampling, density)."""

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
