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
* ``"hmc"``: Hamiltonian Monte Carlo (Neal, 2011), vectorised over chains. In whitened
  coordinates :math:`u = Lz` (:math:`LL^\top = \hat\Sigma`, the dense mass matrix estimated
  in warm-up), draw :math:`p \sim \mathcal N(0, I)`, run ``num_steps`` leapfrog steps

  .. math:: p \leftarrow p + \tfrac{\epsilon}{2} L^\top \nabla \log\pi(u),\quad
            u \leftarrow u + \epsilon L p,\quad
            p \leftarrow p + \tfrac{\epsilon}{2} L^\top \nabla \log\pi(u)

  and accept with probability :math:`\min(1, e^{-H' + H})`,
  :math:`H = -\log\pi(u) + \tfrac12 |p|^2`. The step size is tuned in warm-up by dual
  averaging (Hoffman & Gelman, 2014) to a mean acceptance probability of 0.8, per observation,
  then frozen; it is jittered by ±20 % per step to avoid periodic trajectories. Needs a
  differentiable potential.
* ``"nuts"``: the No-U-Turn sampler of pyro (``pyro.infer.NUTS`` with a ``potential_fn`` over
  the same unconstrained space; step size and diagonal mass matrix adapted by pyro in
  warm-up). Pyro runs one chain at a time, so this is the reference sampler rather than the
  fast one: use few chains (e.g. ``num_chains=4``).

**Support.** Given a prior with support bijection :math:`T` (:func:`simgen.priors.support_
transform`), :class:`~simgen.mcmc_posterior.MCMCPosterior` samples
:math:`\pi_u(u) = \pi(T(u))\,|\det J_T(u)|` on :math:`\mathbb R^D`, so no chain ever leaves
the support.

**Convergence.** The split-:math:`\hat R` and bulk effective sample size are computed by
arviz over the chains; :class:`~simgen.errors.ConvergenceWarning` is raised (as a warning)
when the worst :math:`\hat R` exceeds ``rhat_threshold`` (default 1.1, the usual
threshold for the short chains run here; 1.01 is the strict one for long runs). A batched
run over many observations (``sample_batched``, as SBC does) warns when more than 5% of the
observations are above the threshold or any is above it by 0.2: with short chains a few honest
R-hats out of hundreds exceed 1.1 by chance. The count is in ``extra["unconverged_observations"]``.
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

__all__ = [
    "MCMCResult",
    "SliceSampler",
    "RandomWalkMetropolis",
    "HamiltonianMonteCarlo",
    "run_mcmc",
    "diagnose",
]

Potential = Callable[[Tensor], Tensor]
METHODS = ("slice", "rwm", "hmc", "nuts")


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


def _nan_error(value: Tensor, u: Tensor) -> MCMCError:
    bad = torch.isnan(value)
    return MCMCError(
        f"The potential returned NaN for {int(bad.sum())} of {value.numel()} chains (first "
        f"bad point: {u[bad][0].tolist()}). Return -inf outside the density's support, and "
        "check the estimator was trained on finite data."
    )


def _evaluate_with_grad(potential: Potential, u: Tensor) -> tuple[Tensor, Tensor]:
    """Potential and its gradient at finite ``u``; the gradient is 0 where the value is ±inf."""
    with torch.enable_grad():
        v = u.detach().requires_grad_(True)
        value = potential(v)
        if not value.requires_grad:
            raise ConfigError(
                "method='hmc'/'nuts' needs a potential differentiable by torch (no torch.no_grad,"
                " numpy or .detach() inside it); use method='rwm' or 'slice' otherwise."
            )
        (grad,) = torch.autograd.grad(value.sum(), v)
    value = value.detach()
    if bool(torch.isnan(value).any()):
        raise _nan_error(value, u)
    grad = torch.where(torch.isfinite(value)[..., None], grad, torch.zeros_like(grad))
    return value, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def _batched_cov(positions: Tensor) -> Tensor:
    """Regularised covariance per batch element: ``(chains, T, *batch, D) -> (*batch, D, D)``.

    :math:`\\hat\\Sigma = \\frac{n}{n+5} S + 10^{-3}\\frac{5}{n+5} I` (Stan's shrinkage), with
    :math:`S` the sample covariance of the :math:`n` pooled chain states.
    """
    d = positions.shape[-1]
    batch = positions.shape[2:-1]
    flat = positions.reshape(-1, math.prod(batch), d).double()
    n = flat.shape[0]
    centred = flat - flat.mean(0)
    cov = torch.einsum("nbi,nbj->bij", centred, centred) / max(n - 1, 1)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    cov = n / (n + 5.0) * cov + 1e-3 * 5.0 / (n + 5.0) * eye
    return cov.reshape(*batch, d, d)


