r"""A toy collider chain: parton → recursive binary shower → detector → jet observables.

The generative story, with every random choice a pyro sample site so that the joint density
:math:`p(x, z \mid \theta)` of the observables and all latents is tractable:

* **Parameters** :math:`\theta = (\alpha, E_0)`: a coupling :math:`\alpha \in [0.1, 0.6]` that
  sets how readily partons split (and how hard and wide the splittings are), and an energy
  scale :math:`E_0 \in [20, 100]` GeV.
* **Parton** (:math:`z_p`): energy :math:`E \sim \mathrm{Gamma}(k, k / E_0)` with
  :math:`k = 20` (mean :math:`E_0`), direction at the origin of the small-angle plane.
* **Shower** (:math:`z_s`), a binary tree of depth at most ``MAX_DEPTH``. A live node of energy
  :math:`E > E_\text{cut}` splits with probability
  :math:`1 - e^{-\alpha \log(E / E_\text{cut})}` (Sudakov-like: harder partons split more);
  below the cut-off it stops. A splitting draws the momentum fraction
  :math:`\zeta \sim \mathrm{Beta}(c, c)`, :math:`c = 1 + 1/(2\alpha)`, the opening angle
  :math:`\vartheta \sim \mathrm{LogNormal}(\log(0.4\alpha), 0.5)` and the azimuth
  :math:`\phi \sim \mathcal U(0, 2\pi)`; the daughters carry :math:`\zeta E` and
  :math:`(1-\zeta) E` at directions :math:`r \pm (\cdot)\vartheta (\cos\phi, \sin\phi)` chosen so
  that the energy-weighted direction is conserved. The random number of splittings is a
  fixed-size tree with Bernoulli ``split_d`` sites and masks: a site's log-density counts
  only where its node exists (``<site>_mask`` latents record where).
* **Detector** (:math:`z_d`): each final particle is seen with efficiency
  :math:`0.95\,\sigma((E - 2)/0.5)` (a Bernoulli ``detected`` site).
* **Observables** :math:`x` (shape ``(5,)``): jet mass
  :math:`m^2 = (\sum_i E_i)(\sum_i E_i |r_i|^2) - |\sum_i E_i r_i|^2` (massless particles,
  small angles), multiplicity, visible energy and the two leading energy fractions of the
  detected particles, each smeared by a Gaussian detector resolution.

The marginal likelihood :math:`p(x \mid \theta)` integrates over a few hundred latent
dimensions and is not available in closed form; the joint log-density and the joint score
:math:`\nabla_\theta \log p(x, z \mid \theta)` come out of
``simulator.trace(theta, seed=...)``, and ``simulator.marginal_log_prob`` gives an
importance-sampling estimate.

**Reference posterior: pseudo-marginal MCMC** (:func:`reference_posterior`). Because
:math:`x` given the latents has a Gaussian density,
:math:`\hat L = \frac1K \sum_k p(x \mid z^{(k)}, \theta)`, :math:`z^{(k)} \sim p(z \mid \theta)`,
is an *unbiased* estimate of :math:`p(x \mid \theta)` (``simulator.marginal_log_prob``; one
batch of ``N × K`` showers through pyro, float32). Metropolis–Hastings that carries
:math:`\hat L` of its current state targets the exact posterior whatever the estimator's
variance, which only makes the chains stickier (Andrieu & Roberts, 2009), as for ``sir``. It
runs in :math:`u = \operatorname{logit}((\theta - \text{low}) / (\text{high} - \text{low}))`
(prior density :math:`\sigma(u)\sigma(-u)` per coordinate), so every proposal is in the
support: a multivariate-t proposal fitted by tempered adaptive importance sampling on a
cheaper estimate (``_mcmc.tempered_fit``, 512 points × 200 showers), then a few long chains
of pseudo-marginal independence Metropolis–Hastings (``_mcmc.pseudo_marginal_independence``),
all of whose proposals are estimated in vectorised batches of ~130,000 showers.

Particles: at :math:`\theta_o` on ``x_o``, :math:`\mathrm{sd}(\log \hat L)` is 1.8, 1.4,
1.16, 0.96 and 0.72 with :math:`K` = 300, 500, 700, 1,000 and 1,500 (left-skewed: the 0.02
resolution on the energy fractions makes most showers miss; 1.3–1.9 at :math:`K = 700` one
posterior sd away). The default ``NUM_PARTICLES`` = 700 sits in the standard pseudo-marginal
optimum (sd ≈ 1–1.5; Doucet et al., 2015) and measured cheapest per effective sample: ~6,000
showers against ~8,400 at :math:`K` = 1,000 and ~10,300 at 1,500. Acceptance is then ≈ 0.25
and the integrated autocorrelation ≈ 7 proposals, so every 4th proposal is kept (``thin``);
even so ~40 % of consecutive samples repeat (a rejected proposal keeps the state).

Cost (single-threaded, ~110,000 showers per CPU-second in batches of ``SHOWERS_PER_BATCH``):
2,000 samples = 4 chains × 2,020 proposals × 700 showers + ≤ 0.8M for the fit ≈ 6.5M
showers, measured 58 CPU-seconds (``REFERENCE_SECONDS``; 119 s wall on 2 cores at load
average 7.7), i.e. ~29 ms of CPU per sample; 10,000 samples ≈ 4–5 CPU-minutes. Split-
:math:`\hat R` of those 4 chains × 500: 1.004. Checked (``tests/test_simulators.py``, slow):
split-:math:`\hat R`, two seeds agree, importance sampling in :math:`\theta` with fresh
likelihood estimates gives the same moments, shifted or widened samples fail the same check,
and :math:`\theta_o` is covered.

**Many events.** ``x_o_events`` holds ``MAX_EVENTS`` = 1,000 i.i.d. jets at
:math:`\theta_o` (seed 2); the observation of n events, ``x_o_events[:n]``, is a set of n
i.i.d. trials (:mod:`simgen.iid`), and ``reference_posterior`` takes it. Its likelihood
estimate is the product of n per-event estimates, each from its own showers, so it stays
unbiased; the sd of its log grows as :math:`\sqrt n` and shrinks as :math:`1/\sqrt K`.
Measured at :math:`\theta_o` (16 repeats): :math:`\mathrm{sd}(\log\hat L)` = 2.09, 1.29,
0.84 for n = 3 events at K = 700, 2,000, 5,000 showers per event, and 5.64, 3.38, 1.85 for
n = 10. The default K = 700 n per event keeps it near one event's (≈ 1.3 at n = 3, ≈ 1.6 at
n = 10 by the :math:`1/\sqrt K` trend), so a proposal costs 700 n² showers: 0.036 CPU-s at
n = 3 (6,300 showers), about 0.55 CPU-s at n = 10 (70,000; 0.39 measured at K = 5,000).
2,000 samples are about 8,100 proposals plus the proposal's fit (rounds of 512 points ×
200 n showers × n events). At n = 3 (``reference_chains(x_o_events[:3], 2000)``) measured
362 CPU-s, acceptance 0.30, split-:math:`\hat R` 1.001 and 1.004 over 4 chains × 500, a
third of consecutive states repeated; posterior α 0.288 ± 0.056, :math:`E_0` 52.4 ± 7.8.
At n = 10 about 75 CPU-minutes (extrapolated from the cost per proposal, not run). So the
tests and the tutorial rest on the conjugate models for large n, and on a reference at 3
events here.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from simgen.priors import BoxUniform
from simgen.simulator import PyroSimulator

from ._mcmc import pseudo_marginal_independence, single_thread, tempered_fit

__all__ = [
    "prior",
    "model",
    "simulator",
    "log_likelihood_estimate",
    "reference_chains",
    "reference_posterior",
    "theta_o",
    "x_o",
    "x_o_events",
    "MAX_EVENTS",
    "OBSERVABLES",
    "MAX_DEPTH",
    "NUM_PARTICLES",
    "REFERENCE_SECONDS",
]

MAX_DEPTH = 4
E_CUT = 1.0
GAMMA_SHAPE = 20.0
OBSERVABLES = (
    "jet_mass",
    "multiplicity",
    "visible_energy",
    "leading_fraction",
    "subleading_fraction",
)

LOW, HIGH = torch.tensor([0.1, 20.0]), torch.tensor([0.6, 100.0])
prior = BoxUniform(low=LOW, high=HIGH)
#: Showers per likelihood estimate in the reference sampler: sd(log L̂) ≈ 1.16 at θ_o.
NUM_PARTICLES = 700
#: Approximate single-core (CPU) seconds for ``reference_posterior(x_o, 2000)`` (58 measured).
REFERENCE_SECONDS = 60.0
#: Showers simulated per vectorised batch of likelihood estimates.
SHOWERS_PER_BATCH = 2**17


def _shower(n: int, alpha: Tensor, energy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Grow the tree level by level; returns leaf energies, directions and mask."""
    dtype = energy.dtype
    e = energy[:, None]
    r = energy.new_zeros(n, 1, 2)
    live = torch.ones(n, 1, dtype=torch.bool)
    leaves_e, leaves_r, leaves_m = [], [], []
    a = alpha[:, None]
    for d in range(MAX_DEPTH):
        can_split = live & (e > E_CUT)
        log_ratio = torch.log(torch.where(can_split, e, 2 * E_CUT) / E_CUT)
        p = (1 - torch.exp(-a * log_ratio)).clamp(1e-6, 1 - 1e-6)
        pyro.deterministic(f"split_{d}_mask", can_split)
        split = pyro.sample(f"split_{d}", dist.Bernoulli(p).mask(can_split).to_event(1))
        split = split.bool() & can_split
        for name in ("zeta", "angle", "phi"):
            pyro.deterministic(f"{name}_{d}_mask", split)
        conc = (1 + 0.5 / a).expand(n, 2**d)
        zeta = pyro.sample(f"zeta_{d}", dist.Beta(conc, conc).mask(split).to_event(1))
        loc = torch.log(0.4 * a).expand(n, 2**d)
        angle = pyro.sample(f"angle_{d}", dist.LogNormal(loc, 0.5).mask(split).to_event(1))
        two_pi = torch.full((n, 2**d), 2 * math.pi, dtype=dtype)
        phi = pyro.sample(
            f"phi_{d}", dist.Uniform(torch.zeros_like(two_pi), two_pi).mask(split).to_event(1)
        )
        leaf = live & ~split
        leaves_e.append(e)
        leaves_r.append(r)
        leaves_m.append(leaf)
        u = torch.stack([torch.cos(phi), torch.sin(phi)], -1) * angle[..., None]
        z = zeta[..., None]
        r = torch.stack([r + (1 - z) * u, r - z * u], 2).reshape(n, 2 ** (d + 1), 2)
        e = torch.stack([zeta * e, (1 - zeta) * e], 2).reshape(n, 2 ** (d + 1))
        live = torch.stack([split, split], 2).reshape(n, 2 ** (d + 1))
    leaves_e.append(e)
    leaves_r.append(r)
    leaves_m.append(live)
    return torch.cat(leaves_e, 1), torch.cat(leaves_r, 1), torch.cat(leaves_m, 1)


