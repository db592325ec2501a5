r"""Neural posterior estimation: train :math:`q_\phi(\theta \mid x)` on simulations.

Training minimises :math:`-\mathbb E_{p(\theta)p(x\mid\theta)} \log q_\phi(\theta\mid x)`
(:class:`~simgen.losses.NPELoss`), whose minimiser is the true posterior; the result is
amortised: one network answers for every observation x.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ..estimators.registry import build_estimator, estimator_class
from ..losses import NPELoss
from ..posterior import SUPPORT_MODES, DirectPosterior
from ..priors import support_transform
from ..training import TrainConfig, fit
from .base import Method, check_simulations

__all__ = ["NPE"]


class NPE(Method):
    """Neural posterior estimation.

    Args:
        prior: The prior θ was drawn from (any distribution with event shape ``(D,)``).
        estimator: Family name: ``"nsf"`` (default), ``"maf"``, ``"realnvp"``,
            ``"flow_matching"``, ``"diffusion"``, ``"consistency"``, ``"vae"``, ``"gan"``.
        embedding_net: Optional network compressing x to a summary vector (see
            :mod:`simgen.nets`).
        support: How a bounded prior's support is kept: ``"transform"`` (model
            :math:`T^{-1}(\\theta)`, samples inside by construction) or ``"reject"`` (model
            :math:`\\theta`, reject draws outside, renormalise the density); see
            :mod:`simgen.posterior`. ``None`` (default) takes the family's measured choice,
            ``npe_support``: ``"reject"`` for flow matching and diffusion,
            ``"transform"`` for the others.
        **estimator_options: Passed to the family (e.g. ``transforms=5``,
            ``hidden_features=(64, 64)`` for flows).

    Example:
        >>> posterior = NPE(prior, estimator="nsf").fit(theta, x, max_epochs=50)
        >>> samples = posterior.sample((1000,), x=x_o)
    """

    def __init__(
        self,
        prior: Distribution,
        estimator: str = "nsf",
        embedding_net: nn.Module | None = None,
        support: str | None = None,
        **estimator_options: Any,
    ):
        super().__init__(prior)
        family = estimator_class(estimator)  # fail fast on an unknown name
        support = family.npe_support if support is None else support
        if support not in SUPPORT_MODES:
            raise ConfigError(f"support must be one of {SUPPORT_MODES} or None, got {support!r}.")
        self.support = support
        self.estimator_name = estimator
        self.embedding_net = embedding_net
        self.estimator_options = estimator_options
        self.history = None

    def fit(
        self, theta: Any, x: Any, config: TrainConfig | None = None, **config_options: Any
    ) -> DirectPosterior:
        """Train on simulations and return the posterior.

        Args:
            theta: ``(N, D)`` parameters drawn from the prior.
            x: ``(N, *x_shape)`` simulations, ``x[i] ~ p(x | theta[i])``.
            config: A :class:`~simgen.training.TrainConfig`; keyword options override it
                (``batch_size``, ``learning_rate``, ``max_epochs``, ``patience``,
                ``validation_fraction``, ``device``, ``seed``, ``progress``, ...).
        """
        defaults = estimator_class(self.estimator_name).train_defaults
        config = self._config(config, config_options, defaults)
        theta, x = check_simulations(self.prior, theta, x)
        u = theta if self.support == "reject" else support_transform(self.prior).inv(theta)
        with torch.random.fork_rng(devices=[]):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            estimator = build_estimator(
                self.estimator_name,
                self.theta_dim,
                x.shape[1:],
                self.embedding_net,
                **self.estimator_options,
            )
            estimator.fit_standardization(u, x)
            self.history = fit(NPELoss(estimator), u, x, config)
        return DirectPosterior(
            estimator.cpu() if config.device == "cpu" else estimator,
            self.prior,
            history=self.history,
            method="npe",
            support=self.support,
        )
