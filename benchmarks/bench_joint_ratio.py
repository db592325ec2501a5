"""NRE with the joint likelihood ratio (ROLR, RASCAL, ALICES, CASCAL) vs plain NPE, NLE, NRE.

The showcase is the collection's ``particle_shower``: a pyro program with a random number of
latent splittings whose reference posterior comes from pseudo-marginal MCMC. Each seed draws
``N/2`` θs from the prior and runs ``PyroSimulator.ratio_simulations`` with a per-row reference
θ₁ drawn from the prior independently (the marginal reference, so every loss learns
log p(x|θ) - log p(x), NRE's ratio): ``N`` simulations, half at θ, half at θ₁, each with its
joint log ratio and (at θ) its joint score. The plain methods train on the same ``N``
simulations as ordinary pairs (θ, x) (each row with the parameter that produced it); the
reference-ratio losses train on the rows as ``ratio_simulations`` returns them. Accuracy is
C2ST (``simgen.diagnostics.c2st``) of 1,000 posterior draws against 1,000 of the 2,000
cached reference draws per observation; the observations are ``x_o`` and the first report
observations of ``benchmarks/observations/particle_shower.pt``. sbi has no joint-ratio loss,
so the comparison is within simgen. CPU seconds (``time.process_time``) per fit, one thread.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_joint_ratio --budgets 1000,4000 --seeds 2 --obs 3
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
from benchmarks import warm_up_torch
from benchmarks.harness import CACHE, observations
from simgen.diagnostics.c2st import c2st
from simgen.simulate import sample_prior
from simulators import particle_shower as shower

OUT = Path(__file__).with_name("results_joint_ratio.md")
REFERENCE_DRAWS, POSTERIOR_DRAWS = 2000, 1000
PLAIN = ("npe", "nle", "nre")
#: loss name → the extras it reads (all need ``from_reference``).
AUGMENTED = {
    "carl": (),
    "alices": ("joint_log_ratio",),
    "rolr": ("joint_log_ratio",),
    "rascal": ("joint_log_ratio", "joint_score"),
    "cascal": ("joint_score",),
}


def observation_set(num: int) -> torch.Tensor:
    """``x_o`` then the first ``num - 1`` report observations, ``(num, 5)``."""
    _, report = observations("particle_shower", "report")
    return torch.cat([shower.x_o[None], report[: num - 1]])


def reference(x: torch.Tensor, index: int) -> torch.Tensor:
    """Pseudo-marginal reference draws for ``x``, cached under ``benchmarks/.cache``."""
    key = hashlib.sha256(x.double().numpy().tobytes()).hexdigest()[:12]
    path = CACHE / "joint_ratio" / f"ref-{index}-{key}-n{REFERENCE_DRAWS}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    samples = shower.reference_posterior(x, REFERENCE_DRAWS, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(samples, path)
    return samples


def fit(method: str, data, seed: int):
    """Train ``method`` on ``data`` (a ``RatioSimulations``); returns the posterior."""
    prior = shower.prior
    own = ~data.from_reference
    if method in PLAIN:
        # Every row as a plain pair: rows drawn at θ₁ pair x with θ₁.
        theta = torch.where(own[:, None], data.theta, data.theta_1.repeat(2, 1))
        front = {"npe": simgen.NPE, "nle": simgen.NLE, "nre": simgen.NRE}[method](prior)
        return front.fit(theta, data.x, progress=False, seed=seed)
    extras = {"from_reference": data.from_reference}
    extras.update({k: getattr(data, k) for k in AUGMENTED[method]})
    nre = simgen.NRE(prior, loss=method)
    return nre.fit(data.theta, data.x, progress=False, seed=seed, **extras)


def draws(posterior, xs: torch.Tensor, seed: int) -> torch.Tensor:
    """``(POSTERIOR_DRAWS, B, 2)`` for all observations in one batch."""
    return posterior.sample_batched((POSTERIOR_DRAWS,), xs, seed=seed)


def bootstrap(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over resampled cells."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(reps))
    return means[int(0.025 * reps)], means[int(0.975 * reps) - 1]


def run(budgets: list[int], seeds: int, num_obs: int, methods: list[str]) -> list[str]:
    xs = observation_set(num_obs)
    # C2ST on equal sample sizes (with unequal ones its floor is the majority share, not 0.5).
    pick = torch.randperm(REFERENCE_DRAWS, generator=torch.Generator().manual_seed(0))
    refs = [reference(x, i)[pick[:POSTERIOR_DRAWS]] for i, x in enumerate(xs)]
    rows = []
    for n in budgets:
        scores: dict[str, list[float]] = {m: [] for m in methods}
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        for seed in range(seeds):
            theta = sample_prior(shower.prior, n // 2, seed)
            theta_1 = sample_prior(shower.prior, n // 2, 1000 + seed)
            data = shower.simulator.ratio_simulations(theta, theta_1, seed=seed)
            for method in methods:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.process_time()
                    posterior = fit(method, data, seed)
                    seconds[method].append(time.process_time() - start)
                    samples = draws(posterior, xs, seed)
                for b, ref in enumerate(refs):
                    scores[method].append(float(c2st(samples[:, b], ref, seed=0)))
                print(n, seed, method, scores[method][-num_obs:], flush=True)
        for method in methods:
            values = scores[method]
            low, high = bootstrap(values)
            rows.append(
                f"| {n} | {method} | {sum(values) / len(values):.3f} | [{low:.3f}, {high:.3f}] "
                f"| {sum(seconds[method]) / seeds:.1f} |"
            )
    return rows


def run_chain(n: int, seeds: int) -> list[str]:
    """The latent chain (``simulators._latent_chain``, closed-form posterior): posterior KL
    (``posterior_kl``, 20 observations, nats) of NRE-C and each reference-ratio loss on the
    same ``n`` simulations per seed (per-row θ₁ ~ prior), as in the shower table."""
    from simulators import _latent_chain as chain

    kls: dict[str, list[float]] = {m: [] for m in ("nre", *AUGMENTED)}
    for seed in range(seeds):
        theta = sample_prior(chain.prior, n // 2, seed)
        theta_1 = sample_prior(chain.prior, n // 2, 1000 + seed)
        data = chain.simulator.ratio_simulations(theta, theta_1, seed=seed)
        data.x = data.x.reshape(-1, 1)
        for method in kls:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                own = ~data.from_reference
                if method == "nre":
                    pairs = torch.where(own[:, None], data.theta, data.theta_1.repeat(2, 1))
                    post = simgen.NRE(chain.prior).fit(pairs, data.x, progress=False, seed=seed)
                else:
                    extras = {"from_reference": data.from_reference}
                    extras.update({k: getattr(data, k) for k in AUGMENTED[method]})
                    post = simgen.NRE(chain.prior, loss=method).fit(
                        data.theta, data.x, progress=False, seed=seed, **extras
                    )
            kls[method].append(chain.posterior_kl(post))
    rows = []
    for method, values in kls.items():
        low, high = bootstrap(values)
        rows.append(
            f"| {n} | {method} | {sum(values) / len(values):.3f} | [{low:.3f}, {high:.3f}] |"
        )
    return rows


def label_statistics(n: int = 5000, seed: int = 0) -> list[str]:
    """How much the joint quantities say beyond the labels: the share of ALICES soft labels
    σ(log r(x, z)) inside (0.05, 0.95) on both simulators, and on the latent chain the
    variance of the joint score against the marginal score's (its conditional mean)."""
    from simulators import _latent_chain as chain

    rows = []
    for name, task in (("latent chain", chain), ("particle_shower", shower)):
        theta = sample_prior(task.prior, n, seed).double()
        theta_1 = sample_prior(task.prior, n, 1000 + seed).double()
        data = task.simulator.ratio_simulations(theta, theta_1, seed=seed)
        soft = torch.sigmoid(data.joint_log_ratio)
        share = float(((soft > 0.05) & (soft < 0.95)).double().mean())
        extra = ""
        if task is chain:
            own = ~data.from_reference
            leaf = theta.clone().requires_grad_(True)
            (marginal,) = torch.autograd.grad(
                chain.log_likelihood(leaf, data.x[own].double()).sum(), leaf
            )
            ratio = data.joint_score[own].var(0) / marginal.var(0)
            extra = ", ".join(f"{float(v):.1f}" for v in ratio)
        rows.append(f"| {name} | {share:.2f} | {extra or '—'} |")
    return [
        "",
        "## What the joint quantities carry",
        "",
        f"{n:,} θs from the prior, per-row θ₁ from the prior, seed {seed}: the share of rows "
        "whose soft label σ(log r(x, z)) lies in (0.05, 0.95) (the rest are almost the hard "
        "labels CARL already has), and on the latent chain Var t_d / Var ∂_d log p(x|θ), the "
        "joint score's variance over its conditional mean's (per θ component).",
        "",
        "| simulator | soft labels in (0.05, 0.95) | Var joint / Var marginal score |",
        "|---|---|---|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", default="1000,4000")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--obs", type=int, default=3)
    parser.add_argument("--methods", default=",".join([*PLAIN, *AUGMENTED]))
    parser.add_argument("--chain-simulations", type=int, default=2000)
    parser.add_argument("--chain-seeds", type=int, default=5)
    parser.add_argument(
        "--stats-only", action="store_true", help="rewrite only the label-statistics section"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 simulations, 1 seed, x_o")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stats_only:
        text = OUT.read_text().split("\n## What the joint quantities carry")[0].rstrip("\n")
        OUT.write_text(text + "\n" + "\n".join(label_statistics()) + "\n")
        return
    warm_up_torch()
    if args.quick:
        args.budgets, args.seeds, args.obs, args.chain_seeds = "1000", 1, 1, 1
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    chain_rows = run_chain(args.chain_simulations, args.chain_seeds)
    print("\n".join(chain_rows), flush=True)
    rows = run(budgets, args.seeds, args.obs, methods)
    cells = args.seeds * args.obs
    header = [
        "# NRE with the joint likelihood ratio vs plain NPE, NLE, NRE on particle_shower",
        "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.bench_joint_ratio --budgets "
        f"{args.budgets} --seeds {args.seeds} --obs {args.obs} --methods {args.methods} "
        f"--chain-simulations {args.chain_simulations} --chain-seeds {args.chain_seeds}`.",
        "",
        f"Simulations: N per cell, all methods on the same N (half at θ ~ prior, half at a "
        f"per-row θ₁ ~ prior). C2ST of {POSTERIOR_DRAWS:,} posterior draws against "
        f"{POSTERIOR_DRAWS:,} (a seeded subset of {REFERENCE_DRAWS:,}) pseudo-marginal "
        f"reference draws, mean over {args.obs} "
        f"observations × {args.seeds} seeds ({cells} cells) with a 95% bootstrap interval "
        "over cells; 0.5 is perfect. Training CPU seconds per fit (one thread); MCMC "
        "sampling (NLE, NRE and the ratio losses) is not in it.",
        "",
        "| simulations | method | C2ST | 95% interval | train s |",
        "|---|---|---|---|---|",
    ]
    chain = [
        "",
        "## The latent chain (closed-form posterior)",
        "",
        f"`simulators._latent_chain`, {args.chain_simulations:,} simulations per seed "
        "(half at θ, half at a per-row θ₁ ~ prior), the same rows for every method; posterior "
        "KL from the exact posterior on an 81 × 81 grid, mean over 20 observations (nats, 0 "
        f"is perfect), mean over {args.chain_seeds} seeds with a 95% bootstrap interval.",
        "",
        "| simulations | method | KL | 95% interval |",
        "|---|---|---|---|",
    ]
    stats = label_statistics()
    OUT.write_text("\n".join(header + rows + chain + chain_rows + stats) + "\n")


if __name__ == "__main__":
    main()
