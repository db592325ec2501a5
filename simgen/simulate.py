"""Run a simulator over prior draws: batched, seeded and failure-tolerant.

``simulate(simulator, prior, num_simulations, seed=0)`` draws :math:`\\theta_i \\sim p(\\theta)`
and :math:`x_i \\sim p(x \\mid \\theta_i)` in batches. The same ``seed`` and ``batch_size``
always give the same simulations: θ comes from a generator seeded with ``seed``, and batch
``b`` of the simulator gets its own generator seeded from ``(seed, b)``.

Failures never pass silently. A batch that raises is bisected until the failing rows are
isolated; rows whose output holds NaN or ±inf are dropped. Both are counted, reported in a
:class:`~simgen.errors.SimulationWarning`, and kept on the result (``.failed_theta``,
``.errors``) so nothing is lost; if every simulation fails, a
:class:`~simgen.errors.SimulationError` says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .errors import ShapeError, SimulationError, SimulationWarning
from .priors import check_prior
from .simulator import Simulator, as_simulator

__all__ = ["simulate", "run_simulator", "Simulations"]


class Simulations(tuple):
    """``(theta, x)`` of the successful simulations, unpackable as a pair.

    Attributes:
        theta: ``(N_ok, D)``.
        x: ``(N_ok, *x_shape)``.
        failed_theta: ``(N_failed, D)``, parameters whose simulation raised or gave NaN/inf.
        errors: A few distinct error messages of the simulations that raised.
        num_raised: How many simulations raised.
        num_nonfinite: How many returned NaN or ±inf.
    """

    theta: Tensor
    x: Tensor
    failed_theta: Tensor
    errors: list[str]
    num_raised: int
    num_nonfinite: int

    def __new__(cls, theta: Tensor, x: Tensor, **info: object) -> Simulations:
        self = super().__new__(cls, (theta, x))
        self.theta, self.x = theta, x
        for key, value in info.items():
            setattr(self, key, value)
        return self


def _batch_generator(seed: int, batch: int) -> torch.Generator:
    # SeedSequence mixes (seed, batch) into independent, reproducible streams.
    state = np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _as_tensor(x: object, n: int) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ShapeError(
            f"The simulator returned {type(x).__name__}; it must return a tensor or numpy array "
            f"of shape (N, ...) for N parameter rows."
        )
    if x.ndim == 0 or x.shape[0] != n:
        raise ShapeError(
            f"The simulator returned shape {tuple(x.shape)} for {n} parameter rows; the first "
            "dimension must be the batch (one row of x per row of theta)."
        )
    return x.float() if x.dtype == torch.float64 else x


def _call_isolating_failures(
    sim: Simulator, theta: Tensor, generator: torch.Generator, errors: list[str]
) -> tuple[Tensor | None, Tensor]:
    """Simulate ``theta``; on an exception, bisect to find the rows that raise.

    Returns ``(x, ok)`` where ``x`` has a row for every row of ``theta`` (garbage where
    ``ok`` is False) or is None when every row failed.
    """
    n = theta.shape[0]
    try:
        return _as_tensor(sim(theta, generator=generator), n), torch.ones(n, dtype=torch.bool)
    except ShapeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any simulator failure is recorded, not fatal
        if n == 1:
            if len(errors) < 5 and f"{type(exc).__name__}: {exc}" not in errors:
                errors.append(f"{type(exc).__name__}: {exc}")
            return None, torch.zeros(1, dtype=torch.bool)
    half = n // 2
    parts = [
        _call_isolating_failures(sim, theta[:half], generator, errors),
        _call_isolating_failures(sim, theta[half:], generator, errors),
    ]
    template = next((x for x, _ in parts if x is not None), None)
    if template is None:
        return None, torch.zeros(n, dtype=torch.bool)
    xs = [
        x if x is not None else template.new_zeros((len(ok), *template.shape[1:]))
        for x, ok in parts
    ]
    return torch.cat(xs), torch.cat([ok for _, ok in parts])


def run_simulator(
    simulator: Callable | Simulator,
    theta: Tensor,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
) -> Simulations:
    """Simulate for given parameters ``theta`` (``(N, D)``); see :func:`simulate`."""
    sim = as_simulator(simulator)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.ndim != 2:
        raise ShapeError(f"theta must have shape (N, D); got {tuple(theta.shape)}.")
    if batch_size < 1:
        raise SimulationError(f"batch_size must be a positive integer, got {batch_size}.")
    n = theta.shape[0]
    xs: list[Tensor] = []
    oks: list[Tensor] = []
    errors: list[str] = []
    num_raised = 0
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="simulating", unit="batch")
    for b, start in enumerate(starts):
        chunk = theta[start : start + batch_size]
        x, ok = _call_isolating_failures(sim, chunk, _batch_generator(seed, b), errors)
        num_raised += int((~ok).sum())
        if x is None:
            oks.append(ok)
            xs.append(None)  # type: ignore[arg-type]
            continue
        finite = torch.isfinite(x.reshape(len(x), -1).float()).all(-1)
        xs.append(x)
        oks.append(ok & finite)
    template = next((x for x in xs if x is not None), None)
    if template is None:
        raise SimulationError(
            f"All {n} simulations raised an exception; first errors: {errors}. Check the "
            "simulator on a single theta, e.g. simulator(prior.sample((1,)))."
        )
    xs = [
        x if x is not None else template.new_zeros((len(ok), *template.shape[1:]))
        for x, ok in zip(xs, oks)
    ]
    x_all, ok_all = torch.cat(xs), torch.cat(oks)
    num_nonfinite = int((~ok_all).sum()) - num_raised
    if not bool(ok_all.any()):
        raise SimulationError(
            f"All {n} simulations failed ({num_raised} raised, {num_nonfinite} returned NaN or "
            f"inf). First errors: {errors or 'none'}. Fix the simulator for this prior range."
        )
    if not bool(ok_all.all()):
        warnings.warn(
            f"{n - int(ok_all.sum())} of {n} simulations failed and were excluded "
            f"({num_raised} raised, {num_nonfinite} returned NaN or inf). Their parameters "
            f"are in result.failed_theta. First errors: {errors or 'none'}.",
            SimulationWarning,
            stacklevel=3,
        )
    return Simulations(
        theta[ok_all],
        x_all[ok_all],
        failed_theta=theta[~ok_all],
        errors=errors,
        num_raised=num_raised,
        num_nonfinite=num_nonfinite,
    )


def sample_prior(prior: Distribution, num_samples: int, seed: int) -> Tensor:
    """``num_samples`` draws from ``prior`` under ``seed``, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return prior.sample((num_samples,)).float()


