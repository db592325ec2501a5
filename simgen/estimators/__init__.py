"""Conditional density estimators, one family per module, all ``forward(context) -> Distribution``.

Families register their names in :mod:`simgen.estimators.registry`. Flow matching and
diffusion take their network options as a :class:`NetConfig` and their sampling options as a
:class:`SolverConfig` (or as keywords naming the fields).
"""

from ._nets import NetConfig
from .base import ConditionalEstimator, DensityEstimator, SampleOnlyEstimator, Standardizer
from .ode import SolverConfig
from .registry import ESTIMATORS, build_estimator, estimator_class, from_spec

__all__ = [
    "ConditionalEstimator",
    "DensityEstimator",
    "SampleOnlyEstimator",
    "Standardizer",
    "NetConfig",
    "SolverConfig",
    "ESTIMATORS",
    "build_estimator",
    "estimator_class",
    "from_spec",
]
