r"""Coordinate-wise slice sampling (Neal, 2003), vectorised over chains.

For coordinate :math:`d` in turn, draw a height under the density,

.. math:: \log y = \log\pi(u) - e,\qquad e \sim \mathrm{Exp}(1),

place an interval of width :math:`w_d` uniformly at random around :math:`u_d`, step each end
out by :math:`w_d` while it is above the slice (:math:`\log\pi > \log y`), then draw
:math:`u_d'` uniformly on the interval, shrinking it towards :math:`u_d` on every rejection,
until :math:`\log\pi(u') > \log y`. The kernel leaves :math:`\pi` invariant for any width;
warm-up sets :math:`w_d` to 3 × the chains' spread in coordinate :math:`d`, so that stepping
out rarely needs more than a step or two. Every transition moves (acceptance rate 1) at the
cost of several potential evaluations per coordinate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Potential, Sampler, State, StepInfo, evaluate, uniform

__all__ = ["SliceSampler"]


class SliceSampler(Sampler):
    """Coordinate-wise slice sampling for a batch of chains (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
        width: Initial interval width in every coordinate (until warm-up adapts it).
        max_steps_out: Limit of stepping-out steps on each side.
        max_shrink: Limit of shrinkage steps (a chain that exhausts it stays put).
    """

    def __init__(
        self, potential: Potential, width: float = 1.0, max_steps_out: int = 10,
        max_shrink: int = 30,
    ):  # fmt: skip
        super().__init__(potential)
        self.width = width
        self.max_steps_out = max_steps_out
        self.max_shrink = max_shrink
        self.widths: Tensor | None = None

    def init(self, position: Tensor) -> State:
        self.widths = torch.full_like(position[(0,) * (position.ndim - 1)], self.width)
        return State(position, evaluate(self.potential, position))

    def adapt(self, positions: Tensor) -> None:
        """Warm-up: widths ≈ 3 × the chains' spread in each coordinate, ``positions (*, D)``."""
        spread = positions.reshape(-1, positions.shape[-1]).std(0)
        self.widths = (3.0 * spread).clamp(min=1e-3, max=1e3)

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        assert self.widths is not None, "call init() first"
        u, lp = state.position.clone(), state.log_density.clone()
        batch = lp.shape
        for d in range(u.shape[-1]):
            w = self.widths[d]
            height = lp + torch.log(uniform(batch, lp, generator))
            left = u[..., d] - w * uniform(batch, lp, generator)
            right = left + w

            def at(value: Tensor, d: int = d) -> Tensor:
                v = u.expand(*value.shape, u.shape[-1]).clone()
                v[..., d] = value
                return evaluate(self.potential, v)

            for _ in range(self.max_steps_out):
                out_l, out_r = at(torch.stack([left, right])) > height
                if not bool(out_l.any() or out_r.any()):
                    break
                left = torch.where(out_l, left - w, left)
                right = torch.where(out_r, right + w, right)
            done = torch.zeros(batch, dtype=torch.bool, device=u.device)
            new, new_lp = u[..., d].clone(), lp.clone()
            for _ in range(self.max_shrink):
                cand = left + (right - left) * uniform(batch, lp, generator)
                cand_lp = at(cand)
                ok = (cand_lp > height) & ~done
                new, new_lp = torch.where(ok, cand, new), torch.where(ok, cand_lp, new_lp)
                done |= ok
                if bool(done.all()):
                    break
                shrink_left = ~done & (cand < u[..., d])
                left = torch.where(shrink_left, cand, left)
                right = torch.where(~done & ~shrink_left, cand, right)
            u[..., d], lp = new, new_lp
        return State(u, lp), StepInfo(acceptance_rate=torch.ones(batch, device=u.device))
