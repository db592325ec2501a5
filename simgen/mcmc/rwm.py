r"""Gaussian random-walk Metropolis with warm-up covariance adaptation, vectorised over chains.

Propose :math:`u' = u + L z`, :math:`z \sim \mathcal N(0, I)`, and accept with probability
:math:`\min\big(1, \pi(u')/\pi(u)\big)`. The proposal covariance :math:`LL^\top` starts at
``scale``:math:`^2 I` and is re-estimated during warm-up (Haario et al., 2001) as

.. math:: LL^\top = \frac{2.38^2}{D}\,\hat\Sigma,

the scaling that is optimal for Gaussian targets (Roberts, Gelman & Gilks, 1997; acceptance
≈ 0.23 in high dimension), with :math:`\hat\Sigma` the chains' covariance per observation
(:func:`~simgen.mcmc.adaptation.batched_cov`). It is frozen after warm-up, so the sampling
phase is a valid Markov chain. Draws decorrelate in :math:`O(D)` steps, which is why MCMC
posteriors thin random-walk chains by :math:`\max(10, 5D)` (:class:`~simgen.mcmc.MCMCConfig`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .adaptation import batched_cov
from .base import Potential, Sampler, State, StepInfo, evaluate, matvec, uniform

__all__ = ["RandomWalkMetropolis"]


class RandomWalkMetropolis(Sampler):
    """Gaussian random-walk Metropolis (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        scale: Initial proposal standard deviation in every coordinate.
    """

    def __init__(self, potential: Potential, scale: float = 0.5):
        super().__init__(potential)
        self.scale = scale
        self.chol: Tensor | None = None

    def init(self, position: Tensor) -> State:
        d = position.shape[-1]
        self.chol = self.scale * torch.eye(d, dtype=position.dtype, device=position.device)
        return State(position, evaluate(self.potential, position))

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: proposal covariance :math:`2.38^2/D\\,\\hat\\Sigma` per observation, from
        ``positions`` ``(chains, T, *batch, D)``."""
        d = positions.shape[-1]
        chol = torch.linalg.cholesky(batched_cov(positions) * 2.38**2 / d)
        self.chol = chol.to(positions.dtype)

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        assert self.chol is not None, "call init() first"
        u, lp = state.position, state.log_density
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        proposal = u + matvec(self.chol, noise)
        prop_lp = evaluate(self.potential, proposal)
        log_ratio = torch.nan_to_num(prop_lp - lp, nan=-math.inf)
        accept = torch.log(uniform(lp.shape, lp, generator)) < log_ratio
        u = torch.where(accept[..., None], proposal, u)
        lp = torch.where(accept, prop_lp, lp)
        return State(u, lp), StepInfo(acceptance_rate=accept.float())
