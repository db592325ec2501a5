"""Choose NPE's default on the tuning observations: a sweep of candidate settings.

Every candidate of :data:`CANDIDATES` is a method spec of :mod:`benchmarks.evaluation`
(``npe:key=json;...``), trained on the same simulations per (task, seed) in this one process
and scored by C2ST on every observation of the **tuning** set (``benchmarks/harness.py``), so
the report set stays unseen until the chosen default is reported by ``bench_report``. Cells
are cached by :func:`benchmarks.evaluation.evaluate_cell`, so an interrupted sweep resumes;
a cell computed under another version of simgen's source is reused (the table lists the
versions), since each spec names every option it depends on (:data:`BASE`).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_defaults --tasks gaussian_linear \\
        gaussian_linear_uniform gaussian_mixture two_moons --seeds 0 1 --c2st-samples 1000

The table gives, per candidate and task, the mean C2ST over observations and seeds, the
spread over seeds, the worst observation and the CPU seconds per fit; the summary ranks the
candidates by their largest loss against the best candidate of each task (``worst gap``), so
a default is chosen for holding on every task rather than for winning on one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

from benchmarks import evaluation, harness, warm_up_torch

OUT = Path(__file__).with_name("results_defaults.md")

#: The NPE default the sweep starts from, every option spelled out so that a spec means the
#: same settings whatever the code's defaults are.
BASE: dict[str, object] = {
    "support": "transform",
    "transforms": 5,
    "hidden_features": [64, 64],
    "bins": 8,
    "batch_size": 256,
    "learning_rate": 1e-3,
    "patience": 20,
    "mixing": "none",
    "gaussian_baseline": False,
    "min_gain_se": 0.0,
}

#: simgen's code versions in which every flow had ``mixing="none"`` (before the option, or
#: before NSF's default became ``"lu"``): their cells were cached under specs without it.
PRE_MIXING_CODE = frozenset(
    "simgen-" + key
    for key in [
        "0e88c0f8605b",
        "1c5a0f2b413c",
        "33b2276ebfb0",
        "4432a8d3b008",
        "444a698ac757",
        "55ac2d0d3a1a",
        "5cf3ce8b8f4f",
        "6fa1cfcb28ca",
        "70a890004469",
        "7dd0566a5873",
        "8adc85b0662b",
        "9352af1e92f8",
        "9675968978c8",
        "ab28e2431b42",
        "c3331846e296",
        "c4e4c0858693",
        "c83a5920e297",
        "cb29fa1ab85f",
        "dee19efcc7ff",
        "dff16a840da1",
        "ecbbe26902d4",
        "f6f31abb70c6",
        "fd211cd5fe05",
    ]
)


#: BASE's option absent from the specs of cells cached before NSF's default became
#: ``gaussian_baseline="auto"`` (all of them ran without a baseline).
NO_BASELINE = ";gaussian_baseline=false"

#: BASE's last option, absent from the specs of cells cached before it joined BASE (all of
#: them ran with the loop's ``min_gain_se=0``, the default).
NO_MIN_GAIN = ";min_gain_se=0.0"

#: A value of :func:`spec_of` that leaves the option out (one the family lacks: MAF's bins).
DROP = object()


def spec_of(**changes: object) -> str:
    """The method spec of :data:`BASE` with ``changes`` (``DROP`` removes an option)."""
    options = {k: v for k, v in {**BASE, **changes}.items() if v is not DROP}
    return "npe:" + ";".join(f"{k}={json.dumps(v)}" for k, v in options.items())


#: name -> (method spec, the hypothesis it tests).
CANDIDATES: dict[str, tuple[str, str]] = {
    "base": (
        spec_of(),
        "NSF, 5 coupling transforms of (64, 64), 8 bins, in u = T⁻¹(θ); Adam 1e-3, batch 256, "
        "patience 20: the default tuned on one x_o per task",
    ),
    "reject": (
        spec_of(support="reject"),
        "the same flow on θ itself, draws outside the box rejected (as sbi): on box priors "
        "the logit map stretches posteriors near the faces into long tails the flow fits "
        "badly from 1k pairs",
    ),
    "sbi_nsf": (
        spec_of(
            support="reject",
            hidden_features=[50, 50],
            bins=10,
            batch_size=200,
            learning_rate=5e-4,
        ),  # fmt: skip
        "sbi's NSF settings (width 50, 10 bins, batch 200, lr 5e-4) on θ: isolates the "
        "settings from the code",
    ),
    "batch128": (
        spec_of(batch_size=128),
        "batch 128: 900 training pairs make 4 steps an epoch at 256, so patience 20 stops "
        "after ~80 steps without progress; twice the steps per epoch train further",
    ),
    "reject_b128": (
        spec_of(support="reject", batch_size=128),
        "both changes above together",
    ),
    "t3": (
        spec_of(transforms=3),
        "3 transforms: less capacity to overfit 900 pairs, and cheaper",
    ),
    "maf": (
        spec_of(estimator="maf", support="reject", bins=DROP),
        "affine autoregressive transforms (MAF) on θ: every coordinate is conditioned on all "
        "earlier ones, so the correlated, near-Gaussian posteriors of bernoulli_glm and the "
        "Gaussian-in-a-box of gaussian_linear_uniform are in the family from the first "
        "transform, where 2-pass coupling without a linear mixing layer (sbi's nsf has an "
        "LU layer after each coupling) needs several",
    ),
    "nsf_ar": (
        spec_of(support="reject", passes=None),
        "the spline flow made fully autoregressive (passes=None): the same conditioning "
        "argument as maf, with splines; sampling costs D passes per transform",
    ),
    "lu": (
        spec_of(support="reject", mixing="lu"),
        "the default coupling NSF with a learned LU linear layer after each coupling (as "
        "sbi's nsf): a coupling keeps two fixed halves of θ, so features of one half meet "
        "only through the other; W = LU rotates and shears them together at D² parameters "
        "per transform",
    ),
    "lu_lr": (
        spec_of(support="reject", mixing="lu", learning_rate=5e-4),
        "lu with sbi's learning rate 5e-4, which alone helped both 10-D tasks a little at 10k",
    ),
    "lu_gb": (
        spec_of(support="reject", mixing="lu", gaussian_baseline=True),
        "lu on the linear-Gaussian base (gaussian_baseline=True): the flow models "
        "Σ^{-1/2}(θ̃ - m(x)) of the ridge fit, so a posterior whose mean is linear in x and "
        "whose covariance is constant is the flow at the identity; the conditioner learns "
        "only what the ridge fit misses",
    ),
    "lu_gb_auto": (
        spec_of(support="reject", mixing="lu", gaussian_baseline="auto"),
        "lu_gb where the baseline module's rule keeps the base (residual non-Gaussianity "
        "E <= max(0.05, 36/N), dof share <= 0.1), lu elsewhere",
    ),
    "perm": (
        spec_of(support="reject", mixing="permutation"),
        "the default coupling NSF with a random split per transform (zuko's randperm): "
        "mixing at no parameter cost, but only across the halves drawn",
    ),
    **{
        f"min_gain_{k:g}": (
            spec_of(support="reject", mixing="lu", gaussian_baseline="auto", min_gain_se=k),
            f"lu_gb_auto whose new bests restart patience only if they gain "
            f"more than {k:g} paired standard errors of the per-row validation losses "
            "(simgen.stopping): at 1k, 100 validation rows make late gains of 0.0001-0.005 "
            "nats noise that keeps training 60-90 epochs longer",
        )
        for k in (0.5, 1.0)
    },
}


def label(name: str) -> str:
    """A candidate's row name in the tables (``npe:<name>``, so its CPU ratio is taken
    against sbi's NPE as :func:`benchmarks.evaluation.table` does for ``npe``)."""
    return f"npe:{name}"


