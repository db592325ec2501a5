"""JSON specs for common priors, so saved models carry their prior without pickling.

Covered: :class:`~simgen.priors.BoxUniform` (and sbi's), ``MultivariateNormal``, and
``Independent`` over ``Normal``, ``Uniform``, ``LogNormal``, ``Gamma``, ``Beta``,
``Exponential``, ``HalfNormal``. Any other prior saves as ``None``; pass it again to
:func:`simgen.load` (``prior=``).

:func:`prior_on` places a prior on a device and dtype: the priors above are rebuilt from their
spec there (float32 and float64 values survive the spec exactly), any other is wrapped in a
:class:`~simgen.priors.RelocatedPrior`.
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

from .priors import BoxUniform, RelocatedPrior, prior_home

__all__ = ["prior_to_spec", "prior_from_spec", "prior_on"]

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


def prior_from_spec(
    spec: dict[str, Any],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Distribution:
    """Rebuild a prior from :func:`prior_to_spec`'s output, its tensors on ``device`` in
    ``dtype``."""
    kind = spec["type"]

    def tensor(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    if kind == "BoxUniform":
        return BoxUniform(tensor(spec["low"]), tensor(spec["high"]), dtype=dtype)
    if kind == "MultivariateNormal":
        return MultivariateNormal(tensor(spec["loc"]), scale_tril=tensor(spec["scale_tril"]))
    if kind == "Independent":
        cls, params = _UNIVARIATE[spec["base"]]
        base = cls(*[tensor(spec["params"][p]) for p in params])
        return Independent(base, spec["ndims"])
    raise KeyError(kind)


def prior_on(prior: Distribution, device: str | torch.device, dtype: torch.dtype) -> Distribution:
    """``prior`` with every tensor on ``device`` in ``dtype``: rebuilt from its spec when
    simgen knows it, else a :class:`~simgen.priors.RelocatedPrior`; ``prior`` itself when it
    already lives there."""
    device = torch.device(device)
    if isinstance(prior, RelocatedPrior):
        prior = prior.base
    if prior_home(prior) == (device, dtype):
        return prior
    spec = prior_to_spec(prior)
    if spec is None:
        return RelocatedPrior(prior, device, dtype)
    return prior_from_spec(spec, device=device, dtype=dtype)
