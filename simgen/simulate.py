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

import collections
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .bank import NONFINITE, NOT_RUN, OK, RAISED, Bank
from .errors import ShapeError, SimulationError, SimulationInterrupted, SimulationWarning
from .priors import check_prior
from .simulator import Simulator, as_simulator

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


def _simulate_batch(
    sim: Simulator, theta: Tensor, generator: torch.Generator, errors: list[str]
) -> tuple[Tensor | None, np.ndarray]:
    """``(x or None, status)`` for one batch; status codes as in :mod:`simgen.bank`."""
    x, ok = _call_isolating_failures(sim, theta, generator, errors)
    status = np.where(ok.numpy(), OK, RAISED).astype(np.int8)
    if x is not None:
        finite = torch.isfinite(x.reshape(len(x), -1).float()).all(-1).numpy()
        status[(status == OK) & ~finite] = NONFINITE
    return x, status


def _assemble(
    n: int, batch_size: int, xs: dict[int, Tensor | None], statuses: dict[int, np.ndarray]
) -> tuple[Tensor | None, np.ndarray]:
    """In-memory counterpart of a bank: ``(x, status)`` over all ``n`` rows."""
    status = np.full(n, NOT_RUN, dtype=np.int8)
    template = next((x for x in xs.values() if x is not None), None)
    x_all = None if template is None else template.new_zeros((n, *template.shape[1:]))
    for b, batch_status in statuses.items():
        rows = slice(b * batch_size, b * batch_size + len(batch_status))
        status[rows] = batch_status
        if xs[b] is not None:
            x_all[rows] = xs[b]
    return x_all, status


def _collect(
    theta: Tensor, x: Tensor | None, status: np.ndarray, errors: list[str], warn: bool = True
) -> Simulations:
    """The successful rows as :class:`Simulations`, with the failures counted and kept."""
    ran = status != NOT_RUN
    ok, failed = status == OK, (status == RAISED) | (status == NONFINITE)
    num_raised, num_nonfinite = int((status == RAISED).sum()), int((status == NONFINITE).sum())
    n = int(ran.sum())
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
    return Simulations(
        theta[ok_t],
        x[ok_t],
        failed_theta=theta[failed_t],
        errors=errors,
        num_raised=num_raised,
        num_nonfinite=num_nonfinite,
    )


def _batch_job(
    sim: Simulator, theta: Tensor, seed: int, batch: int
) -> tuple[Tensor | None, np.ndarray, list[str]]:
    """One batch, self-contained so that an executor can run it in another process."""
    errors: list[str] = []
    x, status = _simulate_batch(sim, theta, _batch_generator(seed, batch), errors)
    return x, status, errors


def _run_batches(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    batches: Iterable[int],
    executor: Any,
) -> Iterator[tuple[int, tuple[Tensor | None, np.ndarray, list[str]]]]:
    """Yield ``(b, result)`` in batch order, computed here or on ``executor``.

    With an executor (anything with ``submit(fn, *args) -> future`` and ``future.result()``:
    a ``concurrent.futures`` pool or a ``dask.distributed.Client``), a window of
    ``max(8, 2 * workers)`` batches is in flight; results are taken in order so each one is
    saved as soon as every batch before it is.
    """
    chunks = ((b, theta[b * batch_size : (b + 1) * batch_size]) for b in batches)
    if executor is None:
        for b, chunk in chunks:
            yield b, _batch_job(sim, chunk, seed, b)
        return
    window = max(8, 2 * _num_workers(executor))
    pending: collections.deque = collections.deque()
    try:
        for b, chunk in chunks:
            pending.append((b, executor.submit(_batch_job, sim, chunk, seed, b)))
            if len(pending) >= window:
                b0, future = pending.popleft()
                yield b0, future.result()
        while pending:
            b0, future = pending.popleft()
            yield b0, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _num_workers(executor: Any) -> int:
    workers = getattr(executor, "_max_workers", None)  # concurrent.futures pools
    if workers is None and hasattr(executor, "nthreads"):  # dask.distributed.Client
        try:
            workers = sum(executor.nthreads().values())
        except Exception:  # noqa: BLE001 - a sizing hint only
            workers = None
    return int(workers or 4)


