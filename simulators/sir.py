r"""A stochastic SIR epidemic (discrete-time chain binomial) in a small population.

With :math:`S + I + R = N_\text{pop} = 1000` and :math:`I_0 = 10`, each day

.. math::
    \Delta_{S\to I} \sim \mathrm{Bin}\big(S, 1 - e^{-\beta I / N_\text{pop}}\big), \qquad
    \Delta_{I\to R} \sim \mathrm{Bin}\big(I, 1 - e^{-\gamma}\big),

for 160 days. Parameters: contact rate :math:`\beta \sim \mathrm{LogNormal}(\log 0.4, 0.5)`
and recovery rate :math:`\gamma \sim \mathrm{LogNormal}(\log 1/8, 0.2)` (sbibm's prior). The
observation is the number infected on days 16, 32, ..., 160, each reported through
:math:`\mathrm{Bin}(I_t, 0.5)` testing, shape ``(10,)``. Epidemics can die out early, which
makes the likelihood bimodal in places.

The latents are the daily transitions; with partial, noisy observation the likelihood is a
sum over all paths, so there is no reference posterior here (use a long ABC or
particle-MCMC run if one is needed).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, LogNormal

__all__ = ["prior", "simulator", "theta_o", "x_o", "POPULATION", "NUM_DAYS"]

POPULATION = 1000.0
INITIAL_INFECTED = 10.0
NUM_DAYS = 160
OBSERVED_DAYS = torch.arange(16, NUM_DAYS + 1, 16)
REPORTING = 0.5

prior = Independent(LogNormal(torch.log(torch.tensor([0.4, 0.125])), torch.tensor([0.5, 0.2])), 1)


def simulator(theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Simulate reported infections ``(N, 10)`` for ``theta = (β, γ)`` of shape ``(N, 2)``.

    A Python loop over days (160 steps), each vectorised over the ``N`` simulations.
    """
    beta, gamma = theta[:, 0], theta[:, 1]
    s = torch.full_like(beta, POPULATION - INITIAL_INFECTED)
    i = torch.full_like(beta, INITIAL_INFECTED)
    p_rec = 1 - torch.exp(-gamma)
    observed = []
    for day in range(1, NUM_DAYS + 1):
        p_inf = 1 - torch.exp(-beta * i / POPULATION)
        new_inf = torch.binomial(s, p_inf, generator=generator)
        new_rec = torch.binomial(i, p_rec, generator=generator)
        s, i = s - new_inf, i + new_inf - new_rec
        if day % 16 == 0:
            observed.append(i)
    infected = torch.stack(observed, -1)
    return torch.binomial(infected, torch.full_like(infected, REPORTING), generator=generator)


theta_o = torch.tensor([0.4, 0.125])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(3))[0]
