r"""Banking the joint likelihood ratio: ``simulate(..., joint=True, theta_1=...)``.

Each simulation :math:`i` is drawn at :math:`\theta_i` and its recorded latents are re-scored
at a second parameter :math:`\theta_{1,i}`, so the run keeps, beside ``x``, the joint score
and the joint log-density,

.. math:: \log r_i = \log p(x_i, z_i \mid \theta_i) - \log p(x_i, z_i \mid \theta_{1,i})

(``joint_log_ratio`` ``(N,)``) and :math:`\theta_{1,i}` itself (``theta_1`` ``(N, D)``).
``theta_1="prior"`` draws every :math:`\theta_{1,i}` from the prior, independently of
:math:`\theta_i`, from a stream of the run's seed that θ's own draws do not share; a row
``(D,)`` uses one reference for every simulation; ``run_simulator`` also takes ``(N, D)``.
With M references per simulation (:class:`PriorReferences`, or rows ``(N, M, D)``) the two
arrays are ``(N, M)`` and ``(N, M, D)``, column m against reference m.

:meth:`simgen.simulations.Simulations.ratio_rows` turns such a run into the training rows of
:mod:`simgen.losses.ratio` (a :class:`~simgen.simulator.RatioSimulations`). With
``theta_1="prior"`` the pair :math:`(\theta_i, \theta_{1,i})` is exchangeable, so each
simulation gives two rows: :math:`(\theta_i, x_i)` drawn at its own parameter, with
:math:`\log r_i` and the joint score, and :math:`(\theta_{1,i}, x_i)` drawn at the reference
:math:`\theta_i` of the parameter :math:`\theta_{1,i}`, with :math:`-\log r_i`. Both halves
have the distributions the losses assume (θ from the prior; x from :math:`p(x\mid\theta)` or,
independently of θ, from the evidence :math:`p(x)`), so N simulations give 2N rows. A fixed
reference needs simulations drawn *at* it: ``ratio_rows(reference=...)`` takes a second run
made by ``run_simulator(sim, theta_1_rows, joint=True, theta_1=thetas)``.

NRE-C with soft labels (``NRE(loss="nrec_soft", num_atoms=K)``) needs K − 1 references per
simulation, and one simulator pass gives them: ``theta_1=PriorReferences(M)`` draws M rows
per simulation from the prior (``(N, M, D)`` rows of one's own do the same), and each
recorded trace is re-scored at every one of them, so the run keeps ``theta_1`` ``(N, M, D)``
and ``joint_log_ratio`` ``(N, M)``. A re-score conditions the program on the recorded
latents, one batched log-density pass without the forward draw or the score's backward
pass, about half a ``trace`` on particle_shower (``benchmarks/results_joint_ratio.md``,
"Re-scoring against re-simulating"). References added to a finished run need its traces
again: :func:`stack_references` stacks runs that re-simulate the same θs with the same seed
(``run_simulator(sim, run.theta, seed=seed, joint=True, theta_1=rows)``, each call seeded
from ``(seed, batch, start)``, so the latents are the recorded ones) and checks that every
run holds the same θ and x.

Runs go through the batches of :mod:`simgen.batches` unchanged: :class:`RatioRun` is a
simulator of the packed rows :math:`[\theta_i, \theta_{1,i}]` whose ``trace`` re-scores, so
seeding, bisection of failing rows, workers and banks treat it like any joint run, and ``x``
is the same as with ``joint=True`` alone.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .errors import ConfigError, ShapeError, SimulationError
from .simulator import Simulator, Trace

__all__ = [
    "PriorReferences",
    "RatioRun",
    "RatioTrace",
    "reference_rows",
    "reference_label",
    "stack_references",
    "THETA_1_STREAM",
]

#: Spawn key of the stream ``theta_1="prior"`` draws from (θ itself uses the seed directly,
#: the batches ``(seed, batch[, start])``), so the references share no draws with either.
THETA_1_STREAM = 0x7468_6574_615F_31
#: Most references per simulation: each costs a re-score of every trace and a (N, D) column.
MAX_REFERENCES = 10_000


@dataclass(frozen=True)
class PriorReferences:
    """``theta_1=PriorReferences(count)``: ``count`` references per simulation, each drawn
    from the prior independently of θ and of each other (the :data:`THETA_1_STREAM` of the
    run's seed), every trace re-scored at all of them (the module docstring)."""

    count: int

    def __post_init__(self):
        number = None
        if not isinstance(self.count, bool):
            try:
                number = operator.index(self.count)
            except TypeError:
                number = None
        if number is None or not 1 <= number <= MAX_REFERENCES:
            raise ConfigError(
                f"PriorReferences(count) takes a whole number of references per simulation "
                f"from 1 to {MAX_REFERENCES:,}; got {self.count!r}. For NRE(loss='nrec_soft', "
                "num_atoms=K) pass K - 1."
            )
        object.__setattr__(self, "count", number)


@dataclass
class RatioTrace(Trace):
    """A :class:`~simgen.simulator.Trace` re-scored at ``theta_1``: ``joint_log_ratio``
    ``(N,)`` and ``theta_1`` ``(N, D)`` as well (``(N, M)``, ``(N, M, D)`` for M references)."""

    joint_log_ratio: Tensor | None = None
    theta_1: Tensor | None = None


class RatioRun(Simulator):
    """The simulator of packed rows ``[θ, θ₁]`` ``(N, 2D)`` (``[θ, θ₁⁽¹⁾, …, θ₁⁽ᴹ⁾]``, ``(N,
    (1 + M) D)``, with ``references=M``): ``trace`` simulates at θ with the inner simulator's
    ``trace`` and re-scores the latents at each θ₁ (``joint_log_ratio``)."""

    def __init__(self, sim: Simulator, theta_dim: int, references: int | None = None):
        self.sim, self.theta_dim, self.references = sim, int(theta_dim), references

    @classmethod
    def packing(cls, sim: Simulator, theta: Tensor, rows: Tensor) -> tuple[RatioRun, Tensor]:
        """The run of ``theta`` ``(N, D)`` against ``rows`` (``(N, D)`` or ``(N, M, D)``, from
        :func:`reference_rows`) and its packed rows."""
        n, d = theta.shape
        many = rows.shape[1] if rows.ndim == 3 else None
        return cls(sim, d, many), torch.cat([theta, rows.reshape(n, -1)], 1)

    def __repr__(self) -> str:
        return f"RatioRun({self.sim!r})"

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sim(theta[:, : self.theta_dim], generator=generator)

    def trace(self, theta: Tensor, generator: torch.Generator | None = None) -> RatioTrace:
        own, ref = theta[:, : self.theta_dim], theta[:, self.theta_dim :]
        tr = self.sim.trace(own, generator=generator)
        if self.references is None:
            log_r = self.sim.joint_log_ratio(tr, ref)
            return RatioTrace(**vars(tr), joint_log_ratio=log_r.detach(), theta_1=ref.clone())
        refs = ref.reshape(len(ref), self.references, self.theta_dim)
        log_r = [self.sim.joint_log_ratio(tr, refs[:, m]) for m in range(self.references)]
        log_r = torch.stack(log_r, 1).detach()
        return RatioTrace(**vars(tr), joint_log_ratio=log_r, theta_1=refs.clone())


def check_ratio_simulator(sim: Simulator) -> None:
    """A :class:`~simgen.errors.SimulationError` unless ``sim`` can re-score its traces."""
    if not callable(getattr(sim, "joint_log_ratio", None)):
        raise SimulationError(
            f"theta_1= needs a simulator with trace() and joint_log_ratio(trace, theta_1) "
            f"(a simgen.from_pyro program); {sim!r} has no joint_log_ratio. Drop theta_1, or "
            "wrap a pyro program with simgen.from_pyro."
        )


def reference_rows(theta_1: object, theta: Tensor, seed: int, prior: Distribution | None) -> Tensor:
    """``theta_1`` as float32 rows for the run's ``theta`` ``(N, D)``: ``"prior"`` or
    :class:`PriorReferences` (drawn from ``prior`` on the :data:`THETA_1_STREAM` of
    ``seed``; ``(N, D)`` and ``(N, M, D)``), one row, N rows or ``(N, M, D)``."""
    n, d = theta.shape
    if isinstance(theta_1, (str, PriorReferences)):
        if isinstance(theta_1, str) and theta_1 != "prior":
            raise ConfigError(
                f"theta_1 must be 'prior', PriorReferences(M), a row (D,) or rows (N, D) or "
                f"(N, M, D); got {theta_1!r}."
            )
        if prior is None:
            raise ConfigError(f"theta_1={theta_1!r} needs the prior: pass prior= to run_simulator.")
        shape = (n,) if isinstance(theta_1, str) else (n, theta_1.count)
        state = np.random.SeedSequence(seed, spawn_key=(THETA_1_STREAM,)).generate_state(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(state[0]))
            return prior.sample(shape).float().reshape(*shape, d)
    try:
        rows = torch.as_tensor(theta_1).detach().to(torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"theta_1 must be 'prior' or numeric rows; got {theta_1!r}.") from exc
    rows = rows[None] if rows.ndim == 1 else rows
    many = rows.ndim == 3 and tuple(rows.shape[::2]) == (n, d) and rows.shape[1] >= 1
    if not many and (rows.ndim != 2 or rows.shape[1] != d or len(rows) not in (1, n)):
        raise ShapeError(
            f"theta_1 must be 'prior', PriorReferences(M), one parameter row ({d},), one row "
            f"per simulation ({n}, {d}) or M rows per simulation ({n}, M, {d}); got shape "
            f"{tuple(rows.shape)}."
        )
    if many and rows.shape[1] > MAX_REFERENCES:
        raise ShapeError(
            f"theta_1 holds {rows.shape[1]:,} references per simulation; at most "
            f"{MAX_REFERENCES:,} are re-scored in one run."
        )
    if not torch.isfinite(rows).all():
        raise ShapeError("theta_1 holds NaN or inf; every reference parameter must be finite.")
    return rows.clone() if many else rows.expand(n, d).clone()


def reference_label(theta_1: object) -> str | None:
    """What a bank's fingerprint records of ``theta_1``: None, ``"prior"``, ``"prior xM"``
    or a digest of the rows (a resume must pass the same references)."""
    if theta_1 is None or isinstance(theta_1, str):
        return theta_1
    if isinstance(theta_1, PriorReferences):
        return f"prior x{theta_1.count}"
    rows = torch.as_tensor(theta_1).detach().to(torch.float32).contiguous().numpy()
    return f"rows {tuple(rows.shape)} sha256:{hashlib.sha256(rows.tobytes()).hexdigest()[:16]}"


def stack_references(runs) -> tuple[Tensor, Tensor]:
    """``theta_1`` ``(N, M, D)`` and ``joint_log_ratio`` ``(N, M)`` of M runs with references
    (each a :class:`~simgen.simulations.Simulations` made with ``theta_1=``) of the same θs
    and x, for ``NRE(loss="nrec_soft", num_atoms=M + 1)``; a ShapeError when the runs differ
    in θ or x (a run whose failures dropped rows, or another seed)."""
    runs = list(runs)
    if not runs or any(getattr(r, "joint_log_ratio", None) is None for r in runs):
        raise ShapeError(
            "stack_references needs one or more runs made with joint=True and theta_1=."
        )
    first = runs[0]
    for i, r in enumerate(runs[1:], 1):
        if r.theta.shape != first.theta.shape or not (
            torch.equal(r.theta, first.theta) and torch.equal(r.x, first.x)
        ):
            raise ShapeError(
                f"run {i} holds other simulations than run 0 (θ or x differ): re-simulate "
                "run 0's theta with its seed, run_simulator(sim, run.theta, seed=seed, "
                "joint=True, theta_1=rows), and keep runs without failed rows."
            )
    theta_1 = torch.stack([r.theta_1 for r in runs], 1)
    return theta_1, torch.stack([r.joint_log_ratio for r in runs], 1)
