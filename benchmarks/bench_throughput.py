"""Throughput of expensive one-θ-per-call simulators on workers, and of zarr banks.

Run ``OMP_NUM_THREADS=1 python -m benchmarks.bench_throughput`` (``--quick``: one repeat);
writes ``benchmarks/results_throughput.md``.

**Workers.** A simulator that sleeps ``DELAY`` = 0.1 s per θ (``time.sleep``, so it costs
wall time and no CPU, and the figures measure simgen's scheduling rather than the shared
machine's cores) runs ``NUM_SIMS`` θ, one per call (``FunctionSimulator(fn,
vectorized=False)``, batch size 1), in this process, on simgen's own pool of 1 and 2
processes (``workers=``), on a Dask ``LocalCluster`` of 2 single-threaded worker processes
(``executor=client``; the cluster's start-up is timed apart), and as an external program
(``ExternalSimulator``, ``sh`` sleeping 0.1 s) on 2 workers, and on 2 workers into a bank
(one row per batch, so every row is a bank write in this process); beside them, sbi's
``simulate_for_sbi`` on 1 and 2 workers (joblib, ``simulation_batch_size=1``; sbi is
imported before the clock starts). With ``w`` workers the ideal wall time is ``NUM_SIMS *
DELAY / w``; the overhead per task is ``(wall - ideal) * w / NUM_SIMS``, the time a worker
spends on a task beyond its 0.1 s. The pool's start-up and shut-down are inside the wall
time (a ``simulate`` call makes and ends its pool; so does ``simulate_for_sbi``).

**Banks.** A cheap vectorised simulator (x of ``X_DIM`` float32 per θ) writes ``BANK_ROWS``
rows into a zarr bank in batches of 1,000; the write rate is the banked ``simulate`` call's
wall time, the read rate ``read_bank``'s. The same for a per-call simulator's bank, one row
per batch (``PER_CALL_ROWS`` rows), which is what ``batch_size``'s default of 1 for one θ per
call costs per row. MB counts θ and x (float32).

**Faults.** On 2 workers, one θ of the ``NUM_SIMS`` hangs (with ``timeout=`` 1 s) or
calls ``os.abort()``: the wall time against the other rows' ideal is what the fault costs,
and the other rows must equal a clean run's.

Every figure is the mean and the range over ``REPEATS`` repeats (prior seeds 0, 1, 2).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import simgen
from simgen.external import ExternalSimulator

__all__ = ["slow_one", "slow_rows", "cheap_batch", "time_call", "main"]

DELAY = 0.1
NUM_SIMS = 40
REPEATS = 3
X_DIM = 256
BANK_ROWS = 20_000
PER_CALL_ROWS = 200
PRIOR = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
RESULTS = Path(__file__).with_name("results_throughput.md")
COMMAND = "OMP_NUM_THREADS=1 python -m benchmarks.bench_throughput"
WORKER_HEADER = ["where", "workers", "ideal s", "wall s", "simulations/s", "overhead ms/task"]
WORKER_HEADER += ["CPU s"]
FAULT_HEADER = ["the bad θ", "ideal s", "wall s", "cost s", "kept"]
FAULT_ROW, FAULT_TIMEOUT = 7, 1.0
BANK_HEADER = ["bank", "rows", "MB", "in memory rows/s", "write rows/s", "write MB/s"]
BANK_HEADER += ["read rows/s", "read MB/s"]


def slow_one(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One θ ``(2,)``: sleeps ``DELAY`` seconds, then θ plus a little noise."""
    time.sleep(DELAY)
    return theta + 0.01 * torch.randn(2, generator=generator)


