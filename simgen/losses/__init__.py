"""Training objectives as small modules ``loss(theta, x) -> scalar``; each derived in its docstring.

The training loop (:mod:`simgen.training`) sees nothing but this call, so every estimator
family, NPE, NLE and NRE share one loop.
"""

from .likelihood import NLELoss, NPELoss
from .ratio import BNRELoss, NRECLoss

__all__ = ["NPELoss", "NLELoss", "NRECLoss", "BNRELoss"]
