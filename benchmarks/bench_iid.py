r"""Many i.i.d. trials: each simgen route next to sbi's i.i.d. NLE and NPSE, same simulations.

The model is conjugate, so the reference posterior is exact for any number of trials n:
:math:`\theta \sim \mathcal N(0, I_2)`, :math:`x_i \mid \theta \sim \mathcal N(\theta, I_2)`
i.i.d., :math:`p(\theta \mid x_{1:n}) = \mathcal N(\sum_i x_i / (n + 1), I_2 / (n + 1))`.
Three observations (θ from the prior, seeds 100-102; 100 trials each, seeds 200-202); the
observation of n trials is the first n of them, n = 10 and 100.

For each training budget N and seed s the single-trial simulations (θ, x) are drawn once
(seed ``1000 s + N``) and every single-trial route trains on exactly those pairs:
simgen's NLE and NRE (MCMC on the summed log-likelihood / logits), NPE with
``"diffusion"`` and ``"flow_matching"`` (compositional: :mod:`simgen.estimators.compose`;
diffusion trained with ``control_variate=1.0``, as that module advises for trial sets),
sbi 0.27's ``NLE`` (``build_posterior()``, MCMC with an x of shape ``(n, 2)``: its i.i.d.
potential) and ``NPSE`` (VE SDE; an x of shape ``(n, 2)`` composes per-trial scores with
its default ``iid_method="auto_gauss"``). Set-NPE (``NPE(embedding_net=SetPooling(2))``)
cannot train on single trials: it gets N *sets* of 1..100 trials
(``simgen.simulate(..., trials=(1, 100), seed=s)``), about 50 N trials, so its row is
not a same-data comparison and says so. Every other option is the library's default.

sbi's NPSE i.i.d. route is expensive before it draws: ``auto_gauss`` first estimates every
trial's posterior precision by sampling each trial's posterior, then runs its 500-step
sampler on all trials; trained on 200 simulations, 50 draws at n = 100 had not returned
after 89 CPU seconds, so the run in ``results_iid.md`` leaves it out (``--routes``).

Per cell: CPU seconds (``time.process_time``, ``OMP_NUM_THREADS=1``) to train, and to draw
1,000 posterior samples at each observation (one ``sample`` call per observation, for
simgen and sbi alike); C2ST of those 1,000 draws against 1,000 exact draws. Cells are cached
in ``benchmarks/.cache/iid/`` (keyed by route, budget, seed and the library's code), so a
rerun resumes; the table is rewritten from whatever cells exist.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.bench_iid --budgets 1000 10000 \
        --seeds 0 1 [--routes nle,nre,...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.distributions import MultivariateNormal

import simgen
from benchmarks import warm_up_torch
from benchmarks.evaluation import _code_key
from simgen.diagnostics.c2st import c2st
from simgen.nets import SetPooling

HERE = Path(__file__).parent
OUT = HERE / "results_iid.md"
CACHE = HERE / ".cache" / "iid"
D = 2
PRIOR = MultivariateNormal(torch.zeros(D), torch.eye(D))
TRIALS = (10, 100)
NUM_OBS = 3
NUM_SAMPLES = 1000
MAX_SET = 100
#: Options beyond the defaults: composing trials wants a per-trial score that is precise at
#: small noise, which the control variate gives (``simgen.estimators.compose``).
ROUTE_OPTIONS = {"diffusion": {"control_variate": 1.0}}
ROUTES = ("nle", "nre", "diffusion", "flow_matching", "set_npe", "sbi_nle", "sbi_npse")
LABELS = {
    "nle": "simgen NLE (summed)",
    "nre": "simgen NRE (summed)",
    "diffusion": "simgen diffusion (composed, control_variate=1)",
    "flow_matching": "simgen flow matching (composed)",
    "set_npe": "simgen set-NPE (N sets, ~50N trials)",
    "sbi_nle": "sbi NLE (i.i.d. MCMC)",
    "sbi_npse": "sbi NPSE (auto_gauss)",
}


def simulator(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return theta + torch.randn(theta.shape, generator=generator)


def observations() -> list[torch.Tensor]:
    """``NUM_OBS`` observations of ``max(TRIALS)`` trials each."""
    out = []
    for k in range(NUM_OBS):
        g = torch.Generator().manual_seed(100 + k)
        theta = torch.randn(D, generator=g)
        noise = torch.randn(max(TRIALS), D, generator=torch.Generator().manual_seed(200 + k))
        out.append(theta + noise)
    return out


def reference(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``NUM_SAMPLES`` exact posterior draws given trials ``x`` ``(n, D)``."""
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    return x.sum(0) / (n + 1) + torch.randn(NUM_SAMPLES, D, generator=g) / (n + 1) ** 0.5


def training_data(budget: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + budget)
    theta = torch.randn(budget, D, generator=g)
    return theta, simulator(theta, g)


