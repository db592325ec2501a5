"""Sequential inference for one observation: simgen next to sbi at the same total budget.

For each task, observation and seed, every method gets the same simulator, the same
observation (from ``benchmarks.harness``'s ``report`` set, drawn from the prior predictive
with fixed seeds) and the same total number of simulations, in one process. Every method
is scored by C2ST of 2,000 posterior draws against 2,000 draws of the cached reference
posterior. CPU seconds (``time.process_time``, one thread) cover everything a method does
with its budget: proposals, simulation and training (not the final scoring draws).

Methods (``--methods``):

- ``simgen_npe``: simgen NPE (nsf) trained once on the prior (amortised, 1 round).
- ``simgen_tsnpe``: ``simgen.sequential(simgen.NPE(prior), ...)``, nsf, truncated proposals.
- ``simgen_tsnpe_fm``: the same with ``estimator="flow_matching"``.
- ``simgen_snle``: ``simgen.sequential(simgen.NLE(prior), ...)``, posterior proposals.
- ``sbi_tsnpe``: sbi's TSNPE recipe: ``NPE_C(prior)`` with ``force_first_round_loss``,
  ``get_density_thresholder(posterior, quantile=1e-4)`` from 20,000 draws (as simgen's;
  sbi's default 10⁶ took ~25 minutes a round on gaussian_linear_uniform here) and
  ``RestrictedPrior`` (rejection).
- ``sbi_snpec``: sbi's SNPE-C (APT), the previous round's posterior as the proposal.
- ``sbi_snle``: sbi's SNLE, the previous round's MCMC posterior as the proposal.

Every sequential method splits the budget equally over ``--rounds`` (4) rounds.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential --tasks two_moons \
        --observations 3 --seeds 0,1 --budget 1000 --methods simgen_tsnpe,sbi_tsnpe
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

import simgen
from benchmarks import harness, warm_up_torch
from simgen.diagnostics.c2st import c2st

OUT = Path(__file__).with_name("results_sequential.md")
N_SAMPLES = 2000
#: Posterior draws behind sbi's TSNPE threshold: simgen's ``REGION_DRAWS``, not sbi's default
#: 10⁶ (10⁶ leakage-rejected draws of a 10-D posterior took ~25 minutes a round here).
THRESHOLD_DRAWS = 20_000
METHODS = [
    "simgen_npe",
    "simgen_tsnpe",
    "simgen_tsnpe_fm",
    "simgen_snle",
    "sbi_tsnpe",
    "sbi_snpec",
    "sbi_snle",
]


def sbi_prior(prior):
    if isinstance(prior, simgen.BoxUniform):
        from sbi.utils import BoxUniform as SbiBox

        return SbiBox(prior.low, prior.high)
    return prior


def _simulate(task, theta: torch.Tensor, seed: int) -> torch.Tensor:
    return task.simulator(theta.float(), generator=torch.Generator().manual_seed(seed))


def run_simgen(method: str, task, x_o, budget: int, rounds: int, seed: int):
    if method == "simgen_snle":
        front = simgen.NLE(task.prior)
    else:
        family = "flow_matching" if method == "simgen_tsnpe_fm" else "nsf"
        front = simgen.NPE(task.prior, estimator=family)
    posterior = simgen.sequential(
        front,
        task.simulator,
        x_o,
        num_simulations=budget,
        num_rounds=1 if method == "simgen_npe" else rounds,
        seed=seed,
    )
    return lambda n: posterior.sample((n,), x=x_o, seed=seed), posterior.rounds


def run_sbi(method: str, task, x_o, budget: int, rounds: int, seed: int):
    from sbi.inference import NLE, NPE_C
    from sbi.utils import RestrictedPrior, get_density_thresholder

    torch.manual_seed(seed)
    prior = sbi_prior(task.prior)
    share = budget // rounds
    sizes = [budget - share * (rounds - 1)] + [share] * (rounds - 1)
    inference = (NLE if method == "sbi_snle" else NPE_C)(prior=prior, show_progress_bars=False)
    proposal = prior
    posterior = None
    for r, n in enumerate(sizes):
        theta = proposal.sample((n,))
        x = _simulate(task, theta, 1000 * seed + r)
        if method == "sbi_tsnpe":
            inference.append_simulations(theta, x).train(force_first_round_loss=True)
        elif method == "sbi_snpec":
            inference.append_simulations(theta, x, proposal=proposal).train()
        else:
            inference.append_simulations(theta, x).train()
        posterior = inference.build_posterior().set_default_x(x_o)
        if r == len(sizes) - 1:
            break
        if method == "sbi_tsnpe":
            threshold = get_density_thresholder(
                posterior, quantile=1e-4, num_samples_to_estimate_support=THRESHOLD_DRAWS
            )
            proposal = RestrictedPrior(prior, threshold, sample_with="rejection")
        else:
            proposal = posterior

    return lambda k: posterior.sample((k,), show_progress_bars=False), None


def one(task_name: str, method: str, index: int, x_o, seed: int, args) -> dict:
    task = harness.load_task(task_name)
    runner = run_sbi if method.startswith("sbi") else run_simgen
    torch.manual_seed(seed)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draw, rounds = runner(method, task, x_o, args.budget, args.rounds, seed)
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
        samples = draw(N_SAMPLES).reshape(N_SAMPLES, -1)
    reference = harness.reference(task_name, "report", index)["samples"][:N_SAMPLES]
    row = {
        "task": task_name,
        "method": method,
        "observation": index,
        "seed": seed,
        "budget": args.budget,
        "rounds": 1 if method == "simgen_npe" else args.rounds,
        "c2st": float(c2st(samples, reference, seed=0)),
        "cpu_s": cpu,
        "wall_s": wall,
    }
    if rounds is not None:
        row["acceptance"] = [r.acceptance for r in rounds]
        row["energy"] = [r.energy_distance for r in rounds]
    return row


def write_markdown(rows: list[dict], command: str) -> None:
    lines = [
        "# Sequential inference for one observation: simgen vs sbi",
        "",
        f"Command: `{command}`",
        "",
        "Written by `benchmarks/bench_sequential.py` (its docstring lists the methods). Each",
        "cell is the mean [min, max] over observations x seeds of the C2ST of 2,000 posterior",
        "draws against 2,000 reference draws (0.5 is perfect), and the mean CPU seconds of the",
        "whole run (proposals, simulations, training; one thread). Observations: the first",
        "ones of `benchmarks.harness`'s `report` set. Sequential methods: the budget split",
        "equally over the rounds.",
        "",
        "| task | budget | method | rounds | runs | C2ST mean [min, max] | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["task"], row["budget"], row["method"], row["rounds"])
        groups.setdefault(key, []).append(row)
    for (task, budget, method, rounds), group in sorted(groups.items()):
        scores = [g["c2st"] for g in group]
        cpu = statistics.mean(g["cpu_s"] for g in group)
        lines.append(
            f"| {task} | {budget} | {method} | {rounds} | {len(group)} | "
            f"{statistics.mean(scores):.3f} [{min(scores):.3f}, {max(scores):.3f}] | {cpu:.1f} |"
        )
    lines += ["", "Per run (acceptance: prior mass of each round's proposal region):", ""]
    lines += ["| task | method | obs | seed | C2ST | CPU s | acceptance per round |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r.get("acceptance")
        acc = "-" if acc is None else ", ".join("-" if a is None else f"{a:.3g}" for a in acc)
        lines.append(
            f"| {r['task']} | {r['method']} | {r['observation']} | {r['seed']} | "
            f"{r['c2st']:.3f} | {r['cpu_s']:.1f} | {acc} |"
        )
    OUT.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="two_moons,gaussian_linear_uniform")
    parser.add_argument("--methods", default="simgen_npe,simgen_tsnpe,sbi_tsnpe,sbi_snpec")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--log", default=str(OUT.with_suffix(".jsonl")))
    parser.add_argument("--merge", default="", help="comma-separated logs: only write the table")
    parser.add_argument("--command", default="", help="with --merge: the command to state")
    args = parser.parse_args()
    if args.merge:
        logs = [Path(p) for p in args.merge.split(",")]
        rows = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
        write_markdown(rows, args.command)
        return
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warm_up_torch()
    command = "OMP_NUM_THREADS=1 python -m benchmarks.bench_sequential " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "log"
    )
    log = Path(args.log)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {(r["task"], r["method"], r["observation"], r["seed"], r["budget"]) for r in rows}
    for task_name in args.tasks.split(","):
        _, xs = harness.observations(task_name, "report", args.observations)
        for seed in map(int, args.seeds.split(",")):
            for index, x_o in enumerate(xs):
                for method in args.methods.split(","):
                    if (task_name, method, index, seed, args.budget) in done:
                        continue
                    row = one(task_name, method, index, x_o, seed, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    write_markdown(rows, command)


if __name__ == "__main__":
    main()
