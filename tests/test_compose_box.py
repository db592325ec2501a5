"""Composed i.i.d. posteriors where a box prior's face cuts the posterior.

The model: theta_j ~ U[0, 4], x_ij | theta ~ N(theta_j, 1), so the posterior of n trials is
N(mean(x), 1 / n) truncated to the box, per coordinate (truncated-normal moments in closed
form), and each trial's denoising posterior p(theta | y_t, x_i) is a truncated normal too:
the per-trial field is exact (the network is replaced by it), so the checks test the
composition. theta_o = (0.1, 2.0) puts the first coordinate's posterior against the face 0.

(1) At n = 10 the composed draws (projected denoiser, ``compose.StandardPrior.project``) are
all finite, at most 5% leave the box, and the kept ones match the closed form: means within
TOL_MEAN = 0.25 posterior sds (the GAUSS rule's own error on these box-truncated factors:
0.20 sd on diffusion's interior coordinate, 0.23 on flow matching's face one; 1,000 draws
add a standard error of 0.03) and sds within TOL_SD = 12% (measured 5-6%). The control,
the unprojected rule, leaves some draws non-finite and fails.
(2) At n = 100 the unprojected rule leaves most draws non-finite; the projected one none,
but 40-50% lie outside the box (the rule's limit at a face), and the sampler warns
(RejectionWarning naming the share); at n = 10 (2-3% rejected) it does not.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from simgen.errors import SimgenError
from simgen.estimators import compose, compose_sampler
from simgen.estimators.diffusion import Diffusion
from simgen.estimators.flow_matching import FlowMatching
from simgen.iid import HIGH_REJECTION, RejectionWarning, warn_if_rejecting
from simgen.posterior import DirectPosterior
from simgen.priors import BoxUniform, in_support

D, S = 2, 1.0
LO, HI = torch.zeros(D), torch.full((D,), 4.0)
PRIOR = BoxUniform(LO, HI)
THETA_O = torch.tensor([0.1, 2.0])
F64 = torch.float64
TOL_MEAN, TOL_SD = 0.25, 0.12


def truncated_moments(m: torch.Tensor, sd, lo: torch.Tensor, hi: torch.Tensor):
    """Mean and sd of N(m, sd^2) truncated to [lo, hi], per coordinate."""
    a, b = (lo - m) / sd, (hi - m) / sd
    log_z = compose._log_diff_ndtr(b, a)
    pa, pb = (compose._log_phi(a) - log_z).exp(), (compose._log_phi(b) - log_z).exp()
    var = sd**2 * (1 + a * pa - b * pb - (pa - pb) ** 2)
    return m + sd * (pa - pb), var.sqrt()


def exact_denoiser(yt: torch.Tensor, r: float, x: torch.Tensor) -> torch.Tensor:
    """E[theta | theta + r eps = yt, x_i]: the box times N(x_i, S^2) N(yt, r^2)."""
    prec = 1 / S**2 + 1 / r**2
    m = (x.double() / S**2 + yt.double() / r**2) / prec
    return truncated_moments(m, prec**-0.5, LO.double(), HI.double())[0]


def exact_field(cls: type) -> DirectPosterior:
    """A vector-field NPE whose per-trial field is the exact one above, and whose baseline
    covariance is the per-trial posterior variance averaged over the prior predictive."""
    est = cls(D, (D,), gaussian_baseline=True, hidden_features=(8,))
    g = torch.Generator().manual_seed(5)
    theta = LO + (HI - LO) * torch.rand(4000, D, generator=g)
    x = (theta + S * torch.randn(4000, D, generator=g)).double()
    sd = truncated_moments(x, S, LO.double(), HI.double())[1]
    with torch.no_grad():
        est.baseline.weight.copy_(torch.eye(D))
        est.baseline.bias.zero_()
        est.baseline.eigvals.copy_(sd.square().mean(0).float())
    if cls is Diffusion:

        def noise(y, t, c, m=None, guided=True):
            alpha, sigma = est.marginal(t)
            mu = exact_denoiser(y / alpha, float(sigma / alpha), c).to(y.dtype)
            return (y - alpha * mu) / sigma

        est.noise = noise
    else:
        k = 1 - est.sigma_min

        def velocity(y, t, c, m=None, **kw):
            a, tt = 1 - k * t, t.clamp_min(1e-4)
            mu = exact_denoiser(y / tt, float(a / tt), c).to(y.dtype)
            return (mu - k * y) / a

        est.velocity = velocity
    posterior = DirectPosterior(est, PRIOR, support="reject")
    posterior._draw_rejected = est.draw  # every draw, inside the support or not
    return posterior


def trials(n: int) -> torch.Tensor:
    return THETA_O + S * torch.randn(n, D, generator=torch.Generator().manual_seed(0))


def matches_closed_form(draws: torch.Tensor, x: torch.Tensor) -> bool:
    """All draws finite, at most 5% outside the box, the kept ones' moments within
    tolerance of the truncated closed form."""
    if not draws.isfinite().all():
        return False
    inside = in_support(PRIOR, draws)
    kept = draws[inside].double()
    mean, sd = truncated_moments(x.double().mean(0), S / len(x) ** 0.5, LO.double(), HI.double())
    mean_err = ((kept.mean(0) - mean) / sd).abs().max()
    sd_err = (kept.std(0) / sd - 1).abs().max()
    return bool(inside.float().mean() >= 0.95 and mean_err < TOL_MEAN and sd_err < TOL_SD)


def sample(posterior: DirectPosterior, n: int) -> tuple[torch.Tensor, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = posterior.sample((1000,), x=trials(n), seed=0)
    return draws, [w for w in caught if issubclass(w.category, RejectionWarning)]


@pytest.fixture
def unprojected(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = compose_sampler.TrialComposition.gauss_denoiser
    monkeypatch.setattr(compose_sampler.TrialComposition, "denoiser", rule)


@pytest.mark.parametrize("cls", [Diffusion, FlowMatching])
def test_projected_rule_matches_the_truncated_closed_form_at_a_face(cls: type) -> None:
    draws, caught = sample(exact_field(cls), 10)
    assert matches_closed_form(draws, trials(10))
    assert not caught  # 2-3% rejected: no warning


@pytest.mark.parametrize("cls", [Diffusion, FlowMatching])
def test_unprojected_rule_diverges_at_a_face(cls: type, unprojected: None) -> None:
    draws, _ = sample(exact_field(cls), 10)
    assert not draws.isfinite().all()  # the control: some draws overflow
    assert not matches_closed_form(draws, trials(10))


def test_unprojected_rule_mostly_diverges_at_100_trials_and_warns(unprojected: None) -> None:
    draws, caught = sample(exact_field(FlowMatching), 100)
    assert draws.isfinite().all(-1).float().mean() < 0.5
    assert caught and "not finite" in str(caught[0].message)


def test_high_rejection_warns_with_the_share() -> None:
    draws, caught = sample(exact_field(Diffusion), 100)
    assert draws.isfinite().all()  # projected: nothing overflows
    rejected = 1 - float(in_support(PRIOR, draws).float().mean())
    assert rejected > HIGH_REJECTION
    assert caught and f"{rejected:.0%} of the composed posterior's draws" in str(caught[0].message)


def test_account_counts_and_raises() -> None:
    box = compose.StandardPrior("box", LO, HI)
    gauss = compose.StandardPrior("gauss", torch.zeros(D), torch.eye(D))
    y = torch.full((20, 1, D), 1.0)
    y[0, 0, 0] = float("nan")
    y[1:3, 0, 1] = 5.0  # outside the box: 3 of 20 rejected, above 10%
    with pytest.warns(RejectionWarning, match=r"15% .*\(3 of 20; 1 not finite\)"):
        compose_sampler.account(y, box, 7)
    with pytest.raises(SimgenError, match="1 of 20 draws"):
        compose_sampler.account(y, gauss, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_rejecting(10, 100, 0, 5)  # at the threshold: silent
        compose_sampler.account(y[1:], gauss, 7)  # finite under a Gaussian prior
    with pytest.warns(RejectionWarning):
        warn_if_rejecting(11, 100, 0, 5)


def test_projection_is_the_box_clamp() -> None:
    box = compose.StandardPrior("box", LO, HI)
    mu = torch.tensor([[-1.0, 2.0], [3.0, 9.0]])
    torch.testing.assert_close(box.project(mu), torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
    gauss = compose.StandardPrior("gauss", torch.zeros(D), torch.eye(D))
    assert gauss.project(mu) is mu
