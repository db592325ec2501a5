r"""MCMC settings: one validated, frozen :class:`MCMCConfig`.

The same object configures :func:`~simgen.mcmc.run_mcmc`, an NLE or NRE posterior
(``NLE(prior, mcmc=MCMCConfig(...))``) and, field by field, a single call
(``posterior.sample(..., num_chains=8, method="hmc")``). The default sampler is random-walk
Metropolis, ``"rwm"``: it needs no gradient, costs one potential evaluation per step, and is
what the NLE/NRE benchmarks ran (``benchmarks/results_nle_nre.md``). Two rules of the
posteriors are stated here so that they live in one place:

* **thinning** (``thin=None``): random-walk draws decorrelate in :math:`O(D)` steps, so
  ``"rwm"`` chains are thinned by :math:`\max(10, 5D)` and the other samplers by 1. On 2-D
  NLE with 40 observations × 4 chains × 25 draws, thinning by 5 left 11 of 40 observations
  at R-hat > 1.1 (bulk ESS 21 of 100), by 10 left 1 and by 20 none;
* **chains**: a request of :math:`n` draws runs :math:`\max(4, \min(\text{num\_chains},
  \lfloor n/25\rfloor))` chains unless the call names ``num_chains``, so every chain keeps at
  least 25 draws and R-hat means something (SBC asks ~100 draws per observation: 4 chains
  of 25, not 50 of 2); ``"nuts"`` runs 4 chains unless told otherwise, because pyro steps
  its chains one after another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = [
    "METHODS",
    "MCMCConfig",
    "MIN_CHAINS",
    "MIN_DRAWS_PER_CHAIN",
    "NUTS_CHAINS",
    "POPULATION_METHODS",
]

#: Markov-kernel sampler names, in :mod:`simgen.mcmc`'s registry order.
METHODS = ("rwm", "slice", "hmc", "nuts")
#: Population samplers: ``"smc"``, tempered sequential Monte Carlo from the prior
#: (:mod:`simgen.mcmc.smc`), which takes no chain starts, warm-up or thinning.
POPULATION_METHODS = ("smc",)
#: The chain-count rule of the module docstring.
MIN_DRAWS_PER_CHAIN = 25
MIN_CHAINS = 4
NUTS_CHAINS = 4


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"MCMC: {name} must be an integer >= {low}, got {value!r}.")


@dataclass(frozen=True)
class MCMCConfig:
    """MCMC settings of an NLE or NRE posterior (see the module docstring for the rules).

    Args:
        num_chains: Chains run at once, per observation (at most this many unless a call
            names ``num_chains``); at least 2, for R-hat.
        warmup: Adaptation steps per chain, discarded.
        thin: Keep every ``thin``-th step; ``None`` picks :math:`\\max(10, 5D)` for
            ``"rwm"`` and 1 otherwise.
        method: ``"rwm"``, ``"slice"``, ``"hmc"``, ``"nuts"`` or ``"smc"``
            (:mod:`simgen.mcmc`); ``"smc"`` ignores ``warmup`` and ``thin``.
        sampler_options: Passed to the sampler, e.g. ``{"num_steps": 16}`` for ``"hmc"``,
            ``{"max_tree_depth": 8}`` for ``"nuts"``, ``{"num_moves": 10}`` for ``"smc"``
            (:class:`~simgen.mcmc.smc.SMCOptions`).
        rhat_threshold: A :class:`~simgen.errors.ConvergenceWarning` is issued above it
            (1.1, the usual threshold for the short chains run here; 1.01 is the strict one
            for long runs).

    Example:
        >>> posterior = NLE(prior, mcmc=MCMCConfig(num_chains=20, method="slice")).fit(theta, x)
        >>> posterior.sample((1000,), x=x_o, warmup=200)  # one field overridden for one call
    """

    num_chains: int = 50
    warmup: int = 100
    thin: int | None = None
    method: str = "rwm"
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    rhat_threshold: float = 1.1

    def __post_init__(self) -> None:
        _check_int("num_chains", self.num_chains, 2)
        _check_int("warmup", self.warmup, 0)
        if self.thin is not None:
            _check_int("thin", self.thin, 1)
        known = (*METHODS, *POPULATION_METHODS)
        if self.method not in known:
            raise ConfigError(f"MCMC: unknown method {self.method!r}; choose one of {known}.")
        options = self.sampler_options
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError(
                f"MCMC: sampler_options must be a dict of keyword options, got {options!r}."
            )
        object.__setattr__(self, "sampler_options", dict(options))
        threshold = self.rhat_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"MCMC: rhat_threshold must be a number > 1, got {threshold!r}.")
        if not threshold > 1:
            raise ConfigError(f"MCMC: rhat_threshold must be a number > 1, got {threshold!r}.")

    def replace(self, **changes: Any) -> MCMCConfig:
        """A copy with ``changes`` applied (validated); an unknown field raises ConfigError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(
                f"Unknown MCMC option(s) {unknown}; valid: "
                f"{', '.join(f.name for f in dataclasses.fields(self))}."
            )
        return dataclasses.replace(self, **changes)

    def thin_for(self, theta_dim: int) -> int:
        """The thinning used for ``theta_dim`` parameters (``thin``, or the default rule)."""
        if self.thin is not None:
            return self.thin
        return max(10, 5 * theta_dim) if self.method == "rwm" else 1  # smc: 1, unused

    def chains_for(self, num_draws: int, explicit: bool = False) -> int:
        """Chains for a request of ``num_draws`` draws; ``explicit``: the call named
        ``num_chains``, which is then honoured as it is."""
        if explicit:
            return self.num_chains
        if self.method == "nuts":
            return NUTS_CHAINS
        return max(MIN_CHAINS, min(self.num_chains, num_draws // MIN_DRAWS_PER_CHAIN))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (what a saved posterior stores under ``"mcmc"``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MCMCConfig:
        """Read :meth:`to_dict`'s output; fields a file lacks take their defaults, and
        unknown ones are ignored, so files written with fewer or more fields load."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def resolve(
        cls,
        config: MCMCConfig | None = None,
        num_chains: int | None = None,
        warmup: int | None = None,
        thin: int | None = None,
        mcmc_method: str | None = None,
    ) -> MCMCConfig:
        """``config`` (default: ``MCMCConfig()``) with the fields NLE and NRE also accept as
        keyword arguments applied (``mcmc_method`` is ``method``); ``None`` leaves a field."""
        if config is None:
            config = cls()
        if not isinstance(config, MCMCConfig):
            raise ConfigError(
                f"mcmc must be an MCMCConfig, e.g. MCMCConfig(num_chains=20); got "
                f"{type(config).__name__}."
            )
        given = {"num_chains": num_chains, "warmup": warmup, "thin": thin, "method": mcmc_method}
        return config.replace(**{k: v for k, v in given.items() if v is not None})
