r"""Posterior z-scores and contraction per parameter (Schad, Betancourt & Vasishth 2021).

For each simulated pair :math:`(\theta_i, x_i)` and dimension :math:`d`, with posterior mean
:math:`\mu_{id}` and standard deviation :math:`\sigma_{id}` estimated from samples,

.. math::
    z_{id} = \frac{\mu_{id} - \theta_{id}}{\sigma_{id}}, \qquad
    c_{id} = 1 - \frac{\sigma_{id}^2}{\operatorname{Var}_{p(\theta)}[\theta_d]}.

Contraction near 1 means the data are informative about :math:`\theta_d`, near 0 that the
posterior is the prior. For a calibrated posterior :math:`\mathbb E[z_{id}] = 0` and
:math:`\mathbb E[z_{id}^2] = 1` (exactly :math:`z \sim \mathcal N(0, 1)` for Gaussian
posteriors); ``passed`` tests both per dimension — a z-test on the mean and a chi-square test
on :math:`\sum_i z_{id}^2` — Bonferroni-corrected over the :math:`2D` tests. The variance test
assumes roughly Gaussian posteriors; for skewed ones read the numbers, not only the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ..errors import ShapeError
from .sampling import Draws, draw, seeded, stream_seed

__all__ = ["ZScoreResult", "zscore_contraction", "zscore_from_samples"]


@dataclass
class ZScoreResult:
    """Outcome of :func:`zscore_contraction`.

    Attributes:
        zscores: :math:`z_{id}`, ``(B, D)``.
        contraction: :math:`c_{id}`, ``(B, D)``.
        p_mean: Per-dimension p-value of :math:`\\mathbb E z = 0`, ``(D,)``.
        p_var: Per-dimension p-value of :math:`\\mathbb E z^2 = 1`, ``(D,)``.
        alpha: Family-wise significance level.
    """

    zscores: np.ndarray
    contraction: np.ndarray
    p_mean: np.ndarray
    p_var: np.ndarray
    alpha: float

    @property
    def passed(self) -> bool:
        """All :math:`2D` p-values above ``alpha / (2D)``."""
        level = self.alpha / (2 * len(self.p_mean))
        return bool(np.all(self.p_mean > level) and np.all(self.p_var > level))

    @property
    def failure(self) -> str:
        """Which dimensions have a mean z-score off 0 (bias) or a spread off 1, or ``""``."""
        level = self.alpha / (2 * len(self.p_mean))
        parts = []
        for d in range(len(self.p_mean)):
            if self.p_mean[d] <= level:
                parts.append(f"dim {d}: biased (mean z {self.zscores[:, d].mean():+.2f})")
            if self.p_var[d] <= level:
                rms = float(np.sqrt((self.zscores[:, d] ** 2).mean()))
                kind = "overconfident" if rms > 1 else "underconfident"
                parts.append(f"dim {d}: {kind} (rms z {rms:.2f})")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return (
            f"ZScoreResult(passed={self.passed}, level={self.alpha:.3g} over "
            f"{2 * len(self.p_mean)} tests, mean_z={np.round(self.zscores.mean(0), 3).tolist()}, "
            f"contraction={np.round(self.contraction.mean(0), 3).tolist()})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (per-dimension means and p-values)."""
        return {
            "passed": self.passed,
            "mean_zscore": self.zscores.mean(0).tolist(),
            "rms_zscore": np.sqrt((self.zscores**2).mean(0)).tolist(),
            "mean_contraction": self.contraction.mean(0).tolist(),
            "p_mean": self.p_mean.tolist(),
            "p_var": self.p_var.tolist(),
            "alpha": self.alpha,
        }

    def plot(self, path: str | None = None) -> Any:
        """z-score against contraction per parameter (:func:`simgen.plots.zscore`)."""
        from .. import plots

        return plots.zscore(self, path=path)


def zscore_from_samples(
    theta: Tensor | np.ndarray,
    samples: Tensor | np.ndarray,
    prior_var: Tensor | np.ndarray,
    alpha: float = 0.05,
) -> ZScoreResult:
    """z-scores and contraction from truths ``(B, D)``, samples ``(L, B, D)`` and the prior
    variance per dimension ``(D,)``."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    samples = torch.as_tensor(samples).to(torch.float64)
    prior_var = torch.as_tensor(prior_var, dtype=torch.float64).reshape(-1)
    if samples.ndim != 3 or samples.shape[1:] != theta.shape:
        raise ShapeError(
            f"samples must be (L, B, D) matching theta (B, D); got {tuple(samples.shape)} "
            f"and {tuple(theta.shape)}."
        )
    mean, var = samples.mean(0), samples.var(0).clamp_min(1e-300)
    z = ((mean - theta) / var.sqrt()).numpy()
    contraction = (1.0 - var / prior_var).numpy()
    num_obs = z.shape[0]
    p_mean = 2 * stats.norm.sf(np.abs(z.mean(0)) * np.sqrt(num_obs))
    chi2 = (z**2).sum(0)
    p_var = 2 * np.minimum(stats.chi2.cdf(chi2, num_obs), stats.chi2.sf(chi2, num_obs))
    return ZScoreResult(z, contraction, p_mean, np.minimum(p_var, 1.0), alpha)


def _prior_variance(prior: Any, seed: int, num_samples: int = 10_000) -> Tensor:
    try:
        return prior.variance.reshape(-1)
    except (AttributeError, NotImplementedError):
        with seeded(seed):
            return prior.sample((num_samples,)).var(0)


def zscore_contraction(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    num_simulations: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    draws: Draws | None = None,
) -> ZScoreResult:
    """Posterior z-score and contraction per parameter over many simulated observations.

    Args:
        posterior: Object with ``sample_batched`` (preferred) or ``sample``.
        prior: Distribution with ``sample`` (its ``variance`` is used when available).
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        num_simulations: Observations :math:`B`.
        num_samples: Posterior samples per observation.
        seed: Makes the call deterministic.
        alpha: Family-wise level of the tests.
        draws: Precomputed :func:`~simgen.diagnostics.draw` output.

    Example:
        >>> result = zscore_contraction(posterior, prior, simulator)
        >>> result.to_dict()["mean_contraction"]
    """
    if draws is None:
        draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    return zscore_from_samples(
        draws.theta,
        draws.samples,
        _prior_variance(prior, stream_seed(seed, "prior variance")),
        alpha=alpha,
    )
