r"""Neural likelihood estimation: learn :math:`q_\phi(x \mid \theta)`, sample the posterior by MCMC.

Training minimises :math:`-\mathbb E_{p(\theta)p(x\mid\theta)} \log q_\phi(x \mid \theta)`
(:class:`~simgen.losses.NLELoss`), minimised at the true likelihood for every θ in the prior's
support (Papamakarios et al., 2019). The posterior is then

.. math:: p(\theta \mid x_o) \propto q_\phi(x_o \mid \theta)\, p(\theta),

sampled by :class:`~simgen.mcmc_posterior.MCMCPosterior` from the potential
:func:`~simgen.mcmc.likelihood_potential`. The trained flow is also a
**surrogate simulator**: :class:`SurrogateSimulator` draws :math:`x \sim q_\phi(x \mid \theta)`
in one batched network pass.

With the simulator's **joint score** (``fit(..., joint_score=...)``), training adds the
regression of :math:`\nabla_\theta \log q_\phi(x\mid\theta)` on
:math:`\nabla_\theta \log p(x, z\mid\theta)` (:class:`~simgen.losses.JointScoreNLELoss`,
SCANDAL). It has the same minimiser and more information per simulation. On a latent chain
with a closed-form likelihood, over 10 seeds, the held-out KL went from 0.296 to 0.178 nats
at 100 simulations and from 0.032 to 0.015 at 1,000, at 2.2-2.7x the training time
(``benchmarks/results_joint_score.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ConfigError, ShapeError
from ..estimators.base import ConditionalEstimator
from ..estimators.registry import build_estimator, estimator_class
from ..estimators.transformed import TransformedEstimator, integer_columns
from ..losses import JointScoreNLELoss, NLELoss
from ..mcmc import MCMCConfig
from ..mcmc_posterior import MCMCPosterior, SurrogateSimulator
from ..moments import swapped
from ..training import TrainConfig, fit
from .base import (
    Method,
    check_joint_score,
    check_joint_score_weight,
    check_simulations,
    check_stream,
    data_source,
)

__all__ = ["NLE", "SurrogateSimulator"]

#: Transforms of the default ``"maf"`` likelihood: as accurate as sbi's NLE on two_moons,
#: slcp and gaussian_linear at under half its time (see :class:`NLE`).
DEFAULT_MAF_TRANSFORMS = 7


class NLE(Method):
    """Neural likelihood estimation.

    The default likelihood estimator is a masked autoregressive flow (``"maf"``: 7 affine
    autoregressive transforms, conditioners of two hidden layers of 64 ReLU units, z-scored x
    and θ; sbi's NLE default is the same family with 5 transforms of 50 tanh units). It was
    chosen by measurement (``benchmarks/results_nle_nre.md``, 3,000 simulations, 2–3 seeds,
    held-out :math:`-\\log q(x\\mid\\theta)` on 5,000 fresh simulations): on slcp and 10-d
    gaussian_linear, whose x given θ is Gaussian with a θ-dependent location and scale, MAF
    fits 1.0–1.7 and 0.2 nats better than the spline flow (``"nsf"``), whose splines are the
    identity outside ±5 standard deviations and so cannot rescale the tails. The number of
    transforms trades the fit against time: 10 rather than 5 fit two_moons (x given θ on an
    arc) 0.13–0.30 nats better, tie on gaussian_linear (±0.006) and split on slcp, for
    ~1.5–2× the training time. Against sbi's NLE on the same data (3 seeds, CPU seconds of
    training plus 1,000 MCMC draws), 10 transforms were as accurate but took 0.45–0.68 of
    sbi's time on two_moons; 5 took 0.28–0.37 but only tied sbi's C2ST there (0.589 vs
    0.592); 7 beat sbi's C2ST on all three tasks (two_moons 0.545 vs 0.586, slcp 0.748 vs
    0.807, gaussian_linear 0.525 vs 0.552) at 0.39–0.50, 0.21–0.23 and 0.13–0.15 of its
    time, so 7 is the default. Tanh conditioners (``activation="tanh"``) fit
    gaussian_linear 0.11 nats better but slcp 0.5 worse and two_moons no better, and train
    ~2× the epochs. sbi's width (50 units, batch 200, learning rate 5e-4) fits no better and
    trains 1.5–2.5× as many epochs. Pass ``transforms=10`` for the closer fit when training
    time matters less. Pass ``gaussian_baseline=True`` (or ``"auto"``, which decides from
    the simulations) when x given θ is close to linear-Gaussian: the flow then models the
    residual of a ridge regression of x on θ (:mod:`simgen.estimators.flows`). Sequential
    NLE at 10,000 simulations on gaussian_linear_uniform reaches C2ST 0.511 with it against
    0.535 without (3 observations × 2 seeds, ``benchmarks/results_sequential.md``, "SNLE");
    ``"auto"`` turns it on there and off on bernoulli_glm and gaussian_mixture. Amortised,
    on 10 report observations, it lowers gaussian_linear's C2ST from 0.653 to 0.598 (1k) and
    0.572 to 0.528 (10k) (``benchmarks/results_nle_nre.md``); off by default for now
    (``docs/decisions.md``, 2026-12-04).

    Args:
        prior: The prior θ was drawn from.
        estimator: Density-estimator family for x given θ (``"maf"``, ``"nsf"``,
            ``"realnvp"``).
        dequantize: Integer-valued (count) columns of x to dequantise
            (:mod:`simgen.estimators.transformed`): ``"auto"`` (default) takes every column
            whose training values are all integers, a list names them, ``False`` none.
            Without it a flow fits a continuous density to integers, which a classifier
            tells from the simulator at once (sir: C2ST 0.94-0.99, ``results_surrogate.md``).
        log_x: Columns of x modelled on the log scale: ``True`` for all, a list, or
            ``False`` (default). For positive, heavy-tailed outputs (populations, energies).
        joint_score_weight: :math:`\\lambda` of the joint-score term
            (:class:`~simgen.losses.JointScoreNLELoss`), used when ``fit`` is given
            ``joint_score`` (from ``simgen.simulate(..., joint=True)``); flows only.
        mcmc: Default MCMC settings of the posterior (:class:`~simgen.mcmc.MCMCConfig`;
            random-walk Metropolis unless told otherwise).
        num_chains, warmup, thin, mcmc_method: The same settings one by one (``mcmc_method``
            is the config's ``method``); each given one overrides ``mcmc``'s field.
        **estimator_options: Passed to the family (e.g. ``transforms=5``,
            ``activation="tanh"``); for ``"maf"``, ``transforms`` defaults to 7.

    Example:
        >>> posterior = NLE(prior).fit(theta, x, max_epochs=100)
        >>> samples = posterior.sample((1000,), x=x_o)
        >>> x_fast = posterior.likelihood(theta)  # the surrogate simulator
    """

    def __init__(
        self,
        prior: Distribution,
        estimator: str = "maf",
        num_chains: int | None = None,
        warmup: int | None = None,
        thin: int | None = None,
        mcmc_method: str | None = None,
        dequantize: bool | str | Sequence[int] = "auto",
        log_x: bool | Sequence[int] = False,
        joint_score_weight: float = 1.0,
        mcmc: MCMCConfig | None = None,
        **estimator_options: Any,
    ):
        super().__init__(prior)
        self.joint_score_weight = check_joint_score_weight(joint_score_weight)
        if isinstance(dequantize, str) and dequantize != "auto":
            raise ConfigError(
                f"dequantize must be 'auto', True, False or columns; got {dequantize!r}."
            )
        self.dequantize, self.log_x = dequantize, log_x
        estimator_class(estimator)
        self.estimator_name = estimator
        if estimator == "maf":
            estimator_options = {"transforms": DEFAULT_MAF_TRANSFORMS, **estimator_options}
        self.estimator_options = estimator_options
        self.mcmc = MCMCConfig.resolve(mcmc, num_chains, warmup, thin, mcmc_method)
        self.history = None

    def fit(
        self,
        theta: Any = None,
        x: Any = None,
        config: TrainConfig | None = None,
        joint_score: Any = None,
        *,
        bank: Any = None,
        **config_options: Any,
    ) -> MCMCPosterior:
        """Train :math:`q_\\phi(x\\mid\\theta)` and return the MCMC posterior.

        ``bank=`` (a bank's path, a dataset of ``(theta, x)`` rows or batches, or a
        :class:`~simgen.streaming.Stream`) trains from chunks read as needed instead of
        ``theta`` and ``x`` in memory (:mod:`simgen.streaming`).

        With ``joint_score`` (``(N, D)``, :math:`\\nabla_\\theta \\log p(x, z\\mid\\theta)` of
        each simulation, e.g. ``simgen.simulate(..., joint=True).joint_score``) the loss is
        :class:`~simgen.losses.JointScoreNLELoss` with weight ``joint_score_weight``.

        The posterior's ``likelihood`` attribute is the :class:`SurrogateSimulator`.
        """
        config = self._config(config, config_options, estimator_class(self.estimator_name))
        stream = data_source(theta, x, bank)
        if stream is not None:
            if joint_score is not None:
                raise ConfigError(
                    "fit(bank=...) trains on (theta, x) rows; joint_score needs the "
                    "simulations in memory: read_bank(path) and pass theta, x, joint_score."
                )
            stream = check_stream(self.prior, stream)
            x_shape = tuple(stream.peek()[1].shape[1:])
        else:
            theta, x = check_simulations(self.prior, theta, x)
            joint_score = check_joint_score(joint_score, theta, self.estimator_name)
            x_shape = tuple(x.shape[1:])
        if len(x_shape) != 1:
            raise ShapeError(
                f"NLE models x as a flat vector, but x has shape {x_shape} per "
                "simulation. Flatten it (x.flatten(1)) if its entries are a vector of "
                "statistics, or use NPE with an embedding net (simgen.nets) for images or "
                "sequences."
            )
        with torch.random.fork_rng(devices=[]):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            estimator = build_estimator(
                self.estimator_name, x_shape[0], (self.theta_dim,), **self.estimator_options
            )
            if stream is not None:
                estimator = self._wrap(
                    estimator, x_shape[0], lambda: (v for _, v in stream.chunks())
                )
                estimator.fit_standardization_chunks(swapped(stream.chunks))
                stream.check_counts()
                self.history = fit(NLELoss(estimator), config=config, stream=stream)
            else:
                estimator = self._wrap(estimator, x_shape[0], lambda: [x])
                estimator.fit_standardization(x, theta)
                self.history = self._fit_losses(
                    estimator,
                    NLELoss,
                    JointScoreNLELoss,
                    theta,
                    x,
                    config,
                    joint_score,
                )
        estimator = estimator.cpu() if config.device == "cpu" else estimator
        self.estimator = estimator
        return MCMCPosterior.from_likelihood(
            estimator, self.prior, x_shape, history=self.history, mcmc=self.mcmc
        )

    def _wrap(
        self, estimator: ConditionalEstimator, features: int, x: Callable[[], Iterable[Tensor]]
    ) -> ConditionalEstimator:
        """The estimator with dequantised and log-scale columns, when any are asked for;
        ``x()`` gives the training x, whole or in chunks."""
        if self.dequantize == "auto":
            counts = integer_columns(x())
        elif self.dequantize is True:
            counts = integer_columns(x())
            if len(counts) == 0:
                raise ConfigError("dequantize=True, but no column of x is integer-valued.")
        else:
            counts = list(self.dequantize or [])
        logs = list(range(features)) if self.log_x is True else list(self.log_x or [])
        if not counts and not logs:
            return estimator
        return TransformedEstimator(estimator, counts, logs)  # type: ignore[arg-type]
