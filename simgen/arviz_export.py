"""Export posterior samples to :class:`arviz.InferenceData`.

The posterior's ``to_arviz(x=x_o)`` calls :func:`to_inference_data`; ArviZ is imported lazily
inside it, so importing simgen never imports ArviZ.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ShapeError

__all__ = ["to_inference_data"]


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def to_inference_data(
    samples: Tensor | np.ndarray,
    x_o: Tensor | np.ndarray | None = None,
    param_names: Sequence[str] | None = None,
    sample_stats: Mapping[str, Tensor | np.ndarray] | None = None,
) -> Any:
    """Wrap posterior samples (and the observation, and MCMC statistics) as InferenceData.

    Args:
        samples: Posterior samples, ``(n, D)`` for independent draws (one chain) or
            ``(chains, draws, D)`` for MCMC.
        x_o: The observation, stored in the ``observed_data`` group as ``x``.
        param_names: One name per parameter; default ``theta_0 ... theta_{D-1}``.
        sample_stats: MCMC statistics such as ``{"lp": ..., "acceptance_rate": ...,
            "diverging": ...}``, each ``(chains, draws)`` (or ``(n,)`` for one chain).

    Returns:
        An :class:`arviz.InferenceData` with groups ``posterior``, ``observed_data`` (if
        ``x_o``) and ``sample_stats`` (if given), so that ``arviz.summary``,
        ``arviz.rhat`` and ``arviz.plot_posterior`` work directly.

    Example:
        >>> idata = to_inference_data(posterior.sample((1000,), x=x_o), x_o=x_o)
        >>> arviz.summary(idata)
    """
    arr = _numpy(samples)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ShapeError(
            f"samples must be (n, D) or (chains, draws, D), got shape {arr.shape}; for a "
            "single parameter use samples.reshape(-1, 1)."
        )
    chains, draws, dim = arr.shape
    names = list(param_names) if param_names is not None else [f"theta_{d}" for d in range(dim)]
    if len(names) != dim or len(set(names)) != dim:
        raise ShapeError(
            f"param_names must be {dim} distinct names, one per parameter; got {names}."
        )
    posterior = {name: arr[..., d] for d, name in enumerate(names)}

    stats = None
    if sample_stats:
        stats = {}
        for key, value in sample_stats.items():
            v = _numpy(value)
            if v.shape[:1] == (chains * draws,) and chains == 1:
                v = v[None]
            if v.shape[:2] != (chains, draws):
                raise ShapeError(
                    f"sample_stats[{key!r}] has shape {v.shape}, expected ({chains}, "
                    f"{draws}, ...) to match the samples."
                )
            stats[key] = v
    observed = None
    if x_o is not None:
        observed = {"x": _numpy(torch.as_tensor(x_o))}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

        return arviz.from_dict(posterior=posterior, observed_data=observed, sample_stats=stats)
