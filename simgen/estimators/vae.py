r"""Conditional variational autoencoder: ``"vae"`` (density is an importance-weighted estimate).

The model is a latent-variable density over the standardised target,

.. math::
    q_\phi(\tilde\theta \mid x) = \int p_\phi(\tilde\theta \mid z, c)\,p(z)\,dz, \qquad
    p(z) = \mathcal N(0, I),\quad
    p_\phi(\tilde\theta\mid z, c)
      = \mathcal N\big(\mu_\phi(z, c), \mathrm{diag}\,\sigma^2_\phi(z, c)\big),

with an encoder :math:`r_\psi(z \mid \tilde\theta, c) = \mathcal N(m_\psi, \mathrm{diag}\,
s^2_\psi)` (Kingma & Welling, 2014; Sohn et al., 2015). **Objective**: Jensen's inequality
gives the ELBO

.. math::
    \log q_\phi(\tilde\theta\mid x) \ge \mathbb E_{r_\psi}\log p_\phi(\tilde\theta\mid z, c)
      - \mathrm{KL}\big(r_\psi(z\mid\tilde\theta, c)\,\|\,p(z)\big),

whose negative (plus :math:`\sum_i\log\sigma_{\theta,i}`) is the per-sample loss; the
expectation uses one reparameterised draw :math:`z = m_\psi + s_\psi\odot\epsilon`.

**log_prob is an estimate.** With :math:`K` = ``importance_samples`` draws
:math:`z_k \sim r_\psi`,

.. math::
    \widehat{\log q}_K = \log\frac1K\sum_{k=1}^K
      \frac{p_\phi(\tilde\theta\mid z_k, c)\,p(z_k)}{r_\psi(z_k\mid\tilde\theta, c)}

is a stochastic *lower bound* in expectation, :math:`\mathbb E\,\widehat{\log q}_K \le \log
q_\phi`, non-decreasing in :math:`K` and tight as :math:`K\to\infty` (Burda et al., 2016).
Hence ``exact_density = False``. Sampling is exact: :math:`z\sim p(z)`, then the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ._nets import GenerativeDistribution, mlp, standard_normal_log_prob
from .base import DensityEstimator

__all__ = ["VAE", "VAEDistribution"]

_LOG2PI = math.log(2 * math.pi)


def _gaussian_log_prob(y: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return -0.5 * (((y - mean) / log_std.exp()).square() + 2 * log_std + _LOG2PI).sum(-1)


class VAE(DensityEstimator):
    r"""Conditional VAE :math:`q_\phi(\theta\mid x)`; see the module docstring.

    Args:
        target_dim: ``D``.
        context_shape: Shape of one context.
        embedding_net: Optional embedding of the standardised context.
        latent_features: Size of :math:`z` (default ``max(2, D)``).
        hidden_features: Hidden widths of encoder and decoder.
        importance_samples: :math:`K` in the importance-weighted ``log_prob`` estimate.
    """

    name = "vae"
    exact_density = False

    def __init__(
        self,
        target_dim: int,
        context_shape: Sequence[int],
        embedding_net: nn.Module | None = None,
        latent_features: int | None = None,
        hidden_features: Sequence[int] = (128, 128),
        importance_samples: int = 128,
    ):
        super().__init__(target_dim, context_shape, embedding_net)
        latent_features = latent_features or max(2, target_dim)
        if isinstance(importance_samples, bool) or not isinstance(importance_samples, int):
            raise ConfigError(f"importance_samples must be an int, got {importance_samples!r}.")
        if importance_samples < 1:
            raise ConfigError(f"importance_samples must be >= 1, got {importance_samples}.")
        self.options = {
            "latent_features": latent_features,
            "hidden_features": list(hidden_features),
            "importance_samples": importance_samples,
        }
        self.latent_features = latent_features
        self.importance_samples = importance_samples
        f = self.context_features
        self.encoder = mlp(target_dim + f, 2 * latent_features, hidden_features)
        self.decoder = mlp(latent_features + f, 2 * target_dim, hidden_features)

    def encode(self, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std of :math:`r_\\psi(z\\mid\\tilde\\theta, c)`."""
        m, log_s = self.encoder(torch.cat([y, c], -1)).chunk(2, -1)
        return m, log_s.clamp(-8, 4)

    def decode(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std of :math:`p_\\phi(\\tilde\\theta\\mid z, c)`."""
        mu, log_sigma = self.decoder(torch.cat([z, c], -1)).chunk(2, -1)
        return mu, log_sigma.clamp(-8, 4)

    def elbo(self, y: Tensor, c: Tensor) -> Tensor:
        """One-sample reparameterised ELBO of standardised ``y``, per row."""
        m, log_s = self.encode(y, c)
        z = m + log_s.exp() * torch.randn_like(m)
        mu, log_sigma = self.decode(z, c)
        kl = 0.5 * (m.square() + (2 * log_s).exp() - 2 * log_s - 1).sum(-1)
        return _gaussian_log_prob(y, mu, log_sigma) - kl

    def iw_log_prob(self, y: Tensor, c: Tensor, k: int) -> Tensor:
        """Importance-weighted estimate with ``k`` draws (a lower bound in expectation)."""
        m, log_s = self.encode(y, c)
        z = m + log_s.exp() * torch.randn((k,) + m.shape, device=m.device)
        mu, log_sigma = self.decode(z, c.expand((k,) + c.shape))
        log_w = (
            _gaussian_log_prob(y, mu, log_sigma)
            + standard_normal_log_prob(z)
            - _gaussian_log_prob(z, m, log_s)
        )
        return torch.logsumexp(log_w, 0) - math.log(k)

    def loss(self, target: Tensor, context: Tensor) -> Tensor:
        y = self.target_standardizer(target)
        return -self.elbo(y, self.embed(context)) + self.target_standardizer.scale.log().sum()

    def forward(self, context: Tensor) -> Distribution:
        return VAEDistribution(self, self.embed(context))


class VAEDistribution(GenerativeDistribution):
    """:math:`q_\\phi(\\theta\\mid x)` of a :class:`VAE`: exact sampling, estimated density."""

    def __init__(self, estimator: VAE, features: Tensor, importance_samples: int | None = None):
        self.estimator = estimator
        self.importance_samples = importance_samples or estimator.importance_samples
        super().__init__(features, estimator.target_standardizer)

    def sample_standard(self, c: Tensor) -> Tensor:
        est = self.estimator
        z = torch.randn(c.shape[:-1] + (est.latent_features,), device=c.device)
        mu, log_sigma = est.decode(z, c)
        return mu + log_sigma.exp() * torch.randn_like(mu)

    def log_prob_standard(self, y: Tensor, c: Tensor) -> Tensor:
        est, k = self.estimator, self.importance_samples
        chunk = max(1, 2**20 // (k * max(y.shape[-1], 1) * 64))
        parts = [
            est.iw_log_prob(y[i : i + chunk], c[i : i + chunk], k) for i in range(0, len(y), chunk)
        ]
        return torch.cat(parts) if parts else y.new_zeros(0)
