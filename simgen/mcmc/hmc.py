r"""Hamiltonian Monte Carlo (Neal, 2011) with a dense mass matrix, vectorised over chains.

In whitened coordinates :math:`u = Lz` (:math:`LL^\top = \hat\Sigma`, the mass matrix
estimated in warm-up per observation), draw a momentum :math:`p \sim \mathcal N(0, I)` and
run ``num_steps`` leapfrog steps of size :math:`\epsilon`,

.. math:: p \leftarrow p + \tfrac{\epsilon}{2} L^\top \nabla \log\pi(u),\quad
          u \leftarrow u + \epsilon L p,\quad
          p \leftarrow p + \tfrac{\epsilon}{2} L^\top \nabla \log\pi(u),

then accept the end point with probability :math:`\min(1, e^{H - H'})`,
:math:`H = -\log\pi(u) + \tfrac12 |p|^2`. A trajectory whose energy error exceeds 1000
(Stan's rule) or that leaves the support is a divergence, and rejected. The step size is
tuned per observation by dual averaging (:class:`~simgen.mcmc.adaptation.DualAveraging`) to
a mean acceptance probability of 0.8 (Stan's default, a good trade of step length against
rejections for a fixed number of leapfrog steps) and frozen after warm-up; each transition
jitters it by ±20 % so that no trajectory length is periodic. The potential must be
differentiable by torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .adaptation import DualAveraging, batched_cov
from .base import Potential, Sampler, State, StepInfo, evaluate_with_grad, matvec, uniform

__all__ = ["HamiltonianMonteCarlo"]


class HamiltonianMonteCarlo(Sampler):
    """Vectorised HMC (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, differentiable by torch.
        step_size: Initial leapfrog step in whitened coordinates, divided by :math:`D^{1/4}`
            (the step that keeps acceptance constant as :math:`D` grows); tuned in warm-up.
        num_steps: Leapfrog steps per transition.
        target_accept: Mean acceptance probability the warm-up tunes the step size to.
    """

    #: The last 20 % of warm-up tune the step size under the final mass matrix.
    tune_only_share = 0.2

    def __init__(
        self,
        potential: Potential,
        step_size: float = 0.5,
        num_steps: int = 8,
        target_accept: float = 0.8,
    ):
        super().__init__(potential)
        self.step_size = step_size
        self.num_steps = num_steps
        self.target_accept = target_accept
        self.chol: Tensor | None = None
        self.log_eps: Tensor | None = None  # (*batch): one step size per observation
        self.dual: DualAveraging | None = None

    def init(self, position: Tensor) -> State:
        d = position.shape[-1]
        # Start from the chains' own spread (they are usually drawn near the posterior).
        spread = position.std(0) if position.shape[0] > 1 else torch.ones_like(position[0])
        spread = torch.nan_to_num(spread, nan=1.0).clamp(min=1e-3, max=1e3)
        self.chol = torch.diag_embed(spread)
        log_eps = torch.full(position.shape[1:-1], math.log(self.step_size / d**0.25))
        self.log_eps = log_eps.to(position)
        self.dual = DualAveraging(self.log_eps, self.target_accept)
        value, grad = evaluate_with_grad(self.potential, position)
        return State(position, value, grad)

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: mass matrix :math:`\\hat\\Sigma` per observation; restart step-size tuning."""
        assert self.log_eps is not None, "call init() first"
        self.chol = torch.linalg.cholesky(batched_cov(positions)).to(positions.dtype)
        self.dual = DualAveraging(self.log_eps, self.target_accept)

    def tune(self, info: StepInfo) -> None:
        """Warm-up: one dual-averaging update from the chains' mean acceptance probability."""
        assert self.dual is not None and info.accept_prob is not None
        self.log_eps = self.dual.update(info.accept_prob.mean(0))  # over chains → (*batch)

    def end_warmup(self) -> None:
        """Freeze the step size at its dual-averaged value."""
        if self.dual is not None:
            self.log_eps = self.dual.final()

    def report(self) -> dict[str, list[float] | float]:
        assert self.log_eps is not None
        return {"step_size": self.log_eps.exp().tolist()}

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        assert self.chol is not None and self.log_eps is not None and state.grad is not None
        u0, lp0, g0 = state.position, state.log_density, state.grad
        chol_t = self.chol.transpose(-1, -2)
        jitter = 0.8 + 0.4 * uniform(lp0.shape, lp0, generator)
        eps = (self.log_eps.exp() * jitter)[..., None]  # (chains, *batch, 1)
        p0 = torch.randn(u0.shape, generator=generator, dtype=u0.dtype, device=u0.device)
        u, g = u0, g0
        p = p0 + 0.5 * eps * matvec(chol_t, g)
        ok = torch.ones(lp0.shape, dtype=torch.bool, device=u0.device)
        lp = lp0
        h0 = -lp0 + 0.5 * (p0**2).sum(-1)
        for i in range(self.num_steps):
            u = u + eps * matvec(self.chol, p)
            ok &= torch.isfinite(u).all(-1)
            # A diverged chain is frozen at its start (and rejected below), so the potential is
            # never asked for points far out of the typical set.
            u = torch.where(ok[..., None], u, u0)
            lp, g = evaluate_with_grad(self.potential, u)
            scale = 1.0 if i + 1 < self.num_steps else 0.5
            p = p + scale * eps * matvec(chol_t, g)
            ok &= torch.isfinite(lp) & ((-lp + 0.5 * (p**2).sum(-1) - h0) < 1000.0)
        h1 = -lp + 0.5 * (p**2).sum(-1)
        log_ratio = torch.where(ok, h0 - h1, torch.full_like(h0, -math.inf))
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        accept = torch.log(uniform(lp0.shape, lp0, generator)) < log_ratio
        new = State(
            torch.where(accept[..., None], u, u0),
            torch.where(accept, lp, lp0),
            torch.where(accept[..., None], g, g0),
        )
        info = StepInfo(
            acceptance_rate=accept.float(),
            accept_prob=log_ratio.clamp(max=0.0).exp(),
            divergent=~ok,
        )
        return new, info
