"""The joint transformer against simgen flow matching, sbi FMPE and sbi NPE on the same data.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --set tuning \\
        --tasks two_moons gaussian_linear --seeds 0 1 --observations 3 --configs A,B,C
    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --set report \\
        --tasks two_moons gaussian_mixture slcp gaussian_linear --seeds 0 1 --observations 3
    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --set cost --budget 1000

Each method trains once per (task, seed) on the same simulations
(``evaluation.training_data``) in this process. C2ST (``simgen.diagnostics.c2st``) of 1,000
draws against the first 1,000 cached reference samples of each of the first
``--observations`` observations of the set; CPU seconds (``time.process_time``) to train,
and, on the report set, to draw 10,000 samples at the first observation. ``--set tuning``
runs the search configurations of :data:`CONFIGS` (and, for configuration ``C``, the same
trained model sampled with 8 and 32 ODE steps); ``--set report`` runs :data:`REPORT`;
``--set cost`` times training epochs at the token counts of :data:`COST_TASKS` (or of
``--tasks`` when given), with the variants of :data:`COST_VARIANTS`.
Each cell is kept in ``benchmarks/cells/joint/`` (tracked, :mod:`benchmarks.cell_files`;
keyed by task, set, budget, spec, seed, observations), so a rerun resumes; delete a cell's
file to recompute it. Each run
rewrites its own section of ``results_joint.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks import cell_files, evaluation, harness, warm_up_torch
from simgen.diagnostics import c2st

RESULTS = Path(__file__).with_name("results_joint.md")
CACHE = cell_files.cells("joint")
DRAWS = 1000
TIMED_DRAWS = 10_000

_JT = 'npe:estimator="joint_transformer"'
_MIX = {
    "mix04": "[0.4,0.2,0.1,0.15,0.15]",
    "mix07": "[0.7,0.1,0.05,0.1,0.05]",
    "post": "[1,0,0,0,0]",
}


def _jt(lr: float, patience: int, mix: str, extra: str = "") -> str:
    spec = f"{_JT};learning_rate={lr};patience={patience};mask_weights={_MIX[mix]}"
    extra = extra if "layers=" in extra else ";".join(filter(None, ["layers=2", extra]))
    return f"{spec};{extra}"


_ID1 = "layers=3;identity_scale=1.0"  # token identities drawn at std 1, not 0.02
_PM = "x_token_size=2;x_blocks=4"  # slcp: one token per i.i.d. point, the dependency mask
#: Every joint-transformer spec here names its depth, so a label keeps its meaning whatever
#: the family's default; the cache key leaves out ``layers=2``, the depth of the cells cached
#: under specs that named none (:func:`_key_spec`).
_KEY_OMITS = ";layers=2"

#: The search on the tuning set: label -> (what it varies, method spec). Every option is
#: spelled out, so a label keeps its meaning whatever the family's defaults are.
CONFIGS = {
    "A": ("posterior weight 0.4, lr 1e-3, patience 20", _jt(1e-3, 20, "mix04")),
    "B": ("posterior weight 0.4, lr 3e-3, patience 34", _jt(3e-3, 34, "mix04")),
    "C": ("posterior weight 0.7, lr 3e-3, patience 34", _jt(3e-3, 34, "mix07")),
    "D": ("posterior only, lr 3e-3, patience 34", _jt(3e-3, 34, "post")),
    "E": ("C with width 32", _jt(3e-3, 34, "mix07", "width=32")),
    "F": ("C with batch 128", _jt(3e-3, 34, "mix07", "batch_size=128")),
    "G": ("C with 3 blocks", _jt(3e-3, 34, "mix07", "layers=3")),
    "W": ("C with width 128", _jt(3e-3, 34, "mix07", "width=128")),
    "L": ("C with patience 68", _jt(3e-3, 68, "mix07")),
    "G-D": ("G, posterior only", _jt(3e-3, 34, "post", "layers=3")),
    "G-I": ("G with token identities drawn at std 1", _jt(3e-3, 34, "mix07", _ID1)),
    # slcp only: x is four i.i.d. 2-D points
    "M": ("C with the dependency mask (x_blocks=4)", _jt(3e-3, 34, "mix07", "x_blocks=4")),
    "P": ("C with one token per point (x_token_size=2)", _jt(3e-3, 34, "mix07", "x_token_size=2")),
    "PM": ("P with the dependency mask", _jt(3e-3, 34, "mix07", _PM)),
    "PM-D": ("PM, posterior only", _jt(3e-3, 34, "post", _PM)),
    "PM-L": ("PM with patience 68", _jt(3e-3, 68, "mix07", _PM)),
    "PM-G": ("PM with 3 blocks", _jt(3e-3, 34, "mix07", _PM + ";layers=3")),
    "PM-W": ("PM with width 128", _jt(3e-3, 34, "mix07", _PM + ";width=128")),
    # weights averaged (TrainConfig.ema): G and PM-G are the family's defaults
    "G-E": ("G with ema=0.99", _jt(3e-3, 34, "mix07", "layers=3;ema=0.99")),
    "G-E0": ("G with ema=0 spelled out (G's own fit)", _jt(3e-3, 34, "mix07", "layers=3;ema=0")),
    "PM-G-E": ("PM-G with ema=0.99", _jt(3e-3, 34, "mix07", _PM + ";layers=3;ema=0.99")),
    "fm": ("simgen flow matching (its defaults)", "fm"),
    "fm-nb": ("fm without its linear-Gaussian baseline", "fm:gaussian_baseline=false"),
}
#: Sampling steps tried on configuration C's trained model (no retraining).
STEP_VARIANTS = {"C": (8, 32)}
#: The report: label -> method spec (each library's defaults; the joint transformer's
#: depth named, its default 3 blocks, and 2 blocks beside it where those cells exist; its
#: labels without "ema=0.99" train with ``ema=0``, :func:`_fit_spec`).
REPORT = {
    "joint_transformer": f"{_JT};layers=3",
    "joint_transformer (2 blocks)": f"{_JT};layers=2",
    # slcp: one token per i.i.d. point and the dependency mask (tuning set, configs P/PM)
    "joint_transformer (point tokens + mask)": f"{_JT};layers=3;{_PM}",
    "joint_transformer (point tokens + mask; 2 blocks)": f"{_JT};layers=2;{_PM}",
    "joint_transformer (point tokens + mask; identities at std 1)": f"{_JT};{_PM};{_ID1}",
    "joint_transformer (ema=0.99)": f"{_JT};layers=3;ema=0.99",
    "joint_transformer (point tokens + mask; ema=0.99)": f"{_JT};layers=3;{_PM};ema=0.99",
    "flow_matching": "fm",
    "sbi FMPE": "sbi_fmpe",
    "sbi NPE (nsf)": "sbi_npe",
}
#: Report labels that fit only some tasks' x (the others skip them).
REPORT_TASKS = {
    "joint_transformer (point tokens + mask)": ("slcp",),
    "joint_transformer (point tokens + mask; 2 blocks)": ("slcp",),
    "joint_transformer (point tokens + mask; identities at std 1)": ("slcp",),
    "joint_transformer (point tokens + mask; ema=0.99)": ("slcp",),
}


def _fit_spec(spec: str) -> str:
    """The spec as trained: a joint-transformer spec that names no ``ema`` trains with
    ``ema=0``, the setting its cells were computed with (the family's default is 0.99, the
    label "joint_transformer (ema=0.99)"), so a label and its cached cells keep one meaning."""
    return f"{spec};ema=0" if spec.startswith(_JT) and "ema=" not in spec else spec


def _key_spec(spec: str) -> str:
    """The spec as the cache key reads it (``layers=2`` left out, :data:`_KEY_OMITS`)."""
    if spec.startswith(_JT) and "layers=" not in spec:
        raise ValueError(f"a joint-transformer spec must name its depth (layers=): {spec}")
    return spec.replace(_KEY_OMITS, "")


def _cell_path(task: str, set_name: str, budget: int, spec: str, seed: int, num_obs: int):
    key = "|".join([harness.source_hash(task), set_name, str(budget), _key_spec(spec)])
    key += f"|{seed}"
    key += f"|{num_obs}|{DRAWS}|{TIMED_DRAWS}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return CACHE / task / f"{set_name}-n{budget}-s{seed}-{digest}.json"


def _scores(posterior, xs, refs, seed: int) -> tuple[list[float], float]:
    scores, sample_s = [], 0.0
    for i, (x_o, ref) in enumerate(zip(xs, refs)):
        start = time.process_time()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(1000 * seed + i)
            samples = posterior.sample((DRAWS,), x=x_o).reshape(DRAWS, -1)
        sample_s += time.process_time() - start
        scores.append(float(c2st(ref[:DRAWS], samples, seed=0)))
    return scores, sample_s / len(xs)


def cell(task_name: str, set_name: str, budget: int, spec: str, seed: int, num_obs: int,
         data, steps: tuple[int, ...] = (), timed: bool = False) -> dict:  # fmt: skip
    """Train ``spec`` on ``data`` and score it at the set's first ``num_obs`` observations
    (cached)."""
    path = _cell_path(task_name, set_name, budget, spec, seed, num_obs)
    if (cached := cell_files.read_cell(path)) is not None:
        return cached
    task = harness.load_task(task_name)
    _, xs = harness.observations(task_name, set_name, num_obs)
    refs = [harness.reference(task_name, set_name, i)["samples"] for i in range(num_obs)]
    _, _, fit = evaluation.parse_method(_fit_spec(spec))
    out: dict = {"task": task_name, "set": set_name, "budget": budget, "spec": spec}
    out["seed"] = seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.process_time()
        posterior = fit(task, *data, seed)
        out["train_s"] = time.process_time() - start
        history = getattr(posterior, "history", None)
        out["epochs"] = getattr(history, "epochs", None) if history is not None else None
        if isinstance(getattr(history, "train_loss", None), list) and history.train_loss:
            # the losses at the best epoch (train: the mean of its last 10 epochs, which
            # are 3-4 noisy steps each at 1k): a train-validation gap is overfitting (data
            # limits), no gap with a high loss is capacity or optimisation
            best = history.best_epoch
            out["best_epoch"] = best
            out["train_loss_best"] = _mean(history.train_loss[max(0, best - 9) : best + 1])
            out["val_loss_best"] = history.best_validation_loss
        out["c2st"], out["sample_s_per_1000"] = _scores(posterior, xs, refs, seed)
        if timed:
            start = time.process_time()
            with torch.no_grad():
                posterior.sample((TIMED_DRAWS,), x=xs[0])
            out["sample_s_10000"] = time.process_time() - start
        if steps:
            from simgen.estimators.ode import SolverConfig

            est = posterior.estimator
            default = est.solver
            out["steps"] = {}
            for k in steps:
                est.solver = SolverConfig(**{**default.to_dict(), "steps": k})
                scores, per = _scores(posterior, xs, refs, seed)
                out["steps"][str(k)] = {"c2st": scores, "sample_s_per_1000": per}
            est.solver = default
    cell_files.write_cell(path, out, indent=1)
    return out


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _spread(per_seed: list[float]) -> str:
    return f"{statistics.stdev(per_seed):.3f}" if len(per_seed) > 1 else "–"


def _row(label: str, what: str, cells: list[dict], key=lambda c: c["c2st"]) -> str:
    per_seed = [_mean(key(c)) for c in cells]
    per_obs = [_mean(v) for v in zip(*(key(c) for c in cells))]
    train = _mean([c["train_s"] for c in cells])
    obs = ", ".join(f"{v:.3f}" for v in per_obs)
    return (
        f"| {label} | {what} | {len(cells)} | {_mean(per_seed):.3f} | {_spread(per_seed)} | "
        f"{obs} | {train:.0f} | {_epochs_and_losses(cells)} |"
    )


HEADER = (
    "| config | what | seeds | mean C2ST | spread over seeds | C2ST per observation "
    "(mean over seeds) | train CPU s | epochs per seed | train / validation loss at the "
    "best epoch |\n|---|---|---|---|---|---|---|---|---|"
)


def _cells(task_name, set_name, budget, num_obs, seeds, labels, spec_of, options_of):
    """Every (label, seed) cell of one task, trained on the seed's shared simulations."""
    task = harness.load_task(task_name)
    rows = {label: [] for label in labels}
    for seed in seeds:
        data = evaluation.training_data(task, budget, seed)
        for label in labels:
            got = cell(task_name, set_name, budget, spec_of(label), seed, num_obs, data,
                       **options_of(label))  # fmt: skip
            rows[label].append(got)
            print(task_name, label, seed, got["c2st"], f"{got['train_s']:.0f}s", flush=True)
    return rows


