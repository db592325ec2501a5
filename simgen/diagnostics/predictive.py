r"""Posterior predictive check at one observation.

Draw :math:`\theta_k \sim q(\theta \mid x_o)` and :math:`x_k \sim p(x \mid \theta_k)`. If the
model (and the posterior) can reproduce :math:`x_o`, it should look like a typical
:math:`x_k`. Features are standardised with the predictive mean :math:`m` and standard
deviation :math:`s`, and the distance :math:`d(x) = \lVert (x - m) / s \rVert_2` of
:math:`x_o` is ranked among those of the :math:`x_k`:

.. math::
    \text{quantile} = \frac1K \sum_k \mathbb 1[d(x_k) < d(x_o)].

A quantile near 1 means :math:`x_o` is more extreme than almost every predictive sample;
``passed`` is ``quantile <= 1 - alpha``. Per-feature quantiles :math:`\frac1K\sum_k
\mathbb 1[x_{k,f} < x_{o,f}]` show *which* features the model misses (near 0 or 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .sampling import quiet_kwargs, seeded, stream_seed

__all__ = ["PredictiveResult", "predictive_check"]


@dataclass
class PredictiveResult:
    """Outcome of :func:`predictive_check`.

    Attributes:
        x_predictive: Posterior predictive samples, ``(K, *x_shape)``.
        x_o: The observation, ``x_shape``.
        distance: Standardised distance of ``x_o`` to the predictive mean.
        quantile: Fraction of predictive samples closer to the mean than ``x_o``.
        feature_quantiles: Per-feature quantile of ``x_o``, ``(F,)`` (flattened features).
        alpha: ``passed`` is ``quantile <= 1 - alpha``.
    """

    x_predictive: np.ndarray
    x_o: np.ndarray
    distance: float
    quantile: float
    feature_quantiles: np.ndarray
    alpha: float

    @property
    def passed(self) -> bool:
        """``x_o`` is not more extreme than a ``1 - alpha`` share of predictive samples."""
        return self.quantile <= 1.0 - self.alpha

    @property
    def failure(self) -> str:
        """The features of ``x_o`` the predictive misses (quantile in a tail), or ``""``."""
        if self.passed:
            return ""
        tail = self.alpha / 2
        bad = np.flatnonzero((self.feature_quantiles < tail) | (self.feature_quantiles > 1 - tail))
        return (
            f"x_o more extreme than {self.quantile:.1%} of predictive draws; "
            f"features {bad[:10].tolist()} in a tail"
        )

    def __repr__(self) -> str:
        return (
            f"PredictiveResult(passed={self.passed}, level={self.alpha:.3g}, "
            f"quantile={self.quantile:.3g}, distance={self.distance:.3g}, "
            f"{self.x_predictive.shape[0]} draws)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "passed": self.passed,
            "distance": self.distance,
            "quantile": self.quantile,
            "feature_quantiles": self.feature_quantiles.tolist(),
            "alpha": self.alpha,
            "num_samples": int(self.x_predictive.shape[0]),
        }

    def plot(self, path: str | None = None) -> Any:
        """Predictive histograms per feature with ``x_o`` (:func:`simgen.plots.predictive`)."""
        from .. import plots

        return plots.predictive(self, path=path)


def predictive_check(
    posterior: Any,
    simulator: Callable[..., Tensor],
    x_o: Tensor,
    num_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PredictiveResult:
    """Posterior predictive samples at ``x_o`` and the quantile of ``x_o`` among them.

    Args:
        posterior: Object with ``sample(sample_shape, x=...)``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        x_o: The observation, shape ``x_shape`` (or ``(1, *x_shape)``).
        num_samples: Predictive samples :math:`K`.
        seed: Makes the call deterministic.
        alpha: Level of the check.

    Returns:
        A :class:`PredictiveResult`.

    Example:
        >>> result = predictive_check(posterior, simulator, x_o)
        >>> result.quantile, result.passed
    """
    x_o = torch.as_tensor(x_o)
    with seeded(stream_seed(seed, "predictive draws")), torch.no_grad():
        theta = posterior.sample((num_samples,), x=x_o, **quiet_kwargs(posterior.sample))
    noise_seed = stream_seed(seed, "predictive noise")
    generator = torch.Generator().manual_seed(noise_seed)
    try:
        x_pred = simulator(theta, generator=generator)
    except TypeError:
        with seeded(noise_seed):
            x_pred = simulator(theta)
    xp = x_pred.detach().cpu().double().reshape(num_samples, -1).numpy()
    xo = x_o.detach().cpu().double().reshape(-1).numpy()
    finite = np.isfinite(xp).all(axis=1)
    xp_ok = xp[finite]
    mean, std = xp_ok.mean(0), xp_ok.std(0)
    std[std < 1e-12] = 1.0
    d_pred = np.linalg.norm((xp_ok - mean) / std, axis=1)
    d_o = float(np.linalg.norm((xo - mean) / std))
    return PredictiveResult(
        x_predictive=x_pred.detach().cpu().numpy(),
        x_o=x_o.detach().cpu().numpy().reshape(x_pred.shape[1:]),
        distance=d_o,
        quantile=float((d_pred < d_o).mean()),
        feature_quantiles=(xp_ok < xo[None]).mean(0),
        alpha=alpha,
    )