def _mv(matrix: Tensor, vector: Tensor) -> Tensor:
    """``matrix (*batch, D, D) @ vector (chains, *batch, D)`` → ``(chains, *batch, D)``."""
    return (matrix @ vector[..., None])[..., 0]


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


@dataclass
class _State:
    position: Tensor  # (*batch, D)
    log_density: Tensor  # (*batch)
    grad: Tensor | None = None  # (*batch, D), HMC only


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
        """Warm-up: proposal covariance :math:`2.38^2/D\\,\\hat\\Sigma` per observation.

        ``positions`` is ``(chains, T, *batch, D)``; each batch element (observation) gets the
        covariance of its own chains.
        """
        d = positions.shape[-1]
        chol = torch.linalg.cholesky(_batched_cov(positions) * 2.38**2 / d)
        self.chol = chol.to(positions.dtype)

    def step(self, state: _State, generator: torch.Generator | None) -> tuple[_State, dict]:
        u, lp = state.position, state.log_density
        noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        proposal = u + _mv(self.chol, noise)
        prop_lp = _evaluate(self.potential, proposal)
        log_ratio = torch.nan_to_num(prop_lp - lp, nan=-math.inf)
        accept = torch.log(_uniform(lp.shape, lp, generator)) < log_ratio
        u = torch.where(accept[..., None], proposal, u)
        lp = torch.where(accept, prop_lp, lp)
        return _State(u, lp), {"acceptance_rate": accept.float(), "evaluations": 1}


