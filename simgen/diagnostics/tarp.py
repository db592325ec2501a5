r"""Tests of Accuracy with Random Points (TARP; Lemos et al. 2023).

For each simulated pair :math:`(\theta_i, x_i)` draw a random reference point
:math:`\theta^r_i` and compute the fraction of posterior samples closer to it than the truth,

.. math::
    f_i = \frac1L \sum_{j=1}^L \mathbb 1\big[\lVert \theta_{ij} - \theta^r_i \rVert
    < \lVert \theta_i - \theta^r_i \rVert\big].

The expected coverage probability :math:`\mathrm{ECP}(\alpha) = \frac1B \sum_i \mathbb 1[f_i <
\alpha]` equals :math:`\alpha` for all :math:`\alpha` if and only if the posterior is correct
(for references drawn from a distribution with full support). The ATC statistic
:math:`\sum_k (\mathrm{ECP}(\alpha_k) - \alpha_k)` is positive for underconfident and negative
for overconfident posteriors (as in sbi). ``passed`` is a Kolmogorov–Smirnov test that the
:math:`f_i` are uniform; the band is a simultaneous bootstrap band over observations.

Parameters are z-scored with the truths' mean and standard deviation before distances are
taken; references are uniform on the truths' bounding box (sbi's defaults).
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
from .sampling import Draws, draw

__all__ = ["TARPResult", "tarp", "tarp_from_samples"]


@dataclass
class TARPResult:
    """Outcome of :func:`tarp`.

    Attributes:
        fractions: :math:`f_i` per observation, ``(B,)``.
        alphas: Credibility grid :math:`\\alpha_k`, ``(K,)``.
        ecp: Expected coverage probability :math:`\\mathrm{ECP}(\\alpha_k)`, ``(K,)``.
        band_lower: Lower simultaneous bootstrap band of the ECP, ``(K,)``.
        band_upper: Upper simultaneous bootstrap band of the ECP, ``(K,)``.
        atc: Area-to-curve statistic (positive: underconfident, negative: overconfident).
        p_value: Kolmogorov–Smirnov p-value of uniform :math:`f_i`.
        alpha: Significance level of ``passed`` and of the band.
    """

    fractions: np.ndarray
    alphas: np.ndarray
    ecp: np.ndarray
    band_lower: np.ndarray
    band_upper: np.ndarray
    atc: float
    p_value: float
    alpha: float

    @property
    def passed(self) -> bool:
        """Whether the KS p-value exceeds ``alpha``."""
        return self.p_value > self.alpha

    @property
    def failure(self) -> str:
        """``"overconfident"`` or ``"underconfident"`` (sign of ``atc``) if failed, else ``""``."""
        if self.passed:
            return ""
        return "overconfident (too narrow or biased)" if self.atc < 0 else "underconfident"

    def __repr__(self) -> str:
        return (
            f"TARPResult(passed={self.passed}, level={self.alpha:.3g}, p_value={self.p_value:.3g}, "
            f"atc={self.atc:.3g}, {self.fractions.shape[0]} observations)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "passed": self.passed,
            "atc": self.atc,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "alphas": self.alphas.tolist(),
            "ecp": self.ecp.tolist(),
            "num_simulations": int(self.fractions.shape[0]),
        }

    def plot(self, path: str | None = None) -> Any:
        """ECP against credibility with the bootstrap band (:func:`simgen.plots.tarp`)."""
        from .. import plots

        return plots.tarp(self, path=path)


def _ecp(fractions: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """ECP curve(s): ``fractions`` ``(..., B)`` → ``(..., K)``."""
    return (fractions[..., None, :] < alphas[:, None]).mean(axis=-1)


def tarp_from_samples(
    theta: Tensor,
    samples: Tensor,
    seed: int = 0,
    alpha: float = 0.05,
    num_alphas: int = 51,
    num_bootstrap: int = 200,
    references: Tensor | None = None,
    z_score: bool = True,
) -> TARPResult:
    """TARP from true parameters ``(B, D)`` and posterior samples ``(L, B, D)``.

    Args:
        theta: True parameters.
        samples: Posterior samples per observation.
        seed: Seeds the reference points and the bootstrap.
        alpha: Level of the KS test; the band has level ``1 - alpha``.
        num_alphas: Size of the credibility grid on :math:`[0, 1]`.
        num_bootstrap: Bootstrap resamples of the observations for the band.
        references: Reference points ``(B, D)``; default uniform on the truths' bounding box.
        z_score: Standardise parameters with the truths' moments before taking distances.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    samples = torch.as_tensor(samples).to(torch.float64)
    if samples.ndim != 3 or samples.shape[1:] != theta.shape:
        raise ShapeError(
            f"samples must be (L, B, D) matching theta (B, D); got {tuple(samples.shape)} "
            f"and {tuple(theta.shape)}."
        )
    generator = torch.Generator().manual_seed(seed)
    if z_score:
        mean, std = theta.mean(0), theta.std(0).clamp_min(1e-12)
        theta, samples = (theta - mean) / std, (samples - mean) / std
    if references is None:
        low, high = theta.min(0).values, theta.max(0).values
        u = torch.rand(theta.shape, generator=generator, dtype=torch.float64)
        references = low + (high - low) * u
    elif z_score:
        references = (torch.as_tensor(references, dtype=torch.float64) - mean) / std
    d_true = (theta - references).norm(dim=-1)  # (B,)
    d_samples = (samples - references[None]).norm(dim=-1)  # (L, B)
    fractions = (d_samples < d_true[None]).double().mean(0).numpy()

    alphas = np.linspace(0.0, 1.0, num_alphas)
    ecp = _ecp(fractions, alphas)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(fractions), size=(num_bootstrap, len(fractions)))
    boot = _ecp(fractions[idx], alphas)  # (num_bootstrap, K)
    radius = np.quantile(np.abs(boot - ecp[None]).max(axis=1), 1 - alpha)
    return TARPResult(
        fractions=fractions,
        alphas=alphas,
        ecp=ecp,
        band_lower=np.clip(ecp - radius, 0, 1),
        band_upper=np.clip(ecp + radius, 0, 1),
        atc=float(np.sum(ecp[num_alphas // 2 :] - alphas[num_alphas // 2 :])),
        p_value=float(stats.kstest(fractions, "uniform").pvalue),
        alpha=alpha,
    )


def tarp(
    posterior: Any,
    prior: Any,
    simulator: Callable[..., Tensor],
    num_simulations: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    num_bootstrap: int = 200,
    draws: Draws | None = None,
) -> TARPResult:
    """TARP expected coverage of ``posterior`` with a bootstrap band.

    Works for sample-only posteriors (no ``log_prob`` needed).

    Args:
        posterior: Object with ``sample_batched`` (preferred) or ``sample``.
        prior: Distribution with ``sample``.
        simulator: Batched ``simulator(theta, generator=None) -> x``.
        num_simulations: Observations :math:`B`.
        num_samples: Posterior samples :math:`L` per observation.
        seed: Makes the call deterministic.
        alpha: Level of the test and the band.
        num_bootstrap: Bootstrap resamples for the band.
        draws: Precomputed :func:`~simgen.diagnostics.draw` output.

    Returns:
        A :class:`TARPResult`.

    Example:
        >>> result = tarp(posterior, prior, simulator, seed=0)
        >>> result.passed, result.atc
    """
    if draws is None:
        draws = draw(posterior, prior, simulator, num_simulations, num_samples, seed)
    return tarp_from_samples(
        draws.theta, draws.samples, seed=seed, alpha=alpha, num_bootstrap=num_bootstrap
    )
