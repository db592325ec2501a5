"""Sequential inference for one observation: truncated proposals (TSNPE) for every NPE
family, SNLE and SNRE (:mod:`simgen.sequential.rounds`, :mod:`simgen.sequential.truncation`).

The package is callable: ``simgen.sequential(method, simulator, x_o, ...)`` is
:func:`simgen.sequential.rounds.sequential`, while ``simgen.sequential.TruncatedPrior`` and
``import simgen.sequential.truncation`` still reach the package's contents. A function bound
to the same name as the package would hide them.
"""

import sys
import types

from .rounds import Round, RoundHistory, sequential
from .truncation import (
    EllipsoidRegion,
    HPDRegion,
    IntersectionRegion,
    Region,
    TruncatedPrior,
    posterior_region,
)

__all__ = [
    "sequential",
    "Round",
    "RoundHistory",
    "TruncatedPrior",
    "Region",
    "HPDRegion",
    "EllipsoidRegion",
    "IntersectionRegion",
    "posterior_region",
]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return sequential(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
