r"""Many i.i.d. trials per parameter: the one convention every posterior follows.

A posterior trained on single simulations, each of shape ``x_shape``, reads an observation
with **one more leading dimension**, ``(n, *x_shape)``, as :math:`n` independent trials
:math:`x_{1:n}` of the same :math:`\theta` (as sbi reads it), and targets

.. math:: p(\theta \mid x_{1:n}) \propto p(\theta) \prod_{i=1}^n p(x_i \mid \theta)
          \propto p(\theta)^{1-n} \prod_{i=1}^n p(\theta \mid x_i).

This holds for ``sample``, ``log_prob`` (where the route has one), ``map`` and
``to_arviz`` with ``x=`` a trial set, and for ``set_default_x``. ``sample_batched`` and
``log_prob_batched`` take, besides a batch of single observations ``(B, *x_shape)``, a list
of ``B`` trial sets whose sizes may differ (or one tensor ``(B, n, *x_shape)``). Inside, trial
sets travel as one padded tensor ``(B, n_max, *x_shape)`` whose missing trials are rows of
NaN (:func:`as_trials`, :func:`present`); ``(1, *x_shape)`` stays one observation.

Which routes combine trials:

* **NLE** sums the learned log-likelihood, :math:`\sum_i \log q_\phi(x_i\mid\theta) +
  \log p(\theta)`, and **NRE** the logits, :math:`\sum_i f_\phi(\theta, x_i) + \log
  p(\theta)` (:mod:`simgen.mcmc.potentials`), vectorised over trials × chains ×
  observations; both are exact compositions of what the network learned.
* **NPE with ``"diffusion"`` or ``"flow_matching"``** composes per-trial scores
  (:mod:`simgen.estimators.compose`): an approximation, sample-only (``log_prob`` and
  ``map`` raise :class:`~simgen.errors.NoDensityError`).
* Other NPE families (flows, VAE, GAN, consistency) trained on single trials cannot: a
  trial set raises :class:`~simgen.errors.ShapeError` naming the routes that can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ShapeError, SimulationError
from .posterior_args import as_tensor, check_x

__all__ = ["ROUTES", "is_trial_set", "as_trials", "present", "counts", "no_trials_error"]

#: The routes that combine i.i.d. trials of a posterior trained on single trials.
ROUTES = "NLE, NRE, or NPE with the 'diffusion' or 'flow_matching' family"


def _is_list_of_sets(x: Any) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(e, (Tensor, np.ndarray)) for e in x)
    )


def is_trial_set(x: Any, x_shape: Sequence[int], batched: bool = False) -> bool:
    """Whether ``x`` holds trial sets: ``(n, *x_shape)`` with ``n > 1`` (or the padded
    ``(1, n, *x_shape)``) for one observation; for a batch, a list of arrays or a tensor
    ``(B, n, *x_shape)``."""
    nd = len(tuple(x_shape))
    if _is_list_of_sets(x):
        return batched or len(x) > 1
    if not isinstance(x, (Tensor, np.ndarray)):
        return False
    shape = tuple(x.shape)
    if tuple(shape[-nd:] if nd else ()) != tuple(x_shape):
        return False
    if batched:
        return len(shape) == nd + 2
    return (len(shape) == nd + 1 and shape[0] > 1) or (len(shape) == nd + 2 and shape[0] == 1)


def as_trials(x: Any, x_shape: Sequence[int], batched: bool = False) -> Tensor:
    """Trial sets as one padded tensor ``(B, n_max, *x_shape)``, missing trials NaN.

    ``x`` is one set ``(n, *x_shape)`` (``batched=False``, giving ``B = 1``), a list of sets
    ``(n_b, *x_shape)`` (a single ``x_shape`` array counts as one trial) or a tensor
    ``(B, n, *x_shape)``. Each set needs at least one trial; every present trial must be
    finite.
    """
    x_shape = tuple(int(s) for s in x_shape)
    nd = len(x_shape)
    if _is_list_of_sets(x):
        sets = [as_tensor(e, "x") for e in x]
        sets = [s[None] if tuple(s.shape) == x_shape else s for s in sets]
        for b, s in enumerate(sets):
            if s.ndim != nd + 1 or tuple(s.shape[1:]) != x_shape or len(s) == 0:
                raise ShapeError(
                    f"Trial set {b} has shape {tuple(s.shape)}; each set must be "
                    f"(n_trials, *{x_shape}) with n_trials >= 1."
                )
        n_max = max(len(s) for s in sets)
        out = sets[0].new_full((len(sets), n_max, *x_shape), float("nan"))
        for b, s in enumerate(sets):
            out[b, : len(s)] = s
        x = out
    else:
        x = as_tensor(x, "x")
        if not batched and x.ndim == nd + 1:
            x = x[None]
        if x.ndim != nd + 2 or tuple(x.shape[2:]) != x_shape or x.shape[1] == 0:
            raise ShapeError(
                f"x has shape {tuple(x.shape)}; trial sets must be (n_trials, *{x_shape}) "
                f"for one observation or a list of them (or (B, n_trials, *{x_shape}))."
            )
    mask = present(x, x_shape)
    rows_nan = torch.isnan(x).reshape(*x.shape[:2], -1).any(-1)
    if bool((rows_nan & mask).any()) or not bool(torch.isfinite(x[mask]).all()):
        raise SimulationError(
            "A trial contains NaN or inf; every trial must be finite (a row that is "
            "entirely NaN is read as a missing trial of a padded set)."
        )
    if not bool(mask.any(1).all()):
        raise ShapeError("Every trial set needs at least one trial (a row that is not all NaN).")
    return x


def present(x: Tensor, x_shape: Sequence[int]) -> Tensor:
    """``(B, n)``: which trials of a padded set ``(B, n, *x_shape)`` are there (not all NaN)."""
    return ~torch.isnan(x).reshape(*x.shape[:2], -1).all(-1)


def counts(x: Tensor, x_shape: Sequence[int]) -> Tensor:
    """Number of trials of each padded set, ``(B,)``."""
    return present(x, x_shape).sum(-1)


def filled(x: Tensor, x_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(x with missing trials replaced by the set's first trial, mask (B, n))``.

    A network evaluated on the filled tensor sees only valid data (so no NaN reaches a
    gradient); callers zero the missing trials' terms with the mask.
    """
    mask = present(x, x_shape)
    first = x[:, :1].expand_as(x)
    shaped = mask.reshape(*mask.shape, *([1] * len(tuple(x_shape))))
    return torch.where(shaped, x, first), mask


