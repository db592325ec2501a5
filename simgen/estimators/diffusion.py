r"""Conditional score-based diffusion for posterior estimation (NPSE): ``"diffusion"``.

A forward SDE :math:`dy = f(y, t)\,dt + g(t)\,dW` on :math:`t \in [\epsilon, 1]` turns the
standardised posterior into (nearly) a Gaussian, with the marginal
:math:`y_t = \alpha_t\tilde\theta + \sigma_t\varepsilon` (Song et al., 2021):

* **VP**: :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`,
  :math:`f = -\tfrac12\beta y`, :math:`g^2 = \beta`,
  :math:`\alpha_t = e^{-\frac12\int_0^t\beta}`, :math:`\sigma_t^2 = 1 - \alpha_t^2`;
* **VE**: :math:`\sigma_t = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^t`, :math:`f = 0`,
  :math:`g^2 = d\sigma_t^2/dt`, :math:`\alpha_t = 1`.

**Objective.** A network :math:`\hat\varepsilon_\phi(y_t, t; c)` predicts the noise; the score
is :math:`s_\phi = -\hat\varepsilon_\phi/\sigma_t`. Training times are drawn so that the
log noise-to-signal ratio :math:`\log r_t = \log(\sigma_t/\alpha_t)` is uniform between
:math:`\log r_\epsilon` and :math:`\log r_1` (:math:`p(t) \propto d\log r_t/dt`; for the VE
SDE this is uniform :math:`t`). A posterior much narrower than the prior lives at small
:math:`r`; uniform :math:`t` under the VP schedule spends only a few per cent of the training
(and of a uniform solver grid) there. Denoising score matching with weighting
:math:`\lambda(t) = \sigma_t^2` is

.. math::
    \mathcal L(\phi) = \mathbb E_{t\sim p(t),\,(\theta,x),\,\varepsilon}
      \lambda(t)\,\big\|s_\phi(y_t, t; c) + \varepsilon/\sigma_t\big\|^2
    = \mathbb E\,\big\|\hat\varepsilon_\phi(y_t, t; c) - \varepsilon\big\|^2,

minimised by :math:`s_\phi = \nabla_y \log p_t(y \mid x)` (Vincent, 2011). The VE input is
scaled by :math:`1/\sqrt{1+\sigma_t^2}` so the network sees unit-scale inputs.

**Linear-Gaussian baseline** (``gaussian_baseline``, see :mod:`simgen.estimators.baseline`).
The ridge-fitted :math:`q_0 = \mathcal N(m(x), \Sigma)`, :math:`\Sigma = V\Lambda V^\top`,
diffused along the SDE stays Gaussian,
:math:`y_t \sim \mathcal N(\alpha_t m, \alpha_t^2\Sigma + \sigma_t^2 I)`, so its noise
prediction :math:`\varepsilon_0 = -\sigma_t\nabla_y\log q_{0,t}` is exact and affine,

.. math::
    \varepsilon_0(y, t; x) = \sigma_t\,V\,(\alpha_t^2\Lambda + \sigma_t^2)^{-1}\,
      V^\top (y - \alpha_t m(x)),

and the network learns the residual, :math:`\hat\varepsilon_\phi = \varepsilon_0 + r_\phi`
(sbi's NPSE does the same with the unconditional Gaussian). With ``precondition=True`` the
network's input is :math:`y` whitened under that Gaussian,
:math:`V(\alpha_t^2\Lambda + \sigma_t^2)^{-1/2}V^\top(y - \alpha_t m)`, instead of
:math:`y/\sqrt{\alpha_t^2 + \sigma_t^2}`.

**Control variate** (``control_variate`` :math:`c_{\max}`, off by default). For rows with
:math:`r_t < c_{\max}` the loss adds
:math:`D - \|\varepsilon\|^2 + 2\,\hat\varepsilon_\phi(\alpha_t\tilde\theta, t)\cdot
\varepsilon`, which has zero mean for any weights (the clean point does not depend on
:math:`\varepsilon`) and cancels the leading noise of the loss and its gradient at small
:math:`\sigma_t` (the first-order Taylor argument of sbi's NPSE), at one more network pass
per small-noise row.

**Sampling** runs either the reverse SDE :math:`dy = [f - g^2 s_\phi]dt + g\,d\bar W`
(Euler–Maruyama, ``sampler="sde"``) or the probability-flow ODE
:math:`\dot y = f - \tfrac12 g^2 s_\phi` (``sampler="ode"``, the default), from
:math:`\mathcal N(0, (\alpha_1^2 + \sigma_1^2) I)` at :math:`t = 1` down to :math:`\epsilon`, on
the grid of times whose :math:`\log r_t` is evenly spaced (:meth:`Diffusion.times`).
**log_prob** integrates the probability-flow ODE from :math:`\theta` up to :math:`t=1` with
the instantaneous change of variables (:func:`~simgen.estimators.ode.ode_log_prob`): the
divergence is exact for :math:`D \le` ``exact_trace_max_dim`` (default 4) and Hutchinson's
unbiased estimate above it. It is the density of the ODE's model at :math:`t = \epsilon`.

**I.i.d. trials.** For padded trial sets ``(B, n, *x_shape)``, :meth:`draw` samples the
composed posterior :math:`p(\theta\mid x_{1:n})` with the same sampler on the composed
noise prediction (:mod:`simgen.estimators.compose`: an approximation, exact for a
linear-Gaussian model, without a density). The composition sums the per-trial score errors,
which a noise prediction leaves largest at small noise; train a model meant for many trials
with ``control_variate=1.0``: with the residual floor of that module it gave mean errors
of 0.19 and 0.20 posterior sds at 100 trials on the conjugate model of
``tests/test_iid_slow.py`` (seeds 0 and 1, trained with ``ema=0`` and with the default
``ema=0.99`` alike), against 0.45 and 0.90 without it (``ema=0``), for twice the training
time (``benchmarks/results_iid.md``). The default stays off, as single
observations gained nothing from it.

**Defaults, and why** (C2ST against reference posteriors, ``benchmarks/results_seeds.md``
and ``benchmarks/results_families.md``):

* VE with 50 Heun steps of the probability-flow ODE: on gaussian_linear it gave 0.550, as
  sbi's NPSE (also VE) does, where VP gave 0.573.
* The network of flow matching (:class:`~simgen.estimators._nets.NetConfig`: a layer-normed
  residual net of width 64 with Fourier time features), more accurate on two_moons than a
  plain MLP of width 128.
* ``gaussian_baseline="auto"`` with threshold 0.05, below flow matching's 0.1: on slcp the
  seeds where a looser rule kept the baseline trained worst, and every Gaussian case
  measured stays under 0.05.
* ``sigma_min=0.01``: a decade of smaller noise levels (1e-3) only added variance.
* ``precondition`` and ``control_variate`` off: neither improved C2ST.
* Where ``auto`` drops the baseline on a heavy-tailed residual, two named settings beat the
  default on 1,000 simulations of tuning observations: ``gaussian_baseline=True`` for a
  near-Gaussian posterior whose width varies with x (bernoulli_glm: C2ST 0.743 against
  0.866), and with ``precondition=True`` for a posterior with a narrow core, which the
  whitened input resolves (gaussian_mixture: 0.654 against 0.745). Neither is the default:
  neither is best on both tasks, both lose slcp, and each was measured on one training seed
  (``benchmarks/results_report_generative.md``, tuning set).
* Training (``train_defaults``): learning rate 3e-3, at least 100 epochs (the
  zero-initialised network starts at the baseline, which the first noisy epochs often do
  not beat) and patience 39: on two_moons' tuning observations at 1,000 simulations it
  lowered C2ST from 0.682 to 0.607 for 1.4x the CPU time against patience 29
  (``benchmarks/results_report_generative.md``, tuning set); at 10,000 simulations it costs
  about 1.6x the time of 29 (``results_seeds.md``); pass ``patience=29`` to ``fit`` when
  time matters more than accuracy.
* An exponential moving average of the weights, ``ema=0.99``
  (:class:`~simgen.training.TrainConfig`): validation, early stopping and the returned
  network use :math:`\bar w \leftarrow 0.99\,\bar w + 0.01\,w` after every step, which
  averages out the noise of the last optimiser steps. On the report observations at 1,000
  simulations it lowered or kept C2ST on every task on two seeds (two_moons 0.654 to 0.580,
  sir 0.738 to 0.623, gaussian_mixture 0.744 to 0.656, the rest level to 0.035 lower) for
  up to 2x the CPU time, as the averaged weights keep improving for longer; at 10,000 (two
  seeds) it is lower or level on nine of the ten and costs lotka_volterra 0.005, within its
  seed spread, at about the same CPU (``benchmarks/results_ema.md``). Pass ``ema=0`` to
  train without it.
"""

