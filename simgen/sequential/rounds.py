r"""Sequential inference for one observation: rounds of simulate → fit → new proposal.

``sequential(method, simulator, x_o, num_simulations, num_rounds, seed)`` splits the budget
equally over the rounds (the remainder goes to round 1). An equal split is the TSNPE paper's
and sbi's tutorial scheme; a larger first round does not narrow the first region where it
is too wide (bernoulli_glm at 1k: 500 prior simulations leave nsf's round-1 fit as wide as
250, ``benchmarks/results_sequential.md``, "bernoulli_glm's round 1, taken apart").
Each round simulates from a proposal, pools the simulations of every round so far, and
trains the method on the pool. NPE's rounds :math:`r \ge 2` start from round
:math:`r-1`'s weights and z-scoring (``warm_start=True``, the default, as sbi's sequential
methods do); ``warm_start=False`` refits from a fresh initialisation. The warm
start is the default because its C2ST was at or below the from-scratch refit's on every
1k run measured (4 rounds of 250,
nsf, against the from-scratch refit on the same first round): two_moons 0.586 against
0.626 and gaussian_mixture 0.616 against 0.654 (3 runs each), gaussian_linear_uniform
0.651 against 0.682 (2 runs) (``benchmarks/results_sequential.md``, "Warm start"); a
refit from scratch on a small pool can lose what the previous round learnt (the fast
test's 2-D Gaussian, seed 1: KL 0.067 after round 3, 1.10 after round 4's refit). The
rounds are:

* **NPE** (any family; TSNPE, Deistler et al. 2022). Round 1 simulates from the prior. Round
  :math:`r \ge 2` simulates from the prior truncated to :math:`R_{r-1}`, the HPD region of
  round :math:`r-1`'s posterior at :math:`x_o` (:mod:`simgen.sequential.truncation`;
  sample-only families use an ellipsoid), or with ``nested=True`` to
  :math:`R_1\cap\dots\cap R_{r-1}`. Training is the plain NPE loss. The pooled proposal
  :math:`\bar p(\theta) = \sum_r w_r p(\theta)\mathbb 1_{A_r}(\theta)/Z_r` (:math:`A_r` the
  region round :math:`r` drew from) is proportional to the prior wherever every :math:`A_r`
  contains θ. So the loss's minimiser :math:`\bar p(\theta)p(x\mid\theta)/\bar p(x)` equals
  :math:`p(\theta \mid x_o)` on the intersection of the regions, which holds all but about
  :math:`\varepsilon` per round of the posterior mass, and no importance correction is
  needed. Outside the intersection the pooled posterior is biased whatever round r draws
  from; the nested proposals spend no simulations there and are narrower, but true mass
  that one round's region cuts stays cut in every later proposal. Round r-1's region alone
  (the TSNPE paper's) is the default: at 1k (from-scratch refits), nested regions held
  0.44-0.63 of the prior mass of the separate ones, cut up to 0.75% of the reference posterior on
  gaussian_linear_uniform (against 0.2%), and gave mean C2ST 0.660 against 0.651 over
  gaussian_linear_uniform, two_moons and gaussian_mixture
  (``benchmarks/results_sequential.md``, "Nested regions").
* **NLE / NRE** (SNLE, SNRE). Round :math:`r \ge 2` simulates from round :math:`r-1`'s MCMC
  posterior at :math:`x_o` (``proposal="posterior"``, the default for both). NLE's loss is
  minimised by the likelihood whatever θ's distribution. NRE-C's classifier learns
  :math:`p(x\mid\theta)/\bar p(x)`, which is the likelihood up to a factor in x alone, so
  :math:`p(\theta)\,\hat r(\theta, x_o)` stays the posterior. ``proposal="truncated"``
  uses the truncated prior of the MCMC posterior instead. Each round's MCMC chains start
  by SIR from the pooled simulations' θ (``chain_init="pool"``, the default for both;
  ``"prior"`` starts them from prior draws): on slcp at 10,000 simulations prior
  candidates put every chain in one of the posterior's four modes
  (:mod:`simgen.sequential.starts`). The returned posterior draws by tempered SMC
  (``final_method=None`` resolves to ``"smc"`` over the default random-walk config,
  :mod:`simgen.mcmc.smc`): its particles move from the prior through
  :math:`p(\theta)\,\hat L(\theta)^{\beta_t}`, :math:`0=\beta_0<\dots<\beta_T=1`, so each
  mode's share is set by :math:`\int_\text{mode} p\,\hat L` and not by where a chain
  starts; the rounds' proposals keep the method's :class:`~simgen.mcmc.MCMCConfig`. At
  10,000 simulations its draws scored a mean C2ST of 0.658 against random-walk's 0.681 on
  slcp (5 runs), 0.499 against 0.554 on two_moons (6 runs; one random-walk run missed a
  crescent's end, 0.746), and 0.535 against 0.528 on gaussian_linear_uniform (5 runs, within
  the spread) at less CPU (``benchmarks/results_sequential.md``, "SNLE's final draws by SMC
  on two_moons and gaussian_linear_uniform").

**Banks and resuming.** With ``bank="run"``, a directory holds ``round_<r>.zarr`` (that
round's simulations, through :func:`simgen.simulate`'s bank), ``round_<r>.simgen`` (the
posterior trained after it) and ``round_<r>.json`` (its row of the history). A rerun of the
same call reads finished rounds back, loads their posteriors instead of retraining, and
resumes an interrupted round's simulations batch by batch. Nothing simulated is lost.

**Convergence figure.** Each round after the first reports the energy distance between
:data:`ENERGY_DRAWS` draws of its posterior and of the previous one at :math:`x_o`, in
coordinates z-scored by the previous draws:

.. math:: \mathcal E = 2\,\mathbb E\lVert X - Y\rVert - \mathbb E\lVert X - X'\rVert
          - \mathbb E\lVert Y - Y'\rVert,

alongside the change in the proposal region's prior mass. ``stop_tol`` stops early when
:math:`\mathcal E` < ``stop_tol``. It is off by default: the user fixed the budget, the
remaining simulations still reduce the error, and a small distance between two noisy
fits does not show that either is right.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ConfigError, ShapeError, SimulationError
from ..inference import NLE, NPE, NRE
from ..mcmc_posterior import MCMCPosterior
from ..posterior import as_tensor
from ..priors import prior_home
from ..serialization import load
from ..simulate import simulate
from .history import (
    Round,
    RoundHistory,
    check_fingerprint,
    energy_distance,
    load_record,
    save_record,
)
from .starts import PooledStart, check_chain_init
from .truncation import (
    EPSILON,
    REGION_DRAWS,
    IntersectionRegion,
    TruncatedPrior,
    posterior_region,
)

__all__ = ["sequential", "Round", "RoundHistory", "MIN_ROUND_SIMULATIONS"]

#: The fewest simulations a round may get.
MIN_ROUND_SIMULATIONS = 50
#: Posterior draws per round behind the energy distance.
ENERGY_DRAWS = 1000


def round_seed(seed: int, r: int) -> int:
    """The seed of round ``r``'s simulations and training, mixed from ``(seed, r)``."""
    state = np.random.SeedSequence([int(seed), int(r)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**31 - 1)


def split_budget(num_simulations: int, num_rounds: int) -> list[int]:
    """Equal shares, the remainder to round 1."""
    share = num_simulations // num_rounds
    return [num_simulations - share * (num_rounds - 1)] + [share] * (num_rounds - 1)


class _PosteriorProposal(Distribution):
    """θ drawn from a posterior at ``x_o`` (SNLE/SNRE's proposal), returned on ``device``
    (the prior's, where the simulator takes θ); ``log_prob`` is the posterior's,
    unnormalised for MCMC posteriors."""

    arg_constraints: dict = {}

    def __init__(self, posterior: Any, x_o: Tensor, dim: int, device: torch.device):
        self.posterior, self.x_o, self.device = posterior, x_o, device
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        draws = self.posterior.sample((max(shape.numel(), 1),), x=self.x_o)
        return draws[: shape.numel()].reshape(*shape, -1).to(self.device, torch.float32)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.posterior.log_prob(value, x=self.x_o)


def _check_arguments(method: Any, num_simulations: int, num_rounds: int, proposal: str) -> None:
    if not isinstance(method, (NPE, NLE, NRE)):
        raise ConfigError(
            f"method must be an unfitted simgen.NPE(...), simgen.NLE(...) or simgen.NRE(...); "
            f"got {type(method).__name__}."
        )
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
        raise ConfigError(f"num_rounds must be an integer >= 1, got {num_rounds!r}.")
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, int):
        raise ConfigError(f"num_simulations must be an integer, got {num_simulations!r}.")
    if num_simulations < MIN_ROUND_SIMULATIONS * num_rounds:
        raise ConfigError(
            f"num_simulations={num_simulations} over {num_rounds} rounds leaves fewer than "
            f"{MIN_ROUND_SIMULATIONS} simulations a round; raise num_simulations to at least "
            f"{MIN_ROUND_SIMULATIONS * num_rounds} or use fewer rounds."
        )
    if proposal not in ("truncated", "posterior"):
        raise ConfigError(f"proposal must be 'truncated' or 'posterior', got {proposal!r}.")
    if proposal == "posterior" and isinstance(method, NPE):
        raise ConfigError(
            "NPE trained with the plain loss needs truncated proposals (proposal='truncated'): "
            "simulating from the posterior itself would make it learn the wrong posterior."
        )


