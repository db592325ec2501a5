"""Simulation calls on workers that may hang or die: timeouts, crashed workers and retries.

:func:`schedule` hands batches to workers and watches each call. A call that raises is
handled inside the worker (:func:`simgen.batches.batch_job` retries and bisects it). A call
that runs past ``timeout`` or takes its worker down is retried ``retries`` times, then split
in halves until the rows that cause it are isolated and recorded as ``TIMEOUT`` or
``CRASHED``; the run goes on. simgen can do that where it may stop workers:

* its own process pool (``workers=N``): a call past its timeout is stopped by ending the
  pool's processes; a dead worker breaks the whole pool, so the pool is rebuilt, the calls
  that were running are requeued as suspects and run one at a time until the one that
  crashes alone is found;
* a Dask client, for dead workers only: Dask replaces a worker that dies and gives up on a
  call after its allowed failures with ``KilledWorker``, which simgen bisects.

A running Dask task cannot be stopped (its thread keeps running; restarting its worker
also kills innocent calls, which would then be recorded as failed), and simgen cannot stop
or replace a worker of a ``concurrent.futures`` pool the caller passed. So on those a call
past its timeout, or a dead worker of a passed pool, stops the run with a
:class:`~simgen.errors.SimulationStopped` naming the rows (what had finished is kept).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import math
import pickle
import time
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from torch import Tensor

from .bank import CRASHED, TIMEOUT
from .batches import BatchResult, Piece, batch_job, join
from .errors import ConfigError, SimulationStopped
from .simulator import Simulator

__all__ = ["run_batches", "Workers", "schedule"]

#: Seconds between looks at Dask calls (they cannot be waited on with concurrent.futures).
POLL = 0.05


@dataclasses.dataclass(frozen=True)
class Call:
    """Rows ``start`` to ``stop - 1`` of batch ``batch``, on try ``tries``; a ``suspect`` may
    have crashed a worker, so it runs alone."""

    batch: int
    start: int
    stop: int
    tries: int = 1
    suspect: bool = False

    def rows(self, batch_size: int) -> str:
        first = self.batch * batch_size + self.start
        return f"rows {first} to {first + self.stop - self.start - 1} (batch {self.batch})"


def run_batches(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    batches: Iterable[int],
    executor: Any = None,
    joint: bool = False,
    retries: int = 0,
    timeout: float | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, BatchResult]]:
    """Yield ``(b, result)`` for each batch as it finishes, computed here or on workers.

    ``executor`` is anything with ``submit(fn, *args) -> future`` (a ``concurrent.futures``
    pool or a ``dask.distributed.Client``); ``workers=N`` makes a process pool of N that
    simgen owns and rebuilds when a worker dies or runs past ``timeout`` (seconds per call,
    counted from when a free worker gets it). Without ``timeout`` up to ``max(8, 2 *
    workers)`` calls are in flight on an executor; with it, one per worker, so that no call
    waits in a queue on its own clock.
    """
    if executor is None and workers is None:
        for b in batches:
            chunk = theta[b * batch_size : (b + 1) * batch_size]
            yield b, batch_job(sim, chunk, seed, b, joint, retries)
        return
    pool = Workers(executor, workers, timeout, sim)
    try:
        yield from schedule(pool, sim, theta, seed, batch_size, batches, joint, retries, timeout)
    finally:
        pool.close()


class Workers:
    """The executor a run uses, and what simgen may do to its workers."""

    def __init__(self, executor: Any, workers: int | None, timeout: float | None, sim: Any):
        if executor is None:
            try:
                pickle.dumps(sim)
            except Exception as exc:  # noqa: BLE001 - any pickling failure is the same mistake
                raise ConfigError(
                    f"workers= and timeout= run the simulator in other processes, so it must "
                    f"be picklable, and {sim!r} is not ({type(exc).__name__}: {exc}). Define it "
                    "as a module-level function or class instead of a lambda or closure."
                ) from exc
            self.kind, self.size = "own", int(workers or 1)
            self.executor: Any = cf.ProcessPoolExecutor(self.size)
        else:
            self.kind = "dask" if type(executor).__module__.startswith("distributed") else "user"
            self.size, self.executor = _num_workers(executor), executor
        queued = timeout is None and self.kind != "own"
        self.limit = max(8, 2 * self.size) if queued else self.size

    def submit(self, *args: Any) -> Any:
        if self.kind == "dask":  # a new key for every call: a retry is not the cancelled one
            return self.executor.submit(batch_job, *args, pure=False)
        return self.executor.submit(batch_job, *args)

    def lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, BrokenProcessPool) or type(exc).__name__ == "KilledWorker"

    def restart(self) -> None:
        """End every process of simgen's own pool and start a new pool."""
        _kill(self.executor)
        self.executor = cf.ProcessPoolExecutor(self.size)

    def close(self) -> None:
        if self.kind == "own":
            _kill(self.executor)


