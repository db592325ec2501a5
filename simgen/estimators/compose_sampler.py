r"""The trial-set sampler of the diffusion and flow-matching families: its composed denoiser
(:class:`TrialComposition`) and a Langevin corrector (``corrector_steps``).

The GAUSS rule of :mod:`simgen.estimators.compose` replaces each denoising posterior by a
Gaussian; where the per-trial posteriors are skewed or cut by a box, the probability-flow
ODE on the composed field ends on a posterior of the wrong width (about twice too wide at 100
trials of the exponential-rate model, ``benchmarks/results_iid.md``). At the sampler's last
time, whose noise-to-signal ratio :math:`r_\epsilon` is far below every posterior width, the
composed score needs no Gaussian stand-in: by Tweedie's formula
:math:`\nabla_y\log p_t(y\mid x_i) = (\alpha_t\mu_i - y)/\sigma_t^2`, so

.. math::
    s(y) = \sum_i\nabla\log p_t(y\mid x_i) - (n-1)\nabla\log p_t(y)
         = \frac{\alpha_t}{\sigma_t^2}\sum_i(\mu_i - \mu_\lambda)
           + \frac{\alpha_t\mu_\lambda - y}{\sigma_t^2},

with :math:`\mu_i` the per-trial denoisers and :math:`\mu_\lambda` the prior's. Each term
:math:`\alpha_t(\mu_i - \mu_\lambda)/\sigma_t^2` tends to the smooth per-trial likelihood
score :math:`\nabla_\theta\log p(x_i\mid\theta)/\alpha_t`, so the sum is exact as
:math:`t\to 0` whatever the shape of the factors. After the ODE, ``corrector_steps`` :math:`M`
unadjusted Langevin moves on :math:`s` pull the draws onto that posterior:

.. math::
    y \leftarrow y + \epsilon\,C\,s(y) + \sqrt{\epsilon(2 - \epsilon)}\;C^{1/2}\xi,
    \qquad \xi\sim\mathcal N(0, I),

(``corrector_step`` :math:`\epsilon`). The noise is :math:`\sqrt{\epsilon(2-\epsilon)}`
rather than Langevin's :math:`\sqrt{2\epsilon}`: for a Gaussian target of covariance
:math:`C` the move is then the exact autoregression
:math:`y - m \leftarrow (1-\epsilon)(y - m) + \sqrt{1 - (1-\epsilon)^2}\,C^{1/2}\xi`, which
leaves the target invariant at any :math:`\epsilon < 2`, where the plain step inflates the
variance by :math:`1/(1 - \epsilon/2)`.

**Preconditioner.** :math:`C` is estimated per trial set from the current draws (an
ensemble of the set's ``S`` draws; the draws are therefore weakly dependent). By Stein's
identity :math:`\mathbb E_\pi[s(y)(y - m)^\top] = -I`, so for a Gaussian target the
regression of the score on the draws, :math:`A = -\operatorname{Cov}(s, y)
\operatorname{Cov}(y)^{-1}`, is its precision whatever the draws' own spread; in the
draws' whitened coordinates :math:`u = L^{-1}(y - \bar y)` (:math:`LL^\top =
\operatorname{Cov}(y)`), :math:`A_u = -\operatorname{Cov}(L^\top s, u)`, symmetrised, with its
eigenvalues raised to at least 1: :math:`C_u = A_u^{-1} \preceq I`, i.e. :math:`C` never
exceeds the draws' own covariance. The floor matters at a box's face, where Stein's identity
gains a boundary term and the curvature alone overstates the width of a truncated posterior;
a set with fewer than :math:`2(D + 1)` draws uses the GAUSS rule's composed covariance
:math:`\Lambda^{-1}` instead.

**The box.** For a box prior the prior's score term is left out (inside the box the prior
is flat) and the draws are reflected at the box's faces :math:`\alpha_t[a, b]` before and
after every move: reflected Langevin on the smooth likelihood score samples the posterior
truncated to the box, where the noised box score, steep within :math:`\sigma_t` of a face,
would throw draws far inside it. So every corrected draw lies in the prior's support. A
predictor draw that is not finite (the composed denoiser is projected onto the box, which
bounds the ODE's field, :mod:`simgen.estimators.compose`; a network's non-finite output
remains possible) restarts from a finite draw of its set, chosen at random, which the
moves then decorrelate.

**The account.** Every sampler call ends in :func:`account`, which counts the draws that
NPE's rejection will remove (not finite, or outside a box prior) and warns
(:class:`~simgen.iid.RejectionWarning`) when they exceed
:data:`~simgen.iid.HIGH_REJECTION`; under a Gaussian prior, where rejection cannot remove a
non-finite draw, such a draw raises :class:`~simgen.errors.SimgenError`.

**The residual floor.** Below the floor :math:`r_c` of :mod:`simgen.estimators.compose` the
per-trial scores are the baseline Gaussian's in closed form plus the network's non-Gaussian
part held at :math:`r_c`; the prior's score is floored alike (its Gaussian of the prior's
mean and covariance in closed form, the rest at :math:`r_c`), so that a box face enters
the trials and the prior at one scale and cancels in their difference. Closed forms also
keep the difference, a small number over :math:`\sigma_t^2`, free of round-off.

**Measured** (``benchmarks/results_iid.md``, "The Langevin corrector"). With exact per-trial
denoisers (the oracle of ``benchmarks/iid_floor_checks.py``) ten moves at
:math:`\epsilon = 0.5` (the defaults' basis: 3 left posteriors at a face too narrow, 30
gained little) brought the exponential-rate posteriors at 100 trials from about 2 times too
wide and 1.4 sds off to within 0.14 sds of the mean and 0.92-1.03 of the sd (0.72 for one
posterior against the box's face). With the network (1,000 simulations) they bring the sd
ratio to 0.98-1.02 on the Gaussian model but neither the mean error (0.2-1.7 sds) nor
C2ST, which the network's per-trial score error sets (composed flow matching got worse:
0.73-2.92 sds against 0.28-2.50); on the exponential model every draw is in the box, but as
far off as before. So ``corrector_steps`` is 0 (off) by default. A
move costs one composed-score evaluation (one network pass per trial and draw), against
two per Heun step of the ODE: ten add 10% to diffusion's default 50 steps and 31% to flow
matching's 16.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, SimgenError
from ..iid import warn_if_rejecting
from .compose import (
    ResidualFloor,
    StandardPrior,
    compose_trial_denoisers,
    gaussian_denoiser,
    sampled_precisions,
)

__all__ = [
    "CORRECTOR_STEP",
    "check_corrector",
    "reflect",
    "ensemble_preconditioner",
    "correct",
    "restart_non_finite",
    "TrialComposition",
    "account",
    "AveragedNet",
    "average_scores",
]

#: Default :math:`\epsilon` of a corrector move (module docstring).
CORRECTOR_STEP = 0.5


def check_corrector(steps: object, step: object) -> tuple[int, float]:
    """``(steps, step)`` if they are a whole number >= 0 and a number in (0, 1], else a
    :class:`~simgen.errors.ConfigError` naming what was wrong."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(
            f"corrector_steps must be a whole number >= 0 (0: no Langevin corrector), got "
            f"{steps!r}."
        )
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ConfigError(
            f"corrector_step must be a number in (0, 1] (the Langevin move's fraction of the "
            f"posterior covariance; {CORRECTOR_STEP} by default), got {step!r}."
        )
    return steps, float(step)


