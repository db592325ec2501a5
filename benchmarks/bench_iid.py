r"""Many i.i.d. trials: each simgen route next to sbi's i.i.d. NLE and NPSE, same simulations.

The models (``--model``, :mod:`benchmarks.iid_models`) are conjugate, so the reference
posterior is exact for any number of trials n: ``gauss``, a Gaussian mean with a Gaussian
prior, and ``exp``, two exponential rates with a box-uniform prior (truncated Gamma
posteriors). Three observations (θ from the prior, seeds 100-102; 100 trials each, seeds
200-202); the observation of n trials is the first n of them, n = 10 and 100.

For each training budget N and seed s the single-trial simulations (θ, x) are drawn once
(seed ``1000 s + N``) and every single-trial route trains on exactly those pairs:
simgen's NLE and NRE (MCMC on the summed log-likelihood / logits), NPE with
``"diffusion"`` and ``"flow_matching"`` (compositional: :mod:`simgen.estimators.compose`;
diffusion trained with ``control_variate=1.0``, as that module advises for trial sets),
sbi 0.27's ``NLE`` (``build_posterior()``, MCMC with an x of shape ``(n, 2)``: its i.i.d.
potential) and ``NPSE`` (VE SDE; an x of shape ``(n, 2)`` composes per-trial scores with
its default ``iid_method="auto_gauss"``). The ``*_avg`` routes train ``AVERAGED`` = 4
members of that family (``NPE(ensemble=4)``, the same pairs) and compose the trial sets with
their averaged per-trial scores (:func:`simgen.estimators.compose_sampler.average_scores`);
their CPU seconds are the four members'. The ``*_ema`` routes train the family's one network
with an exponential moving average of its weights (``TrainConfig.ema`` = 0.99).
Set-NPE (``NPE(embedding_net=SetPooling(2))``)
cannot train on single trials: it gets N *sets* of 1..100 trials
(``simgen.simulate(..., trials=(1, 100), seed=s)``), about 50 N trials, so its row is
not a same-data comparison and says so. The ``set_npe_calls*`` routes are set-NPE at equal
simulator calls (:data:`SET_CALLS`): ``round(N / 50.5)`` sets of 1..100 trials, or
``round(N / 10.5)`` sets of 1..20 (read at n = 10 only, ``--trials 10``), N trials in
expectation (each cell records its ``simulator_calls``). The ``nle_*`` routes are NLE with
one named setting (:data:`NLE_OPTIONS`). Every other option is the library's default.

sbi's default NLE estimator is nflows' MAF, whose conditional MADE gives its first feature a
shift and scale that do not depend on θ (nflows pull request 85); sbi draws a random
permutation after each of its 5 MADEs, so with 2 features about 1 seed in 16 leaves x's
first feature first in all five and its likelihood ignores θ for it (:func:`unconditioned`
tells from the trained network; each sbi cell records it). The table gives the mean over
every seed and over the seeds where sbi's network conditions every feature on θ, the one
comparison with sbi at its sound use.

sbi's NPSE i.i.d. route is expensive: ``auto_gauss`` first samples every trial's posterior
for its precision, then runs its sampler on all trials (44 CPU-s per 1,000 draws at n = 10
from 1k simulations), so ``results_iid.md`` runs it at n = 10 only (``--trials 10``).

Per cell: CPU seconds (``time.process_time``, ``OMP_NUM_THREADS=1``) to train, and to draw
1,000 posterior samples at each observation (one ``sample`` call per observation, for
simgen and sbi alike); C2ST of those 1,000 draws against 1,000 exact draws. Cells are kept
in ``benchmarks/cells/iid/`` (tracked, :mod:`benchmarks.cell_files`; keyed by route, budget,
seed and the library's code), so a rerun resumes; the table is rewritten from the cells that
exist for the routes asked for (``--routes``) and sbi NLE's, under the model's marker in
``results_iid.md`` or ``--section``'s.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.bench_iid --model gauss \
        --budgets 1000 10000 --seeds 0 1 [--routes nle,nre,...] [--quick] [--table]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

import simgen
from benchmarks import cell_files, warm_up_torch
from benchmarks.evaluation import _code_key
from benchmarks.iid_models import MODELS, Model
from simgen.diagnostics.c2st import c2st
from simgen.estimators.compose_sampler import average_scores
from simgen.nets import SetPooling
from simgen.posterior import DirectPosterior

HERE = Path(__file__).parent
OUT = HERE / "results_iid.md"
CACHE = cell_files.cells("iid")
D = 2
TRIALS = (10, 100)
NUM_SAMPLES = 1000
MAX_SET = 100
#: Options beyond the defaults: composing trials wants a per-trial score that is precise at
#: small noise, which the control variate gives (``simgen.estimators.compose``).
ROUTE_OPTIONS = {"diffusion": {"control_variate": 1.0}}
#: Members of the averaged-score routes (``*_avg``: ``NPE(ensemble=AVERAGED)`` composed
#: through ``compose_sampler.average_scores``).
AVERAGED = 4
#: Training options beyond the defaults, per route (``*_ema``: the family's route trained with
#: ``TrainConfig.ema``).
ROUTE_TRAIN = {
    "diffusion_ema": {"ema": 0.99},
    "flow_matching_ema": {"ema": 0.99},
    "nle_ema": {"ema": 0.99},
}
#: NLE with one named setting beyond the defaults (``nle_*``): the flow's linear-Gaussian base
#: (``gaussian_baseline=True``, :mod:`simgen.estimators.flows`), tempered SMC instead of
#: random-walk Metropolis (``MCMCConfig(method="smc")``), or both; ``nle_ema`` trains with
#: ``ROUTE_TRAIN``'s weight average.
NLE_OPTIONS = {
    "nle": {},
    "nle_baseline": {"gaussian_baseline": True},
    "nle_smc": {"mcmc": {"method": "smc"}},
    "nle_baseline_smc": {"gaussian_baseline": True, "mcmc": {"method": "smc"}},
    "nle_ema": {},
}
#: Set-NPE at equal simulator calls (``set_npe_calls*``): sets of ``trials`` trials, as many
#: as make N trials in expectation, ``round(N / mean trials)`` sets.
SET_CALLS = {"set_npe_calls": (1, MAX_SET), "set_npe_calls20": (1, 20)}
ROUTES = (
    "nle",
    "nle_baseline",
    "nle_smc",
    "nle_baseline_smc",
    "nle_ema",
    "nre",
    "diffusion",
    "diffusion_avg",
    "diffusion_ema",
    "flow_matching",
    "flow_matching_avg",
    "flow_matching_ema",
    "set_npe",
    "set_npe_calls",
    "set_npe_calls20",
    "sbi_nle",
    "sbi_npse",
)
LABELS = {
    "nle": "simgen NLE (summed)",
    "nle_baseline": "simgen NLE (summed, gaussian_baseline=True)",
    "nle_smc": "simgen NLE (summed, SMC sampler)",
    "nle_baseline_smc": "simgen NLE (summed, gaussian_baseline=True, SMC sampler)",
    "nle_ema": "simgen NLE (summed, ema=0.99)",
    "nre": "simgen NRE (summed)",
    "diffusion": "simgen diffusion (composed, control_variate=1)",
    "diffusion_avg": f"simgen diffusion (composed, control_variate=1, {AVERAGED} nets averaged)",
    "diffusion_ema": "simgen diffusion (composed, control_variate=1, ema=0.99)",
    "flow_matching": "simgen flow matching (composed)",
    "flow_matching_ema": "simgen flow matching (composed, ema=0.99)",
    "flow_matching_avg": f"simgen flow matching (composed, {AVERAGED} nets averaged)",
    "set_npe": "simgen set-NPE (N sets, ~50N trials)",
    "set_npe_calls": "simgen set-NPE (N/50.5 sets of 1..100: N trials)",
    "set_npe_calls20": "simgen set-NPE (N/10.5 sets of 1..20: N trials)",
    "sbi_nle": "sbi NLE (i.i.d. MCMC)",
    "sbi_npse": "sbi NPSE (auto_gauss)",
}


def training_data(model: Model, budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + budget)
    theta = model.draw_theta(budget, g)
    return theta, model.simulator(theta, g)


def unconditioned(estimator: torch.nn.Module) -> list[int]:
    """The x features that sbi's nflows MAF models without θ: a conditional MADE's first
    feature gets its shift and scale from biases alone (nflows pull request 85), so a feature
    that comes first in every MADE, after the random permutations between them, ignores θ."""
    from nflows.transforms import MaskedAffineAutoregressiveTransform, RandomPermutation

    order, firsts = list(range(D)), set(range(D))
    for module in estimator.modules():
        if isinstance(module, MaskedAffineAutoregressiveTransform):
            firsts &= {order[0]}
        elif isinstance(module, RandomPermutation):
            order = [order[i] for i in module._permutation.tolist()]
    return sorted(firsts)


def sbi_unconditioned(model: Model, budget: int, seed: int) -> list[int]:
    """:func:`unconditioned` for the sbi NLE of a cell, rebuilt with the cell's seed and
    trained one epoch (the permutations are drawn before training)."""
    from sbi.inference import NLE as SbiNLE

    theta, x = training_data(model, budget, seed)
    torch.manual_seed(seed)
    inference = SbiNLE(prior=model.prior, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(
        show_train_summary=False, max_num_epochs=1
    )
    return unconditioned(estimator)


def nle_front(route: str, prior) -> simgen.NLE:
    """The NLE of an ``nle*`` route: the defaults with the route's :data:`NLE_OPTIONS`."""
    options = dict(NLE_OPTIONS[route])
    if "mcmc" in options:
        options["mcmc"] = simgen.MCMCConfig(**options["mcmc"])
    return simgen.NLE(prior, **options)


