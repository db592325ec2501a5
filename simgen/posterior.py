r"""Posteriors: one interface for every method (sbi's posterior interface).

``sample(sample_shape, x=...)``, ``sample_batched(sample_shape, x=xs)``, ``log_prob(theta,
x=...)``, ``map(x=...)``, ``to_arviz(x=...)``, ``save(path)``; ``simgen.load(path)`` reads it
back. :class:`Posterior` holds what every method shares (the prior, the observation's shape,
checks of x and θ, MAP, export); :class:`DirectPosterior` is NPE's, which samples and evaluates
its estimator directly.

**Support.** The estimator models :math:`u = T^{-1}(\theta)` with :math:`T` =
``biject_to(prior.support)`` (the identity for unbounded priors), so

.. math:: q(\theta \mid x) = q_u\big(T^{-1}(\theta) \mid x\big)\,
          \Big|\det \frac{\partial T^{-1}(\theta)}{\partial\theta}\Big|,

every sample :math:`T(u)` lies in the prior's support, and there is no leakage to correct.
``log_prob`` is ``-inf`` outside the support. This is ``support="transform"``.

With ``support="reject"`` (sbi's way) the estimator models :math:`\theta` itself; draws
outside the support are rejected, and the density is renormalised over the support,

.. math:: q(\theta \mid x) = \frac{q_\theta(\theta \mid x)}{Z(x)}, \qquad
          Z(x) = \Pr_{q_\theta(\cdot\mid x)}\big(\theta \in \operatorname{supp} p\big),

with :math:`Z(x)` a Monte-Carlo estimate from ``LEAKAGE_DRAWS`` draws (cached per x), so
``log_prob`` is then an estimate up to that constant. Which is better depends on the family:
a flow's tails map cleanly through a logit, while a flow-matching or diffusion field fitted
on 1,000 slcp simulations stays broad in logit space and piles mass against the box's faces
(C2ST over 8 seeds 0.952 with the transform, 0.932 with rejection;
``benchmarks/results_seeds.md``).
Each family states its default (``npe_support``). Posteriors compute and return tensors on
their estimator's device and dtype, the prior placed there (:mod:`simgen.devices`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, TransformedDistribution

from . import iid
from .devices import OnDevice
from .errors import (
    ConfigError,
    NoDensityError,
    NotFittedError,
    ShapeError,
    SupportError,
)
from .estimators.base import ConditionalEstimator, SampleOnlyEstimator
from .estimators.registry import from_spec
from .posterior_args import (
    SBI_PASSED_OPTIONS,
    as_tensor,
    check_map_options,
    check_options,
    check_seed,
    check_theta,
    checks_sample_shape,
    sample_shape_of,
)
from .prior_specs import prior_from_spec, prior_to_spec
from .priors import box_bounds, in_support
from .serialization import save_model
from .typicality import TRAINING_X_KEY, warn_if_atypical

__all__ = [
    "Posterior",
    "DirectPosterior",
    "as_tensor",
    "check_options",
    "sample_shape_of",
    "SBI_PASSED_OPTIONS",
]

_CHUNK = 100_000
#: Draws behind the Monte-Carlo acceptance :math:`Z(x)` of ``support="reject"``.
LEAKAGE_DRAWS = 10_000
#: ``support="reject"`` gives up when fewer than this share of draws land in the support.
MIN_ACCEPTANCE = 1e-3
#: How the estimator's space relates to the prior's support (see the module docstring).
SUPPORT_MODES = ("transform", "reject")


class Posterior(OnDevice, abc.ABC):
    """Shared machinery of every posterior over ``D`` parameters given ``x`` of ``x_shape``.

    Arguments are checked here for every subclass, by :mod:`simgen.posterior_args`:
    ``sample_shape`` by ``sample_shape_of`` (a subclass's ``sample`` and ``sample_batched``
    are wrapped to do so when the class is created), ``x`` by :meth:`_single_x` and
    :meth:`_batch_x` (shape, finiteness), ``theta`` by :meth:`_theta` (shape, finiteness).
    A method taking ``**options`` passes them to ``check_options(options, valid, where)``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("sample", "sample_batched"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__isabstractmethod__", False):
                setattr(cls, name, checks_sample_shape(method))

    def __init__(self, prior: Distribution, x_shape: Sequence[int], theta_dim: int):
        self.prior = prior
        self.x_shape = tuple(int(s) for s in x_shape)
        self.theta_dim = int(theta_dim)
        self._default_x: Tensor | None = None

    # -- observations -------------------------------------------------------------------
    def set_default_x(self, x: Any) -> Posterior:
        """Remember ``x`` as the observation used when ``x=`` is not given."""
        self._default_x = self._single_x(x)
        return self

    @property
    def default_x(self) -> Tensor | None:
        return self._default_x

    def _single_x(self, x: Any) -> Tensor:
        """One observation as ``(1, *x_shape)``, validated."""
        if x is None:
            if self._default_x is None:
                raise NotFittedError(
                    "No observation: pass x=x_o, or call posterior.set_default_x(x_o) once."
                )
            return self._default_x
        return iid.check_observation(self, x, batched=False)  # or n trials: (1, n, *x_shape)

    def _batch_x(self, x: Any) -> Tensor:
        """Several observations as ``(B, *x_shape)`` (or trial sets, :mod:`simgen.iid`)."""
        return iid.check_observation(self, x, batched=True)

    def _theta(self, theta: Any) -> Tensor:
        """Parameters ``(*, D)``, validated: finite real numbers, ``D`` last."""
        return check_theta(theta, self.theta_dim)

    # -- the interface ------------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, sample_shape: Sequence[int] = (), x: Any = None, **kwargs: Any) -> Tensor:
        """Draw ``(*sample_shape, D)`` samples from :math:`q(\\theta \\mid x)`."""

    @abc.abstractmethod
    def log_prob(self, theta: Any, x: Any = None, **kwargs: Any) -> Tensor:
        """:math:`\\log q(\\theta \\mid x)` for ``theta`` of shape ``(*, D)`` → ``(*)``."""

    @checks_sample_shape
    def sample_batched(self, sample_shape: Sequence[int], x: Any, **kwargs: Any) -> Tensor:
        """``(*sample_shape, B, D)`` samples for ``B`` observations ``x`` (``(B, *x_shape)``)."""
        xs = self._batch_x(x)
        draws = [self.sample(sample_shape, x=xi, **kwargs) for xi in xs]
        return torch.stack(draws, dim=len(tuple(sample_shape)))

    def map(
        self,
        x: Any = None,
        num_init: int = 1000,
        num_iter: int = 200,
        learning_rate: float = 0.05,
        show_progress_bars: bool = False,
    ) -> Tensor:
        """Maximum a posteriori estimate, ``(D,)``.

        Starts from the best of ``num_init`` posterior samples and follows gradient ascent
        on :math:`\\log q(\\theta \\mid x)` in the unconstrained space :math:`u = T^{-1}
        (\\theta)` (so the iterate never leaves the support), keeping the best point found.
        An estimator with a ``field_map`` method (``joint_transformer``) computes it instead.
        ``show_progress_bars`` is sbi's keyword, accepted and ignored.
        """
        check_map_options(num_init, num_iter, learning_rate)
        xo = self._single_x(x)
        field_map = getattr(self.estimator, "field_map", None)
        if field_map is not None:  # joint_transformer: denoising steps, no ODE gradient
            return field_map(self, self._home(xo), num_init, num_iter)
        with torch.no_grad():
            init = self.sample((num_init,), x=xo)
            logp = self.log_prob(init, x=xo)
            top = init[torch.topk(logp, k=min(10, num_init)).indices]
        u = self._transform.inv(top).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=learning_rate)
        best, best_val = top[0].detach(), float(logp.max())
        for _ in range(num_iter):
            theta = self._transform(u)
            value = self.log_prob(theta, x=xo)
            i = int(torch.argmax(value.detach()))
            if float(value[i].detach()) > best_val:
                best, best_val = theta[i].detach().clone(), float(value[i].detach())
            optimizer.zero_grad()
            (-value[torch.isfinite(value)].sum()).backward()
            optimizer.step()
        return best

    def to_arviz(self, x: Any = None, num_samples: int = 1000, **kwargs: Any) -> Any:
        """``arviz.InferenceData`` with posterior draws and the observed data."""
        from .arviz_export import to_inference_data

        xo = self._single_x(x)
        samples = self.sample((num_samples,), x=xo)
        return to_inference_data(samples.detach().cpu(), x_o=xo[0].cpu(), **kwargs)

    def _mask_support(self, theta: Tensor, logp: Tensor) -> Tensor:
        inside = in_support(self.placed.prior, theta)
        logp = torch.where(torch.isnan(logp), torch.full_like(logp, -torch.inf), logp)
        return torch.where(inside, logp, torch.full_like(logp, -torch.inf))

    # -- files ----------------------------------------------------------------------------
    #: The ``"posterior"`` field of saved specs (see ``serialization.POSTERIOR_KINDS``).
    kind: str = ""
    #: Set by every subclass: the trained network and the method name ("npe", "nle", ...).
    estimator: torch.nn.Module
    method: str
    #: A bounded sample of the training x (NPE keeps one), saved with the weights; ``sample``
    #: warns when x lies beyond all of it (:mod:`simgen.diagnostics.misspecification`).
    training_x: Tensor | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write the estimator's weights and a JSON spec (see :mod:`simgen.serialization`)."""
        history = getattr(self, "history", None)
        spec = {
            "posterior": self.kind,
            "method": self.method,
            "estimator": self.estimator.spec,
            "history": None if history is None else history.to_dict(),
            **self._extra_spec(),
            **self._base_spec(),
        }
        state = self.estimator.state_dict()
        if self.training_x is not None:
            state = {**state, TRAINING_X_KEY: self.training_x}
        save_model(path, spec, state)

    def _extra_spec(self) -> dict[str, Any]:
        """Fields a subclass adds to the saved spec (e.g. MCMC settings)."""
        return {}

    def _base_spec(self) -> dict[str, Any]:
        return {
            "x_shape": list(self.x_shape),
            "theta_dim": self.theta_dim,
            "prior": prior_to_spec(self.prior),
            "default_x": None if self._default_x is None else self._default_x.cpu().tolist(),
        }

    @staticmethod
    def _prior_from(spec: dict[str, Any], prior: Distribution | None) -> Distribution:
        if prior is not None:
            return prior
        if spec.get("prior") is None:
            raise NotFittedError(
                "This model's prior could not be stored in the file; pass it: "
                "simgen.load(path, prior=prior)."
            )
        return prior_from_spec(spec["prior"])


