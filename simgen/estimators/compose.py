r"""Compositional posteriors of n i.i.d. trials from a vector field trained on single trials.

For trials :math:`x_{1:n}` of one :math:`\theta`,
:math:`p(\theta\mid x_{1:n}) \propto p(\theta)^{1-n}\prod_i p(\theta\mid x_i)`. Noising does
not commute with this product, but the **denoising** posteriors do compose exactly: with
:math:`y_t = \alpha_t\theta + \sigma_t\varepsilon`,

.. math::
    p(\theta\mid y_t, x_{1:n}) \propto p(\theta\mid y_t)^{1-n}\prod_i p(\theta\mid y_t, x_i).

Approximating each factor by a Gaussian (the "GAUSS" rule of Linhart et al., 2024) with
precisions :math:`\Lambda_i = \Sigma^{-1} + r_t I` and :math:`\Lambda_\lambda = C^{-1} +
r_t I` (:math:`r_t = \alpha_t^2/\sigma_t^2`, :math:`\Sigma` the per-trial posterior
covariance, :math:`C` the prior's) and means given by the denoisers
:math:`\mu_i = \mathbb E[\theta\mid y_t, x_i]` (from the network, by Tweedie's formula) and
:math:`\mu_\lambda = \mathbb E[\theta\mid y_t]` (from the prior, exactly), the composed
denoiser is the Gaussian product

.. math::
    \mu = \Lambda^{-1}\Big(\Lambda_\Sigma\sum_i\mu_i - (n-1)\Lambda_\lambda\mu_\lambda\Big),
    \qquad \Lambda = n\Lambda_\Sigma - (n-1)\Lambda_\lambda = \Sigma^{-1} + (n-1)(\Sigma^{-1}
    - C^{-1}) + r_t I,

and the sampler's field follows from :math:`\mu` by the family's affine relation
(diffusion: :math:`\hat\varepsilon = (y - \alpha_t\mu)/\sigma_t`; flow matching, whose path
is :math:`\alpha_t = t`, :math:`\sigma_t = 1 - (1-\sigma_{\min})t`:
:math:`v = \mu - (1-\sigma_{\min})(y - t\mu)/\sigma_t`). As :math:`t\to 0`,
:math:`r_t\to\infty` and the rule tends to the exact sum of scores minus :math:`(n-1)` prior
scores; at every :math:`t` it is exact when the prior and the per-trial posteriors are
Gaussian with covariances :math:`C` and :math:`\Sigma` (a linear-Gaussian model), and its error
elsewhere grows with the non-Gaussianity of the denoising posteriors and with n.
:math:`\Sigma` is the x-independent residual covariance of the family's linear-Gaussian
baseline (:mod:`simgen.estimators.baseline`, fitted whether or not the baseline is used);
:math:`\Sigma^{-1} - C^{-1}` is clipped to be positive semi-definite so that :math:`\Lambda`
stays a precision. The composed posterior has **no density** here: the ODE's change of
variables would need the composed field's divergence, which the approximation does not
make a density of :math:`p(\theta\mid x_{1:n})`; ``log_prob`` raises
:class:`~simgen.errors.NoDensityError`.

The prior enters in the estimator's standardised coordinates
:math:`\tilde\theta = (\theta - \text{loc})/\text{scale}`; :func:`standard_prior` supports a
Gaussian (``Normal``, ``MultivariateNormal``) or a box-uniform prior, whose denoising
posteriors are closed-form. For the box, :math:`p(\tilde\theta\mid y_t)` is a normal
:math:`\mathcal N(y/\alpha_t, \sigma_t^2/\alpha_t^2)` truncated to the box in each
coordinate, and both its mean and its precision are used exactly (per point) instead of the
Gaussian :math:`C^{-1} + r_t I`, whose error is multiplied by :math:`n - 1`: on the
conjugate model with a box ten per-trial posterior sds wide the Gaussian rule drew
posteriors about 20% too narrow at n = 50, the exact box precision 5-9% (where the
remaining gap is the per-trial Gaussian rule against the box-truncated denoising
posteriors). Where the box's
extra precision would exceed the smallest eigenvalue of :math:`\Sigma^{-1}` (points far
outside the box at large noise) it is clipped there, which keeps :math:`\Lambda` positive
definite.

**Projection onto the box.** :math:`\mu` is the mean of :math:`p(\tilde\theta\mid y_t,
x_{1:n})`, a law on the box :math:`[a, b]`, so it lies in the box; the Gaussian product does
not know that. Where a face cuts the posterior the box's extra precision reaches the clip,
the likelihood part of :math:`\Lambda` vanishes in that direction
(:math:`\Lambda \to \Lambda_\Sigma`) and the rule extrapolates,
:math:`\mu \to n\bar\mu_i - (n - 1)\mu_\lambda`, out of the box; the sampler's field
:math:`(y - \alpha_t\mu)/\sigma_t` then pushes :math:`y` outwards, the next :math:`\mu`
lies further out, and the ODE overflows to non-finite draws. :math:`\Lambda` itself stays
positive definite throughout, so no precision floor helps. The sampler therefore uses the
Euclidean projection :math:`\Pi_{[a, b]}(\mu) = \min(\max(\mu, a), b)` per coordinate
(:meth:`StandardPrior.project`), the nearest point of the set in which the exact denoiser
lies; it changes nothing where the rule's :math:`\mu` is inside the box, and bounds the
field everywhere, so the ODE cannot diverge. On a Gaussian likelihood cut by a box face
(exact per-trial denoisers, ``tests/test_compose_box.py``) the unprojected rule left 1-3% (n
= 10) and 91% (n = 100) of 1,000 draws non-finite, the projected one none; at n = 10 its
draws match the truncated closed form within 0.23 posterior sds and 6% of the sd, at n = 100
the face coordinate's draws are 2.9 times too wide and 47% fall outside the box, which the
sampler reports (:class:`~simgen.iid.RejectionWarning`).

**Where the error comes from, and the two remedies.** With GAUSS exact (a linear-Gaussian
model), what is left is the network's per-trial error, and the composition sums it over
the trials: a per-trial denoiser error :math:`\delta\mu = r^2\delta\rho`
(:math:`\delta\rho` the error of the per-trial score in :math:`\tilde y = y_t/\alpha_t`,
:math:`r = \sigma_t/\alpha_t`) shared by the trials moves the probability-flow ODE's end
point by about :math:`\sqrt n\,\delta\rho` posterior sds, almost all of it from noise levels
near the composed posterior's width, :math:`r \approx 1/\sqrt n` in units of the per-trial
width. On the conjugate model of ``tests/test_iid_slow.py`` (10,000 simulations, n = 100),
using the network only for :math:`r` in [0.03, 0.3) and the exact per-trial field elsewhere
reproduced most of the default network's 1.9-sd mean error, and the network only above
:math:`r = 0.3` stayed within 0.12 sd. A noise-predicting network's error
:math:`\delta\hat\varepsilon = -\sigma_t\delta\rho` is of one size at every noise level,
so its score error grows as :math:`1/\sigma_t` towards the data; two remedies address it:

* **Training** with the diffusion family's ``control_variate`` (``1.0``: rows with
  :math:`r < 1`), which cancels the leading noise of the denoising loss at small noise, where
  the loss cannot otherwise see a score error of this size (mean error 0.47 and 0.30 sd at
  n = 100 on data seeds 0 and 1, against 1.9 and 1.35 without; twice the training time).
* **The residual floor** :math:`r_c = c\,\sqrt{\lambda_{\min}(\Sigma)}`
  (``RESIDUAL_FLOOR`` :math:`c = 0.3`): below :math:`r_c` the per-trial denoiser keeps the
  Gaussian baseline's part exact and takes the non-Gaussian part of the score from the
  network at :math:`r_c`,

  .. math::
      \mu_i(\tilde y, r) = g_r(\tilde y) + (r/r_c)^2\big(\mu_i(\tilde y, r_c) -
      g_{r_c}(\tilde y)\big), \qquad g_r(\tilde y) = m_i + \Sigma(\Sigma + r^2 I)^{-1}
      (\tilde y - m_i),

  (:math:`\mu_i(\tilde y, r_c)` is the network's denoiser at the point
  :math:`\alpha_{t_c}\tilde y` and time :math:`t_c`), i.e. the residual score
  :math:`\rho_r` is held at :math:`\rho_{r_c}`. That is exact when the per-trial
  posterior has no structure finer than :math:`r_c` (its noised score then barely changes
  below :math:`r_c`) and smooths finer structure: for a mixture of two components of sd
  :math:`s`, the floored score errs by about :math:`(r_c/s)^2` of the denoiser's move
  (``tests/test_iid.py``), hence the small :math:`c`. On the conjugate model it lowered the
  mean error at n = 100 from 0.47 and 0.30 to 0.19 and 0.20 sd (control variate, seeds 0
  and 1) and from 1.9 and 1.35 to 0.45 and 0.90 (default training); the benchmark is in
  ``benchmarks/results_iid.md``. It applies to trial sets only; a single observation is
  sampled without it.

**The error by noise level** (``benchmarks/iid_score_error.py``, ``results_iid.md`` "The
per-trial score error"): on ``bench_iid``'s Gaussian-mean model the sampler's per-trial
score error, in per-trial posterior sds, is flat below :math:`r_c` (the floor holds it) and
84-98% of it is common to the trials of a set (0.087 of 0.097 for diffusion at 1,000
simulations), so the composition adds it n times; to first order the ODE's end point takes
its mean error from :math:`r` between the composed posterior's width and the per-trial
width, peaking just below :math:`r_c`. The ridge baseline alone, fitted on the same
simulations, errs by 0.069 (1k) and 0.022 (10k): that part is the data's, the rest the
network's. An exponential moving average of the weights (``TrainConfig.ema``) removes most
of the network's part for diffusion (implied mean error 1.35 to 0.91 sds at 1k, the ridge's
0.87; composed C2ST at n = 100 from 0.80 to 0.70 on two seeds at 1k); diffusion trains with
``ema=0.99`` by default, and a trial-set model should add ``control_variate=1.0``;
averaging K networks' scores (:func:`~simgen.estimators.compose_sampler.average_scores`)
removes the part that differs between them, little at 10,000.

**Per-trial precisions** (the families' ``trial_precision``, ``"shared"`` by default). Only
each factor's precision enters the Gaussian product, so it takes one per trial as readily:
with :math:`\Lambda_i = \Sigma_i^{-1} + r_t I`,

.. math::
    \mu = \Lambda^{-1}\Big(\sum_i\Lambda_i\mu_i - (n-1)\Lambda_\lambda\mu_\lambda\Big),
    \qquad \Lambda = \sum_i\Lambda_i - (n-1)\Lambda_\lambda,

which moves with the noise level through :math:`r_t` as the shared rule does. It is exact at
every :math:`t` for a Gaussian prior and per-trial likelihoods Gaussian in :math:`\theta`
with precisions of their own (a heteroscedastic linear-Gaussian model, say a per-event
resolution recorded in x: :math:`p(\theta\mid y_t, x_i)` is then exactly Gaussian with
precision :math:`\Sigma_i^{-1} + r_t I`), where one shared :math:`\Sigma` is not
(``tests/test_compose_precision.py``); elsewhere it carries the GAUSS rule's approximation
of each factor. ``"per_trial"`` estimates :math:`\Sigma_i`, as sbi's ``auto_gauss`` does,
from ``TRIAL_PRECISION_DRAWS`` = 200 draws of each trial's own posterior by the family's
single-observation sampler (about 10% sampling error per eigenvalue; 200 n extra
single-trial rows, a fifth of 1,000 composed draws), clipped as above to
:math:`C^{-1} + (\Sigma_i^{-1} - C^{-1})_+`; the box's extra precision is clipped below the
smallest eigenvalue of every trial's :math:`\Sigma_i^{-1}`. The composed precision's
likelihood part, :math:`\sum_i(\Sigma_i^{-1} - C^{-1})`, is a difference, so a relative
error in the :math:`\Sigma_i` is multiplied in it: on the conjugate Gaussian at n = 100
(exact per-trial field, 25 diffusion steps) per-trial precisions 5% low (1.9 for 2) gave
draws 5-8% too narrow where the exact 2 gave 7-12% too wide. Precisions that also move with
the point (sbi's ``jac_gauss``: Tweedie's second moment
:math:`\operatorname{Cov}[\tilde\theta\mid\tilde y, x_i] = r^2\,\partial\mu_i/\partial\tilde y`
from the network's Jacobian) are not built: evaluated at one point per set and step on the
exponential-rate model at 1,000 simulations, the Jacobian's error near :math:`r_c` was as
large as the per-trial information, the likelihood precisions clipped to zero and the
sampler diverged (a scratch probe).

**Where the rule fails.** A model whose per-trial posteriors are far from Gaussian: on two
exponential rates with a box prior (``benchmarks/iid_models.py``, 1,000 simulations)
composed diffusion left 8-44% of its draws outside the box (all finite) and missed the
rest's mean by 2.6-19 posterior sds at n = 10 and 100, with any floor c in {0.3, 1, 3};
per-trial precisions kept 69% at n = 10 with a 3.2-sd miss (``results_iid.md``). With
the exact per-trial denoisers and covariances in place of the network (an oracle, same
file) the rule itself misses by up to 0.85 sds at n = 10 and 1.4
at n = 100, where its draws are about 2 times too wide (1.8-3.1 with per-trial precisions):
each factor :math:`\theta e^{-\theta x_i}` on a box is skewed and truncated, and the
product of n Gaussian stand-ins compounds their errors. The Langevin corrector of
:mod:`simgen.estimators.compose_sampler` (``corrector_steps``) repairs that part, not the
network's error. Use NLE for such models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, Uniform

from ..errors import ConfigError

__all__ = [
    "TRIAL_PRECISIONS",
    "check_trial_precision",
    "TRIAL_PRECISION_DRAWS",
    "sampled_precisions",
    "compose_trial_denoisers",
    "StandardPrior",
    "standard_prior",
    "compose_denoisers",
    "composed_precision",
    "RESIDUAL_FLOOR",
    "floor_ratio",
    "gaussian_denoiser",
    "floored_denoisers",
    "ResidualFloor",
]

#: Smallest signal scale used in the box prior's denoiser (it tends to the box's middle).
_MIN_ALPHA = 1e-4
#: Values of the families' ``trial_precision`` option (module docstring).
TRIAL_PRECISIONS = ("shared", "per_trial")
#: Draws of each trial's own posterior behind its precision (module docstring).
TRIAL_PRECISION_DRAWS = 200
#: :math:`c` of the residual floor :math:`r_c = c\,\sqrt{\lambda_{\min}(\Sigma)}` (module
#: docstring; measured in ``benchmarks/results_iid.md``).
RESIDUAL_FLOOR = 0.3


class StandardPrior:
    """A Gaussian or box prior in standardised coordinates, with its denoiser.

    Args:
        kind: ``"gauss"`` (``a`` the mean, ``b`` the covariance) or ``"box"`` (``a``, ``b``
            the bounds).
    """

    def __init__(self, kind: str, a: Tensor, b: Tensor):
        self.kind, self.a, self.b = kind, a.double(), b.double()

    def project(self, mu: Tensor) -> Tensor:
        """``mu`` ``(..., D)`` projected onto the box (identity for a Gaussian): the exact
        composed denoiser is a mean over the box, so it lies in it (module docstring)."""
        if self.kind == "gauss":
            return mu
        return torch.minimum(torch.maximum(mu, self.a.to(mu)), self.b.to(mu))

    def covariance(self) -> Tensor:
        if self.kind == "gauss":
            return self.b
        return torch.diag((self.b - self.a).square() / 12)

    def denoiser(self, y: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        r""":math:`\mathbb E[\tilde\theta\mid y_t = y]` under the prior, ``y`` ``(..., D)``,
        and, for the box, the extra precision of :math:`p(\tilde\theta\mid y_t)` per
        coordinate, :math:`1/\operatorname{Var} - r_t` ``(..., D)`` (``None`` for a Gaussian,
        whose extra precision is :math:`C^{-1}` everywhere)."""
        y64, alpha, sigma = y.double(), alpha.double(), sigma.double()
        if self.kind == "gauss":
            mean, cov = self.a, self.b
            eye = torch.eye(len(mean), dtype=y64.dtype, device=y.device)
            gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
            return (mean + (y64 - alpha * mean) @ gain.T).to(y.dtype), None
        # theta | y is N(y / alpha, s^2), s = sigma / alpha, truncated to the box.
        alpha = alpha.clamp_min(_MIN_ALPHA)
        s = sigma / alpha
        lo = (alpha * self.a - y64) / sigma  # standardised bounds of the truncated normal
        hi = (alpha * self.b - y64) / sigma
        log_z = _log_diff_ndtr(hi, lo)
        p_lo, p_hi = (_log_phi(lo) - log_z).exp(), (_log_phi(hi) - log_z).exp()
        ratio = p_lo - p_hi
        mean = (y64 + sigma * ratio) / alpha
        v = (1 + lo * p_lo - hi * p_hi - ratio.square()).clamp(1e-12, 1.0)  # Var / s^2
        extra = (1 / v - 1) / s**2
        return mean.to(y.dtype), extra


def _log_phi(u: Tensor) -> Tensor:
    return -0.5 * u.square() - 0.5 * math.log(2 * math.pi)


def _log_diff_ndtr(hi: Tensor, lo: Tensor) -> Tensor:
    """:math:`\\log(\\Phi(hi) - \\Phi(lo))` for ``hi > lo``, accurate in both tails."""
    flip = (hi + lo) > 0  # use 1 - Phi on the right
    a = torch.where(flip, -lo, hi)
    b = torch.where(flip, -hi, lo)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return la + torch.log1p(-(lb - la).exp().clamp_max(1 - 1e-300))


def standard_prior(prior: Distribution, loc: Tensor, scale: Tensor) -> StandardPrior:
    """``prior`` in the coordinates :math:`(\\theta - \\text{loc})/\\text{scale}`.

    Raises :class:`~simgen.errors.ConfigError` for a prior that is neither Gaussian nor a
    box, naming what is supported.
    """
    loc, scale = loc.double().reshape(-1), scale.double().reshape(-1)
    base = prior.base_dist if isinstance(prior, Independent) else prior
    if isinstance(prior, MultivariateNormal):
        cov = prior.covariance_matrix.double() / scale[:, None] / scale[None, :]
        return StandardPrior("gauss", (prior.loc.double() - loc) / scale, cov)
    if isinstance(base, Normal):
        mean = base.loc.double().expand_as(loc)
        return StandardPrior("gauss", (mean - loc) / scale, torch.diag((base.scale / scale) ** 2))
    if isinstance(base, Uniform):
        low, high = base.low.double().expand_as(loc), base.high.double().expand_as(loc)
        return StandardPrior("box", (low - loc) / scale, (high - loc) / scale)
    raise ConfigError(
        f"Composing i.i.d. trials with NPE needs the prior's noised score in closed form, "
        f"which simgen has for Gaussian (Normal, MultivariateNormal) and box-uniform priors; "
        f"got {type(prior).__name__}. Use NLE or NRE for this prior."
    )


def composed_precision(sigma_inv: Tensor, prior_inv: Tensor) -> Tensor:
    """The clipped per-trial precision :math:`C^{-1} + (\\Sigma^{-1} - C^{-1})_+`
    ``(D, D)``; see the module docstring."""
    gap = sigma_inv - prior_inv
    vals, vecs = torch.linalg.eigh(0.5 * (gap + gap.T))
    return prior_inv + (vecs * vals.clamp_min(0)) @ vecs.T


def compose_denoisers(
    mu: Tensor, mask: Tensor, mu_prior: Tensor, sigma_inv: Tensor, prior_extra: Tensor, r: Any
) -> Tensor:
    r"""The composed denoiser :math:`\mu` ``(S, B, D)`` (module docstring).

    Args:
        mu: Per-trial denoisers ``(S, B, n, D)``.
        mask: ``(B, n)``, the trials present.
        mu_prior: The prior's denoiser ``(S, B, D)``.
        sigma_inv: Clipped per-trial posterior precision ``(D, D)``.
        prior_extra: The prior's denoising precision less :math:`r_t I`: :math:`C^{-1}`
            ``(D, D)``, or per point and coordinate ``(S, B, D)`` (the box); clipped here
            below the smallest eigenvalue of ``sigma_inv`` so that :math:`\Lambda` stays
            positive definite.
        r: :math:`\alpha_t^2/\sigma_t^2`, a float.
    """
    dtype = torch.float64
    n = mask.sum(-1).to(dtype)[:, None, None]  # (B, 1, 1)
    eye = torch.eye(mu.shape[-1], dtype=dtype, device=mu.device)
    lam_trial = sigma_inv + r * eye
    if prior_extra.ndim == 2:
        lam_prior = (prior_extra + r * eye).expand(1, 1, *eye.shape)
    else:
        cap = torch.linalg.eigvalsh(sigma_inv)[0]
        lam_prior = torch.diag_embed(prior_extra.to(dtype).clamp_max(cap) + r)
    lam = n * lam_trial - (n - 1) * lam_prior  # (S or 1, B, D, D)
    total = torch.where(mask[..., None], mu, torch.zeros_like(mu)).sum(-2).to(dtype)
    prior_term = (lam_prior @ mu_prior.to(dtype)[..., None])[..., 0]
    rhs = total @ lam_trial.T - (n[..., 0] - 1) * prior_term
    return torch.linalg.solve(lam, rhs[..., None])[..., 0].to(mu.dtype)


def floor_ratio(eigvals: Tensor) -> float:
    r""":math:`r_c = c\sqrt{\lambda_{\min}(\Sigma)}` from the eigenvalues of :math:`\Sigma`."""
    return RESIDUAL_FLOOR * float(eigvals.min().sqrt())


def gaussian_denoiser(y: Tensor, r: Any, m: Tensor, eigvals: Tensor, eigvecs: Tensor) -> Tensor:
    r""":math:`\mathbb E[\theta\mid\theta + r\varepsilon = y]` under
    :math:`\mathcal N(m, V\Lambda V^\top)`: :math:`m + V\Lambda(\Lambda + r^2)^{-1}V^\top
    (y - m)`, for ``y`` and ``m`` broadcasting to ``(..., D)``."""
    z = (y - m) @ eigvecs
    return m + (z * (eigvals / (eigvals + r * r))) @ eigvecs.T


def floored_denoisers(
    mu_c: Tensor, y: Tensor, r: float, r_c: float, m: Tensor, eigvals: Tensor, eigvecs: Tensor
) -> Tensor:
    r"""Per-trial denoisers at :math:`r < r_c` from the network's at :math:`r_c` (module
    docstring): :math:`g_r(\tilde y) + (r/r_c)^2\,(\mu_{r_c} - g_{r_c}(\tilde y))`.

    Args:
        mu_c: The network's per-trial denoisers at the point :math:`\tilde y` and noise
            :math:`r_c` ``(S, B, n, D)``.
        y: :math:`\tilde y = y_t/\alpha_t` ``(S, B, n, D)``.
        r, r_c: The noise-to-signal ratios :math:`r_t < r_c`.
        m: The baseline means of the trials ``(B, n, D)`` (or broadcasting).
        eigvals, eigvecs: :math:`\Sigma = V\Lambda V^\top`.
    """
    g = gaussian_denoiser(y, r, m, eigvals, eigvecs)
    g_c = gaussian_denoiser(y, r_c, m, eigvals, eigvecs)
    return g + (r / r_c) ** 2 * (mu_c - g_c)


class ResidualFloor:
    r"""The per-trial denoisers of a composed sampler, floored at :math:`r_c` (module
    docstring).

    Args:
        r_c: The floor :math:`r_c` (:func:`floor_ratio`).
        t_c: The family's time whose noise-to-signal ratio is :math:`r_c`.
        alpha_c: :math:`\alpha_{t_c}`.
        m: The trials' baseline means ``(S, B, n, D)``.
        eigvals, eigvecs: :math:`\Sigma = V\Lambda V^\top`.
    """

    def __init__(
        self, r_c: float, t_c: Tensor, alpha_c: Tensor, m: Tensor, eigvals: Tensor, eigvecs: Tensor
    ):
        self.r_c, self.t_c, self.alpha_c = r_c, t_c, alpha_c
        self.m, self.eigvals, self.eigvecs = m, eigvals, eigvecs

    def __call__(
        self, denoise: Callable[[Tensor, Tensor], Tensor], y: Tensor, t: Tensor, alpha: Tensor,
        r: float,
    ) -> Tensor:  # fmt: skip
        """Per-trial denoisers ``(S, B, n, D)`` at the points ``y`` and time ``t``
        (noise-to-signal ratio ``r``); ``denoise(y, t)`` is the network's."""
        if r >= self.r_c:
            return denoise(y, t)
        mu_c = denoise(self.alpha_c * y / alpha, self.t_c)
        return floored_denoisers(mu_c, y / alpha, r, self.r_c, self.m, self.eigvals, self.eigvecs)