def _kill(pool: cf.ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):  # already gone
            process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _num_workers(executor: Any) -> int:
    workers = getattr(executor, "_max_workers", None)  # concurrent.futures pools
    if workers is None and hasattr(executor, "nthreads"):  # dask.distributed.Client
        try:
            workers = sum(executor.nthreads().values())
        except Exception:  # noqa: BLE001 - a sizing hint only
            workers = None
    return int(workers or 4)


def schedule(
    pool: Workers,
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    batches: Iterable[int],
    joint: bool,
    retries: int,
    timeout: float | None,
) -> Iterator[tuple[int, BatchResult]]:
    """Yield ``(b, result)`` for each batch as its last rows finish (see the module
    docstring for what happens to calls that hang or crash)."""
    n = theta.shape[0]
    sizes = {b: min(batch_size, n - b * batch_size) for b in batches}
    todo = collections.deque(Call(b, 0, size) for b, size in sizes.items())
    quarantine: collections.deque[Call] = collections.deque()
    running: dict[Any, tuple[Call, float]] = {}
    pieces: dict[int, list[tuple[int, Piece]]] = collections.defaultdict(list)
    errors: dict[int, list[str]] = collections.defaultdict(list)

    def settle(call: Call, piece: Piece, errs: list[str]) -> tuple[int, BatchResult] | None:
        b = call.batch
        pieces[b].append((call.start, piece))
        errors[b].extend(errs)
        if sum(len(p[1]) for _, p in pieces[b]) < sizes[b]:
            return None
        outputs, status, attempts = join([p for _, p in sorted(pieces.pop(b), key=_first)])
        return b, (outputs, status, list(dict.fromkeys(errors.pop(b)))[:5], attempts)

    def fail(call: Call, code: int) -> tuple[int, BatchResult] | None:
        suspect = code == CRASHED
        queue = quarantine if suspect else todo
        if call.tries <= retries:
            queue.appendleft(dataclasses.replace(call, tries=call.tries + 1, suspect=suspect))
        elif call.stop - call.start > 1:
            mid = (call.start + call.stop) // 2
            queue.appendleft(Call(call.batch, mid, call.stop, suspect=suspect))
            queue.appendleft(Call(call.batch, call.start, mid, suspect=suspect))
        else:
            return settle(call, _failed(code, call.tries), [])
        return None

    def requeue(calls: Iterable[Call]) -> None:
        for call in reversed(list(calls)):
            (quarantine if call.suspect else todo).appendleft(call)

    def submit(call: Call) -> None:
        first = call.batch * batch_size
        rows = theta[first + call.start : first + call.stop]
        future = pool.submit(sim, rows, seed, call.batch, joint, retries, call.start)
        running[future] = (call, time.monotonic() + (math.inf if timeout is None else timeout))

    try:
        while todo or quarantine or running:
            _fill(pool, todo, quarantine, running, submit, batch_size)
            _wait(pool, running)
            broken = []
            finished = [f for f in running if f.done()]
            # Save what succeeded before acting on a lost worker, which may stop the run.
            for future in sorted(finished, key=lambda f: f.exception() is not None):
                call, _ = running.pop(future)
                exc = future.exception()
                if exc is None:
                    outputs, status, errs, attempts = future.result()
                    done = settle(call, (outputs, status, attempts), errs)
                elif not pool.lost_worker(exc):
                    raise exc
                elif pool.kind == "user":
                    lost = [call, *(c for c, _ in running.values())]
                    raise _stopped(lost, batch_size, "crash")
                elif pool.kind == "dask":
                    done = fail(call, CRASHED)
                else:
                    broken.append(call)
                    done = None
                if done is not None:
                    yield done
            if broken:  # every call running on the pool died with it; find which crashed
                lost = broken + [c for c, _ in running.values()]
                running.clear()
                pool.restart()
                if len(lost) == 1:
                    done = fail(lost[0], CRASHED)
                    if done is not None:
                        yield done
                else:
                    requeue(dataclasses.replace(c, suspect=True) for c in lost)
            now = time.monotonic()
            late = [f for f, (_, deadline) in running.items() if now > deadline and not f.done()]
            if not late:
                continue
            if pool.kind != "own":
                raise _stopped([running[f][0] for f in late], batch_size, "timeout", timeout)
            calls = [running.pop(f)[0] for f in late]
            requeue(c for c, _ in running.values())
            running.clear()
            pool.restart()
            for call in calls:
                done = fail(call, TIMEOUT)
                if done is not None:
                    yield done
    finally:
        for future in running:
            future.cancel()