def set_count(route: str, budget: int) -> tuple[int, tuple[int, int]]:
    """Sets and trials range of a set-NPE route: ``budget`` sets of 1..``MAX_SET`` for
    ``set_npe``; for :data:`SET_CALLS` routes ``round(budget / mean trials)`` sets, so the
    expected number of simulator calls is ``budget``."""
    if route == "set_npe":
        return budget, (1, MAX_SET)
    low, high = SET_CALLS[route]
    return round(budget / ((low + high) / 2)), (low, high)


def train(model: Model, route: str, budget: int, seed: int, epochs: int | None):
    """``(sample(x, seed) -> (NUM_SAMPLES, D), train CPU seconds, extras)``."""
    theta, x = training_data(model, budget, seed)
    prior = model.prior
    limit = {} if epochs is None else {"max_epochs": epochs}
    start = time.process_time()
    if route.startswith("sbi_"):
        from sbi.inference import NLE as SbiNLE
        from sbi.inference import NPSE

        torch.manual_seed(seed)
        if route == "sbi_nle":
            inference = SbiNLE(prior=prior, show_progress_bars=False)
        else:
            inference = NPSE(prior=prior, sde_type="ve", show_progress_bars=False)
        sbi_limit = {} if epochs is None else {"max_num_epochs": epochs}
        estimator = inference.append_simulations(theta, x).train(
            show_train_summary=False, **sbi_limit
        )
        posterior = inference.build_posterior()
        seconds = time.process_time() - start
        extras = {"unconditioned": unconditioned(estimator)} if route == "sbi_nle" else {}

        def sample(xo, s):
            torch.manual_seed(s)
            return posterior.sample((NUM_SAMPLES,), x=xo, show_progress_bars=False)

        return sample, seconds, extras
    extras = {}
    if route.startswith("set_npe"):
        num_sets, trials = set_count(route, budget)
        sets = simgen.simulate(model.simulator, prior, num_sets, seed=seed, trials=trials)
        theta, x = sets.theta, sets.x
        if x.shape[1] < trials[1]:  # no set drew the largest size: pad, so n up to it is read
            x = torch.cat([x, x.new_full((len(x), trials[1] - x.shape[1], D), torch.nan)], 1)
        extras = {"sets": len(theta), "simulator_calls": int(sets.counts.sum())}
        start = time.process_time()  # simulation is not training
        front = simgen.NPE(prior, embedding_net=SetPooling(D))
    elif route in NLE_OPTIONS:
        front = nle_front(route, prior)
    elif route == "nre":
        front = simgen.NRE(prior)
    elif route.endswith("_avg"):
        family = route.removesuffix("_avg")
        options = ROUTE_OPTIONS.get(family, {})
        front = simgen.NPE(prior, estimator=family, ensemble=AVERAGED, **options)
        members = front.fit(theta, x, progress=False, seed=seed, **limit).members
        averaged = average_scores([m.estimator for m in members])
        posterior = DirectPosterior(averaged, prior, support="reject")
        seconds = time.process_time() - start
        return (lambda xo, s: posterior.sample((NUM_SAMPLES,), x=xo, seed=s)), seconds, {}
    else:
        family = route.removesuffix("_ema")
        front = simgen.NPE(prior, estimator=family, **ROUTE_OPTIONS.get(family, {}))
    limit = {**limit, **ROUTE_TRAIN.get(route, {})}
    posterior = front.fit(theta, x, progress=False, seed=seed, **limit)
    seconds = time.process_time() - start
    return (lambda xo, s: posterior.sample((NUM_SAMPLES,), x=xo, seed=s)), seconds, extras


