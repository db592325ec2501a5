"""Simulation calls on workers that may hang or die: timeouts, crashed workers and retries.

:func:`schedule` hands batches to workers and watches each call. A call that raises is
handled inside the worker (:func:`simgen.batches.batch_job` retries and bisects it). A call
that runs past ``timeout`` or takes its worker down is retried ``retries`` times, then split
in halves until the rows that cause it are isolated and recorded as ``TIMEOUT`` or
``CRASHED``; the run goes on. simgen does that where it may stop workers:

* its own process pool (``workers=N``): a call past its timeout is stopped by ending the
  pool's processes; a dead worker breaks the whole pool, so the pool is rebuilt, the calls
  that were running are requeued as suspects and run one at a time until the one that
  crashes alone is found;
* its own Dask cluster (``executor="dask"``: a ``LocalCluster`` of ``workers`` processes
  with one thread each, started with ``allowed-failures`` 0, so that the scheduler gives up
  on a call at the first worker it kills): every call that loses its worker is requeued as
  a suspect, and a suspect that loses one alone is retried and bisected;
* any Dask cluster whose workers have a nanny (``processes=True``, the default of
  ``LocalCluster`` and the job-queue clusters), for timeouts: the clock of a call starts
  when its worker starts running it (the task notes that in its worker process, and simgen
  asks the workers when a deadline passes, so a call waiting for a worker or for its
  worker's imports is never late). A late call is cancelled and its worker process ended
  (its nanny starts a fresh one); simgen's other calls on that worker are cancelled first
  and requeued untouched, and other work there is rerun by Dask as after any lost worker.

simgen cannot stop a thread (a Dask cluster without nannies, ``processes=False``) nor stop
or replace a worker of a ``concurrent.futures`` pool the caller passed, and it does not
kill the workers of a Dask client it was given over and over to find a crashing row. So a
call past its timeout there, a dead worker of a passed pool, and a call on a passed Dask
client that Dask gave up on (``KilledWorker``: it took its allowed number of workers down)
stop the run with a :class:`~simgen.errors.SimulationStopped` naming the rows (what had
finished is kept).

A run that stops (a call raises, a batch's outputs have another shape or dtype than the
first batch's, a worker of a passed pool dies or runs late) submits nothing more and waits
for the calls still in flight, at most ``DRAIN_S`` and never for one past its timeout; each
whole batch among them that finishes, with the first batch's layout, is delivered before
the error is raised, so the finished simulations (``exc.partial``, or the bank) keep it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import math
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from torch import Tensor

from .bank import CRASHED, TIMEOUT, check_like, layout
from .batches import BatchResult, Piece, batch_job, join
from .errors import ConfigError, ShapeError, SimulationStopped
from .simulator import Simulator
from .workers_dask import _dask_cluster, _exit_worker, _running, dask_job

__all__ = ["run_batches", "Workers", "schedule"]

#: Seconds between looks at Dask calls (they cannot be waited on with concurrent.futures).
POLL = 0.05

#: Seconds to wait for the Dask scheduler to drop cancelled calls before ending a worker.
CANCEL_WAIT = 10.0

#: Seconds a stopping run waits for its calls in flight: long enough for a batch of calls of
#: a few seconds to finish, short enough that the error is not held back long.
DRAIN_S = 30.0


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
    pool or a ``dask.distributed.Client``) or ``"dask"`` (a local cluster of ``workers``
    processes that simgen owns); ``workers=N`` alone makes a process pool of N that simgen
    owns and rebuilds when a worker dies or runs past ``timeout`` (seconds per call, counted
    from when a free worker gets it). Without ``timeout`` up to ``max(8, 2 *
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
    """The executor a run uses, and what simgen may do to its workers.

    ``kind`` is ``"own"`` (simgen's process pool), ``"dask"`` or ``"user"`` (a
    ``concurrent.futures`` pool passed in); ``owned`` says whether simgen started the
    workers, and so may kill them to find a row that crashes one."""

    def __init__(self, executor: Any, workers: int | None, timeout: float | None, sim: Any):
        self.cluster: Any = None
        if executor is None or executor == "dask":
            try:
                pickle.dumps(sim)
            except Exception as exc:  # noqa: BLE001 - any pickling failure is the same mistake
                raise ConfigError(
                    f"workers=, timeout= and executor='dask' run the simulator in other "
                    f"processes, so it must be picklable, and {sim!r} is not "
                    f"({type(exc).__name__}: {exc}). Define it as a module-level function or "
                    "class instead of a lambda or closure."
                ) from exc
        if executor is None:
            self.kind, self.owned, self.size = "own", True, int(workers or 1)
            self.executor: Any = cf.ProcessPoolExecutor(self.size)
        elif executor == "dask":
            self.kind, self.owned, self.size = "dask", True, int(workers or os.cpu_count() or 1)
            self.cluster, self.executor = _dask_cluster(self.size)
        else:
            self.kind = "dask" if type(executor).__module__.startswith("distributed") else "user"
            self.owned, self.size, self.executor = False, _num_workers(executor), executor
        queued = timeout is None and not (self.kind == "own" or self.cluster is not None)
        self.limit = max(8, 2 * self.size) if queued else self.size

    def submit(self, *args: Any) -> Any:
        if self.kind == "dask":  # a new key for every call: a retry is not the cancelled one
            return self.executor.submit(dask_job, *args, pure=False)
        return self.executor.submit(batch_job, *args)

    def lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, BrokenProcessPool) or type(exc).__name__ == "KilledWorker"

    def restart(self) -> None:
        """End every process of simgen's own pool and start a new pool."""
        _kill(self.executor)
        self.executor = cf.ProcessPoolExecutor(self.size)

    def started(self) -> tuple[dict[str, tuple[str, float]], set[str]]:
        """Dask: the worker running each call that has started and for how many seconds,
        by task key, and the addresses of the workers that have a nanny (may be ended)."""
        report = self.executor.run(_running, on_error="ignore")
        elapsed = {k: (a, t) for a, r in report.items() for k, t in r["running"].items()}
        return elapsed, {a for a, r in report.items() if r["nanny"]}

    def where(self, keys: set[str]) -> dict[str, set[str]]:
        """Dask: the keys among ``keys`` that each worker holds (running or waiting)."""
        held = self.executor.processing()
        return {a: set(k) & keys for a, k in held.items() if set(k) & keys}

    def end_workers(self, addresses: set[str], cancelled: set[str]) -> None:
        """Dask: end these worker processes (their nannies start fresh ones), once the
        scheduler has dropped the ``cancelled`` keys: a key it still held would be run
        again on another worker, where a thread that hangs could not be stopped."""
        end = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < end and any(set(self.where(cancelled))):
            time.sleep(POLL)
        self.executor.run(_exit_worker, workers=list(addresses), wait=False, on_error="ignore")

    def done_with(self, future: Any) -> None:
        """Dask: drop a delivered result from the cluster's memory at once (a worker that
        is ended later would otherwise make the scheduler compute it again)."""
        if self.kind == "dask":
            future.release()

    def close(self) -> None:
        if self.kind == "own":
            _kill(self.executor)
        elif self.cluster is not None:
            with contextlib.suppress(Exception):  # already closing
                self.executor.close()
            with contextlib.suppress(Exception):
                self.cluster.close()
            self.cluster.simgen_settings.__exit__(None, None, None)


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
    docstring for what happens to calls that hang or crash, and to the calls in flight when
    the run stops).

    Raises:
        ShapeError: A batch's outputs differ in shape or dtype from the first batch's.
    """
    n = theta.shape[0]
    sizes = {b: min(batch_size, n - b * batch_size) for b in batches}
    todo = collections.deque(Call(b, 0, size) for b, size in sizes.items())
    quarantine: collections.deque[Call] = collections.deque()
    running: dict[Any, tuple[Call, float]] = {}
    pieces: dict[int, list[tuple[int, Piece]]] = collections.defaultdict(list)
    errors: dict[int, list[str]] = collections.defaultdict(list)
    expected: dict = {}

    def checked(done: tuple[int, BatchResult]) -> tuple[int, BatchResult]:
        b, outputs = done[0], done[1][0]
        if outputs is not None:
            if expected:
                check_like(expected, outputs, b)
            else:
                expected.update(layout(outputs))
        return done

    def drain() -> Iterator[tuple[int, BatchResult]]:
        """The whole batches that finish among the calls in flight (module docstring)."""
        end = time.monotonic() + DRAIN_S
        while time.monotonic() < end:
            now = time.monotonic()
            waiting = {f: v for f, v in running.items() if v[1] > now and not f.done()}
            finished = [f for f in running if f.done()]
            if not finished and not waiting:
                return
            if not finished:
                _wait(pool, waiting)
                continue
            for future in finished:
                call, _ = running.pop(future)
                if future.cancelled() or future.exception() is not None:
                    continue
                outputs, status, errs, attempts = future.result()
                pool.done_with(future)
                done = settle(call, (outputs, status, attempts), errs)
                try:
                    done = None if done is None else checked(done)
                except ShapeError:  # a batch unlike the first is no finished simulation
                    done = None
                if done is not None:
                    yield done

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
                    pool.done_with(future)
                    done = settle(call, (outputs, status, attempts), errs)
                elif not pool.lost_worker(exc):
                    raise exc
                elif not pool.owned:
                    others = [c for c, _ in running.values()] if pool.kind == "user" else []
                    raise _stopped([call, *others], batch_size, "crash", kind=pool.kind)
                elif pool.kind == "dask":  # alone, it crashed its worker; else find out
                    done = fail(call, CRASHED) if call.suspect else None
                    if not call.suspect:
                        requeue([dataclasses.replace(call, suspect=True)])
                else:
                    broken.append(call)
                    done = None
                if done is not None:
                    yield checked(done)
            if broken:  # every call running on the pool died with it; find which crashed
                lost = broken + [c for c, _ in running.values()]
                running.clear()
                pool.restart()
                if len(lost) == 1:
                    done = fail(lost[0], CRASHED)
                    if done is not None:
                        yield checked(done)
                else:
                    requeue(dataclasses.replace(c, suspect=True) for c in lost)
            now = time.monotonic()
            late = [f for f, (_, deadline) in running.items() if now > deadline and not f.done()]
            if not late:
                continue
            if pool.kind == "dask":
                late = _dask_late(pool, late, running, timeout, batch_size, requeue)
                calls = [running.pop(f)[0] for f in late]
            elif pool.kind == "user":
                raise _stopped([running[f][0] for f in late], batch_size, "timeout", timeout)
            else:
                calls = [running.pop(f)[0] for f in late]
                requeue(c for c, _ in running.values())
                running.clear()
                pool.restart()
            for call in calls:
                done = fail(call, TIMEOUT)
                if done is not None:
                    yield checked(done)
    except Exception:
        yield from drain()
        raise
    finally:
        for future in running:
            future.cancel()


def _dask_late(pool: Workers, late: list, running: dict, timeout, batch_size: int, requeue):
    """The calls among ``late`` that have run past ``timeout`` on a Dask worker, now
    cancelled and their workers ended; simgen's other calls on those workers are cancelled
    and requeued, and a late call that had not started yet gets a new deadline."""
    elapsed, stoppable = pool.started()
    now, over, workers = time.monotonic(), [], set()
    for future in late:
        call, _ = running[future]
        address, ran = elapsed.get(str(future.key), (None, 0.0))
        if address is None or ran < timeout:  # waiting for a worker, or started late
            running[future] = (call, now + timeout - ran)
        else:
            over.append(future)
            workers.add(address)
    if not over:
        return []
    if not workers <= stoppable:
        calls = [running[f][0] for f in over]
        raise _stopped(calls, batch_size, "timeout", timeout, "threads")
    keys = {str(f.key): f for f in running}
    held = pool.where(set(keys))
    innocent = {keys[k] for a in workers for k in held.get(a, ())} - set(over)
    innocent |= {keys[k] for k, (a, _) in elapsed.items() if a in workers and k in keys}
    innocent -= set(over)
    for future in [*over, *innocent]:
        future.cancel()
    requeue(running.pop(f)[0] for f in sorted(innocent, key=lambda f: running[f][0].batch))
    pool.end_workers(workers, {str(f.key) for f in [*over, *innocent]})
    return over


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


def _stopped(
    calls: list[Call],
    batch_size: int,
    why: str,
    timeout: float | None = None,
    kind: str = "user",
) -> SimulationStopped:
    rows = "; ".join(c.rows(batch_size) for c in calls)
    if why == "timeout" and kind == "threads":
        return SimulationStopped(
            f"The simulation of {rows} ran past timeout={timeout} s on a Dask worker without "
            "a nanny (a thread, as in LocalCluster(processes=False)), which is still running "
            "it: a thread cannot be stopped. Use worker processes (LocalCluster(processes="
            "True), dask-worker with its nanny), executor='dask' or workers=N, so that simgen "
            "ends such calls and records those rows as failed."
        )
    if why == "timeout":
        return SimulationStopped(
            f"The simulation of {rows} ran past timeout={timeout} s on a worker of the "
            "executor passed in, which is still running it: simgen cannot stop a worker of "
            "a pool it was given (shut it down). Pass workers=N or a Dask client instead of "
            "executor=pool so that simgen stops such calls and records those rows as failed."
        )
    if kind == "dask":
        return SimulationStopped(
            f"The simulation of {rows} took down every Dask worker that ran it (os.abort, a "
            "segfault, out of memory) until Dask gave up on it (KilledWorker); simgen does "
            "not keep killing the workers of a cluster it was given to find the row. Pass "
            "executor='dask' (a local cluster simgen owns) or workers=N so that simgen "
            "records the rows that crash as failed and goes on."
        )
    return SimulationStopped(
        f"A worker process of the executor passed in died (os.abort, a segfault, out of "
        f"memory) while simulating {rows}; one of these calls took it down, and simgen "
        "cannot rebuild a pool it was given. Pass workers=N instead of executor= so that "
        "simgen rebuilds its own pool and records the rows that crash as failed."
    )
