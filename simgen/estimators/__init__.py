"""Conditional density estimators, one family per module, all ``forward(context) -> Distribution``.

Families register their names in :mod:`simgen.estimators.registry`.
"""

from .base import ConditionalEstimator, DensityEstimator, SampleOnlyEstimator, Standardizer
from .registry import ESTIMATORS, build_estimator, estimator_class, from_spec

__all__ = [
    "ConditionalEstimator",
    "DensityEstimator",
    "SampleOnlyEstimator",
    "Standardizer",
    "ESTIMATORS",
    "build_estimator",
    "estimator_class",
    "from_spec",
]