def observables(e: Tensor, r: Tensor, seen: Tensor) -> Tensor:
    """Jet observables ``(N, 5)`` from particle energies ``(N, P)``, directions and a mask."""
    w = e * seen
    e_vis = w.sum(-1)
    mass2 = e_vis * (w * (r**2).sum(-1)).sum(-1) - ((w[..., None] * r).sum(1) ** 2).sum(-1)
    top = torch.topk(w, 2, dim=-1).values / e_vis.clamp(min=1e-3)[:, None]
    mass = torch.sqrt(mass2.clamp(min=0) + 1e-6)
    return torch.stack([mass, seen.sum(-1).to(e.dtype), e_vis, top[:, 0], top[:, 1]], -1)


def model(n: int) -> None:
    """The pyro program: ``n`` jets, sites ``theta``, latents, and ``x`` (shape ``(n, 5)``)."""
    with pyro.plate("sims", n):
        theta = pyro.sample("theta", dist.Uniform(LOW, HIGH).to_event(1))
        alpha, e0 = theta[:, 0], theta[:, 1]
        energy = pyro.sample("parton_energy", dist.Gamma(GAMMA_SHAPE, GAMMA_SHAPE / e0))
        e, r, leaf = _shower(n, alpha, energy)
        eff = 0.95 * torch.sigmoid((e - 2.0) / 0.5)
        pyro.deterministic("detected_mask", leaf)
        seen = pyro.sample("detected", dist.Bernoulli(eff).mask(leaf).to_event(1))
        loc = observables(e, r, seen.bool() & leaf)
        scale = torch.stack(
            [
                0.05 * loc[:, 0] + 0.2,
                torch.full_like(loc[:, 0], 0.3),
                0.5 * loc[:, 2].clamp(min=0).sqrt() + 0.1,
                torch.full_like(loc[:, 0], 0.02),
                torch.full_like(loc[:, 0], 0.02),
            ],
            -1,
        )
        pyro.sample("x", dist.Normal(loc, scale).to_event(1))