def _as_observation(x_o: Any) -> Tensor:
    x_o = as_tensor(x_o, "x_o")
    if x_o.ndim == 0:
        raise ShapeError("x_o must be one observation of shape x_shape (or (1, *x_shape)).")
    if not bool(torch.isfinite(x_o).all()):
        raise SimulationError("x_o contains NaN or inf; an observation must be finite.")
    return x_o


def _match_observation(x_o: Tensor, x: Tensor) -> Tensor:
    shape = tuple(x.shape[1:]) or (1,)
    if tuple(x_o.shape) == shape:
        return x_o[None]
    if tuple(x_o.shape) == (1, *shape):
        return x_o
    raise ShapeError(
        f"x_o has shape {tuple(x_o.shape)}, but the simulator returns x of shape {shape}. "
        f"Pass one observation of shape {shape}."
    )


def sequential(
    method: NPE | NLE | NRE,
    simulator: Any,
    x_o: Any,
    num_simulations: int = 10_000,
    num_rounds: int = 4,
    seed: int = 0,
    bank: str | Path | None = None,
    proposal: str | None = None,
    epsilon: float = EPSILON,
    region: str = "auto",
    num_region_draws: int = REGION_DRAWS,
    stop_tol: float | None = None,
    batch_size: int | None = None,
    executor: Any = None,
    progress: bool = False,
    callback: Any = None,
    warm_start: bool = True,
    nested: bool = False,
    chain_init: str | None = None,
    final_method: str | None = None,
    **fit_options: Any,
) -> Any:
    """Spend ``num_simulations`` over ``num_rounds`` rounds focused on ``x_o``.

    Args:
        method: ``simgen.NPE(prior, estimator=...)`` (any family), ``simgen.NLE(prior)``
            or ``simgen.NRE(prior)``; it is fitted once per round.
        simulator: As for :func:`simgen.simulate`.
        x_o: The observation, shape ``x_shape`` (or ``(1, *x_shape)``).
        num_simulations: The total budget, split equally over the rounds.
        num_rounds: Rounds; 1 is amortised training on the prior.
        seed: Seeds every round's simulations and training.
        bank: Directory of per-round banks and posteriors; rerun the same call to resume.
        proposal: ``"truncated"`` (NPE's default and only choice) or ``"posterior"``
            (NLE's and NRE's default; see the module docstring).
        epsilon: Posterior mass left outside a truncation region.
        region: ``"auto"``, ``"hpd"`` or ``"ellipsoid"`` (:func:`posterior_region`).
        num_region_draws: Posterior draws behind each region.
        stop_tol: Stop when the energy distance between successive posteriors falls below
            it (off by default; see the module docstring).
        batch_size, executor: As for :func:`simgen.simulate` (``None``: the simulator's own
            ``default_batch_size``, as there).
        progress: Progress bars for simulation and training.
        callback: Called as ``callback(round, posterior, proposal)`` after each round, with
            the :class:`Round`, its posterior and the proposal of the next round (the last
            proposal after the last round), e.g. to score each round against a reference.
        warm_start: NPE only: train round r ≥ 2 from round r-1's weights (and its
            z-scoring), as sbi's sequential methods do (the default); ``False`` refits
            each round from a fresh initialisation (see the module docstring).
        nested: Truncated proposals: round r draws from the intersection of the regions of
            rounds 1..r-1 rather than from round r-1's region alone (off by default; see the
            module docstring).
        chain_init: NLE / NRE: where each round's MCMC chains start, ``"pool"`` (SIR
            from the pooled simulations' θ, the default) or ``"prior"`` (SIR from prior
            draws, the posterior's own; :mod:`simgen.sequential.starts`). NPE: ``None``.
        final_method: NLE / NRE: the MCMC method of the returned posterior's draws (its
            ``mcmc.method``; the rounds' proposals keep the method's config). ``None`` is
            ``"smc"`` where that config has the default ``"rwm"``, else the config's method
            (see the module docstring). NPE: ``None``.
        **fit_options: Passed to ``method.fit`` every round (e.g. ``max_epochs=200``).

    Returns:
        The last round's posterior, with ``.rounds``, a :class:`RoundHistory` whose
        ``.proposal`` is the last proposal; an NPE posterior carries it as ``.proposal``
        too (an MCMC posterior's ``proposal`` is what starts its chains,
        :mod:`simgen.importance`: with ``chain_init="pool"`` it is the
        :class:`~simgen.sequential.starts.PooledStart` of every round's θ, with
        ``"prior"`` it is left ``None``). An error or Ctrl-C mid-run
        carries the finished rounds as ``exc.rounds`` (their simulations pooled in
        ``.theta`` and ``.x``).

    Example:
        >>> posterior = sequential(NPE(prior), simulator, x_o, num_simulations=2000,
        ...                        num_rounds=4, seed=0, bank="run")
        >>> print(posterior.rounds.table())
    """
    if proposal is None:
        proposal = "truncated" if isinstance(method, NPE) else "posterior"
    _check_arguments(method, num_simulations, num_rounds, proposal)
    chain_init = check_chain_init(chain_init, not isinstance(method, NPE))
    final_mcmc = _final_mcmc(method, final_method)
    x_o = _as_observation(x_o)
    prior = method.prior
    folder = None if bank is None else Path(bank)
    if folder is not None:
        settings = [num_simulations, num_rounds, seed, proposal, epsilon]
        settings += ["warm"] * warm_start + ["nested"] * nested
        settings += ["pool"] * (chain_init == "pool")
        check_fingerprint(folder, method, *settings)
    history = RoundHistory()
    thetas, xs = [], []
    current: Distribution = prior
    posterior, previous_draws, stop = None, None, False
    try:
        for r, n_r in enumerate(split_budget(num_simulations, num_rounds), start=1):
            wall, cpu = time.perf_counter(), time.process_time()
            sims, sim_seconds = _simulate_round(
                simulator, current, n_r, r, seed, folder, batch_size, executor, progress
            )
            thetas.append(sims.theta)
            xs.append(sims.x)
            x_obs = _match_observation(x_o, sims.x)
            theta_all, x_all = torch.cat(thetas), torch.cat(xs)
            init = posterior if warm_start and isinstance(method, NPE) else None
            options = fit_options if init is None else {**fit_options, "init": init}
            posterior = _fit_round(method, theta_all, x_all, r, seed, folder, progress, options)
            if chain_init == "pool":
                posterior.proposal = PooledStart(theta_all)
            record = load_record(folder, r)
            wide = proposal == "truncated" and r < num_rounds
            n_draws = num_region_draws if wide else ENERGY_DRAWS
            draws = _seeded_draws(posterior, x_obs, n_draws, round_seed(seed, r) + 1)
            energy = (
                None
                if previous_draws is None
                else energy_distance(previous_draws[:ENERGY_DRAWS], draws[:ENERGY_DRAWS])
            )
            described, acc, acc_se, extra = _describe(current)
            if r < num_rounds:
                stop = stop_tol is not None and energy is not None and energy < stop_tol
                if not stop:
                    current = _next_proposal(
                        prior,
                        posterior,
                        x_obs,
                        draws,
                        proposal,
                        epsilon,
                        region,
                        round_seed(seed, r),
                        current if nested else None,
                    )
            if record is None:
                record = Round(
                    index=r,
                    num_simulations=len(sims.theta),
                    num_failed=len(sims.failed_theta),
                    proposal=described,
                    acceptance=acc,
                    acceptance_se=acc_se,
                    energy_distance=energy,
                    wall_seconds=time.perf_counter() - wall,
                    cpu_seconds=time.process_time() - cpu,
                    simulate_seconds=sim_seconds,
                    extra=extra,
                )
                save_record(folder, record)
            history.append(record)
            if callback is not None:
                callback(record, posterior, current)
            previous_draws = draws
            if stop:
                history.stopped_early = True
                break
    except BaseException as exc:  # a late error or Ctrl-C keeps every finished simulation
        _attach_finished(exc, history, thetas, xs)
        raise
    history.theta, history.x = torch.cat(thetas), torch.cat(xs)
    history.proposal = current
    posterior.rounds = history
    if not isinstance(posterior, MCMCPosterior):  # there ``proposal`` starts the chains
        posterior.proposal = current
    else:
        posterior.mcmc = final_mcmc
    posterior.set_default_x(x_obs)
    return posterior


