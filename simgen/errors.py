"""Errors raised by simgen.

Every mistake a user can make has its own subclass of :class:`SimgenError`, and every message
says what was wrong *and* how to fix it. ``SimgenError`` derives from ``ValueError`` so that
code written against generic validation errors keeps working.

The one exception that is not a ``SimgenError`` is :class:`SimulationInterrupted`: a Ctrl-C
is no mistake, and it must stop a program through ``except ValueError`` and ``except
Exception`` handlers as a plain ``KeyboardInterrupt`` does, so it derives from
``KeyboardInterrupt`` alone.
"""

from __future__ import annotations

__all__ = [
    "SimgenError",
    "ShapeError",
    "SimulationError",
    "SimulationInterrupted",
    "SimulationStopped",
    "BankError",
    "PriorError",
    "SupportError",
    "UnknownEstimatorError",
    "UnknownSimulatorError",
    "ConfigError",
    "ModelFileError",
    "NoDensityError",
    "NotFittedError",
    "MCMCError",
    "SimulationWarning",
    "ConvergenceWarning",
]


class SimgenError(ValueError):
    """Base class of every error simgen raises on purpose."""


class ShapeError(SimgenError):
    """An array has the wrong number of dimensions, rows or features."""


class SimulationError(SimgenError):
    """A simulator failed, or produced NaN/inf values, beyond what can be excluded."""


class SimulationInterrupted(KeyboardInterrupt):
    """A simulation run was interrupted (Ctrl-C); ``partial`` holds what had finished.

    A ``KeyboardInterrupt`` and nothing else (not a ``SimgenError``, hence not a
    ``ValueError`` nor an ``Exception``): ``except KeyboardInterrupt`` catches it, and no
    handler for errors swallows a Ctrl-C. Catch it by name to keep ``partial``.
    """

    def __init__(self, message: str, partial: object = None):
        super().__init__(message)
        self.partial = partial


class SimulationStopped(SimulationError):
    """A run stopped on an error after some batches finished; ``partial`` holds those
    (or None when they are in a bank, which the message names)."""

    def __init__(self, message: str, partial: object = None):
        super().__init__(message)
        self.partial = partial


class BankError(SimulationError):
    """A simulation bank is in use by another run, damaged, or belongs to another run."""


class PriorError(SimgenError):
    """The prior is not a usable distribution (no ``sample``/``log_prob``, wrong event shape)."""


class SupportError(SimgenError):
    """Parameters lie outside the prior's support."""


class UnknownEstimatorError(SimgenError):
    """An estimator (or embedding net, or method) name is not known."""


class UnknownSimulatorError(SimgenError):
    """A simulator name is not in the collection (``simulators.list()``)."""


class ConfigError(SimgenError):
    """A training or sampling option has an invalid value."""


class ModelFileError(SimgenError):
    """A model file is missing, corrupt, from another program, or of an unknown version."""


class NoDensityError(SimgenError):
    """The estimator is sample-only (e.g. a GAN) and cannot evaluate a density."""


class NotFittedError(SimgenError):
    """A method needs a trained estimator, or a default observation, that is not there."""


class MCMCError(SimgenError):
    """An MCMC potential returned NaN, or the sampler could not be initialised."""


class SimulationWarning(UserWarning):
    """Some simulations failed and were excluded (the count is in the message)."""


class ConvergenceWarning(UserWarning):
    """MCMC chains did not converge (R-hat above threshold) or training did not improve."""
