r"""The driver: run any :class:`~simgen.mcmc.Sampler` through warm-up and sampling.

:func:`run_mcmc` starts ``init.shape[0]`` chains (per observation), runs ``warmup`` steps in
which the sampler adapts — :meth:`~simgen.mcmc.Sampler.adapt` on the recent half of warm-up,
pooled over chains, ten times over the warm-up; :meth:`~simgen.mcmc.Sampler.tune` after every
step; :meth:`~simgen.mcmc.Sampler.end_warmup` at its end — then ``num_draws × thin`` steps
of which every ``thin``-th is kept, and reports R-hat and ESS
(:mod:`simgen.mcmc.convergence`). ``method="smc"`` instead runs tempered sequential Monte
Carlo from a :class:`~simgen.mcmc.smc.Reference` (:mod:`simgen.mcmc.smc`): ``chains ×
num_draws`` particles, the result shaped as chains × draws, with no warm-up or thinning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, MCMCError
from .base import Potential, Sampler, evaluate
from .config import METHODS, POPULATION_METHODS, MCMCConfig
from .convergence import rhat_ess, unconverged, warn_if_unconverged
from .hmc import HamiltonianMonteCarlo
from .nuts import PyroNUTS
from .rwm import RandomWalkMetropolis
from .slice import SliceSampler
from .smc import Reference, SMCOptions, run_smc

__all__ = ["MCMCResult", "SAMPLERS", "run_mcmc"]

#: ``method=`` name → sampler class.
SAMPLERS: dict[str, type[Sampler]] = {
    "rwm": RandomWalkMetropolis,
    "slice": SliceSampler,
    "hmc": HamiltonianMonteCarlo,
    "nuts": PyroNUTS,
}
assert tuple(SAMPLERS) == METHODS


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
        extra: ``rhat_threshold``, ``unconverged_observations`` (observations above it),
            ``divergences`` (HMC, NUTS) and what the sampler reports (HMC: ``step_size``).
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
            **({"divergences": self.extra["divergences"]} if "divergences" in self.extra else {}),
        }

    def sample_stats(self) -> dict[str, np.ndarray]:
        """``(chains, draws)`` statistics for :func:`simgen.arviz_export.to_inference_data`."""
        lp = self.log_density
        lp = lp.reshape(lp.shape[0], lp.shape[1], -1).mean(-1)
        return {"lp": lp.cpu().numpy()}


def run_mcmc(
    potential: Potential,
    init: Tensor,
    num_draws: int,
    warmup: int = 100,
    thin: int = 1,
    method: str = "rwm",
    seed: int | None = None,
    rhat_threshold: float = 1.1,
    warn: bool = True,
    sampler_options: dict[str, Any] | None = None,
    reference: Reference | None = None,
) -> MCMCResult:
    """Run ``init.shape[0]`` chains (per batch element) on ``potential``.

    Args:
        potential: ``(chains, *batch, D) -> (chains, *batch)`` log-density up to a constant
            (``-inf`` where it is zero; NaN raises :class:`~simgen.errors.MCMCError`).
        init: ``(chains, *batch, D)`` starting points with finite potential.
        num_draws: Draws kept per chain (after thinning).
        warmup: Adaptation steps, discarded.
        thin: Keep every ``thin``-th step.
        method: ``"rwm"`` (default, as for the posteriors: :class:`MCMCConfig`), ``"slice"``,
            ``"hmc"`` or ``"nuts"`` (:mod:`simgen.mcmc`).
        seed: Seeds a private generator (``None``: torch's global one).
        rhat_threshold: Above it, a :class:`~simgen.errors.ConvergenceWarning` is issued
            (policy: :mod:`simgen.mcmc.convergence`).
        warn: Issue that warning (the result records ``rhat`` either way).
        sampler_options: Passed to the sampler, e.g. ``{"num_steps": 16}`` for ``"hmc"``,
            ``{"max_tree_depth": 8}`` for ``"nuts"`` (any ``pyro.infer.NUTS`` option),
            :class:`~simgen.mcmc.smc.SMCOptions` fields for ``"smc"``.
        reference: ``"smc"`` only (required there): the distribution tempering starts from,
            :func:`~simgen.mcmc.smc.prior_reference` for a posterior; ``init`` then sets
            only the number of chains and the batch shape.

    Returns:
        An :class:`MCMCResult`.

    Example:
        >>> result = run_mcmc(lambda u: -0.5 * (u**2).sum(-1), torch.randn(8, 2), 500)
        >>> result.samples.shape
        torch.Size([8, 500, 2])
    """
    if not isinstance(thin, int) or isinstance(thin, bool):
        raise ConfigError(f"MCMC: thin must be an integer >= 1, got {thin!r}.")
    config = MCMCConfig(
        warmup=warmup,
        thin=thin,
        method=method,
        sampler_options=sampler_options or {},
        rhat_threshold=rhat_threshold,
    )
    if not isinstance(num_draws, int) or isinstance(num_draws, bool) or num_draws < 1:
        raise ConfigError(f"MCMC: num_draws must be an integer >= 1, got {num_draws!r}.")
    if init.ndim < 2:
        raise ConfigError(f"MCMC: init must be (chains, *batch, D), got {tuple(init.shape)}.")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=init.device).manual_seed(seed)
    start = time.perf_counter()
    if not bool(torch.isfinite(evaluate(potential, init)).all()):  # NaN raises MCMCError
        raise MCMCError(
            "Some chains start where the potential is -inf or inf; start them inside the "
            "support, where the density is positive."
        )
    if method in POPULATION_METHODS:
        return _population(potential, init, num_draws, config, generator, reference, start)
    sampler = SAMPLERS[method].from_options(potential, warmup, dict(config.sampler_options))
    samples, log_density, acceptance, divergences = _sample(
        sampler, init, num_draws, warmup, thin, generator
    )
    extra: dict[str, Any] = {"rhat_threshold": rhat_threshold, **sampler.report()}
    if divergences is not None:
        extra["divergences"] = divergences
    rhat_all, ess_all = rhat_ess(samples)
    rhat, ess = float("nan"), float("nan")
    if rhat_all is not None:
        rhat, ess = float(np.nanmax(rhat_all)), float(np.nanmin(ess_all))
    above, elements = unconverged(rhat_all, rhat_threshold)
    extra["unconverged_observations"] = above
    result = MCMCResult(
        samples=samples,
        log_density=log_density,
        acceptance_rate=acceptance,
        rhat=rhat,
        ess=ess,
        method=method,
        warmup=warmup,
        thin=thin,
        seconds=time.perf_counter() - start,
        extra=extra,
    )
    if warn:
        warn_if_unconverged(rhat, ess, above, elements, rhat_threshold, method)
    return result


def _population(
    potential: Potential,
    init: Tensor,
    num_draws: int,
    config: MCMCConfig,
    generator: torch.Generator | None,
    reference: Reference | None,
    start: float,
) -> MCMCResult:
    """``method="smc"``: the final particles as ``(chains, draws, *batch, D)``; R-hat ``nan``
    (particles are not chains), ``ess`` the last stage's weights' (:mod:`simgen.mcmc.smc`)."""
    if reference is None:
        raise ConfigError(
            "MCMC: method='smc' tempers from a reference distribution; pass "
            "reference=simgen.mcmc.smc.prior_reference(...), or sample through an NLE/NRE "
            "posterior, which passes its prior."
        )
    options = SMCOptions.from_options(dict(config.sampler_options))
    chains = init.shape[0]
    wanted = chains * num_draws
    particles, log_density, info = run_smc(potential, reference, wanted, options, generator)
    shape = (num_draws, chains, *particles.shape[1:])
    samples = particles[:wanted].reshape(shape).transpose(0, 1)
    log_density = log_density[:wanted].reshape(shape[:-1]).transpose(0, 1)
    extra = {"rhat_threshold": config.rhat_threshold, "unconverged_observations": 0, **info}
    return MCMCResult(
        samples=samples,
        log_density=log_density,
        acceptance_rate=float(info.pop("acceptance_rate")),
        rhat=float("nan"),
        ess=float(info["ess"]),
        method=config.method,
        warmup=0,
        thin=1,
        seconds=time.perf_counter() - start,
        extra=extra,
    )


def _sample(
    sampler: Sampler,
    init: Tensor,
    num_draws: int,
    warmup: int,
    thin: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, float, int | None]:
    """Warm-up, then ``num_draws * thin`` steps of all chains at once: samples
    ``(chains, draws, *batch, D)``, their log-densities, the mean acceptance rate and the
    divergence count (``None`` for kernels that do not report divergences)."""
    state = sampler.init(init)
    history: list[Tensor] = []
    last_adapt = (1.0 - sampler.tune_only_share) * warmup
    every = max(warmup // 10, 1)
    for i in range(warmup):
        state, info = sampler.step(state, generator)
        history.append(state.position)
        sampler.tune(info)
        if ((i + 1) % every == 0 or i + 1 == warmup) and i + 1 <= last_adapt:
            # Adapt on the recent half of warm-up, pooled over chains.
            sampler.adapt(torch.stack(history[len(history) // 2 :]).transpose(0, 1))
    sampler.end_warmup()
    draws, lps, accept = [], [], []
    divergences: int | None = None
    for i in range(num_draws * thin):
        state, info = sampler.step(state, generator)
        accept.append(info.acceptance_rate.float().mean())
        if info.divergent is not None:
            divergences = (divergences or 0) + int(info.divergent.sum())
        if (i + 1) % thin == 0:
            draws.append(state.position)
            lps.append(state.log_density)
    acceptance = float(torch.stack(accept).mean())
    return torch.stack(draws, 1), torch.stack(lps, 1), acceptance, divergences