def train(route: str, budget: int, seed: int, epochs: int | None):
    """``(sample(x, seed) -> (NUM_SAMPLES, D), train CPU seconds)``."""
    theta, x = training_data(budget, seed)
    limit = {} if epochs is None else {"max_epochs": epochs}
    start = time.process_time()
    if route.startswith("sbi_"):
        from sbi.inference import NLE as SbiNLE
        from sbi.inference import NPSE

        torch.manual_seed(seed)
        if route == "sbi_nle":
            inference = SbiNLE(prior=PRIOR, show_progress_bars=False)
        else:
            inference = NPSE(prior=PRIOR, sde_type="ve", show_progress_bars=False)
        sbi_limit = {} if epochs is None else {"max_num_epochs": epochs}
        inference.append_simulations(theta, x).train(show_train_summary=False, **sbi_limit)
        posterior = inference.build_posterior()
        seconds = time.process_time() - start

        def sample(xo, s):
            torch.manual_seed(s)
            return posterior.sample((NUM_SAMPLES,), x=xo, show_progress_bars=False)

        return sample, seconds
    if route == "set_npe":
        sets = simgen.simulate(simulator, PRIOR, budget, seed=seed, trials=(1, MAX_SET))
        theta, x = sets.theta, sets.x
        start = time.process_time()  # simulation is not training
        front = simgen.NPE(PRIOR, embedding_net=SetPooling(D))
    elif route == "nle":
        front = simgen.NLE(PRIOR)
    elif route == "nre":
        front = simgen.NRE(PRIOR)
    else:
        front = simgen.NPE(PRIOR, estimator=route, **ROUTE_OPTIONS.get(route, {}))
    posterior = front.fit(theta, x, progress=False, seed=seed, **limit)
    seconds = time.process_time() - start
    return (lambda xo, s: posterior.sample((NUM_SAMPLES,), x=xo, seed=s)), seconds


def cell_path(route: str, budget: int, seed: int, quick: bool) -> Path:
    code = _code_key("sbi" if route.startswith("sbi_") else "simgen")
    tag = "quick-" if quick else ""
    return CACHE / f"{tag}{route}-n{budget}-s{seed}-{code}.json"


def run_cell(route: str, budget: int, seed: int, quick: bool) -> dict:
    path = cell_path(route, budget, seed, quick)
    if path.exists():
        return json.loads(path.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample, train_s = train(route, budget, seed, 20 if quick else None)
        rows = []
        for k, full in enumerate(observations()):
            for n in TRIALS:
                xo = full[:n]
                start = time.process_time()
                draws = sample(xo, seed)
                sample_s = time.process_time() - start
                score = float(c2st(draws, reference(xo, 10 + k)))
                rows.append({"obs": k, "n": n, "c2st": score, "sample_s": sample_s})
    cell = {"route": route, "budget": budget, "seed": seed, "train_s": train_s, "rows": rows}
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    print(
        f"{route} N={budget} seed={seed} train {train_s:.1f}s "
        + " ".join(f"n={r['n']}:{r['c2st']:.3f}/{r['sample_s']:.1f}s" for r in rows),
        flush=True,
    )
    return cell


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def table(cells: list[dict], command: str) -> list[str]:
    """Mean C2ST over observations × seeds with the per-seed means, CPU seconds, and the
    total time (train + 1,000 draws at one observation) over sbi NLE's."""
    by = {(c["route"], c["budget"], c["seed"]): c for c in cells}
    budgets = sorted({c["budget"] for c in cells})
    lines = [
        f"Command: `{command}`",
        "",
        "| route | N | n | C2ST mean | per-seed means | train CPU s | sample CPU s | "
        "total / sbi NLE |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def stats(route, budget, n):
        seeds = sorted(s for (r, b, s) in by if r == route and b == budget)
        per_seed, train_s, sample_s = [], [], []
        for s in seeds:
            rows = [r for r in by[route, budget, s]["rows"] if r["n"] == n]
            per_seed.append(statistics.mean(r["c2st"] for r in rows))
            sample_s.append(statistics.mean(r["sample_s"] for r in rows))
            train_s.append(by[route, budget, s]["train_s"])
        return seeds, per_seed, train_s, sample_s

    for budget in budgets:
        for n in TRIALS:
            base = stats("sbi_nle", budget, n)
            base_total = statistics.mean(base[2]) + statistics.mean(base[3]) if base[0] else None
            for route in ROUTES:
                seeds, per_seed, train_s, sample_s = stats(route, budget, n)
                if not seeds:
                    continue
                total = statistics.mean(train_s) + statistics.mean(sample_s)
                ratio = f"{total / base_total:.2f}" if base_total else "-"
                lines.append(
                    f"| {LABELS[route]} | {budget} | {n} | {statistics.mean(per_seed):.3f} | "
                    f"{_spread(per_seed)} | {statistics.mean(train_s):.1f} | "
                    f"{statistics.mean(sample_s):.2f} | {ratio} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--quick", action="store_true", help="20 epochs, not written out")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up_torch()
    routes = [r for r in args.routes.split(",") if r]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"unknown routes {unknown}; choose from {', '.join(ROUTES)}")
    budgets = " ".join(map(str, args.budgets))
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.bench_iid --budgets {budgets} "
        f"--seeds {seeds}" + ("" if args.routes == ",".join(ROUTES) else f" --routes {args.routes}")
    )
    if args.table:
        write(table(cached(args.budgets, args.seeds), command))
        return
    cells = []
    for budget in args.budgets:
        for seed in args.seeds:
            for route in routes:
                cells.append(run_cell(route, budget, seed, args.quick))
                if not args.quick:  # the table so far, from every cached cell
                    write(table(cached(args.budgets, args.seeds), command))
    if args.quick:
        print("\n".join(table(cells, "(quick)")))


def cached(budgets: list[int], seeds: list[int]) -> list[dict]:
    """The newest cached cell of each (route, budget, seed), whichever code version ran it
    (other work edits simgen during a long run; each cell's code is in its file name)."""
    cells = []
    for b in budgets:
        for s in seeds:
            for r in ROUTES:
                found = sorted(CACHE.glob(f"{r}-n{b}-s{s}-*.json"), key=lambda p: p.stat().st_mtime)
                if found:
                    cells.append(json.loads(found[-1].read_text()))
    return cells


def write(lines: list[str]) -> None:
    header = OUT.read_text().split("\n<!-- table -->\n")[0] if OUT.exists() else "# I.i.d."
    OUT.write_text(header + "\n<!-- table -->\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
