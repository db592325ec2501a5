"""Sequential inference for one observation: simgen next to sbi at the same total budget.

One *run* is (task, budget, method, observation, seed). Every method of a run gets the same
simulator, the same observation (``benchmarks.harness``'s ``report`` set) and the same total
number of simulations, in one process, and the **same first round**: round 1's θ and x are
``simgen.simulate(task.simulator, task.prior, n_1, seed=round_seed(seed, 1))``, exactly what
``simgen.sequential`` simulates; later rounds draw from each method's own proposal
(necessarily different) with seeds ``round_seed(seed, r)``. The amortised row
(``simgen_npe``) trains on ``simgen.simulate`` of the whole budget from the prior with the
same seed. Each run is scored by C2ST of ``num_samples`` posterior draws against as many
draws of the harness's cached reference posterior (``evaluation``'s convention: reference
first). CPU seconds (``time.process_time``, one thread) cover everything a method does with
its budget (proposals, simulations, training), not the scoring.

Methods (``--methods``; ``name:key=json;...`` adds options, as in ``benchmarks.evaluation``;
for simgen they go to ``simgen.sequential`` (``epsilon``, ``num_rounds``, ``region``,
``max_epochs`` ...) except ``estimator`` and :data:`NPE_OPTIONS` (``support``, the flow's
``mixing``, ``transforms`` and ``gaussian_baseline``), which go to ``simgen.NPE`` (for
``simgen_snle`` to ``simgen.NLE``'s likelihood flow, e.g. ``gaussian_baseline=true``), and
SNLE's and SNRE's ``sampler_options`` (e.g. ``{"covariance": "within"}``), ``mcmc_method`` (e.g.
``"smc"``, all draws) and ``final_method`` (the scored draws alone); sbi: ``num_rounds``).
A run is keyed and recorded under :func:`as_run` (the spec naming the flow options whose
value differs from the flows' before the option existed) and listed under
:func:`flow_label` (naming those that differ from the current defaults):

- ``simgen_npe``: simgen NPE (nsf) trained once on the prior (amortised, 1 round).
- ``simgen_tsnpe``: ``simgen.sequential(simgen.NPE(prior), ...)``, nsf, truncated proposals.
- ``simgen_tsnpe_fm``: the same with ``estimator="flow_matching"``.
- ``simgen_snle``: ``simgen.sequential(simgen.NLE(prior), ...)``, posterior proposals.
- ``simgen_snre``: ``simgen.sequential(simgen.NRE(prior), ...)`` (NRE-C), the same rounds
  and MCMC options as ``simgen_snle`` on the ratio potential.
- ``sbi_tsnpe``: sbi's TSNPE recipe: ``NPE_C(prior)`` with ``force_first_round_loss``,
  ``get_density_thresholder(posterior, quantile=1e-4)`` from 20,000 draws (as simgen's;
  sbi's default 10⁶ took ~25 minutes a round on gaussian_linear_uniform) and
  ``RestrictedPrior`` (rejection).
- ``sbi_snpec``: sbi's SNPE-C (APT), the previous round's posterior as the proposal.
- ``sbi_snle``: sbi's SNLE, the previous round's MCMC posterior as the proposal.

sbi runs print each round's process CPU seconds to stderr (a stopped run keeps no cell).

Every sequential method splits the budget equally over ``--rounds`` (4) rounds. Each run is
kept as JSON in ``benchmarks/cells/sequential/<task>/`` (tracked) keyed by the run, the spec, the
sample count, the observation and the code (sbi's version or a hash of simgen's source), so
the script can be stopped at any time and rerun: it skips finished runs and rewrites the
table of ``results_sequential.md`` (between its ``<!-- table -->`` markers) and
``results_sequential.jsonl`` (one line per run) from every cached run of the current code
and of the codes :data:`EQUIVALENT` declares to compute the same under stated options
(listed under the spec the current code gives them, ``method_as_run`` the one they ran as),
or of the simgen codes ``--codes`` lists; a run without a cell is read from its line of
``results_sequential.jsonl``. ``draw_cpu_s``: the scored draws' CPU, not in ``cpu_s``. The
code key hashes ``simgen/sequential/`` without docstrings (SNLE's and SNRE's also
``simgen/mcmc/`` and ``simgen/mcmc_posterior.py``), so editing the text relabels no run.
SNLE and SNRE runs record the
MCMC's R-hat, ESS and acceptance per round and of the scored draws. simgen runs also
record, per round, the prior mass of the next proposal region and the share of reference
draws outside it (what a too-narrow region cuts); ``--per-round`` adds each round's C2ST
(not timed); ``--first-observation k`` skips the observations before k; ``--pairs a,b``
prints, per run both specs finished, their C2ST beside sbi SNPE-C's; ``--round-one``,
``--glm-round-one`` and ``--true-regions`` print the region tables of
:mod:`benchmarks.sequential_regions`; ``--bank`` keeps each simgen run's rounds, which
``--final-refits`` refits; each simgen run records its flow's ``mixing`` (:func:`flow_of`);
``--finals smc`` (SNLE, SNRE) also scores each run's final posterior drawn by the listed MCMC
methods, recorded as that run with ``final_method`` (the same computation: the rounds once,
then each method's draws with the run's seed). The runners are in
:mod:`benchmarks.sequential_runs`.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --tasks two_moons \\
        --observations 3 --seeds 0,1 --budget 1000 --methods simgen_tsnpe,sbi_snpec
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
import warnings
from pathlib import Path

import torch

from benchmarks import cell_files, evaluation, harness, warm_up_torch
from benchmarks.sequential_regions import (
    SWEEP,
    Scorer,
    bank_folder,
    final_round_refits,
    glm_round_one,
    round_one_regions,
    true_regions,
)
from benchmarks.sequential_runs import NPE_OPTIONS, flow_of, run_sbi, run_simgen  # noqa: F401
from benchmarks.sequential_tables import (
    CURRENT_DEFAULTS,
    EQUIVALENT,
    RUN_KEY,
    SNLE_DEFAULTS,
    SNLE_EQUIVALENT,
    flow_had,
    flow_spec,
    format_spec,
    kept_round_lines,
    mcmc_table,
    pairs_table,
    recorded_runs,
    refused_here,
    rounds_table,
    source_key,
    table,
)
from simgen.diagnostics.c2st import c2st
from simgen.errors import ConfigError

OUT = Path(__file__).with_name("results_sequential.md")
CACHE = cell_files.cells("sequential")
METHODS = [
    "simgen_npe",
    "simgen_tsnpe",
    "simgen_tsnpe_fm",
    "simgen_snle",
    "simgen_snre",
    "sbi_tsnpe",
    "sbi_snpec",
    "sbi_snle",
]
#: simgen method -> the sbi method its CPU ratio is taken against (the issue's 1k baseline).
BASELINES = {
    "simgen_npe": "sbi_snpec",
    "simgen_tsnpe": "sbi_snpec",
    "simgen_tsnpe_fm": "sbi_snpec",
    "simgen_snle": "sbi_snle",
}
START, END = "<!-- table -->", "<!-- /table -->"
#: The simgen methods whose posterior draws by MCMC (their code key includes the samplers).
MCMC_METHODS = ("simgen_snle", "simgen_snre")


#: The code SNLE and SNRE runs compute: simgen/sequential/ and the MCMC that samples each round.
SOURCE_KEY, SNLE_KEY = source_key(), source_key(("sequential", "mcmc", "mcmc_posterior.py"))


def _code_key(name: str) -> str:
    """The code key of a method's runs: sbi's version, or :func:`source_key` of the simgen
    sources it computes through (SNLE's and SNRE's include the MCMC samplers)."""
    if name.startswith("sbi"):
        import sbi

        return f"sbi-{sbi.__version__}"
    return SNLE_KEY if name in MCMC_METHODS else SOURCE_KEY


def parse(spec: str) -> tuple[str, dict]:
    """``name[:key=json;...]`` -> (name, options)."""
    name, _, opts = spec.partition(":")
    if name not in METHODS:
        raise ConfigError(f"Unknown method {name!r}; choose from {METHODS}.")
    return name, evaluation.parse_options(opts)


def as_run(spec: str, run: tuple | None = None) -> str:
    """The spec naming every flow option (``mixing``, ``gaussian_baseline``) whose value for
    this run differs from the flows' before the option existed: a run's cache key and the
    ``method`` it records. A change of NPE's default flow thus starts new runs rather than
    reading those of the older flow, and runs of the older flow keep their keys. With
    ``run`` = (task, budget, rounds, seed), a ``gaussian_baseline="auto"`` that round 1
    refuses counts as ``False`` (the same computation: ``sequential_tables.refused_here``)."""
    name, options = parse(spec)
    had = flow_had(name, options)
    if run and had.get("gaussian_baseline") == "auto" and refused_here(run, name, options):
        had["gaussian_baseline"] = False
    return flow_spec(spec, name, options, had, "legacy")


def flow_label(row: dict) -> dict:
    """A run under the spec that trains its flow with the current defaults: each flow option
    it had (named in its ``method``, else the legacy value, or the ``flow`` it recorded) is
    named where it differs from the current default (``method_as_run`` keeps the spec)."""
    name, options = parse(row["method"])
    flow = row.get("flow") or ""
    recorded = {"mixing": flow.partition("=")[2]} if flow.startswith("mixing=") else {}
    had = flow_had(name, options, recorded)
    run = (row["task"], row["budget"], row["rounds"], row["seed"])
    if had.get("gaussian_baseline") is False and refused_here(run, name, options):
        had["gaussian_baseline"] = "auto"
    spec = flow_spec(row["method"], name, options, had, "current")
    if spec == row["method"]:
        return row
    return {**row, "method": spec, "method_as_run": row.get("method_as_run", row["method"])}


def rounds_of(spec: str, args) -> int:
    name, options = parse(spec)
    return options.get("num_rounds", 1 if name == "simgen_npe" else args.rounds)


def cell_path(task: str, budget: int, spec: str, index: int, seed: int, args) -> Path:
    spec = as_run(spec, (task, budget, rounds_of(spec, args), seed))
    name = parse(spec)[0]
    _, xs = harness.observations(task, "report", index + 1)
    digest = hashlib.sha256(
        "|".join(
            [harness.source_hash(task), spec, str(args.num_samples), str(args.rounds)]
        ).encode()
    )
    digest.update(xs[index].double().contiguous().numpy().tobytes())
    code = _code_key(name)
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in spec)[:60]
    return CACHE / task / f"n{budget}-{safe}-o{index}-s{seed}-{digest.hexdigest()[:12]}-{code}.json"


def one(task_name: str, budget: int, spec: str, index: int, x_o, seed: int, args, finals=()):
    """The run's row, then one row per MCMC method of ``finals`` (SNLE, ``--finals``): the
    same rounds (``cpu_s``, ``per_round``), the scored draws redrawn by that method from the
    final posterior with the same seed, under the spec with ``final_method`` (which computes
    exactly this); ``same_rounds_as`` names the run they share."""
    name, options = parse(spec)
    task = harness.load_task(task_name)
    reference = harness.reference(task_name, "report", index)["samples"][: args.num_samples]
    scorer = Scorer(reference, x_o, args.num_samples, args.per_round)
    runner = run_sbi if name.startswith("sbi") else run_simgen
    if args.bank and not name.startswith("sbi"):  # the rounds kept for --final-refits
        options = {**options, "bank": str(bank_folder(task_name, budget, spec, index, seed))}
    torch.manual_seed(seed)
    row = {"task": task_name, "budget": budget, "method": spec, "observation": index}
    row.update(seed=seed, rounds=rounds_of(spec, args))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            draw = runner(name, options, task, x_o, budget, args.rounds, seed, scorer)
            row["cpu_s"] = time.process_time() - start_cpu - scorer.cpu
            row["wall_s"] = time.perf_counter() - start_wall
            with torch.no_grad():
                draw_cpu = time.process_time()
                samples = draw(args.num_samples).reshape(args.num_samples, -1)
                row["draw_cpu_s"] = time.process_time() - draw_cpu  # the scored draws
        row["c2st"] = _score(reference, samples)
        mcmc = getattr(scorer, "mcmc", None)  # the scored draws' chains, before any redraw
        extras = [_redraw(row, draw, method, reference, scorer, args) for method in finals]
        scorer.mcmc = mcmc
    except Exception as exc:  # a failing method is a result to report, not a crash
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    row["per_round"] = scorer.rows
    if scorer.flow is not None:
        row["flow"] = scorer.flow
    if getattr(scorer, "mcmc", None) is not None:
        row["mcmc"] = scorer.mcmc
    row["code"], row["num_samples"] = _code_key(name), args.num_samples
    if "error" in row:
        return [row]
    return [row, *({**row, **extra} for extra in extras)]


def _score(reference, samples) -> float:
    finite = torch.isfinite(samples).all(-1)
    return 1.0 if int(finite.sum()) < 10 else float(c2st(reference, samples[finite]))


def _redraw(row: dict, draw, method: str, reference, scorer, args) -> dict:
    """The fields of ``row`` that scored draws by MCMC ``method`` change (see :func:`one`)."""
    name, options = parse(row["method"])
    spec = format_spec(name, {**options, "final_method": method})
    with torch.no_grad():
        start = time.process_time()
        samples = draw(args.num_samples, method).reshape(args.num_samples, -1)
        cpu = time.process_time() - start
    extra = {"method": spec, "draw_cpu_s": cpu, "same_rounds_as": row["method"]}
    extra["c2st"] = _score(reference, samples)
    if getattr(scorer, "mcmc", None) is not None:
        extra["mcmc"] = scorer.mcmc
    return extra


def as_current(row: dict) -> dict:
    """A run of an :data:`EQUIVALENT` (sequential NPE) or :data:`SNLE_EQUIVALENT` code under
    the spec that computes the same with the current code: its omitted options take that
    code's defaults, and options equal to the current defaults are dropped (``method_as_run``
    keeps the spec it ran as)."""
    name, options = parse(row["method"])
    if name == "simgen_snle":
        equivalent = dict(SNLE_EQUIVALENT.get(row["code"], {}))
        if options.get("mcmc_method", "rwm") != "rwm":  # its final draws took that method
            equivalent.pop("final_method", None)
        options = {**equivalent, **options}
        options = {k: v for k, v in options.items() if SNLE_DEFAULTS.get(k) != v}
        spec = format_spec(name, options)
        if spec == row["method"]:
            return row
        return {**row, "method": spec, "method_as_run": row.get("method_as_run", row["method"])}
    defaults = EQUIVALENT.get(row["code"])
    if defaults is None or not name.startswith("simgen_tsnpe"):
        return row
    options = {**defaults, **options}
    options = {k: v for k, v in options.items() if CURRENT_DEFAULTS.get(k) != v}
    return {**row, "method": format_spec(name, options), "method_as_run": row["method"]}


def is_current(row: dict, codes: set | None = None) -> bool:
    """Whether a run is of its method's current code (:func:`_code_key`; an
    :data:`EQUIVALENT` code for sequential NPE), or of a simgen code in ``codes``."""
    name = parse(row["method"])[0]
    if codes is not None and not name.startswith("sbi"):
        return row["code"] in codes
    equivalent = row["code"] in EQUIVALENT and name.startswith("simgen_tsnpe")
    equivalent |= row["code"] in SNLE_EQUIVALENT and name == "simgen_snle"
    return equivalent or row["code"] == _code_key(name)


def cached_rows(args) -> list[dict]:
    """Every run of the current code (simgen's source hash, sbi's version) and of the
    :data:`EQUIVALENT` codes, or of the simgen source hashes listed in ``--codes``: its cell,
    else its line of ``results_sequential.jsonl`` (:func:`recorded_runs`)."""
    codes = set(args.codes.split(",")) if args.codes else None
    rows, seen = [], set()
    cells = filter(None, map(cell_files.read_cell, sorted(CACHE.glob("*/*.json"))))
    for row in [*cells, *recorded_runs(OUT.with_suffix(".jsonl"))]:
        if args.any_code or is_current(row, codes):
            row = flow_label(as_current(row))
            run = tuple(row[k] for k in RUN_KEY)
            if run not in seen:  # one run per row and (observation, seed); cells first
                seen.add(run)
                rows.append(row)
    return rows


def baseline_of(spec: str) -> str:
    """The sbi method a spec's CPU time is compared with."""
    return BASELINES.get(parse(spec)[0], "")


