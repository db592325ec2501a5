r"""Consistency model distilled from a jointly trained diffusion teacher: ``"consistency"``.

Noise levels follow the EDM convention (Karras et al., 2022): :math:`y_\sigma = \tilde\theta +
\sigma z`, whose probability-flow ODE is :math:`dy/d\sigma = (y - D(y, \sigma))/\sigma` with
:math:`D` the denoiser :math:`\mathbb E[\tilde\theta \mid y_\sigma, c]`.

**Teacher** (denoising score matching, EDM preconditioning with :math:`\sigma_d = 1`):

.. math::
    \mathcal L_D = \mathbb E_{\ln\sigma\sim\mathcal N(-1.2, 1.2^2)}\,\lambda(\sigma)
      \|D_\psi(\tilde\theta + \sigma z, \sigma; c) - \tilde\theta\|^2,\quad
    \lambda = \frac{\sigma^2 + \sigma_d^2}{\sigma^2\sigma_d^2}.

**Consistency function** :math:`f_\phi(y, \sigma; c) = c_{\text{skip}}(\sigma) y +
c_{\text{out}}(\sigma) F_\phi(\cdot)` with :math:`c_{\text{skip}}(\sigma_{\min}) = 1`,
:math:`c_{\text{out}}(\sigma_{\min}) = 0`, so :math:`f(y, \sigma_{\min}) = y` by construction.
It should map every point of an ODE trajectory to its end. **Consistency distillation** (Song
et al., 2023) on the Karras grid :math:`\sigma_{\min} = \sigma_1 < \dots < \sigma_N =
\sigma_{\max}`: with :math:`n \sim U\{1..N-1\}` and one Euler step of the teacher's ODE
:math:`\hat y_n = y_{n+1} + (\sigma_n - \sigma_{n+1})(y_{n+1} - D_\psi(y_{n+1}))/\sigma_{n+1}`,

.. math::
    \mathcal L_f = \mathbb E\,\big\|f_\phi(y_{n+1}, \sigma_{n+1}; c)
      - \mathrm{sg}\,f_\phi(\hat y_n, \sigma_n; c)\big\|^2,

with a stop-gradient target (as in improved consistency training) instead of an EMA copy.
Both losses are summed so the one training loop trains teacher and student together; the
student's target improves as the teacher does.

**Sampling** in ``steps`` (1–8) evaluations: :math:`y = \sigma_{\max} z`,
:math:`\tilde\theta = f(y, \sigma_{\max})`; then for each further level :math:`\sigma_i`,
:math:`y = \tilde\theta + \sqrt{\sigma_i^2 - \sigma_{\min}^2}\, z`,
:math:`\tilde\theta = f(y, \sigma_i)`. No density: a
:class:`~simgen.estimators.base.SampleOnlyEstimator`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ._nets import ConditionalNet, GenerativeDistribution, LossNoise
from .base import SampleOnlyEstimator

__all__ = ["Consistency", "ConsistencyDistribution"]

_SIGMA_DATA = 1.0


class Consistency(SampleOnlyEstimator):
    r"""Consistency-model posterior sampler; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        hidden_features: Hidden widths of teacher and student MLPs.
        sigma_min, sigma_max: Noise range (standardised units).
        discretisation: :math:`N`, points of the Karras grid (:math:`\rho = 7`).
        steps: Sampling steps, 1 to 8. The default is one: on 3-D gaussian_linear (1,000
            simulations) C2ST was 0.615, 0.755, 0.810, 0.927 for 1, 2, 4, 8 steps; the student
            is least accurate at the intermediate re-noising levels.
    """

    name = "consistency"

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (128, 128, 128),
        sigma_min: float = 0.002,
        sigma_max: float = 20.0,
        discretisation: int = 40,
        steps: int = 1,
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 8:
            raise ConfigError(f"steps must be an integer in [1, 8], got {steps!r}.")
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        if isinstance(discretisation, bool) or not isinstance(discretisation, int):
            raise ConfigError(f"discretisation must be an int, got {discretisation!r}.")
        if discretisation < 2:
            raise ConfigError(f"discretisation must be >= 2, got {discretisation}.")
        self.options = {
            "hidden_features": list(hidden_features),
            "sigma_min": sigma_min,
            "sigma_max": sigma_max,
            "discretisation": discretisation,
            "steps": steps,
        }
        self.sigma_min, self.sigma_max, self.steps = float(sigma_min), float(sigma_max), steps
        rho, i = 7.0, torch.linspace(0, 1, discretisation)
        lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
        self.register_buffer("grid", (lo + i * (hi - lo)) ** rho, persistent=False)
        f = self.context_features
        arch = {"architecture": "mlp"}
        self.teacher = ConditionalNet(target_dim, f, target_dim, hidden_features, **arch)
        self.student = ConditionalNet(target_dim, f, target_dim, hidden_features, **arch)

    @staticmethod
    def _noise_cond(sigma: Tensor) -> Tensor:
        return sigma.log() / 4

    def denoise(self, y: Tensor, sigma: Tensor, c: Tensor) -> Tensor:
        """Teacher denoiser :math:`D_\\psi(y, \\sigma; c)`; ``sigma`` is ``(M,)``."""
        s = sigma[..., None]
        total = s**2 + _SIGMA_DATA**2
        out = self.teacher(y * total.rsqrt(), self._noise_cond(sigma), c)
        return _SIGMA_DATA**2 / total * y + s * _SIGMA_DATA * total.rsqrt() * out

    def consistency(self, y: Tensor, sigma: Tensor, c: Tensor) -> Tensor:
        """Student :math:`f_\\phi(y, \\sigma; c)`, the identity at :math:`\\sigma_{\\min}`."""
        s = sigma[..., None]
        total = s**2 + _SIGMA_DATA**2
        skip = _SIGMA_DATA**2 / ((s - self.sigma_min) ** 2 + _SIGMA_DATA**2)
        out_scale = _SIGMA_DATA * (s - self.sigma_min) * total.rsqrt()
        return skip * y + out_scale * self.student(y * total.rsqrt(), self._noise_cond(sigma), c)

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y = self.target_standardizer(target)
        c = self.embed(context)
        draw = LossNoise(self.training, len(y), y.device)
        y, c = draw.repeat(y), draw.repeat(c)
        # Teacher: EDM denoising score matching.
        sigma = (-1.2 + 1.2 * draw.randn(len(y))).exp()
        weight = (sigma**2 + _SIGMA_DATA**2) / (sigma * _SIGMA_DATA) ** 2
        noisy = y + sigma[..., None] * draw.randn(*y.shape)
        teacher = weight * (self.denoise(noisy, sigma, c) - y).square().sum(-1)
        # Student: consistency distillation along one teacher Euler step.
        n = draw.randint(len(self.grid) - 1, len(y))
        s_lo, s_hi = self.grid[n], self.grid[n + 1]
        y_hi = y + s_hi[..., None] * draw.randn(*y.shape)
        with torch.no_grad():
            d = (y_hi - self.denoise(y_hi, s_hi, c.detach())) / s_hi[..., None]
            y_lo = y_hi + (s_lo - s_hi)[..., None] * d
            target_f = self.consistency(y_lo, s_lo, c)
        student = (self.consistency(y_hi, s_hi, c) - target_f).square().sum(-1)
        return draw.reduce(teacher + student)

    def sampling_sigmas(self) -> list[float]:
        """Noise levels visited by the sampler: :math:`\\sigma_{\\max}`, then geometric."""
        if self.steps == 1:
            return [self.sigma_max]
        levels = torch.logspace(math.log10(1.0), math.log10(0.05), self.steps - 1)
        return [self.sigma_max, *levels.tolist()]

    def forward(self, context: Tensor) -> Distribution:
        return ConsistencyDistribution(self, self.embed(context))


class ConsistencyDistribution(GenerativeDistribution):
    """Samples of a :class:`Consistency` model in ``steps`` network evaluations."""

    def __init__(self, estimator: Consistency, features: Tensor):
        self.estimator = estimator
        super().__init__(features, estimator.target_standardizer)

    def sample_standard(self, c: Tensor) -> Tensor:
        est = self.estimator
        shape = (c.shape[0], self.event_shape[0])
        y, theta = None, None
        for sigma in est.sampling_sigmas():
            noise = torch.randn(shape, device=c.device)
            if theta is None:
                y = sigma * noise
            else:
                y = theta + math.sqrt(max(sigma**2 - est.sigma_min**2, 0.0)) * noise
            theta = est.consistency(y, torch.full(shape[:1], sigma, device=c.device), c)
        return theta