def reflect(y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``y`` folded into ``[lo, hi]`` per coordinate (mirror at the faces, then clamped)."""
    y = torch.where(y < lo, 2 * lo - y, y)
    y = torch.where(y > hi, 2 * hi - y, y)
    return torch.minimum(torch.maximum(y, lo), hi)


def ensemble_preconditioner(y: Tensor, s: Tensor, fallback: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`C` and a square root of it ``(B, D, D)`` from the draws ``y`` and their scores
    ``s`` ``(S, B, D)`` (module docstring); ``fallback`` ``(B, D, D)`` where ``S < 2(D + 1)``."""
    num, dim = y.shape[0], y.shape[-1]
    fallback_root = torch.linalg.cholesky(fallback)
    if num < 2 * (dim + 1):
        return fallback, fallback_root
    y64, s64 = y.double(), s.double()
    yc, sc = y64 - y64.mean(0), s64 - s64.mean(0)
    eye = torch.eye(dim, dtype=torch.float64, device=y.device)
    cov = torch.einsum("sbi,sbj->bij", yc, yc) / (num - 1)
    jitter = 1e-12 * cov.diagonal(0, -2, -1).amax(-1)[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(cov + jitter)
    u = torch.linalg.solve_triangular(chol, yc.permute(1, 2, 0), upper=False)  # (B, D, S)
    su = chol.transpose(-1, -2) @ sc.permute(1, 2, 0)  # scores in u, (B, D, S)
    a = -(su @ u.transpose(-1, -2)) / (num - 1)
    a = 0.5 * (a + a.transpose(-1, -2))
    bad = (info != 0) | ~a.isfinite().all(-1).all(-1)  # a collapsed or non-finite set
    vals, vecs = torch.linalg.eigh(torch.where(bad[:, None, None], eye, a))
    inv = 1 / vals.clamp_min(1.0)  # C_u <= I: never wider than the draws
    root = torch.where(bad[:, None, None], fallback_root, chol @ (vecs * inv.sqrt()[:, None, :]))
    return root @ root.transpose(-1, -2), root


def restart_non_finite(y: Tensor) -> Tensor:
    """``y`` ``(S, B, D)`` with each non-finite draw replaced by a finite draw of its set,
    chosen at random (a set without one is left as it is)."""
    ok = y.isfinite().all(-1)  # (S, B)
    if bool(ok.all()):
        return y
    pick = torch.multinomial(ok.T.double() + (~ok.any(0)).double()[:, None], len(y), True)
    donors = y.gather(0, pick.T[..., None].expand_as(y))  # (S, B, D)
    return torch.where(ok[..., None], y, donors)


def correct(
    y: Tensor, score: Callable[[Tensor], Tensor], steps: int, step: float, fallback: Tensor,
    box: tuple[Tensor, Tensor] | None = None,
) -> Tensor:  # fmt: skip
    r"""``steps`` corrector moves of the module docstring on draws ``y`` ``(S, B, D)``.

    Args:
        score: The composed score :math:`s(y)` ``(S, B, D)`` (without the prior's term for a
            box).
        step: :math:`\epsilon`.
        fallback: The GAUSS rule's composed covariance of ``y`` ``(B, D, D)`` (float64).
        box: The faces ``(lo, hi)`` ``(D,)`` in the coordinates of ``y``, or ``None``.
    """
    y = restart_non_finite(y)
    if box is not None:
        y = reflect(y, *box)
    amp = math.sqrt(step * (2 - step))
    for _ in range(steps):
        s = score(y)
        cov, root = ensemble_preconditioner(y, s, fallback)
        drift = step * (cov @ s.double()[..., None])[..., 0]
        noise = (root @ torch.randn_like(y, dtype=torch.float64)[..., None])[..., 0]
        y = y + (drift + amp * noise).to(y.dtype)
        if box is not None:
            y = reflect(y, *box)
    return y


def _gauss_score(y: Tensor, r: float, m: Tensor, vals: Tensor, vecs: Tensor) -> Tensor:
    r""":math:`\nabla_y\log\mathcal N(y; m, V(\Lambda + r^2)V^\top)` for ``y``, ``m``
    broadcasting to ``(..., D)``."""
    return -(((y - m) @ vecs) / (vals + r * r)) @ vecs.T


class TrialComposition:
    r"""The composed denoiser and corrector of one trial-set sampler call, shared by the
    diffusion and flow-matching families (the module docstring and
    the module docstring).

    Args:
        est: The :class:`~simgen.estimators.baseline.BaselineEstimator` (its baseline, prior
            and options ``trial_precision``, ``corrector_steps``, ``corrector_step``).
        num: Draws per set; ``c``, ``m``, ``mask``: the sets' features ``(B, n, F)``, baseline
            means ``(B, n, D)`` and trials present ``(B, n)``.
        precisions: The clipped per-trial precision and the prior's ``(D, D)``.
        r_c, t_c, alpha_c: The residual floor's ratio, its time and :math:`\alpha_{t_c}`.
        single: One standardised draw of a single trial's posterior per feature row (for
            ``trial_precision="per_trial"``).
    """

    def __init__(
        self, est: Any, num: int, c: Tensor, m: Tensor, mask: Tensor,
        precisions: tuple[Tensor, Tensor], r_c: float, t_c: Tensor, alpha_c: Tensor,
        single: Callable[[Tensor], Tensor],
    ):  # fmt: skip
        self.est, self.mask, self.precisions, self.prior = est, mask, precisions, est._trial_prior
        self.cs, self.ms = c.expand(num, *c.shape), m.expand(num, *m.shape)
        lam, vecs = est.baseline.eigvals, est.baseline.eigvecs
        self.floor = ResidualFloor(r_c, t_c, alpha_c, self.ms, lam, vecs)
        self.trial_inv = None
        if est.trial_precision == "per_trial":
            self.trial_inv = sampled_precisions(single, torch.cat([c, m], -1), precisions[1])

    def per_trial(self, denoise: Callable, y: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor):
        """Floored per-trial denoisers ``(S, B, n, D)`` at the points ``y`` ``(S, B, D)``."""
        yy = y[:, :, None, :].expand(-1, -1, self.mask.shape[1], -1)
        return self.floor(denoise, yy, t, alpha, float(sigma / alpha))

    def denoiser(
        self, denoise: Callable, y: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Tensor:
        r"""The composed denoiser :math:`\mu` ``(S, B, D)``: :meth:`gauss_denoiser`
        projected onto a box prior (:meth:`~simgen.estimators.compose.StandardPrior.project`,
        which keeps the sampler's field bounded where a face cuts the posterior)."""
        return self.prior.project(self.gauss_denoiser(denoise, y, t, alpha, sigma))

    def gauss_denoiser(
        self, denoise: Callable, y: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Tensor:
        r"""The GAUSS rule's composed denoiser ``(S, B, D)`` (shared or per-trial
        precisions), unprojected; ``denoise(y, t)`` is the network's per-trial one."""
        mu_i = self.per_trial(denoise, y, t, alpha, sigma)
        if self.trial_inv is None:
            return self.est.composed_denoiser(y, alpha, sigma, mu_i, self.mask, self.precisions)
        mu_0, extra = self.prior.denoiser(y, alpha, sigma)
        extra = self.precisions[1] if extra is None else extra
        r = float((alpha / sigma) ** 2)
        return compose_trial_denoisers(mu_i, self.mask, mu_0, self.trial_inv, extra, r)

    def scores(self, denoise: Callable, y: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor):
        r"""The per-trial scores less the prior's, :math:`\nabla_{\tilde y}\log p_t(\tilde y
        \mid x_i) - \nabla_{\tilde y}\log p_t(\tilde y)` ``(S, B, n, D)``, and the prior's
        ``(S, B, D)``, in :math:`\tilde y = y/\alpha_t` (float64). Below the floor both are
        floored alike (module docstring): the Gaussian part in closed form, the rest held at
        :math:`r_c`, which also keeps the difference free of round-off at small noise."""
        r, fl = float(sigma / alpha), self.floor
        yt = y.double() / float(alpha)
        if self.prior.kind == "gauss":
            m0, cov = self.prior.a, self.prior.b
        else:
            m0, cov = 0.5 * (self.prior.a + self.prior.b), self.prior.covariance()
        vals0, vecs0 = torch.linalg.eigh(cov.to(yt.device))
        m0 = m0.to(yt.device)
        if r >= fl.r_c:  # no floor: Tweedie's formula as it stands
            yy = y[:, :, None, :].expand(-1, -1, self.mask.shape[1], -1)
            s_i = (fl(denoise, yy, t, alpha, r).double() - yt[:, :, None]) / r**2
            s_0 = (self.prior.denoiser(y, alpha, sigma)[0].double() - yt) / r**2
            return s_i - s_0[:, :, None], s_0
        lam, vecs = fl.eigvals.double(), fl.eigvecs.double()
        yc = yt[:, :, None, :].expand(-1, -1, self.mask.shape[1], -1)
        mu_c = denoise((fl.alpha_c * yc).to(y.dtype), fl.t_c).double()
        m = fl.m.double()
        s_i = _gauss_score(yc, r, m, lam, vecs)
        s_i = s_i + (mu_c - gaussian_denoiser(yc, fl.r_c, m, lam, vecs)) / fl.r_c**2
        s_0 = _gauss_score(yt, r, m0, vals0, vecs0)
        if self.prior.kind == "box":
            a_c = fl.alpha_c
            mu0_c = self.prior.denoiser((a_c * yt).to(y.dtype), a_c, a_c * fl.r_c)[0].double()
            s_0 = s_0 + (mu0_c - gaussian_denoiser(yt, fl.r_c, m0, vals0, vecs0)) / fl.r_c**2
        return s_i - s_0[:, :, None], s_0

    def covariance(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        r"""The GAUSS rule's composed covariance of :math:`y_t`, :math:`\alpha_t^2
        (\Lambda - r_tI)^{-1} + \sigma_t^2 I` ``(B, D, D)`` (float64)."""
        sigma_inv, prior_inv = self.precisions
        n = self.mask.sum(-1).double()[:, None, None]
        if self.trial_inv is None:
            lam = n * sigma_inv - (n - 1) * prior_inv
        else:
            keep = self.mask.double()[..., None, None]
            lam = (self.trial_inv * keep).sum(1) - (n - 1) * prior_inv
        eye = torch.eye(lam.shape[-1], dtype=lam.dtype, device=lam.device)
        return float(alpha) ** 2 * torch.linalg.inv(lam) + float(sigma) ** 2 * eye

    def correct(
        self, denoise: Callable, y: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Tensor:
        """``corrector_steps`` Langevin moves at time ``t`` on the exact small-noise composed
        score (module docstring; ``y`` itself when off), then the draws' account
        (:func:`account`)."""
        steps = self.est.corrector_steps
        if steps == 0:
            return account(y, self.prior, len(self.mask[0]))
        keep = self.mask[None, :, :, None]

        def score(z: Tensor) -> Tensor:  # in y = alpha y~: the scores in y~ over alpha
            lik, prior = self.scores(denoise, z, t, alpha, sigma)
            total = torch.where(keep, lik, torch.zeros_like(lik)).sum(-2)
            if self.prior.kind == "gauss":
                total = total + prior
            return total / float(alpha)

        box = None
        if self.prior.kind == "box":
            lo, hi = (float(alpha) * b.to(y) for b in (self.prior.a, self.prior.b))
            box = (lo, hi)
        fallback = self.covariance(alpha, sigma)
        y = correct(y, score, steps, self.est.corrector_step, fallback, box)
        return account(y, self.prior, len(self.mask[0]))


def account(y: Tensor, prior: StandardPrior, n: int) -> Tensor:
    r"""The sampler's final draws ``y`` ``(S, B, D)`` (standardised), counted before NPE's
    rejection sees them: draws that are not finite or lie outside a box prior are rejected
    there, and :func:`~simgen.iid.warn_if_rejecting` warns when they are more than
    :data:`~simgen.iid.HIGH_REJECTION` of them. Under a Gaussian prior rejection cannot remove
    a non-finite draw, so one raises :class:`~simgen.errors.SimgenError` instead of being
    returned. ``n`` is the largest set's number of trials (for the message)."""
    finite = y.isfinite().all(-1)
    non_finite = int((~finite).sum())
    if prior.kind == "gauss":
        if non_finite:
            raise SimgenError(
                f"The composed posterior of {n} i.i.d. trials diverged for {non_finite} of "
                f"{finite.numel()} draws (not finite), which cannot be returned. Sample with "
                "corrector_steps=10, train on more simulations, or use NLE or NRE, whose "
                "sums over trials are exact."
            )
        return y
    lo, hi = prior.a.to(y), prior.b.to(y)
    inside = finite & ((y >= lo) & (y <= hi)).all(-1)
    warn_if_rejecting(int((~inside).sum()), inside.numel(), non_finite, n)
    return y


class AveragedNet(nn.Module):
    """The mean of the outputs of ``nets``, called as each of them is."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return torch.stack([net(*args, **kwargs) for net in self.nets]).mean(0)


def average_scores(estimators: Sequence[Any]) -> Any:
    r"""One estimator whose network is the mean of the members' networks, so that a trial
    set's composed score sums per-trial scores averaged over the K members:
    :math:`\mu_i = \tfrac1K\sum_k\mu_i^{(k)}` (the family's field is affine in its network's
    output, hence so are the denoisers). Averaging the scores, not mixing the composed
    posteriors, is what removes the part of the per-trial score error that differs between
    the members, before the composition adds it over the n trials; the part they share stays
    (``benchmarks/results_iid.md``, "The per-trial score error at n = 100": four flow-matching
    networks at 1,000 simulations lowered the n = 100 C2ST from 0.809 to 0.728 over three
    seeds but lost on one of them, and at 10,000 simulations, where the members share
    their error, the implied error barely moves; so it is an opt-in helper, not a default).

    Args:
        estimators: Two or more diffusion or flow-matching estimators of one class whose
            state outside the network (standardisers, baseline, embedding) is equal: members
            trained on the same simulations with the same options, without ``bootstrap``.

    Raises:
        ConfigError: Fewer than two members, mixed classes or options, or members whose
            standardisers, baselines or embeddings differ.
    """
    ests = list(estimators)
    if len(ests) < 2:
        raise ConfigError(f"average_scores needs at least 2 estimators, got {len(ests)}.")
    first = ests[0]
    for k, est in enumerate(ests[1:], start=1):
        if type(est) is not type(first) or est.options != first.options:
            raise ConfigError(
                f"average_scores: member {k} is a {type(est).__name__} with options "
                f"{est.options}, member 0 a {type(first).__name__} with {first.options}; "
                "train every member with the same estimator and options."
            )
        mine, theirs = _outside_net(est), _outside_net(first)
        same = mine.keys() == theirs.keys() and all(
            mine[key].shape == theirs[key].shape and torch.equal(mine[key], theirs[key])
            for key in mine
        )
        if not same:
            raise ConfigError(
                f"average_scores: member {k}'s standardisers, baseline or embedding differ "
                "from member 0's, so its network sees other inputs; train every member on the "
                "same simulations (NPE(..., ensemble=K) without bootstrap) with a fixed "
                "embedding."
            )
    out = copy.copy(first)
    out._modules = dict(first._modules)  # the copy's own module table, then its own net
    out.net = AveragedNet([est.net for est in ests])
    return out.eval()


def _outside_net(est: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in est.state_dict().items() if not k.startswith("net.")}
