r"""Vectorised samplers for the reference posteriors of the simulator collection.

Private to ``simulators/`` (simgen's own samplers live in ``simgen.mcmc``; the collection must
not depend on the package it is used to test). Every function runs many chains at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["single_thread", "sir_init", "metropolis"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored after).

    Many-chain samplers do thousands of small tensor operations; on a shared machine the
    thread pool's synchronisation costs far more than it saves (10-100x slower measured on
    two busy cores), so the reference samplers run single-threaded.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sir_init(
    log_lik: Callable[[Tensor], Tensor],
    prior_samples: Tensor,
    num_chains: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    r"""Sampling-importance-resampling from the prior: chain starts and a proposal scale.

    Draws ``num_chains`` of ``prior_samples`` with probability :math:`\propto p(x \mid
    \theta)`; returns them and the Cholesky factor of their weighted covariance.
    """
    ll = log_lik(prior_samples)
    ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -torch.inf))
    w = torch.softmax(ll, 0)
    idx = torch.multinomial(w, num_chains, replacement=True, generator=generator)
    mean = (w[:, None] * prior_samples).sum(0)
    cov = (w[:, None] * (prior_samples - mean)).T @ (prior_samples - mean)
    cov = cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    return prior_samples[idx], torch.linalg.cholesky(cov)


def _chain_tril(theta: Tensor, fallback: Tensor) -> Tensor:
    cov = torch.cov(theta.T)
    cov = cov + 1e-9 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    tril, info = torch.linalg.cholesky_ex(cov)
    return fallback if int(info) != 0 else tril


def metropolis(
    log_prob: Callable[[Tensor], Tensor],
    init: Tensor,
    scale_tril: Tensor,
    num_samples: int,
    generator: torch.Generator,
    burn_in: int = 200,
    thin: int = 5,
) -> Tensor:
    r"""Random-walk Metropolis, :math:`\theta' = \theta + s L\epsilon`, for all chains at once.

    The chains (``init``, ``(C, D)``) first run ``burn_in`` steps, during the first half of
    which the step :math:`s` (from :math:`2.38/\sqrt D`) is tuned towards an acceptance rate
    of about 0.3 and :math:`L` is twice replaced by the Cholesky factor of the chains'
    current covariance (so a poor start, e.g. few distinct resampled particles, is
    forgotten); both are then frozen, so what follows is a valid Markov chain. Every
    ``thin``-th state of every chain is kept until ``num_samples`` are collected.

    Returns:
        ``(num_samples, D)`` samples, chains interleaved.
    """
    theta = init.clone()
    lp = log_prob(theta)
    c, d = theta.shape
    s = 2.38 / d**0.5
    kept: list[Tensor] = []
    step = 0
    while sum(len(k) for k in kept) < num_samples:
        eps = torch.randn((c, d), generator=generator, dtype=theta.dtype)
        prop = theta + s * eps @ scale_tril.T
        lp_prop = log_prob(prop)
        u = torch.rand(c, generator=generator, dtype=theta.dtype)
        accept = torch.log(u) < lp_prop - lp
        theta = torch.where(accept[:, None], prop, theta)
        lp = torch.where(accept, lp_prop, lp)
        step += 1
        if step < burn_in // 2 and step % 10 == 0:
            s *= float(torch.exp(accept.to(theta.dtype).mean() - 0.3))
        if step in (burn_in // 4, burn_in // 2) and c > 4 * d:
            scale_tril = _chain_tril(theta, scale_tril)
        if step > burn_in and (step - burn_in) % thin == 0:
            kept.append(theta)
    return torch.cat(kept)[:num_samples]
