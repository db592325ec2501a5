"""Tables of ``benchmarks/results_sequential.md`` from cached sequential runs.

Each run is a dict as ``benchmarks.bench_sequential`` caches it (task, budget, method,
observation, seed, c2st, cpu_s, per_round). :func:`table` summarises runs per (task, budget,
method), :func:`rounds_table` per round of the simgen runs, :func:`mcmc_table` the chains
of the SNLE runs, :func:`pairs_table` two methods run by run. :func:`flow_spec` names, in a
simgen spec, the flow options (the family's ``LEGACY_OPTIONS``: ``mixing``,
``gaussian_baseline``) whose value differs from a reference: the flows before each option
existed, for the cache key, or the current defaults, for the table's rows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

import simgen
from simgen.estimators.registry import estimator_class


def format_spec(name: str, options: dict) -> str:
    """``name[:key=json;...]``, the options sorted (the form ``parse`` reads)."""
    items = ";".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items()))
    return name + (":" + items if items else "")


def family_of(name: str, options: dict) -> str | None:
    """The NPE family a simgen spec trains (``None`` for SNLE and the sbi methods)."""
    if name in ("simgen_npe", "simgen_tsnpe", "simgen_tsnpe_fm"):
        return options.get("estimator", "flow_matching" if name == "simgen_tsnpe_fm" else "nsf")
    return None


@functools.cache
def flow_defaults(family: str) -> tuple[dict, dict]:
    """(legacy, current) values of the family's ``LEGACY_OPTIONS`` keys: what its flows had
    before each option existed, and what an estimator built without them takes now."""
    cls = estimator_class(family)
    with torch.random.fork_rng(devices=[]):
        built = cls(2, (2,))
    legacy = dict(cls.LEGACY_OPTIONS)
    return legacy, {k: built.options.get(k, v) for k, v in legacy.items()}


def flow_spec(spec: str, name: str, options: dict, had: dict, against: str) -> str:
    """``spec`` naming each flow option whose value ``had`` (the values the run's flow had,
    the spec's own included) differs from the ``against`` reference (``"legacy"`` or
    ``"current"``, :func:`flow_defaults`), and dropping those equal to it; ``spec`` itself
    where nothing changes, so the keys and labels of runs it already describes stay."""
    family = family_of(name, options)
    if family is None:
        return spec
    legacy, current = flow_defaults(family)
    reference = legacy if against == "legacy" else current
    out = {k: v for k, v in options.items() if k not in reference}
    out.update({k: v for k, v in had.items() if k in reference and reference[k] != v})
    return spec if out == options else format_spec(name, out)


@functools.cache
def baseline_refused(task_name: str, budget: int, rounds: int, seed: int, support: str) -> bool:
    """Whether NSF's ``gaussian_baseline="auto"`` turns the baseline off on round 1 of a run
    (its ``simgen.simulate(..., seed=round_seed(seed, 1))`` simulations, set up as
    ``NPE.fit`` does). The flow is then the one without the baseline (the same weights: it
    draws no random numbers), and warm-started rounds load round 1's decision with its
    weights, so a warm-started ``gaussian_baseline=false`` run computes as the ``"auto"``
    one."""
    import simgen
    from benchmarks import harness
    from simgen.estimators.registry import build_estimator
    from simgen.priors import support_transform
    from simgen.sequential.rounds import round_seed, split_budget

    task = harness.load_task(task_name)
    n = split_budget(budget, rounds)[0]
    sims = simgen.simulate(task.simulator, task.prior, n, seed=round_seed(seed, 1))
    u = sims.theta if support == "reject" else support_transform(task.prior).inv(sims.theta)
    with torch.random.fork_rng(devices=[]):
        flow = build_estimator("nsf", u.shape[-1], sims.x.shape[1:], gaussian_baseline="auto")
    flow.fit_standardization(u, sims.x)
    return not flow.uses_baseline


def refused_here(run: tuple, name: str, options: dict) -> bool:
    """Whether the current nsf default ``gaussian_baseline="auto"`` computes a warm-started
    nsf run (task, budget, rounds, seed) as without the baseline (:func:`baseline_refused`
    on its round 1; ``results_sequential.md`` checks one run bit for bit)."""
    if family_of(name, options) != "nsf" or not options.get("warm_start", True):
        return False
    if flow_defaults("nsf")[1].get("gaussian_baseline") != "auto":
        return False
    support = options.get("support", estimator_class("nsf").npe_support)
    return baseline_refused(*run, support)


def flow_had(name: str, options: dict, recorded: dict | None = None) -> dict:
    """The flow options a run of (``name``, ``options``) trained: the spec's, else
    ``recorded`` (what the run took by default, as cached), else the current defaults
    (``recorded=None``: a run about to start)."""
    family = family_of(name, options)
    if family is None:
        return {}
    legacy, current = flow_defaults(family)
    base = current if recorded is None else {**legacy, **recorded}
    return {k: options.get(k, base[k]) for k in legacy}


def summarise(runs: list[dict]) -> dict:
    """Mean C2ST over runs; spread = sd over seeds of the per-seed mean; worst observation =
    the highest C2ST averaged over seeds; mean CPU s per run."""
    ok = [r for r in runs if "error" not in r]
    out = {"runs": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
    if not ok:
        return out
    by_seed: dict[int, list[float]] = {}
    by_obs: dict[int, list[float]] = {}
    for r in ok:
        by_seed.setdefault(r["seed"], []).append(r["c2st"])
        by_obs.setdefault(r["observation"], []).append(r["c2st"])
    seed_means = [statistics.mean(v) for v in by_seed.values()]
    obs_means = {k: statistics.mean(v) for k, v in by_obs.items()}
    worst = max(obs_means, key=obs_means.__getitem__)
    out.update(
        mean=statistics.mean(r["c2st"] for r in ok),
        spread=statistics.stdev(seed_means) if len(seed_means) > 1 else float("nan"),
        seeds=len(by_seed),
        observations=len(by_obs),
        worst_obs=worst,
        worst=obs_means[worst],
        cpu_s=statistics.mean(r["cpu_s"] for r in ok),
        keys={(r["observation"], r["seed"]) for r in ok},
        cpu={(r["observation"], r["seed"]): r["cpu_s"] for r in ok},
    )
    return out


def table(rows: list[dict], baseline_of: Callable[[str], str]) -> list[str]:
    """One row per (task, budget, method): mean, spread, worst observation, CPU s and the CPU
    ratio to ``baseline_of(spec)``'s runs on the same (observation, seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["budget"], r["method"]), []).append(r)
    summary = {k: summarise(v) for k, v in groups.items()}
    lines = [
        "| task | sims | method | obs x seeds | mean C2ST | spread (sd over seeds) | "
        "worst obs | CPU s / run | CPU / sbi SNPE-C (SNLE) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, budget, spec), s in sorted(summary.items()):
        if not s["runs"]:
            lines.append(f"| {task} | {budget} | {spec} | 0 | error: {s['errors'][0][:80]} |||||")
            continue
        ratio = ""
        base = summary.get((task, budget, baseline_of(spec)))
        if base and base.get("runs"):
            common = s["keys"] & base["keys"]
            if common:
                own = sum(s["cpu"][k] for k in common)
                ratio = f"{own / sum(base['cpu'][k] for k in common):.2f} ({len(common)} runs)"
        errors = f" ({len(s['errors'])} failed)" if s["errors"] else ""
        lines.append(
            f"| {task} | {budget} | {spec} | {s['observations']} x {s['seeds']}{errors} | "
            f"{s['mean']:.3f} | {s['spread']:.3f} | {s['worst']:.3f} (#{s['worst_obs']}) | "
            f"{s['cpu_s']:.1f} | {ratio} |"
        )
    return lines


def rounds_table(rows: list[dict], sweep_epsilons: tuple[float, ...]) -> list[str]:
    """Per round of the simgen sequential runs, means over runs: the round's C2ST (with
    --per-round), the prior mass of the region the round builds and the reference mass
    outside it, and the same two at the larger ε of the sweep (same fit, no retraining).
    The last round builds no region."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        last = max((pr["round"] for pr in r.get("per_round", [])), default=0)
        for pr in r.get("per_round", []):
            if "c2st" in pr or (pr["round"] < last and "next_mass" in pr):
                key = (r["task"], r["budget"], r["method"], pr["round"])
                groups.setdefault(key, []).append({**pr, "last": pr["round"] == last})
    sweep = [f"{e:g}" for e in sweep_epsilons[1:]]
    lines = [
        "| task | sims | method | round | runs | C2ST of round | region's prior mass | "
        "reference outside | "
        + " | ".join(f"ε={e}: mass, reference outside" for e in sweep)
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(sweep),
    ]

    def mean(values):
        values = [v for v in values if v is not None]
        return f"{statistics.mean(values):.3g}" if values else "-"

    for (task, budget, spec, r), prs in sorted(groups.items()):
        built = [p for p in prs if not p["last"]]
        cells = [
            mean(p.get("c2st") for p in prs),
            mean(p.get("next_mass") for p in built),
            mean(p.get("reference_outside") for p in built),
        ]
        for e in sweep:
            at = [p["epsilons"][e] for p in built if e in p.get("epsilons", {})]
            cells.append(
                f"{mean(a['mass'] for a in at)}, {mean(a['reference_outside'] for a in at)}"
            )
        lines.append(
            f"| {task} | {budget} | {spec} | {r} | {len(prs)} | " + " | ".join(cells) + " |"
        )
    return lines


def mcmc_summary(posterior) -> dict | None:
    """R-hat, bulk ESS and acceptance of an MCMC posterior's last run (``None`` for
    posteriors that draw without MCMC), so a run shows whether its chains mixed."""
    last = getattr(posterior, "last_mcmc", None)
    if last is None:
        return None
    info = last.to_dict()
    return {k: info[k] for k in ("chains", "draws", "rhat", "ess", "acceptance_rate")}


def mcmc_table(rows: list[dict]) -> list[str]:
    """Per round of the runs whose posterior draws by MCMC (SNLE), over runs: the worst
    split-R-hat, the smallest bulk ESS and the mean acceptance rate of the round's posterior
    draws (those behind the convergence figure), and the mean energy distance to the
    previous round's; round "final" is the scored draws. Empty without such runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        for pr in r.get("per_round", []):
            if "mcmc" in pr:
                key = (r["task"], r["budget"], r["method"], pr["round"])
                groups.setdefault(key, []).append({**pr["mcmc"], "energy": pr.get("energy")})
        if "mcmc" in r:
            key = (r["task"], r["budget"], r["method"], 10**6)
            groups.setdefault(key, []).append(r["mcmc"])
    if not groups:
        return []
    lines = [
        "| task | sims | method | round | runs | chains x draws | worst R-hat | min ESS | "
        "acceptance | energy distance to previous |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, budget, spec, r), ms in sorted(groups.items()):
        energies = [m["energy"] for m in ms if m.get("energy") is not None]
        energy = f"{statistics.mean(energies):.3g}" if energies else "-"
        lines.append(
            f"| {task} | {budget} | {spec} | {'final' if r == 10**6 else r} | {len(ms)} | "
            f"{ms[0]['chains']} x {ms[0]['draws']} | {max(m['rhat'] for m in ms):.3f} | "
            f"{min(m['ess'] for m in ms):.0f} | "
            f"{statistics.mean(m['acceptance_rate'] for m in ms):.2f} | {energy} |"
        )
    return lines


def pairs_table(rows: list[dict], first: str, second: str, budget: int) -> list[str]:
    """Per run (task, observation, seed) that both specs finished at ``budget``: their C2ST
    beside sbi SNPE-C's on the same run (``-`` where it has none), and their CPU seconds."""
    runs: dict[tuple, dict] = {}
    for r in rows:
        if "error" not in r and r["budget"] == budget:
            runs[(r["task"], r["method"], r["observation"], r["seed"])] = r
    lines = [
        f"| task | observation | seed | {first} | {second} | sbi_snpec | CPU s: first, second |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, method, obs, seed in sorted(runs, key=lambda k: (k[0], k[3], k[2])):
        if method != first or (task, second, obs, seed) not in runs:
            continue
        a, b = runs[(task, first, obs, seed)], runs[(task, second, obs, seed)]
        base = runs.get((task, "sbi_snpec", obs, seed))
        ref = f"{base['c2st']:.3f}" if base else "-"
        lines.append(
            f"| {task} | {obs} | {seed} | {a['c2st']:.3f} | {b['c2st']:.3f} | {ref} | "
            f"{a['cpu_s']:.1f}, {b['cpu_s']:.1f} |"
        )
    return lines


def without_docstrings(source: str) -> str:
    """The syntax tree of ``source`` with every docstring dropped (comments never reach it)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        text = getattr(first, "value", None) if isinstance(first, ast.Expr) else None
        if isinstance(text, ast.Constant) and isinstance(text.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def source_key(parts: tuple[str, ...] = ("sequential",)) -> str:
    """A hash of the code of ``parts`` of simgen (folders or modules) as imported,
    docstrings and comments left out: what the runs compute. Edits elsewhere in simgen
    (other helpers' modules) and edits of the text alone do not relabel the runs. The
    default, ``simgen/sequential/`` alone, keeps the key its runs have always had."""
    digest = hashlib.sha256()
    root = Path(simgen.__file__).parent
    for part in parts:
        paths = sorted((root / part).glob("*.py")) if (root / part).is_dir() else [root / part]
        for path in paths:
            digest.update(without_docstrings(path.read_text()).encode())
    return f"seq-{digest.hexdigest()[:12]}"


RUN_KEY = ("task", "budget", "method", "observation", "seed")

#: The defaults of ``simgen.sequential``'s options that earlier codes had otherwise.
CURRENT_DEFAULTS = {"warm_start": True, "nested": False}
#: simgen codes whose sequential NPE computes as the current code's given these option
#: values (they differ from it in those defaults and in text, ``seq-6f3d47c6d00f`` in
#: setting an MCMC posterior's ``proposal``, which NPE runs never have, ``seq-8aa9e8c5177b``
#: in lacking ``chain_init``, which NPE refuses); :func:`as_current` lists their runs under
#: the spec the current code gives them.
EQUIVALENT = {
    "seq-0c573491ed2f": {"warm_start": False, "nested": True},
    "seq-a48a993219de": {"warm_start": False, "nested": False},
    "seq-36db8813a67e": {"warm_start": False, "nested": False},
    "seq-6f3d47c6d00f": {},
    "seq-8aa9e8c5177b": {},
}
#: The defaults of SNLE's ``chain_init`` and ``final_method`` (``simgen.sequential``'s for
#: NLE: pooled chain starts, the returned posterior drawn by SMC).
SNLE_DEFAULTS = {"chain_init": "pool", "final_method": "smc"}
#: SNLE codes that compute as the current code given these option values (random-walk
#: Metropolis, the pooled covariance, chains started from prior draws by default, bit for
#: bit): ``seq-8aa9e8c5177b`` keyed by ``simgen/sequential/`` alone, ``seq-075c03c39369``
#: before ``chain_init`` existed, ``seq-122afbf21379`` with ``chain_init="prior"`` the
#: default, ``seq-8cf09c411c4b`` before ``method="smc"`` (its random-walk path unchanged),
#: ``seq-c84afcdd1cfb`` with random-walk final draws the default;
#: :func:`as_current` lists their runs under the spec the current code gives them.
SNLE_EQUIVALENT = {
    "seq-8aa9e8c5177b": {"chain_init": "prior", "final_method": "rwm"},
    "seq-075c03c39369": {"chain_init": "prior", "final_method": "rwm"},
    "seq-122afbf21379": {"chain_init": "prior", "final_method": "rwm"},
    "seq-8cf09c411c4b": {"final_method": "rwm"},
    "seq-c84afcdd1cfb": {"final_method": "rwm"},
}


def recorded_runs(path) -> list[dict]:
    """The runs a results ``.jsonl`` lists (one JSON object a line; [] without the file),
    each under the spec it ran as (``method_as_run``, else ``method``), so they are labelled
    as cells are. They stand for runs whose cell is not at hand: a cell of the same run
    supersedes its line. A recorded run has no per-round figures."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["method"] = row.pop("method_as_run", None) or row["method"]
        runs.append({k: v for k, v in row.items() if v is not None})
    return runs


def kept_round_lines(old: list[str], new: list[str], rows: list[dict]) -> list[str]:
    """``new`` per-round lines, plus the ``old`` table's lines of the (task, budget, method)
    rows whose runs have no per-round figures here (runs known only from the ``.jsonl``),
    sorted as :func:`rounds_table` sorts."""
    covered = {(r["task"], r["budget"], r["method"]) for r in rows if r.get("per_round")}
    listed = {(r["task"], r["budget"], r["method"]) for r in rows}

    def key(line: str) -> tuple:
        task, budget, method, r = (c.strip() for c in line.strip("|").split("|")[:4])
        return task, int(budget), method, int(r)

    kept = [
        line
        for line in old
        if key(line)[:3] in listed - covered and key(line) not in {key(n) for n in new}
    ]
    return sorted(new + kept, key=key)
