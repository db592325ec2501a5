"""The benchmark table on many observations: task × budget × method, one command.

For each task, budget and training seed the training simulations are drawn once and every
method trains on exactly them, in this one process (CPU seconds, ``time.process_time``, with
torch on ``--threads`` threads). Each trained posterior is scored by C2ST against the cached
reference posterior of every observation of ``--set`` (``tuning`` to choose defaults,
``report`` to report them; see ``benchmarks/harness.py``). Finished cells are cached, so an
interrupted run resumes where it stopped; the table is rewritten after every finished task.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_report --tasks all --budgets 1000 10000 \\
        --seeds 0 1 2 --set report --methods npe,sbi_npe
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import evaluation, harness, warm_up_torch

OUT = Path(__file__).with_name("results_report.md")


def _samples(name: str, args) -> int:
    """The draws of task ``name``'s references in this table (``harness.reference_samples``)."""
    return harness.reference_samples(name, args.reference_samples, args.c2st_samples)


def _options(name: str) -> dict | None:
    """The options of task ``name``'s reference sampler in this table (``REFERENCE_OPTIONS``)."""
    return harness.REFERENCE_OPTIONS.get(name)


def _references_table(tasks: list[str], args) -> list[str]:
    set_name, num_obs = args.set, args.observations
    rows = [
        "| task | reference | observations | samples each | CPU s (all observations) | "
        "check | passed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in tasks:
        samples, options = _samples(name, args), _options(name)
        refs = [
            harness.reference(name, set_name, i, samples, options=options) for i in range(num_obs)
        ]
        checks = [r["check"] for r in refs]
        kind = checks[0]["kind"]
        if "mean_error_sd" in checks[0]:
            detail = (
                f"mean err ≤ {max(c['mean_error_sd'] for c in checks):.3f} sd, "
                f"var err ≤ {max(c['var_error_rel'] for c in checks):.3f}"
            )
        elif "max_split_rhat" in checks[0]:
            detail = f"split-R̂ ≤ {max(c['max_split_rhat'] for c in checks):.3f}"
        elif "max_half_drift_sd" in checks[0]:
            detail = f"half-drift ≤ {max(c['max_half_drift_sd'] for c in checks):.3f} sd"
        else:
            detail = "in support"
        cost = sum(r["cpu_seconds"] for r in refs)
        passed = sum(bool(c["passed"]) for c in checks)
        rows.append(
            f"| {name} | {kind} | {num_obs} | {samples} | {cost:.1f} | {detail} | "
            f"{passed}/{num_obs} |"
        )
    return rows


def _exclusion_note(results: dict) -> list[str]:
    """A paragraph naming the observations left out of the means, if any were."""
    left = sorted(
        {(t, tuple(r["excluded"])) for (t, _, _), r in results.items() if r.get("excluded")}
    )
    if not left:
        return []
    named = "; ".join(f"{t} #{', #'.join(map(str, idx))}" for t, idx in left)
    return [
        f"Left out of every statistic of their task: {named}, whose cached reference posterior "
        "fails its check (`harness.check_reference`); a C2ST against it would not measure the "
        "method. The task column says `(without #i)`.",
        "",
    ]


def _cost_table(results: dict) -> list[str]:
    """Where each fit's CPU goes: training (epochs run, CPU s per epoch) and sampling."""
    rows = [
        "| task | sims | method | train CPU s | epochs | CPU s / epoch | sample CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, budget, spec), s in results.items():
        if not s.get("seeds"):
            continue
        runs = s.get("epochs") or [None] * s["seeds"]
        known = [e for e in runs if e is not None]
        epochs = "/".join("?" if e is None else str(e) for e in runs) if known else "unrecorded"
        per_epoch = "unrecorded"
        if known and len(known) == s["seeds"]:
            per_epoch = f"{s['train_cpu_s'] / (sum(known) / len(known)):.3f}"
        rows.append(
            f"| {name} | {budget} | {spec} | {s['train_cpu_s']:.1f} | {epochs} | {per_epoch} | "
            f"{s['sample_cpu_s']:.1f} |"
        )
    return rows


def mixed_code(results: dict) -> bool:
    """Whether the rows' simgen cells ran more than one version of simgen's source (then the
    table names each row's versions in a last column)."""
    keys = {k for r in results.values() for k in r.get("code", []) if k.startswith("simgen-")}
    return len(keys) > 1


def _capped_note(tasks: list[str], args) -> str:
    """The tasks whose references hold fewer draws than the table asks for, or ''."""
    capped = [t for t in tasks if _samples(t, args) < args.reference_samples or _options(t)]
    if not capped:
        return ""
    named = ", ".join(
        f"{t}: {_samples(t, args)}"
        + "".join(f", {k}={v}" for k, v in sorted((_options(t) or {}).items()))
        for t in capped
    )
    return (
        f" ({named}; `harness.REFERENCE_CAPS` and `REFERENCE_OPTIONS`: a costly reference holds "
        "fewer draws, never fewer than the C2ST reads)"
    )


def write(out: Path, command: str, args, results: dict, ref_tasks: list[str], note: str) -> None:
    tasks = list(dict.fromkeys(t for t, _, _ in results))
    lines = [
        "# Benchmark on many observations",
        "",
        f"Command: `{command}`",
        "",
        f"Observation set: **{args.set}** ({args.observations} observations per task drawn from "
        "the prior predictive, stored in `benchmarks/observations/`); training seeds "
        f"{', '.join(map(str, args.seeds))}; C2ST on {args.c2st_samples} samples per set "
        f"against {args.reference_samples} cached reference samples"
        f"{_capped_note(tasks, args)}; torch {torch.__version__}, {args.threads} thread(s); "
        "CPU seconds are `time.process_time` of this one process. Every method of a "
        "(task, sims, seed) trains on the same simulations.",
        "",
        note,
        "",
        "Code the cells ran with: "
        + ", ".join(sorted({k for r in results.values() for k in r.get("code", [])}))
        + " (simgen-<hash of simgen's source at the run's start>, sbi-<version>).",
        "",
        *evaluation.table(results, show_code=mixed_code(results)),
        "",
        "Columns: mean C2ST over observations and seeds (0.5 is perfect); spread = standard "
        "deviation over seeds of the per-seed mean; worst obs = highest C2ST of one "
        "observation averaged over seeds (#index in the set); CPU s / fit = training plus "
        "sampling at every observation, mean over seeds; CPU simgen/sbi = total CPU of the "
        "simgen method over its sbi baseline's on the same seeds"
        + ("; code = the code versions the row's cells ran with." if mixed_code(results) else "."),
        "",
        *_exclusion_note(results),
        "## Where the CPU goes",
        "",
        *_cost_table(results),
        "",
        "Means over seeds; epochs per seed (`?` for a cell cached before epochs were recorded; "
        "CPU s / epoch needs every seed's); sample CPU s is drawing the samples at every "
        "observation.",
        "",
        "## Reference posteriors",
        "",
        *_references_table(ref_tasks, args),
        "",
        "CPU s is the cost of computing the references once (they are cached on disk after); "
        "checks: see `benchmarks.harness.check_reference`.",
    ]
    out.write_text("\n".join(lines) + "\n")


def _with_references(tasks: list[str], done: list[str], args) -> list[str]:
    """The finished tasks and every other task whose references are all cached."""
    return [
        t
        for t in tasks
        if t in done
        or all(
            harness.reference_is_cached(t, args.set, i, _samples(t, args), options=_options(t))
            for i in range(args.observations)
        )
    ]


def _spent(args, start: float) -> bool:
    """Whether this process has used its ``--cpu-budget-min`` (CPU seconds since ``start``)."""
    return (
        args.cpu_budget_min is not None and time.process_time() - start > 60 * args.cpu_budget_min
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["all"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", choices=list(harness.SETS), default="report")
    parser.add_argument("--methods", default="npe,sbi_npe", help="comma-separated specs")
    parser.add_argument("--observations", type=int, default=harness.NUM_OBSERVATIONS)
    parser.add_argument("--c2st-samples", type=int, default=10_000)
    parser.add_argument("--reference-samples", type=int, default=harness.REFERENCE_SAMPLES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cpu-budget-min",
        type=float,
        default=None,
        help="start no new cell after this many CPU minutes (finished cells stay cached; "
        "the cells not run are named in the table's note)",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="compute nothing: write the table from the cells already cached",
    )
    parser.add_argument("--note", default="", help="a sentence for the table's header")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = harness.TASKS if args.tasks == ["all"] else args.tasks
    for name in tasks:
        harness.load_task(name)
        _samples(name, args)  # a C2ST on more samples than the references hold is refused
    # Commas inside a JSON list (hidden_features=[64, 64]) do not separate methods.
    methods = [m for m in re.split(r",(?![^\[]*\])", args.methods) if m]
    for spec in methods:
        evaluation.parse_method(spec)
    # The command that computes these cells (--cached-only and --note do not change them).
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--cached-only" in shown:
        shown.remove("--cached-only")
    if "--note" in shown:
        del shown[shown.index("--note") : shown.index("--note") + 2]
    command = "OMP_NUM_THREADS={} python -m benchmarks.bench_report {}".format(
        os.environ.get("OMP_NUM_THREADS", ""), shlex.join(shown)
    )
    warm_up_torch()
    out = Path(args.out)
    results: dict = {}
    done: list[str] = []
    start = time.process_time()
    note = args.note
    not_run: list[str] = []
    for name in tasks:
        task = harness.load_task(name)
        samples, options = _samples(name, args), _options(name)
        t0 = time.process_time()
        if not args.cached_only and not _spent(args, start):
            for i in range(args.observations):
                harness.reference(name, args.set, i, samples, options=options)
            print(f"{name}: references ready ({time.process_time() - t0:.1f} CPU s)", flush=True)
        for budget in args.budgets:
            cells: dict[str, list] = {spec: [] for spec in methods}
            for seed in args.seeds:
                data = None
                for spec in methods:
                    key = (name, args.set, budget, spec, seed, args.c2st_samples)
                    # Past the CPU budget, cached cells are still read; no new one starts.
                    cached_only = args.cached_only or _spent(args, start)
                    cell = evaluation.cached_cell(
                        *key, args.observations, samples, cached_only, options
                    )
                    if cell is None and cached_only:
                        if not args.cached_only:
                            not_run.append(f"{name} n={budget} {spec} seed {seed}")
                        continue
                    if cell is None:
                        if data is None:
                            data = evaluation.training_data(task, budget, seed)
                        cell = evaluation.evaluate_cell(
                            name, args.set, budget, spec, seed, data=data,
                            num_samples=args.c2st_samples, num_obs=args.observations,
                            reference_samples=samples, reference_options=options,
                        )  # fmt: skip
                    cells[spec].append(cell)
                    print(
                        f"{name} n={budget} {spec} seed={seed}: " + evaluation.cell_line(cell),
                        flush=True,
                    )
            # A C2ST against a reference that fails its check measures nothing: left out.
            excluded = harness.failed_references(
                name, args.set, args.observations, samples, options=options
            )
            for spec in methods:
                results[(name, budget, spec)] = evaluation.summarise(cells[spec], excluded)
        if any(s.get("seeds") for (t, _, _), s in results.items() if t == name):
            done.append(name)
        write(out, command, args, results, _with_references(tasks, done, args), note)
    if not_run:
        note += (
            f" Stopped at the CPU budget (--cpu-budget-min {args.cpu_budget_min}); not run: "
            + "; ".join(not_run)
            + "."
        )
    total = (time.process_time() - start) / 60
    if args.cached_only:
        note += " Table written from cached cells (--cached-only)."
    else:
        note += f" This run: {total:.1f} CPU minutes (cells read from the cache cost 0)."
    write(out, command, args, results, _with_references(tasks, done, args), note)
    print("\n".join(evaluation.table(results)))


if __name__ == "__main__":
    main()
