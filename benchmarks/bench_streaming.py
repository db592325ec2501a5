"""Training throughput from a bank (``fit(bank=...)``, :mod:`simgen.streaming`) vs in memory.

For each case the simulations are drawn once into a bank; the same process then trains NPE
on ``read_bank``'s tensors (in memory) and on the bank itself (streamed), for the same fixed
number of epochs (``patience`` above ``max_epochs``, so neither stops early), and records CPU
seconds (``time.process_time``, every thread of the process, so the stream's read-ahead
thread is charged) and wall seconds of the whole ``fit`` call: set-up passes, training and
validation. Steps per second are optimizer steps over those seconds. Seeds are run in turn;
the table reports each seed and the spread.

Cases: ``narrow`` (gaussian_linear, 10 numbers of x a row, 10,000 rows, NSF) and ``wide``
(1,000 float32 of x a row, 10,000 rows, 40 MB, a small NSF), where reading and
decompressing chunks is a larger share of each step; ``wide, x blosc-lz4`` trains on the
same bank with its x re-encoded by blosc (lz4, byte shuffle) instead of the bank's zstd, to
show what the codec costs. Each fit runs 4 epochs (3 with ``--quick``, on 5,000 rows and one
seed); five seeds otherwise. A last table times one chunk's read through zarr and directly,
by codec.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_streaming            # 5 seeds, every case
    OMP_NUM_THREADS=1 python -m benchmarks.bench_streaming --quick    # 1 seed, fewer rows
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import warm_up_torch

HERE = Path(__file__).parent
RESULTS = HERE / "results_streaming.md"


def _wide_case(rows: int):
    import simgen

    prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
    width = 1000

    def simulator(theta, generator=None):
        noise = torch.randn(len(theta), width, generator=generator)
        return theta[:, :1] + theta[:, 1:] * torch.linspace(-1, 1, width) + 0.1 * noise

    return prior, simulator, rows, {"transforms": 2, "hidden_features": (32, 32)}


def _narrow_case(rows: int):
    from simulators import gaussian_linear

    return gaussian_linear.prior, gaussian_linear.simulator, rows, {}


def _recode_x(path: Path, codec: str = "blosc-lz4") -> None:
    """Re-encode the bank's x with ``codec`` (``"blosc-lz4"``: blosc, lz4 and byte shuffle;
    ``"bytes"``: no compression), chunks and values unchanged."""
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(path, mode="r+")
    data, chunks = group["x"][:], group["x"].chunks
    del group["x"]
    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    group.create_array(
        "x", shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=np.nan,
        compressors=[blosc] if codec == "blosc-lz4" else None,
    )  # fmt: skip
    group["x"][:] = data


def _timed(call):
    cpu, wall = time.process_time(), time.perf_counter()
    result = call()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run_case(
    name: str, make, rows: int, seeds: list[int], epochs: int, recode: bool = False
) -> list[dict]:
    from simgen import NPE, read_bank, simulate
    from simgen.streaming import Stream, StreamConfig

    prior, simulator, rows, options = make(rows)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.zarr"
        simulate(simulator, prior, rows, seed=0, batch_size=1000, bank=path)
        if recode:
            _recode_x(path)
        theta, x = read_bank(path)
        train = dict(max_epochs=epochs, patience=epochs + 1, progress=False)
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                memory, cpu_m, wall_m = _timed(
                    lambda seed=seed: NPE(prior, **options).fit(theta, x, seed=seed, **train)
                )
                stream, cpu_s, wall_s = _timed(
                    lambda seed=seed: NPE(prior, **options).fit(bank=path, seed=seed, **train)
                )
                ahead, cpu_p, wall_p = _timed(
                    lambda seed=seed: NPE(prior, **options).fit(
                        bank=Stream(path, StreamConfig(prefetch=2)), seed=seed, **train
                    )
                )
            bs = 256
            steps_m = memory.history.epochs * (memory.history.num_train // bs)
            steps_s = stream.history.epochs * (stream.history.num_train // bs)
            out.append(
                {
                    "case": name,
                    "seed": seed,
                    "rows": rows,
                    "steps_memory": steps_m,
                    "steps_stream": steps_s,
                    "cpu_memory": cpu_m,
                    "cpu_stream": cpu_s,
                    "wall_memory": wall_m,
                    "wall_stream": wall_s,
                    "cpu_ahead": cpu_p,
                    "wall_ahead": wall_p,
                    "val_memory": memory.history.best_validation_loss,
                    "val_stream": stream.history.best_validation_loss,
                }
            )
            r = out[-1]
            print(
                f"{name} seed {seed}: memory {steps_m / cpu_m:.1f} steps/CPU s, bank "
                f"{steps_s / cpu_s:.1f} ({steps_s / cpu_s / (steps_m / cpu_m):.2f}x); wall "
                f"{steps_s / wall_s / (steps_m / wall_m):.2f}x; best val {r['val_memory']:.3f} "
                f"vs {r['val_stream']:.3f}",
                flush=True,
            )
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| case | seed | rows | steps (memory / bank) | memory steps/CPU s | bank steps/CPU s "
        "| ratio (CPU) | ratio (wall) | read-ahead 2: ratio (CPU / wall) "
        "| best val loss (memory / bank) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, s = r["steps_memory"] / r["cpu_memory"], r["steps_stream"] / r["cpu_stream"]
        mw, sw = r["steps_memory"] / r["wall_memory"], r["steps_stream"] / r["wall_stream"]
        pc, pw = r["steps_stream"] / r["cpu_ahead"], r["steps_stream"] / r["wall_ahead"]
        lines.append(
            f"| {r['case']} | {r['seed']} | {r['rows']:,} | {r['steps_memory']} / "
            f"{r['steps_stream']} | {m:.1f} | {s:.1f} | {s / m:.2f} | {sw / mw:.2f} | "
            f"{pc / m:.2f} / {pw / mw:.2f} | {r['val_memory']:.3f} / {r['val_stream']:.3f} |"
        )
    summary = ["", "| case | ratio (CPU), mean over seeds | min - max | ratio (wall), mean |"]
    summary.append("|---|---|---|---|")
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        cpu = [
            (r["steps_stream"] / r["cpu_stream"]) / (r["steps_memory"] / r["cpu_memory"])
            for r in mine
        ]
        wall = [
            (r["steps_stream"] / r["wall_stream"]) / (r["steps_memory"] / r["wall_memory"])
            for r in mine
        ]
        summary.append(
            f"| {case} | {statistics.mean(cpu):.2f} | {min(cpu):.2f} - {max(cpu):.2f} | "
            f"{statistics.mean(wall):.2f} |"
        )
    return "\n".join(lines + summary) + "\n"


CHILD = """
import json, sys, torch, simgen
from simgen.streaming import Stream, StreamConfig
torch.set_num_threads(1)
prior = simgen.BoxUniform(-torch.ones(2), torch.ones(2))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's and zarr's start-up first
stream = Stream(sys.argv[1], StreamConfig(prefetch=int(sys.argv[2])))
stream.peek()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
simgen.NPE(prior, transforms=2, hidden_features=(32, 32)).fit(
    bank=stream, max_epochs=1, seed=0, progress=False, batch_size=512
)
print(json.dumps(status("VmHWM") - before))
"""


def memory_table(rows: int) -> str:
    """Peak RSS growth (VmHWM, reset after start-up) of one epoch from the wide bank, by
    read-ahead depth, each in a fresh child process."""
    import subprocess

    from simgen import simulate

    prior, simulator, rows, _ = _wide_case(rows)
    lines = ["| bank | read-ahead (chunks) | peak RSS growth (MB) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.zarr"
        simulate(simulator, prior, rows, seed=0, batch_size=1000, bank=path)
        for prefetch in (0, 2):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(prefetch)],
                check=True,
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "OMP_NUM_THREADS": "1",
                    "PYTHONWARNINGS": "ignore",
                },
            )
            growth = float(out.stdout.strip().splitlines()[-1]) / 1e6
            print(f"memory: prefetch {prefetch}: {growth:.0f} MB", flush=True)
            lines.append(
                f"| {rows:,} x 1,000 float32 ({rows * 4000 / 1e6:.0f} MB) | {prefetch} "
                f"| {growth:.0f} |"
            )
    return "\n".join(lines) + "\n"


def read_table(rows: int, repeats: int = 5, reads: int = 30) -> str:
    """CPU milliseconds per chunk a stream reads from the wide bank (1,000 rows of 1,000
    float32, 4 MB), through zarr (and ``release`` after each, as the stream does for zarr's
    reads) and directly (``stream_sources.ChunkFiles``), for x in zstd (what a bank writes),
    blosc-lz4 and plain bytes: the median and range over ``repeats`` runs of ``reads``."""
    from simgen import simulate
    from simgen.streaming import Stream

    prior, simulator, rows, _ = _wide_case(rows)
    lines = [
        "| x stored as | read | CPU ms per chunk, median | min - max |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.zarr"
        simulate(simulator, prior, rows, seed=0, batch_size=1000, bank=path)
        for codec in ("zstd", "blosc-lz4", "bytes"):
            if codec != "zstd":
                _recode_x(path, codec)
            for how in ("zarr", "direct"):
                stream = Stream(path)
                if how == "zarr":
                    stream.source.files, stream.source.threaded = {}, True
                chunks = [i % stream.num_chunks for i in range(reads)]
                times = []
                for _ in range(repeats):
                    start = time.process_time()
                    for _ in stream._reads(chunks):
                        pass
                    times.append((time.process_time() - start) / reads * 1e3)
                median = statistics.median(times)
                print(f"reads: {codec} {how}: {median:.2f} ms per chunk", flush=True)
                lines.append(
                    f"| {codec} | {how} | {median:.2f} | {min(times):.2f} - {max(times):.2f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    quick = "--quick" in sys.argv
    torch.set_num_threads(1)
    warm_up_torch()
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    rows = 5000 if quick else 10000
    epochs = 3 if quick else 4
    results = run_case("narrow", _narrow_case, rows, seeds, epochs)
    results += run_case("wide", _wide_case, rows, seeds, epochs)
    results += run_case("wide, x blosc-lz4", _wide_case, rows, seeds, epochs, recode=True)
    command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_streaming" + (
        " --quick" if quick else ""
    )
    memory = memory_table(5000 if quick else 20000)
    reads = read_table(5000 if quick else 10000)
    RESULTS.write_text(
        "# Training from a bank vs in memory (issue 22)\n\n"
        "NPE trained for a fixed number of epochs on the same simulations, from "
        "`read_bank`'s tensors and from the bank (`fit(bank=...)`), in one process; steps "
        "per CPU second (`time.process_time`, all threads) of the whole `fit` call, set-up "
        "passes and validation included. Target: bank >= 0.8x in-memory steps/s on CPU. "
        "The read-ahead column trains from the bank with `StreamConfig(prefetch=2)` (a "
        "reading thread two chunks ahead). The `wide, x blosc-lz4` rows train on the same "
        "wide bank with its x re-encoded by blosc (lz4, byte shuffle) instead of the zstd a "
        "bank writes, to show what decompressing costs.\n\n"
        f"`{command}`\n\n" + table(results) + "\n## Peak memory of one epoch from a bank\n\n"
        "Peak RSS growth of a child process over one NPE epoch from the wide bank (batch "
        "512), measured after torch and zarr have started; `tests/test_streaming.py` checks "
        "the same on a 400 MB bank against a 100 MB budget.\n\n"
        f"`{command}`\n\n" + memory + "\n## Reading one chunk\n\n"
        "CPU milliseconds per 4 MB chunk (1,000 rows of 1,000 float32) that a stream reads "
        "from the wide bank, through zarr and directly (`simgen.stream_sources.ChunkFiles`), "
        "by how x is stored; median and range over 5 runs of 30 reads.\n\n"
        f"`{command}`\n\n" + reads
    )
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
