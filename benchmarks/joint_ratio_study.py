r"""What limits ``NRE(loss="nrec_soft")`` on particle_shower at 3,300 simulations.

Variants of NRE-C with the joint ratio's soft labels (:class:`simgen.losses.ratio.SoftNRECLoss`)
screened on the *tuning* observations, the best one then run on the report grid of
``bench_joint_ratio`` (the same simulations per seed, paired against its cached NRE-C at
10,000). A variant (:data:`STUDY`) is K (``atoms``), training options (``train``), the
classifier's widths (``hidden``), an ``ensemble`` of classifiers whose logits are averaged
(each trained on the same simulations from its own seed: the ensemble costs training CPU, not
simulations), or one of these changes of the loss:

* ``bank``: M > K − 1 references banked per simulation, a random K − 1 of them drawn per row
  at every training step (the first K − 1 in validation). The atoms are still K independent
  prior draws, so the expected loss is NRE-C's, and the joint class sees new contrastive sets.
* ``hard``: β, the loss :math:`(\mathcal L_{soft} + \beta\,\mathcal L_{NRE-C})/(1 + \beta)`,
  NRE-C's hard term on K θs of other rows of the batch added; both have the minimiser
  :math:`f = \log r`, so the sum has it too.
* ``mix``: α, the labels :math:`(1-\alpha) w + \alpha\, e_1` (the one-hot joint label): both
  have the same expectation given :math:`(\Theta, x)`, so the minimiser is kept and the
  variance lies between the two.
* ``temperature``: T, the labels :math:`\operatorname{softmax}(\ell / T)` of the log weights
  ℓ; T ≠ 1 changes the minimiser (T > 1 flattens the labels towards uniform), a measured
  bias, not a candidate default.

    OMP_NUM_THREADS=1 python -m benchmarks.joint_ratio_study --screen \
soft-k40,soft-k10-bank39,soft-k10-hard1,soft-k10-ens2,soft-k10-w128,soft-k10-lr1e-3,\
soft-k10-p40,soft-k10-mix0.5,soft-k10-wd1e-3,soft-k10-ema,soft-k10-b128,soft-k10-t2,\
soft-k10-t0.5,soft-k5-bank39,soft-k10-w32,soft-k20-ens2 --screen-seeds 0,1 --confirm \
soft-k10-lr1e-3,soft-k10-wd1e-3,soft-k10-lr1e-3-wd1e-3 --confirm-seeds 0,1,2,3 --grid \
nrec_soft-k10,soft-k10-wd1e-3,soft-k10-lr1e-3

(about 17 CPU-minutes from an empty cache with the references cached: 54 cells of 10 to
45 CPU-s, a third of it C2ST at about 2 CPU-s per observation.) The screen's baseline
``--base`` (``nrec_soft-k10``) and the grid's ``nrec_soft-k10`` are ``bench_joint_ratio``'s
cached cells.

Cells are kept in ``benchmarks/cells/joint_ratio/`` (``study-`` names); the tables
replace the section "What limits nrec_soft" of ``benchmarks/results_joint_ratio.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import torch
from torch import nn

import simgen
from benchmarks import bench_joint_ratio as bench
from benchmarks import warm_up_torch
from simgen.losses.ratio import NRECLoss, SoftNRECLoss, _marginal_thetas
from simgen.mcmc_posterior import MCMCPosterior
from simulators import particle_shower as shower

#: variant → options (module docstring); every variant is ``nrec_soft`` at ``atoms`` K.
STUDY = {
    "soft-k40": {"atoms": 40},
    "soft-k10-w128": {"atoms": 10, "hidden": (128, 128, 128)},
    "soft-k10-w32": {"atoms": 10, "hidden": (32, 32, 32)},
    "soft-k10-lr1e-3": {"atoms": 10, "train": {"learning_rate": 1e-3}},
    "soft-k10-p40": {"atoms": 10, "train": {"patience": 40}},
    "soft-k10-wd1e-3": {"atoms": 10, "train": {"weight_decay": 1e-3}},
    "soft-k10-lr1e-3-wd1e-3": {"atoms": 10, "train": {"learning_rate": 1e-3, "weight_decay": 1e-3}},
    "soft-k20-lr1e-3": {"atoms": 20, "train": {"learning_rate": 1e-3}},
    "soft-k20-wd1e-3": {"atoms": 20, "train": {"weight_decay": 1e-3}},
    "soft-k10-ema": {"atoms": 10, "train": {"ema": 0.99}},
    "soft-k10-b128": {"atoms": 10, "train": {"batch_size": 128}},
    "soft-k10-bank39": {"atoms": 10, "bank": 39},
    "soft-k5-bank39": {"atoms": 5, "bank": 39},
    "soft-k10-hard1": {"atoms": 10, "hard": 1.0},
    "soft-k10-mix0.5": {"atoms": 10, "mix": 0.5},
    "soft-k10-t2": {"atoms": 10, "temperature": 2.0},
    "soft-k10-t0.5": {"atoms": 10, "temperature": 0.5},
    "soft-k10-ens2": {"atoms": 10, "ensemble": 2},
    "soft-k20-ens2": {"atoms": 20, "ensemble": 2},
}
#: Seed offset of the second and later members of an ensemble.
MEMBER_SEED = 500


class StudyLoss(SoftNRECLoss):
    """:class:`SoftNRECLoss` with the ``bank``, ``hard``, ``mix`` and ``temperature`` changes
    of the module docstring."""

    def __init__(self, classifier, num_atoms, gamma, hard=0.0, mix=0.0, temperature=1.0):
        super().__init__(classifier, num_atoms, gamma)
        self.hard, self.mix, self.temperature = hard, mix, temperature

    def forward(self, theta, x, theta_1, joint_log_ratio):
        k, n = self.num_atoms, len(theta)
        if theta_1.shape[1] > k - 1:
            if self.training:
                pick = torch.rand(n, theta_1.shape[1]).argsort(1)[:, : k - 1]
            else:
                pick = torch.arange(k - 1).expand(n, -1)
            theta_1 = theta_1.gather(1, pick[..., None].expand(-1, -1, theta_1.shape[-1]))
            joint_log_ratio = joint_log_ratio.gather(1, pick)
        soft = self._soft(theta, x, theta_1, joint_log_ratio)
        if self.hard == 0:
            return soft
        return (soft + self.hard * NRECLoss.forward(self, theta, x)) / (1 + self.hard)

    def _soft(self, theta, x, theta_1, log_r):
        k, n = self.num_atoms, len(theta)
        xs = x[:, None].expand(n, k, *x.shape[1:])
        marginal = self.classifier(_marginal_thetas(theta, k), xs)
        joint = self.classifier(torch.cat([theta[:, None], theta_1], 1), xs)
        log_gamma, log_k = math.log(self.gamma), math.log(k)
        pad = torch.full((n, 1), log_k, dtype=marginal.dtype)
        log_q0 = log_k - torch.logsumexp(torch.cat([log_gamma + marginal, pad], 1), 1)
        log_w = torch.cat([torch.zeros_like(log_r[:, :1]), -log_r], 1)
        labels = torch.softmax(log_w / self.temperature, 1)
        if self.mix:
            labels = (1 - self.mix) * labels + self.mix * torch.eye(k)[0]
        norm = torch.logsumexp(torch.cat([log_gamma + joint, pad], 1), 1)
        log_q1 = log_gamma + (labels * joint).sum(1) - norm
        w = self.gamma / (1 + self.gamma)
        return -((1 - w) * log_q0 + w * log_q1).mean()


def _study_nre(options: dict):
    class StudyNRE(simgen.NRE):
        def _loss(self, classifier, extras):
            keys = ("hard", "mix", "temperature")
            return StudyLoss(
                classifier,
                self.num_atoms,
                self.gamma,
                **{k: options[k] for k in keys if k in options},
            )

        def _soft_extras(self, theta, theta_1, joint_log_ratio):
            return {"theta_1": theta_1.float(), "joint_log_ratio": joint_log_ratio.float()}

    return StudyNRE


class MeanLogit(nn.Module):
    """The average of the members' logits (a geometric mean of their ratios)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, theta, x):
        return torch.stack([m(theta, x) for m in self.members]).mean(0)


