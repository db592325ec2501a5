r"""``method="smc"``: adaptive tempered sequential Monte Carlo, from the prior to the posterior.

A population of :math:`N` particles walks through the tempered densities

.. math:: \pi_\beta(u) \propto r(u)\, L(u)^{\beta}, \qquad 0 = \beta_0 < \beta_1 < \dots
    < \beta_T = 1,

from the reference :math:`r` (the prior, in the sampler's unconstrained space: :func:`prior
reference <prior_reference>`) to the target :math:`\pi(u) = r(u) L(u)`, the potential the
other samplers take. :math:`\log L = \log\pi - \log r` is the log-likelihood (NLE) or the
logit (NRE) with the support bijection's Jacobian cancelled. Stage :math:`t`:

1. **Temperature.** The incremental weights of moving from :math:`\beta_{t-1}` to
   :math:`\beta` are :math:`w_i \propto \exp\big((\beta - \beta_{t-1}) \log L(u_i)\big)`;
   :math:`\beta_t` is the largest :math:`\beta \le 1` whose weights keep
   :math:`\mathrm{ESS} = (\sum_i w_i)^2 / \sum_i w_i^2 \ge \rho N` (bisection), with
   :math:`\rho` = ``ess_fraction``.
2. **Resampling**, systematic: one uniform :math:`U`, particle :math:`i` copied once per
   :math:`(U + k)/N` that falls in its slice of the cumulative weights.
3. **Moves**: ``num_moves`` Metropolis sweeps invariant for :math:`\pi_{\beta_t}`. A sweep
   moves one half of the population, then the other, each particle by a random-walk
   proposal :math:`u' = u + \gamma (u_j - u_k) + \epsilon` with :math:`j \ne k` two
   particles of the *other* half (held fixed, so the proposal is symmetric and each
   half-step leaves :math:`\pi_{\beta_t}` invariant), :math:`\epsilon \sim N(0,
   (0.05\,\gamma)^2 C)` and :math:`C` the particles' covariance. The increments have
   covariance :math:`2\gamma^2 C`, like a random walk on the weighted particles'
   covariance, but a difference of two particles in one mode is a step on that mode's
   scale, where :math:`C` spans the gaps between modes; with probability 0.1
   :math:`\gamma = 1`, which carries a particle to where another mode lies. Otherwise
   :math:`\gamma` starts at :math:`2.38/\sqrt{2D}` and is multiplied by :math:`\exp(a -
   a^\star)` after each sweep, :math:`a` its acceptance and :math:`a^\star` =
   ``target_acceptance``.

Every observation of a batch has its own temperatures, covariance and scale.

Why it reaches separated modes where random-walk chains do not: the reference puts
particles in every mode, and each mode's share of the population is set by the weights,
:math:`\int_\text{mode} r L^\beta`, not by which mode a chain happens to start in; the
moves only have to spread particles within a mode. The shares still carry Monte-Carlo
error from the stages where the modes separate: on slcp's four modes 0.1-0.2 per mode
between seeds at 2,000 particles, less at 10,000. Why the defaults: on the
round-4 NLE of slcp's observation 1 (2,000 particles), ESS fraction 0.9 with 20 sweeps a
stage scored C2ST 0.682 and 0.5 with 5 sweeps 0.867 at a ninth of the CPU (9 against 1
CPU s; ``benchmarks/results_sequential.md``, "SNLE with tempered SMC"): a gentler ladder
(21 stages instead of 7) leaves each mode's share less to a few ancestors. The 0.234
acceptance target is random-walk Metropolis's; at least 1,000 particles keep a share's
Monte-Carlo error near 0.015.

The draws are the final population, i.i.d.-like but not independent (resampling copies,
moves decorrelate), so the result's R-hat is ``nan`` and its ``ess`` is the smallest ESS of
the last stage's incremental weights (over observations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Transform

from ..errors import ConfigError
from .base import Potential, evaluate, uniform

__all__ = ["JITTER", "JUMP", "Reference", "SMCOptions", "prior_reference", "run_smc"]

#: Share of the moves whose difference is not scaled (:math:`\gamma = 1`): a particle then
#: lands where the difference of two others points, which carries it between modes.
JUMP = 0.1
#: The Gaussian jitter added to each difference, :math:`N(0, (\text{JITTER}\, s)^2 C)`, so
#: copies of one ancestor (a zero difference) still move apart.
JITTER = 0.05


@dataclass(frozen=True)
class Reference:
    """Where tempering starts, in the sampler's space.

    Attributes:
        sample: ``sample(n, generator) -> (n, *batch, D)`` draws.
        log_prob: ``(*, *batch, D) -> (*, *batch)`` their normalised log-density.
    """

    sample: Callable[[int, torch.Generator | None], Tensor]
    log_prob: Potential


def prior_reference(
    draw: Callable[[int], Tensor], prior: Distribution, transform: Transform
) -> Reference:
    """The prior pushed into the unconstrained space :math:`u = T^{-1}(\\theta)`:
    :math:`\\log r(u) = \\log p(T(u)) + \\log|\\det J_T(u)|`.

    Args:
        draw: ``draw(n) -> (n, *batch, D)`` prior draws where the potential computes (run
            under a torch seed taken from the run's generator, so a seed fixes them).
        prior: The prior at that device and dtype (it gives :math:`\\log p`).
        transform: Its support bijection :math:`T`.
    """

    def sample(n: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            return transform.inv(draw(n))

    def log_prob(u: Tensor) -> Tensor:
        theta = transform(u)
        ladj = transform.log_abs_det_jacobian(u, theta)
        if ladj.ndim == u.ndim:
            ladj = ladj.sum(-1)
        return prior.log_prob(theta) + ladj

    return Reference(sample, log_prob)


@dataclass(frozen=True)
class SMCOptions:
    """``sampler_options`` of ``method="smc"`` (module docstring for why these defaults).

    Args:
        ess_fraction: :math:`\\rho`, the ESS kept by each temperature step, in (0, 1).
        num_moves: Random-walk Metropolis steps per stage, >= 1.
        target_acceptance: :math:`a^\\star` of the moves' scale adaptation, in (0, 1).
        min_particles: Particles run at least (more when more draws are asked for).
        max_stages: A run that reaches it goes to :math:`\\beta = 1` at once and records
            ``extra["capped"]``.
    """

    ess_fraction: float = 0.9
    num_moves: int = 20
    target_acceptance: float = 0.234
    min_particles: int = 1000
    max_stages: int = 500

    def __post_init__(self) -> None:
        for name in ("ess_fraction", "target_acceptance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"MCMC smc: {name} must be a number in (0, 1), got {value!r}.")
        for name in ("num_moves", "min_particles", "max_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"MCMC smc: {name} must be an integer >= 1, got {value!r}.")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SMCOptions:
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"MCMC: invalid sampler_options for smc: {unknown}; valid: "
                f"{', '.join(f.name for f in fields(cls))}."
            )
        return cls(**options)


def _loglik(potential: Potential, reference: Reference, u: Tensor) -> tuple[Tensor, Tensor]:
    """``(log r(u), log L(u))``; ``log L`` is ``-inf`` where the potential is."""
    log_r = reference.log_prob(u)
    value = evaluate(potential, u)
    log_l = torch.where(torch.isfinite(value), value - log_r, torch.full_like(value, -math.inf))
    return log_r, log_l


def _tempered(log_r: Tensor, log_l: Tensor, beta: Tensor) -> Tensor:
    """:math:`\\log r + \\beta \\log L` with :math:`0 \\cdot (-\\infty) = -\\infty`."""
    scaled = torch.where(torch.isfinite(log_l), beta * log_l, torch.full_like(log_l, -math.inf))
    return log_r + scaled


def ess_of(log_w: Tensor) -> Tensor:
    """:math:`(\\sum w)^2/\\sum w^2` over the first dimension, from log-weights."""
    log_w = torch.nan_to_num(log_w, nan=-math.inf)
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def next_increment(log_l: Tensor, beta: Tensor, fraction: float, iterations: int = 40) -> Tensor:
    """The largest :math:`\\delta \\le 1 - \\beta` whose weights :math:`\\exp(\\delta\\log L)`
    keep ESS >= ``fraction`` × N, per observation ``(*batch)``, by bisection."""
    n = log_l.shape[0]
    room = 1 - beta
    enough = ess_of(room * log_l) >= fraction * n
    low, high = torch.zeros_like(beta), room.clone()
    for _ in range(iterations):
        mid = (low + high) / 2
        ok = ess_of(mid * log_l) >= fraction * n
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    step = torch.where(low > 0, low, high)  # at least the smallest bracket: progress
    return torch.where(enough, room, step)


def systematic(log_w: Tensor, generator: torch.Generator | None) -> Tensor:
    """Systematic resampling: ``(N, *batch)`` ancestor indices from log-weights ``(N, *batch)``."""
    n = log_w.shape[0]
    weights = torch.softmax(torch.nan_to_num(log_w, nan=-math.inf), 0)
    cumulative = torch.cumsum(weights, 0).movedim(0, -1).contiguous()  # (*batch, N)
    cumulative[..., -1] = 1.0
    shift = uniform(cumulative.shape[:-1] + (1,), log_w, generator)
    points = (shift + torch.arange(n, device=log_w.device, dtype=log_w.dtype)) / n
    index = torch.searchsorted(cumulative, points.contiguous())
    return index.clamp_(max=n - 1).movedim(-1, 0)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """``values`` ``(N, *batch[, D])`` at ancestors ``index`` ``(N, *batch)``."""
    if values.ndim == index.ndim:
        return torch.gather(values, 0, index)
    return torch.gather(values, 0, index[..., None].expand(*index.shape, values.shape[-1]))


def _root(u: Tensor) -> Tensor:
    """Cholesky factor ``(*batch, D, D)`` of the particles' covariance ``u`` ``(N, *batch, D)``,
    with a jitter of 1e-6 of its mean variance (and 1e-12) on the diagonal."""
    centred = u - u.mean(0)
    cov = torch.einsum("n...i,n...j->...ij", centred, centred) / max(len(u) - 1, 1)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return torch.linalg.cholesky(cov + (1e-6 * scale + 1e-12) * eye)


def _moves(
    potential: Potential,
    reference: Reference,
    u: Tensor,
    log_r: Tensor,
    log_l: Tensor,
    beta: Tensor,
    scale: Tensor,
    options: SMCOptions,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[float]]:
    """``num_moves`` Metropolis sweeps at temperature ``beta``, each moving one half of the
    population and then the other (module docstring); the updated particles, scale and the
    sweeps' acceptance rates."""
    n, rates = u.shape[0], []
    halves = (slice(0, n // 2), slice(n // 2, n))
    jitter = _root(u) * (JITTER * scale)[..., None, None]
    for _ in range(options.num_moves):
        accepted = torch.zeros_like(beta)
        for moving, fixed in (halves, halves[::-1]):
            here = u[moving]
            step = _differences(here, u[fixed], scale, generator)
            z = torch.randn(here.shape, generator=generator, dtype=u.dtype, device=u.device)
            proposal = here + step + (jitter @ z[..., None])[..., 0]
            log_r_new, log_l_new = _loglik(potential, reference, proposal)
            candidate = _tempered(log_r_new, log_l_new, beta)
            current = _tempered(log_r[moving], log_l[moving], beta)
            log_uniform = torch.log(uniform(candidate.shape, candidate, generator))
            accept = log_uniform < candidate - current
            u[moving] = torch.where(accept[..., None], proposal, here)
            log_r[moving] = torch.where(accept, log_r_new, log_r[moving])
            log_l[moving] = torch.where(accept, log_l_new, log_l[moving])
            accepted = accepted + accept.to(u.dtype).sum(0) / n
        rates.append(float(accepted.mean()))
        scale = scale * torch.exp(accepted - options.target_acceptance)
    return u, log_r, log_l, scale, rates


def _differences(here: Tensor, fixed: Tensor, scale: Tensor, generator) -> Tensor:
    """:math:`\\gamma (u_j - u_k)` for each particle of ``here``, two different particles
    :math:`j, k` of ``fixed``; :math:`\\gamma` is ``scale``, or 1 with probability
    :data:`JUMP`."""
    f = fixed.shape[0]
    shape, device = here.shape[:-1], here.device
    j = torch.randint(f, shape, generator=generator, device=device)
    k = (j + 1 + torch.randint(f - 1, shape, generator=generator, device=device)) % f
    diff = _gather(fixed, j) - _gather(fixed, k)
    jump = uniform(shape, here, generator) < JUMP
    gamma = torch.where(jump, torch.ones_like(jump, dtype=here.dtype), scale.expand(shape))
    return gamma[..., None] * diff


def run_smc(
    potential: Potential,
    reference: Reference,
    num_particles: int,
    options: SMCOptions,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Tempered SMC (module docstring): the final ``(N, *batch, D)`` particles, their
    potential ``(N, *batch)`` and what the run did (``stages``, ``acceptance_rate``, ``ess``,
    ``capped``)."""
    n = max(num_particles, options.min_particles)
    u = reference.sample(n, generator)
    log_r, log_l = _loglik(potential, reference, u)
    beta = torch.zeros(log_l.shape[1:], dtype=log_l.dtype, device=log_l.device)
    scale = torch.full_like(beta, 2.38 / math.sqrt(2 * u.shape[-1]))
    stages, accepted, last_ess, capped = 0, [], torch.full_like(beta, float(n)), False
    while bool((beta < 1).any()):
        stages += 1
        delta = next_increment(log_l, beta, options.ess_fraction)
        if stages >= options.max_stages:
            delta, capped = 1 - beta, True
        log_w = torch.where(delta > 0, _tempered(torch.zeros_like(log_l), log_l, delta), 0.0)
        last_ess = ess_of(log_w)
        beta = torch.where(1 - (beta + delta) < 1e-9, torch.ones_like(beta), beta + delta)
        index = systematic(log_w, generator)
        # Copies of one ancestor are adjacent: shuffle, so the halves of the moves mix them.
        index = index[torch.randperm(n, generator=generator, device=index.device)]
        u, log_r, log_l = _gather(u, index), _gather(log_r, index), _gather(log_l, index)
        u, log_r, log_l, scale, rates = _moves(
            potential, reference, u, log_r, log_l, beta, scale, options, generator
        )
        accepted += rates
    info = {
        "stages": stages,
        "acceptance_rate": sum(accepted) / len(accepted) if accepted else 1.0,
        "ess": float(last_ess.min()),
        "capped": capped,
        "particles": n,
    }
    return u, log_r + log_l, info