from __future__ import annotations

import math
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
from .ode import SolverConfig, ode_log_prob, odeint, sdeint

__all__ = ["Diffusion", "DiffusionDistribution"]


class Diffusion(BaselineEstimator):
    r"""Score-based diffusion :math:`q_\phi(\theta\mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        sde: ``"ve"`` (default; as sbi's NPSE) or ``"vp"``.
        sampler: ``"ode"`` (probability flow) or ``"sde"`` (reverse SDE).
        beta_min, beta_max: VP noise schedule.
        sigma_min, sigma_max: VE noise schedule (in standardised units).
        eps: Smallest diffusion time.
        gaussian_baseline: ``True``, ``False`` or ``"auto"`` (default): learn the residual
            from the linear-Gaussian noise prediction; ``"auto"`` keeps it iff the ridge
            residual is Gaussian.
        precondition: Whiten the network's input under the baseline Gaussian.
        repeats: Noise draws per training row and step (averaged).
        control_variate: :math:`c_{\max}` of the control variate (0: off).
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
        solver_config: A :class:`~simgen.estimators.ode.SolverConfig` (default 50 Heun
            steps); its fields (``steps``, ``solver``, ``guidance``,
            ``exact_trace_max_dim``) may also be passed as keywords.
    """

    name = "diffusion"
    npe_support = "reject"
    solver_defaults = SolverConfig(steps=50)
    baseline_threshold = 0.05
    #: See the module docstring; a caller's smaller ``max_epochs`` caps ``min_epochs``.
    train_defaults = {"learning_rate": 3e-3, "min_epochs": 100, "patience": 39, "ema": 0.99}
    #: Options of models saved before they existed: the plain MLP without a baseline.
    LEGACY_OPTIONS = {
        "hidden_features": [128, 128, 128],
        "time_features": 16,
        "architecture": "mlp",
        "time_embedding": "sinusoidal",
        "gaussian_baseline": False,
        "precondition": False,
        "repeats": 1,
        "control_variate": 0.0,
    }

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        *,
        sde: str = "ve",
        sampler: str = "ode",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 10.0,
        eps: float = 1e-3,
        gaussian_baseline: bool | str = "auto",
        precondition: bool = False,
        repeats: int = 1,
        control_variate: float = 0.0,
        trial_precision: str = "shared",
        corrector_steps: int = 0,
        corrector_step: float = CORRECTOR_STEP,
        net_config: NetConfig | None = None,
        solver_config: SolverConfig | None = None,
        **options: Any,
    ):
        if sde not in ("vp", "ve"):
            raise ConfigError(f"sde must be 'vp' or 've', got {sde!r}.")
        if sampler not in ("ode", "sde"):
            raise ConfigError(f"sampler must be 'ode' or 'sde', got {sampler!r}.")
        if not (0 < beta_min < beta_max and 0 < sigma_min < sigma_max and 0 < eps < 0.5):
            raise ConfigError(
                "Need 0 < beta_min < beta_max, 0 < sigma_min < sigma_max and 0 < eps < 0.5; got "
                f"{(beta_min, beta_max, sigma_min, sigma_max, eps)}."
            )
        if not control_variate >= 0:
            raise ConfigError(f"control_variate must be >= 0, got {control_variate!r}.")
        family = {
            "sde": sde,
            "sampler": sampler,
            "beta_min": beta_min,
            "beta_max": beta_max,
            "sigma_min": sigma_min,
            "sigma_max": sigma_max,
            "eps": eps,
            "gaussian_baseline": gaussian_baseline,
            "precondition": bool(precondition),
            "repeats": repeats,
            "control_variate": float(control_variate),
            "trial_precision": check_trial_precision(trial_precision),
        }
        family["corrector_steps"], family["corrector_step"] = check_corrector(
            corrector_steps, corrector_step
        )
        super().__init__(target_dim, context_shape, embedding_net)
        with_baseline = bool(gaussian_baseline) or bool(precondition)
        self._configure(family, net_config, solver_config, options, with_baseline)
        self.sde, self.sampler, self.eps = sde, sampler, float(eps)
        self.control_variate = float(control_variate)
        self.trial_precision = trial_precision
        self.corrector_steps, self.corrector_step = (
            family["corrector_steps"],
            family["corrector_step"],
        )
        self.precondition = bool(precondition)
        self.beta = (float(beta_min), float(beta_max))
        self.sigma_range = (float(sigma_min), float(sigma_max))
        self.use_baseline_noise = bool(gaussian_baseline)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\alpha_t, \\sigma_t)` of the forward process."""
        if self.sde == "vp":
            b0, b1 = self.beta
            log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
            return log_alpha.exp(), (-torch.expm1(2 * log_alpha)).clamp_min(1e-12).sqrt()
        s0, s1 = self.sigma_range
        return torch.ones_like(t), s0 * (s1 / s0) ** t

    def ratio(self, t: Tensor) -> Tensor:
        """Noise-to-signal ratio :math:`r_t = \\sigma_t/\\alpha_t` (increasing in :math:`t`)."""
        alpha, sigma = self.marginal(t)
        return sigma / alpha

    def time_of_ratio(self, r: Tensor) -> Tensor:
        """Inverse of :meth:`ratio`: the time whose noise-to-signal ratio is ``r``.

        VP: :math:`r^2 = e^{2B(t)} - 1` with :math:`B(t) = \\tfrac14 t^2(\\beta_{\\max} -
        \\beta_{\\min}) + \\tfrac12 t\\beta_{\\min}`, a quadratic in :math:`t`; VE:
        :math:`t = \\log(r/\\sigma_{\\min}) / \\log(\\sigma_{\\max}/\\sigma_{\\min})`.
        """
        if self.sde == "vp":
            b0, b1 = self.beta
            a, b = 0.25 * (b1 - b0), 0.5 * b0
            big_b = 0.5 * torch.log1p(r.square())
            return 2 * big_b / (b + (b * b + 4 * a * big_b).sqrt())
        s0, s1 = self.sigma_range
        return (r / s0).log() / math.log(s1 / s0)

    def times(self, u: Tensor) -> Tensor:
        """Map ``u`` in [0, 1] to times whose :math:`\\log r_t` is linear in ``u``.

        ``u = 0`` is :math:`t = \\epsilon`, ``u = 1`` is :math:`t = 1`. Used for the training
        times (``u`` uniform) and for the solver grids (``u`` evenly spaced).
        """
        lo, hi = self.ratio(torch.tensor([self.eps, 1.0])).log().tolist()
        t = self.time_of_ratio((lo + u * (hi - lo)).exp())
        return t.clamp(self.eps, 1.0)

    def drift_and_g2(self, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward drift :math:`f(y, t)` and :math:`g(t)^2`."""
        if self.sde == "vp":
            beta = self.beta[0] + t * (self.beta[1] - self.beta[0])
            return -0.5 * beta * y, beta
        s0, s1 = self.sigma_range
        sigma = s0 * (s1 / s0) ** t
        return torch.zeros_like(y), 2 * sigma**2 * math.log(s1 / s0)

    def noise(
        self, y: Tensor, t: Tensor, c: Tensor, m: Tensor | None = None, guided: bool = True
    ) -> Tensor:
        """:math:`\\hat\\varepsilon_\\phi(y_t, t; c)` (guided when ``guidance != 1``).

        ``m`` is the baseline mean :math:`m(x)` of each row (needed with a baseline).
        """
        alpha, sigma = self.marginal(t)
        a = alpha[..., None] if alpha.ndim else alpha
        s = sigma[..., None] if sigma.ndim else sigma
        base, inp = None, None
        if self.baseline is not None and self.baseline.on:
            lam, vecs = self.baseline.eigvals, self.baseline.eigvecs
            z = (y - a * m) @ vecs
            var = a * a * lam + s * s
            if self.use_baseline_noise:
                base = (z * (s / var)) @ vecs.T
            if self.precondition:
                inp = (z * var.rsqrt()) @ vecs.T
        if inp is None:
            inp = y * (a * a + s * s).rsqrt()
        e = self.net(inp, t, c)
        w = self.solver.guidance
        if guided and w != 1.0:
            e0 = self.net(inp, t, c, unconditional=True)
            e = e0 + w * (e - e0)
        return e if base is None else e + base

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y = self.target_standardizer(target)
        c, m = self.embed(context), self.baseline_mean(context)
        draw = LossNoise(self.training, len(y), y.device, self.repeats)
        y, c, m = draw.repeat(y), draw.repeat(c), draw.repeat(m)
        t = self.times(draw.rand(len(y)))
        alpha, sigma = self.marginal(t)
        e = draw.randn(*y.shape)
        yt = alpha[..., None] * y + sigma[..., None] * e
        loss = (self.noise(yt, t, c, m, guided=False) - e).square().sum(-1)
        if self.control_variate > 0:
            small = sigma / alpha < self.control_variate
            if bool(small.any()):
                # Zero-mean in e for any weights (the clean point does not depend on e).
                y0, t0, c0, m0 = alpha[small, None] * y[small], t[small], c[small], m[small]
                e0, es = self.noise(y0, t0, c0, m0, guided=False), e[small]
                cv = es.shape[-1] - es.square().sum(-1) + 2 * (e0 * es).sum(-1)
                loss = loss.index_put((small.nonzero()[:, 0],), loss[small] + cv)
        return draw.reduce(loss)

    def terminal_scale(self) -> float:
        """Standard deviation of the Gaussian used at :math:`t = 1`."""
        alpha, sigma = self.marginal(torch.tensor(1.0))
        return float((alpha**2 + sigma**2).sqrt())

    def forward(self, context: Tensor) -> Distribution:
        if self.is_trial_context(context):
            raise self.forward_trials_error()
        return DiffusionDistribution(self, self.joint_features(context))

    def _sample_trials(
        self, num: int, c: Tensor, m: Tensor, mask: Tensor, precisions: tuple[Tensor, Tensor]
    ) -> Tensor:
        r"""The sampler of the module docstring on the composed noise prediction
        :math:`(y - \alpha_t\mu)/\sigma_t` (:mod:`simgen.estimators.compose`), the per-trial
        denoisers below the residual floor :math:`r_c` taken from the network's at
        :math:`r_c`, then the Langevin corrector at the last time
        (:mod:`simgen.estimators.compose_sampler`)."""
        assert self.baseline is not None  # trial_covariances checked it
        t_c = self.time_of_ratio(torch.tensor(floor_ratio(self.baseline.eigvals)))
        t_c = t_c.clamp(self.eps, 1.0)
        a_c, s_c = self.marginal(t_c)
        single = lambda f: DiffusionDistribution(self, f).sample_standard(f)  # noqa: E731
        comp = TrialComposition(
            self, num, c, m, mask, precisions, float(s_c / a_c), t_c, a_c, single
        )

        def denoise(y: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = self.marginal(t)
            return (y - sigma * self.noise(y, t, comp.cs, comp.ms)) / alpha

        def noise(y: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = self.marginal(t)
            return (y - alpha * comp.denoiser(denoise, y, t, alpha, sigma)) / sigma

        def drift(y: Tensor, t: Tensor, weight: float) -> Tensor:
            f, g2 = self.drift_and_g2(y, t)
            return f + weight * g2 * noise(y, t) / self.marginal(t)[1]

        ts = self.times(torch.linspace(1, 0, self.solver.steps + 1, device=c.device))
        y = self.terminal_scale() * torch.randn(num, len(c), self.target_dim, device=c.device)
        if self.sampler == "ode":
            y = odeint(lambda y, t: drift(y, t, 0.5), y, ts, self.solver.solver)
        else:
            g = lambda t: self.drift_and_g2(torch.zeros(()), t)[1].sqrt()  # noqa: E731
            y = sdeint(lambda y, t: drift(y, t, 1.0), g, y, ts)
        return comp.correct(denoise, y, ts[-1], *self.marginal(ts[-1]))


class DiffusionDistribution(BaselineDistribution):
    """:math:`q_\\phi(\\theta\\mid x)` of a :class:`Diffusion` estimator."""

    def _pf_field(self, features: Tensor):
        est = self.estimator
        c, m = self._split(features)

        def field(y: Tensor, t: Tensor) -> Tensor:
            f, g2 = est.drift_and_g2(y, t)
            return f + 0.5 * g2 * est.noise(y, t, c, m) / est.marginal(t)[1]

        return field

    def sample_standard(self, features: Tensor) -> Tensor:
        est, cfg = self.estimator, self.estimator.solver
        c, m = self._split(features)
        ts = est.times(torch.linspace(1, 0, cfg.steps + 1, device=c.device))
        y = est.terminal_scale() * torch.randn(c.shape[0], self.event_shape[0], device=c.device)
        if est.sampler == "ode":
            return odeint(self._pf_field(features), y, ts, cfg.solver)

        def drift(y: Tensor, t: Tensor) -> Tensor:
            f, g2 = est.drift_and_g2(y, t)
            return f + g2 * est.noise(y, t, c, m) / est.marginal(t)[1]

        def diffusion(t: Tensor) -> Tensor:
            return est.drift_and_g2(torch.zeros(()), t)[1].sqrt()

        return sdeint(drift, diffusion, y, ts)

    def log_prob_standard(self, y: Tensor, c: Tensor) -> Tensor:
        est, cfg = self.estimator, self.estimator.solver
        ts = est.times(torch.linspace(0, 1, cfg.steps + 1, device=c.device))
        y1, ell = ode_log_prob(self._pf_field(c), y, ts, cfg.solver, cfg.exact_trace_max_dim)
        s = est.terminal_scale()
        return standard_normal_log_prob(y1 / s) - y.shape[-1] * math.log(s) + ell
