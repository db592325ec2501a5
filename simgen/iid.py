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

**NPE on sets.** Trained instead on whole sets, NPE learns :math:`q(\theta\mid x_{1:n})`
for every n at once. ``simgen.simulate(..., trials=(1, 100))`` (:func:`simulate_trials`)
draws each row's n uniformly from that range, seeded, and returns x of shape ``(N, n_max,
*x_shape)``, each set padded with NaN rows after its n trials (``result.counts`` holds n).
``NPE(prior, embedding_net=SetPooling(...))`` (or :class:`~simgen.nets.SetAttention`; any
net with ``takes_sets = True``) trains on them: for such a posterior the trial axis is part
of x (:func:`set_element_shape`), so an observation ``(n, *x_shape)`` is one set of n
trials, for any ``1 <= n <= n_max``, padded inside (:func:`set_observation`), and
``sample_batched`` takes a list of sets. z-scoring pools the present trials of every set
(:func:`fit_set_standardizer`), so it is the same for every trial position and ignores the
padding. A bank holds the trials unpadded, one row per trial (θ repeated), so every NaN
row in a bank is a failed simulation and nothing else; a set with a failed trial is failed
as a whole.

**Rejection.** A composed posterior under a box prior samples θ itself
(``support="reject"``): draws outside the box, or not finite, are rejected, so the ones
returned are the composed posterior truncated to the box, and the rejected share is a
measure of how far the composition misses it. When more than :data:`HIGH_REJECTION` (10%)
of a sampler call's draws are rejected, :func:`warn_if_rejecting` issues a
:class:`RejectionWarning` naming the share, the non-finite count and the remedies: the
GAUSS rule's Gaussian stand-ins fail where a face cuts a skewed per-trial posterior
(:mod:`simgen.estimators.compose`); ``corrector_steps=10`` keeps every draw in the box
(:mod:`simgen.estimators.compose_sampler`), more training simulations shrink the network's
per-trial error, and NLE or NRE sum over trials exactly. 10% lies above what the exact
per-trial oracle at a face rejects with 10 trials (2-3%, ``tests/test_compose_box.py``) and
below the failing cases: 47% there at 100 trials, 12-44% for five of the six
exponential-rate observations of ``benchmarks/results_iid.md`` (the sixth rejects 4%: a
low rate does not prove a good posterior). Under a Gaussian prior rejection removes nothing; a
non-finite draw raises :class:`~simgen.errors.SimgenError` instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, ShapeError, SimulationError
from .posterior_args import as_tensor, check_x

__all__ = [
    "ROUTES",
    "HIGH_REJECTION",
    "RejectionWarning",
    "warn_if_rejecting",
    "is_trial_set",
    "as_trials",
    "present",
    "counts",
    "no_trials_error",
    "set_element_shape",
    "set_observation",
    "check_sets",
    "fit_set_standardizer",
    "check_trials_range",
    "trial_counts",
    "pad_trials",
    "simulate_trials",
]

#: The routes that combine i.i.d. trials of a posterior trained on single trials.
ROUTES = "NLE, NRE, or NPE with the 'diffusion' or 'flow_matching' family"
#: Share of a sampler call's draws rejected above which it warns (module docstring).
HIGH_REJECTION = 0.1


class RejectionWarning(UserWarning):
    """Many posterior draws fell outside the prior's support, or were not finite, and were
    rejected (the share is in the message)."""


