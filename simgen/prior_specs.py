"""JSON specs for common priors, so saved models carry their prior without pickling.

Covered: :class:`~simgen.priors.BoxUniform` (and sbi's), ``MultivariateNormal``, and
``Independent`` over ``Normal``, ``Uniform``, ``LogNormal``, ``Gamma``, ``Beta``,
``Exponential``, ``HalfNormal``. Any other prior saves as ``None``; pass it again to
:func:`simgen.load` (``prior=``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import (
    Beta,
    Distribution,
    Exponential,
    Gamma,
    HalfNormal,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    Uniform,
)

from .priors import BoxUniform

__all__ = ["prior_to_spec", "prior_from_spec"]

_UNIVARIATE: dict[str, tuple[type[Distribution], tuple[str, ...]]] = {
    "Normal": (Normal, ("loc", "scale")),
    "Uniform": (Uniform, ("low", "high")),
    "LogNormal": (LogNormal, ("loc", "scale")),
    "Gamma": (Gamma, ("concentration", "rate")),
    "Beta": (Beta, ("concentration1", "concentration0")),
    "Exponential": (Exponential, ("rate",)),
    "HalfNormal": (HalfNormal, ("scale",)),
}


def _list(t: torch.Tensor) -> list:
    return t.detach().cpu().double().tolist()


def prior_to_spec(prior: Distribution) -> dict[str, Any] | None:
    """A JSON-able description of ``prior``, or ``None`` if it is not one simgen knows."""
    if isinstance(prior, BoxUniform):
        return {"type": "BoxUniform", "low": _list(prior.low), "high": _list(prior.high)}
    if isinstance(prior, MultivariateNormal):
        return {
            "type": "MultivariateNormal",
            "loc": _list(prior.loc),
            "scale_tril": _list(prior.scale_tril),
        }
    if isinstance(prior, Independent) and type(prior.base_dist).__name__ in _UNIVARIATE:
        base = prior.base_dist
        cls, params = _UNIVARIATE[type(base).__name__]
        if type(base) is not cls:
            return None
        if (
            isinstance(base, Uniform)
            and prior.reinterpreted_batch_ndims == 1
            and base.low.ndim == 1
        ):
            return {"type": "BoxUniform", "low": _list(base.low), "high": _list(base.high)}
        return {
            "type": "Independent",
            "base": type(base).__name__,
            "ndims": prior.reinterpreted_batch_ndims,
            "params": {p: _list(getattr(base, p)) for p in params},
        }
    return None


def prior_from_spec(spec: dict[str, Any]) -> Distribution:
    """Rebuild a prior from :func:`prior_to_spec`'s output."""
    kind = spec["type"]
    if kind == "BoxUniform":
        return BoxUniform(torch.tensor(spec["low"]), torch.tensor(spec["high"]))
    if kind == "MultivariateNormal":
        return MultivariateNormal(
            torch.tensor(spec["loc"], dtype=torch.float32),
            scale_tril=torch.tensor(spec["scale_tril"], dtype=torch.float32),
        )
    if kind == "Independent":
        cls, params = _UNIVARIATE[spec["base"]]
        base = cls(*[torch.tensor(spec["params"][p], dtype=torch.float32) for p in params])
        return Independent(base, spec["ndims"])
    raise KeyError(kind)
