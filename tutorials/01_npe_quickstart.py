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
# # Tutorial 1: from a simulator to a calibrated posterior
#
# Run end to end with `python tutorials/01_npe_quickstart.py` (set `SIMGEN_FAST=1` for a
# quick pass with fewer simulations). Cells are marked `# %%` for Jupyter/VS Code.

# %%
import os

import torch

import simgen
from simgen import diagnostics, plots

FAST = os.environ.get("SIMGEN_FAST") == "1"
NUM_SIMULATIONS = 1000 if FAST else 10_000

# %% [markdown]
# ## 1. A simulator and a prior
# Any batched function `theta (N, D) -> x (N, ...)` is a simulator. Taking `generator=` makes
# it reproducible under `simgen.simulate(..., seed=...)`.


# %%
def simulator(theta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A noisy quadratic: x = (θ0 + θ1², θ0 θ1) + noise."""
    noise = 0.05 * torch.randn(theta.shape, generator=generator)
    return torch.stack([theta[:, 0] + theta[:, 1] ** 2, theta[:, 0] * theta[:, 1]], -1) + noise


prior = simgen.BoxUniform(low=-torch.ones(2), high=torch.ones(2))
theta_o = torch.tensor([0.3, -0.5])
x_o = simulator(theta_o[None], generator=torch.Generator().manual_seed(0))[0]

# %% [markdown]
# ## 2. Simulate and train
# %%
theta, x = simgen.simulate(simulator, prior, NUM_SIMULATIONS, seed=0)
posterior = simgen.NPE(prior, estimator="nsf").fit(
    theta, x, seed=0, max_epochs=30 if FAST else 500, progress=False
)
print(posterior, f"trained {posterior.history.epochs} epochs in {posterior.history.seconds:.1f}s")

# %% [markdown]
# ## 3. Sample, evaluate, find the MAP
# %%
samples = posterior.sample((5000,), x=x_o, seed=0)
print("mean", samples.mean(0), "std", samples.std(0), "true", theta_o)
print("MAP", posterior.map(x=x_o, num_iter=50))
plots.corner(samples, truth=theta_o, path="tutorial1_corner.png")

# %% [markdown]
# ## 4. Is it calibrated?
# SBC ranks the true θ among posterior samples over many simulated observations; the ranks
# are uniform exactly when the posterior is calibrated.
# %%
result = diagnostics.sbc(posterior, prior, simulator, num_simulations=200, num_samples=200)
print("SBC passed:", result.passed, "p-values:", result.p_values)
result.plot(path="tutorial1_sbc.png")

# %% [markdown]
# ## 5. Save and load (weights + JSON; loading never runs code)
# %%
posterior.save("tutorial1.simgen")
again = simgen.load("tutorial1.simgen")
print(torch.allclose(again.log_prob(samples[:5], x=x_o), posterior.log_prob(samples[:5], x=x_o)))
