"""Shared sampling helpers for the diagnostics: seeding, batched posterior draws, simulation.

Posterior interfaces (simgen's and sbi's) take no generator, so the diagnostics seed torch's
global generator inside :func:`torch.random.fork_rng`, which restores it afterwards: a call is
deterministic under its ``seed`` and leaves the caller's random state untouched.

Each use of randomness in a call (the θ, the simulator's noise, the posterior draws) has its
own stream, seeded by :func:`stream_seed` from a hash of ``(seed, purpose)``. Offsets such as
``seed + 1`` would not do: every torch generator seeded with the same integer replays the same
numbers, so the θ of a call with seed 1 would be the noise of the call with seed 0, and two
diagnostics run with consecutive seeds would share draws.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError

__all__ = [
    "Draws",
    "draw",
    "seeded",
    "stream_seed",
    "quiet_kwargs",
    "sample_posterior",
    "simulate_pairs",
]


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for the stream ``purpose`` of a call seeded ``seed``: numpy's
    ``SeedSequence`` hash of both, so distinct ``(seed, purpose)`` pairs give unrelated
    streams whatever the seeds' arithmetic."""
    words = [int(seed) % 2**64, *purpose.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded, restoring it on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def quiet_kwargs(method: Callable[..., Any]) -> dict[str, Any]:
    """``show_progress_bars=False`` if ``method`` accepts it (sbi posteriors do)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return {}
    return {"show_progress_bars": False} if "show_progress_bars" in params else {}


def sample_posterior(
    posterior: Any, xs: Tensor, num_samples: int, chunk_size: int | None = None
) -> Tensor:
    """Draw ``num_samples`` posterior samples for each of ``B`` observations.

    Uses ``posterior.sample_batched`` over chunks of observations when the object has it, so
    that at most ``num_samples * chunk_size`` samples live in memory at once, and falls back to
    a loop over ``posterior.sample`` only when it has not.

    Args:
        posterior: Object with ``sample`` (and ideally ``sample_batched``).
        xs: Observations, shape ``(B, *x_shape)``.
        num_samples: Samples per observation.
        chunk_size: Observations per ``sample_batched`` call; default keeps about 2e6 samples.

    Returns:
        Samples of shape ``(num_samples, B, D)``, on the CPU (where θ and the diagnostics
        are, whatever device the posterior computes on), one chunk at a time.
    """
    num_obs = xs.shape[0]
    if chunk_size is None:
        chunk_size = max(1, 2_000_000 // max(num_samples, 1))
    batched = getattr(posterior, "sample_batched", None)
    parts = []
    with torch.no_grad():
        if batched is not None:
            kwargs = quiet_kwargs(batched)
            for start in range(0, num_obs, chunk_size):
                chunk = xs[start : start + chunk_size]
                parts.append(batched((num_samples,), x=chunk, **kwargs).cpu())
        else:
            kwargs = quiet_kwargs(posterior.sample)
            for i in range(num_obs):
                parts.append(posterior.sample((num_samples,), x=xs[i], **kwargs)[:, None].cpu())
    samples = torch.cat(parts, dim=1)
    if samples.ndim != 3 or samples.shape[:2] != (num_samples, num_obs):
        raise ShapeError(
            f"posterior returned samples of shape {tuple(samples.shape)}, expected "
            f"({num_samples}, {num_obs}, D); sample_batched must return "
            "(*sample_shape, B, D) and sample (*sample_shape, D)."
        )
    return samples


def simulate_pairs(
    prior: Any, simulator: Callable[..., Tensor], num_simulations: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Draw ``theta ~ prior`` and ``x ~ simulator(theta)``, deterministic under ``seed``
    (streams ``"theta"`` and ``"x"`` of :func:`stream_seed`)."""
    with seeded(stream_seed(seed, "theta")):
        theta = prior.sample((num_simulations,))
    x_seed = stream_seed(seed, "x")
    generator = torch.Generator().manual_seed(x_seed)
    try:
        x = simulator(theta, generator=generator)
    except TypeError:
        with seeded(x_seed):
            x = simulator(theta)
    return theta, x


@dataclass
class Draws:
    """Simulated pairs and posterior samples, shared by SBC, TARP, coverage and z-scores.

    Attributes:
        theta: True parameters, shape ``(B, D)``.
        x: Their simulated observations, shape ``(B, *x_shape)``.
        samples: Posterior samples for each observation, shape ``(L, B, D)``.
    """

    theta: Tensor
    x: Tensor
    samples: Tensor


def draw(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    num_simulations: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> Draws:
    r"""Simulate :math:`\theta_i \sim p(\theta)`, :math:`x_i \sim p(x \mid \theta_i)` and draw
    :math:`\theta_{ij} \sim q(\theta \mid x_i)`, deterministically under ``seed``.

    Compute this once and pass it as ``draws=`` to several diagnostics to share the cost.
    """
    if num_simulations < 1 or num_samples < 1:
        raise ConfigError(
            "num_simulations and num_samples must be positive integers, got "
            f"{num_simulations} and {num_samples}."
        )
    theta, x = simulate_pairs(prior, simulator, num_simulations, seed)
    with seeded(stream_seed(seed, "posterior")):
        samples = sample_posterior(posterior, x, num_samples, chunk_size)
    return Draws(theta=theta.to(samples.dtype), x=x, samples=samples)
