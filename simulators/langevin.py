r"""Overdamped Langevin dynamics in a double-well potential, observed through summaries.

.. math::
    U(y) = h\,(y^2 - 1)^2, \qquad dy_t = -U'(y_t)\,dt + \sqrt{2T}\, dW_t, \qquad y_0 = -1,

with barrier height :math:`h \in [0.5, 3]` and temperature :math:`T \in [0.2, 1.5]`, integrated
by Euler–Maruyama (``NUM_STEPS`` steps of ``DT``). Hopping between the wells is rare when
:math:`h/T` is large (Kramers' rate :math:`\propto e^{-h/T}`); the observation :math:`x` is eight
summaries of the path: mean, standard deviation, mean :math:`|y|`, fraction of time in the
right well, :math:`\log(1 + \text{crossings of } 0)`, autocorrelations at lags 10 and 50, and
the final position.

Latent structure: the path :math:`z = (y_1, \dots, y_K)`. Each Euler–Maruyama step is Gaussian,

.. math::
    \log p(z \mid \theta) = \sum_k \log \mathcal N\big(y_{k+1};\ y_k - U'(y_k)\,\Delta t,\
    2T\Delta t\big),

and :math:`x = s(z)` is a deterministic function of it, so ``simulator.trace`` returns the
path, :math:`\log p(z \mid \theta)` as the joint log-density and its gradient (by autograd) as
the joint score.

**No reference posterior, and why.** :math:`p(x \mid \theta)` is the density of the
push-forward of the 500-dimensional path law through :math:`s`, a many-to-one map with no
noise added, two of whose outputs (the fraction of time in the right well, in steps of
1/501, and the crossing count) are discrete. It has no closed form, and — unlike
``sir`` or ``particle_shower``, where :math:`x` given the latents has a proper density — it
has no unbiased simulation estimate either: a simulated path reproduces a continuous
:math:`x_o` with probability zero, so :math:`p(x_o \mid z)` is a point mass and neither
importance sampling over paths nor a pseudo-marginal sampler applies. (The path likelihood
:math:`p(z \mid \theta)` is exact, but conditioning a path on all eight summaries at once is
a constrained-diffusion problem with no practical exact sampler.) Any reference would be ABC
with a tolerance :math:`\epsilon`, which is the posterior of a different model
(:math:`x` plus :math:`\epsilon`-kernel noise), so none is shipped. To get one: run a long
ABC-SMC on standardised summaries and shrink :math:`\epsilon` until the posterior stops
changing, state the final :math:`\epsilon` with any comparison; or judge estimators on this
task by calibration (SBC, coverage; ``simgen.diagnostics``), which needs no reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from simgen.priors import BoxUniform
from simgen.simulator import Simulator, Trace

__all__ = [
    "prior",
    "simulator",
    "LangevinSimulator",
    "summaries",
    "path_log_prob",
    "theta_o",
    "x_o",
]

NUM_STEPS = 500
DT = 0.02

prior = BoxUniform(low=torch.tensor([0.5, 0.2]), high=torch.tensor([3.0, 1.5]))


def _drift(y: Tensor, h: Tensor) -> Tensor:
    return -4 * h * y * (y * y - 1)


def _acf(y: Tensor, lag: int) -> Tensor:
    c = y - y.mean(-1, keepdim=True)
    var = (c * c).mean(-1).clamp(min=1e-12)
    return (c[:, lag:] * c[:, :-lag]).mean(-1) / var


def summaries(path: Tensor) -> Tensor:
    """The eight path summaries, ``(N, 8)``, of paths ``(N, K + 1)``."""
    crossings = ((path[:, 1:] > 0) != (path[:, :-1] > 0)).sum(-1).to(path.dtype)
    return torch.stack(
        [
            path.mean(-1),
            path.std(-1),
            path.abs().mean(-1),
            (path > 0).to(path.dtype).mean(-1),
            torch.log1p(crossings),
            _acf(path, 10),
            _acf(path, 50),
            path[:, -1],
        ],
        -1,
    )


def path_log_prob(theta: Tensor, path: Tensor) -> Tensor:
    r""":math:`\log p(z \mid \theta)` of paths ``(N, K + 1)`` under Euler–Maruyama; ``(N,)``."""
    h, temp = theta[:, :1], theta[:, 1:]
    mean = path[:, :-1] + _drift(path[:, :-1], h) * DT
    var = 2 * temp * DT
    resid = path[:, 1:] - mean
    return (-0.5 * resid**2 / var - 0.5 * torch.log(2 * torch.pi * var)).sum(-1)


class LangevinSimulator(Simulator):
    """Batched Euler–Maruyama paths, summarised; ``trace`` exposes the path and its density."""

    def path(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulated paths ``(N, NUM_STEPS + 1)`` (a Python loop over time, not simulations)."""
        n = theta.shape[0]
        h, temp = theta[:, 0], theta[:, 1]
        noise = torch.randn((NUM_STEPS, n), generator=generator, dtype=theta.dtype)
        noise = noise * torch.sqrt(2 * temp * DT)
        y = torch.full((n,), -1.0, dtype=theta.dtype)
        ys = [y]
        for k in range(NUM_STEPS):
            y = y + _drift(y, h) * DT + noise[k]
            ys.append(y)
        return torch.stack(ys, -1)

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate summaries ``(N, 8)`` for ``theta`` ``(N, 2)``."""
        return summaries(self.path(theta, generator))

    def trace(
        self, theta: Tensor, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Trace:
        """Paths as latents, summaries as ``x``, path log-density and its θ-gradient."""
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        path = self.path(theta, generator)
        with torch.enable_grad():
            theta_g = theta.detach().clone().requires_grad_(True)
            logp = path_log_prob(theta_g, path)
            (score,) = torch.autograd.grad(logp.sum(), theta_g)
        return Trace(theta, summaries(path), {"path": path}, logp.detach(), score)


simulator = LangevinSimulator()
theta_o = torch.tensor([1.5, 0.6])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