def write_markdown(rows: list[dict]) -> None:
    """The table between the markers and the ``.jsonl`` (one line per run; the lines of
    runs the table leaves out, e.g. with ``--codes``, stay). Per-round lines of runs known
    only from the ``.jsonl`` stay as the table had them (:func:`kept_round_lines`)."""
    text = OUT.read_text() if OUT.exists() else f"# Sequential inference\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    inside, _, tail = rest.partition(END)
    old = inside.partition("Per round (simgen):")[2].strip().splitlines()[2:]
    per_round = rounds_table(rows, SWEEP)
    per_round[2:] = kept_round_lines(old, per_round[2:], rows)
    chains = mcmc_table(rows)
    chains = ["MCMC of the SNLE and SNRE runs:", "", *chains, ""] if chains else []
    body = [START, "", *table(rows, baseline_of), "", *chains, "Per round (simgen):", ""]
    body += per_round
    OUT.write_text(head + "\n".join([*body, "", END]) + tail)
    keys = ("task", "method", "observation", "seed", "budget", "rounds", "c2st", "cpu_s", "code")
    keys += ("method_as_run", "flow")
    runs = [{k: r.get(k) for k in keys} for r in rows]
    listed = {tuple(r[k] for k in RUN_KEY) for r in runs}
    path = OUT.with_suffix(".jsonl")
    old_runs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    runs += [r for r in old_runs if tuple(r[k] for k in RUN_KEY) not in listed]
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))


