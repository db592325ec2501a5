r"""Posteriors sampled by MCMC: NLE's and NRE's.

Both are built from a **potential** (:mod:`simgen.mcmc.potentials`), an unnormalised log
posterior :math:`\psi(\theta, x)`: :func:`~simgen.mcmc.likelihood_potential` for NLE,
:math:`\log q_\phi(x\mid\theta) + \log p(\theta)`, and :func:`~simgen.mcmc.ratio_potential`
for NRE, :math:`f_\phi(\theta, x) + \log p(\theta)`. So :meth:`MCMCPosterior.log_prob` is
**unnormalised** (it differs from the normalised log density by an unknown function of x),
and sampling runs :func:`simgen.mcmc.run_mcmc` on :math:`\psi(T(u), x) + \log|\det J_T(u)|`
with :math:`T` the prior's support bijection, so every draw lies inside the support. The
settings are an :class:`~simgen.mcmc.MCMCConfig` (its module docstring states the thinning
and chain-count rules); the diagnostics of the last run (R-hat, ESS, acceptance) are kept in
:attr:`MCMCPosterior.last_mcmc` and exported by ``to_arviz``.

An x of shape ``(n, *x_shape)`` is n i.i.d. trials (:mod:`simgen.iid`): the potential is
then :math:`\sum_i \ell_\phi(\theta, x_i) + \log p(\theta)`, and ``sample_batched``
takes a list of trial sets of different sizes, all chains of all sets run in one batch.

Sampling, ``log_prob`` and the surrogate simulator compute on the estimator's device and
dtype and return tensors there (:mod:`simgen.devices`); the prior draws that start the chains
are taken on the CPU, so a seed gives the same starting points on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from . import iid
from .devices import home, to_home
from .errors import ConfigError, NoDensityError, NotFittedError, ShapeError
from .estimators.base import ConditionalEstimator
from .estimators.classifier import RatioClassifier
from .estimators.registry import from_spec
from .mcmc import MCMCConfig, MCMCResult, run_mcmc
from .mcmc.config import POPULATION_METHODS
from .mcmc.potentials import (
    PosteriorPotential,
    likelihood_potential,
    ratio_potential,
    unconstrained,
)
from .mcmc.smc import prior_reference
from .posterior import Posterior, as_tensor
from .posterior_args import check_options, check_seed
from .priors import prior_dim

__all__ = ["MCMCPosterior", "SurrogateSimulator"]

#: Per-call options of :meth:`MCMCPosterior.sample` besides the :class:`MCMCConfig` fields.
_CALL_OPTIONS = ("num_chains", "warmup", "thin", "method", "sampler_options", "seed")


class SurrogateSimulator:
    """A trained likelihood used as a simulator: ``surrogate(theta, generator=None) -> x``.

    Args:
        estimator: A conditional density estimator of x (``(F,)``) given θ (``(D,)``).

    Example:
        >>> x = posterior.likelihood(theta)  # (N, F), like simulator(theta)
    """

    def __init__(self, estimator: ConditionalEstimator):
        self.estimator = estimator.eval()

    @torch.no_grad()
    def sample(self, theta: Any, generator: torch.Generator | None = None) -> Tensor:
        """Draw one x per row of ``theta`` ``(N, D)`` → ``(N, F)``, on the estimator's device
        (``generator`` may live anywhere: it only seeds the draw)."""
        theta = as_tensor(theta, "theta")
        d = self.estimator.context_shape[0]
        if theta.ndim != 2 or theta.shape[1] != d:
            raise ShapeError(f"theta has shape {tuple(theta.shape)}; expected (N, {d}).")
        theta = to_home(theta, home(self.estimator))
        if generator is None:
            return self.estimator.draw(1, theta)[0]
        devices = [] if theta.device.type == "cpu" else [theta.device]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            return self.estimator.draw(1, theta)[0]

    def __call__(self, theta: Any, generator: torch.Generator | None = None) -> Tensor:
        return self.sample(theta, generator)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        """:math:`\\log q_\\phi(x \\mid \\theta)` for matching rows ``(N, F)``, ``(N, D)``."""
        where = home(self.estimator)
        theta, x = to_home(as_tensor(theta, "theta"), where), to_home(as_tensor(x, "x"), where)
        with torch.no_grad():
            return self.estimator(theta).log_prob(x)


class MCMCPosterior(Posterior):
    """A posterior sampled by MCMC on a potential; NLE's (``from_likelihood``) and NRE's
    (``from_ratio``).

    Args:
        potential: ``(theta (*, B, D), x (B, *x_shape)) -> (*, B)``, the unnormalised log
            posterior (:mod:`simgen.mcmc.potentials`).
        prior: The prior.
        x_shape: Shape of one observation.
        estimator: The trained network behind the potential (saved with the posterior).
        method: ``"nle"`` or ``"nre"``: how a saved file rebuilds the potential.
        history: The training history.
        mcmc: Default MCMC settings (:class:`~simgen.mcmc.MCMCConfig`; see :meth:`sample`).

    Example:
        >>> posterior = NLE(prior).fit(theta, x)
        >>> samples = posterior.sample((1000,), x=x_o)
        >>> posterior.last_mcmc.rhat
    """

    def __init__(
        self,
        potential: PosteriorPotential,
        prior: Distribution,
        x_shape: Sequence[int],
        estimator: nn.Module,
        method: str,
        history: Any = None,
        mcmc: MCMCConfig | None = None,
    ):
        if method not in _REBUILD:
            raise ConfigError(f"method must be one of {sorted(_REBUILD)}, got {method!r}.")
        if mcmc is not None and not isinstance(mcmc, MCMCConfig):
            raise ConfigError(f"mcmc must be an MCMCConfig, got {type(mcmc).__name__}.")
        super().__init__(prior, x_shape, prior_dim(prior))
        self.potential = potential
        self.estimator = estimator.eval()
        self.method = method
        self.history = history
        self.mcmc = mcmc if mcmc is not None else MCMCConfig()
        self.last_mcmc: MCMCResult | None = None
        #: A posterior with ``sample_batched`` and ``log_prob_batched`` (NPE's) whose draws,
        #: reweighted by the potential, start the chains instead of the prior's
        #: (:mod:`simgen.importance`); not saved with the file.
        self.proposal: Any = None

    #: An x of shape ``(n, *x_shape)`` is n i.i.d. trials; the potential sums over them
    #: (:mod:`simgen.iid`, :mod:`simgen.mcmc.potentials`).
    combines_trials = True

    @classmethod
    def from_likelihood(
        cls, estimator: ConditionalEstimator, prior: Distribution, x_shape: Sequence[int],
        history: Any = None, mcmc: MCMCConfig | None = None,
    ) -> MCMCPosterior:  # fmt: skip
        """NLE's posterior: :func:`~simgen.mcmc.likelihood_potential` of ``estimator``."""
        potential = likelihood_potential(estimator, prior, x_shape)
        return cls(potential, prior, x_shape, estimator, "nle", history, mcmc)

    @classmethod
    def from_ratio(
        cls, classifier: RatioClassifier, prior: Distribution, x_shape: Sequence[int],
        history: Any = None, mcmc: MCMCConfig | None = None,
    ) -> MCMCPosterior:  # fmt: skip
        """NRE's posterior: :func:`~simgen.mcmc.ratio_potential` of ``classifier``."""
        return cls(ratio_potential(classifier, prior, x_shape), prior, x_shape, classifier,
                   "nre", history, mcmc)  # fmt: skip

    # -- sampling -----------------------------------------------------------------------
    def _init_chains(self, x: Tensor, num_chains: int, seed: int | None) -> Tensor:
        """Sampling–importance–resampling from the prior: ``(num_chains, B, D)`` in u-space.

        The prior draws and the resampling run on the CPU's generator (seeded by ``seed``),
        the weights on the estimator's device, so every device starts from the same chains."""
        devices = [] if x.device.type == "cpu" else [x.device]  # a prior there draws there
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            if self.proposal is not None:  # simgen.importance: an NPE posterior proposes
                candidates = self._home(self.proposal.sample_batched((num_chains * 20,), x))
                log_q = self._home(self.proposal.log_prob_batched(candidates, x))
            else:
                candidates = self._home(self.prior.sample((num_chains * 20, len(x))).cpu())
                log_q = self.placed.prior.log_prob(candidates)
            lw = self.potential(candidates, x) - log_q
            lw = torch.nan_to_num(lw, nan=-math.inf)
            lw = torch.where(torch.isfinite(lw).any(0, keepdim=True), lw, torch.zeros_like(lw))
            weights = torch.softmax(lw, 0).T.cpu()
            idx = torch.multinomial(weights, num_chains, replacement=True).to(x.device)
            theta = torch.gather(candidates, 0, idx.T[..., None].expand(-1, -1, self.theta_dim))
        return self._transform.inv(theta)

    def _run(self, sample_shape: Sequence[int], x: Tensor, options: dict[str, Any]) -> Tensor:
        options = check_options(options, _CALL_OPTIONS, "MCMCPosterior.sample")
        seed = options.pop("seed", None)
        check_seed(seed)
        config = self.mcmc.replace(**options)
        n = math.prod(tuple(sample_shape))
        chains = config.chains_for(n, explicit="num_chains" in options)
        draws = max(math.ceil(n / chains), 1)
        init = self._init_chains(x, chains, seed)
        reference = None
        if config.method in POPULATION_METHODS:  # "smc" tempers from the prior
            draw = lambda n: self._home(self.prior.sample((n, len(x))).cpu())  # noqa: E731
            reference = prior_reference(draw, self.placed.prior, self._transform)
        result = run_mcmc(
            unconstrained(self.potential, self._transform, x),
            init,
            draws,
            warmup=config.warmup,
            thin=config.thin_for(self.theta_dim),
            method=config.method,
            seed=seed,
            rhat_threshold=config.rhat_threshold,
            sampler_options=dict(config.sampler_options),
            reference=reference,
        )
        result.samples = self._transform(result.samples)
        self.last_mcmc = result
        # (chains, draws, B, D) -> (draws * chains, B, D): interleave chains.
        flat = result.samples.transpose(0, 1).reshape(draws * chains, len(x), self.theta_dim)
        return flat[:n].reshape(*sample_shape, len(x), self.theta_dim)

    def _single_x(self, x: Any) -> Tensor:
        return self._check_observation(super()._single_x(x))

    def _batch_x(self, x: Any) -> Tensor:
        return self._check_observation(super()._batch_x(x))

    def _check_observation(self, x: Tensor) -> Tensor:
        """Observations outside what the likelihood models (e.g. a non-positive value in a
        log-scale column of NLE's ``log_x``) raise a clear error instead of an MCMC failure."""
        check = getattr(self.estimator, "check_data", None)
        if check is not None:
            rows = x if x.ndim == len(self.x_shape) + 1 else x[iid.present(x, self.x_shape)]
            check(self._home(rows), "x_o")
        return x

    def sample(self, sample_shape: Sequence[int] = (), x: Any = None, **options: Any) -> Tensor:
        """``(*sample_shape, D)`` MCMC draws for one observation.

        Keyword options override fields of the posterior's :class:`~simgen.mcmc.MCMCConfig`
        for this call: ``num_chains`` (run at once), ``warmup`` (adaptation steps per chain,
        discarded), ``thin`` (keep every k-th step), ``method`` (``"rwm"``, ``"slice"``,
        ``"hmc"`` or pyro's ``"nuts"``; see :mod:`simgen.mcmc`), ``sampler_options`` (e.g.
        ``{"num_steps": 16}`` for HMC), and ``seed``. ``thin=None`` (default) thins
        random-walk chains by :math:`\\max(10, 5D)` and the others by 1; a request of ``n``
        draws runs ``max(4, min(num_chains, n // 25))`` chains unless the call names
        ``num_chains`` (``"nuts"``: 4), so every chain is long enough for R-hat. Diagnostics
        land in :attr:`last_mcmc`; a :class:`~simgen.errors.ConvergenceWarning` says when
        R-hat > 1.1. sbi's ``show_progress_bars`` is accepted and ignored; any other keyword
        raises :class:`~simgen.errors.ConfigError`.
        """
        xo = self._home(self._single_x(x))
        return self._run(sample_shape, xo, options)[..., 0, :]

    def sample_batched(self, sample_shape: Sequence[int], x: Any, **options: Any) -> Tensor:
        """``(*sample_shape, B, D)``: chains for all ``B`` observations run in one batch
        (options as in :meth:`sample`)."""
        xs = self._home(self._batch_x(x))
        return self._run(sample_shape, xs, options)

    def log_prob(
        self, theta: Any, x: Any = None, norm_posterior: bool = False, **options: Any
    ) -> Tensor:
        """**Unnormalised** :math:`\\psi(\\theta, x)`: log prior + log likelihood (NLE) or +
        logit (NRE).

        It equals :math:`\\log p(\\theta \\mid x)` plus a constant that depends on x only: fine
        for comparing θs and for MAP, not for comparing densities across observations.
        ``norm_posterior`` (sbi's name) is accepted for interface parity; there is no
        normaliser to compute, so ``True`` raises :class:`~simgen.errors.NoDensityError`.
        """
        check_options(options, (), "MCMCPosterior.log_prob")
        _no_normaliser(norm_posterior)
        theta = self._home(self._theta(theta))
        xo = self._home(self._single_x(x))
        with torch.set_grad_enabled(theta.requires_grad):
            return self.potential(theta[..., None, :], xo)[..., 0]

    def log_prob_batched(
        self, theta: Any, x: Any, norm_posterior: bool = False, **options: Any
    ) -> Tensor:
        """Unnormalised ``theta`` ``(*, B, D)`` against ``B`` observations → ``(*, B)``."""
        check_options(options, (), "MCMCPosterior.log_prob_batched")
        _no_normaliser(norm_posterior)
        theta = self._home(self._theta(theta))
        with torch.set_grad_enabled(theta.requires_grad):
            return self.potential(theta, self._home(self._batch_x(x)))

    def to_arviz(self, x: Any = None, num_samples: int = 1000, **kwargs: Any) -> Any:
        """InferenceData with ``(chains, draws)`` posterior draws and the MCMC sample stats."""
        from .arviz_export import to_inference_data

        xo = self._single_x(x)
        self.sample((num_samples,), x=xo)
        result = self.last_mcmc
        assert result is not None
        return to_inference_data(
            result.samples[:, :, 0].cpu(),
            x_o=xo[0].cpu(),
            sample_stats=result.sample_stats(),
            **kwargs,
        )

    @property
    def likelihood(self) -> SurrogateSimulator:
        """NLE only: the trained likelihood as a fast simulator, ``likelihood(theta) -> x``."""
        if not isinstance(self.estimator, ConditionalEstimator):
            raise NoDensityError("Only NLE posteriors carry a likelihood (NRE learns a ratio).")
        return SurrogateSimulator(self.estimator)

    @property
    def mcmc_info(self) -> dict[str, Any]:
        """The last run's settings and diagnostics (R-hat, ESS, acceptance rate)."""
        if self.last_mcmc is None:
            raise NotFittedError("No MCMC run yet: call posterior.sample(...) first.")
        return self.last_mcmc.to_dict()

    # -- files ----------------------------------------------------------------------------
    kind = "mcmc"

    def _extra_spec(self) -> dict[str, Any]:
        return {"mcmc": self.mcmc.to_dict()}

    @classmethod
    def _from_file(
        cls,
        spec: dict[str, Any],
        state: dict[str, Tensor],
        prior: Any = None,
        embedding_net: Any = None,
        device: str = "cpu",
    ) -> MCMCPosterior:
        if spec.get("method") not in _REBUILD:
            raise ConfigError(
                f"This MCMC posterior file names method {spec.get('method')!r}; this simgen "
                f"reads {sorted(_REBUILD)}."
            )
        build = getattr(cls, _REBUILD[spec["method"]])
        if spec["method"] == "nle":
            estimator = from_spec(spec["estimator"])
        else:
            estimator = RatioClassifier.from_spec(spec["estimator"], embedding_net)
        estimator.load_state_dict(state)
        posterior = build(
            estimator.to(device),
            cls._prior_from(spec, prior),
            spec["x_shape"],
            mcmc=MCMCConfig.from_dict(spec.get("mcmc", {})),
        )
        if spec.get("default_x") is not None:
            posterior.set_default_x(torch.tensor(spec["default_x"]))
        return posterior

    def __repr__(self) -> str:
        return (
            f"MCMCPosterior(method={self.method!r}, theta_dim={self.theta_dim}, "
            f"x_shape={self.x_shape}, mcmc={self.mcmc})"
        )


#: ``method`` of a saved file → the constructor that rebuilds its potential.
_REBUILD = {"nle": "from_likelihood", "nre": "from_ratio"}


def _no_normaliser(norm_posterior: Any) -> None:
    if norm_posterior:
        raise NoDensityError(
            "An MCMC posterior's log_prob is unnormalised (no normaliser is estimated); "
            "call log_prob(..., norm_posterior=False) or leave the option out."
        )
