r"""Potentials: a trained network and the prior as an unnormalised log posterior of (θ, x).

NLE and NRE both learn a function that is the posterior up to a constant in θ once the log
prior is added:

.. math::
    \psi(\theta, x) =
    \begin{cases}
      \log q_\phi(x \mid \theta) + \log p(\theta) & \text{NLE: } \texttt{likelihood\_potential}\\
      f_\phi(\theta, x) + \log p(\theta) & \text{NRE: } \texttt{ratio\_potential}
    \end{cases}

(:math:`f_\phi` the ratio classifier's logit, :math:`\approx \log p(x\mid\theta) - \log
p(x)`), with :math:`\psi = -\infty` outside the prior's support. A potential is a plain
function ``potential(theta, x) -> (*, B)`` for ``theta`` ``(*, B, D)`` and ``B``
observations ``x`` ``(B, *x_shape)``; :func:`unconstrained` turns it, for one batch of
observations, into the log-density over :math:`u \in \mathbb R^D` that every sampler of
:mod:`simgen.mcmc` takes,

.. math:: \pi_u(u) = \psi\big(T(u), x\big) + \log\big|\det J_T(u)\big|,

with :math:`T` the prior's support bijection (:func:`simgen.priors.support_transform`), so
no chain ever leaves the support.

**I.i.d. trials** (:mod:`simgen.iid`). Given ``x`` ``(B, n, *x_shape)``, :math:`n` trials
per observation (padded sets: a row of NaN is a missing trial), both potentials sum the
per-trial term over the trials present,

.. math:: \psi(\theta, x_{1:n}) = \sum_{i=1}^{n} \ell_\phi(\theta, x_i) + \log p(\theta),

with :math:`\ell_\phi` the log-likelihood (NLE) or the logit (NRE), in one network call over
trials × chains × observations. For NRE this is the sum of :math:`\log r(\theta, x_i)`,
exact for the ratio :math:`p(x\mid\theta)/p(x)` (the :math:`p(x_i)` are constants in θ).

**Devices.** A potential computes at its network's device and dtype (:mod:`simgen.devices`):
θ and x are moved there, the prior is placed there (rebuilt once per device and dtype), and
the value is returned there, wherever the network is moved after the potential is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform

from ..devices import Placement, home, to_home
from ..iid import filled
from ..priors import in_support
from .base import Potential

__all__ = ["PosteriorPotential", "likelihood_potential", "ratio_potential", "unconstrained"]

#: ``(theta (*, B, D), x (B, *x_shape)) -> (*, B)``: an unnormalised log posterior.
PosteriorPotential = Callable[[Tensor, Tensor], Tensor]


def _with_prior(prior: Distribution) -> Callable[[Tensor, Tensor], Tensor]:
    """``(theta, log_term) -> log_term + log p(theta)``, ``-inf`` outside the support; a NaN
    inside it is kept, so that MCMC reports it (:class:`~simgen.errors.MCMCError`). The prior
    is evaluated at ``theta``'s device and dtype."""
    placement = Placement(prior)

    def add(theta: Tensor, log_term: Tensor) -> Tensor:
        placed = placement.at(theta.device, theta.dtype)
        inside = in_support(placed.prior, theta)
        safe = torch.where(inside[..., None], theta, placed.inside)
        value = log_term + placed.prior.log_prob(safe)
        return torch.where(inside, value, torch.full_like(value, -math.inf))

    return add


def likelihood_potential(
    estimator: nn.Module, prior: Distribution, x_shape: Sequence[int]
) -> PosteriorPotential:
    """:math:`\\log q_\\phi(x\\mid\\theta) + \\log p(\\theta)` from a likelihood estimator.

    Args:
        estimator: A conditional density estimator of x (target) given θ (context):
            ``estimator(theta).log_prob(x)``.
        prior: The prior.
        x_shape: Shape of one observation.
    """
    x_shape = tuple(int(s) for s in x_shape)
    with_prior = _with_prior(prior)

    def loglik(theta: Tensor, x: Tensor) -> Tensor:
        batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[: x.ndim - len(x_shape)])
        return estimator(theta.expand(*batch, -1)).log_prob(x.expand(*batch, *x_shape))

    def potential(theta: Tensor, x: Tensor) -> Tensor:
        where = home(estimator)
        theta, x = to_home(theta, where), to_home(x, where)
        return with_prior(theta, _summed(loglik, theta, x, x_shape))

    return potential


def ratio_potential(
    classifier: nn.Module, prior: Distribution, x_shape: Sequence[int] | None = None
) -> PosteriorPotential:
    """:math:`f_\\phi(\\theta, x) + \\log p(\\theta)` from a ratio classifier whose
    ``classifier(theta, x)`` is the logit (target θ, context x; broadcast). ``x_shape``
    (default: the classifier's ``context_shape``) tells trials from single observations."""
    with_prior = _with_prior(prior)
    shape = x_shape if x_shape is not None else getattr(classifier, "context_shape", None)

    def potential(theta: Tensor, x: Tensor) -> Tensor:
        where = home(classifier)
        theta, x = to_home(theta, where), to_home(x, where)
        if shape is None:
            return with_prior(theta, classifier(theta, x))
        return with_prior(theta, _summed(classifier, theta, x, shape))

    return potential


def _summed(
    term: Callable[[Tensor, Tensor], Tensor], theta: Tensor, x: Tensor, x_shape: Sequence[int]
) -> Tensor:
    """``term(theta, x)`` ``(*, B)`` for single observations ``x`` ``(B, *x_shape)``; for
    trial sets ``(B, n, *x_shape)`` the sum over the trials present, ``(*, B)``."""
    if x.ndim == len(tuple(x_shape)) + 1:
        return term(theta, x)
    x, mask = filled(x, x_shape)
    per_trial = term(theta[..., None, :], x)  # (*, B, n)
    return torch.where(mask, per_trial, torch.zeros_like(per_trial)).sum(-1)


def unconstrained(potential: PosteriorPotential, transform: Transform, x: Tensor) -> Potential:
    """The sampler's log-density :math:`\\pi_u` over ``u`` ``(*, B, D)`` given ``x``
    ``(B, *x_shape)`` (module docstring)."""

    def log_density(u: Tensor) -> Tensor:
        theta = transform(u)
        ladj = transform.log_abs_det_jacobian(u, theta)
        if ladj.ndim == u.ndim:  # elementwise transforms report per coordinate
            ladj = ladj.sum(-1)
        value = potential(theta, x) + ladj
        return torch.where(torch.isnan(value) & torch.isinf(u).any(-1), -math.inf, value)

    return log_density
