r"""Contrastive losses for neural ratio estimation (NRE-C and balanced NRE).

A classifier :math:`f_\phi(\theta, x)` is trained so that :math:`f_\phi \to \log r(\theta, x)
= \log p(x\mid\theta) - \log p(x)`. Pairs from the joint :math:`p(\theta, x)` are the
simulations; pairs from the product of marginals :math:`p(\theta)p(x)` are made inside the loss
by pairing each x with the θs of *other* rows of the batch (a random permutation). The
classifier is any module called as ``classifier(theta, x) -> (*)`` logits, θ the target and x
the context, broadcast against each other (:class:`~simgen.estimators.classifier.RatioClassifier`).

**NRE-C** (Miller et al., 2022). With :math:`K` atoms :math:`\Theta = (\theta_1, \dots,
\theta_K)` per x, a :math:`(K+1)`-way classifier decides whether none of them (:math:`y=0`)
or :math:`\theta_k` (:math:`y=k`) was drawn jointly with x. With class weights :math:`p(y=0)
= 1/(1+\gamma)`, :math:`\sum_{k\ge1} p(y=k) = \gamma/(1+\gamma)`, the Bayes-optimal classifier
is, writing :math:`r_k = e^{f_\phi(\theta_k, x)}`,

.. math::
    q(y=0 \mid \Theta, x) = \frac{K}{K + \gamma\sum_j r_j},\qquad
    q(y=k \mid \Theta, x) = \frac{\gamma\, r_k}{K + \gamma\sum_j r_j},

and the loss is the weighted cross-entropy

.. math::
    \mathcal L(\phi) = -\tfrac{1}{1+\gamma}\,\mathbb E_{y=0}\log q(y=0\mid\Theta,x)
        - \tfrac{\gamma}{1+\gamma}\,\mathbb E_{y=1}\log q(y=1\mid\Theta,x),

minimised by :math:`f_\phi = \log r` exactly (not only up to a constant in x, unlike NRE-B).

**BNRE** (Delaunoy et al., 2022). Binary NRE, :math:`-\mathbb E_{p(\theta,x)} \log
\sigma(f_\phi) - \mathbb E_{p(\theta)p(x)} \log(1 - \sigma(f_\phi))`, plus the balancing
penalty

.. math:: \lambda\,\big(\mathbb E_{p(\theta,x)}\sigma(f_\phi) +
          \mathbb E_{p(\theta)p(x)}\sigma(f_\phi) - 1\big)^2,

zero for the Bayes-optimal classifier; it pushes the classifier towards less confident
ratios, hence conservative (under- rather than over-confident) posteriors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..errors import ConfigError

__all__ = ["NRECLoss", "BNRELoss"]


def _marginal_thetas(theta: Tensor, count: int) -> Tensor:
    """``(N, count, D)``: for each row, θs of ``count`` other rows (random, never itself)."""
    n = len(theta)
    offsets = torch.randint(1, max(n, 2), (n, count), device=theta.device)
    idx = (torch.arange(n, device=theta.device)[:, None] + offsets) % n
    return theta[idx]


class NRECLoss(nn.Module):
    """Contrastive NRE loss (NRE-C) with ``num_atoms`` K and class ratio ``gamma``."""

    def __init__(self, classifier: nn.Module, num_atoms: int = 10, gamma: float = 1.0):
        super().__init__()
        if num_atoms < 2 or gamma <= 0:
            raise ConfigError(
                f"NRE-C needs num_atoms >= 2 and gamma > 0; got {num_atoms!r}, {gamma!r}."
            )
        self.classifier = classifier
        self.num_atoms = int(num_atoms)
        self.gamma = float(gamma)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        k, n = self.num_atoms, len(theta)
        xs = x[:, None].expand(n, k, *x.shape[1:])
        # y = 0: K marginal atoms; y = 1: the joint θ first, then K - 1 marginal atoms.
        marginal = self.classifier(_marginal_thetas(theta, k), xs)
        others = _marginal_thetas(theta, k - 1)
        joint = self.classifier(torch.cat([theta[:, None], others], 1), xs)
        log_gamma, log_k = math.log(self.gamma), math.log(k)
        pad = torch.full((n, 1), log_k, device=theta.device, dtype=marginal.dtype)
        log_q0 = log_k - torch.logsumexp(torch.cat([log_gamma + marginal, pad], 1), 1)
        log_q1 = (
            log_gamma + joint[:, 0] - torch.logsumexp(torch.cat([log_gamma + joint, pad], 1), 1)
        )
        w = self.gamma / (1 + self.gamma)
        return -((1 - w) * log_q0 + w * log_q1).mean()


class BNRELoss(nn.Module):
    """Balanced binary NRE loss with balancing strength ``regularization`` (λ)."""

    def __init__(self, classifier: nn.Module, regularization: float = 100.0):
        super().__init__()
        self.classifier = classifier
        self.regularization = float(regularization)

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        joint = self.classifier(theta, x)
        marginal = self.classifier(_marginal_thetas(theta, 1)[:, 0], x)
        bce = -(logsigmoid(joint).mean() + logsigmoid(-marginal).mean())
        balance = torch.sigmoid(joint).mean() + torch.sigmoid(marginal).mean() - 1
        return bce + self.regularization * balance**2
