"""The simulator interface.

A simulator maps parameters to observations, batched: ``simulator(theta) -> x`` with ``theta``
of shape ``(N, D)`` and ``x`` of shape ``(N, *x_shape)``. Randomness comes in as an argument:
simgen passes a seeded :class:`torch.Generator` as ``generator=`` when the callable accepts it,
and otherwise seeds torch's global generator around the call, so that the same seed always
gives the same simulations.

Two ways in:

* any batched function (wrapped by :class:`FunctionSimulator`, or passed directly — simgen
  wraps it for you);
* a subclass of :class:`Simulator`, which may also offer ``trace(theta, seed=...)`` returning
  the latent variables, the joint log-density :math:`\\log p(x, z \\mid \\theta)` and the
  joint score :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)`.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Simulator", "FunctionSimulator", "Trace", "as_simulator", "accepts_generator"]


@dataclass
class Trace:
    """One batched run of a simulator with its latent structure exposed.

    Attributes:
        theta: Parameters, ``(N, D)``.
        x: Observables, ``(N, *x_shape)``.
        latents: Name → tensor of every latent site, leading dimension ``N`` (variable-size
            latents are padded, with a boolean ``"<name>_mask"`` entry beside them).
        joint_log_prob: :math:`\\log p(x, z \\mid \\theta)`, ``(N,)``.
        joint_score: :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)`, ``(N, D)``.
    """

    theta: Tensor
    x: Tensor
    latents: dict[str, Tensor] = field(default_factory=dict)
    joint_log_prob: Tensor | None = None
    joint_score: Tensor | None = None


class Simulator(abc.ABC):
    """A batched stochastic simulator :math:`x \\sim p(x \\mid \\theta)`."""

    @abc.abstractmethod
    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate ``x`` of shape ``(N, *x_shape)`` for ``theta`` of shape ``(N, D)``."""


def accepts_generator(fn: Callable) -> bool:
    """Whether ``fn`` takes a ``generator=`` keyword (then simgen passes a seeded one)."""
    if isinstance(fn, Simulator):
        return True
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params


class FunctionSimulator(Simulator):
    """Wrap a plain batched function ``fn(theta) -> x`` (or ``fn(theta, generator=g)``).

    Without a ``generator`` keyword the function draws from torch's global generator, which
    simgen seeds (inside :func:`torch.random.fork_rng`, leaving the caller's state untouched).
    """

    def __init__(self, fn: Callable[..., Tensor]):
        self.fn = fn
        self._takes_generator = accepts_generator(fn)

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self._takes_generator:
            return self.fn(theta, generator=generator)
        if generator is None:
            return self.fn(theta)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.fn(theta)

    def __repr__(self) -> str:
        return f"FunctionSimulator({getattr(self.fn, '__name__', self.fn)!r})"


def as_simulator(obj: Callable | Simulator) -> Simulator:
    """Return ``obj`` if it is a :class:`Simulator`, else wrap the callable."""
    if isinstance(obj, Simulator):
        return obj
    if not callable(obj):
        from .errors import SimulationError

        raise SimulationError(
            f"A simulator must be callable as simulator(theta) -> x; got {type(obj).__name__}."
        )
    return FunctionSimulator(obj)
