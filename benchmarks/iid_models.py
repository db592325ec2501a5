r"""The i.i.d.-trials models of ``bench_iid``: each with an exact posterior for any n.

``gauss`` (the model the composed routes' defaults were chosen on):
:math:`\theta \sim \mathcal N(0, I_2)`, :math:`x_i \mid \theta \sim \mathcal N(\theta, I_2)`,
:math:`p(\theta \mid x_{1:n}) = \mathcal N(\sum_i x_i / (n + 1), I_2 / (n + 1))`.

``exp`` (a non-Gaussian check): two exponential rates on a box,
:math:`\theta_j \sim \mathcal U[0.5, 3]`, :math:`x_{ij} \mid \theta \sim
\operatorname{Exp}(\theta_j)` (mean :math:`1/\theta_j`), so
:math:`p(\theta_j \mid x_{1:n}) \propto \theta_j^n e^{-\theta_j S_j}` on :math:`[0.5, 3]`,
:math:`S_j = \sum_i x_{ij}`: independent Gamma(:math:`n + 1`, rate :math:`S_j`) laws truncated
to the box, drawn exactly by inverting their regularised incomplete gamma functions. One trial
gives a skewed, box-truncated posterior, and the likelihood is a scale family in x, which
no linear-Gaussian baseline fits.

Each model has three observations of 100 trials (θ from the prior, seeds 100-102; trials
seeds 200-202); the observation of n trials is the first n of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from torch.distributions import Distribution, MultivariateNormal

from simgen.priors import BoxUniform

D = 2
MAX_TRIALS = 100
NUM_OBS = 3
LOW, HIGH = 0.5, 3.0


@dataclass(frozen=True)
class Model:
    """A conjugate i.i.d. model: its prior, simulator, and exact posterior draws.

    ``reference(x, num, seed)`` returns ``num`` exact draws given trials ``x`` ``(n, D)``.
    """

    name: str
    prior: Distribution
    simulator: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    reference: Callable[[torch.Tensor, int, int], torch.Tensor]
    draw_theta: Callable[[int | None, torch.Generator], torch.Tensor]

    def observations(self) -> list[torch.Tensor]:
        """``NUM_OBS`` observations of ``MAX_TRIALS`` trials each."""
        out = []
        for k in range(NUM_OBS):
            theta = self.draw_theta(None, torch.Generator().manual_seed(100 + k))
            g = torch.Generator().manual_seed(200 + k)
            out.append(self.simulator(theta.expand(MAX_TRIALS, D), g))
        return out


def _gauss_simulator(theta: torch.Tensor, generator: torch.Generator | None = None):
    return theta + torch.randn(theta.shape, generator=generator)


def _gauss_reference(x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    return x.sum(0) / (n + 1) + torch.randn(num, D, generator=g) / (n + 1) ** 0.5


def _exp_simulator(theta: torch.Tensor, generator: torch.Generator | None = None):
    unit = torch.empty(theta.shape).exponential_(1.0, generator=generator)
    return unit / theta


def _exp_reference(x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """Inverse-CDF draws of the truncated Gamma(n + 1, S_j) laws, on whichever tail
    (lower or upper regularised function) keeps the box's probabilities accurate."""
    a = len(x) + 1
    rate = x.double().sum(0).numpy()
    u = np.random.default_rng(seed).random((num, D))
    out = np.empty((num, D))
    for j in range(D):
        lo, hi = rate[j] * LOW, rate[j] * HIGH
        if special.gammainc(a, lo) < 0.5:  # the mass sits low: lower function
            p_lo, p_hi = special.gammainc(a, lo), special.gammainc(a, hi)
            out[:, j] = special.gammaincinv(a, p_lo + u[:, j] * (p_hi - p_lo))
        else:
            q_lo, q_hi = special.gammaincc(a, lo), special.gammaincc(a, hi)
            out[:, j] = special.gammainccinv(a, q_lo - u[:, j] * (q_lo - q_hi))
        out[:, j] = np.clip(out[:, j] / rate[j], LOW, HIGH)
    return torch.from_numpy(out).float()


def _shape(num: int | None) -> tuple[int, ...]:
    return (D,) if num is None else (num, D)


MODELS = {
    "gauss": Model(
        "gauss",
        MultivariateNormal(torch.zeros(D), torch.eye(D)),
        _gauss_simulator,
        _gauss_reference,
        lambda num, g: torch.randn(_shape(num), generator=g),
    ),
    "exp": Model(
        "exp",
        BoxUniform(LOW * torch.ones(D), HIGH * torch.ones(D)),
        _exp_simulator,
        _exp_reference,
        lambda num, g: LOW + (HIGH - LOW) * torch.rand(_shape(num), generator=g),
    ),
}