simulator = PyroSimulator(model)
theta_o = torch.tensor([0.3, 50.0])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
#: Events in the many-event observation :data:`x_o_events`.
MAX_EVENTS = 1000
#: ``MAX_EVENTS`` i.i.d. jets at :math:`\theta_o` (seed 2): the observation of n events is
#: ``x_o_events[:n]``, a set of n i.i.d. trials (:mod:`simgen.iid`).
x_o_events = simulator(
    theta_o.expand(MAX_EVENTS, 2).clone(), generator=torch.Generator().manual_seed(2)
)


def log_likelihood_estimate(
    theta: Tensor,
    x: Tensor,
    num_particles: int = NUM_PARTICLES,
    generator: torch.Generator | None = None,
) -> Tensor:
    r""":math:`\log \hat L(\theta)`, ``(N,)`` float64, for ``theta`` ``(N, 2)`` and one ``x``
    ``(5,)`` or ``n`` i.i.d. events ``(n, 5)``.

    ``simulator.marginal_log_prob`` with ``num_particles`` showers per θ and event, all
    ``N × n × num_particles`` in one batch (float32). Each event gets its own showers, so
    :math:`\hat L = \prod_i \hat L_i` is a product of independent unbiased estimates and
    unbiased for :math:`p(x_{1:n} \mid \theta)` (showers shared between events would make it
    biased). Its seed is drawn from ``generator`` (torch's default one if ``None``), so
    successive calls use independent showers.
    """
    seed = int(torch.randint(2**62, (), generator=generator))
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, len(OBSERVABLES))
    n = len(x)
    rows = theta.float().repeat_interleave(n, 0)
    lml = simulator.marginal_log_prob(rows, x.repeat(len(theta), 1), num_particles, seed=seed)
    return lml.double().reshape(len(theta), n).sum(-1)


