# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 2: simulators with latent variables
#
# Physics simulators are rarely `theta -> x` in one step: the parameters set the law of
# unobserved quantities (true particle energies, a shower history, which hits the detector
# saw), and the observables are a noisy function of those. Written as a
# [pyro](https://pyro.ai) program, such a simulator tells simgen its whole latent structure:
#
# - `sim.trace(theta, seed=...)` returns every latent by name, the joint log-density
#   $\log p(x, z \mid \theta)$ and the joint score $\nabla_\theta \log p(x, z \mid \theta)$;
# - latents of random size (a random number of particles) are padded to a fixed size with a
#   mask that says which entries exist;
# - neural posterior estimation needs none of it: trained on `(theta, x)` pairs, NPE learns
#   $p(\theta \mid x) = \int p(\theta, z \mid x)\,dz$, every nuisance latent marginalised.
#
# Run end to end with `python tutorials/02_latent_simulators.py` (set `SIMGEN_FAST=1` for a
# quick pass). Cells are marked `# %%` for Jupyter/VS Code.

# %%
import os

import pyro
import pyro.distributions as dist
import torch

import simgen
from simgen import plots
from simgen.simulate import sample_prior
from simulators import particle_shower

FAST = os.environ.get("SIMGEN_FAST") == "1"
NUM_SIMULATIONS = 1000 if FAST else 20_000
MAX_EPOCHS = 20 if FAST else 500
NUM_DIAGNOSTIC = 100 if FAST else 1000  # simulated observations for the calibration checks

# %% [markdown]
# ## 1. A small calorimeter as a pyro program
# Parameters $\theta = (\lambda, \bar E)$: the expected number of particles in an event and
# their mean energy. The latent hierarchy:
#
# - the number of particles $n \sim \mathrm{Binomial}(n_\max, \lambda / n_\max)$;
# - their true energies $E_k \sim \mathrm{Gamma}(4, 4/\bar E)$ for $k < n$: a latent of random
#   size, written as a fixed-size vector of $n_\max$ entries whose log-density is masked to
#   the first $n$ (`dist.Gamma(...).mask(mask)`); the mask is recorded with
#   `pyro.deterministic("energy_mask", mask)` so that it comes back beside the energies;
# - the detector reads the total energy with a resolution $0.1\sqrt{E} + 0.1$, the leading
#   energy with resolution $0.2$, and the hit count with noise $0.5$.
#
# The conventions `from_pyro` expects: the program is called as `model(num_simulations)`,
# θ is drawn at a site called `"theta"` (event shape `(D,)`), the observables at `"x"`, and
# every site sits inside `pyro.plate("sims", num_simulations)`.

# %%
MAX_PARTICLES = 12
LOW, HIGH = torch.tensor([1.0, 1.0]), torch.tensor([8.0, 5.0])
prior = simgen.BoxUniform(low=LOW, high=HIGH)


def calorimeter(n: int) -> None:
    with pyro.plate("sims", n):
        theta = pyro.sample("theta", dist.Uniform(LOW, HIGH).to_event(1))
        rate, mean_energy = theta[:, 0], theta[:, 1]
        count = pyro.sample("count", dist.Binomial(MAX_PARTICLES, rate / MAX_PARTICLES))
        mask = torch.arange(MAX_PARTICLES) < count[:, None]
        pyro.deterministic("energy_mask", mask)
        shape = torch.full((n, MAX_PARTICLES), 4.0)
        energy = pyro.sample(
            "energy", dist.Gamma(shape, shape / mean_energy[:, None]).mask(mask).to_event(1)
        )
        seen = energy * mask
        total, leading = seen.sum(-1), seen.max(-1).values
        loc = torch.stack([total, leading, count], -1)
        scale = torch.stack(
            [0.1 * total.sqrt() + 0.1, torch.full_like(total, 0.2), torch.full_like(total, 0.5)],
            -1,
        )
        pyro.sample("x", dist.Normal(loc, scale).to_event(1))


sim = simgen.from_pyro(calorimeter)
print(sim)

# %% [markdown]
# `sim` is an ordinary simgen simulator (`sim(theta) -> x`, seeded by `generator=`), so
# `simgen.simulate` and every diagnostic take it as they take a plain function.

# %%
theta = prior.sample((4,))
x = sim(theta, generator=torch.Generator().manual_seed(0))
print("theta", theta, "\nx", x)

# %% [markdown]
# ## 2. The trace: latents, joint log-density and joint score
# `sim.trace(theta, seed=...)` runs the program with θ fixed (pyro's `poutine.condition`),
# records every site (`poutine.trace`) and replays the recorded values with a θ that
# requires grad, so one backward pass gives every row's score. Same seed, same trace.

# %%
tr = sim.trace(theta, seed=0)
for name, value in tr.latents.items():
    print(f"{name:12s} {tuple(value.shape)} {value.dtype}")
print("log p(x, z | theta):", tr.joint_log_prob)
print("grad_theta log p(x, z | theta):\n", tr.joint_score)
print("mask row 0:", tr.latents["energy_mask"][0].int().tolist(), "count", tr.latents["count"][0])
assert torch.equal(sim.trace(theta, seed=0).x, tr.x)  # reproducible

