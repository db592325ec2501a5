r"""Warm-up adaptation: covariance estimation and dual-averaging step-size tuning.

**Covariance.** Random-walk Metropolis and HMC adapt their proposal to the target's scale
and correlations from the recent half of warm-up, pooled over chains, per observation:

.. math:: \hat\Sigma = \frac{n}{n+5}\,S + 10^{-3}\,\frac{5}{n+5}\,I,

with :math:`S` the sample covariance of the :math:`n` pooled states (Stan's shrinkage, which
keeps :math:`\hat\Sigma` positive definite when few states are pooled).

**Dual averaging** (Hoffman & Gelman, 2014, §3.2) tunes a log step size so that the mean
acceptance probability :math:`a_t` reaches a target :math:`\delta`:

.. math::
    \bar H_t = \Big(1 - \frac{1}{t+t_0}\Big)\bar H_{t-1} + \frac{\delta - a_t}{t+t_0},\qquad
    \log\epsilon_t = \mu - \frac{\sqrt t}{\gamma}\,\bar H_t,\qquad
    \log\bar\epsilon_t = t^{-\kappa}\log\epsilon_t + (1 - t^{-\kappa})\log\bar\epsilon_{t-1},

with :math:`\mu = \log(10\,\epsilon_0)`, :math:`\gamma = 0.05`, :math:`t_0 = 10`,
:math:`\kappa = 0.75` (the paper's values); after warm-up the step size is frozen at
:math:`\bar\epsilon_t`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["batched_cov", "DualAveraging"]


def batched_cov(positions: Tensor) -> Tensor:
    """Regularised covariance per batch element: ``(chains, T, *batch, D) -> (*batch, D, D)``
    (the module docstring's :math:`\\hat\\Sigma`, in float64)."""
    d = positions.shape[-1]
    batch = positions.shape[2:-1]
    flat = positions.reshape(-1, math.prod(batch), d).double()
    n = flat.shape[0]
    centred = flat - flat.mean(0)
    cov = torch.einsum("nbi,nbj->bij", centred, centred) / max(n - 1, 1)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    cov = n / (n + 5.0) * cov + 1e-3 * 5.0 / (n + 5.0) * eye
    return cov.reshape(*batch, d, d)


class DualAveraging:
    """Dual averaging of ``log_eps`` (one step size per batch element, ``(*batch)``) towards
    a mean acceptance probability ``target`` (see the module docstring).

    Args:
        log_eps: The initial log step sizes :math:`\\log\\epsilon_0`.
        target: :math:`\\delta`.
    """

    GAMMA, T0, KAPPA = 0.05, 10.0, 0.75

    def __init__(self, log_eps: Tensor, target: float):
        self.target = target
        self.mu = log_eps + math.log(10.0)
        self.hbar = torch.zeros_like(log_eps)
        self.log_eps = log_eps.clone()
        self.log_eps_bar = log_eps.clone()
        self.t = 0

    def update(self, accept_prob: Tensor) -> Tensor:
        """One update from the mean acceptance probability ``(*batch)``; the new
        :math:`\\log\\epsilon_t`."""
        self.t += 1
        t = self.t
        self.hbar = (1 - 1 / (t + self.T0)) * self.hbar + (self.target - accept_prob) / (
            t + self.T0
        )
        self.log_eps = self.mu - math.sqrt(t) / self.GAMMA * self.hbar
        w = t**-self.KAPPA
        self.log_eps_bar = w * self.log_eps + (1 - w) * self.log_eps_bar
        return self.log_eps

    def final(self) -> Tensor:
        """:math:`\\log\\bar\\epsilon_t` (the initial step size if there was no update)."""
        return self.log_eps_bar if self.t > 0 else self.log_eps