def run_cells(task_name: str, spec: str, index: int, x_o, seed: int, args) -> None:
    """Run ``spec`` (and, for SNLE and SNRE, its ``--finals`` draws on the same rounds) unless every
    cell is there; write the missing cells (an existing cell is kept: the run recomputes it
    bit for bit, and a different C2ST is reported)."""
    finals = [m for m in args.finals.split(",") if m] if parse(spec)[0] in MCMC_METHODS else []
    specs = [spec]
    for method in finals:
        name, options = parse(spec)
        specs.append(format_spec(name, {**options, "final_method": method}))
    paths = [cell_path(task_name, args.budget, s, index, seed, args) for s in specs]
    old = [cell_files.read_cell(path) for path in paths]
    if all(cell is not None for cell in old):
        return
    rows = one(task_name, args.budget, spec, index, x_o, seed, args, finals)
    for row, path, cell in zip(rows, paths, old, strict=False):
        print(json.dumps(row), flush=True)
        if cell is None:
            cell_files.write_cell(path, row, indent=1)
        elif cell.get("c2st") != row.get("c2st"):
            print(f"{path.name}: cell C2ST {cell.get('c2st')} kept, rerun {row.get('c2st')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="two_moons,gaussian_linear_uniform")
    parser.add_argument("--methods", default="simgen_npe,simgen_tsnpe,sbi_tsnpe,sbi_snpec")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--first-observation", type=int, default=0, help="skip those before")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--per-round", action="store_true", help="C2ST of every round")
    parser.add_argument("--bank", action="store_true", help="keep simgen runs' rounds (banks)")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table")
    parser.add_argument("--any-code", action="store_true", help="table: runs of any code")
    parser.add_argument("--codes", default="", help="table: runs of these simgen codes (a,b)")
    parser.add_argument("--true-regions", action="store_true", help="exact regions' prior mass")
    parser.add_argument("--round-one", action="store_true", help="round 1's regions, measured")
    parser.add_argument("--glm-round-one", action="store_true", help="bernoulli_glm round 1")
    parser.add_argument(
        "--glm-settings",
        default="nsf-none:250,maf:250,nsf-none:500,nsf-lu:250",
        help="family[-mixing]:simulations[:option=json;...],...",
    )
    parser.add_argument("--finals", default="", help="SNLE: also score these MCMC methods")
    parser.add_argument("--pairs", default="", help="print the per-run table of two specs a,b")
    parser.add_argument("--final-refits", default="", help="warm|scratch|oracle[:opt=json;...] ...")
    args = parser.parse_args()
    if args.final_refits:
        torch.set_num_threads(1)
        settings = [s.partition(":")[::2] for s in args.final_refits.split()]
        settings = [(start, evaluation.parse_options(opts)) for start, opts in settings]
        task, seed = args.tasks.split(",")[0], int(args.seeds.split(",")[0])
        observations = list(range(args.first_observation, args.observations))
        spec = as_run("simgen_tsnpe", (task, args.budget, args.rounds, seed))
        banks = {i: bank_folder(task, args.budget, spec, i, seed) for i in observations}
        lines = final_round_refits(task, banks, seed, args.budget, args.rounds, settings)
        print("\n".join(lines))
        return
    if args.true_regions:
        print("\n".join(true_regions(args.observations, tasks=tuple(args.tasks.split(",")))))
        return
    if args.pairs:
        first, second = args.pairs.split(",")
        print("\n".join(pairs_table(cached_rows(args), first, second, args.budget)))
        return
    if args.glm_round_one:
        torch.set_num_threads(1)
        settings = []
        for setting in args.glm_settings.split(","):
            family, n, *train = setting.split(":")
            train = evaluation.parse_options(train[0] if train else "")
            npe_options = {k: train.pop(k) for k in NPE_OPTIONS if k in train}
            settings.append((family, int(n), train, npe_options))
        print("\n".join(glm_round_one(args.observations, settings=settings)))
        return
    if args.round_one:
        torch.set_num_threads(1)
        print("\n".join(round_one_regions(args.observations)))
        return
    torch.set_num_threads(1)
    if not args.table_only:
        warm_up_torch()
        for seed in map(int, args.seeds.split(",")):
            for index in range(args.first_observation, args.observations):
                for task_name in args.tasks.split(","):
                    x_o = harness.observations(task_name, "report", index + 1)[1][index]
                    for spec in re.split(r",(?![^\[]*\])", args.methods):  # not in [..]
                        run = (task_name, args.budget, rounds_of(spec, args), seed)
                        spec = as_run(spec, run)
                        run_cells(task_name, spec, index, x_o, seed, args)
    write_markdown(cached_rows(args))


if __name__ == "__main__":
    main()
