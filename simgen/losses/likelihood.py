r"""Maximum-likelihood losses for neural posterior and likelihood estimation.

**NPE.** Minimising the expected negative log-density of the posterior estimator over joint
draws :math:`(\theta, x) \sim p(\theta)\,p(x\mid\theta)`,

.. math::
    \mathcal L(\phi) = -\mathbb E_{p(\theta, x)} \log q_\phi(\theta \mid x)
      = \mathbb E_{p(x)} \mathrm{KL}\big(p(\theta\mid x)\,\|\,q_\phi(\theta\mid x)\big) + C,

is minimised exactly when :math:`q_\phi(\theta \mid x) = p(\theta \mid x)` for
:math:`p(x)`-almost every :math:`x` (Papamakarios & Murray, 2016).

**NLE.** The same with the roles swapped, :math:`-\mathbb E \log q_\phi(x \mid \theta)`, is
minimised at the likelihood :math:`p(x\mid\theta)` (Papamakarios et al., 2019).

Families whose natural objective is not the log-density (diffusion, flow matching, GAN, VAE)
provide ``estimator.loss(target, context)``, per sample, which these modules average; for a
flow it *is* the negative log-density.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..estimators.base import ConditionalEstimator

__all__ = ["NPELoss", "NLELoss"]


class NPELoss(nn.Module):
    """:math:`-\\frac1N\\sum_i \\log q_\\phi(\\theta_i \\mid x_i)` (or the family's own loss)."""

    def __init__(self, estimator: ConditionalEstimator):
        super().__init__()
        self.estimator = estimator

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.estimator.loss(theta, x).mean()


class NLELoss(nn.Module):
    """:math:`-\\frac1N\\sum_i \\log q_\\phi(x_i \\mid \\theta_i)`: target x, context θ."""

    def __init__(self, estimator: ConditionalEstimator):
        super().__init__()
        self.estimator = estimator

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.estimator.loss(x, theta).mean()
