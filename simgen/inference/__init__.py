"""Front doors from simulations to posteriors: NPE (and NLE, NRE)."""

from .npe import NPE

__all__ = ["NPE"]
