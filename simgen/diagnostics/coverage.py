r"""Expected coverage of highest-posterior-density (HPD) regions.

For each simulated pair :math:`(\theta_i, x_i)` the credibility level of the smallest HPD
region of :math:`q(\theta \mid x_i)` that contains :math:`\theta_i` is estimated from
:math:`L` posterior samples as

.. math::
    \hat\alpha_i = \frac{1}{L} \sum_{j=1}^L \mathbb 1\big[\log q(\theta_{ij} \mid x_i)
    > \log q(\theta_i \mid x_i)\big].

The expected coverage at credibility :math:`c` is :math:`\mathrm{EC}(c) = \frac1B \sum_i
\mathbb 1[\hat\alpha_i \le c]`. A calibrated posterior has :math:`\hat\alpha_i \sim U(0, 1)`
and :math:`\mathrm{EC}(c) = c`; an **overconfident** one (too narrow, or biased) has
:math:`\mathrm{EC}(c) < c`, an **underconfident** one (too wide) :math:`\mathrm{EC}(c) > c`.

Uniformity of :math:`\hat\alpha` is tested with a Kolmogorov–Smirnov test; the verdict is
``"calibrated"`` when its p-value exceeds ``alpha``, otherwise the sign of the mean deviation
:math:`\int (\mathrm{EC}(c) - c)\,dc` names the failure. The band drawn around the diagonal
is the pointwise Clopper–Pearson interval of a :math:`\mathrm{Binomial}(B, c)` count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from ..errors import NoDensityError, ShapeError
from .sampling import Draws, draw, quiet_kwargs

__all__ = ["CoverageResult", "coverage", "coverage_from_log_probs", "posterior_log_probs"]


@dataclass
class CoverageResult:
    """Outcome of :func:`coverage`.

    Attributes:
        credibility: HPD credibility level of each true parameter, ``(B,)``.
        levels: Grid of credibility levels :math:`c_k`, ``(K,)``.
        expected_coverage: :math:`\\mathrm{EC}(c_k)`, ``(K,)``.
        band_lower: Lower binomial band around the diagonal, ``(K,)``.
        band_upper: Upper binomial band around the diagonal, ``(K,)``.
        p_value: Kolmogorov–Smirnov p-value of uniform credibilities.
        alpha: Significance level of the verdict.
    """

    credibility: np.ndarray
    levels: np.ndarray
    expected_coverage: np.ndarray
    band_lower: np.ndarray
    band_upper: np.ndarray
    p_value: float
    alpha: float

    @property
    def deviation(self) -> float:
        """Mean of :math:`\\mathrm{EC}(c) - c` over the grid (negative: overconfident)."""
        return float(np.mean(self.expected_coverage - self.levels))

    @property
    def verdict(self) -> str:
        """``"calibrated"``, ``"overconfident"`` or ``"underconfident"``."""
        if self.p_value > self.alpha:
            return "calibrated"
        return "overconfident" if self.deviation < 0 else "underconfident"

    @property
    def passed(self) -> bool:
        """Whether the verdict is ``"calibrated"``."""
        return self.verdict == "calibrated"

    @property
    def failure(self) -> str:
        """The verdict if it is not ``"calibrated"``, else ``""``."""
        return "" if self.passed else self.verdict

    def __repr__(self) -> str:
        return (
            f"CoverageResult(passed={self.passed}, verdict={self.verdict!r}, "
            f"level={self.alpha:.3g}, p_value={self.p_value:.3g}, deviation={self.deviation:.3g}, "
            f"{self.credibility.shape[0]} observations)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "deviation": self.deviation,
            "alpha": self.alpha,
            "levels": self.levels.tolist(),
            "expected_coverage": self.expected_coverage.tolist(),
            "num_simulations": int(self.credibility.shape[0]),
        }

    def plot(self, path: str | None = None) -> Any:
        """Expected-coverage curve with the binomial band (:func:`simgen.plots.coverage`)."""
        from .. import plots

        return plots.coverage(self, path=path)


def posterior_log_probs(
    posterior: Any, theta: Tensor, x: Tensor, samples: Tensor
) -> tuple[Tensor, Tensor]:
    """``log q(theta_i | x_i)`` ``(B,)`` and ``log q(theta_ij | x_i)`` ``(L, B)``.

    Uses ``posterior.log_prob_batched`` (sbi) when present, else a loop over observations
    of ``posterior.log_prob(theta, x=x_i)``, evaluating truth and samples in one call each.
    """
    log_prob = getattr(posterior, "log_prob", None)
    if log_prob is None:
        raise NoDensityError(
            "coverage needs a posterior with log_prob(theta, x=...); for sample-only "
            "posteriors use sbc() or tarp() instead."
        )
    points = torch.cat([theta[None], samples], dim=0)  # (L + 1, B, D)
    with torch.no_grad():
        batched = getattr(posterior, "log_prob_batched", None)
        if batched is not None:
            lp = batched(points, x=x, **_norm_kwargs(batched))
        else:
            kwargs = _norm_kwargs(log_prob)
            lp = torch.stack(
                [log_prob(points[:, i], x=x[i], **kwargs) for i in range(x.shape[0])], dim=1
            )
    if lp.shape != points.shape[:2]:
        raise ShapeError(
            f"log_prob returned shape {tuple(lp.shape)}, expected {tuple(points.shape[:2])}; "
            "log_prob(theta, x=x_o) must return theta.shape[:-1]."
        )
    return lp[0], lp[1:]


def _norm_kwargs(method: Callable[..., Any]) -> dict[str, Any]:
    # sbi normalises leakage by rejection sampling, slow and irrelevant for ranking samples.
    import inspect

    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return {}
    kwargs = {"norm_posterior": False} if "norm_posterior" in params else {}
    return {**kwargs, **quiet_kwargs(method)}


def coverage_from_log_probs(
    log_prob_true: Tensor | np.ndarray,
    log_prob_samples: Tensor | np.ndarray,
    alpha: float = 0.05,
    num_levels: int = 51,
) -> CoverageResult:
    """Expected HPD coverage from ``log q(theta_i|x_i)`` ``(B,)`` and samples' ``(L, B)``."""
    lp_true = np.asarray(torch.as_tensor(log_prob_true).cpu(), dtype=np.float64)
    lp_samples = np.asarray(torch.as_tensor(log_prob_samples).cpu(), dtype=np.float64)
    if lp_samples.ndim != 2 or lp_samples.shape[1] != lp_true.shape[0]:
        raise ShapeError(
            f"log_prob_samples must be (L, B) with B = len(log_prob_true); got "
            f"{lp_samples.shape} and {lp_true.shape}."
        )
    credibility = (lp_samples > lp_true[None]).mean(axis=0)
    num_obs = credibility.shape[0]
    levels = np.linspace(0.0, 1.0, num_levels)
    expected = (credibility[None, :] <= levels[:, None]).mean(axis=1)
    k = np.round(levels * num_obs)
    with np.errstate(invalid="ignore"):
        lower = np.nan_to_num(stats.beta.ppf(alpha / 2, k, num_obs - k + 1), nan=0.0)
        upper = np.nan_to_num(stats.beta.ppf(1 - alpha / 2, k + 1, num_obs - k), nan=1.0)
    p_value = float(stats.kstest(credibility, "uniform").pvalue)
    return CoverageResult(
        credibility=credibility,
        levels=levels,
        expected_coverage=expected,
        band_lower=lower,
        band_upper=upper,
        p_value=p_value,
        alpha=alpha,
    )


def coverage(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    num_simulations: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    num_levels: int = 51,
    draws: Draws | None = None,
) -> CoverageResult:
    """Expected coverage of HPD regions, for posteriors with ``log_prob``.

    Args:
        posterior: Object with ``sample_batched``/``sample`` and ``log_prob``.
        prior: Distribution with ``sample``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        num_simulations: Observations :math:`B`.
        num_samples: Posterior samples :math:`L` per observation.
        seed: Makes the call deterministic.
        alpha: Level of the uniformity test and of the binomial band.
        num_levels: Size of the credibility grid on :math:`[0, 1]`.
        draws: Precomputed :func:`~simgen.diagnostics.draw` output.

    Returns:
        A :class:`CoverageResult` with ``verdict`` and ``passed``.

    Example:
        >>> result = coverage(posterior, prior, simulator, num_simulations=500)
        >>> result.verdict
        'calibrated'
    """
    if draws is None:
        draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    lp_true, lp_samples = posterior_log_probs(posterior, draws.theta, draws.x, draws.samples)
    return coverage_from_log_probs(lp_true, lp_samples, alpha=alpha, num_levels=num_levels)
