r"""The No-U-Turn sampler of pyro (Hoffman & Gelman, 2014), as a :class:`~simgen.mcmc.Sampler`.

``pyro.infer.NUTS`` with a ``potential_fn`` over the same unconstrained space as the other
kernels. pyro's ``potential_fn`` is the potential *energy* :math:`-\log\pi(u)` of a dict of
sites; here the single site ``"u"`` is one chain's ``(D,)`` position, and every (chain,
observation) pair gets its own pyro kernel, stepped in turn (the other observations of the
batch are held at their starting points while the potential is evaluated batch-wise). pyro
adapts the step size and a diagonal mass matrix during the first ``warmup`` steps itself, so
this kernel's warm-up hooks stay no-ops. One pyro kernel advances one chain at a time: this
is the reference sampler rather than the fast one, best run with few chains (MCMC posteriors
use 4 unless told otherwise).

pyro draws from torch's global generator; each step re-seeds it (inside a forked RNG state)
from the run's generator, so a seeded run is reproducible and leaves the global state alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Potential, Sampler, State, StepInfo, evaluate, nan_error

__all__ = ["PyroNUTS"]


class PyroNUTS(Sampler):
    """pyro's NUTS, one pyro kernel per (chain, observation) pair (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, differentiable by torch.
        warmup: Steps in which pyro adapts step size and mass matrix.
        **options: Any ``pyro.infer.NUTS`` option (e.g. ``max_tree_depth=8``);
            ``target_accept_prob`` defaults to 0.8, as for :mod:`simgen.mcmc.hmc`.
    """

    def __init__(self, potential: Potential, warmup: int = 100, **options: Any):
        super().__init__(potential)
        self.warmup = warmup
        self.options = {"target_accept_prob": 0.8, **options}
        from pyro.infer import NUTS

        NUTS(potential_fn=lambda params: torch.zeros(()), **self.options)  # bad options fail here
        self._kernels: list[Any] = []
        self._params: list[dict[str, Tensor]] = []
        self._start: Tensor | None = None
        self._shape: tuple[int, ...] = ()
        self._steps = 0
        self._divergences: list[int] = []

    @classmethod
    def from_options(cls, potential: Potential, warmup: int, options: dict[str, Any]) -> Sampler:
        return super().from_options(potential, warmup, {"warmup": warmup, **options})

    def init(self, position: Tensor) -> State:
        from pyro.infer import NUTS

        chains, d = position.shape[0], position.shape[-1]
        self._shape = tuple(position.shape)
        self._start = position.detach().reshape(chains, -1, d)
        self._kernels, self._params = [], []
        for c in range(chains):
            for b in range(self._start.shape[1]):
                kernel = NUTS(potential_fn=self._energy(c, b), **self.options)
                kernel.initial_params = {"u": self._start[c, b].clone()}
                self._kernels.append(kernel)
                self._params.append(dict(kernel.initial_params))
        self._steps = 0
        self._divergences = [0] * len(self._kernels)
        return State(position, evaluate(self.potential, position))

    def _energy(self, c: int, b: int) -> Any:
        assert self._start is not None
        start = self._start
        batch_numel = start.shape[1]

        def energy(params: dict[str, Tensor]) -> Tensor:
            full = start[c : c + 1].clone()
            full[0, b] = params["u"]
            value = self.potential(full.reshape(1, *self._batch, start.shape[-1]))
            value = value.reshape(batch_numel)[b]
            if bool(torch.isnan(value)):
                raise nan_error(value[None], params["u"][None].detach())
            return -value

        return energy

    @property
    def _batch(self) -> tuple[int, ...]:
        return self._shape[1:-1]

    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            if self._steps == 0:
                for kernel in self._kernels:
                    kernel.setup(self.warmup)
            for i, kernel in enumerate(self._kernels):
                self._params[i] = kernel.sample(self._params[i])
        self._steps += 1
        chains, d = self._shape[0], self._shape[-1]
        new = torch.stack([p["u"].detach() for p in self._params])
        new = new.reshape(chains, *self._batch, d).to(state.position)
        divergent = torch.zeros(len(self._kernels), dtype=torch.bool)
        if self._steps > self.warmup:  # pyro counts divergences after its warm-up only
            for i, kernel in enumerate(self._kernels):
                count = len(kernel.diagnostics()["divergences"])
                divergent[i] = count > self._divergences[i]
                self._divergences[i] = count
        moved = (new != state.position).any(-1)
        log_density = evaluate(self.potential, new)
        info = StepInfo(
            acceptance_rate=moved.float(),
            divergent=divergent.reshape(chains, *self._batch).to(moved.device),
        )
        return State(new, log_density), info
