"""What each diagnostic tests, what its failure means and what to try, in words for reports."""

from __future__ import annotations

from typing import Any

__all__ = ["MEANING", "advice"]

#: One sentence per check: what its null hypothesis is.
MEANING = {
    "sbc": "ranks of the true parameter among posterior draws are uniform, per dimension",
    "tarp": "random-point coverage of the joint posterior matches its credibility",
    "coverage": "highest-density regions of log_prob cover the truth at their level",
    "zscore": "posterior means are unbiased and posterior widths match the errors",
    "predictive": "simulations from posterior draws at x_o reproduce x_o",
    "lc2st": "at x_o, a classifier cannot tell the posterior from the true one (L-C2ST)",
    "misspecification": "x_o looks like a simulation from the prior predictive",
    "c2st": "posterior samples at x_o are indistinguishable from the reference samples",
}

_OVER = (
    "credible regions are too small: the truth falls outside them more often than stated. "
    "Try more simulations, an ensemble of posteriors trained with different seeds (their "
    "mixture is wider), a smaller patience if the validation loss rose late in training, or "
    "a sequential round at x_o (simgen.sequential)."
)
_UNDER = (
    "credible regions are too wide: safe, but information is lost. Try training longer "
    "(patience, max_epochs), a wider flow (more transforms, hidden_features=(128, 128)), more "
    "simulations, or an embedding net that keeps more of x."
)
_BIAS = (
    "the posterior is shifted away from the truth. Try more simulations, a wider flow, and "
    "check the embedding net and the scale of x (it is z-scored from the training set)."
)
_LOCAL = (
    "at x_o the posterior differs from the true posterior (the figure's reweighted marginals "
    "show how); the global checks average over all x and can miss this. Try a sequential "
    "round at x_o (simgen.sequential), more simulations, or an ensemble."
)
_MISSPEC = (
    "x_o is unlike anything the simulator produces: the posterior at x_o is an extrapolation "
    "that no calibration check can vouch for. Check x_o's preprocessing and units, the "
    "simulator's noise model, and whether the prior covers the parameters that made x_o."
)
_PREDICTIVE = (
    "simulations from posterior draws do not reproduce x_o: either the model cannot explain "
    "x_o (see the misspecification check) or the posterior misses the parameters that do."
)
_C2ST = (
    "the posterior's samples are distinguishable from the reference: try more simulations, "
    "a wider flow, or an ensemble."
)


def advice(name: str, result: Any) -> str:
    """What ``result`` of check ``name`` says when it failed, and what to try (``""`` if
    it passed)."""
    if result.passed:
        return ""
    failure = getattr(result, "failure", "")
    if name == "lc2st":
        text = _LOCAL
    elif name == "misspecification":
        text = _MISSPEC
    elif name == "predictive":
        text = _PREDICTIVE
    elif name == "c2st":
        text = _C2ST
    elif "biased" in failure:
        text = _BIAS
    elif "underconfident" in failure:
        text = _UNDER
    else:
        text = _OVER
    return f"{failure}. Meaning: {text}" if failure else f"Meaning: {text}"
