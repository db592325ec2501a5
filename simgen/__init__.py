"""simgen: simulation-based inference with calibrated posteriors.

>>> import simgen
>>> theta, x = simgen.simulate(simulator, prior, 10_000, seed=0)
>>> posterior = simgen.NPE(prior, estimator="nsf").fit(theta, x)
>>> samples = posterior.sample((10_000,), x=x_o)
"""

from . import diagnostics, plots, sequential
from .diagnostics import diagnose
from .ensemble import Ensemble
from .errors import SimgenError
from .external import ExternalSimulator
from .importance import ImportanceResult, importance_sample
from .inference import NLE, NPE, NRE
from .joint import Joint
from .mcmc import MCMCConfig, MCMCResult, run_mcmc
from .mcmc_posterior import MCMCPosterior, SurrogateSimulator
from .posterior import DirectPosterior, Posterior
from .priors import BoxUniform
from .serialization import load
from .simulate import read_bank, simulate
from .simulator import FunctionSimulator, PyroSimulator, Simulator, Trace, from_pyro
from .training import History, TrainConfig

__version__ = "0.1.0"

__all__ = [
    "SimgenError",
    "BoxUniform",
    "simulate",
    "read_bank",
    "Simulator",
    "FunctionSimulator",
    "ExternalSimulator",
    "Trace",
    "PyroSimulator",
    "from_pyro",
    "NPE",
    "NLE",
    "NRE",
    "Joint",
    "TrainConfig",
    "History",
    "Posterior",
    "DirectPosterior",
    "Ensemble",
    "importance_sample",
    "ImportanceResult",
    "MCMCPosterior",
    "SurrogateSimulator",
    "run_mcmc",
    "MCMCResult",
    "MCMCConfig",
    "load",
    "diagnostics",
    "plots",
    "diagnose",
    "sequential",
]