def tuning(tasks, budget, num_obs, seeds, labels) -> str:
    parts = []
    for task_name in tasks:
        rows = _cells(task_name, "tuning", budget, num_obs, seeds, labels,
                      lambda label: CONFIGS[label][1],
                      lambda label: {"steps": STEP_VARIANTS.get(label, ())})  # fmt: skip
        lines = [f"**{task_name}, {budget} simulations**", "", HEADER]
        for label in labels:
            lines.append(_row(label, CONFIGS[label][0], rows[label]))
            for k in STEP_VARIANTS.get(label, ()):
                key = lambda c, k=k: c["steps"][str(k)]["c2st"]  # noqa: E731
                lines.append(_row(f"{label}, {k} steps", "same models, sampled with "
                                  f"{k} Heun steps", rows[label], key))  # fmt: skip
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


REPORT_HEADER = (
    "| task | method | seeds | mean C2ST | spread over seeds | C2ST per observation (mean "
    "over seeds) | train CPU s | CPU s / 10,000 draws | epochs per seed | train / validation "
    "loss at the best epoch |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _epochs_and_losses(cells: list[dict]) -> str:
    epochs = [c.get("epochs") for c in cells]
    ep = "/".join(str(e) for e in epochs) if all(e is not None for e in epochs) else "–"
    if not all("val_loss_best" in c for c in cells):
        return f"{ep} | –"
    train = _mean([c["train_loss_best"] for c in cells])
    return f"{ep} | {train:.2f} / {_mean([c['val_loss_best'] for c in cells]):.2f}"


def report(tasks, budget, num_obs, seeds, labels) -> str:
    lines = [REPORT_HEADER]
    for task_name in tasks:
        fits = [label for label in labels if task_name in REPORT_TASKS.get(label, (task_name,))]
        rows = _cells(task_name, "report", budget, num_obs, seeds, fits,
                      REPORT.__getitem__, lambda label: {"timed": True})  # fmt: skip
        for label in fits:
            cells = rows[label]
            per_seed = [_mean(c["c2st"]) for c in cells]
            per_obs = [_mean(v) for v in zip(*(c["c2st"] for c in cells))]
            obs = ", ".join(f"{v:.3f}" for v in per_obs)
            lines.append(
                f"| {task_name} {budget} | {label} | {len(cells)} | {_mean(per_seed):.3f} | "
                f"{_spread(per_seed)} | {obs} | {_mean([c['train_s'] for c in cells]):.0f} | "
                f"{_mean([c['sample_s_10000'] for c in cells]):.1f} | "
                f"{_epochs_and_losses(cells)} |"
            )
    return "\n".join(lines)


#: Tasks whose token counts span the benchmarks' (two_moons 4, slcp 13, gaussian_linear 20).
COST_TASKS = ("two_moons", "slcp", "gaussian_linear")
#: Extra rows of the cost table: task -> (label, estimator options).
COST_VARIANTS = {"slcp": [("point tokens + mask", {"x_token_size": 2, "x_blocks": 4})]}


def cost(budget: int, tasks=COST_TASKS, epochs: int = 10) -> str:
    """Train CPU seconds per epoch of the default joint transformer at several token counts
    (``epochs`` epochs on ``budget`` simulations, batch 256, one thread)."""
    import simgen

    lines = ["| task | tokens T | train CPU s / epoch | per token |", "|---|---|---|---|"]
    for task_name in tasks:
        task = harness.load_task(task_name)
        theta, x = evaluation.training_data(task, budget, 0)
        for label, options in [("", {}), *COST_VARIANTS.get(task_name, [])]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                npe = simgen.NPE(task.prior, estimator="joint_transformer", **options)
                start = time.process_time()
                post = npe.fit(theta, x, max_epochs=epochs, progress=False, seed=0)
                per = (time.process_time() - start) / epochs
            tokens = post.estimator.tokens
            name = f"{task_name}, {label}" if label else task_name
            lines.append(f"| {name} | {tokens} | {per:.3f} | {per / tokens:.4f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def write_section(title: str, body: str) -> None:
    """Replace the ``## title`` section of ``results_joint.md`` (or append it)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Joint transformer\n"
    block = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + block
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["tuning", "report", "cost"], default="report")
    parser.add_argument("--tasks", nargs="+", default=["two_moons"])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--configs", default=None, help="comma-separated labels")
    parser.add_argument("--no-write", action="store_true", help="print, do not write")
    parser.add_argument(
        "--section",
        default="",
        help="words appended to the section title, so a run of some labels keeps the "
        "section of a run of others on the same task and budget",
    )
    args = parser.parse_args(sys.argv[1:])
    torch.set_num_threads(1)
    warm_up_torch()
    start = time.process_time()
    if args.set == "cost":
        given = "--tasks" in sys.argv[1:]
        body = cost(args.budget, args.tasks if given else COST_TASKS)
        command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --set cost"
        command += f" --budget {args.budget}"
        command += f" --tasks {' '.join(args.tasks)}" if given else ""
        print(body)
        if not args.no_write:
            title = "Cost per token"
            title += "" if args.budget == 1000 else f", {args.budget} simulations"
            write_section(title, f"`{command}`\n\n{body}")
        return
    table = CONFIGS if args.set == "tuning" else REPORT
    labels = args.configs.split(",") if args.configs else list(table)
    run = tuning if args.set == "tuning" else report
    body = run(args.tasks, args.budget, args.observations, args.seeds, labels)
    command = (
        f"OMP_NUM_THREADS=1 python -m benchmarks.bench_joint --set {args.set} --tasks "
        f"{' '.join(args.tasks)} --budget {args.budget} --observations {args.observations} "
        f"--seeds {' '.join(map(str, args.seeds))}"
        + (f" --configs {shlex.quote(args.configs)}" if args.configs else "")
        + (f" --section {shlex.quote(args.section)}" if args.section else "")
    )
    print(body)
    print(f"CPU s in this process: {time.process_time() - start:.0f}")
    if not args.no_write:
        what = "Tuning set" if args.set == "tuning" else "Report set"
        title = f"{what}: {', '.join(args.tasks)}, {args.budget} simulations"
        title += f", {args.section}" if args.section else ""
        write_section(title, f"`{command}`\n\n{body}")


if __name__ == "__main__":
    main()
