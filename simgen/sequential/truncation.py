r"""Truncated priors (TSNPE, Deistler et al. 2022): the prior restricted to a posterior's
highest-probability region at one observation :math:`x_o`.

**Region.** For a posterior with a density (flows, flow matching, diffusion, VAE through its
importance-weighted estimate; NLE/NRE through their unnormalised log-posterior) the region is

.. math:: R = \{\theta : \log q(\theta \mid x_o) \ge \tau\},

with :math:`\tau` the :math:`\varepsilon`-quantile of :math:`\log q` over ``num_draws``
posterior draws, so :math:`R` holds :math:`1 - \varepsilon` of the posterior's mass.
:math:`\varepsilon = 10^{-4}` is the TSNPE default (:data:`EPSILON`). sbi estimates
:math:`\tau` from 10⁶ draws; simgen uses :data:`REGION_DRAWS` = 20,000, because a
flow-matching or diffusion density is an ODE solve (~0.13-0.35 ms a draw,
``benchmarks/results_sequential.md``). :math:`\tau` is then the 3rd lowest of 20,000 values, a
noisy estimate of the 1e-4 quantile; the noise moves the region's prior mass by up to 15%,
small beside what a fit's width does to it (``benchmarks/results_sequential.md``, "Round 1's
region" and "bernoulli_glm's round 1, taken apart": the 10-D regions are as wide as the
round's fit is, and 200,000 draws give the same size). Normalisation constants do not
matter: a threshold on an unnormalised log-density is the same region.

Sample-only posteriors (consistency, GAN: ``log_prob`` raises
:class:`~simgen.errors.NoDensityError`) get the Mahalanobis ellipsoid of their draws,

.. math:: R = \{\theta : (\theta - m)^\top S^{-1} (\theta - m) \le \kappa^2 r^2_{1-\varepsilon}\},

with :math:`m, S` the draws' mean and covariance and :math:`r^2_{1-\varepsilon}` the
:math:`(1-\varepsilon)`-quantile of their squared distances. The radius is enlarged by
:math:`\kappa` = :data:`ELLIPSOID_ENLARGE` = 1.2: the quantile is the noisiest part of the
estimate, and a region that is too large costs simulations, while one that is too small
biases the posterior. In 10-D the factor is 1.2¹⁰ = 6.2 on the volume: on bernoulli_glm's
round-1 fits the ellipsoid holds 2.9-6.6 times the HPD region's prior mass, and cuts less of
the reference where the HPD region of a narrow fit cuts 5-8% (``results_sequential.md``,
"bernoulli_glm's round 1, taken apart"); the trade-off is kept on the safe side.

**Truncated prior.** :math:`\tilde p(\theta) = p(\theta)\,\mathbb 1_R(\theta) / Z`, with the
prior mass :math:`Z = \Pr_p(\theta \in R)` estimated by Monte Carlo on
:data:`MASS_DRAWS` seeded prior draws, :math:`\hat Z = k/n` with standard error
:math:`\sqrt{\hat Z(1-\hat Z)/n}`. It is sampled by rejection from the prior, in rounds sized by
the acceptance seen so far. When :math:`\hat Z` is below :data:`MIN_ACCEPTANCE` (1e-3; rejection
would then evaluate the region more than 1,000 times per draw), it is sampled by
sampling-importance-resampling from a broadened posterior proposal. That proposal is the
defensive mixture

.. math:: g(\theta) = (1 - \alpha)\,\frac1M \sum_{m=1}^M \mathcal N(\theta; \theta_m, h^2 S)
          + \alpha\, p(\theta), \qquad \alpha = 0.1,

a Gaussian kernel density on :math:`M` posterior draws, with the bandwidth :math:`h` twice
Scott's :math:`M^{-1/(D+4)}`. The prior component bounds the weights
:math:`w = p\,\mathbb 1_R / g \le 1/\alpha`. :math:`Z` is then the importance-sampling estimate
:math:`\frac1n\sum w_i` with its standard error. SIR draws are approximate (repeats are
possible); their effective sample size is reported.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ..errors import ConfigError, NoDensityError, SupportError
from ..priors import in_support, prior_dim

__all__ = [
    "EPSILON",
    "Region",
    "HPDRegion",
    "EllipsoidRegion",
    "IntersectionRegion",
    "posterior_region",
    "TruncatedPrior",
]

#: Share of posterior mass left outside the region (the TSNPE default).
EPSILON = 1e-4
#: Posterior draws behind the region's threshold (or ellipsoid).
REGION_DRAWS = 20_000
#: Prior draws behind the Monte-Carlo estimate of the region's prior mass.
MASS_DRAWS = 20_000
#: Below this prior mass the truncated prior samples by SIR instead of rejection.
MIN_ACCEPTANCE = 1e-3
#: Radius factor of the sample-based ellipsoid.
ELLIPSOID_ENLARGE = 1.2
#: Weight of the prior in SIR's defensive proposal, and the kernel bandwidth's factor.
DEFENSIVE_WEIGHT, BANDWIDTH_FACTOR = 0.1, 2.0
#: Proposals per SIR draw, and the fewest proposals of one call (a call for a handful of
#: draws, such as ``simulate``'s two-draw probe of the prior, still finds the region).
SIR_OVERSAMPLING, SIR_MIN_PROPOSALS = 16, 4096
_CHUNK = 50_000


def _seeded(seed: int, fn: Any, *args: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args)


class Region(abc.ABC):
    """A set of parameters: ``contains(theta (*, D)) -> bool (*)``."""

    @abc.abstractmethod
    def contains(self, theta: Tensor) -> Tensor:
        """Which rows of ``theta`` lie in the region."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying what the region is."""


