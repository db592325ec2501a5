"""Training objectives as small modules ``loss(theta, x, **extras) -> scalar``; each derived
in its docstring (``extras``: more per-simulation tensors, e.g. the joint score).

The training loop (:mod:`simgen.training`) sees nothing but this call, so every estimator
family, NPE, NLE and NRE share one loop.
"""

from .likelihood import JointScoreNLELoss, JointScoreNPELoss, NLELoss, NPELoss
from .ratio import BNRELoss, NRECLoss

__all__ = ["NPELoss", "NLELoss", "JointScoreNLELoss", "JointScoreNPELoss", "NRECLoss", "BNRELoss"]