def _final_mcmc(method: Any, final_method: str | None) -> Any:
    """The returned MCMC posterior's config: the method's, its ``method`` replaced by
    ``final_method`` (``None``: ``"smc"`` over the default ``"rwm"``); ``None`` for NPE."""
    if isinstance(method, NPE):
        if final_method is not None:
            raise ConfigError(
                "final_method sets the MCMC of an NLE or NRE posterior's draws, and NPE "
                "posteriors sample without MCMC; leave final_method out for NPE."
            )
        return None
    if final_method is None:
        final_method = "smc" if method.mcmc.method == "rwm" else method.mcmc.method
    return method.mcmc.replace(method=final_method)


def _attach_finished(exc: BaseException, history: RoundHistory, thetas: list, xs: list) -> None:
    """Put the finished rounds (``exc.rounds``, whose ``theta``/``x`` pool every finished
    round's simulations) on an exception raised mid-run, so nothing simulated is lost."""
    if thetas:
        history.theta, history.x = torch.cat(thetas), torch.cat(xs)
    exc.rounds = history


def _simulate_round(
    simulator: Any,
    proposal: Distribution,
    n: int,
    r: int,
    seed: int,
    folder: Path | None,
    batch_size: int | None,
    executor: Any,
    progress: bool,
) -> tuple[Any, float]:
    start = time.perf_counter()
    sims = simulate(
        simulator,
        proposal,
        n,
        seed=round_seed(seed, r),
        batch_size=batch_size,
        progress=progress,
        bank=None if folder is None else folder / f"round_{r}.zarr",
        executor=executor,
    )
    return sims, time.perf_counter() - start


