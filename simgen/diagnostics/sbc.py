r"""Simulation-based calibration (SBC; Talts et al. 2018).

For :math:`\theta_i \sim p(\theta)`, :math:`x_i \sim p(x \mid \theta_i)` and :math:`L` samples
:math:`\theta_{ij} \sim q(\theta \mid x_i)`, the rank of the truth in dimension :math:`d`,

.. math::
    r_{id} = \#\{ j : \theta_{ijd} < \theta_{id} \} \in \{0, \dots, L\},

is uniform on :math:`\{0, \dots, L\}` for every :math:`d` when :math:`q` is the true posterior.
Overconfident posteriors pile ranks at both ends (U shape), underconfident ones in the middle
(∩ shape), biased ones on one side.

Uniformity is tested per dimension by a chi-square test on ranks binned into ``num_bins``
bins, with expected counts computed exactly for the discrete uniform; ``passed`` requires every
p-value above the Bonferroni-corrected level :math:`\alpha / D`. The ECDF of the normalised
ranks, minus the uniform CDF, is also compared with a simultaneous :math:`1-\alpha/D`
confidence band (Säilynoja et al. 2022, computed by ArviZ), which is what the plot shows.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from torch import Tensor

from ..errors import ShapeError
from .sampling import Draws, draw

__all__ = ["SBCResult", "sbc", "sbc_from_samples", "sbc_ranks", "ecdf_band"]


@dataclass
class SBCResult:
    """Outcome of :func:`sbc`.

    Attributes:
        ranks: Ranks :math:`r_{id}`, integer array ``(B, D)``.
        num_samples: Posterior samples per observation :math:`L`.
        p_values: Chi-square uniformity p-value per dimension, ``(D,)``.
        alpha: Family-wise significance level (Bonferroni over dimensions).
        eval_points: Normalised ranks :math:`z_k` where the ECDF is evaluated, ``(K,)``.
        ecdf_diff: :math:`\\hat F_d(z_k) - z_k`, array ``(D, K)``.
        band_lower: Lower simultaneous band for the ECDF difference, ``(K,)``.
        band_upper: Upper simultaneous band for the ECDF difference, ``(K,)``.

    The band (ArviZ's optimised simultaneous band, about 3 s for 1,000 observations) is only
    computed when it is first used (``band_lower``, ``within_band``, ``to_dict``, ``plot``),
    so that ``sbc(...).passed`` costs ranks and chi-square tests only.
    """

    ranks: np.ndarray
    num_samples: int
    p_values: np.ndarray
    alpha: float
    eval_points: np.ndarray
    ecdf_diff: np.ndarray

    @functools.cached_property
    def _band(self) -> tuple[np.ndarray, np.ndarray]:
        dim = self.ranks.shape[1]
        return ecdf_band(self.ranks.shape[0], self.eval_points, prob=1.0 - self.alpha / dim)

    @property
    def band_lower(self) -> np.ndarray:
        return self._band[0]

    @property
    def band_upper(self) -> np.ndarray:
        return self._band[1]

    @property
    def passed(self) -> bool:
        """Every dimension's p-value exceeds ``alpha / D``."""
        return bool(np.all(self.p_values > self.alpha / len(self.p_values)))

    @property
    def within_band(self) -> np.ndarray:
        """Per dimension, whether the ECDF difference stays inside the simultaneous band."""
        inside = (self.ecdf_diff >= self.band_lower - 1e-12) & (
            self.ecdf_diff <= self.band_upper + 1e-12
        )
        return inside.all(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-observation ranks)."""
        return {
            "passed": self.passed,
            "p_values": self.p_values.tolist(),
            "alpha": self.alpha,
            "within_band": self.within_band.tolist(),
            "num_simulations": int(self.ranks.shape[0]),
            "num_samples": self.num_samples,
        }

    def plot(self, path: str | None = None) -> Any:
        """ECDF-difference plot with the simultaneous band (:func:`simgen.plots.sbc_ecdf`)."""
        from .. import plots

        return plots.sbc_ecdf(self, path=path)


def sbc_ranks(theta: Tensor | np.ndarray, samples: Tensor | np.ndarray) -> np.ndarray:
    """Ranks of ``theta`` ``(B, D)`` among ``samples`` ``(L, B, D)``, as ints ``(B, D)``."""
    theta = np.asarray(theta.detach().cpu() if isinstance(theta, Tensor) else theta)
    samples = np.asarray(samples.detach().cpu() if isinstance(samples, Tensor) else samples)
    if samples.ndim != 3 or theta.shape != samples.shape[1:]:
        raise ShapeError(
            f"samples must have shape (L, B, D) matching theta (B, D); got "
            f"{samples.shape} and {theta.shape}. Use posterior.sample_batched((L,), x=xs)."
        )
    return (samples < theta[None]).sum(axis=0)


def ecdf_band(
    num_draws: int, eval_points: np.ndarray, prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` band for the ECDF of ``num_draws`` uniform draws at
    ``eval_points``, minus the uniform CDF (ArviZ's optimised method)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from arviz.stats.ecdf_utils import ecdf_confidence_band

        lower, upper = ecdf_confidence_band(
            num_draws, eval_points, eval_points, prob=prob, method="optimized"
        )
    return lower - eval_points, upper - eval_points


def sbc_from_samples(
    theta: Tensor | np.ndarray,
    samples: Tensor | np.ndarray,
    alpha: float = 0.05,
    num_bins: int | None = None,
) -> SBCResult:
    """SBC from true parameters ``(B, D)`` and posterior samples ``(L, B, D)``.

    Args:
        theta: True parameters, one row per simulated observation.
        samples: Posterior samples for each observation.
        alpha: Family-wise level of the uniformity test.
        num_bins: Rank bins of the chi-square test; default ``min(20, B // 10, L + 1)``
            so that every bin expects about 10 counts or more.
    """
    ranks = sbc_ranks(theta, samples)
    num_obs, dim = ranks.shape
    num_values = samples.shape[0] + 1
    if num_bins is None:
        num_bins = int(max(2, min(20, num_obs // 10, num_values)))
    edges = np.round(np.linspace(0, num_values, num_bins + 1)).astype(int)
    expected = np.diff(edges) / num_values * num_obs
    p_values = np.empty(dim)
    for d in range(dim):
        counts = np.histogram(ranks[:, d], bins=edges)[0]
        p_values[d] = stats.chisquare(counts, expected).pvalue

    num_points = min(num_obs, num_values, 100)
    cuts = np.unique(np.round(np.linspace(0, num_values, num_points + 2)[1:-1]).astype(int))
    eval_points = cuts / num_values
    ecdf = (ranks[None, :, :] < cuts[:, None, None]).mean(axis=1).T  # (D, K)
    return SBCResult(
        ranks=ranks,
        num_samples=num_values - 1,
        p_values=p_values,
        alpha=alpha,
        eval_points=eval_points,
        ecdf_diff=ecdf - eval_points[None],
    )


def sbc(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    num_simulations: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    num_bins: int | None = None,
    draws: Draws | None = None,
) -> SBCResult:
    """Simulation-based calibration of ``posterior`` over the prior predictive.

    Args:
        posterior: Object with ``sample_batched`` (preferred) or ``sample``.
        prior: Distribution with ``sample``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        num_simulations: Observations :math:`B` simulated from the prior predictive.
        num_samples: Posterior samples :math:`L` per observation.
        seed: Makes the call deterministic.
        alpha: Family-wise level of the uniformity test.
        num_bins: See :func:`sbc_from_samples`.
        draws: Precomputed :func:`~simgen.diagnostics.draw` output; skips simulation.

    Returns:
        An :class:`SBCResult`; ``result.passed`` is the uniformity verdict.

    Example:
        >>> result = sbc(posterior, prior, simulator, num_simulations=1000, seed=0)
        >>> result.passed, result.p_values
        >>> result.plot("sbc.png")
    """
    if draws is None:
        draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    return sbc_from_samples(draws.theta, draws.samples, alpha=alpha, num_bins=num_bins)