class HPDRegion(Region):
    """:math:`\\{\\theta: \\log q(\\theta\\mid x_o) \\ge \\tau\\}`, :math:`\\tau` the
    ``epsilon``-quantile of :math:`\\log q` over ``num_draws`` draws of ``posterior`` at ``x_o``.

    Args:
        posterior: Anything with ``sample(shape, x=)`` and ``log_prob(theta, x=)`` (may be
            unnormalised).
        x_o: The observation.
        epsilon: Posterior mass left outside.
        num_draws: Draws behind the quantile (at least ``1 / epsilon`` is not required:
            the threshold is the ``floor(epsilon * num_draws)``-th lowest value).
        seed: Seeds the draws.
        draws: Optional posterior draws to use instead of drawing ``num_draws``.
    """

    def __init__(
        self,
        posterior: Any,
        x_o: Tensor,
        epsilon: float = EPSILON,
        num_draws: int = REGION_DRAWS,
        seed: int = 0,
        draws: Tensor | None = None,
    ):
        _check_epsilon(epsilon)
        self.posterior, self.x_o, self.epsilon = posterior, x_o, float(epsilon)
        if draws is None:
            draws = _seeded(seed, lambda: posterior.sample((int(num_draws),), x=x_o))
        log_q = self.log_q(draws)
        finite = log_q[torch.isfinite(log_q)]
        if len(finite) == 0:
            raise SupportError(
                "The posterior's log_prob is -inf or NaN at all of its own draws; its region "
                "cannot be found. Check the posterior with posterior.log_prob(samples, x=x_o)."
            )
        self.threshold = float(torch.sort(finite).values[int(self.epsilon * len(finite))])
        self.num_draws = len(draws)

    @torch.no_grad()
    def log_q(self, theta: Tensor) -> Tensor:
        """:math:`\\log q(\\theta \\mid x_o)` up to a constant, evaluated in chunks."""
        flat = theta.reshape(-1, theta.shape[-1])
        out = [
            _log_prob(self.posterior, flat[i : i + _CHUNK], self.x_o)
            for i in range(0, len(flat), _CHUNK)
        ]
        return torch.cat(out).reshape(theta.shape[:-1]) if out else flat.new_empty(0)

    def contains(self, theta: Tensor) -> Tensor:
        log_q = self.log_q(theta)
        return (torch.nan_to_num(log_q, nan=-torch.inf) >= self.threshold).to(theta.device)

    def describe(self) -> str:
        return (
            f"HPD region log q(theta|x_o) >= {self.threshold:.4g} "
            f"(epsilon={self.epsilon:g}, {self.num_draws} draws)"
        )