def _fit_round(
    method: Any,
    theta: Tensor,
    x: Tensor,
    r: int,
    seed: int,
    folder: Path | None,
    progress: bool,
    fit_options: dict[str, Any],
) -> Any:
    path = None if folder is None else folder / f"round_{r}.simgen"
    if path is not None and path.exists():
        return load(path, prior=method.prior, embedding_net=getattr(method, "embedding_net", None))
    options = {"seed": round_seed(seed, r), "progress": progress, **fit_options}
    posterior = method.fit(theta, x, **options)
    if path is not None:
        tmp = path.with_suffix(".simgen.partial")
        posterior.save(tmp)
        tmp.replace(path)  # atomic: a half-written model is never taken for a finished one
    return posterior


def _seeded_draws(posterior: Any, x_o: Tensor, n: int, seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return posterior.sample((int(n),), x=x_o).float()


def _next_proposal(
    prior: Distribution,
    posterior: Any,
    x_o: Tensor,
    draws: Tensor,
    proposal: str,
    epsilon: float,
    region: str,
    seed: int,
    previous: Distribution | None,
) -> Distribution:
    if proposal == "posterior":
        return _PosteriorProposal(posterior, x_o, draws.shape[-1], prior_home(prior)[0])
    found, _ = posterior_region(posterior, x_o, epsilon, kind=region, draws=draws)
    if isinstance(previous, TruncatedPrior):  # nested: inside every earlier round's region
        found = IntersectionRegion([previous.region, found])
    return TruncatedPrior(prior, found, proposal_draws=draws, seed=seed)


def _describe(proposal: Distribution) -> tuple[str, float | None, float | None, dict[str, Any]]:
    if isinstance(proposal, TruncatedPrior):
        extra = {"method": proposal.method, "ess": proposal.ess}
        return proposal.describe(), proposal.acceptance, proposal.mass_se, extra
    if isinstance(proposal, _PosteriorProposal):
        return "posterior at x_o (MCMC)", None, None, {}
    return "prior", 1.0, 0.0, {}
