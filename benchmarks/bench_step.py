"""Where sbi's training time goes: per-step cost of the networks, and of the data loop.

Same process, same data (two_moons-shaped, batch 200 as sbi's default), one thread:
1. one optimiser step of sbi's ``"nsf"`` (nflows, coupling) vs simgen's (zuko, coupling);
2. one step of Adam as torch's per-parameter loop (sbi) vs one fused kernel (simgen);
3. one epoch of batching 9,000 pairs through a ``DataLoader`` with a ``SubsetRandomSampler``
   (sbi's loop) vs ``randperm`` + tensor slicing (simgen's loop), with no model at all;
4. gradient-norm clipping of the diffusion net's gradients: ``torch.nn.utils.clip_grad_norm_``
   (sbi's) vs simgen's three foreach kernels (the same scaling);
5. the best-weights snapshot taken at each validation improvement: ``deepcopy`` of the
   state dict (sbi's) vs tensor clones (simgen's).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_step
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

from simgen.estimators import build_estimator
from simgen.losses import NLELoss, NPELoss
from simgen.training import _clip_grad_norm_, _snapshot

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


def per_call(fn, repeats: int = 500) -> float:
    """Best of three mean wall times of ``fn()`` over ``repeats`` calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


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

    # The diffusion family's net (slcp-shaped: 5 parameters, 8 data), its gradients on a batch.
    diffusion = NPELoss(build_estimator("diffusion", 5, (8,)))
    diffusion.estimator.fit_standardization(torch.randn(1000, 5), torch.randn(1000, 8))
    diffusion(torch.randn(256, 5), torch.randn(256, 8)).backward()
    params = [p for p in diffusion.parameters() if p.requires_grad]
    t_clip_torch = per_call(lambda: torch.nn.utils.clip_grad_norm_(params, 5.0))
    t_clip_ours = per_call(lambda: _clip_grad_norm_(params, 5.0))
    t_copy = per_call(lambda: copy.deepcopy(diffusion.state_dict()), 200)
    t_snap = per_call(lambda: _snapshot(diffusion), 200)

    lines = [
        "| measurement | sbi | simgen | ratio simgen/sbi |",
        "|---|---|---|---|",
        f"| one optimiser step, nsf, batch {bs} (ms) | {1e3 * t_sbi:.1f} | {1e3 * t_ours:.1f} "
        f"| {t_ours / t_sbi:.2f} |",
        f"| one optimiser step, maf x 10, batch {bs}, Adam loop (sbi's) vs fused (simgen's) "
        f"(ms) | {1e3 * t_loop:.1f} | {1e3 * t_fused:.1f} | {t_fused / t_loop:.2f} |",
        f"| one epoch of batching {n} pairs, no model (ms) | {1e3 * t_loader:.1f} | "
        f"{1e3 * t_slice:.1f} | {t_slice / t_loader:.2f} |",
        f"| gradient clipping, diffusion net, clip_grad_norm_ (sbi's) vs foreach (simgen's) "
        f"(ms) | {1e3 * t_clip_torch:.3f} | {1e3 * t_clip_ours:.3f} | "
        f"{t_clip_ours / t_clip_torch:.2f} |",
        f"| best-weights snapshot, diffusion net, deepcopy (sbi's) vs tensor clones "
        f"(simgen's) (ms) | {1e3 * t_copy:.3f} | {1e3 * t_snap:.3f} | {t_snap / t_copy:.2f} |",
    ]
    table = "\n".join(lines)
    print(table)
    with open(OUT, "w") as fh:
        fh.write("Command: `OMP_NUM_THREADS=1 python -m benchmarks.bench_step`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
