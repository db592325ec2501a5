r"""Convergence figures of a run and the policy for warning about them.

The split-:math:`\hat R` and bulk effective sample size are computed by arviz over the
chains, per parameter and observation. :func:`~simgen.mcmc.run_mcmc` issues a
:class:`~simgen.errors.ConvergenceWarning` when

* one observation: its worst :math:`\hat R` exceeds the threshold (1.1 by default);
* a batch of :math:`B` observations (``sample_batched``, as SBC runs): more than
  :data:`BATCH_RHAT_SHARE` of them are above the threshold, or any is above it by more than
  0.2. With short chains a few honest :math:`\hat R` out of hundreds exceed 1.1 by chance:
  i.i.d. draws in 4 chains × 25 put 1 of 200 observations above 1.1, the worst at 1.20.

The count of observations above the threshold is recorded in the result's
``extra["unconverged_observations"]``.
"""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor

from ..errors import ConvergenceWarning

__all__ = ["BATCH_RHAT_SHARE", "rhat_ess", "unconverged", "warn_if_unconverged"]

#: A batched run warns when more than this share of its observations has R-hat > threshold.
BATCH_RHAT_SHARE = 0.05


def rhat_ess(samples: Tensor) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Split-:math:`\\hat R` and bulk ESS per batch element and parameter, ``(*, D)``, of
    ``(chains, draws, *, D)`` samples; ``None`` with fewer than 2 chains or 4 draws."""
    import arviz as az

    arr = samples.reshape(samples.shape[0], samples.shape[1], -1).double().cpu().numpy()
    if arr.shape[0] < 2 or arr.shape[1] < 4:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # arviz: "more chains than draws"
        data = az.convert_to_dataset({"theta": arr})
    shape = samples.shape[2:]
    rhat = az.rhat(data)["theta"].values.reshape(shape)
    ess = az.ess(data, method="bulk")["theta"].values.reshape(shape)
    return rhat, ess


def unconverged(rhat: np.ndarray | None, threshold: float) -> tuple[int, int]:
    """``(k, B)``: how many of the ``B`` batch elements have a parameter with R-hat > threshold."""
    if rhat is None:
        return 0, 0
    per_element = np.nanmax(rhat.reshape(-1, rhat.shape[-1]), axis=-1)
    return int((per_element > threshold).sum()), len(per_element)


def warn_if_unconverged(
    rhat: float, ess: float, above: int, elements: int, threshold: float, method: str
) -> None:
    """Warn by the policy of the module docstring (``rhat``: the worst over the batch)."""
    if not elements:
        return
    if elements == 1:
        if not above:
            return
    elif not (above > BATCH_RHAT_SHARE * elements or rhat > threshold + 0.2):
        return
    where = f" for {above} of {elements} observations" if elements > 1 else ""
    warnings.warn(
        f"MCMC chains have not converged{where}: worst R-hat = {rhat:.3f} > {threshold} "
        f"(bulk ESS {ess:.0f}). Increase warmup= or num_chains=, use thin=, or try "
        f"method={'slice' if method == 'rwm' else 'rwm'!r}.",
        ConvergenceWarning,
        stacklevel=3,
    )