def no_trials_error(what: str) -> ShapeError:
    """The error of a route that cannot combine trials."""
    return ShapeError(
        f"x holds several i.i.d. trials, which {what} trained on single trials cannot "
        f"combine. Use {ROUTES}; or pass one observation of the trained shape."
    )


def check_observation(posterior: Any, x: Any, batched: bool) -> Tensor:
    """``x`` for ``posterior``: single observations ``(B, *x_shape)`` checked by
    :func:`~simgen.posterior_args.check_x`, or trial sets by :func:`check_trials_x`."""
    if is_trial_set(x, posterior.x_shape, batched=batched):
        return check_trials_x(posterior, x, batched=batched)
    return check_x(x, posterior.x_shape, batched=batched)


def check_trials_x(posterior: Any, x: Any, batched: bool) -> Tensor:
    """``x`` as padded trial sets for ``posterior``, or :func:`no_trials_error` for a route
    that cannot combine them. A posterior that can sets ``combines_trials``; an NPE
    estimator that can has ``compose_with_prior(prior, support)``."""
    trials = as_trials(x, posterior.x_shape, batched=batched)
    if getattr(posterior, "combines_trials", False):
        return trials
    estimator = getattr(posterior, "estimator", None)
    compose = getattr(estimator, "compose_with_prior", None)
    if compose is None:
        name = getattr(estimator, "name", type(posterior).__name__)
        raise no_trials_error(f"NPE with the {name!r} estimator")
    compose(posterior.prior, getattr(posterior, "support", "transform"))
    return trials
