r"""Is the observation something the simulator produces? A prior-predictive typicality test.

Given reference simulations :math:`x_1, \dots, x_n \sim p(x) = \int p(x \mid \theta) p(\theta)
d\theta` (features z-scored with their mean and standard deviation), the statistic of a point
:math:`y` is the squared MMD between the point mass at :math:`y` and the reference sample
under a Gaussian kernel :math:`k(a, b) = \exp(-\lVert a - b \rVert^2 / 2h^2)`, up to terms that
do not depend on :math:`y`; written on the log scale so that it never saturates far away,

.. math::
    s(y) = -\log \frac1n \sum_{i=1}^n k(y, x_i),

with :math:`h^2` the median squared distance between reference points. Large :math:`s` means
:math:`y` lies where the simulator rarely goes. The p-value is conformal: each reference point
is scored against the others (leave one out), and

.. math::
    p(x_o) = \frac{1 + \#\{i : s_{-i}(x_i) \ge s(x_o)\}}{1 + n},

which, when :math:`x_o \sim p(x)`, is uniform up to :math:`O(1/n)` (the reference points and
:math:`x_o` are exchangeable). The test runs in x space and, given an NPE posterior with an
embedding net, again in the embedding's space (where the network actually looks). ``passed``
holds when every p-value exceeds :math:`\alpha / m` for :math:`m` tests (observations ×
spaces; Bonferroni). ``distance_ratio`` is the distance from :math:`x_o` to its nearest
reference point over the median nearest-neighbour distance among the reference points: about
1 for a typical observation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..typicality import (
    MAX_REFERENCE_ROWS,
    TRAINING_X_KEY,
    OutOfDistributionWarning,
    Typicality,
    training_sample,
    warn_if_atypical,
)
from .sampling import simulate_pairs

__all__ = [
    "TRAINING_X_KEY",
    "MisspecificationResult",
    "OutOfDistributionWarning",
    "Typicality",
    "misspecification",
    "training_sample",
    "warn_if_atypical",
]


@dataclass
class MisspecificationResult:
    """Outcome of :func:`misspecification`.

    Attributes:
        p_values: Space (``"x"``, ``"embedding"``) → conformal p-value per observation ``(B,)``.
        distance_ratio: Space → nearest-reference distance over the typical one ``(B,)``.
        alpha: Family-wise level; each test has level ``alpha / m``.
        num_reference: Reference simulations scored against.
    """

    p_values: dict[str, np.ndarray]
    distance_ratio: dict[str, np.ndarray]
    alpha: float
    num_reference: int
    reference_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    observed_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def num_tests(self) -> int:
        return sum(len(p) for p in self.p_values.values())

    @property
    def level(self) -> float:
        """Level of each test, ``alpha / m`` (Bonferroni over observations and spaces)."""
        return self.alpha / self.num_tests

    @property
    def passed(self) -> bool:
        """Every p-value exceeds :attr:`level`."""
        return all(bool(np.all(p > self.level)) for p in self.p_values.values())

    @property
    def failure(self) -> str:
        """Which spaces and observations look unlike the simulations, or ``""``."""
        parts = []
        for space, p in self.p_values.items():
            for b in np.flatnonzero(p <= self.level):
                parts.append(
                    f"observation {b} in {space} space: p={p[b]:.2g}, nearest simulation "
                    f"{self.distance_ratio[space][b]:.1f}x the typical distance"
                )
        return "; ".join(parts)

    def __repr__(self) -> str:
        ps = {k: float(f"{np.min(v):.3g}") for k, v in self.p_values.items()}
        ratios = {k: round(float(np.max(v)), 2) for k, v in self.distance_ratio.items()}
        return (
            f"MisspecificationResult(passed={self.passed}, level={self.alpha:.3g} over "
            f"{self.num_tests} tests, min p={ps}, distance_ratio={ratios}, "
            f"{self.num_reference} reference simulations)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "passed": self.passed,
            "p_values": {k: v.tolist() for k, v in self.p_values.items()},
            "distance_ratio": {k: v.tolist() for k, v in self.distance_ratio.items()},
            "alpha": self.alpha,
            "level": self.level,
            "num_reference": self.num_reference,
            "failure": self.failure,
        }

    def plot(self, path: str | None = None) -> Any:
        """Histogram of the reference points' scores with each observation's marked."""
        from ..plots import _figure, _finish

        spaces = list(self.reference_scores)
        fig = _figure(figsize=(3.6 * max(len(spaces), 1), 3.0))
        axes = fig.subplots(1, max(len(spaces), 1), squeeze=False)[0]
        for ax, space in zip(axes, spaces, strict=False):
            ref, obs = self.reference_scores[space], self.observed_scores[space]
            hi = max(float(ref.max()), float(obs.max()))
            ax.hist(ref, bins=40, range=(float(ref.min()), hi), color="0.6", label="simulations")
            for s in obs:
                ax.axvline(float(s), color="C3")
            ax.set(
                xlabel=f"atypicality s ({space})", title=f"min p={self.p_values[space].min():.2g}"
            )
            ax.legend(fontsize=7)
        return _finish(fig, path)


def _embedding_of(posterior: Any) -> Callable[[Tensor], Tensor] | None:
    estimator = getattr(posterior, "estimator", None)
    if getattr(posterior, "kind", None) != "direct" or estimator is None:
        return None
    if type(getattr(estimator, "embedding", None)).__name__ in ("Identity", "NoneType"):
        return None

    def embed(x: Tensor) -> Tensor:
        with torch.no_grad():
            device = next(estimator.buffers()).device
            return estimator.embed(x.to(device).float()).double().cpu()

    return embed


def misspecification(
    target: Any,
    x_o: Tensor | None = None,
    *,
    simulations: tuple[Tensor, Tensor] | None = None,
    simulator: Callable[..., Tensor] | None = None,
    prior: Any = None,
    num_simulations: int = MAX_REFERENCE_ROWS,
    alpha: float = 0.05,
    seed: int = 0,
) -> MisspecificationResult:
    """Test whether ``x_o`` looks like a simulation from the prior predictive.

    Call it as ``misspecification(x_o, simulations=(theta, x))``,
    ``misspecification(x_o, simulator=simulator, prior=prior)`` or
    ``misspecification(posterior, x_o)`` for a posterior that kept a sample of its training x
    (``posterior.training_x``; NPE keeps up to 2,000 rows, in its file too).

    Args:
        target: The observation(s) ``x_o`` (``x_shape`` or ``(B, *x_shape)``), or a posterior.
        x_o: The observation(s) when ``target`` is a posterior.
        simulations: ``(theta, x)`` from the prior predictive (``theta`` is not used).
        simulator: With ``prior``, simulates ``num_simulations`` reference simulations.
        prior: Distribution with ``sample``.
        num_simulations: Reference simulations to simulate or keep (at most 2,000 are scored,
            which keeps the leave-one-out scores to one 2,000 × 2,000 distance matrix).
        alpha: Family-wise level.
        seed: Seeds the simulations and the subsample.

    Returns:
        A :class:`MisspecificationResult`; ``passed`` is False when ``x_o`` is unlike the
        simulations in some space.
    """
    posterior = None
    if hasattr(target, "sample") and not isinstance(target, Tensor):
        posterior, reference = target, getattr(target, "training_x", None)
        if x_o is None:
            raise ConfigError("misspecification(posterior, x_o): pass the observation x_o.")
    else:
        x_o, reference = target, None
    if simulations is not None:
        reference = simulations[1]
    elif simulator is not None or prior is not None:
        if simulator is None or prior is None:
            raise ConfigError("misspecification needs both simulator= and prior= to simulate.")
        reference = simulate_pairs(prior, simulator, num_simulations, seed)[1]
    if reference is None:
        raise ConfigError(
            "misspecification needs reference simulations: pass simulations=(theta, x), or "
            "simulator= and prior=, or a posterior whose fit kept training_x (NPE does)."
        )
    reference = torch.as_tensor(reference).detach()
    finite = torch.isfinite(reference.reshape(len(reference), -1)).all(1)
    reference = training_sample(reference[finite], seed)[:num_simulations]
    x_o = torch.as_tensor(x_o).detach()
    x_shape = tuple(reference.shape[1:])
    if tuple(x_o.shape) == x_shape:
        x_o = x_o[None]
    if tuple(x_o.shape[1:]) != x_shape:
        raise ShapeError(
            f"x_o has shape {tuple(x_o.shape)}; the simulations have x shape {x_shape}. Pass "
            "one observation of that shape or a batch (B, *x_shape)."
        )
    spaces: dict[str, tuple[Tensor, Tensor]] = {"x": (reference, x_o)}
    embed = _embedding_of(posterior) if posterior is not None else None
    if embed is not None:
        spaces["embedding"] = (embed(reference), embed(x_o))
    p_values, ratios, ref_scores, obs_scores = {}, {}, {}, {}
    for name, (ref, obs) in spaces.items():
        typicality = Typicality(ref)
        p_values[name], ratios[name] = typicality.p_values(obs)
        ref_scores[name] = typicality.loo_scores.numpy()
        obs_scores[name] = typicality.scores(obs)[0].numpy()
    return MisspecificationResult(p_values, ratios, alpha, len(reference), ref_scores, obs_scores)
