"""The example project ``simgen init`` writes: a one-θ-per-call simulator and its
``simgen.toml``. Its budget (1,000 simulations, 200 epochs at most, 200 diagnostic
simulations) keeps ``simgen run`` to a few minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_example", "SIMULATOR", "CONFIG"]

SIMULATOR = '''"""An example simulator: a damped oscillation observed at 10 times with noise.

simgen calls simulate(theta) once per parameter vector theta = (amplitude, decay); draw all
randomness from `generator` so that runs repeat. Replace this with your own code: it may
return a torch tensor, a numpy array or a list of numbers, always of the same length.
"""

import math

import torch

TIMES = torch.linspace(0.0, 5.0, 10)


def simulate(theta, generator=None):
    amplitude, decay = float(theta[0]), float(theta[1])
    signal = amplitude * torch.exp(-decay * TIMES) * torch.cos(2 * math.pi * TIMES / 2.5)
    noise = 0.05 * torch.randn(len(TIMES), generator=generator)
    return signal + noise


if __name__ == "__main__":  # python my_simulator.py writes an example observation
    import numpy

    x_o = simulate(torch.tensor([1.2, 0.4]), torch.Generator().manual_seed(1))
    numpy.save("x_o.npy", x_o.numpy())
'''

CONFIG = """# simgen project file: `simgen run simgen.toml` runs simulate -> train -> sample ->
# diagnose -> report, reusing every finished stage; paths are relative to this folder.
seed = 0                        # seeds simulations, training, sampling and diagnostics
device = "cpu"                  # "cuda" to train on a GPU
output = "simgen_output"        # bank, model, samples and report go here

[simulator]
path = "my_simulator:simulate"  # "module:function", importable from this folder
batched = false                 # false: simulate(theta) gets one theta (D,) per call
# kind = "pyro"                 # a pyro model(num_simulations) instead: set theta_site, x_site

[prior]
kind = "box"                    # "box" (low, high), "gaussian" (mean, std) or "object"
low = [0.1, 0.05]               # one entry per parameter
high = [2.0, 1.0]
# object = "my_priors:prior"    # kind = "object": a torch Distribution (or a function
                                # returning one)

[parameters]
names = ["amplitude", "decay"]
units = ["mV", "1/s"]           # "" for none

[observation]
file = "x_o.npy"                # .npy, .pt or .csv holding one observation

[simulate]
num_simulations = 1000          # the simulation budget
batch_size = 100                # simulations per bank chunk (a resume restarts a chunk)

[train]
method = "npe"                  # npe, nle, nre or bnre
estimator = "nsf"               # npe/nle family: nsf, maf, flow_matching, diffusion, ...
max_epochs = 200
batch_size = 256
patience = 20
learning_rate = 0.001

[sample]
num_samples = 10000

[diagnose]
num_simulations = 200           # simulated observations for SBC, TARP and coverage
num_samples = 200

[sequential]
enabled = false                 # true: rounds focused on x_o instead of [simulate]
num_rounds = 4
# num_simulations = 1000        # the total over all rounds ([simulate]'s by default)
"""


def write_example(folder: Path) -> list[Path]:
    """Write simgen.toml, my_simulator.py and x_o.npy (its simulation at θ = (1.2, 0.4))
    into ``folder``; refuses to overwrite any of them."""
    import numpy as np
    import torch

    from .errors import ConfigError
    from .project import import_object

    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / n for n in ("simgen.toml", "my_simulator.py", "x_o.npy")]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)} already exist; run init in an empty folder.")
    targets[1].write_text(SIMULATOR)
    simulate = import_object("my_simulator:simulate", folder, "my_simulator")
    x_o = simulate(torch.tensor([1.2, 0.4]), torch.Generator().manual_seed(1))
    np.save(targets[2], x_o.numpy())
    targets[0].write_text(CONFIG)
    return targets
