r"""Vectorised MCMC: many chains at once, in the unconstrained space of the prior.

A sampler is BlackJAX-shaped: ``init(position) -> state`` and ``step(state, generator) ->
(state, info)``, where ``position`` has shape ``(*batch, D)`` (``batch`` = chains, or chains ×
observations) and the log-density ``potential(position) -> (*batch)`` is evaluated for every
chain in one call. :func:`run_mcmc` drives it: initialisation, warm-up (adaptation), thinning
and convergence figures.

Samplers (``method=``):

* ``"slice"``: univariate slice sampling along each coordinate in turn (Neal, 2003) with
  stepping-out and shrinkage. For coordinate :math:`d`, draw a height
  :math:`\log y = \log \pi(u) - e,\ e \sim \mathrm{Exp}(1)`, place an interval of width
  :math:`w_d` at random around :math:`u_d`, step it out while its ends are above the
  slice, then draw uniformly on it, shrinking towards :math:`u_d` on every rejection. It leaves
  :math:`\pi` invariant for any width; warm-up sets :math:`w_d` to 3 × the spread of the chains.
* ``"rwm"``: random-walk Metropolis with proposal :math:`u' \sim \mathcal N(u,
  \tfrac{2.38^2}{D}\,\hat\Sigma)`, accepted with probability
  :math:`\min(1, \pi(u')/\pi(u))`; :math:`\hat\Sigma` is re-estimated from the chains during
  warm-up (Haario et al., 2001) and then frozen, so the sampling phase is a valid Markov chain.

**Support.** Given a prior with support bijection :math:`T` (:func:`simgen.priors.support_
transform`), :class:`~simgen.mcmc_posterior.MCMCPosterior` samples
:math:`\pi_u(u) = \pi(T(u))\,|\det J_T(u)|` on :math:`\mathbb R^D`, so no chain ever leaves
the support.

**Convergence.** The split-:math:`\hat R` and bulk effective sample size are computed by
arviz over the chains; :class:`~simgen.errors.ConvergenceWarning` is raised (as a warning)
when the worst :math:`\hat R` exceeds ``rhat_threshold`` (default 1.1, the usual
threshold for the short chains run here; 1.01 is the strict one for long runs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, ConvergenceWarning, MCMCError

__all__ = ["MCMCResult", "SliceSampler", "RandomWalkMetropolis", "run_mcmc", "diagnose"]

Potential = Callable[[Tensor], Tensor]
METHODS = ("slice", "rwm")


def _evaluate(potential: Potential, u: Tensor) -> Tensor:
    with torch.no_grad():
        value = potential(u)
    if bool(torch.isnan(value).any()):
        raise MCMCError(
            f"The potential returned NaN for {int(torch.isnan(value).sum())} of "
            f"{value.numel()} chains (first bad point: {u[torch.isnan(value)][0].tolist()}). "
            "Return -inf outside the density's support, and check the estimator was trained "
            "on finite data."
        )
    return value


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


@dataclass
class _State:
    position: Tensor  # (*batch, D)
    log_density: Tensor  # (*batch)


class SliceSampler:
    """Coordinate-wise slice sampling for a batch of chains (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        width: Initial interval width in every coordinate.
        max_steps_out: Limit of stepping-out steps on each side.
        max_shrink: Limit of shrinkage steps (a chain that exhausts it stays put).
    """

    def __init__(
        self, potential: Potential, width: float = 1.0, max_steps_out: int = 10,
        max_shrink: int = 30,
    ):  # fmt: skip
        self.potential = potential
        self.width = width
        self.max_steps_out = max_steps_out
        self.max_shrink = max_shrink
        self.widths: Tensor | None = None

    def init(self, position: Tensor) -> _State:
        self.widths = torch.full_like(position[(0,) * (position.ndim - 1)], self.width)
        return _State(position, _evaluate(self.potential, position))

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: widths ≈ 3 × the chains' spread in each coordinate, ``positions (*, D)``."""
        spread = positions.reshape(-1, positions.shape[-1]).std(0)
        self.widths = (3.0 * spread).clamp(min=1e-3, max=1e3)

    def step(self, state: _State, generator: torch.Generator | None) -> tuple[_State, dict]:
        u, lp = state.position.clone(), state.log_density.clone()
        batch = lp.shape
        evals = 0
        for d in range(u.shape[-1]):
            w = self.widths[d]
            height = lp + torch.log(_uniform(batch, lp, generator))
            left = u[..., d] - w * _uniform(batch, lp, generator)
            right = left + w

            def at(value: Tensor, d: int = d) -> Tensor:
                v = u.expand(*value.shape, u.shape[-1]).clone()
                v[..., d] = value
                return _evaluate(self.potential, v)

            for _ in range(self.max_steps_out):
                out_l, out_r = at(torch.stack([left, right])) > height
                evals += 2
                if not bool(out_l.any() or out_r.any()):
                    break
                left = torch.where(out_l, left - w, left)
                right = torch.where(out_r, right + w, right)
            done = torch.zeros(batch, dtype=torch.bool, device=u.device)
            new, new_lp = u[..., d].clone(), lp.clone()
            for _ in range(self.max_shrink):
                cand = left + (right - left) * _uniform(batch, lp, generator)
                cand_lp = at(cand)
                evals += 1
                ok = (cand_lp > height) & ~done
                new, new_lp = torch.where(ok, cand, new), torch.where(ok, cand_lp, new_lp)
                done |= ok
                if bool(done.all()):
                    break
                shrink_left = ~done & (cand < u[..., d])
                left = torch.where(shrink_left, cand, left)
                right = torch.where(~done & ~shrink_left, cand, right)
            u[..., d], lp = new, new_lp
        return _State(u, lp), {"acceptance_rate": torch.ones(batch), "evaluations": evals}


class RandomWalkMetropolis:
    """Gaussian random-walk Metropolis with warm-up covariance adaptation.

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        scale: Initial proposal standard deviation in every coordinate.
    """

    def __init__(self, potential: Potential, scale: float = 0.5):
        self.potential = potential
        self.scale = scale
        self.chol: Tensor | None = None

    def init(self, position: Tensor) -> _State:
        d = position.shape[-1]
        eye = torch.eye(d, dtype=position.dtype, device=position.device)
        self.chol = self.scale * eye
        return _State(position, _evaluate(self.potential, position))

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: proposal covariance :math:`2.38^2/D\\,\\hat\\Sigma` from ``positions``."""
        flat = positions.reshape(-1, positions.shape[-1]).double()
        d = flat.shape[-1]
        cov = torch.cov(flat.T).reshape(d, d) + 1e-6 * torch.eye(d, dtype=flat.dtype)
        chol = torch.linalg.cholesky(cov * 2.38**2 / d)
        self.chol = chol.to(positions.dtype)

    def step(self, state: _State, generator: torch.Generator | None) -> tuple[_State, dict]:
        u, lp = state.position, state.log_density
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        proposal = u + noise @ self.chol.T
        prop_lp = _evaluate(self.potential, proposal)
        log_ratio = torch.nan_to_num(prop_lp - lp, nan=-math.inf)
        accept = torch.log(_uniform(lp.shape, lp, generator)) < log_ratio
        u = torch.where(accept[..., None], proposal, u)
        lp = torch.where(accept, prop_lp, lp)
        return _State(u, lp), {"acceptance_rate": accept.float(), "evaluations": 1}


@dataclass
class MCMCResult:
    """Output of :func:`run_mcmc`.

    Attributes:
        samples: ``(chains, draws, *batch, D)`` positions after warm-up and thinning.
        log_density: ``(chains, draws, *batch)`` potential at each sample.
        acceptance_rate: Mean acceptance rate of the sampling phase (1 for slice sampling).
        rhat: Worst split-:math:`\\hat R` over parameters (and observations).
        ess: Smallest bulk effective sample size.
        method: Sampler name; ``warmup``, ``thin``: the settings used.
        seconds: Wall time.
    """

    samples: Tensor
    log_density: Tensor
    acceptance_rate: float
    rhat: float
    ess: float
    method: str
    warmup: int
    thin: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.rhat <= self.extra.get("rhat_threshold", 1.1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "chains": int(self.samples.shape[0]),
            "draws": int(self.samples.shape[1]),
            "warmup": self.warmup,
            "thin": self.thin,
            "acceptance_rate": self.acceptance_rate,
            "rhat": self.rhat,
            "ess": self.ess,
            "seconds": self.seconds,
        }

    def sample_stats(self) -> dict[str, np.ndarray]:
        """``(chains, draws)`` statistics for :func:`simgen.arviz_export.to_inference_data`."""
        lp = self.log_density
        lp = lp.reshape(lp.shape[0], lp.shape[1], -1).mean(-1)
        return {"lp": lp.cpu().numpy()}


def diagnose(samples: Tensor) -> tuple[float, float]:
    """Worst split-:math:`\\hat R` and smallest bulk ESS of ``(chains, draws, *, D)`` samples."""
    import arviz as az

    arr = samples.reshape(samples.shape[0], samples.shape[1], -1).double().cpu().numpy()
    if arr.shape[0] < 2 or arr.shape[1] < 4:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: "more chains than draws"
        data = az.convert_to_dataset({"theta": arr})
    rhat = float(np.nanmax(az.rhat(data)["theta"].values))
    ess = float(np.nanmin(az.ess(data, method="bulk")["theta"].values))
    return rhat, ess


def _check_settings(num_draws: int, warmup: int, thin: int, method: str) -> None:
    for name, value, low in (("num_draws", num_draws, 1), ("warmup", warmup, 0), ("thin", thin, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"MCMC: {name} must be an integer >= {low}, got {value!r}.")
    if method not in METHODS:
        raise ConfigError(f"MCMC: unknown method {method!r}; choose one of {METHODS}.")


def run_mcmc(
    potential: Potential,
    init: Tensor,
    num_draws: int,
    warmup: int = 100,
    thin: int = 1,
    method: str = "slice",
    seed: int | None = None,
    rhat_threshold: float = 1.1,
    warn: bool = True,
) -> MCMCResult:
    """Run ``init.shape[0]`` chains (per batch element) on ``potential``.

    Args:
        potential: ``(chains, *batch, D) -> (chains, *batch)`` log-density up to a constant
            (``-inf`` where it is zero; NaN raises :class:`~simgen.errors.MCMCError`).
        init: ``(chains, *batch, D)`` starting points with finite potential.
        num_draws: Draws kept per chain (after thinning).
        warmup: Adaptation steps, discarded.
        thin: Keep every ``thin``-th step.
        method: ``"slice"`` or ``"rwm"``.
        seed: Seeds a private generator (``None``: torch's global one).
        rhat_threshold: Above it, a :class:`~simgen.errors.ConvergenceWarning` is issued.
        warn: Issue that warning (the result records ``rhat`` either way).

    Returns:
        An :class:`MCMCResult`.

    Example:
        >>> result = run_mcmc(lambda u: -0.5 * (u**2).sum(-1), torch.randn(8, 2), 500)
        >>> result.samples.shape
        torch.Size([8, 500, 2])
    """
    import time

    _check_settings(num_draws, warmup, thin, method)
    if init.ndim < 2:
        raise ConfigError(f"MCMC: init must be (chains, *batch, D), got {tuple(init.shape)}.")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=init.device).manual_seed(seed)
    start = time.perf_counter()
    sampler = (SliceSampler if method == "slice" else RandomWalkMetropolis)(potential)
    state = sampler.init(init)
    if not bool(torch.isfinite(state.log_density).all()):
        raise MCMCError(
            "Some chains start where the potential is -inf or inf; start them inside the "
            "support, where the density is positive."
        )
    history: list[Tensor] = []
    for i in range(warmup):
        state, _ = sampler.step(state, generator)
        history.append(state.position)
        if (i + 1) % max(warmup // 10, 1) == 0 or i + 1 == warmup:
            # Adapt on the recent half of warm-up, pooled over chains.
            sampler.adapt(torch.stack(history[len(history) // 2 :]).transpose(0, 1))
    draws, lps, accept = [], [], []
    for i in range(num_draws * thin):
        state, info = sampler.step(state, generator)
        accept.append(info["acceptance_rate"].float().mean())
        if (i + 1) % thin == 0:
            draws.append(state.position)
            lps.append(state.log_density)
    samples, log_density = torch.stack(draws, 1), torch.stack(lps, 1)
    rhat, ess = diagnose(samples)
    result = MCMCResult(
        samples=samples,
        log_density=log_density,
        acceptance_rate=float(torch.stack(accept).mean()),
        rhat=rhat,
        ess=ess,
        method=method,
        warmup=warmup,
        thin=thin,
        seconds=time.perf_counter() - start,
        extra={"rhat_threshold": rhat_threshold},
    )
    if warn and not math.isnan(rhat) and rhat > rhat_threshold:
        warnings.warn(
            f"MCMC chains have not converged: R-hat = {rhat:.3f} > {rhat_threshold} (bulk "
            f"ESS {ess:.0f}). Increase warmup= or num_chains=, use thin=, or try method="
            f"{'rwm' if method == 'slice' else 'slice'!r}.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result
