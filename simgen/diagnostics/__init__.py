"""Calibration diagnostics: pure functions returning result dataclasses.

Every result has ``.passed``, ``.failure`` (what failed, in words), a short ``repr``,
``.to_dict()`` and ``.plot(path=None)``. The functions take any
object with the posterior interface (``sample``, ``sample_batched``, ``log_prob``): simgen's,
sbi's, or a closed-form one. Pass one :func:`draw` to several of them to share simulations.
"""

from .c2st import C2STResult, c2st, c2st_posterior
from .coverage import CoverageResult, coverage
from .lc2st import LC2STResult, lc2st
from .misspecification import MisspecificationResult, OutOfDistributionWarning, misspecification
from .predictive import PredictiveResult, predictive_check
from .report import DiagnosisReport, diagnose
from .sampling import Draws, draw
from .sbc import SBCResult, sbc
from .tarp import TARPResult, tarp
from .zscore import ZScoreResult, zscore_contraction

__all__ = [
    "c2st",
    "c2st_posterior",
    "coverage",
    "diagnose",
    "draw",
    "lc2st",
    "misspecification",
    "predictive_check",
    "sbc",
    "tarp",
    "zscore_contraction",
    "C2STResult",
    "CoverageResult",
    "DiagnosisReport",
    "Draws",
    "LC2STResult",
    "MisspecificationResult",
    "OutOfDistributionWarning",
    "PredictiveResult",
    "SBCResult",
    "TARPResult",
    "ZScoreResult",
]
