r"""Typicality of an observation against reference simulations, and the training-x sample a
posterior keeps.

The statistic of a point :math:`y` against reference simulations :math:`x_1, \dots, x_n`
(features z-scored by the reference's mean and standard deviation) is the log-kernel MMD term

.. math:: s(y) = -\log \frac1n \sum_{i=1}^n \exp(-\lVert y - x_i \rVert^2 / 2h^2),

with :math:`h^2` the median squared distance between reference points; each reference point
scored against the others gives the leave-one-out scores that make the p-value conformal
(:mod:`simgen.diagnostics.misspecification`). This module sits below the posteriors, so
``sample`` can warn when x lies farther out than every kept training simulation.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "MAX_REFERENCE_NUMBERS",
    "MAX_REFERENCE_ROWS",
    "TRAINING_X_KEY",
    "OutOfDistributionWarning",
    "Typicality",
    "training_sample",
    "warn_if_atypical",
]

#: The key under which a posterior file stores its ``training_x`` beside the weights.
TRAINING_X_KEY = "_posterior.training_x"
#: Most rows of training x a posterior keeps (``training_sample``) and a test scores against.
MAX_REFERENCE_ROWS = 2000
#: Most numbers (rows × features) of training x a posterior keeps: 4 MB in float32.
MAX_REFERENCE_NUMBERS = 1_000_000


class OutOfDistributionWarning(UserWarning):
    """An observation lies farther from the training simulations than any of them."""


class Typicality:
    """The statistic :math:`s` against one reference sample ``(n, F)``, with the
    leave-one-out scores of the reference points themselves (computed once)."""

    def __init__(self, reference: Tensor) -> None:
        ref = torch.as_tensor(reference).detach().double().reshape(len(reference), -1)
        if ref.shape[0] < 20:
            raise ConfigError(
                f"the typicality test needs at least 20 reference simulations, got "
                f"{ref.shape[0]}; simulate more."
            )
        self.mean = ref.mean(0)
        std = ref.std(0)
        self.std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.reference = (ref - self.mean) / self.std
        d2 = torch.cdist(self.reference, self.reference).square()
        n = d2.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool)].reshape(n, n - 1)
        self.bandwidth2 = float(off.median().clamp_min(1e-12))
        self.loo_scores = self._score(off)
        self.loo_nearest = off.min(1).values.sqrt()

    def _score(self, d2: Tensor) -> Tensor:
        log_k = -d2 / (2 * self.bandwidth2)
        return -(torch.logsumexp(log_k, dim=1) - np.log(d2.shape[1]))

    def scores(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`s(y)` and the nearest-reference distance for rows ``y`` ``(B, F)``."""
        z = (torch.as_tensor(y).detach().double().reshape(len(y), -1) - self.mean) / self.std
        d2 = torch.cdist(z, self.reference).square()
        return self._score(d2), d2.min(1).values.sqrt()

    def p_values(self, y: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Conformal p-values and distance ratios for rows ``y`` ``(B, F)``."""
        s, nearest = self.scores(y)
        count = (self.loo_scores[None, :] >= s[:, None]).sum(1)
        p = ((1 + count).double() / (1 + len(self.loo_scores))).numpy()
        ratio = (nearest / self.loo_nearest.median().clamp_min(1e-12)).numpy()
        return p, ratio


def training_sample(x: Tensor, seed: int = 0) -> Tensor:
    """A seeded subsample of training x to keep with a posterior: at most
    :data:`MAX_REFERENCE_ROWS` rows and :data:`MAX_REFERENCE_NUMBERS` numbers, float32."""
    x = torch.as_tensor(x).detach()
    numel = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    rows = min(len(x), MAX_REFERENCE_ROWS, max(20, MAX_REFERENCE_NUMBERS // max(numel, 1)))
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=generator)[:rows].sort().values
    return x[idx].float().cpu().clone()


def warn_if_atypical(posterior: Any, x: Tensor) -> None:
    """Warn (:class:`OutOfDistributionWarning`) when ``x`` is more atypical than every kept
    training simulation of ``posterior`` (``posterior.training_x``); a typical x does so
    with probability ``1 / (n + 1)``, under 0.05% for the 2,000 rows kept."""
    reference = getattr(posterior, "training_x", None)
    x = torch.as_tensor(x)
    if reference is None or len(reference) < 20 or x.numel() != reference[0].numel():
        return
    cache = posterior.__dict__.get("_typicality")
    if cache is None or cache[0] is not reference:
        cache = (reference, Typicality(reference))
        posterior.__dict__["_typicality"] = cache
    typicality = cache[1]
    s, nearest = typicality.scores(torch.as_tensor(x).reshape(1, -1).cpu())
    if bool(s[0] > typicality.loo_scores.max()):
        ratio = float(nearest[0] / typicality.loo_nearest.median().clamp_min(1e-12))
        warnings.warn(
            f"x is farther from the training simulations than any of the {len(reference)} "
            f"kept (nearest one {ratio:.1f}x the typical distance): the posterior here is an "
            "extrapolation. Check x's preprocessing and the simulator "
            "(simgen.diagnostics.misspecification(posterior, x) gives a p-value).",
            OutOfDistributionWarning,
            stacklevel=3,
        )
