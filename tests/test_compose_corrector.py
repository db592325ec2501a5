"""The Langevin corrector of composed i.i.d. posteriors (simgen.estimators.compose_sampler).

Two seeded checks with controls that fail. (1) On the conjugate model of ``test_iid`` a
sampler with far too few ODE steps ends on posteriors of the wrong width; ten corrector
moves bring it within the moment tolerance of ``test_iid`` (means within 0.16 posterior sds,
sds within 12%) at n = 10 and 100, where zero moves fail it. (2) On a Gaussian cut by a box
face one sd from its mean, reflected moves on the smooth score from draws four times too
wide reach the truncated law's mean and sd within 0.15 sd and 6% (2,000 draws; the moves'
own bias at the face at step 0.5 is about 0.1 sd, 0.05 at 0.25), where the wrong-sign score
and the moves without reflection fail.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_iid import exact_field, moments_ok, trials

from simgen.errors import ConfigError
from simgen.estimators import compose_sampler
from simgen.estimators.diffusion import Diffusion
from simgen.estimators.flow_matching import FlowMatching
from simgen.iid import RejectionWarning
from simgen.posterior import DirectPosterior
from simgen.priors import BoxUniform, in_support

DTYPE = torch.float64


@pytest.mark.parametrize("cls, steps", [(Diffusion, 3), (FlowMatching, 2)])
def test_corrector_repairs_a_coarse_sampler_on_the_closed_form(cls: type, steps: int) -> None:
    corrected = exact_field(cls, steps=steps, corrector_steps=10)
    plain = exact_field(cls, steps=steps)
    for n in (10, 100):
        x = trials(n)
        assert moments_ok(corrected.sample((1000,), x=x, seed=0), x), (cls.name, n)
        assert not moments_ok(plain.sample((1000,), x=x, seed=0), x), (cls.name, n)  # control


def truncated_moments(mean: torch.Tensor, sd: torch.Tensor, lo: torch.Tensor, num: int = 400_000):
    """Mean and sd of N(mean, sd^2) cut to [lo, inf) per coordinate, by rejection."""
    g = torch.Generator().manual_seed(7)
    z = mean + sd * torch.randn(num, len(mean), generator=g, dtype=DTYPE)
    cols = [z[z[:, j] >= lo[j], j] for j in range(len(mean))]
    return torch.stack([c.mean() for c in cols]), torch.stack([c.std() for c in cols])


def run_moves(sign: float, box: bool) -> torch.Tensor:
    mean, sd = torch.tensor([0.0, 2.0], dtype=DTYPE), torch.tensor([1.0, 0.5], dtype=DTYPE)
    lo, hi = torch.tensor([-1.0, 1.5], dtype=DTYPE), torch.tensor([50.0, 50.0], dtype=DTYPE)

    def score(y: torch.Tensor) -> torch.Tensor:
        return sign * -(y - mean) / sd**2

    torch.manual_seed(3)
    y = mean + 4 * sd * torch.randn(2000, 1, 2, dtype=DTYPE)
    fallback = torch.diag(sd**2)[None]
    return compose_sampler.correct(y, score, 30, 0.5, fallback, (lo, hi) if box else None)[:, 0]


def test_corrector_samples_a_gaussian_cut_by_a_box_face() -> None:
    mean, sd = torch.tensor([0.0, 2.0], dtype=DTYPE), torch.tensor([1.0, 0.5], dtype=DTYPE)
    t_mean, t_sd = truncated_moments(mean, sd, torch.tensor([-1.0, 1.5], dtype=DTYPE))

    def ok(y: torch.Tensor) -> bool:
        if not y.isfinite().all():
            return False
        mean_err = ((y.mean(0) - t_mean) / t_sd).abs().max()
        return bool(mean_err < 0.15 and (y.std(0) / t_sd - 1).abs().max() < 0.06)

    assert ok(run_moves(1.0, box=True))
    assert not ok(run_moves(-1.0, box=True))  # the wrong-sign score
    assert not ok(run_moves(1.0, box=False))  # no reflection: the untruncated Gaussian


def test_preconditioner_is_the_target_covariance_for_a_gaussian() -> None:
    """Stein's regression gives a Gaussian target's covariance from draws twice too wide, and
    never more than the draws' own covariance (draws too narrow keep their own)."""
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=DTYPE)
    prec = torch.linalg.inv(cov)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 1, 2, generator=g, dtype=DTYPE) @ torch.linalg.cholesky(cov).T
    for scale, want in ((2.0, cov), (0.5, 0.25 * cov)):
        y = scale * z
        c, root = compose_sampler.ensemble_preconditioner(y, -y @ prec, cov[None])
        torch.testing.assert_close(c[0], want, atol=0.03, rtol=0.05)
        torch.testing.assert_close(root @ root.transpose(-1, -2), c)
    few = z[:5]
    torch.testing.assert_close(
        compose_sampler.ensemble_preconditioner(few, -few @ prec, cov[None])[0], cov[None]
    )


@pytest.mark.parametrize("cls", [Diffusion, FlowMatching])
def test_corrector_options_are_checked_and_saved_in_the_spec(cls: type) -> None:
    for bad in (
        {"corrector_steps": -1},
        {"corrector_steps": 2.5},
        {"corrector_step": 0.0},
        {"corrector_step": 1.5},
    ):
        with pytest.raises(ConfigError, match="corrector_step"):
            cls(2, (2,), **bad)
    est = cls(2, (2,), corrector_steps=10, corrector_step=0.25)
    assert (est.options["corrector_steps"], est.options["corrector_step"]) == (10, 0.25)
    assert cls(2, (2,)).options["corrector_steps"] == 0


def test_corrected_draws_stay_in_a_box_prior() -> None:
    """Under a box prior whose face lies 2.4 posterior sds above the composed mean, every
    corrected draw is finite and in the box (no draw is lost to NPE's rejection); the
    uncorrected sampler, the control, leaves 43% outside and warns (RejectionWarning). Only
    the support is checked: the exact field's per-trial posteriors ignore the box."""
    prior = BoxUniform(torch.tensor([-3.0, -3.0]), torch.tensor([1.2, 3.0]))
    x = trials(10)
    inside, warned = [], []
    for moves in (5, 0):
        est = exact_field(Diffusion, steps=25, corrector_steps=moves).estimator
        posterior = DirectPosterior(est, prior, support="reject")
        posterior._draw_rejected = est.draw  # every draw, inside the support or not
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            draws = posterior.sample((1000,), x=x, seed=0)
        inside.append(float(in_support(prior, draws).float().mean()))
        warned.append(any(issubclass(w.category, RejectionWarning) for w in caught))
    assert inside[0] == 1.0 and inside[1] < 0.99, inside
    assert warned == [False, True]
