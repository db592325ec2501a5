r"""Where a posterior computes: its estimator's device and dtype, and the prior placed there.

**The contract.** A posterior (NPE's :class:`~simgen.posterior.DirectPosterior`, NLE's and
NRE's :class:`~simgen.mcmc_posterior.MCMCPosterior`) computes at its estimator's *home*:
the device and floating dtype of the estimator's parameters (:func:`home`). θ and x given on
any device are moved there, and every output (``sample``, ``sample_batched``, ``log_prob``,
``log_prob_batched``, ``map``) is returned there: a CUDA posterior returns CUDA tensors
(``.cpu()`` brings them back, as for any torch model). ``posterior.to(device)`` moves the
estimator, and the prior terms follow it, because they are never held anywhere else: the
prior and its support bijection :math:`T` are placed at the home on first use after a move
(:class:`Placement`, :func:`simgen.prior_specs.prior_on`), so in

.. math:: \log q(\theta\mid x) = \log q_u\big(T^{-1}(\theta)\mid x\big)
          + \log\Big|\det\frac{\partial T^{-1}(\theta)}{\partial\theta}\Big|,
          \qquad \psi(\theta, x) = \ell_\phi(\theta, x) + \log p(\theta),

the network term, :math:`T`, its Jacobian and :math:`\log p` all run on one device. A prior
simgen cannot rebuild is evaluated where it lives, with θ moved there and the result moved
back (:class:`~simgen.priors.RelocatedPrior`): correct anywhere, a round trip per call.

**Seeds across devices.** The random draws that are not the network's own (the prior
draws that start MCMC chains, their resampling) are taken on the CPU and moved, so a seeded
MCMC run starts from the same chains on every device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform

from .prior_specs import prior_on
from .priors import prior_dim, support_transform

__all__ = ["Home", "home", "to_home", "Placed", "Placement", "OnDevice"]

#: ``(device, dtype)``: where a module's floating tensors live.
Home = tuple[torch.device, torch.dtype]


def home(module: nn.Module) -> Home:
    """``(device, dtype)`` of ``module``'s first floating parameter or buffer (the CPU and
    float32 for a module without one)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def to_home(value: Tensor, where: Home) -> Tensor:
    """``value`` moved to ``where``: floating tensors take its dtype too, others keep theirs."""
    device, dtype = where
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


class Placed(NamedTuple):
    """A prior at one home: the prior, its support bijection ``transform`` (ℝᴰ → support),
    and ``inside``, :math:`T(0)`, a point inside the support, ``(D,)``."""

    prior: Distribution
    transform: Transform
    inside: Tensor


class Placement:
    """``prior`` placed at each home it is asked for, built once per ``(device, dtype)``."""

    def __init__(self, prior: Distribution):
        self.prior = prior
        self._cache: dict[tuple[str, torch.dtype], Placed] = {}

    def at(self, device: torch.device, dtype: torch.dtype) -> Placed:
        """The placement at ``(device, dtype)``. Building it draws from the prior (to learn
        where it lives and its dimension) inside a forked random state, so a seeded call
        draws the same numbers whether or not it is the first after a move."""
        key = (str(device), dtype)
        if key not in self._cache:
            cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=cuda):
                prior = prior_on(self.prior, device, dtype)
                transform = support_transform(prior)
                zero = torch.zeros(prior_dim(self.prior), device=device, dtype=dtype)
            self._cache[key] = Placed(prior, transform, transform(zero).detach())
        return self._cache[key]


class OnDevice:
    """What a posterior holding ``estimator`` and ``prior`` knows of devices: its
    :attr:`device` and :attr:`dtype` (the estimator's), :meth:`to`, and the prior placed at
    that home (:attr:`placed`), rebuilt when the estimator moves or the prior is replaced."""

    estimator: nn.Module
    prior: Distribution

    @property
    def device(self) -> torch.device:
        """The estimator's device: where the posterior computes and returns its tensors."""
        return home(self.estimator)[0]

    @property
    def dtype(self) -> torch.dtype:
        """The estimator's floating dtype, which inputs and outputs take."""
        return home(self.estimator)[1]

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move the estimator (and so every prior term) to a device and/or dtype, with the
        arguments of :meth:`torch.nn.Module.to` (``"cuda"``, ``torch.float64``, ...);
        returns the posterior."""
        self.estimator.to(*args, **kwargs)
        return self

    def _home(self, value: Tensor) -> Tensor:
        return to_home(value, home(self.estimator))

    @property
    def placed(self) -> Placed:
        """The prior, its support bijection and a point inside, at the estimator's home."""
        cached = self.__dict__.get("_placement")
        if cached is None or cached.prior is not self.prior:
            cached = self.__dict__["_placement"] = Placement(self.prior)
        return cached.at(*home(self.estimator))

    @property
    def _transform(self) -> Transform:
        return self.placed.transform
