"""I.i.d. trials with trained networks on the conjugate Gaussian model (slow).

Each route is trained once (seed 0) on 10,000 single-trial simulations of theta ~ N(0, I_2),
x | theta ~ N(theta, I_2) and asked for 1,000 posterior draws given n = 1, 10 and 100
trials of theta_o (closed form in tests/test_iid.py). Check: each coordinate's mean within
``mean_tol`` posterior sds and its sd within ``sd_tol`` (relative). A learned per-trial
model's bias does not average out over trials while the posterior narrows as 1/sqrt(n),
and the composed routes sum the per-trial score errors (simgen.estimators.compose).
Composed diffusion is trained with ``control_variate=1.0`` and sampled, like composed flow
matching, with the residual floor. Their mean errors at n = 100 (seed 0, seed 1 of the
data and training): diffusion 0.19 and 0.20, flow matching 0.31 and 0.71 (0.94 and 2.87
without the floor), so flow matching gets 0.8 sds there; on seed 0, NLE 0.19 and NRE's
summed logits 0.76, which keep NLE's and a 1.3-sd tolerance. Keeping only the first
trial fails the same check. About 4 CPU-minutes.
"""

from __future__ import annotations

import pytest
import torch
from test_iid import PRIOR, closed_form, trials

import simgen

#: (mean_tol in posterior sds, sd_tol relative), every route and number of trials.
TOLERANCE = (0.4, 0.15)
#: At n = 100, where the routes' measured errors (module docstring) need more.
AT_100 = {"nre": (1.3, 0.2), "flow_matching": (0.8, 0.15)}


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
        front = simgen.NLE(PRIOR)
    elif route == "nre":
        front = simgen.NRE(PRIOR)
    elif route == "diffusion":
        front = simgen.NPE(PRIOR, estimator="diffusion", control_variate=1.0)
    else:
        front = simgen.NPE(PRIOR, estimator=route)
    posterior = front.fit(theta, x, progress=False, seed=0)
    for n in (1, 10, 100):
        tol = AT_100.get(route, TOLERANCE) if n == 100 else TOLERANCE
        xo = trials(n)
        samples = posterior.sample((1000,), x=xo, seed=0)
        assert within(samples, xo, tol), (route, n)
        if n > 1:
            only_first = posterior.sample((1000,), x=xo[:1], seed=0)
            assert not within(only_first, xo, tol), (route, n)
