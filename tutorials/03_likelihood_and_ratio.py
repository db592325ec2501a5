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
# # Tutorial 3: likelihood and ratio estimation (NLE, NRE, BNRE)
#
# NPE (tutorials 1–2) learns the posterior directly. Two other routes learn something
# closer to the simulator and recover the posterior by MCMC:
#
# - **NLE** learns the likelihood $q_\phi(x \mid \theta)$. Then
#   $p(\theta \mid x_o) \propto q_\phi(x_o \mid \theta)\,p(\theta)$, and the trained flow is
#   also a fast *surrogate simulator*: $x \sim q_\phi(x \mid \theta)$ in one network pass.
# - **NRE** trains a classifier whose logit is the log likelihood-to-evidence ratio
#   $\log p(x \mid \theta) - \log p(x)$; **BNRE** adds a balancing penalty that makes
#   its posteriors err on the conservative side (Delaunoy et al., 2022).
#
# Both posteriors are `MCMCPosterior`s: same `sample` / `sample_batched` / `log_prob` interface
# as NPE's (`log_prob` is unnormalised), and every MCMC run reports R-hat and ESS.
#
# Run end to end with `python tutorials/03_likelihood_and_ratio.py` (set `SIMGEN_FAST=1` for
# a quick pass; its few epochs give rough estimators, the numbers only mean something in full
# mode). Cells are marked `# %%` for Jupyter/VS Code.

# %%
import os

import torch

import simgen
from simgen import diagnostics, plots

FAST = os.environ.get("SIMGEN_FAST") == "1"
NUM_SIMULATIONS = 1000 if FAST else 10_000
MAX_EPOCHS = 20 if FAST else 500
NUM_SAMPLES = 500 if FAST else 5000  # posterior samples at x_o
NUM_C2ST = 300 if FAST else 2000  # samples per set in each C2ST
C2ST_FOLDS = 2 if FAST else 5  # cross-validation folds of the C2ST classifier
NUM_COVERAGE = 50 if FAST else 500  # simulated observations (and samples each) for coverage

# %% [markdown]
# ## 1. A simulator: an emission line on a flat background
# A spectrometer reads `NUM_BINS` channels. The signal is a Gaussian line of centre $\mu$ and
# amplitude $A$ (width fixed) on a unit background, and every channel has Gaussian readout
# noise. x given θ is simple (Gaussian around a smooth curve), which is where NLE shines; the
# posterior is not (it is banana-shaped when the line is weak).

# %%
NUM_BINS = 8
CHANNELS = torch.linspace(-1.0, 1.0, NUM_BINS)
WIDTH, NOISE = 0.25, 0.2

prior = simgen.BoxUniform(low=torch.tensor([-1.0, 0.0]), high=torch.tensor([1.0, 2.0]))


