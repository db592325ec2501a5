"""CPU seconds of each tutorial executed as a notebook in its fast mode, as the tests run it.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_tutorials

Each ``tutorials/NN_*.py`` is built into a notebook with jupytext and executed by nbclient in
a fresh ``python3`` kernel with ``SIMGEN_FAST=1``, exactly as ``tests/test_tutorials.py``
does; the clock is ``resource.getrusage`` of this process and its finished children (the
kernel and whatever it ran), so the figure is the CPU time the test costs, independent of
the load on a shared machine. ``kernel only`` is a one-cell notebook importing simgen and
torch: the start-up a notebook adds over running the script in the test process. The runs
are deterministic (every tutorial is seeded), so one run per tutorial is reported; wall
seconds move with the machine's load and are shown for reference only. Writes
``benchmarks/results_tutorials.md``.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results_tutorials.md")
COMMAND = "OMP_NUM_THREADS=1 python -m benchmarks.bench_tutorials"


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _execute(notebook) -> tuple[float, float]:  # noqa: ANN001
    import nbclient

    with tempfile.TemporaryDirectory() as folder:
        cpu, wall = _cpu(), time.perf_counter()
        client = nbclient.NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": folder}}
        )
        client.execute()
        return _cpu() - cpu, time.perf_counter() - wall


def main() -> None:
    import jupytext
    import nbformat

    os.environ.update(SIMGEN_FAST="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    names = sys.argv[1:] or [p.name for p in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))]
    rows = []
    kernel = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import simgen, torch")])
    for name, notebook in [("kernel only", kernel)] + [
        (n, jupytext.read(ROOT / "tutorials" / n)) for n in names
    ]:
        cpu, wall = _execute(notebook)
        rows.append((name, cpu, wall))
        print(f"{name:<32} {cpu:7.1f} CPU s {wall:7.1f} wall s", flush=True)
    total = sum(cpu for name, cpu, _ in rows if name != "kernel only")
    lines = [
        "# Tutorials executed as notebooks (fast mode)",
        "",
        f"`{' '.join([COMMAND, *sys.argv[1:]])}`",
        "",
        "One run each (the tutorials are seeded); CPU seconds of the kernel and what it ran.",
        "",
        "| notebook | CPU s | wall s (load-dependent) |",
        "|---|---:|---:|",
        *[f"| {name} | {cpu:.1f} | {wall:.1f} |" for name, cpu, wall in rows],
        f"| **all tutorials** | **{total:.1f}** | |",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