def cell_path(
    model: Model, route: str, budget: int, seed: int, quick: bool, trials: tuple[int, ...]
) -> Path:
    code = _code_key("sbi" if route.startswith("sbi_") else "simgen")
    tag = ("quick-" if quick else "") + ("" if model.name == "gauss" else f"{model.name}-")
    part = "" if trials == TRIALS else "t" + "-".join(map(str, trials)) + "-"
    return CACHE / f"{tag}{route}-n{budget}-s{seed}-{part}{code}.json"


def run_cell(
    model: Model, route: str, budget: int, seed: int, quick: bool,
    trials: tuple[int, ...] = TRIALS,
) -> dict:  # fmt: skip
    """One (route, budget, seed) cell at the numbers of trials ``trials`` (a subset of
    ``TRIALS`` for a route too slow for all of them), cached."""
    path = cell_path(model, route, budget, seed, quick, trials)
    if (cached := cell_files.read_cell(path)) is not None:
        return cached
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample, train_s, extras = train(model, route, budget, seed, 20 if quick else None)
        rows = []
        for k, full in enumerate(model.observations()):
            for n in trials:
                xo = full[:n]
                start = time.process_time()
                draws = sample(xo, seed)
                sample_s = time.process_time() - start
                score = float(c2st(draws, model.reference(xo, NUM_SAMPLES, 10 + k)))
                rows.append({"obs": k, "n": n, "c2st": score, "sample_s": sample_s})
    cell = {"route": route, "budget": budget, "seed": seed, "train_s": train_s, "rows": rows}
    cell.update(extras)
    cell_files.write_cell(path, cell)
    print(
        f"{model.name} {route} N={budget} seed={seed} train {train_s:.1f}s "
        + " ".join(f"n={r['n']}:{r['c2st']:.3f}/{r['sample_s']:.1f}s" for r in rows),
        flush=True,
    )
    return cell


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def sound_seeds(model: Model, cells: list[dict], budget: int) -> list[int]:
    """The seeds at ``budget`` whose sbi NLE models every x feature given θ
    (:func:`unconditioned`; cells cached without the field are rebuilt to tell)."""
    seeds = []
    for c in cells:
        if c["route"] == "sbi_nle" and c["budget"] == budget:
            if "unconditioned" not in c:
                c["unconditioned"] = sbi_unconditioned(model, budget, c["seed"])
            if not c["unconditioned"]:
                seeds.append(c["seed"])
    return sorted(seeds)


