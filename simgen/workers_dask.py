"""The Dask side of :mod:`simgen.workers`: simgen's own local cluster, and what runs in a Dask
worker process (the call that notes when it started, the report of running calls, the exit
of a worker whose call ran past its timeout)."""

from __future__ import annotations

import os
import time
from typing import Any

from .batches import batch_job

__all__ = ["dask_job"]

#: In a Dask worker process: when each running call started, by (worker address, task key).
STARTED: dict[tuple[str, str], float] = {}


def _dask_cluster(size: int) -> tuple[Any, Any]:
    """A local Dask cluster of ``size`` worker processes (one thread each) that gives up on
    a call at the first worker it kills, and a client of it."""
    import dask
    from dask.distributed import Client, LocalCluster

    # A worker that takes longer than lost-worker-timeout (15 s) to come back after being
    # ended would be dropped by the cluster for good; on a loaded machine it may well.
    settings = dask.config.set({"distributed.deploy.lost-worker-timeout": "1 hour"})
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(
                n_workers=size, threads_per_worker=1, processes=True, dashboard_address=None
            )
    except BaseException:
        settings.__exit__(None, None, None)
        raise
    cluster.simgen_settings = settings  # restored by Workers.close
    return cluster, Client(cluster)


def dask_job(*args: Any) -> Any:
    """:func:`~simgen.batches.batch_job` in a Dask worker, noting when it started."""
    from distributed import get_worker

    worker = get_worker()
    key = (worker.address, str(worker.get_current_task()))
    STARTED[key] = time.monotonic()
    try:
        return batch_job(*args)
    finally:
        STARTED.pop(key, None)


def _running(dask_worker: Any) -> dict[str, Any]:
    """Run by Dask on each worker: the calls running there and for how long, and whether
    the worker has a nanny."""
    now, address = time.monotonic(), dask_worker.address
    running = {k: now - t for (a, k), t in list(STARTED.items()) if a == address}
    return {"running": running, "nanny": getattr(dask_worker, "nanny", None)}


async def _exit_worker(dask_worker: Any) -> None:
    """Run by Dask on a worker with a nanny: end its process at once (a thread that hangs
    cannot be stopped otherwise, and a graceful close would wait for it)."""
    if getattr(dask_worker, "nanny", None):
        os._exit(70)
