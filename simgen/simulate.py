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

With ``joint=True`` each batch runs the simulator's ``trace`` instead of its call, and the
result also carries the joint log-density :math:`\\log p(x, z \\mid \\theta)` ``(N,)`` and the
joint score :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)` ``(N, D)`` of every simulation
(``.joint_log_prob``, ``.joint_score``), banked like ``x``. ``x`` is the same as without
``joint``: ``trace`` and the call draw from the same seeded generator. The latents
themselves are not kept (their size may change from batch to batch); call
``simulator.trace`` for them.
"""

from __future__ import annotations

import operator
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .bank import JOINT_ARRAYS, NONFINITE, NOT_RUN, OK, RAISED, Bank, check_like, layout
from .batches import Outputs, run_batches
from .errors import (
    ConfigError,
    ShapeError,
    SimgenError,
    SimulationError,
    SimulationInterrupted,
    SimulationStopped,
    SimulationWarning,
)
from .priors import check_prior
from .simulator import Simulator, as_simulator, simulator_identity

#: θ for every simulation is drawn in memory up front: (N, D) float32.
MAX_SIMULATIONS = 10**9
MAX_SEED = 2**63 - 1

__all__ = ["simulate", "run_simulator", "read_bank", "Simulations"]


class Simulations(tuple):
    """``(theta, x)`` of the successful simulations, unpackable as a pair.

    Attributes:
        theta: ``(N_ok, D)``.
        x: ``(N_ok, *x_shape)``.
        failed_theta: ``(N_failed, D)``, parameters whose simulation raised or gave NaN/inf.
        errors: A few distinct error messages of the simulations that raised.
        num_raised: How many simulations raised.
        num_nonfinite: How many returned NaN or ±inf.
        joint_log_prob: ``(N_ok,)`` :math:`\\log p(x, z \\mid \\theta)` with ``joint=True``,
            else None.
        joint_score: ``(N_ok, D)`` :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)` with
            ``joint=True``, else None.
    """

    theta: Tensor
    x: Tensor
    failed_theta: Tensor
    errors: list[str]
    num_raised: int
    num_nonfinite: int
    joint_log_prob: Tensor | None = None
    joint_score: Tensor | None = None

    def __new__(cls, theta: Tensor, x: Tensor, **info: object) -> Simulations:
        self = super().__new__(cls, (theta, x))
        self.theta, self.x = theta, x
        for key, value in info.items():
            setattr(self, key, value)
        return self


def _assemble(
    n: int,
    batch_size: int,
    outs: dict[int, Outputs | None],
    statuses: dict[int, np.ndarray],
) -> tuple[Outputs | None, np.ndarray]:
    """In-memory counterpart of a bank: ``(outputs, status)`` over all ``n`` rows."""
    status = np.full(n, NOT_RUN, dtype=np.int8)
    template = next((out for out in outs.values() if out is not None), None)
    merged = (
        None
        if template is None
        else {name: v.new_zeros((n, *v.shape[1:])) for name, v in template.items()}
    )
    for b, batch_status in statuses.items():
        rows = slice(b * batch_size, b * batch_size + len(batch_status))
        status[rows] = batch_status
        if outs[b] is not None:
            for name, value in outs[b].items():
                merged[name][rows] = value
    return merged, status


def _collect(
    theta: Tensor,
    outputs: Outputs | None,
    status: np.ndarray,
    errors: list[str],
    warn: bool = True,
) -> Simulations:
    """The successful rows as :class:`Simulations`, with the failures counted and kept."""
    ran = status != NOT_RUN
    ok, failed = status == OK, (status == RAISED) | (status == NONFINITE)
    num_raised, num_nonfinite = int((status == RAISED).sum()), int((status == NONFINITE).sum())
    n = int(ran.sum())
    x = None if outputs is None else outputs["x"]
    if x is None or not ok.any():
        if num_raised == n:
            raise SimulationError(
                f"All {n} simulations raised an exception; first errors: {errors}. Check the "
                "simulator on a single theta, e.g. simulator(prior.sample((1,)))."
            )
        raise SimulationError(
            f"All {n} simulations failed ({num_raised} raised, {num_nonfinite} returned NaN or "
            f"inf). First errors: {errors or 'none'}. Fix the simulator for this prior range."
        )
    if failed.any() and warn:
        warnings.warn(
            f"{int(failed.sum())} of {n} simulations failed and were excluded "
            f"({num_raised} raised, {num_nonfinite} returned NaN or inf). Their parameters "
            f"are in result.failed_theta. First errors: {errors or 'none'}.",
            SimulationWarning,
            stacklevel=4,
        )
    ok_t, failed_t = torch.from_numpy(ok), torch.from_numpy(failed)
    joint = {name: outputs[name][ok_t] for name in JOINT_ARRAYS if name in outputs}
    return Simulations(
        theta[ok_t],
        x[ok_t],
        failed_theta=theta[failed_t],
        errors=errors,
        num_raised=num_raised,
        num_nonfinite=num_nonfinite,
        **joint,
    )


def check_count(value: object, name: str, low: int, high: int, why: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a :class:`~simgen.errors.ConfigError`."""
    number: int | None = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                number = int(value)
    if number is None:
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high}{why}, got {number}.")
    return number


