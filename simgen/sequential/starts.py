r"""Where an SNLE or SNRE round's MCMC chains start: ``sequential(..., chain_init=...)``.

An MCMC posterior starts its chains by sampling–importance–resampling (SIR): it draws
:math:`M = 20 \times` chains candidates :math:`\theta_j` from a proposal :math:`q`, weights
them by :math:`w_j \propto \exp\psi(\theta_j, x_o) / q(\theta_j)` and resamples one start per
chain (:meth:`simgen.mcmc_posterior.MCMCPosterior._init_chains`). Its own proposal is the
prior (``chain_init="prior"``). A posterior much narrower than the prior then leaves one
candidate with nearly all the weight, so every chain starts in one mode, and random-walk
chains do not leave it: on slcp's observation 1 at 10,000 simulations all 50 chains of
the scored draws sat in one of the four sign modes of :math:`(\theta_3, \theta_4)`
(C2ST 0.938).

``chain_init="pool"``, the default for NLE and NRE, draws the candidates uniformly, with
replacement, from the θ of every simulation pooled so far, :class:`PooledStart`; its
``log_prob_batched`` is 0, so the weights are :math:`w_j \propto \exp\psi(\theta_j, x_o)`.
From round 2 on most of the pool was drawn from earlier posteriors at :math:`x_o`, so
candidates fall in the modes those reached. The pool's density is not known, so these are
not importance weights: the starts follow :math:`q_\text{pool}\,\exp\psi` rather than the
posterior, which matters only as far as the chains fail to mix after warm-up. The returned
posterior keeps the start (``posterior.proposal``), so later ``sample`` calls at
:math:`x_o` start from the pool too. It is the default because it lowered C2ST at
10,000 simulations where prior starts left chains in one mode and did not raise it on
average elsewhere: slcp's observation 1 0.692 against 0.887 (seeds 0-1), observation 0
0.682 against 0.668, all six slcp runs 0.691 against 0.747, two_moons 0.519 against 0.551
(seed 0, three observations); it is higher on 2 of the 9 runs compared
(``benchmarks/results_sequential.md``, "SNLE").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["CHAIN_INITS", "PooledStart", "check_chain_init"]

#: The values of ``sequential(..., chain_init=...)``.
CHAIN_INITS = ("prior", "pool")


def check_chain_init(chain_init: Any, uses_mcmc: bool) -> str | None:
    """``chain_init`` resolved: ``None`` is ``"pool"`` for an MCMC posterior (NLE or NRE)
    and stays ``None`` for NPE; otherwise one of :data:`CHAIN_INITS`, and NPE refuses
    ``"pool"``."""
    if chain_init is None:
        return "pool" if uses_mcmc else None
    if chain_init not in CHAIN_INITS:
        raise ConfigError(f"chain_init must be one of {CHAIN_INITS}, got {chain_init!r}.")
    if chain_init == "pool" and not uses_mcmc:
        raise ConfigError(
            "chain_init='pool' sets where MCMC chains start, and NPE posteriors sample without "
            "MCMC; leave chain_init out for NPE, or use simgen.NLE / simgen.NRE."
        )
    return chain_init


class PooledStart:
    """SIR candidates for MCMC chain starts drawn from simulated θ (see the module docstring).

    Args:
        theta: ``(N, D)`` pooled simulation parameters.

    Example:
        >>> posterior.proposal = PooledStart(history.theta)  # chains start from the pool
    """

    def __init__(self, theta: Tensor):
        if theta.ndim != 2 or len(theta) == 0:
            raise ConfigError(
                f"PooledStart needs θ of shape (N, D), N >= 1; got {tuple(theta.shape)}."
            )
        self.theta = theta.detach().float().cpu()

    def sample_batched(self, sample_shape: Any, x: Tensor) -> Tensor:
        """``(*sample_shape, B, D)`` pooled θ, uniform with replacement (torch's generator),
        for each of the ``B`` observations in ``x``."""
        shape = torch.Size(sample_shape)
        index = torch.randint(len(self.theta), (shape.numel(), len(x)))
        return self.theta[index].reshape(*shape, len(x), self.theta.shape[-1])

    def log_prob_batched(self, theta: Tensor, x: Any = None) -> Tensor:
        """0 for every candidate: the weights are the potential's alone."""
        return torch.zeros(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
