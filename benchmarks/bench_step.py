"""Where sbi's training time goes: per-step cost of the networks, and of the data loop.

Same process, same data (two_moons-shaped, batch 200 as sbi's default), one thread:
1. one optimiser step of sbi's ``"nsf"`` (nflows, coupling) vs simgen's (zuko, coupling);
2. one step of Adam as torch's per-parameter loop (sbi) vs one fused kernel (simgen);
3. one epoch of batching 9,000 pairs through a ``DataLoader`` with a ``SubsetRandomSampler``
   (sbi's loop) vs ``randperm`` + tensor slicing (simgen's loop), with no model at all.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_step
"""

from __future__ import annotations

import os
import time

import torch
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from simgen.estimators import build_estimator
from simgen.losses import NLELoss, NPELoss

OUT = os.path.join(os.path.dirname(__file__), "results_step.md")


def per_step(loss_fn, params, theta, x, repeats: int = 60, **adam) -> float:
    params = list(params)
    opt = torch.optim.Adam(params, lr=1e-3, **adam)
    for i in range(repeats + 10):
        if i == 10:
            start = time.perf_counter()
        value = loss_fn(theta, x)
        opt.zero_grad()
        value.backward()
        opt.step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    torch.manual_seed(0)
    n, bs = 9000, 200
    theta_all, x_all = torch.rand(n, 2) * 2 - 1, torch.randn(n, 2)
    theta, x = theta_all[:bs], x_all[:bs]

    from sbi.neural_nets import posterior_nn

    sbi_net = posterior_nn("nsf")(theta, x)
    t_sbi = per_step(lambda a, b: sbi_net.loss(a, b).mean(), sbi_net.parameters(), theta, x)
    ours = NPELoss(build_estimator("nsf", 2, (2,)))
    t_ours = per_step(ours, ours.parameters(), theta, x)

    # Adam as a Python loop over the parameters (torch's CPU default) vs one fused kernel
    # (simgen's loop), on NLE's default 10-transform MAF (60 parameter tensors).
    maf = NLELoss(build_estimator("maf", 2, (2,), transforms=10))
    t_loop = min(per_step(maf, maf.parameters(), theta, x) for _ in range(3))
    t_fused = min(per_step(maf, maf.parameters(), theta, x, fused=True) for _ in range(3))

    loader = DataLoader(
        TensorDataset(theta_all, x_all), batch_size=bs, sampler=SubsetRandomSampler(range(n))
    )
    start = time.perf_counter()
    for _ in range(5):
        for _a, _b in loader:
            pass
    t_loader = (time.perf_counter() - start) / 5
    start = time.perf_counter()
    for _ in range(5):
        perm = torch.randperm(n)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i : i + bs]
            _a, _b = theta_all[idx], x_all[idx]
    t_slice = (time.perf_counter() - start) / 5

    lines = [
        "| measurement | sbi | simgen | ratio simgen/sbi |",
        "|---|---|---|---|",
        f"| one optimiser step, nsf, batch {bs} (ms) | {1e3 * t_sbi:.1f} | {1e3 * t_ours:.1f} "
        f"| {t_ours / t_sbi:.2f} |",
        f"| one optimiser step, maf x 10, batch {bs}, Adam loop (sbi's) vs fused (simgen's) "
        f"(ms) | {1e3 * t_loop:.1f} | {1e3 * t_fused:.1f} | {t_fused / t_loop:.2f} |",
        f"| one epoch of batching {n} pairs, no model (ms) | {1e3 * t_loader:.1f} | "
        f"{1e3 * t_slice:.1f} | {t_slice / t_loader:.2f} |",
    ]
    table = "\n".join(lines)
    print(table)
    with open(OUT, "w") as fh:
        fh.write("Command: `OMP_NUM_THREADS=1 python -m benchmarks.bench_step`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