#: The sbi method every candidate is compared with (its CPU ratio column).
BASELINE = "sbi_npe"


def write(out: Path, command: str, args, results: dict, names: list[str]) -> None:
    tasks = list(dict.fromkeys(t for t, _, _ in results))
    lines = [
        "# NPE defaults chosen on the tuning observations",
        "",
        f"Command: `{command}`",
        "",
        f"Observation set: **tuning** ({args.observations} observations per task, "
        "`benchmarks/observations/`); training seeds "
        f"{', '.join(map(str, args.seeds))} at {args.budget} simulations; C2ST on "
        f"{args.c2st_samples} samples per set (reduced from the report's for the sweep's "
        "budget; every candidate is scored the same way); torch "
        f"{torch.__version__}, 1 thread; CPU seconds are `time.process_time` of this one "
        "process. Every candidate of a (task, seed) trains on the same simulations.",
        "",
        "Code the cells ran with: "
        + ", ".join(sorted({k for r in results.values() for k in r.get("code", [])}))
        + ".",
        "",
        "## Candidates",
        "",
        "| name | spec | hypothesis |",
        "|---|---|---|",
        *(f"| {n} | `{CANDIDATES[n][0]}` | {CANDIDATES[n][1]} |" for n in names),
        "",
        "## Per task",
        "",
        *evaluation.table(results),
        "",
        "Rows `npe:<name>` are the candidates above. Columns as in `results_report.md` "
        "(mean C2ST over observations and seeds; spread = "
        "sd over seeds of the per-seed mean; worst obs = highest C2ST of one observation "
        "averaged over seeds; CPU simgen/sbi against sbi's NPE(nsf) on the same seeds).",
        "",
        "## Across tasks",
        "",
        "| candidate | mean C2ST over tasks | worst gap to the best candidate | on task | "
        "tasks within 0.01 of the best | mean CPU s / fit |",
        "|---|---|---|---|---|---|",
    ]
    best = {
        t: min(r["mean"] for (tt, _, _), r in results.items() if tt == t and r.get("seeds"))
        for t in tasks
    }
    for name in names:
        rows = {t: results.get((t, args.budget, label(name)), {}) for t in tasks}
        done = {t: r for t, r in rows.items() if r.get("seeds")}
        if len(done) < len(tasks):
            lines.append(f"| {name} | incomplete ({len(done)}/{len(tasks)} tasks) | | | | |")
            continue
        gaps = {t: r["mean"] - best[t] for t, r in done.items()}
        worst = max(gaps, key=gaps.get)
        lines.append(
            f"| {name} | {sum(r['mean'] for r in done.values()) / len(done):.3f} | "
            f"{gaps[worst]:+.3f} | {worst} | {sum(g <= 0.01 for g in gaps.values())}/"
            f"{len(done)} | {sum(r['cpu_s'] for r in done.values()) / len(done):.1f} |"
        )
    base = [r for (t, _, m), r in results.items() if m == BASELINE and r.get("seeds")]
    if len(base) == len(tasks):
        lines.append(
            f"| sbi NPE(nsf) | {sum(r['mean'] for r in base) / len(base):.3f} | | | | "
            f"{sum(r['cpu_s'] for r in base) / len(base):.1f} |"
        )
    if args.note:
        lines += ["", args.note]
    out.write_text("\n".join(lines) + "\n")


