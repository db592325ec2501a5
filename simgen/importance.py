r"""Importance-sampling correction of a posterior with a likelihood: SIR, ESS and Pareto k.

An amortised posterior :math:`q(\theta \mid x_o)` (NPE, an ensemble) is fast but may be
off at one observation. Where a likelihood :math:`L(x_o \mid \theta)` is available (an NLE
surrogate, a closed form, a simulator's marginal-likelihood estimate), draws
:math:`\theta_i \sim q(\cdot \mid x_o)`, :math:`i = 1..M`, weighted by

.. math:: w_i \propto \frac{p(\theta_i)\, L(x_o \mid \theta_i)}{q(\theta_i \mid x_o)}

are a consistent sample of :math:`p(\theta \mid x_o) \propto p(\theta) L(x_o\mid\theta)` as
:math:`M \to \infty`, whatever q's errors, provided q covers the posterior (its tails are not
lighter). Sampling-importance-resampling (SIR; Rubin, 1988) draws ``num_samples`` of the
:math:`\theta_i` with replacement, with probabilities :math:`\bar w_i = w_i / \sum_j w_j`,
which turns the weighted sample into an unweighted one.

How much the proposal's errors cost is measured by

* **Kish's effective sample size** :math:`\mathrm{ESS} = (\sum_i w_i)^2 / \sum_i w_i^2 \in
  [1, M]`: M when q is the posterior, falling as q moves away from it. A warning
  (:class:`ImportanceWarning`) is given below ``min_ess`` (default 100: fewer effective
  draws cannot estimate a tail quantile, and the resample repeats a few points).
* **Pareto** :math:`\hat k` of the weights' upper tail (Vehtari et al., 2024, PSIS, through
  ``arviz.psislw``): the shape of a generalised Pareto fitted to the largest weights. Above
  0.7 the weights' variance is effectively infinite and the estimate unreliable however
  large M is; the warning says so.

The default ``num_proposals`` is ``10 * num_samples``: SIR with :math:`M/n = 10` keeps the
resample's duplicates small when the ESS fraction is high, and costs 10 proposal densities
per returned draw.

The same correction starts MCMC: with ``nle_posterior.proposal = npe_posterior``, an
:class:`~simgen.mcmc_posterior.MCMCPosterior` draws its chain starts by SIR from the NPE
posterior (20 candidates per chain, weights :math:`e^{\psi(\theta, x)} / q(\theta\mid x)`)
instead of from the prior, so chains start in the posterior's bulk even where the prior is
broad and warm-up has less to travel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, NoDensityError, ShapeError
from .posterior_args import check_seed

__all__ = ["ImportanceResult", "ImportanceWarning", "importance_sample", "MIN_ESS"]

#: Kish ESS below which :func:`importance_sample` warns (see the module docstring).
MIN_ESS = 100.0
#: Pareto k above which the weights' variance is treated as infinite (Vehtari et al.).
MAX_PARETO_K = 0.7


class ImportanceWarning(UserWarning):
    """The importance weights are too uneven to trust the corrected sample."""


@dataclass
class ImportanceResult:
    """What :func:`importance_sample` returns.

    Attributes:
        samples: ``(num_samples, D)`` SIR draws of the corrected posterior.
        proposals: ``(M, D)`` draws of the proposal posterior.
        log_weights: ``(M,)`` self-normalised log-weights :math:`\\log \\bar w_i`.
        ess: Kish effective sample size of the weights.
        pareto_k: Pareto :math:`\\hat k` of their tail (``nan`` when arviz could not fit it).
    """

    samples: Tensor
    proposals: Tensor
    log_weights: Tensor
    ess: float
    pareto_k: float

    @property
    def ess_fraction(self) -> float:
        """ESS / M: 1 for a perfect proposal."""
        return self.ess / len(self.log_weights)

    @property
    def reliable(self) -> bool:
        """ESS at least :data:`MIN_ESS` and Pareto k at most :data:`MAX_PARETO_K`."""
        return self.ess >= MIN_ESS and not self.pareto_k > MAX_PARETO_K

    def mean(self) -> Tensor:
        """The self-normalised importance estimate of :math:`E[\\theta \\mid x_o]`, ``(D,)``
        (lower variance than the resample's mean)."""
        return (self.log_weights.exp()[:, None] * self.proposals).sum(0)

    def __repr__(self) -> str:
        return (
            f"ImportanceResult(ess={self.ess:.1f} of {len(self.log_weights)} "
            f"({self.ess_fraction:.1%}), pareto_k={self.pareto_k:.2f}, "
            f"reliable={self.reliable}, {len(self.samples)} samples)"
        )


def importance_sample(
    posterior: Any,
    x_o: Any,
    log_likelihood: Any,
    prior: Any = None,
    num_samples: int = 1000,
    num_proposals: int | None = None,
    seed: int | None = 0,
    min_ess: float = MIN_ESS,
) -> ImportanceResult:
    """Correct ``posterior`` at ``x_o`` by importance weights and resample (SIR).

    Args:
        posterior: The proposal q(θ | x): any posterior with ``sample`` and a normalised
            ``log_prob`` (NPE's, an :class:`~simgen.ensemble.Ensemble`).
        x_o: The observation.
        log_likelihood: :math:`\\log L(x_o \\mid \\theta)`, one of: an NLE or NRE
            posterior (``MCMCPosterior``: its unnormalised ``log_prob`` is already
            :math:`\\log p(\\theta) + \\log L`, so ``prior`` is not added again; an NRE
            ratio is a likelihood up to a constant in θ); NLE's
            :class:`~simgen.mcmc_posterior.SurrogateSimulator` (``nle_posterior.likelihood``);
            or a function ``theta (M, D) -> (M,)``.
        prior: p(θ); defaults to ``posterior.prior``.
        num_samples: Draws returned.
        num_proposals: Proposal draws M (default ``10 * num_samples``, module docstring).
        seed: Seeds the proposal draws and the resampling.
        min_ess: Warn (:class:`ImportanceWarning`) below this ESS.

    Raises:
        NoDensityError: ``posterior`` has no normalised ``log_prob``.
        ConfigError: Bad counts, or a ``log_likelihood`` that is none of the above.
        ShapeError: ``log_likelihood`` returned the wrong shape.
    """
    check_seed(seed)
    for name, value in (("num_samples", num_samples), ("num_proposals", num_proposals)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):  # fmt: skip
            raise ConfigError(f"{name} must be a positive int, got {value!r}.")
    if getattr(posterior, "kind", None) == "mcmc":
        raise NoDensityError(
            "importance_sample needs a proposal with a normalised log_prob (NPE's posterior "
            "or an Ensemble of them); an MCMC posterior's log_prob is unnormalised. Pass the "
            "MCMC posterior as log_likelihood= instead."
        )
    m = num_proposals if num_proposals is not None else 10 * num_samples
    prior = prior if prior is not None else getattr(posterior, "prior", None)
    target = _log_target(log_likelihood, prior, x_o)
    with torch.no_grad():
        proposals = _sample(posterior, m, x_o, seed)
        log_q = posterior.log_prob(proposals, x=x_o).cpu().double()
        log_t = target(proposals).cpu().double()
    if log_t.shape != (m,):
        raise ShapeError(
            f"log_likelihood returned shape {tuple(log_t.shape)} for {m} parameters; it must "
            f"return one log-likelihood per row, ({m},)."
        )
    log_w = torch.nan_to_num(log_t - log_q, nan=-math.inf)
    if not torch.isfinite(log_w).any():
        raise ConfigError(
            "Every importance weight is zero or undefined: the likelihood is -inf (or NaN) at "
            "all proposal draws. Check that log_likelihood and the posterior are for the same "
            "x_o and parameters."
        )
    log_w = log_w - torch.logsumexp(log_w, 0)
    ess = float(1.0 / torch.exp(2 * log_w).sum())
    pareto_k = _pareto_k(log_w)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed + 1)
    idx = torch.multinomial(log_w.exp(), num_samples, replacement=True, generator=generator)
    result = ImportanceResult(
        samples=proposals[idx.to(proposals.device)],
        proposals=proposals,
        log_weights=log_w.to(proposals.dtype),
        ess=ess,
        pareto_k=pareto_k,
    )
    if ess < min_ess or pareto_k > MAX_PARETO_K:
        warnings.warn(
            f"Importance weights are uneven: ESS {ess:.1f} of {m} draws, Pareto k "
            f"{pareto_k:.2f} (trusted: ESS >= {min_ess:g}, k <= {MAX_PARETO_K}). The proposal "
            "is far from the likelihood's posterior at this x_o: train the posterior on more "
            "simulations or at this x_o (a sequential round), use an ensemble as proposal, "
            "or raise num_proposals.",
            ImportanceWarning,
            stacklevel=2,
        )
    return result