def _check_theta(theta: object) -> Tensor:
    try:
        theta = torch.as_tensor(theta)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(
            f"theta must be a numeric (N, D) array; got {type(theta).__name__}."
        ) from exc
    if theta.dtype == torch.bool or theta.is_complex():
        raise ShapeError(f"theta must hold real numbers, got dtype {theta.dtype}.")
    theta = theta.detach().to(torch.float32)
    if theta.ndim != 2 or theta.shape[0] == 0:
        raise ShapeError(f"theta must have shape (N, D) with N >= 1; got {tuple(theta.shape)}.")
    if not torch.isfinite(theta).all():
        raise ShapeError("theta holds NaN or inf; every parameter must be finite.")
    return theta


def _check_bank(bank: object) -> Path | None:
    if bank is None:
        return None
    if not isinstance(bank, (str, Path)) or not str(bank):
        raise ConfigError(f"bank must be a path (str or pathlib.Path), got {bank!r}.")
    return Path(bank).expanduser()


def run_simulator(
    simulator: Callable | Simulator,
    theta: Tensor,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    bank: str | Path | None = None,
    executor: Any = None,
    joint: bool = False,
    prior: Distribution | None = None,
) -> Simulations:
    """Simulate for given parameters ``theta`` (``(N, D)``); see :func:`simulate`.

    ``prior`` is only recorded in a bank's fingerprint (θ itself is what is checked)."""
    sim = as_simulator(simulator)
    if joint and not callable(getattr(sim, "trace", None)):
        raise SimulationError(
            f"joint=True needs a simulator with trace(theta, generator=) returning a Trace "
            f"with joint_log_prob and joint_score; {sim!r} has none. Wrap a pyro program "
            "with simgen.from_pyro, or implement trace on your Simulator subclass."
        )
    theta = _check_theta(theta)
    seed = check_count(seed, "seed", 0, MAX_SEED)
    batch_size = check_count(batch_size, "batch_size", 1, MAX_SIMULATIONS)
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise ConfigError(
            f"executor must have submit(fn, *args) (a concurrent.futures pool or a "
            f"dask.distributed.Client), got {type(executor).__name__}."
        )
    path = _check_bank(bank)
    if path is None:
        return _run(sim, theta, seed, batch_size, progress, None, executor, bool(joint))
    fingerprint = {
        "seed": seed,
        "joint": bool(joint),
        "simulator": simulator_identity(sim),
        "prior": None if prior is None else repr(prior)[:500],
        "simgen": _version(),
    }
    store = Bank.open(path, theta, fingerprint, batch_size)
    try:
        return _run(sim, theta, seed, batch_size, progress, store, executor, bool(joint))
    finally:
        store.close()


def _version() -> str:
    from . import __version__

    return __version__


