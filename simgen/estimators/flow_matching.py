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
the data end as FMPE does).

**Sampling** integrates :math:`\dot y = v_\phi` from 0 to 1 with a fixed-step solver
(:class:`~simgen.estimators.ode.SolverConfig`). **log_prob** integrates back from the sample
to the base with the instantaneous change of variables (:func:`~simgen.estimators.ode.
ode_log_prob`): exact divergence for :math:`D \le` ``exact_trace_max_dim`` (default 4),
Hutchinson's unbiased single-probe estimate above it, so ``log_prob`` is then a stochastic
estimate. The solver's discretisation error also enters the density.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ._nets import ConditionalNet, GenerativeDistribution, LossNoise, standard_normal_log_prob
from .base import DensityEstimator
from .ode import SolverConfig, ode_log_prob, odeint

__all__ = ["FlowMatching", "FlowMatchingDistribution"]


class FlowMatching(DensityEstimator):
    r"""Conditional flow matching :math:`q_\phi(\theta\mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        hidden_features: Hidden widths of the velocity MLP.
        time_features: Size of the sinusoidal time embedding.
        sigma_min: Width of the path at the data end.
        time_power: Train times are drawn with density :math:`\propto t^{a}`.
        context_dropout: Probability of dropping the context in training (for guidance).
        steps, solver, guidance, exact_trace_max_dim: See
            :class:`~simgen.estimators.ode.SolverConfig`.

    Example:
        >>> fm = FlowMatching(2, (3,))
        >>> fm(torch.randn(5, 3)).sample((10,)).shape
        torch.Size([10, 5, 2])
    """

    name = "flow_matching"

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (128, 128),
        time_features: int = 16,
        sigma_min: float = 1e-3,
        time_power: float = 0.0,
        context_dropout: float = 0.0,
        repeats: int = 1,
        residual: bool = False,
        steps: int = 8,
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
        if not 0 <= context_dropout < 1:
            raise ConfigError(f"context_dropout must be in [0, 1), got {context_dropout!r}.")
        if guidance != 1.0 and context_dropout == 0:
            raise ConfigError(
                "guidance != 1 needs an unconditional field; train with context_dropout > 0 "
                "(e.g. 0.1) or leave guidance=1.0."
            )
        self.options = {
            "hidden_features": list(hidden_features),
            "time_features": time_features,
            "sigma_min": sigma_min,
            "time_power": time_power,
            "context_dropout": context_dropout,
            "repeats": repeats,
            "residual": residual,
            **self.solver.to_dict(),
        }
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
            residual,
        )

    def velocity(self, y: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """The (guided) velocity :math:`v_\\phi(y, t; c)` on rows ``(M, D)``."""
        v = self.net(y, t, c)
        w = self.solver.guidance
        if w != 1.0:
            v0 = self.net(y, t, c, unconditional=True)
            v = v0 + w * (v - v0)
        return v

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y1 = self.target_standardizer(target)
        c = self.embed(context)
        draw = LossNoise(self.training, len(y1), y1.device, self.repeats)
        y1, c = draw.repeat(y1), draw.repeat(c)
        y0 = draw.randn(*y1.shape)
        t = draw.rand(len(y1)) ** (1 / (1 + self.time_power))
        tt = t[..., None]
        yt = (1 - (1 - self.sigma_min) * tt) * y0 + tt * y1
        u = y1 - (1 - self.sigma_min) * y0
        return draw.reduce((self.net(yt, t, c) - u).square().sum(-1))

    def forward(self, context: Tensor) -> Distribution:
        return FlowMatchingDistribution(self, self.embed(context))


class FlowMatchingDistribution(GenerativeDistribution):
    """:math:`q_\\phi(\\theta\\mid x)` of a :class:`FlowMatching` (ODE sampling, density)."""

    def __init__(self, estimator: FlowMatching, features: Tensor):
        self.estimator = estimator
        super().__init__(features, estimator.target_standardizer)

    def _field(self, c: Tensor):
        return lambda y, t: self.estimator.velocity(y, t, c)

    def _fast_field(self, features: Tensor):
        """The sampling field with the context's first-layer term computed once per context.

        ``features`` is ``(B, F)``, one row per distinct context; the field acts on
        ``(S, B, D)`` so every sample of a context shares its ``(B, H)`` term.
        """
        net, w = self.estimator.net, self.estimator.solver.guidance
        h = net.condition(features)
        if w == 1.0:
            return lambda y, t: net.forward_conditioned(y, t, h)
        h0 = net.condition(features, unconditional=True)

        def field(y: Tensor, t: Tensor) -> Tensor:
            v0 = net.forward_conditioned(y, t, h0)
            return v0 + w * (net.forward_conditioned(y, t, h) - v0)

        return field

    def sample_standard(self, c: Tensor) -> Tensor:
        cfg = self.estimator.solver
        ts = torch.linspace(0, 1, cfg.steps + 1, device=c.device)
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
            ts = torch.linspace(0, 1, cfg.steps + 1, device=features.device)
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
        ts = torch.linspace(1, 0, cfg.steps + 1, device=c.device)
        y0, ell = ode_log_prob(self._field(c), y, ts, cfg.solver, cfg.exact_trace_max_dim)
        return standard_normal_log_prob(y0) + ell
