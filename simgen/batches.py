"""Batches of simulations: seeded, with failing rows isolated, run here or on workers.

Every simulator call gets a fresh generator seeded from ``(seed, batch, start)`` alone, where
``start`` is the first row of the call within its batch (a whole batch is ``start=0``).
So a batch gives the same simulations whichever process runs it, in whatever order, and a
retried call repeats exactly the randomness of its first try. A call that raises is retried
up to ``retries`` times, then bisected until the failing rows are isolated; rows whose output
holds NaN or ±inf are marked as such.

On workers (:mod:`simgen.workers`) a call that runs past its timeout or takes its worker
process down is handled the same way, one level up.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .bank import JOINT_ARRAYS, NONFINITE, OK, RAISED, RATIO_ARRAYS
from .errors import ShapeError
from .simulator import Simulator

__all__ = ["batch_generator", "batch_job", "join", "Outputs", "BatchResult", "Piece"]

Outputs = dict[str, Tensor]
#: ``(outputs or None, status, attempts)`` of some consecutive rows.
Piece = tuple[Outputs | None, np.ndarray, np.ndarray]
#: ``(outputs or None, status, errors, attempts)`` of one batch.
BatchResult = tuple[Outputs | None, np.ndarray, list[str], np.ndarray]


def batch_generator(seed: int, batch: int, start: int = 0) -> torch.Generator:
    """The generator of the call on rows ``start, ...`` of batch ``batch`` under ``seed``."""
    # SeedSequence mixes (seed, batch[, start]) into independent, reproducible streams.
    key = [seed, batch] if start == 0 else [seed, batch, start]
    state = np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0]
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
    ratio = getattr(trace, "joint_log_ratio", None) is not None  # simgen.joint_ratio
    for name in (*JOINT_ARRAYS, *(RATIO_ARRAYS if ratio else ())):
        outputs[name] = _as_tensor(getattr(trace, name), n)
    return outputs


def _blank(like: Tensor, n: int) -> Tensor:
    """Rows for failed simulations: NaN for floats, so that they can never pass for data."""
    fill = float("nan") if like.is_floating_point() else 0
    return like.new_full((n, *like.shape[1:]), fill)


def _finished(outputs: Outputs, attempt: int) -> Piece:
    """A successful call as a piece; a row is ``NONFINITE`` when any of its outputs (``x``,
    or with ``joint`` also the log-density or score) holds NaN or ±inf."""
    finite = torch.stack(
        [torch.isfinite(v.reshape(len(v), -1).float()).all(-1) for v in outputs.values()]
    ).all(0)
    status = np.where(finite.numpy(), OK, NONFINITE).astype(np.int8)
    return outputs, status, np.full(len(status), attempt, dtype=np.int16)


def _failed(n: int, code: int, attempts: int) -> Piece:
    return None, np.full(n, code, dtype=np.int8), np.full(n, attempts, dtype=np.int16)


def join(parts: list[Piece]) -> Piece:
    """Consecutive pieces as one, failed rows blank (NaN or 0) in every output."""
    outs = [out for out, _, _ in parts if out is not None]
    status = np.concatenate([s for _, s, _ in parts])
    attempts = np.concatenate([a for _, _, a in parts])
    if not outs:
        return None, status, attempts
    for other in outs[1:]:
        for name, value in outs[0].items():
            got = other[name]
            if (value.shape[1:], value.dtype) != (got.shape[1:], got.dtype):
                raise ShapeError(
                    f"The simulator returned {name} rows of shape/dtype {tuple(value.shape[1:])}"
                    f" {value.dtype} for some parameters and {tuple(got.shape[1:])} "
                    f"{got.dtype} for others; it must return one shape and dtype."
                )
    merged = {
        name: torch.cat(
            [out[name] if out is not None else _blank(first, len(s)) for out, s, _ in parts]
        )
        for name, first in outs[0].items()
    }
    return merged, status, attempts


def _settle(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch: int,
    start: int,
    joint: bool,
    retries: int,
    errors: list[str],
) -> Piece:
    """Simulate rows ``start, ...`` of a batch; a call that raises is tried ``retries`` more
    times with the same generator, then bisected to find the rows that raise."""
    n = theta.shape[0]
    for attempt in range(1, retries + 2):
        try:
            outputs = _call(sim, theta, batch_generator(seed, batch, start), joint)
        except ShapeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any simulator failure is recorded, not fatal
            message = f"{type(exc).__name__}: {exc}"
        else:
            return _finished(outputs, attempt)
    if n == 1:
        if len(errors) < 5 and message not in errors:
            errors.append(message)
        return _failed(1, RAISED, retries + 1)
    half = n // 2
    return join(
        [
            _settle(sim, theta[:half], seed, batch, start, joint, retries, errors),
            _settle(sim, theta[half:], seed, batch, start + half, joint, retries, errors),
        ]
    )


def batch_job(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch: int,
    joint: bool = False,
    retries: int = 0,
    start: int = 0,
) -> BatchResult:
    """Rows ``start, ...`` of batch ``batch``, self-contained so that a worker process can
    run it; status codes as in :mod:`simgen.bank`, ``attempts`` the tries of each row."""
    errors: list[str] = []
    outputs, status, attempts = _settle(sim, theta, seed, batch, start, joint, retries, errors)
    return outputs, status, errors, attempts