def warn_if_rejecting(rejected: int, drawn: int, non_finite: int, n: int) -> None:
    """Warn (:class:`RejectionWarning`) when ``rejected`` of ``drawn`` draws of a composed
    posterior of ``n`` trials, ``non_finite`` of them not finite, exceed
    :data:`HIGH_REJECTION` (module docstring)."""
    if drawn == 0 or rejected <= HIGH_REJECTION * drawn:
        return
    warnings.warn(
        f"{rejected / drawn:.0%} of the composed posterior's draws for {n} i.i.d. trials "
        f"({rejected} of {drawn}; {non_finite} not finite) fell outside the prior's box and "
        "are rejected: sampling is slower and the posterior may be truncated or biased. "
        "Sample with corrector_steps=10 (every draw in the box), train on more "
        "simulations, or use NLE or NRE, whose sums over trials are exact.",
        RejectionWarning,
        stacklevel=2,
    )


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
    :func:`~simgen.posterior_args.check_x`, trial sets by :func:`check_trials_x`, or, for
    an NPE trained on sets, sets padded to its ``x_shape`` by :func:`set_observation`."""
    element_shape = set_element_shape(getattr(posterior, "estimator", None))
    if element_shape is not None:
        return set_observation(x, element_shape, posterior.x_shape[0], batched)
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
    placed = getattr(posterior, "placed", None)  # the prior on the estimator's device
    prior = posterior.prior if placed is None else placed.prior
    compose(prior, getattr(posterior, "support", "transform"))
    return trials


# -- NPE on sets ---------------------------------------------------------------------------


def set_element_shape(estimator: Any) -> tuple[int, ...] | None:
    """The shape of one trial when ``estimator`` embeds padded sets (its embedding net has
    ``takes_sets = True`` and its context is ``(n_max, *element_shape)``), else None."""
    embedding = getattr(estimator, "embedding", None)
    if not getattr(embedding, "takes_sets", False):
        return None
    return tuple(estimator.context_shape[1:])


def set_observation(x: Any, element_shape: Sequence[int], n_max: int, batched: bool) -> Tensor:
    """Sets for a posterior trained on sets of up to ``n_max`` trials, as ``(B, n_max,
    *element_shape)`` NaN-padded.

    One observation is a set ``(n, *element_shape)`` (one trial may drop the leading 1);
    ``batched`` takes a list of sets or a tensor ``(B, n, *element_shape)``, and a tensor
    ``(B, *element_shape)`` as B sets of one trial.
    """
    element_shape = tuple(int(s) for s in element_shape)
    if not _is_list_of_sets(x):
        x = as_tensor(x, "x")
        if batched and x.ndim == len(element_shape) + 1:
            x = x[:, None]
        elif not batched and x.ndim == len(element_shape):
            x = x[None]
    trials = as_trials(x, element_shape, batched=batched)
    n = int(trials.shape[1])
    if n > n_max:
        largest = int(counts(trials, element_shape).max())
        if largest > n_max:
            raise ShapeError(
                f"x holds a set of {largest} trials, but this posterior was trained on sets "
                f"of at most {n_max}; pass at most {n_max} trials, or train on larger sets "
                f"(simgen.simulate(..., trials=(1, {largest})))."
            )
        # present trials first (a caller's set may hold NaN rows between them), then cut
        absent = (~present(trials, element_shape)).to(torch.int8)
        order = torch.argsort(absent, dim=1, stable=True)[:, :n_max]
        index = order.reshape(*order.shape, *([1] * len(element_shape)))
        trials = torch.gather(trials, 1, index.expand(-1, -1, *element_shape))
    if n < n_max:
        pad = trials.new_full((len(trials), n_max - n, *element_shape), float("nan"))
        trials = torch.cat([trials, pad], 1)
    return trials


def check_sets(x: Tensor, element_shape: Sequence[int]) -> Tensor:
    """Training sets ``(N, n_max, *element_shape)``: each with at least one trial, every
    present trial finite; returns their counts ``(N,)``."""
    mask = present(x, element_shape)
    rows = x.reshape(*x.shape[:2], -1)
    bad = (mask & ~torch.isfinite(rows).all(-1)).any(-1) | ~mask.any(-1)
    if bool(bad.any()):
        raise SimulationError(
            f"{int(bad.sum())} of {len(x)} sets of x have no trial or a trial with NaN or "
            "inf (absent trials must be rows entirely NaN). Drop them first "
            "(simgen.simulate(..., trials=...) does this for you)."
        )
    return mask.sum(-1)


@torch.no_grad()
def fit_set_standardizer(standardizer: Any, x: Tensor, element_shape: Sequence[int]) -> None:
    """z-score statistics of padded sets pooled over every present trial of every set, the
    same at every trial position (so the z-scoring keeps the order invariance of the set
    embedding), padding ignored; ``standardizer`` holds ``(n_max, *element_shape)``."""
    trials = x.reshape(-1, *element_shape)[present(x, element_shape).reshape(-1)]
    loc = trials.mean(0)
    scale = trials.std(0) if len(trials) > 1 else torch.ones_like(loc)
    scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
    standardizer.loc.copy_(loc.expand_as(standardizer.loc))
    standardizer.scale.copy_(scale.expand_as(standardizer.scale))


def check_set_simulations(
    prior: Any, theta: Any, x: Any, estimator_name: str, options: dict[str, Any]
) -> tuple[Tensor, Tensor]:
    """``(theta, x)`` for NPE on sets: x ``(N, n_max, *x_shape)`` padded sets
    (:func:`check_sets`), the rest checked as any simulations
    (:func:`~simgen.inference.base.check_simulations`, on x with absent trials filled).

    A family with the linear-Gaussian baseline (flow matching, diffusion) reads x linearly,
    padding included, so it needs ``gaussian_baseline=False`` here.
    """
    from .estimators.registry import estimator_class
    from .inference.base import check_simulations

    family = estimator_class(estimator_name)
    baseline = "gaussian_baseline" in family.option_names()
    default = getattr(family, "set_baseline", "auto")
    if baseline and options.get("gaussian_baseline", default) is not False:
        raise ConfigError(
            f"The {estimator_name!r} family's linear-Gaussian baseline reads x linearly, "
            "so it cannot see padded sets; pass gaussian_baseline=False, or use a flow "
            "(estimator='nsf')."
        )
    x = as_tensor(x, "x")
    if x.ndim < 3:
        raise ShapeError(
            f"x has shape {tuple(x.shape)}; a set embedding trains on padded sets (N, n_max, "
            "*x_shape), e.g. from simgen.simulate(..., trials=(1, 100))."
        )
    check_sets(x, x.shape[2:])
    theta, x_filled = check_simulations(prior, theta, filled(x, x.shape[2:])[0])
    return theta, x.to(x_filled.dtype)


def check_trials_range(trials: Any) -> tuple[int, int]:
    """``trials`` as ``(low, high)``, ``1 <= low <= high``; one int n means ``(n, n)``."""
    if isinstance(trials, (int, np.integer)) and not isinstance(trials, bool):
        trials = (int(trials), int(trials))
    ok = (
        isinstance(trials, (tuple, list))
        and len(trials) == 2
        and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in trials)
        and 1 <= trials[0] <= trials[1]
    )
    if not ok:
        raise ConfigError(
            f"trials must be (low, high) with 1 <= low <= high, or one int n, got {trials!r}; "
            "e.g. trials=(1, 100) draws each set's number of trials uniformly from 1..100."
        )
    return int(trials[0]), int(trials[1])


def trial_counts(num_sets: int, trials: Any, seed: int) -> Tensor:
    """Each set's number of trials, ``(num_sets,)`` int64, uniform on ``trials = (low,
    high)`` from a generator seeded by ``seed`` alone (so a resumed run draws the same)."""
    low, high = check_trials_range(trials)
    generator = torch.Generator().manual_seed((int(seed) * 7919 + 19) % 2**63)
    return torch.randint(low, high + 1, (num_sets,), generator=generator)


def pad_trials(x: Tensor, n: Tensor) -> Tensor:
    """Trials stacked set after set, ``(sum(n), *x_shape)``, as padded sets ``(len(n),
    max(n), *x_shape)`` with NaN after each set's ``n[b]`` trials."""
    n = torch.as_tensor(n, dtype=torch.long)
    out = x.new_full((len(n), int(n.max()), *x.shape[1:]), float("nan"))
    set_index = torch.repeat_interleave(torch.arange(len(n)), n)
    position = torch.arange(len(x)) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    out[set_index, position] = x
    return out


