"""Estimator names → classes, imported lazily so that ``import simgen`` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import UnknownEstimatorError
from .base import ConditionalEstimator

__all__ = ["ESTIMATORS", "estimator_class", "build_estimator", "from_spec"]

#: Registry name → "module:Class". One family per module.
ESTIMATORS: dict[str, str] = {
    "nsf": "simgen.estimators.flows:NSF",
    "maf": "simgen.estimators.flows:MAF",
    "realnvp": "simgen.estimators.flows:RealNVP",
    "flow_matching": "simgen.estimators.flow_matching:FlowMatching",
    "diffusion": "simgen.estimators.diffusion:Diffusion",
    "consistency": "simgen.estimators.consistency:Consistency",
    "vae": "simgen.estimators.vae:VAE",
    "gan": "simgen.estimators.gan:GAN",
    "joint_transformer": "simgen.estimators.joint_transformer:JointTransformer",
}


def estimator_class(name: str) -> type[ConditionalEstimator]:
    """The class registered as ``name``; :class:`UnknownEstimatorError` otherwise."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise UnknownEstimatorError(
            f"Unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}."
        )
    module_name, cls_name = ESTIMATORS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnknownEstimatorError(
            f"Estimator {name!r} is not available in this version of simgen ({exc})."
        ) from exc
    return getattr(module, cls_name)


def build_estimator(
    name: str,
    target_dim: int,
    context_shape: Sequence[int],
    embedding_net: nn.Module | None = None,
    **options: Any,
) -> ConditionalEstimator:
    """Build a fresh estimator of family ``name`` with the family's ``options``.

    An option the family does not have raises :class:`~simgen.errors.ConfigError` naming it
    and the family's options (:meth:`~simgen.estimators.base.ConditionalEstimator.option_names`).
    """
    cls = estimator_class(name)
    cls.check_options(options)
    try:
        return cls(target_dim, context_shape, embedding_net, **options)
    except TypeError as exc:
        raise UnknownEstimatorError(
            f"Invalid options {sorted(options)} for estimator {name!r}: {exc}. See "
            f"help({cls.__module__}.{cls.__name__})."
        ) from exc


#: Wrappers around a family (not selectable by name; rebuilt from their specs only).
WRAPPERS: dict[str, str] = {"transformed": "simgen.estimators.transformed:TransformedEstimator"}


def from_spec(spec: dict[str, Any], embedding_net: nn.Module | None = None) -> ConditionalEstimator:
    """Rebuild an (untrained) estimator from its ``spec``; load the weights afterwards."""
    if spec.get("name") in WRAPPERS:
        module_name, cls_name = WRAPPERS[spec["name"]].split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        return cls.from_spec(spec, embedding_net)
    return estimator_class(spec["name"]).from_spec(spec, embedding_net)