def _sample(posterior: Any, m: int, x_o: Any, seed: int | None) -> Tensor:
    try:
        return posterior.sample((m,), x=x_o, seed=seed)
    except TypeError:  # a posterior without seed= (sbi's): seed torch's global generator
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return posterior.sample((m,), x=x_o)


def _log_target(log_likelihood: Any, prior: Any, x_o: Any) -> Callable[[Tensor], Tensor]:
    """θ ``(M, D)`` → :math:`\\log p(\\theta) + \\log L(x_o \\mid \\theta)`, ``(M,)``."""
    from .mcmc_posterior import MCMCPosterior, SurrogateSimulator

    if isinstance(log_likelihood, MCMCPosterior):
        return lambda theta: log_likelihood.log_prob(theta, x=x_o)
    if prior is None:
        raise ConfigError(
            "importance_sample needs the prior: pass prior=, or a posterior that has .prior."
        )

    def log_prior(theta: Tensor) -> Tensor:
        return torch.as_tensor(prior.log_prob(theta)).to(theta.device)

    if isinstance(log_likelihood, SurrogateSimulator):
        # x_o as n i.i.d. trials of F features (n = 1 for one observation): the
        # log-likelihoods add up.
        trials = torch.as_tensor(x_o, dtype=torch.float32).reshape(
            -1, log_likelihood.estimator.target_dim
        )

        def surrogate(theta: Tensor) -> Tensor:
            total = log_prior(theta)
            for row in trials:
                rows = row.expand(len(theta), -1)
                total = total + log_likelihood.log_prob(rows, theta).to(theta.device)
            return total

        return surrogate
    if callable(log_likelihood):

        def function(theta: Tensor) -> Tensor:
            values = torch.as_tensor(log_likelihood(theta)).to(theta.device)
            if values.shape != theta.shape[:-1]:
                raise ShapeError(
                    f"log_likelihood returned shape {tuple(values.shape)} for "
                    f"{len(theta)} parameters; it must return one log-likelihood per row, "
                    f"({len(theta)},)."
                )
            return values + log_prior(theta)

        return function
    raise ConfigError(
        f"log_likelihood is a {type(log_likelihood).__name__}; pass an NLE/NRE posterior, "
        "nle_posterior.likelihood, or a function theta (M, D) -> (M,) log-likelihoods."
    )


def _pareto_k(log_w: Tensor) -> float:
    """Pareto :math:`\\hat k` of the weights' tail, by ``arviz.psislw`` (``nan`` if it fails)."""
    finite = log_w[torch.isfinite(log_w)].numpy()
    if len(finite) < 20:
        return math.nan
    try:
        import arviz

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, k = arviz.psislw(finite.astype(np.float64))
        return float(np.asarray(k).reshape(-1)[0])
    except Exception:  # noqa: BLE001 - k is advisory; the ESS is still reported
        return math.nan
