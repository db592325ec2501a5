r"""Simulation-based calibration (SBC; Talts et al. 2018).

For :math:`\theta_i \sim p(\theta)`, :math:`x_i \sim p(x \mid \theta_i)` and :math:`L` samples
:math:`\theta_{ij} \sim q(\theta \mid x_i)`, the rank of the truth in dimension :math:`d`,

.. math::
    r_{id} = \#\{ j : \theta_{ijd} < \theta_{id} \} \in \{0, \dots, L\},

is uniform on :math:`\{0, \dots, L\}` for every :math:`d` when :math:`q` is the true posterior.
Overconfident posteriors pile ranks at both ends (U shape), underconfident ones in the middle
(∩ shape), biased ones on one side.

``passed`` is decided by the figure: the ECDF of the normalised ranks, minus the uniform CDF,
must stay inside a simultaneous :math:`1-\alpha/D` confidence band (Säilynoja et al. 2022,
ArviZ's optimised band) in every dimension, so the family-wise false-alarm rate over the
:math:`D` dimensions is at most :math:`\alpha` (Bonferroni). A simultaneous band covers the
whole curve, so one test per dimension needs no further correction over evaluation points.
The chi-square p-value of ranks binned into ``num_bins`` bins (expected counts exact for the
discrete uniform) is reported beside it as a number to read, not as the verdict.
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

__all__ = ["SBCResult", "sbc", "sbc_from_samples", "sbc_ranks", "ecdf_band", "describe_ranks"]


@dataclass
class SBCResult:
    """Outcome of :func:`sbc`.

    Attributes:
        ranks: Ranks :math:`r_{id}`, integer array ``(B, D)``.
        num_samples: Posterior samples per observation :math:`L`.
        p_values: Chi-square uniformity p-value per dimension, ``(D,)`` (informative).
        alpha: Family-wise level; the band of each dimension has level ``1 - alpha / D``.
        eval_points: Normalised ranks :math:`z_k` where the ECDF is evaluated, ``(K,)``.
        ecdf_diff: :math:`\\hat F_d(z_k) - z_k`, array ``(D, K)``.
        band_lower: Lower simultaneous band for the ECDF difference, ``(K,)``.
        band_upper: Upper simultaneous band for the ECDF difference, ``(K,)``.

    The band (ArviZ's optimised simultaneous band, under 2 CPU seconds for 1,000
    observations) is computed once per (observations, evaluation points, level) and cached.
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
    def band_level(self) -> float:
        """Level of each dimension's simultaneous band, ``1 - alpha / D``."""
        return 1.0 - self.alpha / self.ranks.shape[1]

    @property
    def passed(self) -> bool:
        """Every dimension's ECDF difference stays inside its simultaneous band (the plot)."""
        return bool(self.within_band.all())

    @property
    def failure(self) -> str:
        """What the ranks of the dimensions outside the band say, or ``""`` if none is."""
        return describe_ranks(self.ranks / self.num_samples, ~self.within_band)

    def __repr__(self) -> str:
        outside = np.flatnonzero(~self.within_band).tolist()
        return (
            f"SBCResult(passed={self.passed}, level={self.alpha:.3g} over {self.ranks.shape[1]} "
            f"dims (band {self.band_level:.4g} each), {self.ranks.shape[0]} x "
            f"{self.num_samples}, outside band: {outside or 'none'})"
        )

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
            "band_level": self.band_level,
            "failure": self.failure,
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


def describe_ranks(u: np.ndarray, flagged: np.ndarray) -> str:
    """Name the failure of each flagged dimension from normalised ranks ``u`` ``(B, D)``.

    A mean rank more than 3 standard errors from 1/2 is a bias (truth below or above most
    posterior draws); otherwise a rank variance above the uniform's 1/12 is a U shape
    (overconfident: too narrow), below it a cap (underconfident: too wide).
    """
    parts = []
    num_obs = u.shape[0]
    for d in np.flatnonzero(flagged):
        shift = u[:, d].mean() - 0.5
        if abs(shift) > 3 * np.sqrt(1 / 12 / num_obs):
            side = "below" if shift < 0 else "above"
            parts.append(f"dim {d}: biased (truth {side} most posterior draws)")
        elif u[:, d].var() > 1 / 12:
            parts.append(f"dim {d}: overconfident (too narrow)")
        else:
            parts.append(f"dim {d}: underconfident (too wide)")
    return "; ".join(parts)


def ecdf_band(
    num_draws: int, eval_points: np.ndarray, prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` band for the ECDF of ``num_draws`` uniform draws at
    ``eval_points``, minus the uniform CDF (ArviZ's optimised method, cached)."""
    points = tuple(np.asarray(eval_points, dtype=float).tolist())
    lower, upper = _cached_band(int(num_draws), points, float(prob))
    return lower.copy(), upper.copy()


@functools.lru_cache(maxsize=64)
def _cached_band(
    num_draws: int, points: tuple[float, ...], prob: float
) -> tuple[np.ndarray, np.ndarray]:
    eval_points = np.asarray(points)
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
        alpha: Family-wise level of the band test over dimensions.
        num_bins: Rank bins of the (informative) chi-square test; default
            ``min(20, B // 10, L + 1)`` so that every bin expects about 10 counts or more.
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
        alpha: Family-wise level of the band test over dimensions.
        num_bins: See :func:`sbc_from_samples`.
        draws: Precomputed :func:`~simgen.diagnostics.draw` output; skips simulation.

    Returns:
        An :class:`SBCResult`; ``result.passed`` is the band verdict its plot shows.

    Example:
        >>> result = sbc(posterior, prior, simulator, num_simulations=1000, seed=0)
        >>> result.passed, result.failure
        >>> result.plot("sbc.png")
    """
    if draws is None:
        draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    return sbc_from_samples(draws.theta, draws.samples, alpha=alpha, num_bins=num_bins)
