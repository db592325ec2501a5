"""simgen: simulation-based inference with calibrated posteriors."""

from .errors import SimgenError
from .priors import BoxUniform
from .simulate import simulate
from .simulator import FunctionSimulator, Simulator, Trace

__version__ = "0.1.0"

__all__ = ["SimgenError", "BoxUniform", "simulate", "Simulator", "FunctionSimulator", "Trace"]
