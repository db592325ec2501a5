r"""The sampler shape every kernel has, and the evaluation helpers they share.

A **potential** is a log-density up to a constant, ``potential(position) -> (*batch)`` for
positions ``(*batch, D)`` (``batch`` = chains, or chains × observations), evaluated for every
chain in one call; ``-inf`` where the density is zero. A **sampler** is BlackJAX-shaped:

* ``init(position) -> state``: the state of every chain at ``position``;
* ``step(state, generator) -> (state, info)``: one Markov transition of all chains that leaves
  the target invariant, given a ``torch.Generator`` (or ``None``: torch's global one);
* optional warm-up hooks, no-ops by default: ``adapt(positions)`` (re-estimate a proposal
  from recent warm-up positions), ``tune(info)`` (one step-size update per warm-up step),
  ``end_warmup()`` (freeze what was tuned), and ``report()`` (settings worth recording in
  the result, such as the tuned step sizes).

:func:`simgen.mcmc.run_mcmc` drives any :class:`Sampler` through warm-up and sampling; it
calls every hook on every sampler, so it never needs to ask which ones a kernel has.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, MCMCError

__all__ = ["Potential", "State", "StepInfo", "Sampler"]

#: ``(*batch, D) -> (*batch)``: a log-density up to a constant.
Potential = Callable[[Tensor], Tensor]


@dataclass
class State:
    """Where the chains are: ``position`` ``(*batch, D)``, ``log_density`` ``(*batch)`` and,
    for gradient-based kernels, the potential's ``grad`` ``(*batch, D)``."""

    position: Tensor
    log_density: Tensor
    grad: Tensor | None = None


@dataclass
class StepInfo:
    """What one transition did: ``acceptance_rate`` ``(*batch)`` (1 or 0 per chain, 1 for
    slice sampling); for HMC the Metropolis ``accept_prob`` ``(*batch)`` that tunes the step
    size; for HMC and NUTS the ``divergent`` chains ``(*batch)``."""

    acceptance_rate: Tensor
    accept_prob: Tensor | None = None
    divergent: Tensor | None = None


class Sampler(abc.ABC):
    """A vectorised Markov kernel on ``potential`` (see the module docstring).

    Args:
        potential: ``(*batch, D) -> (*batch)`` log-density, up to a constant.
    """

    #: Share of warm-up at its end in which only :meth:`tune` runs (no :meth:`adapt`), so a
    #: tuned step size settles under the final proposal. Zero for kernels that tune nothing.
    tune_only_share: ClassVar[float] = 0.0

    def __init__(self, potential: Potential):
        self.potential = potential

    @classmethod
    def from_options(cls, potential: Potential, warmup: int, options: dict[str, Any]) -> Sampler:
        """The kernel for a run of ``warmup`` warm-up steps with ``sampler_options``."""
        del warmup  # only kernels that schedule their own adaptation need it
        try:
            return cls(potential, **options)
        except TypeError as exc:
            raise ConfigError(f"MCMC: invalid sampler_options for {cls.__name__}: {exc}.") from exc

    @abc.abstractmethod
    def init(self, position: Tensor) -> State:
        """The state of chains at ``position`` ``(*batch, D)``."""

    @abc.abstractmethod
    def step(self, state: State, generator: torch.Generator | None) -> tuple[State, StepInfo]:
        """One transition of every chain."""

    def adapt(self, positions: Tensor) -> None:  # noqa: B027 - a no-op hook by design
        """Warm-up: learn from ``positions`` ``(chains, T, *batch, D)``; nothing by default."""

    def tune(self, info: StepInfo) -> None:  # noqa: B027 - a no-op hook by design
        """Warm-up: one update from a transition's ``info``; nothing by default."""

    def end_warmup(self) -> None:  # noqa: B027 - a no-op hook by design
        """Freeze what warm-up tuned; nothing by default."""

    def report(self) -> dict[str, Any]:
        """Settings worth recording in :class:`~simgen.mcmc.MCMCResult` ``.extra``."""
        return {}


def nan_error(value: Tensor, position: Tensor) -> MCMCError:
    bad = torch.isnan(value)
    return MCMCError(
        f"The potential returned NaN for {int(bad.sum())} of {value.numel()} chains (first "
        f"bad point: {position[bad][0].tolist()}). Return -inf outside the density's support, "
        "and check the estimator was trained on finite data."
    )


def evaluate(potential: Potential, position: Tensor) -> Tensor:
    """``potential(position)`` without a graph; NaN raises :class:`~simgen.errors.MCMCError`."""
    with torch.no_grad():
        value = potential(position)
    if bool(torch.isnan(value).any()):
        raise nan_error(value, position)
    return value


def evaluate_with_grad(potential: Potential, position: Tensor) -> tuple[Tensor, Tensor]:
    """Potential and its gradient at finite positions; the gradient is 0 where the value is
    ±inf."""
    with torch.enable_grad():
        v = position.detach().requires_grad_(True)
        value = potential(v)
        if not value.requires_grad:
            raise ConfigError(
                "method='hmc'/'nuts' needs a potential differentiable by torch (no torch.no_grad,"
                " numpy or .detach() inside it); use method='rwm' or 'slice' otherwise."
            )
        (grad,) = torch.autograd.grad(value.sum(), v)
    value = value.detach()
    if bool(torch.isnan(value).any()):
        raise nan_error(value, position)
    grad = torch.where(torch.isfinite(value)[..., None], grad, torch.zeros_like(grad))
    return value, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``U(0, 1)`` draws of ``shape`` with ``like``'s dtype and device."""
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def matvec(matrix: Tensor, vector: Tensor) -> Tensor:
    """``matrix (*batch, D, D) @ vector (chains, *batch, D)`` → ``(chains, *batch, D)``."""
    return (matrix @ vector[..., None])[..., 0]