def _first(item: tuple[int, Piece]) -> int:
    return item[0]


def _failed(code: int, tries: int) -> Piece:
    return None, np.full(1, code, dtype=np.int8), np.full(1, tries, dtype=np.int16)


def _fill(pool: Workers, todo, quarantine, running, submit, batch_size: int) -> None:
    """Start calls: suspects one at a time on an idle pool, others up to ``pool.limit``."""
    while True:
        if quarantine:
            if running:
                return
            queue = quarantine
        elif todo and len(running) < pool.limit:
            if any(c.suspect for c, _ in running.values()):
                return
            queue = todo
        else:
            return
        call = queue.popleft()
        try:
            submit(call)
        except BrokenProcessPool:
            queue.appendleft(call)
            if running:  # their futures report the break
                return
            if pool.kind != "own":
                raise _stopped([call], batch_size, "crash") from None
            pool.restart()


def _wait(pool: Workers, running: dict[Any, tuple[Call, float]]) -> None:
    """Wait until a call finishes, the next deadline passes, or a second has gone by."""
    if not running:
        return
    deadline = min(d for _, d in running.values())
    wait = min(1.0, max(0.0, deadline - time.monotonic()) + 0.01)
    if pool.kind == "dask":
        end = time.monotonic() + wait
        while time.monotonic() < end and not any(f.done() for f in running):
            time.sleep(POLL)
        return
    cf.wait(list(running), timeout=wait, return_when=cf.FIRST_COMPLETED)


def _stopped(calls: list[Call], batch_size: int, why: str, timeout: float | None = None):
    rows = "; ".join(c.rows(batch_size) for c in calls)
    if why == "timeout":
        return SimulationStopped(
            f"The simulation of {rows} ran past timeout={timeout} s on a worker of the "
            "executor passed in, which is still running it: simgen cannot stop a worker of "
            "a pool or Dask cluster it was given (shut it down, or restart that worker). "
            "Pass workers=N "
            "instead of executor= so that simgen stops such calls and records those rows "
            "as failed."
        )
    return SimulationStopped(
        f"A worker process of the executor passed in died (os.abort, a segfault, out of "
        f"memory) while simulating {rows}; one of these calls took it down, and simgen "
        "cannot rebuild a pool it was given. Pass workers=N instead of executor= so that "
        "simgen rebuilds its own pool and records the rows that crash as failed."
    )