class HamiltonianMonteCarlo:
    """Vectorised HMC with a dense mass matrix and dual-averaging step size (module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, differentiable by torch.
        step_size: Initial leapfrog step in whitened coordinates (tuned in warm-up).
        num_steps: Leapfrog steps per transition.
        target_accept: Mean acceptance probability the warm-up tunes the step size to.
    """

    def __init__(
        self,
        potential: Potential,
        step_size: float = 0.5,
        num_steps: int = 8,
        target_accept: float = 0.8,
    ):
        self.potential = potential
        self.step_size = step_size
        self.num_steps = num_steps
        self.target_accept = target_accept
        self.chol: Tensor | None = None
        self.log_eps: Tensor | None = None  # (*batch): one step size per observation
        self._dual: dict[str, Any] = {}

    def init(self, position: Tensor) -> _State:
        d = position.shape[-1]
        # Start from the chains' own spread (they are usually drawn near the posterior).
        spread = position.std(0) if position.shape[0] > 1 else torch.ones_like(position[0])
        spread = torch.nan_to_num(spread, nan=1.0).clamp(min=1e-3, max=1e3)
        self.chol = torch.diag_embed(spread)
        self.log_eps = torch.full(position.shape[1:-1], math.log(self.step_size / d**0.25))
        self.log_eps = self.log_eps.to(position)
        self._restart_dual_averaging()
        value, grad = _evaluate_with_grad(self.potential, position)
        return _State(position, value, grad)

    def _restart_dual_averaging(self) -> None:
        assert self.log_eps is not None
        self._dual = {
            "mu": self.log_eps + math.log(10.0),
            "hbar": torch.zeros_like(self.log_eps),
            "log_eps_bar": self.log_eps.clone(),
            "t": 0,
        }

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: mass matrix :math:`\\hat\\Sigma` per observation; restart step-size tuning."""
        self.chol = torch.linalg.cholesky(_batched_cov(positions)).to(positions.dtype)
        self._restart_dual_averaging()

    def tune(self, info: dict) -> None:
        """Warm-up: one dual-averaging update from the chains' mean acceptance probability.

        :math:`\\bar H_t = (1 - \\tfrac{1}{t+t_0})\\bar H_{t-1} + \\tfrac{\\delta - a_t}{t+t_0}`,
        :math:`\\log\\epsilon_t = \\mu - \\tfrac{\\sqrt t}{\\gamma}\\bar H_t`, and the averaged
        :math:`\\log\\bar\\epsilon_t = t^{-\\kappa}\\log\\epsilon_t +
        (1 - t^{-\\kappa})\\log\\bar\\epsilon_{t-1}`, with :math:`\\gamma = 0.05, t_0 = 10,
        \\kappa = 0.75` (Hoffman & Gelman, 2014).
        """
        dual = self._dual
        dual["t"] += 1
        t = dual["t"]
        accept = info["accept_prob"].mean(0)  # over chains → (*batch)
        dual["hbar"] = (1 - 1 / (t + 10)) * dual["hbar"] + (self.target_accept - accept) / (t + 10)
        self.log_eps = dual["mu"] - math.sqrt(t) / 0.05 * dual["hbar"]
        w = t**-0.75
        dual["log_eps_bar"] = w * self.log_eps + (1 - w) * dual["log_eps_bar"]

    def end_warmup(self) -> None:
        """Freeze the step size at its dual-averaged value."""
        if self._dual.get("t", 0) > 0:
            self.log_eps = self._dual["log_eps_bar"]

    def step(self, state: _State, generator: torch.Generator | None) -> tuple[_State, dict]:
        assert self.chol is not None and self.log_eps is not None and state.grad is not None
        u0, lp0, g0 = state.position, state.log_density, state.grad
        chol_t = self.chol.transpose(-1, -2)
        jitter = 0.8 + 0.4 * _uniform(lp0.shape, lp0, generator)
        eps = (self.log_eps.exp() * jitter)[..., None]  # (chains, *batch, 1)
        p0 = torch.randn(u0.shape, generator=generator, dtype=u0.dtype, device=u0.device)
        u, g = u0, g0
        p = p0 + 0.5 * eps * _mv(chol_t, g)
        ok = torch.ones(lp0.shape, dtype=torch.bool, device=u0.device)
        lp = lp0
        h0 = -lp0 + 0.5 * (p0**2).sum(-1)
        for i in range(self.num_steps):
            u = u + eps * _mv(self.chol, p)
            ok &= torch.isfinite(u).all(-1)
            # A diverged chain is frozen at its start (and rejected below), so the potential is
            # never asked for points far out of the typical set.
            u = torch.where(ok[..., None], u, u0)
            lp, g = _evaluate_with_grad(self.potential, u)
            scale = 1.0 if i + 1 < self.num_steps else 0.5
            p = p + scale * eps * _mv(chol_t, g)
            # Divergence: energy error above 1000 (Stan's rule), or left the support.
            ok &= torch.isfinite(lp) & ((-lp + 0.5 * (p**2).sum(-1) - h0) < 1000.0)
        h1 = -lp + 0.5 * (p**2).sum(-1)
        log_ratio = torch.where(ok, h0 - h1, torch.full_like(h0, -math.inf))
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        accept = torch.log(_uniform(lp0.shape, lp0, generator)) < log_ratio
        new = _State(
            torch.where(accept[..., None], u, u0),
            torch.where(accept, lp, lp0),
            torch.where(accept[..., None], g, g0),
        )
        info = {
            "acceptance_rate": accept.float(),
            "accept_prob": log_ratio.clamp(max=0.0).exp(),
            "divergent": ~ok,
            "evaluations": self.num_steps,
        }
        return new, info


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
            **({"divergences": self.extra["divergences"]} if "divergences" in self.extra else {}),
        }

    def sample_stats(self) -> dict[str, np.ndarray]:
        """``(chains, draws)`` statistics for :func:`simgen.arviz_export.to_inference_data`."""
        lp = self.log_density
        lp = lp.reshape(lp.shape[0], lp.shape[1], -1).mean(-1)
        return {"lp": lp.cpu().numpy()}


def diagnose(samples: Tensor) -> tuple[float, float]:
    """Worst split-:math:`\\hat R` and smallest bulk ESS of ``(chains, draws, *, D)`` samples."""
    rhat, ess = _rhat_ess(samples)
    if rhat is None:
        return float("nan"), float("nan")
    return float(np.nanmax(rhat)), float(np.nanmin(ess))


def _rhat_ess(samples: Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Split-:math:`\\hat R` and bulk ESS per batch element and parameter, ``(*, D)``."""
    import arviz as az

    arr = samples.reshape(samples.shape[0], samples.shape[1], -1).double().cpu().numpy()
    if arr.shape[0] < 2 or arr.shape[1] < 4:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: "more chains than draws"
        data = az.convert_to_dataset({"theta": arr})
    shape = samples.shape[2:]
    rhat = az.rhat(data)["theta"].values.reshape(shape)
    ess = az.ess(data, method="bulk")["theta"].values.reshape(shape)
    return rhat, ess


