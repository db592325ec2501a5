r"""The whole joint model: posterior, likelihood and any conditional from one network.

``Joint(prior).fit(theta, x)`` trains :class:`~simgen.estimators.joint_transformer.
JointTransformer` (through :class:`~simgen.NPE`, so training, defaults and support handling
are NPE's) on random condition patterns, after which

* :meth:`Joint.posterior` is the NPE posterior :math:`q(\theta\mid x)` (the usual
  interface; x must be complete);
* :meth:`Joint.likelihood` is a surrogate simulator :math:`q(x\mid\theta)`
  (``.sample(theta)``, ``.log_prob(x, theta)``);
* :meth:`Joint.conditional` is :math:`q(\theta_K \mid x_O)` for a subset :math:`O` of x's
  entries (a mask, or NaN at the others) and a subset :math:`K` of θ's: the other x and θ
  entries are marginalised, i.e. absent from the network, so its density is that of the
  marginal, not an estimate of an integral.

Densities are in θ's own coordinates: the z-scoring's Jacobian is added, and under
``support="transform"`` (modelling :math:`u = T^{-1}(\theta)`) the conditionals and the
likelihood map θ through :math:`T^{-1}`; the conditionals' densities then need an
elementwise :math:`T` (a box), whose Jacobian is per entry. Conditional draws are the
model's, not filtered to the prior's support.

**Devices.** Every route computes at the estimator's device and dtype
(:mod:`simgen.devices`): θ, x and masks given anywhere are moved there, :math:`T` is the
posterior's placed bijection, and every tensor returned lives there.

**Cost.** A network call costs :math:`O(L(T^2 W + T W^2))` per row in the token count
:math:`T` (:mod:`simgen.estimators._tokens`); at the CPU sizes of the benchmarks the
per-token MLP dominates, so training CPU time per epoch grows about linearly in :math:`T`
(``benchmarks/results_joint.md``, "cost per token").
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from .devices import home, to_home
from .errors import ConfigError, ShapeError
from .posterior import DirectPosterior
from .posterior_args import check_seed, sample_shape_of
from .priors import support_transform
from .training import TrainConfig

if TYPE_CHECKING:  # the family module loads through the registry, not at import
    from .estimators.joint_transformer import JointTransformer

__all__ = ["Joint", "JointConditional", "JointLikelihood"]


def _tensor(value: Any, name: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{name} must be a tensor or array of numbers ({exc}).") from exc


class Joint:
    """The joint model of (θ, x); see the module docstring.

    Args:
        prior: The prior θ was drawn from.
        support: As :class:`~simgen.NPE`'s (``None``: the family's ``"reject"``).
        **estimator_options: Options of ``"joint_transformer"`` (``width``, ``layers``,
            ``heads``, ``x_token_size``, ``x_blocks`` (the dependency mask of x's
            conditionally independent blocks), ``mask_weights``, ``steps``, ...).

    Example:
        >>> joint = Joint(prior).fit(theta, x)
        >>> joint.posterior().sample((1000,), x=x_o)
        >>> joint.conditional(observed=mask).sample((1000,), x=x_o)  # θ given x[mask]
    """

    def __init__(self, prior: Distribution, support: str | None = None, **estimator_options: Any):
        from .inference import NPE

        self.prior = prior
        self._npe = NPE(prior, estimator="joint_transformer", support=support, **estimator_options)
        self._posterior: DirectPosterior | None = None

    @classmethod
    def from_posterior(cls, posterior: DirectPosterior) -> Joint:
        """The joint model behind a ``joint_transformer`` NPE posterior (e.g. one loaded)."""
        name = getattr(getattr(posterior, "estimator", None), "name", None)
        if not isinstance(posterior, DirectPosterior) or name != "joint_transformer":
            raise ConfigError(
                "Joint.from_posterior needs a posterior of NPE(estimator='joint_transformer')."
            )
        joint = cls(posterior.prior, support=posterior.support)
        joint._posterior = posterior
        return joint

    @classmethod
    def load(cls, path: str | os.PathLike, prior: Distribution | None = None) -> Joint:
        """Read a file written by :meth:`save` (or by the posterior's ``save``)."""
        from .serialization import load

        return cls.from_posterior(load(path, prior=prior))

    def fit(self, theta: Any, x: Any, config: TrainConfig | None = None, **options: Any) -> Joint:
        """Train on simulations ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` (complete);
        ``config``/``options`` as :meth:`simgen.NPE.fit`. Returns ``self``."""
        self._posterior = self._npe.fit(theta, x, config, **options)
        return self

    @property
    def history(self) -> Any:
        return self.posterior().history

    def posterior(self) -> DirectPosterior:
        """:math:`q(\\theta\\mid x)`, the NPE posterior."""
        if self._posterior is None:
            from .errors import NotFittedError

            raise NotFittedError("Joint is not fitted; call .fit(theta, x) first.")
        return self._posterior

    @property
    def estimator(self) -> JointTransformer:
        return self.posterior().estimator

    def save(self, path: str | os.PathLike) -> None:
        """Write the model (the posterior's file; :meth:`load` reads it back)."""
        self.posterior().save(path)

    def likelihood(self) -> JointLikelihood:
        """The surrogate simulator :math:`q(x\\mid\\theta)`."""
        return JointLikelihood(self)

    def conditional(
        self, observed: Any = None, theta: Sequence[int] | None = None
    ) -> JointConditional:
        """:math:`q(\\theta_K\\mid x_O)`.

        Args:
            observed: Boolean mask of x's shape, True where x is given; ``None`` takes it
                from each call's x (NaN = missing).
            theta: Indices :math:`K` of the θ entries wanted (default all); the rest are
                marginalised.
        """
        return JointConditional(self, observed, theta)

    def _u(self, theta: Tensor) -> Tensor:
        post = self.posterior()
        return theta if post.support == "reject" else post.placed.transform.inv(theta)

    def _home(self, value: Tensor) -> Tensor:
        """``value`` at the estimator's device and dtype."""
        return to_home(value, home(self.estimator))


@contextmanager
def _seeded(device: torch.device, seed: int | None) -> Iterator[None]:
    """A forked random state (the CPU's and ``device``'s), seeded when ``seed`` is given."""
    check_seed(seed)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


class JointLikelihood:
    """:math:`q(x\\mid\\theta)` of a :class:`Joint`: ``sample(theta)``, ``log_prob(x, theta)``."""

    def __init__(self, joint: Joint):
        self.joint = joint
        self.estimator = joint.estimator

    def _theta(self, theta: Any) -> Tensor:
        theta = self.joint._home(_tensor(theta, "theta"))
        d = self.estimator.target_dim
        if theta.ndim != 2 or theta.shape[1] != d:
            raise ShapeError(f"theta has shape {tuple(theta.shape)}; expected (N, {d}).")
        if not torch.isfinite(theta).all():
            raise ShapeError("theta has NaN or infinite entries; pass finite parameters.")
        return self.joint._u(theta)

    def sample(self, theta: Any, seed: int | None = None) -> Tensor:
        """One x per row of ``theta`` ``(N, D)``: ``(N, *x_shape)``."""
        est, u = self.estimator, self._theta(theta)
        x0 = u.new_zeros(len(u), *est.context_shape)
        values = est.joint_standard(u, x0)
        with _seeded(u.device, seed):
            z = est.sample_pattern(values, est.pattern("observed", "free"))
        x = z[:, est.target_dim :].reshape(len(u), *est.context_shape)
        return est.context_standardizer.inverse(x)

    def __call__(self, theta: Any, seed: int | None = None) -> Tensor:
        return self.sample(theta, seed)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        """:math:`\\log q(x\\mid\\theta)` ``(N,)`` for matching rows."""
        est, u = self.estimator, self._theta(theta)
        x = self.joint._home(_tensor(x, "x"))
        if x.shape != (len(u), *est.context_shape) or not torch.isfinite(x).all():
            raise ShapeError(
                f"x must be finite with shape {(len(u), *est.context_shape)}, got {tuple(x.shape)}."
            )
        values = est.joint_standard(u, x)
        with torch.no_grad():
            logp = est.log_prob_pattern(values, est.pattern("observed", "free"))
        return logp - est.context_standardizer.scale.log().sum()


class JointConditional:
    """:math:`q(\\theta_K\\mid x_O)` of a :class:`Joint`; see :meth:`Joint.conditional`."""

    def __init__(self, joint: Joint, observed: Any, theta: Sequence[int] | None):
        self.joint = joint
        est = self.estimator = joint.estimator
        d = est.target_dim
        keep = list(range(d)) if theta is None else [int(i) for i in theta]
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < d for i in keep):
            raise ConfigError(f"theta must list distinct indices in [0, {d}), got {theta!r}.")
        self.keep = sorted(keep)
        if len(self.keep) < d and joint.posterior().support == "transform":
            self._check_elementwise()
        self.observed = None if observed is None else self._mask(observed)

    def _check_elementwise(self) -> None:
        transform = support_transform(self.joint.prior)
        if transform.event_dim != 0 and not hasattr(transform, "base_transform"):
            raise ConfigError(
                "A marginal over some theta entries under support='transform' needs an "
                "elementwise support transform (a box prior); fit with support='reject'."
            )

    def _mask(self, observed: Any) -> Tensor:
        mask = torch.as_tensor(observed).to(home(self.estimator)[0])
        if mask.dtype != torch.bool or tuple(mask.shape) != self.estimator.context_shape:
            raise ShapeError(
                f"observed must be a boolean mask of x's shape {self.estimator.context_shape}, "
                f"got {mask.dtype} of shape {tuple(mask.shape)}."
            )
        return mask

    def _states_values(self, x: Any) -> tuple[Tensor, Tensor]:
        """The token states and the z-scored x entries for one observation."""
        est = self.estimator
        x = self.joint._home(_tensor(x, "x"))
        if tuple(x.shape) != est.context_shape:
            raise ShapeError(
                f"x has shape {tuple(x.shape)}; a conditional takes one x of shape "
                f"{est.context_shape} (NaN where missing)."
            )
        mask = ~torch.isnan(x) if self.observed is None else self.observed
        flat_mask, flat = mask.reshape(-1), x.reshape(-1)
        if not torch.isfinite(flat[flat_mask]).all():
            raise ShapeError("x has NaN or infinite entries where the mask says it is observed.")
        g = est.net.g
        groups = flat_mask.reshape(-1, g)
        if not (groups.all(-1) | ~groups.any(-1)).all():
            raise ShapeError(
                f"With x_token_size={g}, each group of {g} x entries must be observed or "
                "missing as a whole."
            )
        states = est.pattern("absent", "absent")
        states[est.target_dim :] = torch.where(groups.all(-1), 2, 0)
        states[self.keep] = 1
        filled = torch.where(flat_mask, flat, torch.zeros_like(flat)).reshape(est.context_shape)
        return states, est.context_standardizer(filled).reshape(-1)

    def _scale(self) -> Tensor:
        return self.estimator.target_standardizer.scale[self.keep]

    def sample(
        self, sample_shape: Sequence[int] = (), x: Any = None, seed: int | None = None
    ) -> Tensor:
        """Draws ``(*sample_shape, K)`` of the kept θ entries given one x (``x_shape``)."""
        shape = sample_shape_of(sample_shape)
        est = self.estimator
        states, xs = self._states_values(x)
        num = int(torch.Size(shape).numel())
        values = torch.cat([xs.new_zeros(num, est.target_dim), xs.expand(num, -1)], dim=1)
        with _seeded(xs.device, seed):
            z = est.sample_pattern(values, states)
        std = est.target_standardizer
        u = (z[:, : est.target_dim] * std.scale + std.loc)[:, self.keep]
        return self._to_theta(u).reshape(*shape, len(self.keep))

    def _to_theta(self, u: Tensor) -> Tensor:
        if self.joint.posterior().support == "reject":
            return u
        full = u.new_zeros(len(u), self.estimator.target_dim)
        full[:, self.keep] = u
        return self.joint.posterior().placed.transform(full)[:, self.keep]

    def log_prob(self, theta: Any, x: Any = None) -> Tensor:
        """:math:`\\log q(\\theta_K\\mid x_O)` for rows ``(*, K)`` of the kept entries."""
        est, k = self.estimator, len(self.keep)
        theta = self.joint._home(_tensor(theta, "theta"))
        if theta.ndim < 1 or theta.shape[-1] != k or not torch.isfinite(theta).all():
            raise ShapeError(f"theta must be finite with last axis {k}, got {tuple(theta.shape)}.")
        states, xs = self._states_values(x)
        rows = theta.reshape(-1, k)
        full = rows.new_zeros(len(rows), est.target_dim)
        full[:, self.keep] = rows
        log_det = rows.new_zeros(len(rows))
        if self.joint.posterior().support == "transform":
            transform = self.joint.posterior().placed.transform
            u = transform.inv(full)
            jac = transform.inv.log_abs_det_jacobian(full, u)
            log_det = jac[:, self.keep].sum(-1) if jac.ndim == 2 else jac
            full = u
        std = est.target_standardizer
        values = torch.cat([std(full), xs.expand(len(rows), -1)], dim=1)
        with torch.no_grad():
            logp = est.log_prob_pattern(values, states)
        return (logp - self._scale().log().sum() + log_det).reshape(theta.shape[:-1])