class EllipsoidRegion(Region):
    """Mahalanobis ellipsoid of ``draws`` holding ``1 - epsilon`` of them, radius times
    ``enlarge`` (for sample-only posteriors; see the module docstring)."""

    def __init__(self, draws: Tensor, epsilon: float = EPSILON, enlarge: float = ELLIPSOID_ENLARGE):
        _check_epsilon(epsilon)
        if enlarge < 1:
            raise ConfigError(f"enlarge must be >= 1 (a factor on the radius), got {enlarge}.")
        draws = draws.reshape(-1, draws.shape[-1]).double()
        self.mean = draws.mean(0)
        cov = torch.cov(draws.T).reshape(draws.shape[1], draws.shape[1])
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        cov = cov + 1e-9 * cov.diagonal().mean().clamp_min(1e-12) * eye
        self.chol = torch.linalg.cholesky(cov)
        d2 = self._distance2(draws)
        q = torch.sort(d2).values[min(int((1 - epsilon) * len(d2)), len(d2) - 1)]
        self.radius2 = float(q) * enlarge**2
        self.epsilon, self.enlarge, self.num_draws = float(epsilon), float(enlarge), len(draws)

    def _distance2(self, theta: Tensor) -> Tensor:
        centred = theta.to(self.mean.device, torch.float64) - self.mean
        z = torch.linalg.solve_triangular(self.chol, centred.T, upper=False).T
        return (z**2).sum(-1)

    def contains(self, theta: Tensor) -> Tensor:
        flat = theta.reshape(-1, theta.shape[-1])
        inside = self._distance2(flat) <= self.radius2
        return inside.reshape(theta.shape[:-1]).to(theta.device)

    def describe(self) -> str:
        return (
            f"ellipsoid of posterior draws, Mahalanobis radius {math.sqrt(self.radius2):.3g} "
            f"(1-epsilon quantile x {self.enlarge:g}, epsilon={self.epsilon:g}, "
            f"{self.num_draws} draws)"
        )


class IntersectionRegion(Region):
    """The parameters in every one of ``regions``: :math:`R_1 \\cap \\dots \\cap R_k`
    (:func:`simgen.sequential`'s nested proposals; an intersection given as a member is
    flattened into its members)."""

    def __init__(self, regions: Sequence[Region]):
        flat: list[Region] = []
        for region in regions:
            flat.extend(region.regions if isinstance(region, IntersectionRegion) else [region])
        if not flat:
            raise ConfigError("IntersectionRegion needs at least one region.")
        self.regions = flat

    def contains(self, theta: Tensor) -> Tensor:
        # The newest region first; each earlier one only on the rows still inside.
        flat = theta.reshape(-1, theta.shape[-1])
        inside = self.regions[-1].contains(flat)
        for region in reversed(self.regions[:-1]):
            rows = inside.nonzero().squeeze(-1)
            if len(rows) == 0:
                break
            inside[rows] = region.contains(flat[rows])
        return inside.reshape(theta.shape[:-1])

    def describe(self) -> str:
        if len(self.regions) == 1:
            return self.regions[0].describe()
        return (
            f"intersection of {len(self.regions)} regions, the last {self.regions[-1].describe()}"
        )


def _check_epsilon(epsilon: float) -> None:
    if not 0 <= epsilon < 1:
        raise ConfigError(
            f"epsilon is the posterior mass left outside the region, in [0, 1); got {epsilon}."
        )


def _log_prob(posterior: Any, theta: Tensor, x_o: Tensor) -> Tensor:
    # norm_posterior=False (sbi's name) skips a per-x Monte-Carlo constant that a threshold
    # does not need; posteriors without the option are asked without it.
    try:
        return posterior.log_prob(theta, x=x_o, norm_posterior=False)
    except (TypeError, ConfigError):
        return posterior.log_prob(theta, x=x_o)


def has_density(posterior: Any, x_o: Tensor, probe: Tensor) -> bool:
    """Whether ``posterior.log_prob`` works at ``x_o`` (False for sample-only families)."""
    try:
        _log_prob(posterior, probe[:2], x_o)
    except NoDensityError:
        return False
    return True


def posterior_region(
    posterior: Any,
    x_o: Tensor,
    epsilon: float = EPSILON,
    num_draws: int = REGION_DRAWS,
    seed: int = 0,
    kind: str = "auto",
    draws: Tensor | None = None,
) -> tuple[Region, Tensor]:
    """The region of ``posterior`` at ``x_o`` and the draws it was built from.

    ``kind``: ``"hpd"`` (needs a density), ``"ellipsoid"``, or ``"auto"`` (HPD when the
    posterior has a density, else the ellipsoid).
    """
    if kind not in ("auto", "hpd", "ellipsoid"):
        raise ConfigError(f"region must be 'auto', 'hpd' or 'ellipsoid', got {kind!r}.")
    if draws is None:
        draws = _seeded(seed, lambda: posterior.sample((int(num_draws),), x=x_o))
    dense = has_density(posterior, x_o, draws)
    if kind == "hpd" and not dense:
        raise NoDensityError(
            "region='hpd' needs a posterior with log_prob; this one is sample-only. Use "
            "region='ellipsoid' (or 'auto')."
        )
    if kind == "ellipsoid" or not dense:
        return EllipsoidRegion(draws, epsilon), draws
    return HPDRegion(posterior, x_o, epsilon, draws=draws), draws


