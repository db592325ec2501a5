r"""Vectorised samplers for the reference posteriors of the simulator collection.

Private to ``simulators/`` (simgen's own samplers live in ``simgen.mcmc``; the collection must
not depend on the package it is used to test). Every function runs many chains at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = [
    "single_thread",
    "sir_init",
    "metropolis",
    "tempered_fit",
    "independence_metropolis",
    "pseudo_marginal_independence",
    "split_rhat",
]


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


def _student_t(loc: Tensor, tril: Tensor, df: int, n: int, generator: torch.Generator) -> Tensor:
    r"""``n`` draws of :math:`\mu + L z \sqrt{\nu / \chi^2_\nu}` (integer ``df`` = ν)."""
    z = torch.randn((n, len(loc) + df), generator=generator, dtype=loc.dtype)
    chi2 = (z[:, len(loc) :] ** 2).sum(-1)
    return loc + (z[:, : len(loc)] @ tril.T) * (df / chi2)[:, None].sqrt()


def _student_t_log_prob(theta: Tensor, loc: Tensor, tril: Tensor, df: int) -> Tensor:
    """Unnormalised multivariate-t log-density (the constant cancels in MH ratios)."""
    z = torch.linalg.solve_triangular(tril, (theta - loc).T, upper=False).T
    return -0.5 * (df + len(loc)) * torch.log1p((z**2).sum(-1) / df)


def _ess(log_w: Tensor) -> Tensor:
    w = torch.softmax(log_w, 0)
    return 1 / (w**2).sum()


def tempered_fit(
    log_prob: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale_tril: Tensor,
    num_particles: int,
    generator: torch.Generator,
    df: int = 5,
    max_iter: int = 30,
    stop_ess: float = 0.5,
) -> tuple[Tensor, Tensor]:
    r"""Move a multivariate-t fit from a broad start (e.g. the prior) onto :math:`p`.

    Adaptive importance sampling with tempering: draw ``num_particles`` from
    :math:`q = t_\nu(\mu, LL^\top)`, weight by :math:`(p/q)^\beta` with the largest
    :math:`\beta \le 1` whose effective sample size is at least a quarter of the draws
    (bisection), and refit :math:`\mu, LL^\top` to the weighted mean and covariance. Each
    round moves :math:`q` towards :math:`q^{1-\beta} p^\beta`; it stops once
    :math:`\beta = 1` with an effective sample size above ``stop_ess`` of the draws, i.e. once
    :math:`q` covers :math:`p` well, or after ``max_iter`` rounds. ``log_prob`` may be a noisy
    (e.g. particle-filter) estimate. Only a proposal is fitted: the samplers that use it are
    exact whatever it is.

    Returns:
        ``(loc, scale_tril)`` of the final fit.
    """
    n = num_particles
    for _ in range(max_iter):
        theta = _student_t(loc, scale_tril, df, n, generator)
        log_w = log_prob(theta) - _student_t_log_prob(theta, loc, scale_tril, df)
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -torch.inf))
        if float(_ess(log_w)) >= n / 4:
            beta = 1.0
        else:
            lo, hi = 0.0, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float(_ess(mid * log_w)) >= n / 4 else (lo, mid)
            beta = lo
        # Where p is zero (-inf) the tempered weight is zero too, also at beta = 0.
        finite = torch.isfinite(log_w)
        if int(finite.sum()) <= 2 * len(loc):
            continue  # too few draws with p > 0 to refit: draw again from the same q
        w = torch.softmax(torch.where(finite, beta * log_w, log_w), 0)
        loc = (w[:, None] * theta).sum(0)
        centred = theta - loc
        cov = (w[:, None] * centred).T @ centred
        scale_tril = torch.linalg.cholesky(cov)
        if beta == 1.0 and float(_ess(log_w)) >= stop_ess * n:
            break
    return loc, scale_tril


def independence_metropolis(
    log_prob: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale_tril: Tensor,
    num_chains: int,
    num_draws: int,
    generator: torch.Generator,
    burn_in: int = 100,
    thin: int = 2,
    df: int = 5,
    widen: float = 1.5,
    info: dict | None = None,
) -> Tensor:
    r"""Many chains alternating two Metropolis–Hastings kernels around a known mode.

    Kernel 1 is an independence sampler: propose :math:`\theta' \sim t_\nu(\mu, w^2\Sigma)`
    (:math:`\nu` = ``df``, :math:`w` = ``widen``; :math:`\mu, \Sigma = LL^\top` e.g. the mode
    and Laplace covariance) and accept with probability
    :math:`\min\big(1, \frac{p(\theta') q(\theta)}{p(\theta) q(\theta')}\big)`; heavy-tailed
    and wider than the posterior, it moves a chain anywhere in the bulk in one step. Kernel 2
    is a random walk :math:`\theta' = \theta + (2.38/\sqrt D) L\epsilon`, which explores
    locally where :math:`q` is a poor fit. Each leaves :math:`p` invariant, so their
    alternation does. Chains start from :math:`q` (over-dispersed for split-:math:`\hat R`);
    half-way through ``burn_in``, :math:`\mu, \Sigma` are replaced by the chains' mean and
    covariance and frozen.

    Returns:
        ``(num_draws, num_chains, D)``: every ``thin``-th state after ``burn_in`` iterations.
        If ``info`` is a dict, the two kernels' acceptance rates after warm-up are stored in it
        (``"accept_independence"``, ``"accept_walk"``).
    """
    d = len(loc)
    accepted = [0.0, 0.0]
    tril = scale_tril * widen
    theta = _student_t(loc, tril, df, num_chains, generator)
    lp = log_prob(theta)
    kept: list[Tensor] = []
    step = 0
    while len(kept) < num_draws:
        prop = _student_t(loc, tril, df, num_chains, generator)
        lp_prop = log_prob(prop)
        log_ratio = (
            lp_prop
            - lp
            + _student_t_log_prob(theta, loc, tril, df)
            - _student_t_log_prob(prop, loc, tril, df)
        )
        u = torch.rand(num_chains, generator=generator, dtype=theta.dtype)
        accept = torch.log(u) < log_ratio
        theta = torch.where(accept[:, None], prop, theta)
        lp = torch.where(accept, lp_prop, lp)
        accepted[0] += float(accept.double().mean()) if step >= burn_in else 0.0
        eps = torch.randn((num_chains, d), generator=generator, dtype=theta.dtype)
        prop = theta + (2.38 / d**0.5) * eps @ (tril / widen).T
        lp_prop = log_prob(prop)
        u = torch.rand(num_chains, generator=generator, dtype=theta.dtype)
        accept = torch.log(u) < lp_prop - lp
        theta = torch.where(accept[:, None], prop, theta)
        lp = torch.where(accept, lp_prop, lp)
        accepted[1] += float(accept.double().mean()) if step >= burn_in else 0.0
        step += 1
        if step == burn_in // 2 and num_chains > 4 * d:
            loc = theta.mean(0)
            tril = _chain_tril(theta, tril / widen) * widen
        if step > burn_in and (step - burn_in) % thin == 0:
            kept.append(theta)
    if info is not None:
        info["accept_independence"] = accepted[0] / (step - burn_in)
        info["accept_walk"] = accepted[1] / (step - burn_in)
    return torch.stack(kept)


def pseudo_marginal_independence(
    log_prob_estimate: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale_tril: Tensor,
    num_chains: int,
    num_draws: int,
    generator: torch.Generator,
    burn_in: int = 10,
    thin: int = 2,
    df: int = 5,
    widen: float = 1.3,
    batch_size: int = 4096,
    info: dict | None = None,
) -> Tensor:
    r"""Pseudo-marginal independence Metropolis–Hastings, many chains at once.

    ``log_prob_estimate(theta)`` returns :math:`\log \hat p(\theta)` with
    :math:`\hat p` a non-negative *unbiased* estimate of the unnormalised target (e.g. prior
    × a particle filter's likelihood estimate). Each chain proposes
    :math:`\theta' \sim q = t_\nu(\mu, w^2\Sigma)` and accepts with probability
    :math:`\min\big(1, \frac{\hat p(\theta') q(\theta)}{\hat p(\theta) q(\theta')}\big)`,
    keeping the estimate of the current state (never re-estimating it). This is an exact
    Metropolis–Hastings chain on the extended space of :math:`\theta` and the estimator's
    randomness whose :math:`\theta`-marginal is :math:`p` (Andrieu & Roberts, 2009).

    Because the proposals do not depend on the chain, all of them are drawn and estimated
    first, in large vectorised batches; only the accept/reject scan runs in sequence. Each
    chain starts at its first proposal; every ``thin``-th state after ``burn_in`` proposals
    is kept.

    Returns:
        ``(num_draws, num_chains, D)``. If ``info`` is a dict, the acceptance rate after
        warm-up is stored in it (``"accept"``).
    """
    d = len(loc)
    tril = scale_tril * widen
    steps = burn_in + num_draws * thin
    props = _student_t(loc, tril, df, (steps + 1) * num_chains, generator)
    log_q = _student_t_log_prob(props, loc, tril, df)
    log_p = torch.cat([log_prob_estimate(b) for b in props.split(batch_size)])
    log_w = torch.where(torch.isnan(log_p), torch.full_like(log_p, -torch.inf), log_p) - log_q
    props = props.view(steps + 1, num_chains, d)
    log_w = log_w.view(steps + 1, num_chains)
    u = torch.rand((steps, num_chains), generator=generator, dtype=props.dtype)
    theta, current = props[0], log_w[0]
    kept: list[Tensor] = []
    accepted = 0.0
    for k in range(1, steps + 1):
        accept = torch.log(u[k - 1]) < log_w[k] - current
        theta = torch.where(accept[:, None], props[k], theta)
        current = torch.where(accept, log_w[k], current)
        if k > burn_in:
            accepted += float(accept.double().mean())
            if (k - burn_in) % thin == 0:
                kept.append(theta)
    if info is not None:
        info["accept"] = accepted / (steps - burn_in)
    return torch.stack(kept)


def split_rhat(chains: Tensor) -> Tensor:
    r"""Split-:math:`\hat R` (Gelman et al., BDA3) per coordinate of ``chains`` ``(S, C, D)``.

    Each chain is cut in two halves (2C chains of length :math:`n = \lfloor S/2 \rfloor`);
    with :math:`W` the mean within-chain variance and :math:`B/n` the variance of the chain
    means, :math:`\hat R = \sqrt{((n-1)/n\, W + B/n) / W}`.
    """
    n = chains.shape[0] // 2
    halves = torch.cat([chains[:n], chains[n : 2 * n]], 1)
    w = halves.var(0).mean(0)
    b_over_n = halves.mean(0).var(0)
    return (((n - 1) / n * w + b_over_n) / w).sqrt()