def cached(key: tuple, num_obs: int, fresh: bool = False) -> dict | None:
    """A cached cell of ``key`` (task, set, budget, spec, seed, samples), from any code
    version (with ``fresh``, the current code's only); a ``mixing="none"`` spec also finds
    its cell cached without the option by a :data:`PRE_MIXING_CODE` version."""
    cell = evaluation.cached_cell(*key, num_obs, any_code=not fresh)
    spec = key[3]
    if cell is None and not fresh and spec.endswith(NO_MIN_GAIN):
        # Cached before the option joined BASE; they ran with min_gain_se=0.
        return cached((*key[:3], spec[: -len(NO_MIN_GAIN)], *key[4:]), num_obs)
    if cell is None and not fresh and spec.endswith(NO_BASELINE):
        # Cached before the option joined BASE, when every flow had no baseline.
        return cached((*key[:3], spec[: -len(NO_BASELINE)], *key[4:]), num_obs)
    if cell is None and ';mixing="none"' in spec:
        legacy = (*key[:3], spec.replace(';mixing="none"', ""), *key[4:])
        cell = evaluation.cached_cell(*legacy, num_obs, any_code=True)
        if cell is not None and cell.get("code") not in PRE_MIXING_CODE:
            cell = None
    return cell


def auto_decisions(tasks: list[str], budgets: list[int], seeds: list[int]) -> list[str]:
    """What ``gaussian_baseline="auto"`` decides on each (task, budget, seed)'s training
    simulations (those every candidate trains on): the residual's non-Gaussianity E against
    its threshold max(0.05, 36/N), the regression's dof share ν/N, the base's mass M outside
    the targets' range against its bound, and the decision, as a markdown table. NPE fits
    the base to θ itself (``support="reject"``) on every pair."""
    from simgen.estimators.flows import NSF
    from simgen.inference.base import check_simulations

    lines = [
        "| task | sims | seed | E | threshold | ν/N | M | 10/(N+1) | base kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in tasks:
        task = harness.load_task(name)
        for budget in budgets:
            for seed in seeds:
                data = evaluation.training_data(task, budget, seed)
                theta, x = check_simulations(task.prior, *data)
                flow = NSF(theta.shape[1], x.shape[1:], gaussian_baseline="auto")
                flow.fit_standardization(theta, x)
                b = flow.baseline
                lines.append(
                    f"| {name} | {budget} | {seed} | {b.non_gaussianity:.3f} | "
                    f"{max(b.threshold, 36 / len(theta)):.3f} | {b.dof_share:.4f} | "
                    f"{b.edge_mass:.2e} | {10 / (len(theta) + 1):.1e} | "
                    f"{'yes' if flow.uses_baseline else 'no'} |"
                )
    return lines


def curves(tasks: list[str], budget: int, seeds: list[int]) -> list[str]:
    """The default NPE's validation curve with every new best counted (``min_gain_se=0``)
    on each (task, budget, seed)'s training simulations: epochs run, best epoch, the loss
    at a few epochs, and every new best after epoch 40 with its gain (nats), which is what
    keeps early stopping from ending a run without the minimum gain."""
    import warnings

    import simgen

    lines = []
    for name in tasks:
        task = harness.load_task(name)
        for seed in seeds:
            theta, x = evaluation.training_data(task, budget, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h = simgen.NPE(task.prior).fit(theta, x, seed=seed, min_gain_se=0.0).history
            v = h.validation_loss
            marks = [e for e in (1, 10, 20, 40, 60, 100, 150) if e <= len(v)] + [len(v)]
            best, gains = float("inf"), []
            for epoch, loss in enumerate(v, 1):
                if loss < best and epoch > 40:
                    gains.append(f"{epoch}:{best - loss:.4f}")
                best = min(best, loss)
            lines += [
                f"{name} n={budget} seed={seed}: {h.epochs} epochs, best {h.best_epoch}, "
                f"{h.num_validation} validation pairs",
                "  loss at epoch " + ", ".join(f"{e}: {v[e - 1]:.3f}" for e in marks),
                "  new bests after epoch 40 (epoch:gain) " + ", ".join(gains),
            ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=harness.TASKS[:4])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--no-sbi", action="store_true", help="leave out sbi's NPE(nsf)")
    parser.add_argument("--observations", type=int, default=harness.NUM_OBSERVATIONS)
    parser.add_argument("--c2st-samples", type=int, default=1000)
    parser.add_argument("--cached-only", action="store_true", help="write the table only")
    parser.add_argument("--note", default="", help="a paragraph under the table")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--fresh", default="", metavar="NAMES",
        help="candidates (comma-separated) whose cells count only if the current code ran them",
    )  # fmt: skip
    parser.add_argument(
        "--auto-decisions", nargs="+", type=int, metavar="BUDGET",
        help="print what gaussian_baseline='auto' decides per task, budget and seed; no fits",
    )  # fmt: skip
    parser.add_argument(
        "--curves", action="store_true", help="print the default's validation curves; no C2ST"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.curves:
        print("\n".join(curves(args.tasks, args.budget, args.seeds)))
        return
    if args.auto_decisions:
        print("\n".join(auto_decisions(args.tasks, args.auto_decisions, args.seeds)))
        return
    names = [n for n in args.candidates.split(",") if n]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
    specs = [CANDIDATES[n][0] for n in names] + ([] if args.no_sbi else [BASELINE])
    fresh = {CANDIDATES[n][0] for n in args.fresh.split(",") if n}
    shown = list(argv if argv is not None else sys.argv[1:])
    for flag, width in (("--cached-only", 1), ("--note", 2)):
        if flag in shown:
            del shown[shown.index(flag) : shown.index(flag) + width]
    command = "OMP_NUM_THREADS={} python -m benchmarks.bench_defaults {}".format(
        os.environ.get("OMP_NUM_THREADS", ""), shlex.join(shown)
    )
    warm_up_torch()
    results: dict = {}
    for name in args.tasks:
        task = harness.load_task(name)
        cells: dict[str, list] = {spec: [] for spec in specs}
        for seed in args.seeds:
            data = None
            for spec in specs:
                key = (name, "tuning", args.budget, spec, seed, args.c2st_samples)
                cell = cached(key, args.observations, fresh=spec in fresh)
                if cell is None and args.cached_only:
                    continue
                if cell is None:
                    if data is None:
                        data = evaluation.training_data(task, args.budget, seed)
                    cell = evaluation.evaluate_cell(
                        *key[:5], data=data, num_samples=args.c2st_samples,
                        num_obs=args.observations,
                    )  # fmt: skip
                cells[spec].append(cell)
                print(f"{name} seed={seed} {spec}: " + evaluation.cell_line(cell), flush=True)
        for spec in specs:
            shown_as = next((label(n) for n in names if CANDIDATES[n][0] == spec), spec)
            results[(name, args.budget, shown_as)] = evaluation.summarise(cells[spec])
        write(Path(args.out), command, args, results, names)


if __name__ == "__main__":
    main()