class _RegionConstraint(constraints.Constraint):
    """The prior's support intersected with a region."""

    event_dim = 1

    def __init__(self, prior: Distribution, region: Region):
        self.prior, self.region = prior, region

    def check(self, value: Tensor) -> Tensor:
        return in_support(self.prior, value) & self.region.contains(value)


class TruncatedPrior(Distribution):
    """The prior restricted to ``region`` (see the module docstring).

    Args:
        prior: The prior.
        region: A :class:`Region`.
        proposal_draws: Posterior draws for SIR's kernel proposal (used only when the
            region's prior mass is below ``min_acceptance``).
        num_mass_draws: Draws behind the estimate of the region's prior mass.
        min_acceptance: Below this mass, sample by SIR.
        seed: Seeds the mass estimate.

    Attributes:
        mass, mass_se: The region's prior mass and its standard error.
        acceptance: Share of prior draws accepted (the mass; for SIR, the estimate).
        method: ``"rejection"`` or ``"sir"``.
        ess: SIR's effective sample size share of the last call (None for rejection).

    Example:
        >>> region, _ = posterior_region(posterior, x_o)
        >>> proposal = TruncatedPrior(prior, region)
        >>> theta = proposal.sample((1000,))          # all inside the region
        >>> proposal.log_prob(theta)                  # log p - log Z
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        prior: Distribution,
        region: Region,
        proposal_draws: Tensor | None = None,
        num_mass_draws: int = MASS_DRAWS,
        min_acceptance: float = MIN_ACCEPTANCE,
        seed: int = 0,
    ):
        self.prior, self.region = prior, region
        self.dim = prior_dim(prior)
        super().__init__(torch.Size(), torch.Size([self.dim]), validate_args=False)
        self.ess: float | None = None
        self._kernel = None
        theta = _seeded(seed, lambda: prior.sample((int(num_mass_draws),)).float())
        self.device = theta.device
        inside = self._inside(theta)
        k, n = int(inside.sum()), len(theta)
        self.mass, self.mass_se = k / n, math.sqrt(max(k, 1) / n * (1 - k / n) / n)
        self.method = "rejection"
        if self.mass < min_acceptance:
            if proposal_draws is None:
                if k == 0:
                    raise SupportError(
                        f"None of {n} prior draws fell in the region ({region.describe()}); "
                        "pass proposal_draws (posterior draws) to sample it by SIR."
                    )
            else:
                self.method = "sir"
                draws = proposal_draws.reshape(-1, self.dim).to(self.device, torch.float32)
                self._kernel = _Kernel(draws)
                self.mass, self.mass_se = _seeded(seed + 1, self._importance_mass, n)
        self.acceptance = self.mass

    def _inside(self, theta: Tensor) -> Tensor:
        return in_support(self.prior, theta) & self.region.contains(theta)

    @property
    def support(self) -> constraints.Constraint:
        return _RegionConstraint(self.prior, self.region)

    def _log_weights(self, theta: Tensor) -> Tensor:
        """:math:`\\log p(\\theta)\\mathbb 1_R(\\theta) - \\log g(\\theta)`."""
        log_p = self.prior.log_prob(theta)
        log_g = torch.logaddexp(
            math.log(1 - DEFENSIVE_WEIGHT) + self._kernel.log_prob(theta),
            math.log(DEFENSIVE_WEIGHT) + log_p,
        )
        log_w = log_p - log_g
        return torch.where(self._inside(theta) & torch.isfinite(log_w), log_w, -torch.inf)

    def _propose(self, n: int) -> Tensor:
        from_prior = torch.rand(n, device=self.device) < DEFENSIVE_WEIGHT
        theta = self._kernel.sample(n)
        m = int(from_prior.sum())
        if m:
            theta[from_prior] = self.prior.sample((m,)).float()
        return theta

    def _importance_mass(self, n: int) -> tuple[float, float]:
        w = self._log_weights(self._propose(n)).exp()
        return float(w.mean()), float(w.std() / math.sqrt(n))

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """``(*sample_shape, D)`` draws, all inside the region and the prior's support."""
        shape = torch.Size(sample_shape)
        n = shape.numel()
        draw = self._sample_sir if self.method == "sir" else self._sample_rejection
        return draw(n).reshape(*shape, self.dim)

    def _sample_rejection(self, n: int) -> Tensor:
        out, have, drawn, accepted = [], 0, 0, 0
        while have < n:
            rate = max(accepted / drawn if drawn else self.mass, MIN_ACCEPTANCE / 10)
            k = min(max(int(1.2 * (n - have) / rate) + 16, 64), 10 * _CHUNK)
            theta = self.prior.sample((k,)).float()
            keep = theta[self._inside(theta)]
            out.append(keep[: n - have])
            have, drawn, accepted = have + len(out[-1]), drawn + k, accepted + len(keep)
            if drawn > 1000 * max(n, 1) / MIN_ACCEPTANCE and have < n:
                raise SupportError(
                    f"Only {accepted} of {drawn} prior draws fell in the region "
                    f"({self.region.describe()}); pass proposal_draws to sample it by SIR."
                )
        return torch.cat(out) if out else self.prior.sample((0,)).float()

    def _sample_sir(self, n: int) -> Tensor:
        k = max(SIR_OVERSAMPLING * n, SIR_MIN_PROPOSALS)
        theta = self._propose(k)
        log_w = self._log_weights(theta)
        if not bool(torch.isfinite(log_w).any()):
            raise SupportError(
                f"No SIR proposal fell in the region ({self.region.describe()}); the posterior "
                "draws given as proposal_draws do not cover it."
            )
        w = (log_w - log_w.max()).exp()
        self.ess = float(w.sum() ** 2 / (w**2).sum() / k)
        return theta[torch.multinomial(w, n, replacement=True)]

    def log_prob(self, value: Tensor) -> Tensor:
        """:math:`\\log p(\\theta) - \\log \\hat Z` inside the region, ``-inf`` outside."""
        value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        log_p = self.prior.log_prob(value) - math.log(max(self.mass, 1e-300))
        return torch.where(self._inside(value), log_p, torch.full_like(log_p, -torch.inf))

    def describe(self) -> str:
        """One line: the region, its prior mass and how it is sampled."""
        return (
            f"truncated prior: {self.region.describe()}; prior mass {self.mass:.4g} "
            f"+- {self.mass_se:.2g}; sampled by {self.method}"
        )

    def __repr__(self) -> str:
        return f"TruncatedPrior({self.describe()})"


