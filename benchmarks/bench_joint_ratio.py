"""NRE with the joint likelihood ratio (CARL, ALICES, CASCAL, ROLR, RASCAL, NRE-C with soft
labels) vs plain NRE-C.

The showcase is the collection's ``particle_shower``: a pyro program with a random number of
latent splittings whose reference posterior comes from pseudo-marginal MCMC. Each seed runs
``simgen.simulate(shower, prior, N_max, seed, joint=True, theta_1=rows)`` once: θ from the
prior, M references per row from the prior (``rows`` ``(N_max, M, D)``,
:func:`reference_columns`; M = K − 1 of the largest ``nrec_soft`` K planned, 1 without),
each recorded trace re-scored at all of them, so each simulation's joint log ratios and joint
score are banked beside x in the one simulator pass. A budget of n simulations is the first
n rows. Plain NRE-C trains on
the n pairs (θ, x); the reference-ratio losses on ``ratio_rows()`` of the same n simulations
(2n rows: each simulation as drawn, and swapped, θ₁ paired with x drawn at its reference θ;
:mod:`simgen.joint_ratio`), with the first reference column, the one ``theta_1="prior"``
draws. A *variant* (:data:`VARIANTS`) is a loss with other training
options, score weight or reference; ``fixed`` references simulate n/2 θs re-scored at the
prior's mean and n/2 simulations at it (``ratio_rows(reference=...)``). ``nrec_soft`` trains
on the n simulations as they are, with the first K − 1 = 4 reference columns, ``-k2``,
``-k10`` and ``-k20`` with the first 1, 9 and 19 (K = 2, 10, 20); ``--at-target`` runs
variants at the largest budget only. Accuracy is C2ST
(``simgen.diagnostics.c2st``) of 1,000 posterior draws against 1,000 of the
``benchmarks.harness.reference`` draws of the first ``--obs`` observations of a set: the
variants are screened on the *tuning* set (``--screen``), the grid runs on the *report* set.
Cells (variant, budget, seed, observations) are kept in ``benchmarks/cells/joint_ratio/``
(tracked, :mod:`benchmarks.cell_files`), so a rerun resumes. sbi has no joint-ratio loss, so
the comparison is within simgen. CPU seconds (``time.process_time``) per fit, one thread.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint_ratio --budgets 1000,2000,3300 \
        --baseline 10000 --seeds 4 --obs 5 --methods \
carl,alices,cascal,alices-a0.1,rolr,nrec_soft,nrec_soft-k2 --at-baseline nre,carl --screen \
alices,alices-lr1e-3,alices-p60,alices-a0.1,alices-a1,alices-fixed,nre,nre-p60,cascal,rolr,\
nrec_soft,nrec_soft-k10,nrec_soft-k20 --at-target nrec_soft-k10,nrec_soft-k20

(about 32 CPU-minutes from an empty cell cache with the references cached: 138 cells of
5 to 35 CPU-s, most of it C2ST at about 2 CPU-s per observation, the latent chain and
:func:`benchmarks.joint_ratio_checks.rescore_rows`).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
import warnings
from pathlib import Path

import torch

import simgen
from benchmarks import cell_files, warm_up_torch
from benchmarks.harness import observations, reference
from simgen.diagnostics.c2st import c2st
from simgen.simulate import run_simulator
from simgen.simulations import Simulations
from simulators import particle_shower as shower

OUT = Path(__file__).with_name("results_joint_ratio.md")
CELLS = cell_files.cells("joint_ratio")
REFERENCE_DRAWS, POSTERIOR_DRAWS = 2000, 1000
#: loss name → the extras it reads (all need ``from_reference``).
AUGMENTED = {
    "carl": (),
    "alices": ("joint_log_ratio",),
    "cascal": ("joint_score",),
    "rolr": ("joint_log_ratio",),
    "rascal": ("joint_log_ratio", "joint_score"),
}
#: variant → (loss, options): ``train`` (TrainConfig fields), ``weight`` (the score term's
#: λ, ALICES's α), ``reference`` (``"prior"`` per row or ``"fixed"``), ``cell`` (its cache
#: name where a loss's definition changed since its cells were made).
VARIANTS = {
    "nre": ("nre", {}),
    **{name: (name, {}) for name in AUGMENTED},
    "alices-lr1e-3": ("alices", {"train": {"learning_rate": 1e-3}}),
    "alices-p60": ("alices", {"train": {"patience": 60}}),
    "alices-a0.1": ("alices", {"weight": 0.1}),
    "alices-a1": ("alices", {"weight": 1.0}),
    "alices-fixed": ("alices", {"reference": "fixed"}),
    "cascal-p60": ("cascal", {"train": {"patience": 60}}),
    "nre-p60": ("nre", {"train": {"patience": 60}}),
    "nrec_soft": ("nrec_soft", {"atoms": 5}),
    "nrec_soft-k2": ("nrec_soft", {"atoms": 2}),
    "nrec_soft-k10": ("nrec_soft", {"atoms": 10}),
    "nrec_soft-k20": ("nrec_soft", {"atoms": 20}),
}
#: Seed offset of the prior draws of ``nrec_soft``'s extra references (one stream per
#: reference, none shared with θ or the run's own θ₁).
SOFT_REFERENCE_SEED = 77_000
CELL_NAMES = {"rolr": "rolr-mixture", "rascal": "rascal-mixture"}


def simulations(task, n: int, seed: int, theta_1="prior", references: int | None = None):
    """``n`` simulations of ``task`` at θ ~ prior with a θ₁ ~ prior per row (seeded); with
    ``references``, that many per row (:func:`reference_columns`), all in one pass."""
    if references:
        theta_1 = reference_columns(task, n, seed, references)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = task.simulator
        return simgen.simulate(sim, task.prior, n, seed=seed, joint=True, theta_1=theta_1)


def reference_columns(task, n: int, seed: int, count: int) -> torch.Tensor:
    """``count`` prior-drawn references per simulation, ``(n, count, D)``: column 0 is the
    row ``theta_1="prior"`` draws (so column 0 of the run is that run), column m ≥ 1 a
    prior draw seeded by ``SOFT_REFERENCE_SEED + 100 seed + m`` (K = 5's, 10's and 20's
    references are nested)."""
    from simgen.joint_ratio import reference_rows

    d = task.prior.event_shape[-1]
    columns = [reference_rows("prior", torch.zeros(n, d), seed, task.prior)]
    for m in range(1, count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SOFT_REFERENCE_SEED + 100 * seed + m)
            columns.append(task.prior.sample((n,)).float())
    return torch.stack(columns, 1)


def fixed_rows(task, n: int, seed: int):
    """Ratio rows for one fixed θ₁, the prior's mean, from ``n`` simulations: n/2 θs from
    the prior re-scored at θ₁, and n/2 simulations at θ₁ re-scored at those θs."""
    half, theta_1 = n // 2, task.prior.mean.float()
    run = simulations(task, half, seed, theta_1=theta_1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_ref = run_simulator(
            task.simulator,
            theta_1.expand(half, -1).clone(),
            seed=seed + 10_000,
            joint=True,
            theta_1=run.theta,
        )
    return run.ratio_rows(reference=at_ref)


def fit(task, variant: str, run, n: int, seed: int, x_shape=None, nre_class=simgen.NRE):
    """Train ``variant`` on the first ``n`` simulations of ``run``; returns the posterior."""
    method, options = VARIANTS.get(variant, (variant, {}))
    train = options.get("train", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "nre":
            x = run.x[:n] if x_shape is None else run.x[:n].reshape(-1, *x_shape)
            nre = simgen.NRE(task.prior)
            return nre.fit(run.theta[:n], x, progress=False, seed=seed, **train)
        if method == "nrec_soft":
            x = run.x[:n] if x_shape is None else run.x[:n].reshape(-1, *x_shape)
            atoms = options["atoms"]
            theta_1, log_r = _columns(run, n, atoms - 1)
            nre = nre_class(task.prior, loss=method, num_atoms=atoms)
            return nre.fit(
                run.theta[:n],
                x,
                progress=False,
                seed=seed,
                theta_1=theta_1,
                joint_log_ratio=log_r,
                **train,
            )
        if options.get("reference") == "fixed":
            rows = fixed_rows(task, n, seed)
        else:
            rows = _head(run, n).ratio_rows()
        weight = options.get("weight")
        names = set(AUGMENTED[method]) | ({"joint_score"} if weight else set())
        extras = {"from_reference": rows.from_reference}
        extras.update({k: getattr(rows, k) for k in names})
        x_rows = rows.x if x_shape is None else rows.x.reshape(-1, *x_shape)
        nre = nre_class(task.prior, loss=method, joint_score_weight=weight)
        return nre.fit(rows.theta, x_rows, progress=False, seed=seed, **train, **extras)


def soft_count(variants) -> int | None:
    """The most references any ``nrec_soft`` variant among ``variants`` reads (K − 1), or
    None when there is none."""
    atoms = [VARIANTS[v][1]["atoms"] for v in variants if VARIANTS.get(v, (v,))[0] == "nrec_soft"]
    return max(atoms) - 1 if atoms else None


def _columns(run, n: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` references of the first ``n`` simulations of ``run`` (made by
    :func:`simulations` with ``references`` ≥ ``count``), and the joint log ratios."""
    if run.joint_log_ratio.ndim == 1:
        if count != 1:
            raise ValueError(f"{count} references per simulation need simulations(references=)")
        return run.theta_1[:n], run.joint_log_ratio[:n]
    if run.joint_log_ratio.shape[1] < count:
        raise ValueError(f"the run has {run.joint_log_ratio.shape[1]} references, not {count}")
    return run.theta_1[:n, :count], run.joint_log_ratio[:n, :count]


