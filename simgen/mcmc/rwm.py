r"""Gaussian random-walk Metropolis with warm-up adaptation, vectorised over chains.

Propose :math:`u' = u + \lambda L z`, :math:`z \sim \mathcal N(0, I)`, and accept with
probability :math:`\min\big(1, \pi(u')/\pi(u)\big)`. The proposal covariance
:math:`\lambda^2 LL^\top` starts at ``scale``:math:`^2 I` (:math:`\lambda = 1`) and its shape
is re-estimated during warm-up (Haario et al., 2001) as

.. math:: LL^\top = \frac{2.38^2}{D}\,\hat\Sigma,

the scaling that is optimal for Gaussian targets (Roberts, Gelman & Gilks, 1997; acceptance
≈ 0.23 in high dimension), with :math:`\hat\Sigma` the covariance of the recent warm-up
states per observation (:func:`~simgen.mcmc.adaptation.batched_cov`), all chains pooled
around one mean (``covariance="pooled"``, the default: chains started by SIR spread over
the posterior, so the pooled states measure its scale even after a short warm-up).

``covariance="within"`` centres each chain on its own mean and also tunes the global
scale: after every warm-up step :math:`\log\lambda \mathrel{+}= (\bar a_t - a^*_D)/\sqrt t`
per observation (Andrieu & Thoms, 2008, §5.1), :math:`\bar a_t` the step's acceptance over
chains and :math:`a^*_D` the optimal acceptance for a Gaussian target in D dimensions
(:data:`TARGET_ACCEPTANCE`); the tuning corrects the short chains' spread, which
underestimates the target's. It is for chains that sit in separate modes, where the pooled
covariance spans the gaps between modes and nearly every proposal is rejected (two modes
120 sds apart, ``tests/test_sequential_mcmc.py``: per-mode sd within 2% against 47% off
pooled). It is not the default: in SNLE at 10,000 simulations it raised the acceptance
(0.11-0.33 against 0.01-0.05) but scored worse on all three runs measured (C2ST 0.753
against 0.666 on slcp's observation 0, 0.956 against 0.938 on its observation 1, 0.725
against 0.605 on two_moons' observation 2), and with an NLE fitted once on 10,000 prior
simulations of slcp both gave 0.87 (``benchmarks/results_sequential.md``, "SNLE").

Everything is frozen after warm-up, so the sampling phase is a valid Markov chain. Draws
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

#: The acceptance rate the scale adaptation aims at, by dimension: the optimum for Gaussian
#: targets (Gelman, Roberts & Gilks, 1996, Table 1), 0.234 above 10 dimensions. Aiming at
#: 0.234 in 2-D made steps too long for 4 chains of 25 draws (6 of 40 observations above
#: R-hat 1.1 against 1 at 0.35, ``tests/test_nle.py``'s SBC-sized request).
TARGET_ACCEPTANCE = {1: 0.441, 2: 0.352, 3: 0.316, 4: 0.285, 5: 0.279, 6: 0.275, 7: 0.273,
                     8: 0.266, 9: 0.261, 10: 0.255}  # fmt: skip
HIGH_DIMENSION_ACCEPTANCE = 0.234


class RandomWalkMetropolis(Sampler):
    """Gaussian random-walk Metropolis (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        scale: Initial proposal standard deviation in every coordinate.
        covariance: ``"pooled"`` (default) or ``"within"`` (each chain centred on its own
            mean, and the global scale tuned; see the module docstring).
    """

    def __init__(self, potential: Potential, scale: float = 0.5, covariance: str = "pooled"):
        super().__init__(potential)
        if covariance not in ("within", "pooled"):
            raise ConfigError(
                f"MCMC: rwm's covariance must be 'within' or 'pooled', got {covariance!r}."
            )
        self.scale, self.covariance = scale, covariance
        self.tune_only_share = 0.2 if covariance == "within" else 0.0  # the scale settles
        self.chol: Tensor | None = None
        self.log_lambda: Tensor | None = None
        self.t, self.target = 0, HIGH_DIMENSION_ACCEPTANCE

    def init(self, position: Tensor) -> State:
        d = position.shape[-1]
        self.chol = self.scale * torch.eye(d, dtype=position.dtype, device=position.device)
        self.target = TARGET_ACCEPTANCE.get(d, HIGH_DIMENSION_ACCEPTANCE)
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
        """Warm-up, ``covariance="within"``: one Robbins-Monro step of :math:`\\log\\lambda`
        per observation."""
        assert self.log_lambda is not None, "call init() first"
        if self.covariance == "pooled":
            return
        self.t += 1
        rate = info.acceptance_rate.to(self.log_lambda.dtype).mean(0)
        self.log_lambda = self.log_lambda + (rate - self.target) / math.sqrt(self.t)

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
        """The tuned global scale :math:`\\lambda` (its mean over observations)."""
        if self.log_lambda is None or self.covariance == "pooled":
            return {}
        return {"scale_factor": float(self.log_lambda.exp().mean())}
