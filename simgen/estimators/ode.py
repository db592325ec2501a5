r"""Small vectorised fixed-step ODE/SDE solvers and the ODE change of variables.

All solvers integrate a batch of rows ``y`` ``(M, D)`` along a given time grid ``ts``
(increasing or decreasing), so the whole sample batch moves in lock-step: one network call
per stage for every sample and every observation.

**Change of variables along an ODE.** If :math:`\dot y = v(y, t)`, the density of
:math:`y(t)` obeys :math:`\frac{d}{dt}\log p_t(y(t)) = -\nabla\!\cdot v(y(t), t)`
(Chen et al., 2018). Integrating the augmented state :math:`(y, \ell)` with
:math:`\dot\ell = \nabla\!\cdot v` from the data time to the noise time gives

.. math::
    \log p_{\text{data}}(y_0) = \log p_{\text{noise}}(y_{\text{end}}) + \ell_{\text{end}}.

The divergence is exact (``D`` autograd passes) for :math:`D \le` ``exact_trace_max_dim``
and otherwise Hutchinson's unbiased estimate :math:`\epsilon^\top J_v \epsilon` with one
Rademacher :math:`\epsilon` per row, drawn once per trajectory (Grathwohl et al., 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["SolverConfig", "odeint", "sdeint", "ode_log_prob", "divergence"]

Field = Callable[[Tensor, Tensor], Tensor]
SOLVERS = ("euler", "heun", "rk4")


@dataclass(frozen=True)
class SolverConfig:
    """Validated sampling options shared by the ODE/SDE families.

    Attributes:
        steps: Number of solver steps (ODE or SDE), a positive integer.
        solver: ``"euler"``, ``"heun"`` or ``"rk4"`` for ODEs (SDEs always use
            Euler–Maruyama).
        guidance: Classifier-free guidance weight :math:`w`; the field used is
            :math:`v_\\varnothing + w\\,(v_c - v_\\varnothing)`. ``1.0`` is plain conditional
            sampling; other values need ``context_dropout > 0`` at training.
        exact_trace_max_dim: Largest ``D`` whose divergence is computed exactly; above it
            Hutchinson's estimator is used.
    """

    steps: int = 50
    solver: str = "heun"
    guidance: float = 1.0
    exact_trace_max_dim: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}.")
        if self.solver not in SOLVERS:
            raise ConfigError(f"Unknown ODE solver {self.solver!r}; choose one of {SOLVERS}.")
        if not isinstance(self.guidance, (int, float)) or not self.guidance >= 0:
            raise ConfigError(f"guidance must be a number >= 0, got {self.guidance!r}.")
        m = self.exact_trace_max_dim
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ConfigError(f"exact_trace_max_dim must be an integer >= 0, got {m!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _step(f: Field, t0: Tensor, t1: Tensor, y: Tensor, solver: str) -> Tensor:
    h = t1 - t0
    k1 = f(y, t0)
    if solver == "euler":
        return y + h * k1
    if solver == "heun":
        k2 = f(y + h * k1, t1)
        return y + 0.5 * h * (k1 + k2)
    tm = t0 + 0.5 * h
    k2 = f(y + 0.5 * h * k1, tm)
    k3 = f(y + 0.5 * h * k2, tm)
    k4 = f(y + h * k3, t1)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def odeint(f: Field, y: Tensor, ts: Tensor, solver: str = "heun") -> Tensor:
    """Integrate :math:`\\dot y = f(y, t)` from ``ts[0]`` to ``ts[-1]`` on the grid ``ts``."""
    for t0, t1 in zip(ts[:-1], ts[1:]):
        y = _step(f, t0, t1, y, solver)
    return y


def sdeint(drift: Field, diffusion: Callable[[Tensor], Tensor], y: Tensor, ts: Tensor) -> Tensor:
    """Euler–Maruyama for :math:`dy = a(y,t)\\,dt + g(t)\\,dW` on the grid ``ts``."""
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h = t1 - t0
        y = y + h * drift(y, t0) + diffusion(t0) * h.abs().sqrt() * torch.randn_like(y)
    return y


def divergence(f: Tensor, y: Tensor, noise: Tensor | None, create_graph: bool) -> Tensor:
    """:math:`\\nabla\\cdot f` at ``y`` (exact if ``noise`` is None, else Hutchinson)."""
    if noise is not None:
        (g,) = torch.autograd.grad(f, y, noise, create_graph=create_graph)
        return (g * noise).sum(-1)
    div = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
    for i in range(y.shape[-1]):
        (g,) = torch.autograd.grad(f[..., i].sum(), y, create_graph=create_graph, retain_graph=True)
        div = div + g[..., i]
    return div


def ode_log_prob(
    f: Field, y: Tensor, ts: Tensor, solver: str = "heun", exact_trace_max_dim: int = 4
) -> tuple[Tensor, Tensor]:
    r"""Integrate :math:`(y, \ell)` with :math:`\dot\ell = \nabla\cdot f` along ``ts``.

    Args:
        f: The field, ``f(y (M, D), t) -> (M, D)``.
        y: Start points ``(M, D)`` (the data end of the path).
        ts: Grid from the data time to the noise time.

    Returns:
        ``(y_end, ell_end)``; then :math:`\log p(y) = \log p_{\text{noise}}(y_{\text{end}}) +
        \ell_{\text{end}}`. Differentiable in ``y`` when ``y`` requires grad.
    """
    create_graph = torch.is_grad_enabled() and y.requires_grad
    d = y.shape[-1]
    noise = None
    if d > exact_trace_max_dim:
        noise = torch.randint(0, 2, y.shape, device=y.device).to(y.dtype) * 2 - 1

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            z = state[..., :d]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            v = f(z, t)
            div = divergence(v, z, noise, create_graph)
        if not create_graph:
            v = v.detach()
        return torch.cat([v, div[..., None]], dim=-1)

    zeros = torch.zeros(y.shape[:-1] + (1,), dtype=y.dtype, device=y.device)
    state = odeint(augmented, torch.cat([y, zeros], dim=-1), ts, solver)
    return state[..., :d], state[..., d]
