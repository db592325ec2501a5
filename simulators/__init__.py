"""The simulator collection: one module per simulator.

Each module exposes ``prior``, ``simulator`` (a batched callable ``theta (N, D) -> x (N, ...)``
taking ``generator=``), ``theta_o`` and ``x_o`` (an example observation and its true
parameters) and, where one can be had, ``reference_posterior(x_o, num_samples, seed=0)``.

>>> import simulators
>>> simulators.list()[:2]
['bernoulli_glm', 'cosmology_field']
>>> tm = simulators.get("two_moons")
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["get", "list"]


def list() -> list[str]:  # noqa: A001 - the public name the design asks for
    """Names of every simulator module, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The simulator module called ``name`` (see :func:`list`).

    Raises:
        simgen.errors.UnknownSimulatorError: ``name`` is not one of :func:`list`.
    """
    names = list()
    if not isinstance(name, str) or name not in names:
        from simgen.errors import UnknownSimulatorError

        raise UnknownSimulatorError(
            f"No simulator named {name!r}; choose one of simulators.list(): {names}."
        )
    return importlib.import_module(f"{__name__}.{name}")
