"""What every front door (NPE, NLE, NRE) shares: checking the prior and the simulations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ConfigError, ShapeError, SimulationError
from ..estimators.flows import Flow
from ..estimators.registry import estimator_class
from ..posterior import as_tensor
from ..priors import check_in_support, check_prior, prior_dim
from ..streaming import Stream, as_stream
from ..training import TrainConfig, fit, make_config

__all__ = [
    "Method",
    "check_simulations",
    "check_stream",
    "data_source",
    "check_joint_score",
    "check_joint_score_weight",
]


def check_simulations(prior: Distribution, theta: Any, x: Any) -> tuple[Tensor, Tensor]:
    """Validate ``(theta, x)`` against the prior: shapes, counts, finiteness, support.

    Returns float32 tensors ``theta (N, D)`` and ``x (N, *x_shape)``.
    """
    theta, x = as_tensor(theta, "theta"), as_tensor(x, "x")
    d = prior_dim(prior)
    if theta.ndim != 2 or theta.shape[1] != d:
        raise ShapeError(
            f"theta has shape {tuple(theta.shape)}; it must be (N, {d}) for this "
            f"{d}-parameter prior."
        )
    if x.ndim < 1:
        raise ShapeError("x must have a leading batch dimension: shape (N, ...).")
    if x.ndim == 1:
        x = x[:, None]
    if len(theta) != len(x):
        raise ShapeError(
            f"theta has {len(theta)} rows but x has {len(x)}; they must be pairs "
            "from the same simulations (theta[i] produced x[i])."
        )
    if len(theta) < 2:
        raise ShapeError("At least 2 simulations are needed to train (one to validate).")
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(-1)
    if bool(bad.any()):
        raise SimulationError(
            f"{int(bad.sum())} of {len(x)} rows of x contain NaN or inf. Drop them first, e.g. "
            "keep = torch.isfinite(x).flatten(1).all(1); theta, x = theta[keep], x[keep] "
            "(simgen.simulate does this for you)."
        )
    if not bool(torch.isfinite(theta).all()):
        raise SimulationError("theta contains NaN or inf.")
    check_in_support(prior, theta)
    return theta, x


def data_source(theta: Any, x: Any, bank: Any) -> Stream | None:
    """The stream ``fit`` trains from when given ``bank=`` (a bank's path, a dataset or a
    :class:`~simgen.streaming.Stream`), or None for ``theta`` and ``x`` in memory; a
    :class:`ConfigError` when both or neither are given."""
    if bank is not None:
        if theta is not None or x is not None:
            raise ConfigError(
                "fit takes theta and x, or bank=, not both: pass the simulations in memory "
                "or the bank (a path written by simulate(bank=), or a dataset) to read them from."
            )
        return as_stream(bank)
    if theta is None or x is None:
        raise ConfigError(
            "fit needs the simulations: theta and x (tensors or arrays), or bank= (a path "
            "written by simulate(bank=), or a dataset of (theta, x) rows or batches)."
        )
    return None


def check_stream(prior: Distribution, stream: Stream, map_theta: Any = None) -> Stream:
    """``stream`` with every chunk checked as :func:`check_simulations` checks tensors
    (θ ``(n, D)``, one x shape throughout, θ in the support), then θ mapped by
    ``map_theta`` (NPE's support transform), as it is read."""
    d, shapes = prior_dim(prior), []

    def transform(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x[:, None] if x.ndim == 1 else x
        if theta.ndim != 2 or theta.shape[1] != d:
            raise ShapeError(
                f"theta in the bank has shape {tuple(theta.shape[1:])} per row; it must be "
                f"({d},) for this {d}-parameter prior."
            )
        if not shapes:
            shapes.append(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != shapes[0]:
            raise ShapeError(
                f"x in the bank changes shape from {shapes[0]} to {tuple(x.shape[1:])}; every "
                "row of a bank or dataset must have the same shape."
            )
        check_in_support(prior, theta)
        return (theta if map_theta is None else map_theta(theta)), x

    return stream.with_transform(transform)


def check_joint_score_weight(weight: Any) -> float:
    """``joint_score_weight`` as a float, or a ConfigError."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 1e6:
        raise ConfigError(f"joint_score_weight must be a number >= 0, got {weight!r}.")
    return float(weight)


def check_joint_score(joint_score: Any, theta: Tensor, estimator_name: str) -> Tensor | None:
    """A per-simulation joint score ``(N, D)`` matching ``theta``, finite, as float32, for a
    flow estimator (whose loss is its negative log-density, so its score is well defined)."""
    if joint_score is None:
        return None
    if not issubclass(estimator_class(estimator_name), Flow):
        raise ConfigError(
            "joint_score needs a flow estimator (nsf, maf, realnvp), whose loss is its "
            f"negative log-density; got estimator={estimator_name!r}."
        )
    score = torch.as_tensor(joint_score, dtype=torch.float32)
    if score.shape != theta.shape:
        raise ShapeError(
            f"joint_score has shape {tuple(score.shape)}; it must match theta, "
            f"{tuple(theta.shape)} (one score row per simulation)."
        )
    if not torch.isfinite(score).all():
        raise ShapeError(
            "joint_score holds NaN or inf; simulate(..., joint=True) drops such rows, "
            "or drop them with their theta and x."
        )
    return score


class Method:
    """Base of NPE/NLE/NRE: holds the prior and the training configuration."""

    #: Weight of the joint-score term in :meth:`_fit_losses` (set by NPE and NLE).
    joint_score_weight: float = 0.0

    def __init__(self, prior: Distribution):
        check_prior(prior)
        self.prior = prior
        self.theta_dim = prior_dim(prior)

    @staticmethod
    def _config(
        config: TrainConfig | None, overrides: dict[str, Any], family: type | None = None
    ) -> TrainConfig:
        """The training configuration: ``config`` with ``overrides`` (the caller's keyword
        options), or, without a ``config``, the family's measured defaults first.

        This is the one place where measured training defaults enter, for every method and
        family: ``family`` is the class of the trained network, an estimator family (NPE,
        NLE) or the ratio classifier (NRE), and its class attribute ``train_defaults`` (a
        dict of :class:`~simgen.training.TrainConfig` fields, ``{}`` where the loop's own
        defaults are best) says what it was measured to train best with, e.g. flow
        matching's learning rate. An explicit ``config`` is taken as it is, and any option
        the caller names wins over the family's.

        A family's default ``min_epochs`` yields to a smaller ``max_epochs`` from the
        caller (it is capped there), so that ``max_epochs=5`` still means five epochs.
        """
        defaults = getattr(family, "train_defaults", None) or {}
        if config is None and defaults:
            merged = {**defaults, **overrides}
            if "min_epochs" in defaults and "min_epochs" not in overrides:
                cap = merged.get("max_epochs", TrainConfig.max_epochs)
                merged["min_epochs"] = min(defaults["min_epochs"], cap)
            overrides = merged
        return make_config(config, **overrides)

    def _fit_losses(
        self,
        estimator: Any,
        plain_loss: Any,
        joint_loss: Any,
        theta: Tensor,
        x: Tensor,
        config: TrainConfig,
        joint_score: Tensor | None,
    ) -> Any:
        """Train ``estimator`` with ``plain_loss(estimator)``, or, given a joint score and a
        positive ``self.joint_score_weight``, with ``joint_loss(estimator, weight, scale)``,
        ``scale`` being the score's per-dimension standard deviation (so the weight is
        unitless). Returns the History."""
        weight = self.joint_score_weight
        if joint_score is None or weight == 0:
            return fit(plain_loss(estimator), theta, x, config)
        scale = joint_score.std(0).clamp_min(1e-8)
        loss = joint_loss(estimator, weight, scale)
        return fit(loss, theta, x, config, {"joint_score": joint_score})
