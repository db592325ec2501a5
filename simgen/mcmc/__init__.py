r"""Vectorised MCMC: many chains at once, in the unconstrained space of the prior.

One sampler shape (:class:`Sampler`, :mod:`simgen.mcmc.base`): ``init(position) -> state``,
``step(state, generator) -> (state, info)`` and warm-up hooks with no-op defaults, on a
log-density ``potential(position) -> (*batch)`` evaluated for every chain in one call.
:func:`run_mcmc` drives any of them; NLE and NRE posteriors hand it a potential built by
:mod:`simgen.mcmc.potentials`.

=====================  =================================================================
module                 contents
=====================  =================================================================
``base``               :class:`Sampler`, :class:`State`, :class:`StepInfo`
``rwm``                ``"rwm"``: random-walk Metropolis, adapted covariance (the default)
``slice``              ``"slice"``: coordinate-wise slice sampling
``hmc``                ``"hmc"``: Hamiltonian Monte Carlo, dense mass matrix
``nuts``               ``"nuts"``: pyro's No-U-Turn sampler, one pyro kernel per chain
``smc``                ``"smc"``: tempered sequential Monte Carlo from the prior (particles)
``adaptation``         covariance estimation and dual averaging, used in warm-up
``config``             :class:`MCMCConfig` and the posteriors' thinning and chain rules
``convergence``        R-hat, ESS (arviz) and when a run warns
``driver``             :func:`run_mcmc`, :class:`MCMCResult`
``potentials``         :func:`likelihood_potential`, :func:`ratio_potential`
=====================  =================================================================

Each kernel's file derives its transition. Example:

>>> result = run_mcmc(lambda u: -0.5 * (u**2).sum(-1), torch.randn(8, 2), 500, seed=0)
>>> result.samples.shape, result.rhat < 1.1
(torch.Size([8, 500, 2]), True)
"""

from .base import Potential, Sampler, State, StepInfo
from .config import METHODS, POPULATION_METHODS, MCMCConfig
from .driver import SAMPLERS, MCMCResult, run_mcmc
from .hmc import HamiltonianMonteCarlo
from .nuts import PyroNUTS
from .potentials import likelihood_potential, ratio_potential, unconstrained
from .rwm import RandomWalkMetropolis
from .slice import SliceSampler
from .smc import Reference, SMCOptions, prior_reference

__all__ = [
    "METHODS",
    "POPULATION_METHODS",
    "SAMPLERS",
    "MCMCConfig",
    "MCMCResult",
    "Potential",
    "Sampler",
    "State",
    "StepInfo",
    "RandomWalkMetropolis",
    "SliceSampler",
    "HamiltonianMonteCarlo",
    "PyroNUTS",
    "Reference",
    "SMCOptions",
    "prior_reference",
    "run_mcmc",
    "likelihood_potential",
    "ratio_potential",
    "unconstrained",
]
