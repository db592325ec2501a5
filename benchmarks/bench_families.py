"""Bake-off of every NPE estimator family (and sbi's NPSE/FMPE) on the same simulations.

For each simulator and simulation budget: C2ST against the reference posterior at ``x_o``,
training seconds, and seconds to draw 10,000 samples. Every estimator of one cell is trained
on the same simulations (seeded), in the same process, one after the other.

Rows are appended to ``--out`` as soon as they are measured, so a long run can be watched,
resumed (``--resume`` skips the rows already in the file) or split over processes
(``--tasks``, ``--sizes``, ``--estimators``).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_families [--quick]``;
the full bake-off: ``... --tasks two_moons,slcp,gaussian_linear --sizes 1000,10000``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch

import simgen
import simulators
from benchmarks import warm_up_torch
from simgen.diagnostics.c2st import c2st

__all__ = ["run"]

FAMILIES = ["nsf", "maf", "flow_matching", "diffusion", "consistency", "vae", "gan"]
SBI = ["sbi NPSE", "sbi FMPE"]

#: Process CPU seconds: other jobs on a shared machine do not inflate them (one thread,
#: ``OMP_NUM_THREADS=1``, so CPU seconds are the seconds an idle core would take).
clock = time.process_time
HEADER = [
    "| task | sims | estimator | C2ST | train s | 10k samples s | epochs |",
    "|---|---|---|---|---|---|---|",
]


def _simulate(task, n: int, seed: int = 0):
    torch.manual_seed(seed)
    theta = task.prior.sample((n,))
    return theta, task.simulator(theta, generator=torch.Generator().manual_seed(seed + 1))


def _simgen(family: str, task, theta, x, max_epochs: int, seed: int):
    def fit():
        post = simgen.NPE(task.prior, estimator=family).fit(
            theta, x, max_epochs=max_epochs, progress=False, seed=seed
        )
        return post, post.history.epochs

    return fit


def _sbi(method: str, task, theta, x, max_epochs: int, seed: int):
    import sbi.inference as si

    def fit():
        torch.manual_seed(seed)
        inf = getattr(si, method)(prior=task.prior, show_progress_bars=False)
        inf.append_simulations(theta, x).train(max_num_epochs=max_epochs)
        return inf.build_posterior(), inf._summary["epochs_trained"][-1]

    return fit


def _measure(fit, task, ref, num_samples: int, sbi: bool = False):
    """Train, then draw ``num_samples`` (timed, scaled to 10,000) and score the first C2ST."""
    t0 = clock()
    post, epochs = fit()
    train = clock() - t0
    torch.manual_seed(1)
    t0 = clock()
    quiet = {"show_progress_bars": False} if sbi else {}
    samples = post.sample((num_samples,), x=task.x_o, **quiet)
    draw = (clock() - t0) * 10_000 / num_samples
    n = min(len(ref), num_samples)
    score = float(c2st(samples[:n], ref[:n], seed=0))
    return score, train, draw, epochs


def _task(name: str, quick: bool):
    task = simulators.get(name)
    if name == "gaussian_linear":
        task = task.make(dim=3 if quick else 10)
    return task


def _done(path: Path) -> set[tuple[str, str, str]]:
    if not path.exists():
        return set()
    rows = set()
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[1].isdigit():
            rows.add((cells[0], cells[1], cells[2]))
    return rows


def run(
    tasks: list[str],
    sizes: list[int],
    estimators: list[str],
    out: Path,
    max_epochs: int = 1000,
    num_c2st: int = 5000,
    npse_samples: int = 10_000,
    seed: int = 0,
    quick: bool = False,
    resume: bool = False,
    command: str = "",
) -> None:
    """Measure every (task, size, estimator) cell, appending one table row at a time."""
    warm_up_torch()
    done = _done(out) if resume else set()
    if not (resume and out.exists()):
        notes = [
            "# Estimator families bake-off",
            "",
            f"Command: `{command}`.",
            f"Settings: max_epochs={max_epochs} for simgen and sbi (sbi stops after 20 epochs "
            "without validation improvement; simgen after each family's measured patience: "
            "20, flow matching 35, diffusion 30 after at least 100 epochs), library defaults "
            f"otherwise; C2ST "
            f"(sbi's classifier) on {num_c2st} samples against the reference posterior at "
            f"x_o; gaussian_linear in {_task('gaussian_linear', quick).dim} dimensions; "
            f"seed {seed}; CPU, {torch.get_num_threads()} thread(s); one run per cell; "
            "seconds are process CPU seconds (`time.process_time`).",
        ]
        if npse_samples < 10_000:
            notes.append(
                f"sbi NPSE draws only {npse_samples} samples (its 500-step SDE sampler is slow); "
                "its '10k samples s' is that time scaled to 10,000 (sampling cost is linear "
                "in the number of samples)."
            )
        out.write_text("\n".join(notes + [""] + HEADER) + "\n")
    for task_name in tasks:
        task = _task(task_name, quick)
        ref = task.reference_posterior(task.x_o, num_c2st, seed=0)
        for n in sizes:
            theta, x = _simulate(task, n, seed)
            for name in estimators:
                if (task_name, str(n), name) in done:
                    continue
                if name in SBI:
                    fit = _sbi(name.split()[1], task, theta, x, max_epochs, seed)
                else:
                    fit = _simgen(name, task, theta, x, max_epochs, seed)
                count = max(npse_samples, num_c2st) if name == "sbi NPSE" else 10_000
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        score, train, draw, epochs = _measure(fit, task, ref, count, name in SBI)
                        cells = f"{score:.3f} | {train:.1f} | {draw:.2f} | {epochs}"
                        if count < 10_000:
                            cells = f"{score:.3f} | {train:.1f} | {draw:.2f}† | {epochs}"
                    except Exception as exc:  # report, don't hide, a failing baseline
                        cells = f"error: {type(exc).__name__}: {str(exc)[:60]} | | | "
                row = f"| {task_name} | {n} | {name} | {cells} |"
                print(row, flush=True)
                with out.open("a") as fh:
                    fh.write(row + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3-D gaussian_linear, 1k, 60 epochs")
    parser.add_argument("--tasks", default="two_moons,slcp,gaussian_linear")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--estimators", default=",".join(FAMILIES + SBI))
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--c2st-samples", type=int, default=5000)
    parser.add_argument(
        "--npse-samples", type=int, default=10_000, help="cap sbi NPSE's draws (time is scaled)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_families.md")))
    parser.add_argument("--resume", action="store_true", help="skip rows already in --out")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.sizes, args.max_epochs, args.c2st_samples = (
            "gaussian_linear",
            "1000",
            60,
            2000,
        )
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m " + " ".join(
        ["benchmarks.bench_families", *os.sys.argv[1:]]
    )
    run(
        tasks=args.tasks.split(","),
        sizes=[int(s) for s in args.sizes.split(",")],
        estimators=args.estimators.split(","),
        out=Path(args.out),
        max_epochs=args.max_epochs,
        num_c2st=args.c2st_samples,
        npse_samples=args.npse_samples,
        seed=args.seed,
        quick=args.quick,
        resume=args.resume,
        command=command,
    )


if __name__ == "__main__":
    main()
