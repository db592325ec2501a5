"""Front doors from simulations to posteriors: NPE, NLE, NRE."""

from .nle import NLE
from .npe import NPE
from .nre import NRE

__all__ = ["NPE", "NLE", "NRE"]