def simulate(
    simulator: Callable | Simulator,
    prior: Distribution,
    num_simulations: int,
    seed: int | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> Simulations:
    """Draw ``num_simulations`` pairs :math:`(\\theta_i, x_i)` from :math:`p(\\theta) p(x|\\theta)`.

    Args:
        simulator: Batched callable ``theta (N, D) -> x (N, ...)``; may take ``generator=``.
        prior: Any distribution with ``sample`` and ``log_prob`` and event shape ``(D,)``.
        num_simulations: How many to draw (failures are excluded, so a few less may return).
        seed: Makes the result reproducible; ``None`` draws a fresh seed.
        batch_size: Rows per simulator call.
        progress: Show a progress bar.

    Returns:
        A :class:`Simulations` ``(theta, x)``, unpackable as ``theta, x = simulate(...)``.

    Example:
        >>> from simulators import two_moons
        >>> theta, x = simulate(two_moons.simulator, two_moons.prior, 1000, seed=0)
    """
    if int(num_simulations) < 1:
        raise SimulationError(f"num_simulations must be at least 1, got {num_simulations}.")
    check_prior(prior)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()))
    theta = sample_prior(prior, int(num_simulations), seed)
    return run_simulator(simulator, theta, seed=seed, batch_size=batch_size, progress=progress)