# %% [markdown]
# **Masks.** Entries past `count` are padding: pyro still draws a value there, but the
# masked log-density ignores it. Changing the padding leaves $\log p(x, z \mid \theta)$ alone;
# `sim.log_prob(theta, latents, x)` evaluates the joint density for any latents we pass.

# %%
random_latents = {k: v for k, v in tr.latents.items() if not k.endswith("_mask")}
scrambled = dict(random_latents)
scrambled["energy"] = torch.where(tr.latents["energy_mask"], tr.latents["energy"], 123.0)
print("joint log-prob, padding scrambled:", sim.log_prob(theta, scrambled, tr.x))

# %% [markdown]
# **The score is a gradient of that density**, so a central finite difference of
# `sim.log_prob` reproduces it (in float64). Joint scores are what score-based SBI methods
# (e.g. SCANDAL-type losses) and Fisher-information estimates are built from.

# %%
theta64 = theta.double()
tr64 = sim.trace(theta64, seed=0)
latents64 = {k: v for k, v in tr64.latents.items() if not k.endswith("_mask")}
eps = 1e-5
fd = torch.stack(
    [
        (
            sim.log_prob(theta64 + eps * torch.eye(2, dtype=torch.float64)[d], latents64, tr64.x)
            - sim.log_prob(theta64 - eps * torch.eye(2, dtype=torch.float64)[d], latents64, tr64.x)
        )
        / (2 * eps)
        for d in range(2)
    ],
    -1,
)
print("max |autograd score - finite difference|:", float((fd - tr64.joint_score).abs().max()))

# %% [markdown]
# **The marginal likelihood** $p(x \mid \theta) = \int p(x \mid z, \theta)\,p(z \mid \theta)\,dz$
# is what the latents cost us: `sim.marginal_log_prob` estimates it by importance sampling
# from the program itself (unbiased in $p$, noisy in $\log p$ when x pins z down). Here it is
# at the true θ and at a wrong one.

# %%
x_one = tr.x[:1].expand(2, -1)
theta_pair = torch.stack([theta[0], torch.tensor([7.0, 4.5])])
print("log p(x | theta) at the true and a wrong theta:")
print(sim.marginal_log_prob(theta_pair, x_one, num_particles=2000, seed=0))

# %% [markdown]
# ## 3. A real one: `simulators.particle_shower`
# A parton splits recursively into a binary tree of depth at most 4 (a random number of
# splittings, each with a momentum fraction, an opening angle and an azimuth), each final
# particle is detected or not, and five jet observables are smeared by the detector. Every
# level of the tree is a fixed-size latent with its mask.

# %%
shower = particle_shower.simulator
tr = shower.trace(particle_shower.theta_o[None].expand(3, -1), seed=1)
latents = {k: v for k, v in tr.latents.items() if not k.endswith("_mask")}
print(f"{len(latents)} latent sites (+ {len(tr.latents) - len(latents)} masks),", end=" ")
print(f"{sum(v[0].numel() for v in latents.values())} latent numbers per jet")


def counted(name: str) -> torch.Tensor:
    """Sum a padded latent over the entries that exist (its mask)."""
    return (tr.latents[name] * tr.latents[f"{name}_mask"]).sum(-1)


print("splittings per jet:", sum(counted(f"split_{d}") for d in range(4)))
print("final particles:", tr.latents["detected_mask"].sum(-1), "detected:", counted("detected"))
print("summed without the mask (padding included):", tr.latents["detected"].sum(-1))
print("observables", particle_shower.OBSERVABLES, "\n", tr.x)
print("joint log-prob", tr.joint_log_prob, "\njoint score (alpha, E0)\n", tr.joint_score)

# %% [markdown]
# ## 4. NPE with every nuisance latent marginalised
# NPE never sees z: it is trained on `(theta, x)` pairs drawn from $p(\theta)p(x \mid \theta)$,
# and the loss $-\mathbb E \log q(\theta \mid x)$ is minimised by the marginal posterior.
# `simgen.simulate` calls the pyro program in seeded batches.

# %%
prior_shower = particle_shower.prior
theta, x = simgen.simulate(shower, prior_shower, NUM_SIMULATIONS, seed=0)
print("simulated", tuple(theta.shape), tuple(x.shape))
posterior = simgen.NPE(prior_shower, estimator="nsf").fit(
    theta, x, seed=0, max_epochs=MAX_EPOCHS, progress=False
)
h = posterior.history
print(f"trained {h.epochs} epochs in {h.seconds:.1f}s")

x_o, theta_o = particle_shower.x_o, particle_shower.theta_o
samples = posterior.sample((2000,), x=x_o, seed=0)
print("posterior mean", samples.mean(0), "std", samples.std(0), "true", theta_o)
plots.corner(samples, truth=theta_o, labels=[r"$\alpha$", r"$E_0$"], path="tutorial2_corner.png")