def fit(variant: str, run, n: int, seed: int):
    """Train ``variant`` on the first ``n`` simulations of ``run``; returns the posterior."""
    options = STUDY[variant]
    atoms = options["atoms"]
    theta_1, log_r = bench._columns(run, n, options.get("bank", atoms - 1))
    nre_class = _study_nre(options)
    members = []
    for member in range(options.get("ensemble", 1)):
        nre = nre_class(
            shower.prior, loss="nrec_soft", num_atoms=atoms,
            hidden_features=options.get("hidden", (64, 64, 64)),
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = nre.fit(
                run.theta[:n], run.x[:n], progress=False, seed=seed + MEMBER_SEED * member,
                theta_1=theta_1, joint_log_ratio=log_r, **options.get("train", {}),
            )  # fmt: skip
        members.append(post)
    if len(members) == 1:
        return members[0]
    classifier = MeanLogit([p.estimator for p in members])
    x_shape = tuple(run.x.shape[1:])
    history = members[0].history
    return MCMCPosterior.from_ratio(classifier, shower.prior, x_shape, history, members[0].mcmc)


def cell(xs, refs, run, variant: str, n: int, seed: int) -> dict:
    """C2ST per observation, training CPU seconds and epochs of one study cell, cached;
    variants of ``bench_joint_ratio`` go through its own cells."""
    if variant not in STUDY:
        return bench.cell(xs, refs, run, variant, n, seed)
    return bench.cell(xs, refs, run, variant, n, seed, fit_cell=fit, name=f"study-{variant}")


def _references(variants) -> int:
    """The most references any variant reads."""
    counts = [STUDY[v].get("bank", STUDY[v]["atoms"] - 1) for v in variants if v in STUDY]
    soft = bench.soft_count(v for v in variants if v not in STUDY) or 1
    return max([soft, *counts])


def run(variants, n: int, seeds, num_obs: int, set_name: str) -> dict:
    """The cells of every variant at ``n`` simulations over ``seeds``."""
    xs, refs = bench.references(num_obs, set_name)
    count = _references(variants)
    results: dict[tuple[int, str], list[dict]] = {}
    for seed in seeds:
        sims = _Lazy(lambda seed=seed: bench.simulations(shower, n, seed, references=count))
        for variant in variants:
            results.setdefault((n, variant), []).append(cell(xs, refs, sims, variant, n, seed))
    return results


class _Lazy:
    """A seed's simulations, run on first use (a rerun whose cells are cached simulates
    nothing)."""

    def __init__(self, make):
        self._make, self._value = make, None

    def __getattr__(self, name):
        if self._value is None:
            self._value = self._make()
        return getattr(self._value, name)


SECTION = "## What limits nrec_soft at 3,300 simulations"


def _grid(variants, budget: int, baseline: int) -> tuple[dict, list[str]]:
    """The report grid (``bench_joint_ratio``'s 5 observations × 4 seeds) of ``variants``,
    with its cached NRE-C at ``baseline`` and the paired rows against it."""
    results = run(variants, budget, range(4), 5, "report")
    xs, refs = bench.references(5, "report")
    results[(baseline, "nre")] = [bench.cell(xs, refs, None, "nre", baseline, s) for s in range(4)]
    plan = [(budget, v) for v in variants]
    return results, bench.paired_rows(results, (baseline, "nre"), plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="nrec_soft-k10", help="the screen's paired baseline")
    parser.add_argument("--screen", default="", help="variants screened on the tuning set")
    parser.add_argument("--screen-seeds", default="0,1")
    parser.add_argument("--screen-obs", type=int, default=3)
    parser.add_argument("--confirm", default="", help="screened again on more tuning seeds")
    parser.add_argument("--confirm-seeds", default="0,1,2,3")
    parser.add_argument("--grid", default="", help="variants run on the report grid")
    parser.add_argument("--budget", type=int, default=3300)
    parser.add_argument("--baseline", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up_torch()
    command = " ".join(sys.argv[1:])
    text = [
        SECTION,
        "",
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.joint_ratio_study {command}`.",
        "",
        "Variants of `nrec_soft` at 3,300 simulations (`benchmarks/joint_ratio_study.py`, "
        "`STUDY`), on the simulations of the main table (the same θ, x and nested "
        "references per seed): `-kK` K atoms, `-wW` a W × 3 classifier, `-lr`, `-p`, `-wd`, "
        "`-ema`, `-b` learning rate, patience, Adam's weight decay, the weights' moving "
        "average and batch size; `-bank39` a random K − 1 of 39 references per row and "
        "step; `-hard1` NRE-C's hard term with fresh atoms added at equal weight; `-mix0.5` "
        "labels half one-hot; `-t2`, `-t0.5` label temperature (biased, the controls); "
        "`-ens2` two classifiers' logits averaged (train s counts both: an ensemble costs "
        "training CPU, not simulations). A seed's simulations, hence its training, are the "
        "same on both observation sets; only the observations differ. C2ST and columns as "
        "in the main table; the paired "
        f"rows are each variant minus `{args.base}` on the same cells (*better*: the whole "
        "interval below 0).",
        "",
    ]
    for name, variants, seeds in (
        ("screen", args.screen, args.screen_seeds),
        ("confirm", args.confirm, args.confirm_seeds),
    ):
        if not variants:
            continue
        seeds = [int(s) for s in seeds.split(",")]
        plan = [(args.budget, v) for v in [args.base, *variants.split(",")]]
        done = run([v for _, v in plan], args.budget, seeds, args.screen_obs, "tuning")
        text += [
            f"*{name.capitalize()}*: the first {args.screen_obs} *tuning* observations × seeds "
            f"{', '.join(map(str, seeds))} ({args.screen_obs * len(seeds)} cells).",
            "",
            "| simulations | variant | C2ST | 95% interval | seed means | train s | sample s "
            "| epochs (best) |",
            "|---|---|---|---|---|---|---|---|",
            *bench.table_rows(done),
            "",
            f"| simulations | variant | C2ST − {args.base} | 95% interval | better |",
            "|---|---|---|---|---|",
            *bench.paired_rows(done, plan[0], plan, strict=True),
            "",
        ]
    if args.grid:
        variants = args.grid.split(",")
        results, target = _grid(variants, args.budget, args.baseline)
        plan = [(args.budget, v) for v in variants]
        text += [
            f"*Report grid*: {', '.join(f'`{v}`' for v in variants)} on the main table's 5 "
            "report observations × 4 seeds (20 cells), paired against NRE-C at "
            f"{args.baseline:,} (*reached*: mean ≤ 0) and against `{variants[0]}` on the "
            "same simulations (*better*: the whole interval below 0).",
            "",
            "| simulations | variant | C2ST | 95% interval | seed means | train s | sample s "
            "| epochs (best) |",
            "|---|---|---|---|---|---|---|---|",
            *bench.table_rows({k: v for k, v in results.items() if k[0] == args.budget}),
            "",
            "| simulations | variant | C2ST − NRE-C at baseline | 95% interval | reached |",
            "|---|---|---|---|---|",
            *target,
            "",
            f"| simulations | variant | C2ST − {variants[0]} | 95% interval | better |",
            "|---|---|---|---|---|",
            *bench.paired_rows(results, plan[0], plan, strict=True),
            "",
        ]
    print("\n".join(text))
    write_section(text)


def study_section() -> list[str]:
    """The lines of the section :data:`SECTION` in ``results_joint_ratio.md`` (none if it
    has none), which ``bench_joint_ratio`` keeps when it rewrites the file."""
    lines = bench.OUT.read_text().split("\n") if bench.OUT.exists() else []
    if SECTION not in lines:
        return []
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def write_section(text: list[str]) -> None:
    """Replace the section :data:`SECTION` of ``results_joint_ratio.md`` (up to the next
    ``## `` heading) by ``text``, or insert it before the screen of the other losses."""
    lines = bench.OUT.read_text().split("\n")
    if SECTION in lines:
        start = lines.index(SECTION)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
    else:
        start = end = next(i for i, line in enumerate(lines) if line.startswith("## Screening"))
    bench.OUT.write_text("\n".join(lines[:start] + text + lines[end:]))


if __name__ == "__main__":
    main()
