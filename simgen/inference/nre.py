r"""Neural ratio estimation: classify :math:`(\theta, x)` pairs, sample the posterior by MCMC.

A classifier's logit :math:`f_\phi(\theta, x)` learns the log likelihood-to-evidence ratio
:math:`\log p(x\mid\theta) - \log p(x)` (:mod:`simgen.losses.ratio`), so

.. math:: p(\theta \mid x_o) \propto \exp f_\phi(\theta, x_o)\, p(\theta),

sampled by :class:`~simgen.mcmc_posterior.MCMCPosterior` from the potential
:func:`~simgen.mcmc.ratio_potential`. ``balanced=True`` trains BNRE
(Delaunoy et al., 2022), whose posteriors err on the side of being conservative; otherwise the
contrastive NRE-C objective (Miller et al., 2022) is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from ..estimators.classifier import RatioClassifier
from ..losses.ratio import BNRELoss, NRECLoss
from ..mcmc import MCMCConfig
from ..mcmc_posterior import MCMCPosterior
from ..training import TrainConfig, fit
from .base import Method, check_simulations

__all__ = ["NRE"]


class NRE(Method):
    """Neural ratio estimation (NRE-C, or BNRE with ``balanced=True``).

    Args:
        prior: The prior θ was drawn from.
        embedding_net: Optional network compressing x (see :mod:`simgen.nets`).
        hidden_features: Widths of the classifier's hidden layers.
        num_atoms: NRE-C's number of contrastive θs per x, :math:`K`. Each step classifies
            :math:`2K` pairs per x, so the cost of a step is about proportional to it.
        gamma: NRE-C's odds of a joint versus a marginal class, :math:`\\gamma`.
        balanced: Train BNRE (binary classifier + balancing penalty) instead.
        regularization: BNRE's :math:`\\lambda`.
        mcmc: Default MCMC settings of the posterior (:class:`~simgen.mcmc.MCMCConfig`;
            random-walk Metropolis unless told otherwise).
        num_chains, warmup, thin, mcmc_method: The same settings one by one (``mcmc_method``
            is the config's ``method``); each given one overrides ``mcmc``'s field.

    Example:
        >>> posterior = NRE(prior).fit(theta, x, max_epochs=100)
        >>> samples = posterior.sample((1000,), x=x_o)
    """

    def __init__(
        self,
        prior: Distribution,
        embedding_net: nn.Module | None = None,
        hidden_features: Sequence[int] = (64, 64, 64),
        num_atoms: int = 5,
        gamma: float = 1.0,
        balanced: bool = False,
        regularization: float = 100.0,
        num_chains: int | None = None,
        warmup: int | None = None,
        thin: int | None = None,
        mcmc_method: str | None = None,
        mcmc: MCMCConfig | None = None,
    ):
        super().__init__(prior)
        self.embedding_net = embedding_net
        self.hidden_features = tuple(hidden_features)
        self.num_atoms, self.gamma = num_atoms, gamma
        self.balanced, self.regularization = balanced, regularization
        NRECLoss(nn.Identity(), num_atoms, gamma)  # fail fast on bad options
        self.mcmc = MCMCConfig.resolve(mcmc, num_chains, warmup, thin, mcmc_method)
        self.history = None

    def fit(
        self, theta: Any, x: Any, config: TrainConfig | None = None, **config_options: Any
    ) -> MCMCPosterior:
        """Train the classifier on simulations and return the MCMC posterior."""
        config = self._config(config, config_options, RatioClassifier)
        theta, x = check_simulations(self.prior, theta, x)
        with torch.random.fork_rng(devices=[]):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            classifier = RatioClassifier(
                self.theta_dim, x.shape[1:], self.embedding_net, self.hidden_features
            )
            classifier.fit_standardization(theta, x)
            loss = (
                BNRELoss(classifier, self.regularization)
                if self.balanced
                else NRECLoss(classifier, self.num_atoms, self.gamma)
            )
            self.history = fit(loss, theta, x, config)
        classifier = classifier.cpu() if config.device == "cpu" else classifier
        return MCMCPosterior.from_ratio(
            classifier, self.prior, x.shape[1:], history=self.history, mcmc=self.mcmc
        )
