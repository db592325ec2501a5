"""Side-by-side benchmarks against sbi. Run ``python -m benchmarks`` (or ``./run bench``)."""

import torch


def warm_up_torch() -> None:
    """Pay torch's one-off lazy imports before anything is timed.

    The first ``torch.optim.Adam`` of a process imports ``torch._dynamo`` (about 1-1.3 CPU
    seconds on the benchmark machine, commit 2175df7). Whichever library trains first in a
    process would otherwise be charged for it, so every timing benchmark calls this once
    before its first timed fit.
    """
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