def table(model: Model, cells: list[dict], command: str) -> list[str]:
    """Mean C2ST over observations × seeds with the per-seed means, the mean over the seeds
    where sbi's NLE conditions every feature on θ, CPU seconds, and the total time (train +
    1,000 draws at one observation) over sbi NLE's."""
    by = {(c["route"], c["budget"], c["seed"]): c for c in cells}
    budgets = sorted({c["budget"] for c in cells})
    lines = [
        f"Command: `{command}`",
        "",
        "| route | N | n | C2ST mean | per-seed means (seeds) | C2ST, sbi-sound seeds | "
        "train CPU s | sample CPU s | total / sbi NLE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def stats(route, budget, n):
        seeds, per_seed, train_s, sample_s = [], [], [], []
        for s in sorted(s for (r, b, s) in by if r == route and b == budget):
            rows = [r for r in by[route, budget, s]["rows"] if r["n"] == n]
            if not rows:  # a cell run at other numbers of trials
                continue
            seeds.append(s)
            per_seed.append(statistics.mean(r["c2st"] for r in rows))
            sample_s.append(statistics.mean(r["sample_s"] for r in rows))
            train_s.append(by[route, budget, s]["train_s"])
        return seeds, per_seed, train_s, sample_s

    for budget in budgets:
        sound = sound_seeds(model, cells, budget)
        for n in TRIALS:
            base = stats("sbi_nle", budget, n)
            base_total = statistics.mean(base[2]) + statistics.mean(base[3]) if base[0] else None
            for route in ROUTES:
                seeds, per_seed, train_s, sample_s = stats(route, budget, n)
                if not seeds:
                    continue
                total = statistics.mean(train_s) + statistics.mean(sample_s)
                ratio = f"{total / base_total:.2f}" if base_total else "-"
                on_sound = [v for s, v in zip(seeds, per_seed) if s in sound]
                sound_mean = f"{statistics.mean(on_sound):.3f}" if on_sound else "-"
                lines.append(
                    f"| {LABELS[route]} | {budget} | {n} | {statistics.mean(per_seed):.3f} | "
                    f"{_spread(per_seed)} ({' '.join(map(str, seeds))}) | {sound_mean} | "
                    f"{statistics.mean(train_s):.1f} | {statistics.mean(sample_s):.2f} | {ratio} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gauss")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--trials", type=int, nargs="+", default=list(TRIALS))
    parser.add_argument("--quick", action="store_true", help="20 epochs, not written out")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    parser.add_argument(
        "--section",
        help="write the table under <!-- table SECTION --> instead of the model's own (for "
        "runs of some routes on a checkout without the other routes' cells)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up_torch()
    model = MODELS[args.model]
    routes = [r for r in args.routes.split(",") if r]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"unknown routes {unknown}; choose from {', '.join(ROUTES)}")
    budgets = " ".join(map(str, args.budgets))
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.bench_iid --model {model.name} "
        f"--budgets {budgets} --seeds {seeds}"
        + ("" if args.routes == ",".join(ROUTES) else f" --routes {args.routes}")
    )
    if args.section:
        command += f" --section {args.section}"
    section = args.section or model.name
    if args.table:
        write(section, table(model, cached(model, args.budgets, args.seeds, routes), command))
        return
    cells = []
    for budget in args.budgets:
        for seed in args.seeds:
            for route in routes:
                cells.append(run_cell(model, route, budget, seed, args.quick, tuple(args.trials)))
    if args.quick:
        print("\n".join(table(model, cells, "(quick)")))
    else:  # the table from the cached cells of these budgets and seeds
        write(section, table(model, cached(model, args.budgets, args.seeds, routes), command))