def _unconverged(rhat: np.ndarray | None, threshold: float) -> tuple[int, int]:
    """``(k, B)``: how many of the ``B`` batch elements have a parameter with R-hat > threshold."""
    if rhat is None:
        return 0, 0
    per_element = np.nanmax(rhat.reshape(-1, rhat.shape[-1]), axis=-1)
    return int((per_element > threshold).sum()), len(per_element)


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
    sampler_options: dict[str, Any] | None = None,
) -> MCMCResult:
    """Run ``init.shape[0]`` chains (per batch element) on ``potential``.

    Args:
        potential: ``(chains, *batch, D) -> (chains, *batch)`` log-density up to a constant
            (``-inf`` where it is zero; NaN raises :class:`~simgen.errors.MCMCError`).
        init: ``(chains, *batch, D)`` starting points with finite potential.
        num_draws: Draws kept per chain (after thinning).
        warmup: Adaptation steps, discarded.
        thin: Keep every ``thin``-th step.
        method: ``"slice"``, ``"rwm"``, ``"hmc"`` or ``"nuts"`` (see the module docstring).
        seed: Seeds a private generator (``None``: torch's global one).
        rhat_threshold: Above it, a :class:`~simgen.errors.ConvergenceWarning` is issued.
        warn: Issue that warning (the result records ``rhat`` either way).
        sampler_options: Passed to the sampler, e.g. ``{"num_steps": 16}`` for ``"hmc"``,
            ``{"max_tree_depth": 8}`` for ``"nuts"`` (any ``pyro.infer.NUTS`` option).

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
    options = dict(sampler_options or {})
    start_value = _evaluate(potential, init)  # NaN raises MCMCError here
    if not bool(torch.isfinite(start_value).all()):
        raise MCMCError(
            "Some chains start where the potential is -inf or inf; start them inside the "
            "support, where the density is positive."
        )
    extra: dict[str, Any] = {"rhat_threshold": rhat_threshold}
    if method == "nuts":
        samples, log_density, acceptance, divergences = _run_nuts(
            potential, init, num_draws, warmup, thin, seed, options
        )
        extra["divergences"] = divergences
    else:
        samples, log_density, acceptance, extra_run = _run_vectorised(
            potential, init, num_draws, warmup, thin, method, generator, options
        )
        extra.update(extra_run)
    rhat_all, ess_all = _rhat_ess(samples)
    rhat, ess = float("nan"), float("nan")
    if rhat_all is not None:
        rhat, ess = float(np.nanmax(rhat_all)), float(np.nanmin(ess_all))
    above, elements = _unconverged(rhat_all, rhat_threshold)
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
    # One observation: any R-hat above the threshold. A batch of B observations: short
    # chains put a few of B honest R-hats above 1.1 by chance, so warn when more than
    # BATCH_RHAT_SHARE of them are, or any is far off (> threshold + 0.2). For reference,
    # i.i.d. draws in 4 chains x 25 put 1 of 200 observations above 1.1, the worst at 1.20.
    if (
        warn
        and elements
        and (
            (elements == 1 and above)
            or (
                elements > 1
                and (above > BATCH_RHAT_SHARE * elements or rhat > rhat_threshold + 0.2)
            )
        )
    ):
        where = f" for {above} of {elements} observations" if elements > 1 else ""
        warnings.warn(
            f"MCMC chains have not converged{where}: worst R-hat = {rhat:.3f} > "
            f"{rhat_threshold} (bulk ESS {ess:.0f}). Increase warmup= or num_chains=, use "
            f"thin=, or try method={'slice' if method == 'rwm' else 'rwm'!r}.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result


#: A batched run warns when more than this share of its observations has R-hat > threshold.
BATCH_RHAT_SHARE = 0.05

_SAMPLERS: dict[str, Any] = {
    "slice": SliceSampler,
    "rwm": RandomWalkMetropolis,
    "hmc": HamiltonianMonteCarlo,
}


def _run_vectorised(
    potential: Potential,
    init: Tensor,
    num_draws: int,
    warmup: int,
    thin: int,
    method: str,
    generator: torch.Generator | None,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor, float, dict[str, Any]]:
    """Warm-up (adaptation), then ``num_draws * thin`` steps of all chains at once."""
    try:
        sampler = _SAMPLERS[method](potential, **options)
    except TypeError as exc:
        raise ConfigError(f"MCMC: invalid sampler_options for {method!r}: {exc}.") from exc
    state = sampler.init(init)
    tunes = hasattr(sampler, "tune")
    history: list[Tensor] = []
    for i in range(warmup):
        state, info = sampler.step(state, generator)
        history.append(state.position)
        if tunes:
            sampler.tune(info)
        # Samplers with a tuned step size get the last 20 % of warm-up for that alone.
        last_adapt = 0.8 * warmup if tunes else warmup
        if ((i + 1) % max(warmup // 10, 1) == 0 or i + 1 == warmup) and i + 1 <= last_adapt:
            # Adapt on the recent half of warm-up, pooled over chains.
            sampler.adapt(torch.stack(history[len(history) // 2 :]).transpose(0, 1))
    if tunes:
        sampler.end_warmup()
    draws, lps, accept, divergent = [], [], [], 0
    for i in range(num_draws * thin):
        state, info = sampler.step(state, generator)
        accept.append(info["acceptance_rate"].float().mean())
        divergent += int(info.get("divergent", torch.zeros(())).sum())
        if (i + 1) % thin == 0:
            draws.append(state.position)
            lps.append(state.log_density)
    extra: dict[str, Any] = {}
    if method == "hmc":
        extra = {"divergences": divergent, "step_size": sampler.log_eps.exp().tolist()}
    acceptance = float(torch.stack(accept).mean())
    return torch.stack(draws, 1), torch.stack(lps, 1), acceptance, extra


def _run_nuts(
    potential: Potential,
    init: Tensor,
    num_draws: int,
    warmup: int,
    thin: int,
    seed: int | None,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor, float, int]:
    """pyro's NUTS, one chain per (chain, observation) pair, in turn.

    pyro's ``potential_fn`` is the potential *energy* :math:`-\\log\\pi(u)` of a dict of
    sites; the single site ``"u"`` is one chain's ``(D,)`` position. Other observations of the
    batch are held at their starting points (the potential is evaluated batch-wise).
    """
    from pyro.infer import MCMC, NUTS

    chains, batch, d = init.shape[0], init.shape[1:-1], init.shape[-1]
    nb = math.prod(batch)
    flat_init = init.reshape(chains, nb, d).detach()
    out = torch.empty(chains, num_draws, nb, d, dtype=init.dtype, device=init.device)
    accept, divergences = [], 0
    for c in range(chains):
        for b in range(nb):

            def energy(params: dict[str, Tensor], c: int = c, b: int = b) -> Tensor:
                full = flat_init[c : c + 1].clone()
                full[0, b] = params["u"]
                value = potential(full.reshape(1, *batch, d)).reshape(nb)[b]
                if bool(torch.isnan(value)):
                    raise _nan_error(value[None], params["u"][None].detach())
                return -value

            kernel = NUTS(potential_fn=energy, **{"target_accept_prob": 0.8, **options})
            last: list[dict[str, Any]] = [{}]

            def hook(kernel: Any, _params: Any, stage: str, _i: int, last: list = last) -> None:
                if stage == "Sample":  # the kernel's counters over the sampling phase
                    last[0] = dict(kernel.diagnostics())

            mcmc = MCMC(
                kernel,
                num_samples=num_draws * thin,
                warmup_steps=warmup,
                initial_params={"u": flat_init[c, b].clone()},
                disable_progbar=True,
                hook_fn=hook,
            )
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed * 100_003 + c * nb + b)
                mcmc.run()
            out[c, :, b] = mcmc.get_samples()["u"][thin - 1 :: thin].detach()
            diag = last[0]
            accept.append(float(diag["acceptance rate"]))
            divergences += len(diag["divergences"])
    samples = out.reshape(chains, num_draws, *batch, d)
    with torch.no_grad():
        log_density = torch.stack([potential(samples[:, j]) for j in range(num_draws)], 1)
    return samples, log_density, sum(accept) / len(accept), divergences
