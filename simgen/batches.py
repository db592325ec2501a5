"""One batch of simulations: seeded, with failing rows isolated, run here or on an executor.

Batch ``b`` gets its own generator seeded from ``(seed, b)`` alone, so a batch gives the same
simulations whichever process runs it and in whatever order. A batch that raises is bisected
until the failing rows are isolated; rows whose output holds NaN or ±inf are marked as such.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bank import JOINT_ARRAYS, NONFINITE, OK, RAISED
from .errors import ShapeError
from .simulator import Simulator

__all__ = ["batch_generator", "batch_job", "run_batches", "Outputs", "BatchResult"]

Outputs = dict[str, Tensor]
#: ``(outputs or None, status, errors)`` of one batch.
BatchResult = tuple[Outputs | None, np.ndarray, list[str]]


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """The generator of batch ``batch`` under ``seed``."""
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
    x = x.detach()
    return x.float() if x.dtype == torch.float64 else x


def _call(sim: Simulator, theta: Tensor, generator: torch.Generator, joint: bool) -> Outputs:
    """One simulator call as named outputs, each with a row per row of ``theta``.

    The simulator gets a copy of ``theta``, so one that edits its input in place cannot
    change the parameters the result pairs with ``x``."""
    n = theta.shape[0]
    if not joint:
        return {"x": _as_tensor(sim(theta.clone(), generator=generator), n)}
    trace = sim.trace(theta.clone(), generator=generator)
    outputs = {"x": _as_tensor(trace.x, n)}
    for name in JOINT_ARRAYS:
        outputs[name] = _as_tensor(getattr(trace, name), n)
    return outputs


def _blank(like: Tensor, n: int) -> Tensor:
    """Rows for failed simulations: NaN for floats, so that they can never pass for data."""
    fill = float("nan") if like.is_floating_point() else 0
    return like.new_full((n, *like.shape[1:]), fill)


def _call_isolating_failures(
    sim: Simulator, theta: Tensor, generator: torch.Generator, errors: list[str], joint: bool
) -> tuple[Outputs | None, Tensor]:
    """Simulate ``theta``; on an exception, bisect to find the rows that raise.

    Returns ``(outputs, ok)`` where every output has a row for every row of ``theta``
    (NaN or 0 where ``ok`` is False), or ``outputs`` is None when every row failed.
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
    outs = [out for out, _ in parts if out is not None]
    if not outs:
        return None, torch.zeros(n, dtype=torch.bool)
    if len(outs) == 2:
        for name, value in outs[0].items():
            other = outs[1][name]
            if (value.shape[1:], value.dtype) != (other.shape[1:], other.dtype):
                raise ShapeError(
                    f"The simulator returned {name} rows of shape/dtype {tuple(value.shape[1:])}"
                    f" {value.dtype} for some parameters and {tuple(other.shape[1:])} "
                    f"{other.dtype} for others; it must return one shape and dtype."
                )
    template = outs[0]
    merged = {
        name: torch.cat(
            [out[name] if out is not None else _blank(first, len(ok)) for out, ok in parts]
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


def batch_job(
    sim: Simulator, theta: Tensor, seed: int, batch: int, joint: bool = False
) -> BatchResult:
    """One batch, self-contained so that an executor can run it in another process."""
    errors: list[str] = []
    outputs, status = _simulate_batch(sim, theta, batch_generator(seed, batch), errors, joint)
    return outputs, status, errors


def run_batches(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    batches: Iterable[int],
    executor: Any,
    joint: bool = False,
) -> Iterator[tuple[int, BatchResult]]:
    """Yield ``(b, result)`` in batch order, computed here or on ``executor``.

    With an executor (anything with ``submit(fn, *args) -> future`` and ``future.result()``:
    a ``concurrent.futures`` pool or a ``dask.distributed.Client``), a window of
    ``max(8, 2 * workers)`` batches is in flight; results are taken in order so each one is
    saved as soon as every batch before it is.
    """
    chunks = ((b, theta[b * batch_size : (b + 1) * batch_size]) for b in batches)
    if executor is None:
        for b, chunk in chunks:
            yield b, batch_job(sim, chunk, seed, b, joint)
        return
    window = max(8, 2 * _num_workers(executor))
    pending: collections.deque = collections.deque()
    try:
        for b, chunk in chunks:
            pending.append((b, executor.submit(batch_job, sim, chunk, seed, b, joint)))
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
