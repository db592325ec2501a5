r"""Posteriors sampled by MCMC: NLE's and NRE's.

Both methods learn a function that is the posterior up to a constant once the prior is added:

.. math::
    \log \tilde p(\theta \mid x) =
    \begin{cases}
      \log q_\phi(x \mid \theta) + \log p(\theta) & \text{NLE (likelihood estimator)}\\
      \log \hat r_\phi(\theta, x) + \log p(\theta) & \text{NRE (ratio classifier's logit)}
    \end{cases}

so :meth:`MCMCPosterior.log_prob` is **unnormalised** (it differs from the normalised log
density by an unknown function of x), and sampling runs :func:`simgen.mcmc.run_mcmc` on
:math:`\log \tilde p(T(u) \mid x) + \log|\det J_T(u)|` with :math:`T` the prior's support
bijection, so every draw lies inside the support. The diagnostics of the last run (R-hat,
ESS, acceptance) are kept in :attr:`MCMCPosterior.last_mcmc` and exported by ``to_arviz``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .errors import ConfigError, NoDensityError, NotFittedError, ShapeError
from .estimators.base import ConditionalEstimator
from .estimators.registry import from_spec
from .mcmc import METHODS, MCMCResult, run_mcmc
from .posterior import Posterior, as_tensor
from .priors import in_support

__all__ = ["MCMCPosterior", "SurrogateSimulator"]


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
        """Draw one x per row of ``theta`` ``(N, D)`` → ``(N, F)``."""
        theta = as_tensor(theta, "theta")
        d = self.estimator.context_shape[0]
        if theta.ndim != 2 or theta.shape[1] != d:
            raise ShapeError(f"theta has shape {tuple(theta.shape)}; expected (N, {d}).")
        if generator is None:
            return self.estimator.draw(1, theta)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            return self.estimator.draw(1, theta)[0]

    def __call__(self, theta: Any, generator: torch.Generator | None = None) -> Tensor:
        return self.sample(theta, generator)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        """:math:`\\log q_\\phi(x \\mid \\theta)` for matching rows ``(N, F)``, ``(N, D)``."""
        with torch.no_grad():
            return self.estimator(as_tensor(theta, "theta")).log_prob(as_tensor(x, "x"))


#: Unless ``num_chains`` is given, small requests run fewer chains, each at least this long
#: (SBC asks ~100 draws per observation: 4 chains x 25 draws, not 50 x 2).
MIN_DRAWS_PER_CHAIN = 25
MIN_CHAINS = 4


class MCMCPosterior(Posterior):
    """Posterior from a learned likelihood (``method="nle"``) or ratio (``method="nre"``).

    Args:
        estimator: NLE: a density estimator of x given θ (``estimator(theta).log_prob(x)``);
            NRE: a classifier with ``estimator(theta, x) -> log-ratio``.
        prior: The prior.
        method: ``"nle"`` or ``"nre"``.
        x_shape: Shape of one observation.
        history: The training history.
        num_chains, warmup, thin, mcmc_method: Default MCMC settings (see :meth:`sample`).

    Example:
        >>> posterior = NLE(prior).fit(theta, x)
        >>> samples = posterior.sample((1000,), x=x_o)
        >>> posterior.last_mcmc.rhat
    """

    def __init__(
        self,
        estimator: nn.Module,
        prior: Distribution,
        method: str,
        x_shape: Sequence[int],
        history: Any = None,
        num_chains: int = 50,
        warmup: int = 100,
        thin: int | None = None,
        mcmc_method: str = "rwm",
    ):
        if method not in ("nle", "nre"):
            raise ConfigError(f"method must be 'nle' or 'nre', got {method!r}.")
        theta_dim = estimator.context_shape[0] if method == "nle" else estimator.theta_dim
        super().__init__(prior, x_shape, theta_dim)
        self.estimator = estimator.eval()
        self.method = method
        self.history = history
        self.mcmc_defaults = {
            "num_chains": num_chains,
            "warmup": warmup,
            "thin": thin,
            "method": mcmc_method,
        }
        self.last_mcmc: MCMCResult | None = None
        self._inner = self._transform(torch.zeros(self.theta_dim))  # a point inside the support

    @property
    def device(self) -> torch.device:
        return next(self.estimator.buffers()).device

    # -- the potential ------------------------------------------------------------------
    def potential(self, theta: Tensor, x: Tensor) -> Tensor:
        """Unnormalised log-posterior of ``theta`` ``(*, B, D)`` given ``x`` ``(B, *x_shape)``."""
        if self.method == "nle":
            est: ConditionalEstimator = self.estimator  # type: ignore[assignment]
            batch = torch.broadcast_shapes(theta.shape[:-1], x.shape[: x.ndim - len(self.x_shape)])
            loglik = est(theta.expand(*batch, -1)).log_prob(x.expand(*batch, *self.x_shape))
        else:
            loglik = self.estimator(theta, x)
        inside = in_support(self.prior, theta)
        safe = torch.where(inside[..., None], theta, self._inner.to(theta))
        logp = loglik + self.prior.log_prob(safe)
        # -inf outside the support; a NaN inside it is kept, so MCMC reports it (MCMCError).
        return torch.where(inside, logp, torch.full_like(logp, -math.inf))

    def _potential_u(self, x: Tensor) -> Any:
        transform = self._transform

        def fn(u: Tensor) -> Tensor:
            theta = transform(u)
            value = self.potential(theta, x) + _log_abs_det(transform, u, theta)
            return torch.where(torch.isnan(value) & torch.isinf(u).any(-1), -math.inf, value)

        return fn

    # -- sampling -----------------------------------------------------------------------
    def _settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        valid = {*self.mcmc_defaults, "seed", "show_progress_bars", "sampler_options"}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ConfigError(
                f"Unknown MCMC option(s) {unknown}; valid: num_chains, warmup, thin, method, "
                "seed, sampler_options."
            )
        settings = {**self.mcmc_defaults, **kwargs}
        settings.pop("show_progress_bars", None)
        if settings["method"] == "nuts" and "num_chains" not in kwargs:
            settings["num_chains"] = 4  # pyro runs chains one after another
        if settings["thin"] is None:
            # Random-walk draws decorrelate in O(D) steps. Measured on 2-D NLE, 40 observations
            # x 4 chains x 25 draws: thin 5 left 11 of 40 observations at R-hat > 1.1 (bulk
            # ESS 21 of 100), thin 10 left 1, thin 20 none. Hence 5D, at least 10.
            settings["thin"] = max(10, 5 * self.theta_dim) if settings["method"] == "rwm" else 1
        n = settings["num_chains"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError(f"num_chains must be an integer >= 2, got {n!r}.")
        if settings["method"] not in METHODS:
            raise ConfigError(f"MCMC method must be one of {METHODS}, got {settings['method']!r}.")
        return settings

    def _init_chains(self, x: Tensor, num_chains: int, seed: int | None) -> Tensor:
        """Sampling–importance–resampling from the prior: ``(num_chains, B, D)`` in u-space."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            candidates = self.prior.sample((num_chains * 20, len(x))).to(x.device)
            lw = self.potential(candidates, x) - self.prior.log_prob(candidates)
            lw = torch.nan_to_num(lw, nan=-math.inf)
            lw = torch.where(torch.isfinite(lw).any(0, keepdim=True), lw, torch.zeros_like(lw))
            idx = torch.multinomial(torch.softmax(lw, 0).T, num_chains, replacement=True)
            theta = torch.gather(candidates, 0, idx.T[..., None].expand(-1, -1, self.theta_dim))
        return self._transform.inv(theta)

    def _run(self, sample_shape: Sequence[int], x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        settings = self._settings(kwargs)
        seed = settings.pop("seed", None)
        n = math.prod(tuple(sample_shape))
        chains = settings["num_chains"]
        if "num_chains" not in kwargs and settings["method"] != "nuts":
            # Few draws per chain make R-hat meaningless: keep >= MIN_DRAWS_PER_CHAIN.
            chains = max(MIN_CHAINS, min(chains, n // MIN_DRAWS_PER_CHAIN))
        draws = max(math.ceil(n / chains), 1)
        init = self._init_chains(x, chains, seed)
        result = run_mcmc(
            self._potential_u(x),
            init,
            draws,
            warmup=settings["warmup"],
            thin=settings["thin"],
            method=settings["method"],
            seed=seed,
            sampler_options=settings.get("sampler_options"),
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
            check(x, "x_o")
        return x

    def sample(self, sample_shape: Sequence[int] = (), x: Any = None, **kwargs: Any) -> Tensor:
        """``(*sample_shape, D)`` MCMC draws for one observation.

        Keyword options override the defaults: ``num_chains`` (run at once), ``warmup``
        (adaptation steps per chain, discarded), ``thin`` (keep every k-th step),
        ``method`` (``"rwm"``, ``"slice"``, ``"hmc"`` or pyro's ``"nuts"``; see
        :mod:`simgen.mcmc`), ``seed``, ``sampler_options`` (e.g. ``{"num_steps": 16}`` for
        HMC). ``thin=None`` (default) thins random-walk chains by :math:`\\max(10, 5D)` and
        the others by 1; ``"nuts"`` runs 4 chains unless ``num_chains`` is given (pyro runs
        them one after another). Without ``num_chains``, a request of ``n`` draws runs
        ``max(4, min(num_chains, n // 25))`` chains, so every chain is long enough for R-hat
        (SBC's ~100 draws per observation: 4 chains of 25). Diagnostics land in
        :attr:`last_mcmc`; a
        :class:`~simgen.errors.ConvergenceWarning` says when R-hat > 1.1.
        """
        xo = self._single_x(x).to(self.device)
        return self._run(sample_shape, xo, kwargs)[..., 0, :]

    def sample_batched(self, sample_shape: Sequence[int], x: Any, **kwargs: Any) -> Tensor:
        """``(*sample_shape, B, D)``: chains for all ``B`` observations run in one batch."""
        xs = self._batch_x(x).to(self.device)
        return self._run(sample_shape, xs, kwargs)

    def log_prob(self, theta: Any, x: Any = None, **_: Any) -> Tensor:
        """**Unnormalised** :math:`\\log p(\\theta) + \\log q(x\\mid\\theta)` (NRE: + logit).

        It equals :math:`\\log p(\\theta \\mid x)` plus a constant that depends on x only: fine
        for comparing θs and for MAP, not for comparing densities across observations.
        """
        theta = self._theta(theta).to(self.device)
        xo = self._single_x(x).to(self.device)
        with torch.set_grad_enabled(theta.requires_grad):
            return self.potential(theta[..., None, :], xo)[..., 0]

    def log_prob_batched(self, theta: Any, x: Any) -> Tensor:
        """Unnormalised ``theta`` ``(*, B, D)`` against ``B`` observations → ``(*, B)``."""
        theta = self._theta(theta).to(self.device)
        with torch.set_grad_enabled(theta.requires_grad):
            return self.potential(theta, self._batch_x(x).to(self.device))

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
        if self.method != "nle":
            raise NoDensityError("Only NLE posteriors carry a likelihood (NRE learns a ratio).")
        return SurrogateSimulator(self.estimator)  # type: ignore[arg-type]

    @property
    def mcmc_info(self) -> dict[str, Any]:
        """The last run's settings and diagnostics (R-hat, ESS, acceptance rate)."""
        if self.last_mcmc is None:
            raise NotFittedError("No MCMC run yet: call posterior.sample(...) first.")
        return self.last_mcmc.to_dict()

    # -- files ----------------------------------------------------------------------------
    kind = "mcmc"

    def _extra_spec(self) -> dict[str, Any]:
        return {"mcmc": dict(self.mcmc_defaults)}

    @classmethod
    def _from_file(
        cls,
        spec: dict[str, Any],
        state: dict[str, Tensor],
        prior: Any = None,
        embedding_net: Any = None,
        device: str = "cpu",
    ) -> MCMCPosterior:
        if spec["method"] == "nle":
            estimator = from_spec(spec["estimator"])
        else:
            from .estimators.classifier import RatioClassifier

            estimator = RatioClassifier.from_spec(spec["estimator"], embedding_net)
        estimator.load_state_dict(state)
        m = spec.get("mcmc", {})
        posterior = cls(
            estimator.to(device),
            cls._prior_from(spec, prior),
            spec["method"],
            spec["x_shape"],
            num_chains=m.get("num_chains", 50),
            warmup=m.get("warmup", 100),
            thin=m.get("thin"),
            mcmc_method=m.get("method", "rwm"),
        )
        if spec.get("default_x") is not None:
            posterior.set_default_x(torch.tensor(spec["default_x"]))
        return posterior

    def __repr__(self) -> str:
        return (
            f"MCMCPosterior(method={self.method!r}, theta_dim={self.theta_dim}, "
            f"x_shape={self.x_shape}, mcmc={self.mcmc_defaults})"
        )


def _log_abs_det(transform: Any, u: Tensor, theta: Tensor) -> Tensor:
    ladj = transform.log_abs_det_jacobian(u, theta)
    if ladj.ndim == u.ndim:  # elementwise transforms report per coordinate
        ladj = ladj.sum(-1)
    return ladj
