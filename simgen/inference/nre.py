r"""Neural ratio estimation: classify :math:`(\theta, x)` pairs, sample the posterior by MCMC.

A classifier's logit :math:`f_\phi(\theta, x)` learns the log likelihood-to-evidence ratio
:math:`\log p(x\mid\theta) - \log p(x)` (:mod:`simgen.losses.ratio`), so

.. math:: p(\theta \mid x_o) \propto \exp f_\phi(\theta, x_o)\, p(\theta),

sampled by :class:`~simgen.mcmc_posterior.MCMCPosterior` from the potential
:func:`~simgen.mcmc.ratio_potential`. ``balanced=True`` trains BNRE
(Delaunoy et al., 2022), whose posteriors err on the side of being conservative; otherwise the
contrastive NRE-C objective (Miller et al., 2022) is used.

With a simulator that exposes its joint likelihood ratio against a reference
:math:`\theta_1` (:meth:`~simgen.simulator.PyroSimulator.ratio_simulations`), ``loss=``
``"rolr"``, ``"rascal"``, ``"alices"``, ``"cascal"`` (or ``"carl"``, the same classification
without the joint quantities) train the logit towards :math:`\log p(x\mid\theta) - \log
p(x\mid\theta_1)` instead, which differs from NRE's by a constant in :math:`\theta`: the
same potential samples the posterior (:mod:`simgen.losses.ratio` derives each loss and its
minimiser). ``loss="nrec_soft"`` is NRE-C whose joint class has soft labels from the joint log
ratios against ``num_atoms - 1`` prior-drawn references per simulation: NRE-C's minimiser,
with the latents' label noise averaged out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from ..errors import ConfigError, ShapeError
from ..estimators.classifier import RatioClassifier
from ..losses.ratio import (
    REFERENCE_LOSSES,
    BNRELoss,
    NRECLoss,
    SoftNRECLoss,
    reference_ratio_loss,
)
from ..mcmc import MCMCConfig
from ..mcmc_posterior import MCMCPosterior
from ..training import TrainConfig, fit
from .base import Method, check_joint_score_weight, check_simulations, check_stream, data_source

#: The losses ``NRE(loss=...)`` accepts; ``"nrec"`` (or BNRE with ``balanced=True``) is the
#: default; ``"nrec_soft"`` needs ``theta_1`` and ``joint_log_ratio`` in ``fit``, the others
#: ``from_reference`` and the joint quantities.
LOSSES = ("nrec", "nrec_soft", *REFERENCE_LOSSES)

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
        loss: ``"nrec"`` (the default), ``"nrec_soft"`` (NRE-C with the joint ratio's soft
            labels; ``num_atoms - 1`` references per simulation), or one of the
            reference-ratio losses ``"rolr"``, ``"rascal"``, ``"alices"``, ``"cascal"``,
            ``"carl"`` (see the module docstring).
        joint_score_weight: λ of the score term; None gives 1 for RASCAL and CASCAL (the
            weight :class:`~simgen.losses.JointScoreNLELoss` uses) and 0 for the others.
            A positive weight adds the score term to ALICES (Brehmer et al.'s α; 0.1 is
            the value ``benchmarks/results_joint_ratio.md`` measured best).
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
        loss: str = "nrec",
        joint_score_weight: float | None = None,
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
        if loss not in LOSSES or (balanced and loss != "nrec"):
            raise ConfigError(
                f"loss must be one of {list(LOSSES)} (balanced=True only with 'nrec'); "
                f"got loss={loss!r}, balanced={balanced!r}."
            )
        self.loss = loss
        default = float(loss in REFERENCE_LOSSES and REFERENCE_LOSSES[loss][1])
        weight = default if joint_score_weight is None else joint_score_weight
        self.joint_score_weight = check_joint_score_weight(weight)
        if loss == "nrec_soft" and self.joint_score_weight > 0:
            raise ConfigError("loss='nrec_soft' has no score term; drop joint_score_weight.")
        if loss in ("rascal", "cascal") and self.joint_score_weight == 0:
            raise ConfigError(
                f"loss={loss!r} needs joint_score_weight > 0 (or use its plain form)."
            )
        self.mcmc = MCMCConfig.resolve(mcmc, num_chains, warmup, thin, mcmc_method)
        self.history = None

    def fit(
        self,
        theta: Any = None,
        x: Any = None,
        config: TrainConfig | None = None,
        *,
        bank: Any = None,
        from_reference: Any = None,
        joint_log_ratio: Any = None,
        joint_score: Any = None,
        theta_1: Any = None,
        **config_options: Any,
    ) -> MCMCPosterior:
        """Train the classifier on simulations and return the MCMC posterior.

        The reference-ratio losses take the rows of a
        :class:`~simgen.simulator.RatioSimulations`: ``from_reference`` ``(N,)`` (whether the
        row was drawn at θ₁), ``joint_log_ratio`` ``(N,)`` (ROLR, RASCAL, ALICES) and
        ``joint_score`` ``(N, D)`` (with a positive ``joint_score_weight``), e.g.
        ``nre.fit(data.theta, data.x, **data.extras())`` with ``data`` from
        ``simulate(..., joint=True, theta_1="prior").ratio_rows()`` (or from a bank:
        ``read_bank(path).ratio_rows()``).

        ``loss="nrec_soft"`` takes ``theta_1`` ``(N, K-1, D)`` (``(N, D)`` for K = 2), the
        references each simulation's latents were re-scored at, drawn from the prior, and
        ``joint_log_ratio`` ``(N, K-1)`` (``(N,)``) against each, K being ``num_atoms``:
        ``nre.fit(run.theta, run.x, theta_1=run.theta_1,
        joint_log_ratio=run.joint_log_ratio)`` with ``run = simulate(..., joint=True,
        theta_1=PriorReferences(K - 1))`` (:class:`simgen.joint_ratio.PriorReferences`: every
        recorded trace re-scored at K − 1 prior draws in the one simulator pass), or
        ``theta_1="prior"`` for K = 2.

        ``bank=`` (a bank's path, a dataset of ``(theta, x)`` rows or batches, or a
        :class:`~simgen.streaming.Stream`) trains from chunks read as needed instead of
        ``theta`` and ``x`` in memory (:mod:`simgen.streaming`); NRE-C and BNRE only.
        """
        config = self._config(config, config_options, RatioClassifier)
        stream = data_source(theta, x, bank)
        if stream is not None:
            if self.loss != "nrec":
                raise ConfigError(
                    f"NRE(loss={self.loss!r}) needs the per-row joint quantities, which "
                    "fit(bank=...) does not read; pass the simulations in memory."
                )
            stream = check_stream(self.prior, stream)
            x_shape = tuple(stream.peek()[1].shape[1:])
        else:
            theta, x = check_simulations(self.prior, theta, x)
            extras = self._extras(theta, from_reference, joint_log_ratio, joint_score, theta_1)
            x_shape = tuple(x.shape[1:])
        with torch.random.fork_rng(devices=[]):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            classifier = RatioClassifier(
                self.theta_dim, x_shape, self.embedding_net, self.hidden_features
            )
            if stream is not None:
                classifier.fit_standardization_chunks(stream.chunks)
                stream.check_counts()
            else:
                classifier.fit_standardization(theta, x)
            loss = self._loss(classifier, None if stream is not None else extras)
            if stream is not None:
                self.history = fit(loss, config=config, stream=stream)
            else:
                self.history = fit(loss, theta, x, config, extras)
        classifier = classifier.cpu() if config.device == "cpu" else classifier
        return MCMCPosterior.from_ratio(
            classifier, self.prior, x_shape, history=self.history, mcmc=self.mcmc
        )

    def _loss(self, classifier: nn.Module, extras: dict[str, Any] | None) -> nn.Module:
        """The training objective on ``classifier``: NRE-C, BNRE, or the reference-ratio loss
        named by ``loss`` (its score term scaled by the joint score's sd on rows drawn at θ)."""
        if self.loss in REFERENCE_LOSSES:
            score = extras.get("joint_score")
            own = ~extras["from_reference"]
            scale = None if score is None else score[own].std(0).clamp_min(1e-8)
            return reference_ratio_loss(classifier, self.loss, self.joint_score_weight, scale)
        if self.loss == "nrec_soft":
            return SoftNRECLoss(classifier, self.num_atoms, self.gamma)
        if self.balanced:
            return BNRELoss(classifier, self.regularization)
        return NRECLoss(classifier, self.num_atoms, self.gamma)

    def _extras(
        self, theta, from_reference, joint_log_ratio, joint_score, theta_1=None
    ) -> dict[str, Any]:
        """The checked per-row tensors the chosen loss needs (a ConfigError for missing or
        unused ones, a ShapeError for wrong shapes or non-finite values)."""
        given = {
            "from_reference": from_reference,
            "joint_log_ratio": joint_log_ratio,
            "joint_score": joint_score,
            "theta_1": theta_1,
        }
        needed = set()
        if self.loss == "nrec_soft":
            needed = {"theta_1", "joint_log_ratio"}
        if self.loss in REFERENCE_LOSSES:
            needed.add("from_reference")
            if REFERENCE_LOSSES[self.loss][0] != "carl":
                needed.add("joint_log_ratio")
            if self.joint_score_weight > 0:
                needed.add("joint_score")
        for name, value in given.items():
            if (value is None) == (name in needed):
                verb = "needs" if value is None else "does not use"
                how = (
                    "nrec_soft takes the simulations of simulate(..., joint=True, "
                    "theta_1=PriorReferences(num_atoms - 1)) as they are: nre.fit(run.theta, "
                    "run.x, theta_1=run.theta_1, joint_log_ratio=run.joint_log_ratio)"
                    if self.loss == "nrec_soft"
                    else "the reference-ratio losses take the rows of simulate(..., "
                    "joint=True, theta_1='prior').ratio_rows() (or "
                    "sim.ratio_simulations(...)): nre.fit(data.theta, data.x, "
                    "**data.extras()) with the loss that uses them"
                )
                raise ConfigError(
                    f"NRE(loss={self.loss!r}, joint_score_weight={self.joint_score_weight}) "
                    f"{verb} {name}; {how}."
                )
        shapes = {"from_reference": (len(theta),), "joint_log_ratio": (len(theta),)}
        shapes["joint_score"] = tuple(theta.shape)
        if self.loss == "nrec_soft":
            return self._soft_extras(theta, theta_1, joint_log_ratio)
        out = {}
        for name in needed:
            value = torch.as_tensor(given[name])
            if tuple(value.shape) != shapes[name] or not torch.isfinite(value.float()).all():
                raise ShapeError(
                    f"{name} must be finite with shape {shapes[name]} (one per simulation); "
                    f"got shape {tuple(value.shape)}."
                )
            out[name] = value.bool() if name == "from_reference" else value.float()
        if "from_reference" in out and out["from_reference"].float().mean() != 0.5:
            raise ShapeError(
                "from_reference must mark exactly half of the rows (as many simulations at "
                "theta_1 as at the rows' own theta), as ratio_simulations returns them."
            )
        return out

    def _soft_extras(self, theta, theta_1, joint_log_ratio) -> dict[str, Any]:
        """``theta_1`` ``(N, K-1, D)`` and ``joint_log_ratio`` ``(N, K-1)`` for NRE-C's soft
        labels (a ShapeError naming the expected shapes, a ConfigError for one fixed row)."""
        n, d = theta.shape
        m = self.num_atoms - 1
        refs = torch.as_tensor(theta_1).float()
        log_r = torch.as_tensor(joint_log_ratio).float()
        refs = refs[:, None] if refs.ndim == 2 else refs
        log_r = log_r[:, None] if log_r.ndim == 1 else log_r
        if refs.shape != (n, m, d) or log_r.shape != (n, m):
            raise ShapeError(
                f"loss='nrec_soft' with num_atoms={self.num_atoms} needs theta_1 ({n}, {m}, "
                f"{d}) and joint_log_ratio ({n}, {m}): num_atoms - 1 prior-drawn references "
                f"per simulation; got {tuple(refs.shape)} and {tuple(log_r.shape)}. Simulate "
                f"with theta_1=PriorReferences({m}), or pass num_atoms = 1 + the number of "
                "references (2 for one theta_1='prior' run)."
            )
        if not (torch.isfinite(refs).all() and torch.isfinite(log_r).all()):
            raise ShapeError("theta_1 and joint_log_ratio must be finite (no NaN or inf).")
        if n > 1 and (refs == refs[:1]).all():
            raise ConfigError(
                "loss='nrec_soft' needs references drawn from the prior per simulation "
                "(simulate(..., joint=True, theta_1=PriorReferences(M))); one fixed theta_1 row "
                "for every simulation breaks NRE-C's contrastive classes."
            )
        return {"theta_1": refs, "joint_log_ratio": log_r}