def _head(run, n: int) -> Simulations:
    """The first ``n`` simulations of a run with their ratio columns (its first reference
    where it has several)."""
    first = (slice(n), 0) if run.joint_log_ratio.ndim == 2 else slice(n)
    extras = {"theta_1": run.theta_1[first], "joint_log_ratio": run.joint_log_ratio[first]}
    return Simulations(run.theta[:n], run.x[:n], joint_score=run.joint_score[:n], **extras)


def bootstrap(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over resampled cells."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def references(num_obs: int, set_name: str = "report") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The first ``num_obs`` observations of a set and ``POSTERIOR_DRAWS`` of each one's
    harness reference (a seeded subset of ``REFERENCE_DRAWS``, the shared cache)."""
    _, xs = observations("particle_shower", set_name)
    pick = torch.randperm(REFERENCE_DRAWS, generator=torch.Generator().manual_seed(0))
    refs = []
    for i in range(num_obs):
        entry = reference("particle_shower", set_name, i, num=REFERENCE_DRAWS)
        if not entry["cached"]:
            print(f"reference {i}: {entry['cpu_seconds']:.1f} CPU s {entry['check']}", flush=True)
        refs.append(entry["samples"][pick[:POSTERIOR_DRAWS]].float())
    return xs[:num_obs], refs


def cell(xs, refs, run, variant: str, n: int, seed: int, fit_cell=None, name=None) -> dict:
    """C2ST per observation, training CPU seconds and epochs of one (variant, budget, seed),
    cached; ``fit_cell(variant, run, n, seed)`` and ``name`` let a study reuse it."""
    key = hashlib.sha256(xs.double().numpy().tobytes()).hexdigest()[:10]
    path = CELLS / f"{name or CELL_NAMES.get(variant, variant)}-n{n}-s{seed}-{key}.json"
    if (cached := cell_files.read_cell(path)) is not None:
        return cached
    start = time.process_time()
    posterior = (fit_cell or (lambda *a: fit(shower, *a)))(variant, run, n, seed)
    train = time.process_time() - start
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = posterior.sample_batched((POSTERIOR_DRAWS,), xs, seed=seed)
    sample = time.process_time() - start
    scores = [float(c2st(samples[:, b], ref, seed=0)) for b, ref in enumerate(refs)]
    history = posterior.history
    out = {"c2st": scores, "train_s": train, "sample_s": sample}
    out.update(epochs=history.epochs, best_epoch=history.best_epoch)
    cell_files.write_cell(path, out)
    print(n, seed, variant, [round(s, 3) for s in scores], f"{train:.1f}+{sample:.1f}", flush=True)
    return out


def run(plan, seeds: int, num_obs: int, set_name: str = "report"):
    """The cells of every (budget, variant) in ``plan`` over ``seeds`` seeds."""
    xs, refs = references(num_obs, set_name)
    results: dict[tuple[int, str], list[dict]] = {}
    count = soft_count(v for _, v in plan)
    for seed in range(seeds):
        sims = simulations(shower, max(n for n, _ in plan), seed, references=count)
        for n, variant in plan:
            results.setdefault((n, variant), []).append(cell(xs, refs, sims, variant, n, seed))
    return results


def _epochs(cells) -> str:
    known = [c for c in cells if "epochs" in c]
    if not known:
        return "—"
    mean = sum(c["epochs"] for c in known) / len(known)
    return f"{mean:.0f} ({sum(c['best_epoch'] for c in known) / len(known):.0f})"


def table_rows(results) -> list[str]:
    """Rows of the C2ST table: mean, interval, per-seed range, seconds, epochs."""
    rows = []
    for (n, variant), cells in sorted(results.items()):
        values = [v for c in cells for v in c["c2st"]]
        per_seed = [sum(c["c2st"]) / len(c["c2st"]) for c in cells]
        low, high = bootstrap(values)
        train = sum(c["train_s"] for c in cells) / len(cells)
        sample = sum(c["sample_s"] for c in cells) / len(cells)
        rows.append(
            f"| {n} | {variant} | {sum(values) / len(values):.3f} | [{low:.3f}, {high:.3f}] "
            f"| {min(per_seed):.3f}–{max(per_seed):.3f} | {train:.1f} | {sample:.1f} "
            f"| {_epochs(cells)} |"
        )
    return rows


def paired_rows(results, against: tuple[int, str], plan, strict: bool = False) -> list[str]:
    """Paired (same seed and observation) C2ST difference of each planned cell minus
    ``against``'s, with a 95% bootstrap interval over cells; the last column says whether
    the mean difference is ≤ 0 (``strict``: the whole interval below 0)."""
    base = [v for c in results[against] for v in c["c2st"]]
    rows = []
    for n, variant in plan:
        if (n, variant) == against:
            continue
        values = [v for c in results[(n, variant)] for v in c["c2st"]]
        diff = [a - b for a, b in zip(values, base, strict=True)]
        low, high = bootstrap(diff)
        mean = sum(diff) / len(diff)
        yes = high < 0 if strict else mean <= 0
        rows.append(
            f"| {n} ({n / against[0]:.2f}×) | {variant} | {mean:+.3f} | "
            f"[{low:+.3f}, {high:+.3f}] | {'yes' if yes else 'no'} |"
        )
    return rows


def _more_atoms(results, plan, cells: int) -> list[str]:
    """``nrec_soft`` with more than K = 5 atoms against K = 5 on the same simulations."""
    soft = [(n, v) for n, v in plan if VARIANTS.get(v, (v,))[0] == "nrec_soft"]
    rows = []
    for n, variant in soft:
        if VARIANTS[variant][1]["atoms"] > 5 and (n, "nrec_soft") in results:
            rows += paired_rows(results, (n, "nrec_soft"), [(n, variant)], strict=True)
    if not rows:
        return []
    return [
        "## More references: K against K = 5",
        "",
        f"Paired by seed and observation ({cells} cells): C2ST of `nrec_soft` with K atoms "
        "(K − 1 references, nested: K = 5's four are the first four of K = 10's nine) minus "
        "K = 5's on the same n simulations; *better*: the whole interval below 0.",
        "",
        "| simulations | method | C2ST − nrec_soft (K = 5) at n | 95% interval | better |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _against_carl(results, baseline: int, plan, cells: int) -> list[str]:
    """The reference-ratio losses against CARL, their own binary classifier without the
    joint quantities, at the baseline (when it was run there)."""
    if (baseline, "carl") not in results:
        return []
    ratio = [(n, v) for n, v in plan if VARIANTS.get(v, (v,))[0] in AUGMENTED and n < baseline]
    return [
        f"## The reference-ratio losses against CARL at {baseline:,}",
        "",
        f"As above, paired against CARL (the same binary classification without the joint "
        f"quantities) at {baseline:,} simulations ({cells} cells); *reached*: mean ≤ 0.",
        "",
        "| simulations | method | C2ST − CARL at baseline | 95% interval | reached |",
        "|---|---|---|---|---|",
        *paired_rows(results, (baseline, "carl"), ratio),
        "",
    ]


def _soft_against_hard(results, plan, cells: int) -> list[str]:
    """NRE-C with soft labels against NRE-C's hard labels on the same simulations."""
    soft = sorted({(n, v) for n, v in plan if VARIANTS.get(v, (v,))[0] == "nrec_soft"})
    if not soft:
        return []
    rows = []
    for n, variant in soft:
        rows += paired_rows(results, (n, "nre"), [(n, variant)], strict=True)
    return [
        "## NRE-C's soft labels against its hard labels",
        "",
        f"Paired by seed and observation ({cells} cells): C2ST of each soft-label variant minus "
        "NRE-C's (K = 5, hard labels) on the same n simulations; the ratio column is 1.00× "
        "since the budgets are equal; *better*: the whole interval below 0.",
        "",
        "| simulations | method | C2ST − NRE-C at n | 95% interval | better |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", default="1000,2000,3300")
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--obs", type=int, default=5)
    parser.add_argument("--methods", default="carl,alices,cascal")
    parser.add_argument("--at-baseline", default="nre", help="variants run at the baseline")
    parser.add_argument("--at-target", default="", help="variants run at the largest budget")
    parser.add_argument("--screen", default="", help="variants screened on the tuning set")
    parser.add_argument("--screen-budget", type=int, default=3300)
    parser.add_argument("--screen-seeds", type=int, default=2)
    parser.add_argument("--screen-obs", type=int, default=3)
    parser.add_argument("--chain-simulations", type=int, default=2000)
    parser.add_argument("--chain-seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1,000 vs 2,000, 1 seed, 2 obs")
    args = parser.parse_args()
    from benchmarks.joint_ratio_checks import carried_rows, chain_rows, rescore_rows, risk_rows
    from benchmarks.joint_ratio_study import study_section, write_section

    torch.set_num_threads(1)
    warm_up_torch()
    if args.quick:
        args.budgets, args.baseline, args.seeds, args.obs, args.chain_seeds = "1000", 2000, 1, 2, 1
        args.screen = ""
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    chain = chain_rows(args.chain_simulations, args.chain_seeds)
    print("\n".join(chain), flush=True)
    screen_text = []
    if args.screen:
        variants = args.screen.split(",")
        plan = [(args.screen_budget, v) for v in variants]
        screened = run(plan, args.screen_seeds, args.screen_obs, "tuning")
        cells = args.screen_seeds * args.screen_obs
        screen_text = [
            f"## Screening on the tuning set: {args.screen_budget:,} simulations",
            "",
            f"The first {args.screen_obs} *tuning* observations × {args.screen_seeds} seeds "
            f"({cells} cells), C2ST as above; epochs: mean epochs trained (mean best epoch); "
            f"the paired difference is each variant minus `{variants[0]}` on the same cells "
            "(*better*: the whole interval below 0).",
            "",
            "| simulations | variant | C2ST | 95% interval | seed means | train s | sample s "
            "| epochs (best) |",
            "|---|---|---|---|---|---|---|---|",
            *table_rows(screened),
            "",
            f"| simulations | variant | C2ST − {variants[0]} | 95% interval | better |",
            "|---|---|---|---|---|",
            *paired_rows(screened, plan[0], plan, strict=True),
            "",
        ]
    at_baseline = ["nre", *(v for v in args.at_baseline.split(",") if v != "nre")]
    plan = [(args.baseline, v) for v in at_baseline]
    plan += [(n, m) for n in budgets for m in ["nre", *methods]]
    plan += [(max(budgets), v) for v in args.at_target.split(",") if v]
    results = run(plan, args.seeds, args.obs)
    cells = args.seeds * args.obs
    command = (
        f"OMP_NUM_THREADS=1 python -m benchmarks.bench_joint_ratio --budgets {args.budgets} "
        f"--baseline {args.baseline} --seeds {args.seeds} --obs {args.obs} --methods "
        f"{args.methods} --chain-simulations {args.chain_simulations} --chain-seeds "
        f"{args.chain_seeds}"
        + (f" --at-baseline {args.at_baseline}" if args.at_baseline != "nre" else "")
        + (f" --screen {args.screen}" if args.screen else "")
        + (f" --at-target {args.at_target}" if args.at_target else "")
    )
    text = [
        "# NRE with the joint likelihood ratio vs plain NRE-C on particle_shower",
        "",
        f"Command: `{command}`.",
        "",
        "Simulations: per seed one `simulate(..., joint=True, theta_1=rows)` run, rows (N, M, "
        'D) prior draws, the first column the one `theta_1="prior"` draws; a budget of n is '
        "its first n simulations, the same for every method. NRE-C trains on the n pairs "
        "(θ, x), the reference-ratio losses on `ratio_rows()` of the same n simulations and "
        "the first reference column (2n rows: each simulation as drawn and swapped). C2ST of "
        f"{POSTERIOR_DRAWS:,} posterior draws against {POSTERIOR_DRAWS:,} (a seeded subset of "
        f"{REFERENCE_DRAWS:,}) `harness.reference` draws of the first {args.obs} report "
        f"observations, mean over {args.obs} observations × {args.seeds} seeds ({cells} cells) "
        "with a 95% bootstrap interval over cells and the range of the per-seed means; 0.5 "
        "is perfect. CPU seconds per fit (one thread): training, and MCMC sampling of all "
        "observations; epochs: mean epochs trained (mean best epoch), — for cells cached "
        "before they were recorded. Variants (`VARIANTS`): `alices-a0.1` and `-a1` are "
        "ALICES with `joint_score_weight` 0.1 and 1 (the paper's α), `-lr1e-3` a learning "
        "rate of 1e-3, `-p60` patience 60, `-fixed` one θ₁ at the prior's mean (n/2 "
        "simulations at θ, n/2 at θ₁); `rolr` is simgen's (against the balanced mixture); "
        "`nrec_soft` is NRE-C (K = 5, NRE's default) with soft labels from the joint log "
        "ratios against 4 prior-drawn references per simulation, `nrec_soft-k2`, `-k10` and "
        "`-k20` against 1, 9 and 19 (K = 2, 10, 20; the references nested, all re-scored from "
        "the run's one simulator pass, `theta_1` rows (N, M, D)); they train on the n "
        "simulations, not on `ratio_rows()`.",
        "",
        "| simulations | method | C2ST | 95% interval | seed means | train s | sample s "
        "| epochs (best) |",
        "|---|---|---|---|---|---|---|---|",
        *table_rows(results),
        "",
        f"## The target: NRE-C's {args.baseline:,}-simulation C2ST with at most a third",
        "",
        f"Paired by seed and observation: C2ST of each method at n minus NRE-C's at "
        f"{args.baseline:,} ({cells} cells, 95% bootstrap interval); *reached* when the mean "
        "difference is ≤ 0.",
        "",
        "| simulations | method | C2ST − NRE-C at baseline | 95% interval | reached |",
        "|---|---|---|---|---|",
        *paired_rows(results, (args.baseline, "nre"), plan),
        "",
        *_soft_against_hard(results, plan, cells),
        *_more_atoms(results, plan, cells),
        *_against_carl(results, args.baseline, plan, cells),
        *screen_text,
        *chain,
        "",
        *risk_rows(),
        "",
        *carried_rows(),
        "",
        *rescore_rows(),
    ]
    kept = study_section()  # the nrec_soft study's section, written by its own command
    OUT.write_text("\n".join(text) + "\n")
    if kept:
        write_section(kept)


if __name__ == "__main__":
    main()