def cheap_batch(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch of θ ``(N, 2)`` to x ``(N, X_DIM)`` of noise: costs nothing next to the bank."""
    return torch.randn(len(theta), X_DIM, generator=generator) + theta[:, :1]


def cheap_one(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return theta + torch.randn(2, generator=generator)


def time_call(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall and CPU seconds (this process) of ``fn()``, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def slow_rows(theta: torch.Tensor) -> torch.Tensor:
    """``slow_one`` batched the way sbi calls a simulator, ``(N, 2) -> (N, 2)`` (sbi's workers
    pass numpy arrays)."""
    return torch.stack([slow_one(row) for row in torch.as_tensor(theta, dtype=torch.float32)])


def _simgen(sim: object, options: dict) -> Callable[[int], object]:
    def go(seed: int) -> object:
        folder = Path(tempfile.mkdtemp(prefix="simgen-bench-"))
        run = {**options, "bank": folder / "run.zarr"} if "bank" in options else options
        try:
            return simgen.simulate(sim, PRIOR, NUM_SIMS, seed=seed, **run)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return go


def _sbi(workers: int) -> Callable[[int], object]:
    def go(seed: int) -> object:
        from sbi.inference import simulate_for_sbi

        return simulate_for_sbi(
            slow_rows,
            PRIOR,
            NUM_SIMS,
            num_workers=workers,
            simulation_batch_size=1,
            seed=seed,
            show_progress_bar=False,
        )

    return go


def worker_rows(repeats: int) -> tuple[list[list[str]], float, list[str], list]:
    """The workers table, the Dask cluster's start-up seconds, the identity check and the
    runs in this process."""
    import sbi.inference  # noqa: F401 - its import is not a simulation cost
    from dask.distributed import Client, LocalCluster

    per_call = simgen.FunctionSimulator(slow_one, vectorized=False)
    script = 'read a b; sleep 0.1; echo "$a $b $SIMGEN_SEED"'
    program = ExternalSimulator(["sh", "-c", script], x_shape=(3,))
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    client.submit(sum, [1]).result()  # workers up and answering
    startup = time.perf_counter() - t0
    setups = [
        ("in this process", per_call, 1, _simgen(per_call, {})),
        ("workers=1", per_call, 1, _simgen(per_call, {"workers": 1})),
        ("workers=2", per_call, 2, _simgen(per_call, {"workers": 2})),
        ("Dask LocalCluster, 2 workers", per_call, 2, _simgen(per_call, {"executor": client})),
        ("workers=2, into a bank", per_call, 2, _simgen(per_call, {"workers": 2, "bank": True})),
        ("external program, workers=2", program, 2, _simgen(program, {"workers": 2})),
        ("sbi simulate_for_sbi, num_workers=1", None, 1, _sbi(1)),
        ("sbi simulate_for_sbi, num_workers=2", None, 2, _sbi(2)),
    ]
    rows, checks = [], []
    try:
        for name, sim, w, go in setups:
            walls, cpus, results = [], [], []
            for seed in range(repeats):
                wall, cpu, out = time_call(lambda go=go, seed=seed: go(seed))
                walls.append(wall)
                cpus.append(cpu)
                results.append(out)
            ideal = NUM_SIMS * DELAY / w
            overhead = [(wall - ideal) * w / NUM_SIMS * 1000 for wall in walls]
            rows.append(
                [
                    name,
                    str(w),
                    f"{ideal:.1f}",
                    _spread(walls),
                    _spread([NUM_SIMS / wall for wall in walls], "{:.1f}"),
                    _spread(overhead, "{:.0f}"),
                    _spread(cpus),
                ]
            )
            if sim is not None:
                checks.append((name, sim, results))
    finally:
        client.close()
        cluster.close()
    serial = checks[0][2]
    same = []
    for name, sim, results in checks[1:]:
        if sim is program:  # its serial run, once: seed 0
            base = [simgen.simulate(program, PRIOR, NUM_SIMS, seed=0)]
            results = results[:1]
        else:
            base = serial
        equal = all(torch.equal(a.x, b.x) for a, b in zip(results, base, strict=True))
        kind = "identical to" if equal else "DIFFERENT from"
        same.append(f"{name}: x {kind} the run in this process, same seeds")
    return rows, startup, same, serial


class OneBad:
    """``slow_one``, except for the row equal to ``target``: it hangs (``"hang"``, 60 s) or
    takes its worker process down (``"abort"``)."""

    def __init__(self, what: str, target: torch.Tensor):
        self.what, self.target = what, target

    def __call__(self, theta: torch.Tensor, generator=None) -> torch.Tensor:
        if torch.equal(theta, self.target):
            if self.what == "abort":
                faulthandler.disable()  # no traceback of the dying worker in the output
                os.abort()
            time.sleep(60)
        return slow_one(theta, generator)


def fault_rows(clean: list) -> list[list[str]]:
    """What one hanging or one crashing θ among ``NUM_SIMS`` costs on ``workers=2``; ``clean``
    holds the runs of seeds 0, 1, ... in this process without a bad θ."""
    from simgen.simulate import sample_prior

    rows = []
    for what, options in (("hang", {"timeout": FAULT_TIMEOUT}), ("abort", {})):
        walls, kept = [], []
        for seed, reference in enumerate(clean):
            target = sample_prior(PRIOR, NUM_SIMS, seed)[FAULT_ROW]
            sim = simgen.FunctionSimulator(OneBad(what, target), vectorized=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the one failed row's SimulationWarning
                wall, _, out = time_call(
                    lambda sim=sim, seed=seed, options=options: simgen.simulate(
                        sim, PRIOR, NUM_SIMS, seed=seed, workers=2, **options
                    )
                )
            others = torch.ones(NUM_SIMS, dtype=torch.bool)
            others[FAULT_ROW] = False
            same = torch.equal(out.x, reference.x[others]) and out.failed_reason == [
                {"hang": "timeout", "abort": "crash"}[what]
            ]
            walls.append(wall)
            kept.append(same)
        ideal = (NUM_SIMS - 1) * DELAY / 2
        rows.append(
            [
                {"hang": f"hangs (timeout={FAULT_TIMEOUT} s)", "abort": "os.abort()"}[what],
                f"{ideal:.2f}",
                _spread(walls),
                _spread([w - ideal for w in walls]),
                f"{sum(kept)} of {len(kept)}",
            ]
        )
    return rows


def bank_rows(repeats: int) -> list[list[str]]:
    """Write and read rates of a batched bank and of a per-call one (batch size 1)."""
    rows = []
    cases = [
        ("batched, 1,000 rows per batch", cheap_batch, BANK_ROWS, 1000, X_DIM),
        (
            "one θ per call, 1 row per batch",
            simgen.FunctionSimulator(cheap_one, vectorized=False),
            PER_CALL_ROWS,
            None,
            2,
        ),
    ]
    for name, sim, n, batch_size, x_dim in cases:
        megabytes = n * (2 + x_dim) * 4 / 1e6
        write, read, memory = [], [], []
        for seed in range(repeats):
            folder = Path(tempfile.mkdtemp(prefix="simgen-bench-"))
            try:
                path = folder / "run.zarr"
                plain, _, _ = time_call(
                    lambda sim=sim, n=n, seed=seed, batch_size=batch_size: simgen.simulate(
                        sim, PRIOR, n, seed=seed, batch_size=batch_size
                    )
                )
                wall, _, _ = time_call(
                    lambda sim=sim, n=n, seed=seed, batch_size=batch_size, path=path: (
                        simgen.simulate(sim, PRIOR, n, seed=seed, batch_size=batch_size, bank=path)
                    )
                )
                back, _, _ = time_call(lambda path=path: simgen.read_bank(path))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            memory.append(plain)
            write.append(wall)
            read.append(back)
        rows.append(
            [
                name,
                f"{n:,}",
                f"{megabytes:.3g}",
                _spread([n / s for s in memory], "{:,.0f}"),
                _spread([n / s for s in write], "{:,.0f}"),
                _spread([megabytes / s for s in write], "{:.3g}"),
                _spread([n / s for s in read], "{:,.0f}"),
                _spread([megabytes / s for s in read], "{:.3g}"),
            ]
        )
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    args, _ = parser.parse_known_args()
    repeats = 1 if args.quick else REPEATS
    torch.set_num_threads(1)
    logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's shutdown chatter
    load_before = os.getloadavg()
    started = time.perf_counter()
    workers, startup, same, serial = worker_rows(repeats)
    faults = fault_rows(serial)
    banks = bank_rows(repeats)
    load_after = os.getloadavg()
    total = time.perf_counter() - started
    text = f"""# Throughput: expensive simulators on workers, and banks

`{COMMAND}` ({total:.0f} s wall). {platform.machine()}, {os.cpu_count()} cores shared with
other jobs, torch {torch.__version__}, Python {platform.python_version()}. Load average
(1, 5, 15 min) before: {", ".join(f"{v:.2f}" for v in load_before)}; after:
{", ".join(f"{v:.2f}" for v in load_after)}. Each figure: mean over {repeats} repeat(s)
(prior seeds 0..{repeats - 1}), range in brackets.

## One θ per call, {DELAY} s each, {NUM_SIMS} simulations

Overhead per task = (wall − ideal) × workers / {NUM_SIMS}: what a task costs a worker beyond
its {DELAY} s, pool start-up and shut-down included. CPU s is this process's
(`time.process_time`), the scheduling cost the caller pays. The Dask cluster took
{startup:.1f} s to start (not in the table).

{_table(WORKER_HEADER, workers)}

{chr(10).join(f"- {line}" for line in same)}

`simulate_for_sbi` with `num_workers` > 1 starts joblib's worker processes (which import
torch and sbi) in its first call and reuses them in later ones, hence its range; simgen's
`workers=` forks a pool in every `simulate` call and ends it at the end.

## One bad θ among {NUM_SIMS}, on workers=2

Row {FAULT_ROW} of the prior draws hangs or calls `os.abort()`; the other rows are the 0.1 s
simulator. Ideal = the other rows' {DELAY} s on 2 workers; cost = wall − ideal (the timeout,
ending and restarting the pool, the calls running beside it tried again). Kept = repeats in
which the bad row alone failed, with the right reason, and every other x equals the clean
run's.

{_table(FAULT_HEADER, faults)}

## Banks (zarr): write and read rates

In memory = the same `simulate` call without a bank. Write = the banked call, simulation
included; read = `read_bank`. MB counts θ and x, float32.

{_table(BANK_HEADER, banks)}
"""
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