def check_trial_precision(value: Any) -> str:
    """``value`` if it names a per-trial precision rule, else a :class:`ConfigError`."""
    if value not in TRIAL_PRECISIONS:
        raise ConfigError(
            f"trial_precision must be one of {TRIAL_PRECISIONS} ('shared': the baseline's one "
            f"covariance for every trial; 'per_trial': each trial's, from draws of its own "
            f"posterior), got {value!r}."
        )
    return value


def _psd(a: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
    return (vecs * vals.clamp_min(0)[..., None, :]) @ vecs.transpose(-1, -2)


def sampled_precisions(
    sample_standard: Callable[[Tensor], Tensor], features: Tensor, prior_inv: Tensor,
    num: int = TRIAL_PRECISION_DRAWS,
) -> Tensor:  # fmt: skip
    r"""Each trial's clipped posterior precision :math:`C^{-1} + (\hat\Sigma_i^{-1} -
    C^{-1})_+` ``(B, n, D, D)`` (float64), :math:`\hat\Sigma_i` the covariance of ``num``
    draws of the trial's own posterior (module docstring).

    Args:
        sample_standard: One standardised draw per feature row, ``(M, F) -> (M, D)``.
        features: The trials' feature rows ``(B, n, F)``.
        prior_inv: :math:`C^{-1}` ``(D, D)``.
    """
    rows = features.expand(num, *features.shape).reshape(-1, features.shape[-1])
    draws = sample_standard(rows).reshape(num, *features.shape[:2], -1).double()
    centred = draws - draws.mean(0)
    cov = torch.einsum("kbni,kbnj->bnij", centred, centred) / (num - 1)
    return prior_inv + _psd(torch.linalg.inv(cov) - prior_inv)


def compose_trial_denoisers(
    mu: Tensor, mask: Tensor, mu_prior: Tensor, sigma_inv: Tensor, prior_extra: Tensor, r: Any
) -> Tensor:
    r"""The composed denoiser :math:`\mu` ``(S, B, D)`` with per-trial precisions
    :math:`\Lambda_i = \Sigma_i^{-1} + r_t I` (module docstring).

    Args:
        mu: Per-trial denoisers ``(S, B, n, D)``; ``mask`` ``(B, n)`` the trials present.
        mu_prior: The prior's denoiser ``(S, B, D)``.
        sigma_inv: Clipped per-trial posterior precisions ``(B, n, D, D)``
            (:func:`sampled_precisions`).
        prior_extra: :math:`C^{-1}` ``(D, D)``, or per point and coordinate ``(S, B, D)``
            (the box); clipped here below the smallest eigenvalue of every present trial's
            ``sigma_inv``, so that :math:`\Lambda` stays positive definite.
        r: :math:`\alpha_t^2/\sigma_t^2`, a float.
    """
    dtype = torch.float64
    keep = mask.to(dtype)[..., None, None]  # (B, n, 1, 1)
    n = mask.sum(-1).to(dtype)[:, None, None]  # (B, 1, 1)
    eye = torch.eye(mu.shape[-1], dtype=dtype, device=mu.device)
    lam_trial = (sigma_inv + r * eye) * keep  # (B, n, D, D)
    if prior_extra.ndim == 2:
        lam_prior = (prior_extra + r * eye).expand(1, 1, *eye.shape)
    else:
        smallest = torch.linalg.eigvalsh(sigma_inv)[..., 0].masked_fill(~mask, math.inf)
        cap = smallest.min(-1).values[None, :, None]  # (1, B, 1)
        lam_prior = torch.diag_embed(torch.minimum(prior_extra.to(dtype), cap) + r)
    lam = lam_trial.sum(1) - (n - 1) * lam_prior  # (S or 1, B, D, D)
    weighted = (lam_trial @ mu.to(dtype)[..., None])[..., 0].sum(-2)  # (S, B, D)
    prior_term = (lam_prior @ mu_prior.to(dtype)[..., None])[..., 0]
    rhs = weighted - (n[..., 0] - 1) * prior_term
    return torch.linalg.solve(lam, rhs[..., None])[..., 0].to(mu.dtype)