# %% [markdown]
# ### The joint score: more from every simulation
# With `joint=True` the same simulations (same seed, same x) also carry each row's joint
# log-density and joint score $t = \nabla_\theta \log p(x, z \mid \theta)$ from the
# trace (banked with x when `bank=` is given). Its conditional mean given $(\theta, x)$ is
# the likelihood's score, so NPE can also regress its own score on $t$ plus the prior's
# (`fit(..., joint_score=...)`, SCANDAL). The minimiser is unchanged, and each simulation
# now carries D more numbers. On this shower at 1,000 simulations it lowered C2ST against
# the reference from 0.615 to 0.587 (4 seeds; `benchmarks/results_joint_score.md`), at
# about 3x the training time.

# %%
joint = simgen.simulate(shower, prior_shower, NUM_SIMULATIONS, seed=0, joint=True)
assert torch.equal(joint.x, x)  # the same simulations, now with their joint scores
posterior_js = simgen.NPE(prior_shower).fit(
    joint.theta,
    joint.x,
    joint_score=joint.joint_score,
    seed=0,
    max_epochs=MAX_EPOCHS,
    progress=False,
)
samples_js = posterior_js.sample((2000,), x=x_o, seed=0)
print("with the joint score: mean", samples_js.mean(0), "std", samples_js.std(0))

# %% [markdown]
# ### The joint likelihood ratio: NRE losses that read the latents
# Re-scoring a trace's recorded latents at another parameter gives the joint likelihood
# ratio $r(x, z \mid \theta, \theta_1) = p(x, z \mid \theta) / p(x, z \mid \theta_1)$
# (`sim.joint_log_ratio(trace, theta_1)`). `sim.ratio_simulations(theta, theta_1, seed=...)`
# simulates every θ once at θ and once at its reference θ₁ and returns each row's joint log
# ratio and joint score. With θ₁ drawn from the prior for every row, NRE's losses that use
# them (`NRE(loss="alices" | "rolr" | "rascal" | "cascal")`, derived in
# `simgen.losses.ratio`) learn $\log p(x \mid \theta) - \log p(x)$, so the posterior is
# sampled by the same MCMC as plain NRE. `"carl"` is the same classification without the
# joint quantities; the default, `loss="nrec"`, uses none of this.
#
# `loss="nrec_soft"` is NRE-C itself with the joint class's labels softened by the joint log
# ratios against K - 1 prior-drawn references per simulation: the same minimiser as NRE-C's
# hard labels, with less label noise.
#
# When they help (`benchmarks/results_joint_ratio.md`, tutorial 7): a joint quantity adds
# what its conditional mean carries, minus its noise. On the latent chain (2,000
# simulations, 5 seeds, posterior KL in nats) the latents pin θ down far better than x does,
# so ALICES's soft labels are nearly CARL's hard ones (0.045 vs 0.060); NRE-C, which compares
# each x with five θs, reaches 0.032 and its soft-labelled form 0.024. On the shower (C2ST,
# 5 observations x 4 seeds) ALICES's labels carry 0.17 of CARL's label noise: ALICES with a
# score term at 3,300 simulations matches CARL at 10,000, and `nrec_soft` at 3,300 (0.553)
# beats NRE-C at 3,300 (0.575) and comes within +0.011 [-0.009, +0.034] of NRE-C at 10,000
# (0.542).

# %%
half = NUM_SIMULATIONS // 2
ratio_data = shower.ratio_simulations(
    sample_prior(prior_shower, half, seed=1),
    sample_prior(prior_shower, half, seed=2),  # one reference θ₁ per row, from the prior
    seed=0,
)
posterior_alices = simgen.NRE(prior_shower, loss="alices").fit(
    ratio_data.theta,
    ratio_data.x,
    from_reference=ratio_data.from_reference,
    joint_log_ratio=ratio_data.joint_log_ratio,
    seed=0,
    max_epochs=MAX_EPOCHS,
    progress=False,
)
samples_alices = posterior_alices.sample((1000,), x=x_o, seed=0)
print("ALICES: mean", samples_alices.mean(0), "std", samples_alices.std(0))

# %% [markdown]
# ## 5. Diagnostics in one call
# `diagnose` simulates fresh `(theta, x)` pairs, draws posterior samples for each x once and
# runs SBC, TARP, HPD coverage and z-score/contraction on them, plus a posterior predictive
# check at `x_o`; it writes a Markdown report with one figure per check. (Pass
# `reference_samples=` to add a C2ST against a reference posterior; for this simulator
# `particle_shower.reference_posterior` computes one by pseudo-marginal MCMC, about a
# CPU-minute.)

# %%
report = simgen.diagnostics.diagnose(
    posterior,
    prior_shower,
    shower,
    x_o=x_o,
    theta_o=theta_o,
    num_simulations=NUM_DIAGNOSTIC,
    num_samples=NUM_DIAGNOSTIC,
    seed=0,
    path="tutorial2_report.md",
)
for name, result in report.results.items():
    print(f"{name:10s} {'pass' if result.passed else 'FAIL'}")
print("all passed:", report.passed, "-> written to", report.path)