def cached(
    model: Model, budgets: list[int], seeds: list[int], routes: list[str] | tuple[str, ...] = ROUTES
) -> list[dict]:
    """The newest cached cell of each (route, budget, seed) of ``routes``, whichever code
    version ran it (other work edits simgen during a long run; each cell's code is in its
    file name). sbi NLE's cells join any route list: they are the ratio's denominator."""
    tag = "" if model.name == "gauss" else f"{model.name}-"
    cells = []
    for b in budgets:
        for s in seeds:
            for r in ROUTES:
                if r not in routes and r != "sbi_nle":
                    continue
                found = sorted(
                    CACHE.glob(f"{tag}{r}-n{b}-s{s}-*.json"), key=lambda p: p.stat().st_mtime
                )
                found = [c for c in map(cell_files.read_cell, found) if c is not None]
                if found:
                    cells.append(found[-1])
    return cells


def write(section: str, lines: list[str]) -> None:
    """Replace the table between ``<!-- table SECTION -->`` and ``<!-- end -->`` (the model's
    name, or ``--section``), or append it."""
    start, end = f"<!-- table {section} -->\n", "<!-- end -->\n"
    text = OUT.read_text() if OUT.exists() else "# I.i.d. trials\n"
    block = start + "\n".join(lines) + "\n" + end
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    OUT.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