def run_simulator(
    simulator: Callable | Simulator,
    theta: Tensor,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    bank: str | Path | None = None,
    executor: Any = None,
) -> Simulations:
    """Simulate for given parameters ``theta`` (``(N, D)``); see :func:`simulate`."""
    sim = as_simulator(simulator)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.ndim != 2:
        raise ShapeError(f"theta must have shape (N, D); got {tuple(theta.shape)}.")
    if batch_size < 1:
        raise SimulationError(f"batch_size must be a positive integer, got {batch_size}.")
    n = theta.shape[0]
    store = None if bank is None else Bank.open(bank, theta, seed, batch_size)
    done = store.done_batches() if store is not None else set()
    todo = [b for b in range(-(-n // batch_size)) if b not in done]
    xs: dict[int, Tensor | None] = {}
    statuses: dict[int, np.ndarray] = {}
    errors: list[str] = []
    results = _run_batches(sim, theta, seed, batch_size, todo, executor)
    if progress:
        from tqdm.auto import tqdm

        total = len(todo) + len(done)
        results = tqdm(results, desc="simulating", unit="batch", initial=len(done), total=total)
    try:
        for b, (x, status, batch_errors) in results:
            errors.extend(e for e in batch_errors if e not in errors and len(errors) < 5)
            if store is not None:
                store.write(b, x, status, errors)
            else:
                xs[b], statuses[b] = x, status
    except KeyboardInterrupt as exc:
        raise _interrupted(theta, batch_size, store, xs, statuses, errors) from exc
    if store is not None:
        _, x_all, status, errors = store.read()
    else:
        x_all, status = _assemble(n, batch_size, xs, statuses)
    return _collect(theta, x_all, status, errors)


def _interrupted(
    theta: Tensor,
    batch_size: int,
    store: Bank | None,
    xs: dict[int, Tensor | None],
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
    x_all, status = _assemble(len(theta), batch_size, xs, statuses)
    try:
        partial = _collect(theta, x_all, status, errors, warn=False)
    except SimulationError:
        partial = None
    kept = 0 if partial is None else len(partial.theta)
    return SimulationInterrupted(
        f"Interrupted after {len(statuses)} batches; the {kept} finished simulations are in "
        "exc.partial (theta, x = exc.partial). Pass bank='run.zarr' to save every batch to "
        "disk and resume after an interruption.",
        partial=partial,
    )


def read_bank(path: str | Path) -> Simulations:
    """The simulations saved so far in the bank at ``path`` (see :mod:`simgen.bank`)."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise SimulationError(f"No simulation bank at {path}; create one with simulate(bank=).")
    group = zarr.open_group(str(path), mode="r")
    theta, x, status, errors = Bank(group, path).read()
    return _collect(theta, x, status, errors)


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
) -> Simulations:
    """Draw ``num_simulations`` pairs :math:`(\\theta_i, x_i)` from :math:`p(\\theta) p(x|\\theta)`.

    Args:
        simulator: Batched callable ``theta (N, D) -> x (N, ...)``; may take ``generator=``.
        prior: Any distribution with ``sample`` and ``log_prob`` and event shape ``(D,)``.
        num_simulations: How many to draw (failures are excluded, so a few less may return).
        seed: Makes the result reproducible; ``None`` draws a fresh seed.
        batch_size: Rows per simulator call.
        progress: Show a progress bar.
        bank: Path of a zarr store (:mod:`simgen.bank`) that receives every finished batch.
            Calling again with the same arguments resumes an interrupted run (and, once it
            is complete, just reads it back); the result is identical to an uninterrupted run.
        executor: Run batches in parallel: a ``concurrent.futures`` pool (e.g.
            ``ProcessPoolExecutor`` for local processes) or a ``dask.distributed.Client`` for
            a cluster. Batches are seeded by their index, so the result is the same as a
            serial run; the simulator must be picklable for other processes.

    Raises:
        SimulationInterrupted: On Ctrl-C. Nothing finished is lost: it is in the bank, or,
            without one, in the exception's ``partial`` result.

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
    return run_simulator(
        simulator,
        theta,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        bank=bank,
        executor=executor,
    )
