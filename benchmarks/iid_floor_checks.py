r"""What limits composed diffusion at 1,000 simulations: the residual floor and the steps.

One composed-diffusion fit (``control_variate=1.0``) per model of
:mod:`benchmarks.iid_models` on ``bench_iid``'s 1k training data (seed ``--seed``), sampled
at n = 10 and 100 trials of the three observations with the residual floor's
:math:`c` (``simgen.estimators.compose.RESIDUAL_FLOOR``) and the ODE's steps varied. Per
setting: the share of the sampler's draws that are finite and inside the prior's support
(``exp``'s box; NPE rejects the rest), and on those kept draws C2ST against as many exact
ones and the largest coordinate's mean error in exact posterior sds. A large :math:`c` leans on the
linear-Gaussian baseline at small noise: exact for ``gauss``, not for ``exp``, so the two
models bound the choice.

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.iid_floor_checks --seed 1 --draws 200
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings

import torch

import simgen
from benchmarks import warm_up_torch
from benchmarks.bench_iid import ROUTE_OPTIONS, TRIALS, training_data
from benchmarks.iid_models import MODELS
from simgen.diagnostics.c2st import c2st
from simgen.estimators import compose
from simgen.priors import in_support

#: (floor c, ODE steps); the first is the default.
SETTINGS = ((0.3, 50), (1.0, 50), (3.0, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=["gauss", "exp"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warm_up_torch()
    default = compose.RESIDUAL_FLOOR
    print("| model | c | steps | n | inside | C2ST | mean error (sds) | sample CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = MODELS[name]
        theta, x = training_data(model, 1000, args.seed)
        front = simgen.NPE(model.prior, estimator="diffusion", **ROUTE_OPTIONS["diffusion"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            posterior = front.fit(theta, x, progress=False, seed=args.seed)
        est = posterior.estimator
        posterior._draw_rejected = est.draw  # every draw, inside the support or not
        solver = est.solver
        for c, steps in SETTINGS:
            compose.RESIDUAL_FLOOR = c
            est.solver = dataclasses.replace(solver, steps=steps)
            for n in TRIALS:
                scores, errors, cpu, inside = [], [], [], []
                for k, full in enumerate(model.observations()):
                    xo = full[:n]
                    start = time.process_time()
                    draws = posterior.sample((args.draws,), x=xo, seed=args.seed)
                    cpu.append(time.process_time() - start)
                    keep = in_support(model.prior, draws) & draws.isfinite().all(-1)
                    inside.append(float(keep.float().mean()))
                    kept = draws[keep]  # what rejection returns
                    if len(kept) < 10:
                        continue
                    ref = model.reference(xo, len(kept), 10 + k)
                    scores.append(float(c2st(kept, ref)))
                    big = model.reference(xo, 20_000, 99)
                    errors.append(float(((kept.mean(0) - big.mean(0)) / big.std(0)).abs().max()))
                print(
                    f"| {name} | {c} | {steps} | {n} | {statistics.mean(inside):.3f} | "
                    f"{statistics.mean(scores) if scores else float('nan'):.3f} | "
                    f"{statistics.mean(errors) if errors else float('nan'):.2f} | "
                    f"{statistics.mean(cpu):.1f} |",
                    flush=True,
                )
        compose.RESIDUAL_FLOOR = default
        est.solver = solver


if __name__ == "__main__":
    main()