def _to_theta(u: Tensor) -> Tensor:
    return LOW.double() + (HIGH - LOW).double() * torch.sigmoid(u)


def reference_chains(
    x_o: Tensor,
    num_samples: int,
    seed: int = 0,
    num_particles: int | None = None,
    num_chains: int | None = None,
    thin: int = 4,
    fit_points: int = 512,
    fit_particles: int | None = None,
    info: dict | None = None,
) -> Tensor:
    r"""Pseudo-marginal chains of θ, ``(draws, chains, 2)`` float64 (module docstring), given
    one event ``x_o`` ``(5,)`` or ``n`` i.i.d. events ``(n, 5)``.

    ``num_chains`` defaults to one per 500 samples (at least 4, at most 64): long chains,
    because pseudo-marginal chains are sticky and split-:math:`\hat R` needs length. Every
    ``thin``-th of ``burn_in + draws × thin`` proposals per chain is kept (``burn_in`` = 20).
    The proposal is fitted with ``fit_points`` draws × ``fit_particles`` showers per event.
    ``num_particles`` (showers per event) defaults to ``NUM_PARTICLES × n`` and
    ``fit_particles`` to ``200 × n``: the sd of a sum of n per-event log-estimates grows as
    :math:`\sqrt n` and shrinks as :math:`1/\sqrt K`, so :math:`K \propto n` keeps
    :math:`\mathrm{sd}(\log\hat L)` where it is for one event (module docstring, *Many events*).
    If ``info`` is a dict, the acceptance rate is stored in it (``"accept"``).
    """
    n = len(torch.as_tensor(x_o).reshape(-1, len(OBSERVABLES)))
    num_particles = NUM_PARTICLES * n if num_particles is None else num_particles
    fit_particles = 200 * n if fit_particles is None else fit_particles
    with single_thread(), torch.no_grad():
        g = torch.Generator().manual_seed(seed)

        def log_post(u: Tensor, k: int = num_particles) -> Tensor:
            log_jacobian = (
                torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)
            ).sum(-1)
            rows = max(1, SHOWERS_PER_BATCH // (k * n))
            log_lik = [log_likelihood_estimate(_to_theta(b), x_o, k, g) for b in u.split(rows)]
            return log_jacobian + torch.cat(log_lik)

        # From the prior's moments in u (standard logistic: sd π/√3 ≈ 1.8).
        zero = torch.zeros(2, dtype=torch.float64)
        loc, tril = tempered_fit(
            lambda u: log_post(u, fit_particles),
            zero,
            torch.eye(2, dtype=torch.float64) * math.pi / 3**0.5,
            fit_points,
            g,
            max_iter=8,
            stop_ess=0.3,
        )
        if num_chains is None:
            num_chains = max(4, min(num_samples // 500, 64))
        num_chains = min(num_chains, num_samples)
        num_draws = -(-num_samples // num_chains)
        chains = pseudo_marginal_independence(
            log_post,
            loc,
            tril,
            num_chains,
            num_draws,
            g,
            burn_in=20,
            thin=thin,
            batch_size=max(1, SHOWERS_PER_BATCH // (num_particles * n)),
            info=info,
        )
        return _to_theta(chains)


def reference_posterior(
    x_o: Tensor,
    num_samples: int,
    seed: int = 0,
    num_particles: int | None = None,
    **options: int,
) -> Tensor:
    """Posterior samples ``(num_samples, 2)`` of θ by pseudo-marginal MCMC (module docstring),
    given one event ``(5,)`` or n i.i.d. events ``(n, 5)``.

    ``options`` go to :func:`reference_chains` (``num_chains``, ``thin``, ``fit_points``,
    ``fit_particles``). About ``REFERENCE_SECONDS`` CPU-seconds for 2,000 samples given one
    event; for n events the cost grows as n² (module docstring, *Many events*).
    """
    chains = reference_chains(x_o, num_samples, seed, num_particles, **options)
    return chains.reshape(-1, 2)[:num_samples].float()