def spectrum(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Counts in each channel, ``(N, NUM_BINS)``, for ``theta = (centre, amplitude)``."""
    centre, amplitude = theta[:, :1], theta[:, 1:]
    line = amplitude * torch.exp(-0.5 * ((CHANNELS - centre) / WIDTH) ** 2)
    noise = NOISE * torch.randn(theta.shape[0], NUM_BINS, generator=generator, dtype=theta.dtype)
    return 1.0 + line + noise


theta_o = torch.tensor([0.3, 0.8])
x_o = spectrum(theta_o[None], generator=torch.Generator().manual_seed(1))[0]
theta, x = simgen.simulate(spectrum, prior, NUM_SIMULATIONS, seed=0)
print("x_o =", x_o)

# %% [markdown]
# ## 2. NLE: a learned likelihood, a posterior by MCMC
# `simgen.NLE(prior)` trains a masked autoregressive flow for $x \mid \theta$ (the default,
# chosen by measurement for Gaussian-like likelihoods; `estimator="nsf"` for curved ones).

# %%
nle_posterior = simgen.NLE(prior).fit(theta, x, seed=0, max_epochs=MAX_EPOCHS, progress=False)
h = nle_posterior.history
print(f"NLE trained {h.epochs} epochs in {h.seconds:.1f}s")

# %% [markdown]
# `sample` runs many random-walk Metropolis chains at once in the unconstrained space of the
# prior (so no chain leaves the box), initialised by importance resampling from the prior,
# with a warm-up that adapts the proposal covariance. The run's diagnostics are in
# `mcmc_info`: the worst split-$\hat R$ over parameters (want < 1.01 for long runs, < 1.1 at
# least) and the smallest bulk effective sample size. A `ConvergenceWarning` says when
# $\hat R > 1.1$; then raise `warmup=`, `thin=` or try `method="slice"` / `"hmc"`. Any of
# these can be set for one call, as here, or for every call of a posterior with
# `simgen.NLE(prior, mcmc=simgen.MCMCConfig(...))`.

# %%
samples = nle_posterior.sample((NUM_SAMPLES,), x=x_o, seed=0)
info = nle_posterior.mcmc_info
print(
    f"MCMC ({info['method']}): {info['chains']} chains x {info['draws']} draws, "
    f"thin {info['thin']}, acceptance {info['acceptance_rate']:.2f}, "
    f"R-hat {info['rhat']:.3f}, bulk ESS {info['ess']:.0f}, {info['seconds']:.1f}s"
)
print("posterior mean", samples.mean(0).numpy().round(3), "std", samples.std(0).numpy().round(3))
print("true theta", theta_o.numpy())
plots.corner(
    samples, truth=theta_o, labels=["centre", "amplitude"], path="tutorial3_nle_corner.png"
)

# %% [markdown]
# ### The likelihood as a surrogate simulator
# `nle_posterior.likelihood` is a simulator (`likelihood(theta, generator=...) -> x`). Is it a
# good one? At a fixed θ, draw x from the surrogate and from the real simulator and ask a
# classifier to tell them apart (C2ST): 0.5 means it cannot, 1.0 that they are disjoint.

# %%
surrogate = nle_posterior.likelihood
checks = [theta_o] if FAST else [theta_o, torch.tensor([-0.6, 1.5]), torch.tensor([0.9, 0.2])]
for theta_fixed in checks:
    theta_rep = theta_fixed[None].expand(NUM_C2ST, -1)
    x_sur = surrogate(theta_rep, generator=torch.Generator().manual_seed(2))
    x_sim = spectrum(theta_rep, generator=torch.Generator().manual_seed(3))
    acc = diagnostics.c2st(x_sim, x_sur, seed=0, folds=C2ST_FOLDS)
    print(f"theta = {theta_fixed.numpy().round(2)}: C2ST(simulator x, surrogate x) = {acc:.3f}")

# %% [markdown]
# And the surrogate's density at x_o against the true log-likelihood, which this simulator
# happens to have in closed form (independent Gaussians around the line):

# %%
grid = torch.stack([torch.linspace(-0.2, 0.8, 5), torch.full((5,), 0.8)], -1)
line = 1.0 + grid[:, 1:] * torch.exp(-0.5 * ((CHANNELS - grid[:, :1]) / WIDTH) ** 2)
true_ll = torch.distributions.Normal(line, NOISE).log_prob(x_o).sum(-1)
learned_ll = surrogate.log_prob(x_o.expand(5, -1), grid)
for c, t, q in zip(grid[:, 0], true_ll, learned_ll):
    print(f"centre {c:+.2f}: log p(x_o | theta) true {t:7.2f}, learned {q:7.2f}")

# %% [markdown]
# ## 3. NRE and balanced NRE
# `simgen.NRE(prior)` trains the contrastive NRE-C classifier; `balanced=True` trains BNRE:
# a binary classifier whose loss adds $\lambda\,(\mathbb E_{p(\theta,x)}\sigma(f) +
# \mathbb E_{p(\theta)p(x)}\sigma(f) - 1)^2$. A balanced classifier cannot be overconfident
# on average, so its posteriors are wider where the data cannot pin θ down.

# %%
posteriors = {}
for name, balanced in (("NRE", False), ("BNRE", True)):
    posteriors[name] = simgen.NRE(prior, balanced=balanced).fit(
        theta, x, seed=0, max_epochs=MAX_EPOCHS, progress=False
    )
    s = posteriors[name].sample((NUM_SAMPLES,), x=x_o, seed=0)
    info = posteriors[name].mcmc_info
    print(
        f"{name:4s}: {posteriors[name].history.epochs} epochs; mean {s.mean(0).numpy().round(3)}, "
        f"std {s.std(0).numpy().round(3)}; R-hat {info['rhat']:.3f}, ESS {info['ess']:.0f}"
    )

# %% [markdown]
# ## 4. Expected coverage: NRE against BNRE
# `diagnostics.coverage` simulates fresh $(\theta_i, x_i)$ pairs, samples each posterior
# (all observations' chains run in one batch) and finds the credibility level of the
# highest-posterior-density region that just contains $\theta_i$. Calibrated: the expected
# coverage curve lies on the diagonal; below it is overconfident, above it conservative.
# `deviation` is the mean of EC(c) − c over the levels (positive: conservative). An
# unnormalised `log_prob` is fine here: HPD regions only compare densities at one x.
# The diagnostics sample with the posterior's default MCMC settings, set where it is made:
# `simgen.NRE(prior, mcmc=simgen.MCMCConfig(num_chains=..., warmup=..., thin=...))`. The
# R-hat they warn about is the worst over all observations' chains, and with few draws per
# chain it is a noisy number.

# %%
for name, posterior in posteriors.items():
    result = diagnostics.coverage(
        posterior,
        prior,
        spectrum,
        num_simulations=NUM_COVERAGE,
        num_samples=NUM_COVERAGE,
        seed=0,
    )
    result.plot(path=f"tutorial3_coverage_{name.lower()}.png")
    ec = dict(zip(result.levels.round(2), result.expected_coverage))
    print(
        f"{name:4s}: {result.verdict:14s} deviation {result.deviation:+.3f}, "
        f"KS p-value {result.p_value:.3g}, EC(0.5) = {ec[0.5]:.2f}, EC(0.9) = {ec[0.9]:.2f}"
    )
print("BNRE is expected to have the larger deviation (more conservative).")
