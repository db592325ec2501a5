r"""Gaussian random-walk Metropolis with warm-up adaptation, vectorised over chains.

Propose :math:`u' = u + \lambda L z`, :math:`z \sim \mathcal N(0, I)`, and accept with
probability :math:`\min\big(1, \pi(u')/\pi(u)\big)`. The proposal covariance
:math:`\lambda^2 LL^\top` starts at ``scale``:math:`^2 I` and is adapted during warm-up in
two ways (adaptive Metropolis, Haario et al., 2001, with the global scaling of Andrieu &
Thoms, 2008, §5.1):

* **shape**: :math:`LL^\top = \frac{2.38^2}{D}\,\hat\Sigma`, the scaling that is optimal
  for Gaussian targets (Roberts, Gelman & Gilks, 1997; acceptance ≈ 0.23 in high
  dimension), with :math:`\hat\Sigma` the covariance of the recent warm-up states per
  observation (:func:`~simgen.mcmc.adaptation.batched_cov`), each chain **centred on its
  own mean** (``covariance="within"``, the default) or all chains pooled around one mean
  (``"pooled"``). Centring each chain keeps the proposal at the scale of one mode when the
  chains sit in different modes: pooled around one mean, the covariance spans the gaps
  between modes and nearly every proposal is rejected (slcp's four modes, NLE at 10,000
  simulations: acceptance 0.02-0.04 and R-hat 1.3-1.6 pooled,
  ``benchmarks/results_sequential.md``, "SNLE");
* **scale**: after every warm-up step, :math:`\log\lambda \mathrel{+}= (\bar a_t -
  0.234)/\sqrt t` per observation, :math:`\bar a_t` the step's acceptance over chains
  (a Robbins-Monro step towards 0.234). It corrects what the shape estimate gets wrong in
  size, e.g. the spread of short warm-up chains, which underestimates the target's.

Both are frozen after warm-up, so the sampling phase is a valid Markov chain. Draws
decorrelate in :math:`O(D)` steps, which is why MCMC posteriors thin random-walk chains by
:math:`\max(10, 5D)` (:class:`~simgen.mcmc.MCMCConfig`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from .adaptation import batched_cov
from .base import Potential, Sampler, State, StepInfo, evaluate, matvec, uniform

__all__ = ["RandomWalkMetropolis"]

#: The acceptance rate the scale adaptation aims at (optimal for Gaussian targets).
TARGET_ACCEPTANCE = 0.234


class RandomWalkMetropolis(Sampler):
    """Gaussian random-walk Metropolis (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        scale: Initial proposal standard deviation in every coordinate.
        covariance: ``"within"`` (each chain centred on its own mean) or ``"pooled"``.
    """

    tune_only_share = 0.2

    def __init__(self, potential: Potential, scale: float = 0.5, covariance: str = "within"):
        super().__init__(potential)
        if covariance not in ("within", "pooled"):
            raise ConfigError(
                f"MCMC: rwm's covariance must be 'within' or 'pooled', got {covariance!r}."
            )
        self.scale, self.covariance = scale, covariance
        self.chol: Tensor | None = None
        self.log_lambda: Tensor | None = None
        self.t = 0

    def init(self, position: Tensor) -> State:
        d = position.shape[-1]
        self.chol = self.scale * torch.eye(d, dtype=position.dtype, device=position.device)
        lp = evaluate(self.potential, position)
        self.log_lambda = torch.zeros(lp.shape[1:], dtype=position.dtype, device=position.device)
        return State(position, lp)

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: proposal shape :math:`2.38^2/D\\,\\hat\\Sigma` per observation, from
        ``positions`` ``(chains, T, *batch, D)`` (each chain centred when ``T`` > 1 and
        ``covariance="within"``)."""
        d = positions.shape[-1]
        if self.covariance == "within" and positions.shape[1] > 1:
            positions = positions - positions.mean(1, keepdim=True)
        chol = torch.linalg.cholesky(batched_cov(positions) * 2.38**2 / d)
        self.chol = chol.to(positions.dtype)

    def tune(self, info: StepInfo) -> None:
        """Warm-up: one Robbins-Monro step of :math:`\\log\\lambda` per observation."""
        assert self.log_lambda is not None, "call init() first"
        self.t += 1
        rate = info.acceptance_rate.to(self.log_lambda.dtype).mean(0)
        self.log_lambda = self.log_lambda + (rate - TARGET_ACCEPTANCE) / math.sqrt(self.t)

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        assert self.chol is not None and self.log_lambda is not None, "call init() first"
        u, lp = state.position, state.log_density
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        proposal = u + self.log_lambda.exp()[..., None] * matvec(self.chol, noise)
        prop_lp = evaluate(self.potential, proposal)
        log_ratio = torch.nan_to_num(prop_lp - lp, nan=-math.inf)
        accept = torch.log(uniform(lp.shape, lp, generator)) < log_ratio
        u = torch.where(accept[..., None], proposal, u)
        lp = torch.where(accept, prop_lp, lp)
        return State(u, lp), StepInfo(acceptance_rate=accept.float())

    def report(self) -> dict:
        """The adapted global scale :math:`\\lambda` (its mean over observations)."""
        if self.log_lambda is None:
            return {}
        return {"scale_factor": float(self.log_lambda.exp().mean())}
