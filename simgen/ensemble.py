r"""Ensembles: the equal-weight mixture of K posteriors trained on the same simulations.

.. math:: q(\theta \mid x) = \frac{1}{K} \sum_{k=1}^{K} q_k(\theta \mid x).

Each member's network lands in a different optimum (a different seed for initialisation,
validation split and shuffling; with ``bootstrap=True`` also a resample of the simulations
drawn with replacement), and where one member is overconfident in a wrong place the others
put mass elsewhere, so the mixture is broader exactly where the members disagree
(Lakshminarayanan et al., 2017; Hermans et al., 2022 for SBI). ``NPE(prior, ensemble=K)``
trains one; ``Ensemble([p1, p2, ...])`` combines posteriors that share a prior and shapes.

* ``sample``: member indices :math:`k_i \sim \mathrm{Categorical}(1/K, \dots, 1/K)` drawn
  multinomially, then :math:`\theta_i \sim q_{k_i}(\cdot \mid x)`; the draws are returned in
  the order of the indices, so any prefix is itself a mixture sample.
* ``log_prob``: :math:`\operatorname{logsumexp}_k \log q_k(\theta \mid x) - \log K`, which
  needs every member to have a normalised density (a sample-only family or an MCMC
  posterior's unnormalised potential raises :class:`~simgen.errors.NoDensityError`: the
  mixture weights of unnormalised terms would be off by an unknown constant per member).
* ``save``/``simgen.load``: one model file whose spec lists the members' specs
  (``"members"``) and whose weights are the members' weights under ``members.<k>.`` keys,
  each member checked and rebuilt by its own kind's loader, so no code runs on load.

What an ensemble buys in C2ST and coverage over one member is measured in
``benchmarks/results_ensemble.md``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, ModelFileError, NoDensityError
from .posterior import Posterior
from .posterior_args import check_seed
from .prior_specs import prior_to_spec
from .serialization import POSTERIOR_KINDS, check_spec, check_state, save_model

__all__ = ["Ensemble", "fit_ensemble", "member_seed"]

#: Weight-key prefix of member k in a saved ensemble: ``members.<k>.<member key>``.
_PREFIX = "members"


def member_seed(seed: int, k: int, purpose: str = "member") -> int:
    """A 63-bit seed for member ``k`` derived from ``(seed, purpose, k)`` by numpy's
    ``SeedSequence`` hash, so members' streams never overlap as ``seed + k`` would
    (member 1 of seed 0 would replay member 0 of seed 1)."""
    words = [int(seed) % 2**64, k, *purpose.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Ensemble(Posterior):
    """The equal-weight mixture of ``members`` (see the module docstring for the maths).

    Args:
        members: Two or more posteriors (:class:`~simgen.posterior.Posterior`) over the same
            prior's parameters, for observations of the same shape. An ensemble is not a
            member of another (flatten it: ``Ensemble([*a.members, *b.members])``).

    Raises:
        ConfigError: Fewer than two members, a member that is not a simgen posterior or is
            an ensemble, or members that disagree on ``theta_dim`` or ``x_shape``.
    """

    kind = "ensemble"
    method = "ensemble"

    def __init__(self, members: Sequence[Posterior]):
        members = list(members)
        if len(members) < 2:
            raise ConfigError(
                f"Ensemble needs at least 2 posteriors, got {len(members)}; a single "
                "posterior is used as it is."
            )
        for i, m in enumerate(members):
            if not isinstance(m, Posterior) or isinstance(m, Ensemble):
                raise ConfigError(
                    f"Ensemble member {i} is a {type(m).__name__}; members must be simgen "
                    "posteriors (from NPE/NLE/NRE.fit or simgen.load), not ensembles "
                    "(flatten them: Ensemble([*a.members, *b.members]))."
                )
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            if m.theta_dim != first.theta_dim or m.x_shape != first.x_shape:
                raise ConfigError(
                    f"Ensemble member {i} has theta_dim={m.theta_dim}, x_shape={m.x_shape}; "
                    f"member 0 has theta_dim={first.theta_dim}, x_shape={first.x_shape}. "
                    "Members must be trained on the same task."
                )
        super().__init__(first.prior, first.x_shape, first.theta_dim)
        self.members = members
        self.estimator = nn.ModuleList([m.estimator for m in members])
        self.history = [getattr(m, "history", None) for m in members]
        self.training_x = first.training_x
        self.combines_trials = getattr(first, "combines_trials", False)
        if first.default_x is not None:
            self.set_default_x(first.default_x)

    def __len__(self) -> int:
        return len(self.members)

    def set_default_x(self, x: Any) -> Ensemble:
        super().set_default_x(x)
        for m in getattr(self, "members", ()):
            m.set_default_x(x)
        return self

    # -- sampling ---------------------------------------------------------------------
    def _assignments(self, n: int, batch: int, seed: int | None) -> tuple[Tensor, list[int | None]]:
        """``(n, batch)`` member indices, uniform over members, and each member's seed."""
        if seed is None:  # from torch's global generator, so fork_rng + manual_seed fix it
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator().manual_seed(member_seed(seed, 0, "assign"))
        seeds: list[int | None] = [member_seed(seed, k) for k in range(len(self.members))]
        idx = torch.randint(len(self.members), (n, batch), generator=generator)
        return idx, seeds

    @torch.no_grad()
    def sample(
        self,
        sample_shape: Sequence[int] = (),
        x: Any = None,
        seed: int | None = None,
        **options: Any,
    ) -> Tensor:
        """``(*sample_shape, D)`` draws of the mixture for one observation.

        ``seed`` fixes the member indices and each member's draws; other options go to every
        member's ``sample`` (e.g. ``num_chains`` for MCMC members).
        """
        xo = self._single_x(x)
        return self._mix(tuple(sample_shape), xo, seed, options, batched=False)

    @torch.no_grad()
    def sample_batched(
        self, sample_shape: Sequence[int], x: Any, seed: int | None = None, **options: Any
    ) -> Tensor:
        """``(*sample_shape, B, D)``: independent member indices per observation, each member
        drawing once for all B observations (``sample_batched`` of that member)."""
        xs = self._batch_x(x)
        return self._mix(tuple(sample_shape), xs, seed, options, batched=True)

    def _mix(
        self,
        sample_shape: tuple[int, ...],
        x: Tensor,
        seed: int | None,
        options: dict[str, Any],
        batched: bool,
    ) -> Tensor:
        check_seed(seed)
        n = math.prod(sample_shape)
        batch = len(x) if batched else 1
        idx, seeds = self._assignments(n, batch, seed)
        out: Tensor | None = None
        for k, member in enumerate(self.members):
            mask = idx == k
            need = int(mask.sum(0).max()) if n else 0
            if need == 0:
                continue
            if batched:
                draws = member.sample_batched((need,), x, seed=seeds[k], **options)
            else:
                draws = member.sample((need,), x=x, seed=seeds[k], **options)[:, None, :]
            if out is None:
                out = draws.new_empty(n, batch, self.theta_dim)
            rank = (torch.cumsum(mask, 0) - 1).to(draws.device)
            rows, cols = mask.nonzero(as_tuple=True)
            rows, cols = rows.to(draws.device), cols.to(draws.device)
            out[rows, cols] = draws[rank[rows, cols], cols]
        if out is None:
            out = self._home(torch.empty(0, batch, self.theta_dim))
        out = out.reshape(*sample_shape, batch, self.theta_dim)
        return out if batched else out[..., 0, :]

    # -- densities --------------------------------------------------------------------
    def _check_density(self) -> None:
        for i, m in enumerate(self.members):
            if m.kind == "mcmc":
                raise NoDensityError(
                    f"Ensemble member {i} is an MCMC posterior ({m.method}) whose log_prob is "
                    "unnormalised, so the mixture density is undefined; sample() works, or "
                    "ensemble NPE posteriors for a density."
                )

    def log_prob(self, theta: Any, x: Any = None, **options: Any) -> Tensor:
        """:math:`\\log \\frac1K \\sum_k q_k(\\theta\\mid x)` → ``theta.shape[:-1]``; options
        (e.g. ``norm_posterior``) go to every member."""
        self._check_density()
        terms = [m.log_prob(theta, x=x, **options) for m in self.members]
        return self._logmeanexp(terms)

    def log_prob_batched(self, theta: Any, x: Any, **options: Any) -> Tensor:
        """``theta`` ``(*, B, D)`` against ``B`` observations → ``(*, B)``."""
        self._check_density()
        terms = [m.log_prob_batched(theta, x, **options) for m in self.members]
        return self._logmeanexp(terms)

    @staticmethod
    def _logmeanexp(terms: list[Tensor]) -> Tensor:
        device = terms[0].device
        stacked = torch.stack([t.to(device) for t in terms])
        return torch.logsumexp(stacked, 0) - math.log(len(terms))

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One model file: each member's spec in ``"members"``, its weights under
        ``members.<k>.`` (see the module docstring)."""
        specs, state = [], {}
        for k, member in enumerate(self.members):
            spec, weights = _member_payload(member)
            specs.append(spec)
            state.update({f"{_PREFIX}.{k}.{key}": value for key, value in weights.items()})
        spec = {
            "posterior": self.kind,
            "method": self.method,
            "estimator": {"name": "ensemble"},
            "members": specs,
            "x_shape": list(self.x_shape),
            "theta_dim": self.theta_dim,
            "prior": prior_to_spec(self.prior),
            "default_x": None if self._default_x is None else self._default_x.cpu().tolist(),
        }
        save_model(path, spec, state)

    @classmethod
    def _from_file(
        cls,
        spec: dict[str, Any],
        state: dict[str, Tensor],
        prior: Any = None,
        embedding_net: Any = None,
        device: str = "cpu",
    ) -> Ensemble:
        import importlib

        specs = spec.get("members")
        if not isinstance(specs, list) or len(specs) < 2:
            raise ModelFileError("an ensemble file's 'members' field must list 2 or more specs.")
        prior = cls._prior_from(spec, prior)
        members = []
        for k, member_spec in enumerate(specs):
            where = f"ensemble member {k}"
            check_spec(member_spec, where)
            prefix = f"{_PREFIX}.{k}."
            weights = {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
            check_state(member_spec, weights, where)
            kind = member_spec["posterior"]
            if kind not in POSTERIOR_KINDS or kind == cls.kind:
                raise ModelFileError(f"{where}: unknown or nested posterior kind {kind!r}.")
            module_name, cls_name = POSTERIOR_KINDS[kind].split(":")
            member_cls = getattr(importlib.import_module(module_name), cls_name)
            members.append(
                member_cls._from_file(
                    member_spec, weights, prior=prior, embedding_net=embedding_net, device=device
                )
            )
        ensemble = cls(members)
        if spec.get("default_x") is not None:
            ensemble.set_default_x(torch.tensor(spec["default_x"]))
        return ensemble

    def __repr__(self) -> str:
        names = sorted({f"{m.method}/{getattr(m.estimator, 'name', '?')}" for m in self.members})
        return (
            f"Ensemble(K={len(self.members)}, members={names}, theta_dim={self.theta_dim}, "
            f"x_shape={self.x_shape})"
        )


def _member_payload(member: Posterior) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """What ``member.save`` would write, read back in memory (spec, weights)."""
    import tempfile

    from .serialization import read_model

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "member.model")
        member.save(path)
        return read_model(path)


def fit_ensemble(
    method: Any,
    theta: Any,
    x: Any,
    config: Any,
    joint_score: Any,
    *,
    bank: Any = None,
    init: Any = None,
    **config_options: Any,
) -> Ensemble:
    """Train ``method.ensemble`` members of ``method`` (an NPE) on the same simulations.

    Member k trains with ``seed = member_seed(config seed, k)`` (initialisation, validation
    split, shuffling; ``seed=None`` leaves every member unseeded) and its own copy of the
    embedding net. With ``method.bootstrap`` it trains on N rows drawn with replacement,
    seeded the same way, so members also see different data (not with ``bank=``). An ensemble
    as ``init`` warm-starts member k from its member k.
    """
    from .training import TrainConfig

    base = config.seed if isinstance(config, TrainConfig) else 0
    base = config_options.get("seed", base)
    if method.bootstrap and bank is not None:
        raise ConfigError(
            "NPE(ensemble=K, bootstrap=True) resamples simulations in memory; with bank= "
            "drop bootstrap=True (members then differ by seed), or read_bank(path) first."
        )
    members = []
    for k in range(method.ensemble):
        member = copy.copy(method)
        member.ensemble = 1
        member.embedding_net = copy.deepcopy(method.embedding_net)
        seed = None if base is None else member_seed(base, k)
        th, xx, js = theta, x, joint_score
        if method.bootstrap:
            th, xx, js = _resample(theta, x, joint_score, seed)
        start = init.members[k % len(init)] if isinstance(init, Ensemble) else init
        members.append(
            member.fit(
                th, xx, config, js, bank=bank, init=start, **{**config_options, "seed": seed}
            )
        )
    method.history = [m.history for m in members]
    return Ensemble(members)


def _resample(theta: Any, x: Any, joint_score: Any, seed: int | None) -> tuple[Any, Any, Any]:
    theta, x = torch.as_tensor(theta), torch.as_tensor(x)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(member_seed(seed, 0, "bootstrap"))
    rows = torch.randint(len(theta), (len(theta),), generator=generator)
    js = None if joint_score is None else torch.as_tensor(joint_score)[rows]
    return theta[rows], x[rows], js