def simulate_trials(
    simulator: Any, prior: Any, num_simulations: int, trials: Any, seed: int, **options: Any
) -> Any:
    r"""``num_simulations`` sets of i.i.d. trials, ``simgen.simulate(..., trials=...)``.

    θ is drawn as by ``simulate`` (the same θ for the same seed), each set's n by
    :func:`trial_counts`; the :math:`\sum n` single trials run as one ``run_simulator``
    call on θ repeated n times (so ``options`` such as ``bank``, ``workers`` and
    ``batch_size`` apply per trial, and a banked run resumes as any other). Returns a
    :class:`~simgen.simulations.Simulations` with x ``(N_ok, n_max, *x_shape)`` NaN-padded
    (:func:`pad_trials`) and ``counts`` ``(N_ok,)``; a set whose trial failed is left out,
    its θ in ``failed_theta``.
    """
    from .simulate import MAX_SIMULATIONS, run_simulator, sample_prior
    from .simulations import Simulations

    if options.pop("joint", False):
        raise ConfigError(
            "simulate(..., trials=...) does not keep joint log-densities and scores; "
            "drop joint=True, or simulate single trials with joint=True."
        )
    theta = sample_prior(prior, num_simulations, seed)
    n = trial_counts(num_simulations, trials, seed)
    if int(n.sum()) > MAX_SIMULATIONS:
        raise ConfigError(
            f"{int(n.sum())} trials in all is more than simgen simulates in one run "
            f"({MAX_SIMULATIONS}); use fewer sets or a smaller trials range."
        )
    flat = run_simulator(
        simulator, theta.repeat_interleave(n, 0), seed=seed, prior=prior, **options
    )
    ok_rows = _ok_rows(theta, n, flat.theta, len(flat.failed_theta))
    set_of_row = torch.repeat_interleave(torch.arange(len(n)), n)
    failed_trials = torch.zeros(len(n), dtype=torch.long).index_add_(
        0, set_of_row[~ok_rows], torch.ones(int((~ok_rows).sum()), dtype=torch.long)
    )
    good = failed_trials == 0
    x = pad_trials(flat.x[good[set_of_row][ok_rows]], n[good])
    reasons = iter(flat.failed_reason)
    first_reason = {}
    for row in torch.nonzero(~ok_rows)[:, 0].tolist():
        first_reason.setdefault(int(set_of_row[row]), next(reasons))
    return Simulations(
        theta[good],
        x,
        counts=n[good],
        failed_theta=theta[~good],
        failed_reason=[first_reason[int(b)] for b in torch.nonzero(~good)[:, 0]],
        failed_attempts=torch.ones(int((~good).sum()), dtype=torch.long),
        errors=flat.errors,
        num_raised=flat.num_raised,
        num_nonfinite=flat.num_nonfinite,
        num_timeout=flat.num_timeout,
        num_crashed=flat.num_crashed,
    )


def _ok_rows(theta: Tensor, n: Tensor, ok_theta: Tensor, num_failed: int) -> Tensor:
    """Which trial rows succeeded, ``(sum(n),)``: the successful θ are, in order, a
    subsequence of θ repeated; trials of one set share θ, so matching greedily gives each
    set its right number of successful trials."""
    total = int(n.sum())
    if num_failed == 0:
        return torch.ones(total, dtype=torch.bool)
    rows = theta.repeat_interleave(n, 0)
    ok = torch.zeros(total, dtype=torch.bool)
    j = 0
    for i in range(total):
        if j < len(ok_theta) and torch.equal(rows[i], ok_theta[j]):
            ok[i] = True
            j += 1
    return ok
