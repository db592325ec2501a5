"""Priors: :class:`BoxUniform` and the checks that let any torch distribution serve as a prior.

A prior is any object with ``sample(sample_shape)`` and ``log_prob(theta)`` whose event shape
is ``(D,)``: a :class:`torch.distributions.Distribution` (``MultivariateNormal``,
``Independent(Normal)``, ...), a :class:`BoxUniform`, or one of sbi's priors (``BoxUniform``,
``MultipleIndependent``), all accepted unchanged.

The prior's ``support`` decides how simgen keeps samples inside it: estimators are trained on
:math:`u = T^{-1}(\\theta)` where :math:`T` = ``torch.distributions.biject_to(prior.support)``
maps :math:`\\mathbb{R}^D` onto the support, so every sample :math:`T(u)` lies in the support
and densities carry the exact change-of-variables term, with no rejection and no leakage.

**Devices.** A posterior computes on its estimator's device and floating dtype, and so must
its prior terms. The priors simgen knows (:class:`BoxUniform`, ``MultivariateNormal``,
``Independent`` over the families of :mod:`simgen.prior_specs`) are rebuilt there
(:func:`simgen.prior_specs.prior_on`), and with them their support bijection; any other
prior is wrapped in a :class:`RelocatedPrior`, which evaluates it where it lives with θ moved
there and moves the result back (its bijection likewise, :class:`RelocatedTransform`), so no
op ever mixes two devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Transform, Uniform, constraints
from torch.distributions import biject_to as _biject_to

from .errors import PriorError, SupportError

__all__ = [
    "BoxUniform",
    "prior_dim",
    "check_prior",
    "support_transform",
    "in_support",
    "check_in_support",
    "box_bounds",
    "RelocatedPrior",
    "RelocatedTransform",
    "prior_home",
]


class BoxUniform(Independent):
    r"""Uniform distribution on the box :math:`\prod_i [\text{low}_i, \text{high}_i)`.

    Args:
        low: Lower bounds, shape ``(D,)`` (a scalar is broadcast against ``high``).
        high: Upper bounds, shape ``(D,)``; must exceed ``low`` everywhere.
        device: Where the bounds live (``None``: where ``low`` is, else the CPU).
        dtype: Their floating dtype; float32 like simgen's networks.

    Example:
        >>> prior = BoxUniform(low=-torch.ones(2), high=torch.ones(2))
        >>> prior.sample((5,)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        low: Tensor | float,
        high: Tensor | float,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        low_t = torch.as_tensor(low, dtype=dtype, device=device)
        high_t = torch.as_tensor(high, dtype=dtype, device=low_t.device)
        low_t, high_t = torch.broadcast_tensors(low_t, high_t)
        if low_t.ndim != 1:
            raise PriorError(
                f"BoxUniform needs 1-D bounds of shape (D,), got shape {tuple(low_t.shape)}; "
                "pass e.g. low=torch.zeros(3), high=torch.ones(3)."
            )
        if not bool((high_t > low_t).all()):
            raise PriorError("BoxUniform needs high > low in every dimension.")
        super().__init__(Uniform(low_t, high_t, validate_args=False), 1, validate_args=False)
        self.low, self.high = low_t, high_t

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density; ``-inf`` outside the box (no error is raised)."""
        inside = ((value >= self.low) & (value < self.high)).all(-1)
        logp = -torch.log(self.high - self.low).sum()
        return torch.where(inside, logp, torch.full_like(inside, -torch.inf, dtype=value.dtype))

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> BoxUniform:
        """The same box with its bounds on ``device`` in ``dtype`` (each kept if ``None``)."""
        device = self.low.device if device is None else device
        return BoxUniform(self.low, self.high, device=device, dtype=dtype or self.low.dtype)


def prior_dim(prior: Distribution) -> int:
    """Number of parameters :math:`D` of a prior whose event shape is ``(D,)``."""
    check_prior(prior)
    probe = prior.sample((1,))
    return int(probe.shape[-1])


def check_prior(prior: object) -> None:
    """Raise :class:`PriorError` unless ``prior`` samples ``(N, D)`` and has ``log_prob``."""
    if not (hasattr(prior, "sample") and hasattr(prior, "log_prob")):
        raise PriorError(
            f"The prior must have sample() and log_prob(); got {type(prior).__name__}. Use "
            "simgen.BoxUniform or a torch.distributions.Distribution with event shape (D,)."
        )
    probe = prior.sample((2,))
    if not isinstance(probe, Tensor) or probe.ndim != 2:
        shape = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise PriorError(
            f"prior.sample((2,)) must return a tensor of shape (2, D); got {shape}. Wrap a "
            "univariate prior with torch.distributions.Independent(..., 1) over a (D,) batch."
        )


def support_transform(prior: Distribution) -> Transform:
    """The bijection :math:`T: \\mathbb{R}^D \\to \\operatorname{supp}(p)` of the prior.

    Falls back to the identity when the prior does not declare a support. Its tensors live
    where the prior's do; a :class:`RelocatedPrior`'s is a :class:`RelocatedTransform`.
    """
    if isinstance(prior, RelocatedPrior):
        base = support_transform(prior.base)
        return RelocatedTransform(base, prior.base_home, prior.device, prior.dtype)
    try:
        support = prior.support
    except (NotImplementedError, AttributeError):
        support = constraints.real_vector
    if support is constraints.real or support is constraints.real_vector:
        return _biject_to(constraints.real_vector)
    try:
        return _biject_to(support)
    except NotImplementedError:
        return _biject_to(constraints.real_vector)


def in_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Boolean mask, shape ``theta.shape[:-1]``: which rows have non-zero prior density."""
    if isinstance(prior, RelocatedPrior):
        home = prior.base_home
        return in_support(prior.base, theta.to(*home)).to(theta.device)
    try:
        inside = prior.support.check(theta)
        if inside.ndim == theta.ndim:
            inside = inside.all(-1)
        return inside
    except (NotImplementedError, AttributeError):
        pass
    with torch.no_grad():
        try:
            return torch.isfinite(prior.log_prob(theta))
        except ValueError:  # torch distributions that validate their arguments
            return torch.zeros(theta.shape[:-1], dtype=torch.bool, device=theta.device)


def check_in_support(prior: Distribution, theta: Tensor, what: str = "theta") -> None:
    """Raise :class:`SupportError` if any row of ``theta`` (``(N, D)``) is outside the support."""
    bad = ~in_support(prior, theta)
    if bool(bad.any()):
        n = int(bad.sum())
        first = theta[bad.nonzero()[0, 0]].tolist()
        raise SupportError(
            f"{n} of {len(bad)} rows of {what} lie outside the prior's support (first: "
            f"{first}). Simulate θ from this prior, or widen the prior to cover them."
        )


def box_bounds(prior: Distribution) -> tuple[Tensor | None, Tensor | None]:
    """``(low, high)`` of a box prior (``BoxUniform``, a ``Uniform`` or an ``Independent``
    one), each ``(D,)``; ``(None, None)`` for any other prior."""
    low, high = getattr(prior, "low", None), getattr(prior, "high", None)
    if low is None and hasattr(prior, "base_dist"):
        low, high = getattr(prior.base_dist, "low", None), getattr(prior.base_dist, "high", None)
    if isinstance(low, Tensor) and isinstance(high, Tensor) and low.ndim == 1:
        return low, high
    return None, None


def _probe(prior: object) -> Tensor:
    """One draw of ``prior``, taken inside a forked random state (CPU and every CUDA device),
    so the caller's generators are left as they were."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        return prior.sample((1,))  # type: ignore[attr-defined]


def prior_home(prior: object) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` of the prior's draws: where its tensors live."""
    probe = _probe(prior)
    dtype = probe.dtype if probe.is_floating_point() else torch.get_default_dtype()
    return probe.device, dtype


class RelocatedPrior(Distribution):
    """A prior simgen cannot rebuild, seen from ``device`` and ``dtype``.

    ``log_prob(theta)`` is ``base.log_prob(theta moved to base's device and dtype)`` moved
    back (``.to`` is differentiable, so gradients in θ flow through, for MAP and HMC), and
    ``sample`` draws where ``base`` lives and moves the draws. :func:`in_support` and
    :func:`support_transform` treat it the same way.
    """

    arg_constraints: dict = {}

    def __init__(self, base: Distribution, device: torch.device, dtype: torch.dtype):
        self.base, self.device, self.dtype = base, torch.device(device), dtype
        self.base_home = prior_home(base)
        super().__init__(torch.Size(), _probe(base).shape[-1:], validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self.base.support

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self.base.sample(torch.Size(sample_shape)).to(self.device, self.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        out = self.base.log_prob(value.to(*self.base_home))
        return out.to(self.device, self.dtype)


class RelocatedTransform(Transform):
    """``base``, a bijection whose tensors live at ``base_home`` (``(device, dtype)``),
    applied to inputs on ``device``: each call moves its input there and the result back."""

    bijective = True

    def __init__(
        self,
        base: Transform,
        base_home: tuple[torch.device, torch.dtype],
        device: torch.device,
        dtype: torch.dtype,
    ):
        super().__init__(cache_size=0)
        self.base, self.base_home = base, base_home
        self.device, self.dtype = torch.device(device), dtype

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return self.base.domain

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return self.base.codomain

    @property
    def sign(self) -> int:
        return self.base.sign

    def _there(self, value: Tensor) -> Tensor:
        return value.to(*self.base_home)

    def _back(self, value: Tensor) -> Tensor:
        return value.to(self.device, self.dtype)

    def _call(self, x: Tensor) -> Tensor:
        return self._back(self.base(self._there(x)))

    def _inverse(self, y: Tensor) -> Tensor:
        return self._back(self.base.inv(self._there(y)))

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._back(self.base.log_abs_det_jacobian(self._there(x), self._there(y)))

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self.base.forward_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self.base.inverse_shape(shape)