class DirectPosterior(Posterior):
    """NPE's posterior: samples and densities straight from :math:`q_\\phi(\\theta\\mid x)`.

    Args:
        estimator: Trained estimator over :math:`u = T^{-1}(\\theta)` given x
            (``support="transform"``) or over :math:`\\theta` (``support="reject"``).
        prior: The prior the simulations were drawn from.
        history: The training :class:`~simgen.training.History` (kept for reports).
        support: ``"transform"`` or ``"reject"``; see the module docstring.
    """

    kind = "direct"

    def __init__(
        self,
        estimator: ConditionalEstimator,
        prior: Distribution,
        history: Any = None,
        method: str = "npe",
        support: str = "transform",
    ):
        super().__init__(prior, estimator.context_shape, estimator.target_dim)
        if support not in SUPPORT_MODES:
            raise ConfigError(f"support must be one of {SUPPORT_MODES}, got {support!r}.")
        self.estimator = estimator.eval()
        self.history = history
        self.method = method
        self.support = support
        self._log_z: dict[bytes, Tensor] = {}

    def distribution(self, x: Any = None) -> Distribution:
        """:math:`q(\\theta \\mid x)` as a torch distribution (batch shape ``(1,)``)."""
        return self._dist(self._home(self._single_x(x)))

    def _dist(self, x: Tensor) -> Distribution:
        if self.support == "reject":
            return self.estimator(x)
        transform = self.placed.transform
        return TransformedDistribution(self.estimator(x), [transform], validate_args=False)

    def _extra_spec(self) -> dict[str, Any]:
        return {"support": self.support}

    @torch.no_grad()
    def sample(
        self,
        sample_shape: Sequence[int] = (),
        x: Any = None,
        seed: int | None = None,
        **options: Any,
    ) -> Tensor:
        """``(*sample_shape, D)`` samples for one observation, all inside the prior's support.

        ``seed`` makes the draws reproducible without touching torch's global generator.
        No other option is taken (sbi's ``show_progress_bars`` is accepted and ignored).
        """
        check_options(options, (), "DirectPosterior.sample")
        check_seed(seed)
        xo = self._single_x(x)
        warn_if_atypical(self, xo)
        return self._draw(tuple(sample_shape), self._home(xo), seed)[..., 0, :]

    @torch.no_grad()
    def sample_batched(
        self,
        sample_shape: Sequence[int],
        x: Any,
        seed: int | None = None,
        **options: Any,
    ) -> Tensor:
        """``(*sample_shape, B, D)`` samples for ``B`` observations in one vectorised pass
        (``seed`` and options as in :meth:`sample`)."""
        check_options(options, (), "DirectPosterior.sample_batched")
        check_seed(seed)
        xs = self._home(self._batch_x(x))
        n = int(np.prod(tuple(sample_shape))) if len(tuple(sample_shape)) else 1
        per_chunk = max(1, _CHUNK // max(len(xs), 1))
        if n <= per_chunk:
            return self._draw(tuple(sample_shape), xs, seed)
        out = []
        for i, start in enumerate(range(0, n, per_chunk)):
            size = min(per_chunk, n - start)
            out.append(self._draw((size,), xs, None if seed is None else seed + i))
        return torch.cat(out).reshape(*sample_shape, len(xs), self.theta_dim)

    def _draw(self, sample_shape: tuple[int, ...], x: Tensor, seed: int | None) -> Tensor:
        """``(*sample_shape, B, D)`` draws of θ for the ``B`` observations ``x``."""
        num = int(np.prod(sample_shape)) if sample_shape else 1
        draw = self._draw_rejected if self.support == "reject" else self.estimator.draw
        if seed is None:
            u = draw(num, x)
        else:
            with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
                torch.manual_seed(seed)
                u = draw(num, x)
        if self.support == "reject":
            return u.reshape(*sample_shape, *u.shape[1:])
        theta = self.placed.transform(u)
        return self._clamp_into_support(theta).reshape(*sample_shape, *theta.shape[1:])

    def _draw_rejected(self, num: int, x: Tensor) -> Tensor:
        """``(num, B, D)`` draws of the estimator that lie in the prior's support.

        Draws in rounds sized by the acceptance seen so far; raises :class:`SupportError`
        when under :data:`MIN_ACCEPTANCE` of at least ``LEAKAGE_DRAWS`` draws are accepted.
        """
        out = x.new_empty(num, len(x), self.theta_dim)
        filled = [0] * len(x)
        drawn, accepted = 0, 0
        while min(filled) < num:
            need = num - min(filled)
            rate = max(accepted / drawn, MIN_ACCEPTANCE) if drawn else 1.0
            # At most ~_CHUNK rows a round, whatever the number of observations.
            k = min(max(int(1.1 * need / rate) + 16, 64), max(_CHUNK // len(x), 64))
            theta = self.estimator.draw(k, x)
            inside = in_support(self.placed.prior, theta)
            drawn, accepted = drawn + k * len(x), accepted + int(inside.sum())
            for b in range(len(x)):
                rows = theta[inside[:, b], b][: num - filled[b]]
                out[filled[b] : filled[b] + len(rows), b] = rows
                filled[b] += len(rows)
            if drawn >= LEAKAGE_DRAWS and min(filled) < num and accepted < MIN_ACCEPTANCE * drawn:
                raise SupportError(
                    f"Only {accepted} of {drawn} posterior draws fell inside the prior's "
                    "support, too few to reject from. Train with NPE(..., "
                    "support='transform'), which samples inside the support by construction."
                )
        return out

    def _log_acceptance(self, x: Tensor) -> Tensor:
        """:math:`\\log Z(x)` per observation, ``(B,)``, for ``support="reject"``: the share of
        :data:`LEAKAGE_DRAWS` seeded draws inside the support, cached per observation."""
        keys = [xi.detach().cpu().numpy().tobytes() for xi in x]
        missing = [i for i, key in enumerate(keys) if key not in self._log_z]
        if missing:
            devices = [] if x.device.type == "cpu" else [x.device]
            per_round = max(1, 10 * _CHUNK // LEAKAGE_DRAWS)  # observations a round
            for start in range(0, len(missing), per_round):
                part = missing[start : start + per_round]
                with torch.no_grad(), torch.random.fork_rng(devices=devices):
                    torch.manual_seed(0)
                    theta = self.estimator.draw(LEAKAGE_DRAWS, x[part])
                    inside = in_support(self.placed.prior, theta)
                    share = inside.float().mean(0).clamp_min(1.0 / LEAKAGE_DRAWS)
                for i, value in zip(part, share.log()):
                    self._log_z[keys[i]] = value.to(x.device)
        return torch.stack([self._log_z[key].to(x) for key in keys])

    def _clamp_into_support(self, theta: Tensor) -> Tensor:
        # A sigmoid saturating in float32 can land exactly on a bound; nudge it inside.
        low, high = box_bounds(self.placed.prior)
        if low is None:
            return theta
        low, high = low.to(theta), high.to(theta)
        eps = 1e-6 * (high - low)
        return torch.minimum(torch.maximum(theta, low + eps), high - eps)

    def log_prob(
        self, theta: Any, x: Any = None, norm_posterior: bool = True, **options: Any
    ) -> Tensor:
        """:math:`\\log q(\\theta \\mid x)`, normalised over the support; ``-inf`` outside it.

        ``norm_posterior=False`` (sbi's name) skips the Monte-Carlo :math:`Z(x)` of
        ``support="reject"``: a constant per x, irrelevant to ranking (coverage passes it).
        No other option is taken (sbi's ``show_progress_bars`` is accepted and ignored).
        """
        check_options(options, (), "DirectPosterior.log_prob")
        if isinstance(self.estimator, SampleOnlyEstimator):
            raise NoDensityError(
                f"The {self.estimator.name!r} estimator is sample-only and has no density. "
                "Use a family with one: 'nsf', 'maf', 'realnvp', 'flow_matching', "
                "'diffusion' (or 'vae' for an estimate)."
            )
        theta = self._home(self._theta(theta))
        xo = self._home(self._single_x(x))
        # Differentiable in theta when theta requires grad (MAP, HMC); otherwise no graph is
        # built and the result never requires grad, whatever the family.
        with torch.set_grad_enabled(theta.requires_grad):
            logp = self._dist(xo).log_prob(theta[..., None, :])[..., 0]
        if self.support == "reject" and norm_posterior:
            logp = logp - self._log_acceptance(xo)[0]
        return self._mask_support(theta, logp)

    def log_prob_batched(
        self, theta: Any, x: Any, norm_posterior: bool = True, **options: Any
    ) -> Tensor:
        """``theta`` ``(*, B, D)`` against ``B`` observations ``x`` → ``(*, B)``
        (``norm_posterior`` and options as in :meth:`log_prob`)."""
        check_options(options, (), "DirectPosterior.log_prob_batched")
        theta = self._home(self._theta(theta))
        xs = self._home(self._batch_x(x))
        if theta.ndim < 2 or theta.shape[-2] not in (1, len(xs)):
            raise ShapeError(
                f"theta has shape {tuple(theta.shape)} for {len(xs)} observations; "
                f"log_prob_batched needs theta of shape (*, {len(xs)}, {self.theta_dim}) "
                f"(or (*, 1, {self.theta_dim}) for the same θ under every observation)."
            )
        theta = theta.expand(*theta.shape[:-2], len(xs), self.theta_dim)
        with torch.set_grad_enabled(theta.requires_grad):
            logp = self._dist(xs).log_prob(theta)
        if self.support == "reject" and norm_posterior:
            logp = logp - self._log_acceptance(xs)
        return self._mask_support(theta, logp)

    @classmethod
    def _from_file(
        cls,
        spec: dict[str, Any],
        state: dict[str, Tensor],
        prior: Any = None,
        embedding_net: Any = None,
        device: str = "cpu",
    ) -> DirectPosterior:
        estimator = from_spec(spec["estimator"], embedding_net)
        state = dict(state)
        training_x = state.pop(TRAINING_X_KEY, None)
        estimator.load_state_dict(state)
        posterior = cls(
            estimator.to(device),
            cls._prior_from(spec, prior),
            method=spec.get("method", "npe"),
            support=spec.get("support", "transform"),
        )
        posterior.training_x = training_x
        if spec.get("default_x") is not None:
            posterior.set_default_x(torch.tensor(spec["default_x"]))
        return posterior

    def __repr__(self) -> str:
        return (
            f"DirectPosterior(method={self.method!r}, estimator={self.estimator.name!r}, "
            f"theta_dim={self.theta_dim}, x_shape={self.x_shape})"
        )