class _Kernel:
    """Gaussian kernel density on draws with covariance :math:`h^2 S` (SIR's proposal)."""

    def __init__(self, draws: Tensor, max_components: int = 1000):
        g = torch.Generator().manual_seed(0)
        if len(draws) > max_components:
            keep = torch.randperm(len(draws), generator=g)[:max_components]
            draws = draws[keep.to(draws.device)]
        m, d = draws.shape
        eye = torch.eye(d, dtype=draws.dtype, device=draws.device)
        cov = torch.cov(draws.T).reshape(d, d) if m > 1 else eye
        h = BANDWIDTH_FACTOR * m ** (-1.0 / (d + 4))
        cov = h**2 * cov + 1e-8 * eye
        self.centres, self.chol = draws, torch.linalg.cholesky(cov)
        self.log_norm = -0.5 * d * math.log(2 * math.pi) - self.chol.diagonal().log().sum()

    def sample(self, n: int) -> Tensor:
        device, dtype = self.centres.device, self.centres.dtype
        idx = torch.randint(len(self.centres), (n,), device=device)
        noise = torch.randn(n, len(self.chol), device=device, dtype=dtype)
        return self.centres[idx] + noise @ self.chol.T

    def log_prob(self, theta: Tensor) -> Tensor:
        out = []
        for i in range(0, len(theta), 2048):
            diff = theta[i : i + 2048, None, :] - self.centres[None]
            flat = diff.reshape(-1, diff.shape[-1]).T
            z = torch.linalg.solve_triangular(self.chol, flat, upper=False)
            d2 = (z.T**2).sum(-1).reshape(diff.shape[:2])
            out.append(torch.logsumexp(-0.5 * d2, -1) - math.log(len(self.centres)))
        return torch.cat(out) + self.log_norm
