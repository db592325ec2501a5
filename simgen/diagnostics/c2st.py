r"""Classifier two-sample test (C2ST), the standard metric of the SBI benchmark.

A classifier is trained to tell samples of :math:`p` from samples of :math:`q`; its
cross-validated accuracy is the statistic. If :math:`p = q` no classifier can beat chance and
the accuracy is about :math:`0.5`; if the supports are disjoint it is about :math:`1`.

This follows sbi's ``c2st`` (and sbibm) exactly, so that numbers are comparable with the
literature: both sets are z-scored with the mean and standard deviation of the *first* set, the
classifier is scikit-learn's ``MLPClassifier`` with two hidden layers of :math:`10 D` ReLU
units (Adam, early stopping, at most 1,000 iterations, patience 50), and the score is the mean
accuracy over a shuffled 5-fold split, with ``seed`` seeding both classifier and split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["C2STResult", "c2st", "c2st_scores", "c2st_posterior"]


def _as_2d(samples: Any, name: str) -> Tensor:
    arr = torch.as_tensor(samples).detach().cpu()
    if not arr.is_floating_point():
        arr = arr.float()
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeError(
            f"{name} must have shape (N, D), got {tuple(arr.shape)}; flatten sample dimensions "
            "first, e.g. samples.reshape(-1, D)."
        )
    if not torch.isfinite(arr).all():
        raise ShapeError(f"{name} contains NaN or inf; drop those rows before calling c2st.")
    return arr


def c2st_scores(
    samples_p: Tensor | np.ndarray,
    samples_q: Tensor | np.ndarray,
    seed: int = 0,
    folds: int = 5,
    z_score: bool = True,
    classifier_kwargs: dict[str, Any] | None = None,
) -> np.ndarray:
    """Per-fold test accuracies of the C2ST classifier (see :func:`c2st`)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    p = _as_2d(samples_p, "samples_p")
    q = _as_2d(samples_q, "samples_q")
    if p.shape[1] != q.shape[1]:
        raise ShapeError(
            f"samples_p has {p.shape[1]} features but samples_q has {q.shape[1]}; "
            "both must be samples of the same D-dimensional parameter."
        )
    if min(len(p), len(q)) < folds:
        raise ShapeError(f"c2st needs at least folds={folds} samples in each set.")
    if z_score:
        mean = p.mean(dim=0)
        std = p.std(dim=0) if len(p) > 1 else torch.ones(p.shape[1], dtype=p.dtype)
        std[std < 1e-14] = 1.0
        p = (p - mean) / std
        q = (q - mean) / std
    dim = p.shape[1]
    kwargs = classifier_kwargs or {
        "activation": "relu",
        "hidden_layer_sizes": (10 * dim, 10 * dim),
        "max_iter": 1000,
        "solver": "adam",
        "early_stopping": True,
        "n_iter_no_change": 50,
    }
    clf = MLPClassifier(random_state=seed, **kwargs)
    # Same dtype handling as sbi's c2st (numpy of the input dtype), so numbers match exactly.
    data = np.concatenate([p.numpy(), q.to(p.dtype).numpy()])
    target = np.concatenate([np.zeros(len(p)), np.ones(len(q))])
    split = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_score(clf, data, target, cv=split, scoring="accuracy")


def c2st(
    samples_p: Tensor | np.ndarray,
    samples_q: Tensor | np.ndarray,
    seed: int = 0,
    folds: int = 5,
    z_score: bool = True,
    classifier_kwargs: dict[str, Any] | None = None,
) -> float:
    r"""Classifier two-sample test accuracy between two sample sets.

    .. math::
        \mathrm{C2ST}(p, q) = \frac{1}{K} \sum_{k=1}^{K} \mathrm{acc}_k(f_k),

    where :math:`f_k` is trained on all folds but :math:`k` to label :math:`p`-samples 0 and
    :math:`q`-samples 1. About 0.5 means indistinguishable, 1 means disjoint.

    Args:
        samples_p: Samples of the first distribution, shape ``(N, D)`` (tensor or array).
            Its mean and standard deviation z-score both sets.
        samples_q: Samples of the second distribution, shape ``(M, D)``.
        seed: Seeds the classifier initialisation and the shuffled K-fold split.
        folds: Number of cross-validation folds :math:`K`.
        z_score: Standardise both sets with the first set's moments.
        classifier_kwargs: Replace the default ``MLPClassifier`` options.

    Returns:
        The mean cross-validated accuracy, a float in :math:`[0, 1]`.

    Example:
        >>> p, q = torch.randn(1000, 2), torch.randn(1000, 2) + 5.0
        >>> c2st(p, q) > 0.95
        True
    """
    scores = c2st_scores(samples_p, samples_q, seed, folds, z_score, classifier_kwargs)
    return float(np.mean(scores))


@dataclass
class C2STResult:
    """Outcome of :func:`c2st_posterior`.

    Attributes:
        accuracy: Mean cross-validated accuracy (``float(result)`` returns it too).
        fold_accuracies: Accuracy on each fold.
        tolerance: ``passed`` is ``accuracy <= 0.5 + tolerance``.
        num_samples: Samples drawn from the posterior (and taken from the reference).
    """

    accuracy: float
    fold_accuracies: list[float]
    tolerance: float
    num_samples: int

    @property
    def passed(self) -> bool:
        """Whether the classifier could not tell the two sets apart (within tolerance)."""
        return self.accuracy <= 0.5 + self.tolerance

    @property
    def failure(self) -> str:
        """How far from chance the classifier got, or ``""`` if it passed."""
        return "" if self.passed else f"accuracy {self.accuracy:.3f} > 0.5 + {self.tolerance:g}"

    def __repr__(self) -> str:
        return (
            f"C2STResult(passed={self.passed}, accuracy={self.accuracy:.3f}, "
            f"tolerance={self.tolerance:g}, {self.num_samples} samples)"
        )

    def __float__(self) -> float:
        return self.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {**asdict(self), "passed": self.passed}

    def plot(self, path: str | None = None) -> Any:
        """Bar chart of per-fold accuracies against chance (see :func:`simgen.plots.c2st`)."""
        from .. import plots

        return plots.c2st(self, path=path)


def c2st_posterior(
    posterior: Any,
    reference_samples: Tensor | np.ndarray,
    x_o: Tensor,
    seed: int = 0,
    folds: int = 5,
    tolerance: float = 0.1,
) -> C2STResult:
    """C2ST between a posterior's samples at ``x_o`` and reference samples.

    Draws as many samples from ``posterior`` as there are reference samples, with torch's
    global generator seeded by ``seed`` (posterior interfaces take no generator), then runs
    :func:`c2st` with the reference as the first set (the sbibm convention).

    Args:
        posterior: Any object with ``sample(sample_shape, x=...)``.
        reference_samples: Samples of the true posterior at ``x_o``, shape ``(N, D)``.
        x_o: The observation.
        seed: Seeds the posterior draw and the classifier.
        folds: Cross-validation folds.
        tolerance: ``passed`` if the accuracy is at most ``0.5 + tolerance``.

    Returns:
        A :class:`C2STResult`.
    """
    ref = _as_2d(reference_samples, "reference_samples")
    from .sampling import seeded

    with seeded(seed), torch.no_grad():
        samples = posterior.sample((len(ref),), x=torch.as_tensor(x_o))
    samples = _as_2d(samples, "posterior samples")
    scores = c2st_scores(ref, samples, seed=seed, folds=folds)
    return C2STResult(
        accuracy=float(np.mean(scores)),
        fold_accuracies=[float(s) for s in scores],
        tolerance=tolerance,
        num_samples=len(ref),
    )
