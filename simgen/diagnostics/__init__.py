"""Calibration diagnostics: pure functions returning result dataclasses with ``.passed``."""

from .c2st import C2STResult, c2st, c2st_posterior

__all__ = ["C2STResult", "c2st", "c2st_posterior"]
