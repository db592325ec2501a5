r"""Conditional Wasserstein GAN with gradient penalty (sample-only): ``"gan"``.

A generator :math:`G_\phi(z; c)`, :math:`z\sim\mathcal N(0, I)`, produces standardised
parameters; a critic :math:`C_\psi(\tilde\theta; c)` scores them. WGAN-GP (Gulrajani et al.,
2017) solves

.. math::
    \min_\phi \max_\psi\; \mathbb E\,C_\psi(\tilde\theta; c) - \mathbb E\,C_\psi(G_\phi(z;c); c)
      - \lambda\,\mathbb E\big(\|\nabla_{\hat\theta} C_\psi(\hat\theta; c)\|_2 - 1\big)^2,

with :math:`\hat\theta` uniform on segments between real and generated points. Its optimum
matches :math:`p(\theta\mid x)` for every context (Ramesh et al., 2022, GATSBI).

**One loop, one backward pass.** simgen trains every family with one Adam optimiser on one
scalar loss. The min-max game fits that contract through a *gradient-reversal layer* between
generator and critic: the loss is

.. math::
    \ell = -C_\psi(\tilde\theta; c) + C_\psi(\mathrm{GR}(G_\phi(z; c)); c)
      + \lambda\,\mathrm{GP} + \gamma\,\mathrm{ES},

where :math:`\mathrm{GR}` is the identity forward and negates gradients backward. So one
gradient step *descends* :math:`\ell` in :math:`\psi` (the critic maximises the Wasserstein
estimate) and *ascends* the adversarial term in :math:`\phi` (the generator minimises
:math:`-C_\psi(G_\phi)`): simultaneous gradient descent-ascent.

Simultaneous updates at one learning rate are less stable than the usual 5 critic steps per
generator step, so the generator also minimises :math:`\gamma` times the **energy score**
:math:`\mathrm{ES} = \|G(z_1) - \tilde\theta\| - \tfrac12\|G(z_1) - G(z_2)\|` (a strictly
proper scoring rule for sample-based forecasts; Gneiting & Raftery, 2007), set
``energy_weight=0`` for a pure WGAN-GP. In evaluation mode the loss is the energy score alone,
so early stopping selects on a proper score rather than on the non-stationary game value.

The model has no density: this is a :class:`~simgen.estimators.base.SampleOnlyEstimator`, and
``log_prob`` raises :class:`~simgen.errors.NoDensityError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError, NoDensityError
from ._nets import GenerativeDistribution, mlp
from .base import SampleOnlyEstimator

__all__ = ["GAN", "GANDistribution", "gradient_reversal"]

DENSITY_FAMILIES = "'nsf', 'maf', 'realnvp', 'flow_matching', 'diffusion' (or 'vae', an estimate)"


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


def gradient_reversal(x: Tensor) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by :math:`-1` backward."""
    return _GradientReversal.apply(x)


class GAN(SampleOnlyEstimator):
    r"""Conditional WGAN-GP posterior sampler; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        noise_features: Size of the generator's latent :math:`z`.
        hidden_features: Hidden widths of generator and critic.
        gradient_penalty: :math:`\lambda`.
        energy_weight: :math:`\gamma` (``0``: pure adversarial training).
    """

    name = "gan"

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        noise_features: int | None = None,
        hidden_features: Sequence[int] = (128, 128, 128),
        gradient_penalty: float = 10.0,
        energy_weight: float = 10.0,
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        noise_features = noise_features or max(2 * target_dim, 4)
        if gradient_penalty < 0 or energy_weight < 0:
            raise ConfigError(
                "gradient_penalty and energy_weight must be >= 0, got "
                f"{gradient_penalty!r} and {energy_weight!r}."
            )
        self.options = {
            "noise_features": noise_features,
            "hidden_features": list(hidden_features),
            "gradient_penalty": gradient_penalty,
            "energy_weight": energy_weight,
        }
        self.noise_features = noise_features
        self.gp, self.energy_weight = float(gradient_penalty), float(energy_weight)
        f = self.context_features
        self.generator = mlp(noise_features + f, target_dim, hidden_features)
        self.critic = mlp(target_dim + f, 1, hidden_features)

    def generate(self, c: Tensor) -> Tensor:
        """One standardised sample per row of ``c``."""
        z = torch.randn(c.shape[:-1] + (self.noise_features,), device=c.device)
        return self.generator(torch.cat([z, c], dim=-1))

    def score(self, y: Tensor, c: Tensor) -> Tensor:
        return self.critic(torch.cat([y, c], dim=-1))[..., 0]

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y = self.target_standardizer(target)
        c = self.embed(context)
        fake1, fake2 = self.generate(c), self.generate(c)
        energy = (fake1 - y).norm(dim=-1) - 0.5 * (fake1 - fake2).norm(dim=-1)
        if not self.training:
            return energy
        c_critic = c.detach()
        adversarial = -self.score(y, c_critic) + self.score(gradient_reversal(fake1), c_critic)
        u = torch.rand(y.shape[:-1] + (1,), device=y.device)
        mix = (u * y + (1 - u) * fake1.detach()).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.score(mix, c_critic).sum(), mix, create_graph=True)
        penalty = (grad.norm(dim=-1) - 1).square()
        return adversarial + self.gp * penalty + self.energy_weight * energy

    def forward(self, context: Tensor) -> Distribution:
        return GANDistribution(self, self.embed(context))


class GANDistribution(GenerativeDistribution):
    """Samples of a :class:`GAN`'s generator; ``log_prob`` raises :class:`NoDensityError`."""

    def __init__(self, estimator: GAN, features: Tensor):
        self.estimator = estimator
        super().__init__(features, estimator.target_standardizer)

    def sample_standard(self, c: Tensor) -> Tensor:
        return self.estimator.generate(c)

    def log_prob(self, value: Tensor) -> Tensor:
        raise NoDensityError(
            f"The 'gan' estimator is sample-only and has no density; use {DENSITY_FAMILIES}."
        )
