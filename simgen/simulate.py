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

import collections
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .bank import JOINT_ARRAYS, NONFINITE, NOT_RUN, OK, RAISED, Bank
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


Outputs = dict[str, Tensor]


def _call(sim: Simulator, theta: Tensor, generator: torch.Generator, joint: bool) -> Outputs:
    """One simulator call as named outputs, each with a row per row of ``theta``."""
    n = theta.shape[0]
    if not joint:
        return {"x": _as_tensor(sim(theta, generator=generator), n)}
    trace = sim.trace(theta, generator=generator)
    outputs = {"x": _as_tensor(trace.x, n)}
    for name in JOINT_ARRAYS:
        outputs[name] = _as_tensor(getattr(trace, name), n)
    return outputs


def _call_isolating_failures(
    sim: Simulator, theta: Tensor, generator: torch.Generator, errors: list[str], joint: bool
) -> tuple[Outputs | None, Tensor]:
    """Simulate ``theta``; on an exception, bisect to find the rows that raise.

    Returns ``(outputs, ok)`` where every output has a row for every row of ``theta``
    (garbage where ``ok`` is False), or ``outputs`` is None when every row failed.
    """
    n = theta.shape[0]
    try:
        return _call(sim, theta, generator, joint), torch.ones(n, dtype=torch.bool)
    except ShapeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any simulator failure is recorded, not fatal
        if n == 1:
            if len(errors) < 5 and f"{type(exc).__name__}: {exc}" not in errors:
                errors.append(f"{type(exc).__name__}: {exc}")
            return None, torch.zeros(1, dtype=torch.bool)
    half = n // 2
    parts = [
        _call_isolating_failures(sim, theta[:half], generator, errors, joint),
        _call_isolating_failures(sim, theta[half:], generator, errors, joint),
    ]
    template = next((out for out, _ in parts if out is not None), None)
    if template is None:
        return None, torch.zeros(n, dtype=torch.bool)
    merged = {
        name: torch.cat(
            [
                out[name] if out is not None else first.new_zeros((len(ok), *first.shape[1:]))
                for out, ok in parts
            ]
        )
        for name, first in template.items()
    }
    return merged, torch.cat([ok for _, ok in parts])


def _simulate_batch(
    sim: Simulator, theta: Tensor, generator: torch.Generator, errors: list[str], joint: bool
) -> tuple[Outputs | None, np.ndarray]:
    """``(outputs or None, status)`` for one batch; status codes as in :mod:`simgen.bank`.

    A row is ``NONFINITE`` when any of its outputs (``x``, or with ``joint`` also the
    log-density or score) holds NaN or ±inf.
    """
    outputs, ok = _call_isolating_failures(sim, theta, generator, errors, joint)
    status = np.where(ok.numpy(), OK, RAISED).astype(np.int8)
    if outputs is not None:
        finite = torch.stack(
            [torch.isfinite(v.reshape(len(v), -1).float()).all(-1) for v in outputs.values()]
        ).all(0)
        status[(status == OK) & ~finite.numpy()] = NONFINITE
    return outputs, status


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


def _batch_job(
    sim: Simulator, theta: Tensor, seed: int, batch: int, joint: bool = False
) -> tuple[Outputs | None, np.ndarray, list[str]]:
    """One batch, self-contained so that an executor can run it in another process."""
    errors: list[str] = []
    outputs, status = _simulate_batch(sim, theta, _batch_generator(seed, batch), errors, joint)
    return outputs, status, errors


def _run_batches(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    batches: Iterable[int],
    executor: Any,
    joint: bool = False,
) -> Iterator[tuple[int, tuple[Outputs | None, np.ndarray, list[str]]]]:
    """Yield ``(b, result)`` in batch order, computed here or on ``executor``.

    With an executor (anything with ``submit(fn, *args) -> future`` and ``future.result()``:
    a ``concurrent.futures`` pool or a ``dask.distributed.Client``), a window of
    ``max(8, 2 * workers)`` batches is in flight; results are taken in order so each one is
    saved as soon as every batch before it is.
    """
    chunks = ((b, theta[b * batch_size : (b + 1) * batch_size]) for b in batches)
    if executor is None:
        for b, chunk in chunks:
            yield b, _batch_job(sim, chunk, seed, b, joint)
        return
    window = max(8, 2 * _num_workers(executor))
    pending: collections.deque = collections.deque()
    try:
        for b, chunk in chunks:
            pending.append((b, executor.submit(_batch_job, sim, chunk, seed, b, joint)))
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
    joint: bool = False,
) -> Simulations:
    """Simulate for given parameters ``theta`` (``(N, D)``); see :func:`simulate`."""
    sim = as_simulator(simulator)
    if joint and not callable(getattr(sim, "trace", None)):
        raise SimulationError(
            f"joint=True needs a simulator with trace(theta, generator=) returning a Trace "
            f"with joint_log_prob and joint_score; {sim!r} has none. Wrap a pyro program "
            "with simgen.from_pyro, or implement trace on your Simulator subclass."
        )
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if theta.ndim != 2:
        raise ShapeError(f"theta must have shape (N, D); got {tuple(theta.shape)}.")
    if batch_size < 1:
        raise SimulationError(f"batch_size must be a positive integer, got {batch_size}.")
    n = theta.shape[0]
    store = None if bank is None else Bank.open(bank, theta, seed, batch_size, joint)
    done = store.done_batches() if store is not None else set()
    todo = [b for b in range(-(-n // batch_size)) if b not in done]
    outs: dict[int, Outputs | None] = {}
    statuses: dict[int, np.ndarray] = {}
    errors: list[str] = []
    results = _run_batches(sim, theta, seed, batch_size, todo, executor, joint)
    if progress:
        from tqdm.auto import tqdm

        total = len(todo) + len(done)
        results = tqdm(results, desc="simulating", unit="batch", initial=len(done), total=total)
    try:
        for b, (outputs, status, batch_errors) in results:
            errors.extend(e for e in batch_errors if e not in errors and len(errors) < 5)
            if store is not None:
                store.write(b, outputs, status, errors)
            else:
                outs[b], statuses[b] = outputs, status
    except KeyboardInterrupt as exc:
        raise _interrupted(theta, batch_size, store, outs, statuses, errors) from exc
    if store is not None:
        _, merged, status, errors = store.read()
    else:
        merged, status = _assemble(n, batch_size, outs, statuses)
    return _collect(theta, merged, status, errors)


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
    merged, status = _assemble(len(theta), batch_size, outs, statuses)
    try:
        partial = _collect(theta, merged, status, errors, warn=False)
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
    theta, outputs, status, errors = Bank(group, path).read()
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
            serial run; the simulator must be picklable for other processes. In a thread
            pool, pyro programs (and functions without ``generator=``) run one batch at a
            time, since pyro's handler stack and torch's global RNG are process-wide: use
            processes or dask to run them in parallel.
        joint: Also keep each simulation's joint log-density and joint score from the
            simulator's ``trace`` (a :class:`~simgen.simulator.PyroSimulator`, or any
            simulator with ``trace(theta, generator=)``), as ``.joint_log_prob`` ``(N,)`` and
            ``.joint_score`` ``(N, D)``, banked with ``x``. ``x`` is the same as without it.

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
        joint=joint,
    )
