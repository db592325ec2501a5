"""Argument checks of the posterior interface, shared by every posterior.

One policy for every posterior method: ``sample_shape`` is a tuple of non-negative ints
(:func:`sample_shape_of`); keyword options outside a method's own are a
:class:`~simgen.errors.ConfigError` (:func:`check_options`), except the ones sbi's diagnostics
pass to any posterior (:data:`SBI_PASSED_OPTIONS`), which are accepted and ignored so that
``sbi.diagnostics.run_sbc`` and ``run_tarp`` run on simgen posteriors; an observation is
finite; θ holds finite numbers. :class:`simgen.posterior.Posterior` applies them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, ShapeError, SimulationError, SupportError

__all__ = [
    "SBI_PASSED_OPTIONS",
    "check_options",
    "sample_shape_of",
    "checks_sample_shape",
    "as_tensor",
    "check_finite",
    "check_seed",
    "check_map_options",
    "check_theta",
    "check_x",
    "is_count",
]


#: Keywords sbi's code passes to any posterior it is handed, which every simgen posterior
#: accepts and ignores (simgen draws without progress bars): ``run_sbc`` and ``run_tarp``
#: call ``sample_batched``/``sample`` with ``show_progress_bars`` (through
#: ``get_posterior_samples_on_batch``), and sbi's importance sampler calls
#: ``proposal.sample`` with ``show_progress_bar``. Any other unknown keyword is an error.
SBI_PASSED_OPTIONS = frozenset({"show_progress_bars", "show_progress_bar"})


def check_options(options: Mapping[str, Any], valid: Iterable[str], where: str) -> dict[str, Any]:
    """The keyword ``options`` a posterior method was given, checked against ``valid``.

    Every posterior method that takes ``**options`` passes them through here, so one policy
    holds on every posterior: a keyword in ``valid`` is returned, one of
    :data:`SBI_PASSED_OPTIONS` (not in ``valid``) is dropped, and any other raises a
    :class:`~simgen.errors.ConfigError` naming it and the valid ones.

    Args:
        options: The ``**kwargs`` the method received.
        valid: The keywords it understands.
        where: The method's name for the message, e.g. ``"DirectPosterior.sample"``.

    Returns:
        The options in ``valid``.
    """
    valid = set(valid)
    unknown = sorted(set(options) - valid - SBI_PASSED_OPTIONS)
    if unknown:
        listed = ", ".join(sorted(valid)) if valid else "none"
        raise ConfigError(
            f"{where} got unknown option(s) {unknown}; its options are: {listed} "
            f"(sbi's {', '.join(sorted(SBI_PASSED_OPTIONS))} are accepted and ignored). "
            "Check the spelling, or drop the option."
        )
    return {k: v for k, v in options.items() if k in valid}


def is_count(value: object) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, (bool, np.bool_))
        and value >= 0
    )


def sample_shape_of(sample_shape: Any) -> tuple[int, ...]:
    """``sample_shape`` as a tuple of non-negative ints (an int ``n`` means ``(n,)``).

    Accepts an int, a tuple, a list or a ``torch.Size``; anything else (a bool, a negative
    or fractional size, a string) raises :class:`~simgen.errors.ShapeError`.
    """
    if is_count(sample_shape):
        return (int(sample_shape),)
    if isinstance(sample_shape, (tuple, list, torch.Size)) and all(
        is_count(s) for s in sample_shape
    ):
        return tuple(int(s) for s in sample_shape)
    raise ShapeError(
        f"sample_shape must be a tuple of non-negative integers, e.g. (1000,); got "
        f"{sample_shape!r}."
    )


def checks_sample_shape(method: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``method(self, sample_shape, ...)`` with ``sample_shape`` validated first."""
    if getattr(method, "_checks_sample_shape", False):
        return method

    @functools.wraps(method)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Tensor:
        if args:
            args = (sample_shape_of(args[0]), *args[1:])
        elif "sample_shape" in kwargs:
            kwargs["sample_shape"] = sample_shape_of(kwargs["sample_shape"])
        return method(self, *args, **kwargs)

    checked._checks_sample_shape = True  # type: ignore[attr-defined]
    return checked


def as_tensor(value: Any, name: str) -> Tensor:
    """``value`` (tensor, numpy array or nested list) as a float32 tensor."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    try:
        value = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(
            f"{name} must be a tensor or numpy array; got {type(value).__name__}."
        ) from exc
    return value.float() if value.is_floating_point() or value.dtype != torch.bool else value


def check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ConfigError(f"seed must be an int or None, got {seed!r}.")


def check_finite(x: Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise SimulationError(f"{name} contains NaN or inf; an observation must be finite.")


def check_map_options(num_init: Any, num_iter: Any, learning_rate: Any) -> None:
    """:meth:`~simgen.posterior.Posterior.map`'s settings: counts and a positive step."""
    if not (is_count(num_init) and num_init >= 1):
        raise ConfigError(f"map: num_init must be a positive integer, got {num_init!r}.")
    if not is_count(num_iter):
        raise ConfigError(f"map: num_iter must be a non-negative integer, got {num_iter!r}.")
    if not (
        isinstance(learning_rate, (int, float))
        and not isinstance(learning_rate, bool)
        and 0 < learning_rate < float("inf")
    ):
        raise ConfigError(f"map: learning_rate must be positive, got {learning_rate!r}.")


def check_x(x: Any, x_shape: tuple[int, ...], batched: bool) -> Tensor:
    """Observations as ``(1, *x_shape)`` (``batched=False``) or ``(B, *x_shape)``, finite."""
    x = as_tensor(x, "x")
    if tuple(x.shape) == x_shape:
        x = x[None]
    if not batched and tuple(x.shape) != (1, *x_shape):
        raise ShapeError(
            f"x has shape {tuple(x.shape)}, but this posterior was trained on x of shape "
            f"{x_shape}. Pass one observation of shape {x_shape}; for many "
            "observations at once use sample_batched / log_prob_batched."
        )
    if batched and tuple(x.shape[1:]) != x_shape:
        raise ShapeError(f"x has shape {tuple(x.shape)}; sample_batched needs (B, *{x_shape}).")
    check_finite(x, "x")
    return x


def check_theta(theta: Any, theta_dim: int) -> Tensor:
    """Parameters ``(*, D)``: finite real numbers, ``D`` last."""
    theta = as_tensor(theta, "theta")
    if theta.dtype == torch.bool or theta.is_complex():
        raise ShapeError(f"theta must hold real numbers; got dtype {theta.dtype}.")
    if theta.ndim == 0 or theta.shape[-1] != theta_dim:
        raise ShapeError(
            f"theta has shape {tuple(theta.shape)}; its last dimension must "
            f"be the number of parameters, {theta_dim}."
        )
    if not bool(torch.isfinite(theta).all()):
        raise SupportError(
            "theta contains NaN or inf; log_prob needs finite parameter values (drop those rows)."
        )
    return theta