def _run(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    progress: bool,
    store: Bank | None,
    executor: Any,
    joint: bool,
) -> Simulations:
    n = theta.shape[0]
    if store is not None:
        store.repair()
    done = store.done_batches() if store is not None else set()
    todo = [b for b in range(-(-n // batch_size)) if b not in done]
    outs: dict[int, Outputs | None] = {}
    statuses: dict[int, np.ndarray] = {}
    errors: list[str] = []
    expected = {}
    results = run_batches(sim, theta, seed, batch_size, todo, executor, joint)
    if progress:
        from tqdm.auto import tqdm

        total = len(todo) + len(done)
        results = tqdm(results, desc="simulating", unit="batch", initial=len(done), total=total)
    try:
        for b, (outputs, status, batch_errors) in results:
            errors.extend(e for e in batch_errors if e not in errors and len(errors) < 5)
            if store is not None:
                store.write(b, outputs, status, errors)
                continue
            if outputs is not None:
                if expected:
                    check_like(expected, outputs, b)
                else:
                    expected = layout(outputs)
            outs[b], statuses[b] = outputs, status
    except KeyboardInterrupt as exc:
        raise _interrupted(theta, batch_size, store, outs, statuses, errors) from exc
    except Exception as exc:  # noqa: BLE001 - finished work is kept, then the error is raised
        stopped = _stopped(exc, theta, batch_size, store, outs, statuses, errors)
        if stopped is None:
            raise
        raise stopped from exc
    if store is None:
        merged, status = _assemble(n, batch_size, outs, statuses)
        return _collect(theta, merged, status, errors)
    _, merged, status, errors = store.read()
    store.mark_complete()
    return _collect(theta, merged, status, errors)


def _partial(
    theta: Tensor,
    batch_size: int,
    outs: dict[int, Outputs | None],
    statuses: dict[int, np.ndarray],
    errors: list[str],
) -> Simulations | None:
    merged, status = _assemble(len(theta), batch_size, outs, statuses)
    try:
        return _collect(theta, merged, status, errors, warn=False)
    except SimulationError:
        return None


def _stopped(
    exc: Exception,
    theta: Tensor,
    batch_size: int,
    store: Bank | None,
    outs: dict[int, Outputs | None],
    statuses: dict[int, np.ndarray],
    errors: list[str],
) -> SimulationStopped | None:
    """The error to raise when a run stops early with finished batches to keep (None: no
    batch had finished, so the original error is raised as it is)."""
    reason = str(exc) if isinstance(exc, SimgenError) else f"{type(exc).__name__}: {exc}"
    if store is not None:
        done, total = len(store.done_batches()), -(-len(theta) // batch_size)
        if not done:
            return None
        return SimulationStopped(
            f"The run stopped: {reason} The {done} of {total} batches saved in {store.path} "
            "are kept; fix the cause and call simulate again with the same arguments to "
            "resume."
        )
    partial = _partial(theta, batch_size, outs, statuses, errors)
    if partial is None:
        return None
    return SimulationStopped(
        f"The run stopped: {reason} The {len(partial.theta)} simulations finished before it "
        "are in exc.partial (theta, x = exc.partial); pass bank='run.zarr' to keep every "
        "batch on disk.",
        partial=partial,
    )


def _interrupted(
    theta: Tensor,
    batch_size: int,
    store: Bank | None,
    outs: dict[int, Outputs | None],
    statuses: dict[int, np.ndarray],
    errors: list[str],
) -> SimulationInterrupted:
    if store is not None:
        done = len(store.done_batches())
        total = -(-len(theta) // batch_size)
        return SimulationInterrupted(
            f"Interrupted: {done} of {total} batches are saved in {store.path}. Call simulate "
            "again with the same arguments and bank= to resume where it stopped.",
            partial=None,
        )
    partial = _partial(theta, batch_size, outs, statuses, errors)
    kept = 0 if partial is None else len(partial.theta)
    return SimulationInterrupted(
        f"Interrupted after {len(statuses)} batches; the {kept} finished simulations are in "
        "exc.partial (theta, x = exc.partial). Pass bank='run.zarr' to save every batch to "
        "disk and resume after an interruption.",
        partial=partial,
    )


def read_bank(path: str | Path) -> Simulations:
    """The simulations saved so far in the bank at ``path`` (see :mod:`simgen.bank`).

    Raises:
        BankError: No bank at ``path``, or a batch marked done has lost its data (resume the
            run with :func:`simulate` to simulate it again).
    """
    theta, outputs, status, errors = Bank.reader(path).read()
    return _collect(theta, outputs, status, errors)


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
    bank: str | Path | None = None,
    executor: Any = None,
    joint: bool = False,
) -> Simulations:
    """Draw ``num_simulations`` pairs :math:`(\\theta_i, x_i)` from :math:`p(\\theta) p(x|\\theta)`.

    Args:
        simulator: Batched callable ``theta (N, D) -> x (N, ...)``; may take ``generator=``.
            It gets a copy of each batch of θ, so editing it in place changes nothing.
        prior: Any distribution with ``sample`` and ``log_prob`` and event shape ``(D,)``.
        num_simulations: How many to draw, 1 to 10⁹ (θ for all of them is drawn in memory
            first; failures are excluded, so a few less may return).
        seed: Makes the result reproducible, 0 to 2⁶³ - 1. ``None`` draws a fresh seed
            (from the operating system, leaving torch's global generator untouched), or,
            when ``bank`` already holds a bank, takes that bank's seed, so that repeating a
            banked call resumes it.
        batch_size: Rows per simulator call.
        progress: Show a progress bar.
        bank: Path of a zarr store (:mod:`simgen.bank`, ``~`` expanded) that receives every
            finished batch. Calling again with the same arguments resumes an interrupted run
            (and, once it is complete, just reads it back); the result is identical to an
            uninterrupted run. One run writes to a bank at a time; another is refused.
        executor: Run batches in parallel: a ``concurrent.futures`` pool (e.g.
            ``ProcessPoolExecutor`` for local processes) or a ``dask.distributed.Client`` for
            a cluster. Batches are seeded by their index, so the result is the same as a
            serial run; the simulator must be picklable for other processes. In a thread
            pool, pyro programs (and functions without ``generator=``) run one batch at a
            time, since pyro's handler stack and torch's global RNG are process-wide: use
            processes or dask to run them in parallel.
        joint: Also keep each simulation's joint log-density and joint score from the
            simulator's ``trace`` (a :class:`~simgen.simulator.PyroSimulator`, or any
            simulator with ``trace(theta, generator=)``), as ``.joint_log_prob`` ``(N,)`` and
            ``.joint_score`` ``(N, D)``, banked with ``x``. ``x`` is the same as without it.

    Raises:
        ConfigError: A count, seed or option is out of range or of the wrong type.
        BankError: ``bank`` is being written by another run, or was made by another run.
        SimulationInterrupted: On Ctrl-C. Nothing finished is lost: it is in the bank, or,
            without one, in the exception's ``partial`` result.
        SimulationStopped: A later batch failed in a way that stops the run (a different
            output shape, a full disk, a broken worker pool); what had finished is in the
            bank or in ``partial``.

    Returns:
        A :class:`Simulations` ``(theta, x)``, unpackable as ``theta, x = simulate(...)``.

    Example:
        >>> from simulators import two_moons
        >>> theta, x = simulate(two_moons.simulator, two_moons.prior, 1000, seed=0)
    """
    num_simulations = check_count(
        num_simulations, "num_simulations", 1, MAX_SIMULATIONS, " (θ is drawn in memory first)"
    )
    with torch.random.fork_rng(devices=[]):  # the check draws from the prior
        check_prior(prior)
    path = _check_bank(bank)
    if seed is None:
        stored = None if path is None else Bank.stored_seed(path)
        seed = secrets.randbelow(2**31 - 1) if stored is None else stored
    seed = check_count(seed, "seed", 0, MAX_SEED)
    theta = sample_prior(prior, num_simulations, seed)
    return run_simulator(
        simulator,
        theta,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        bank=path,
        executor=executor,
        joint=joint,
        prior=prior,
    )
