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

import torch
from torch import Tensor, nn

from ..estimators.base import ConditionalEstimator

__all__ = ["NPELoss", "NLELoss", "JointScoreNLELoss", "JointScoreNPELoss"]


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


class JointScoreNLELoss(nn.Module):
    r"""NLE augmented with the simulator's joint score (SCANDAL; Brehmer et al., 2020).

    A simulator with latents :math:`z` that exposes its joint score
    :math:`t = \nabla_\theta \log p(x, z \mid \theta)` (a pyro program's ``trace``;
    ``simgen.simulate(..., joint=True)``) gives, for every simulation, :math:`D` noisy
    observations of the *marginal* score. Differentiating
    :math:`p(x\mid\theta) = \int p(x, z\mid\theta)\,dz` under the integral,

    .. math::
        \mathbb E[t \mid x, \theta] = \nabla_\theta \log p(x \mid \theta),

    so :math:`\mathbb E\,\lVert \nabla_\theta \log q_\phi(x\mid\theta) - t\rVert^2` is
    minimised by the true likelihood's score. The loss

    .. math::
        \mathcal L(\phi) = \mathbb E\big[-\log q_\phi(x\mid\theta)\big]
          + \lambda\,\mathbb E \sum_d \Big(\frac{\partial_{\theta_d} \log q_\phi(x\mid\theta)
          - t_d}{s_d}\Big)^2

    therefore keeps the NLE minimiser (the true likelihood minimises both terms) while each
    simulation also constrains how the density changes with :math:`\theta`. :math:`s_d` is
    the standard deviation of :math:`t_d` over the training simulations, so :math:`\lambda`
    weighs unitless squared errors against nats. The score of the estimator comes from
    autograd through its context (a double backward in training).

    Args:
        estimator: A density estimator whose ``loss`` is its negative log-density (a flow).
        weight: :math:`\lambda \ge 0`.
        scale: :math:`s` ``(D,)``.
    """

    #: Which argument of the density the score is taken in: the context θ (NLE).
    score_of = "context"

    def __init__(self, estimator: ConditionalEstimator, weight: float, scale: Tensor):
        super().__init__()
        self.estimator = estimator
        self.weight = float(weight)
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, theta: Tensor, x: Tensor, joint_score: Tensor) -> Tensor:
        with torch.enable_grad():  # the validation pass runs under no_grad
            theta = theta.detach().requires_grad_(True)
            target, context = (theta, x) if self.score_of == "target" else (x, theta)
            nll = self.estimator.loss(target, context)
            (score,) = torch.autograd.grad(-nll.sum(), theta, create_graph=self.training)
        error = ((score - joint_score) / self.scale).square().sum(-1)
        return (nll + self.weight * error).mean()


class JointScoreNPELoss(JointScoreNLELoss):
    r"""NPE augmented with the posterior score that the joint score implies.

    The posterior's score is the likelihood's plus the prior's,
    :math:`\nabla_\theta \log p(\theta\mid x) = \nabla_\theta \log p(x\mid\theta) +
    \nabla_\theta \log p(\theta)`, so with the joint score :math:`t` (see
    :class:`JointScoreNLELoss`) the regression target :math:`t + \nabla_\theta \log
    p(\theta)` has conditional mean :math:`\nabla_\theta \log p(\theta\mid x)`, and

    .. math::
        \mathcal L(\phi) = \mathbb E\big[-\log q_\phi(\theta\mid x)\big]
          + \lambda\,\mathbb E \sum_d \Big(\frac{\partial_{\theta_d} \log
          q_\phi(\theta\mid x) - t_d - \partial_{\theta_d} \log p(\theta)}{s_d}\Big)^2

    keeps the NPE minimiser. The gradient is taken in the estimator's target (the density's
    argument, not its context). When NPE models :math:`u = T^{-1}(\theta)` (bounded
    priors), ``joint_score`` must already be that target in :math:`u`,
    :math:`J_T^\top(t + \nabla_\theta\log p(\theta)) + \nabla_u \log|\det J_T(u)|`:
    ``simgen.NPE`` converts it.
    """

    score_of = "target"
