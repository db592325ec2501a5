"""Run a simulator over prior draws: batched, seeded and failure-tolerant.

``simulate(simulator, prior, num_simulations, seed=0)`` draws :math:`\\theta_i \\sim p(\\theta)`
and :math:`x_i \\sim p(x \\mid \\theta_i)` in batches. The same ``seed`` and ``batch_size``
always give the same simulations, on any number of workers: θ comes from a generator seeded
with ``seed``, and batch ``b`` of the simulator gets its own generator seeded from
``(seed, b)`` (:mod:`simgen.batches`).

Failures never pass silently. A batch that raises is bisected until the failing rows are
isolated; rows whose output holds NaN or ±inf are dropped. On worker processes
(``workers=``, a Dask client) a batch that runs past ``timeout`` or takes its worker down is
bisected the same way (:mod:`simgen.workers`). All are counted, reported in a
:class:`~simgen.errors.SimulationWarning`, and kept on the result (``.failed_theta``,
``.failed_reason``, ``.errors``) so nothing is lost; if every simulation fails, a
:class:`~simgen.errors.SimulationError` says why.

With ``joint=True`` each batch runs the simulator's ``trace`` instead of its call, and the
result also carries the joint log-density :math:`\\log p(x, z \\mid \\theta)` ``(N,)`` and the
joint score :math:`\\nabla_\\theta \\log p(x, z \\mid \\theta)` ``(N, D)`` of every simulation
(``.joint_log_prob``, ``.joint_score``), banked like ``x``. ``x`` is the same as without
``joint``: ``trace`` and the call draw from the same seeded generator. The latents
themselves are not kept (their size may change from batch to batch); call
``simulator.trace`` for them; ``theta_1=`` re-scores them (:mod:`simgen.joint_ratio`).
"""

from __future__ import annotations

import math
import operator
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from .bank import CRASHED, OK, TIMEOUT, Bank, check_like, layout
from .batches import Piece
from .errors import (
    ConfigError,
    ShapeError,
    SimgenError,
    SimulationError,
    SimulationInterrupted,
    SimulationStopped,
)
from .joint_ratio import RatioRun, check_ratio_simulator, reference_label, reference_rows
from .priors import check_prior
from .progress import Progress
from .simulations import Simulations, assemble, collect
from .simulator import Simulator, as_simulator, simulator_identity
from .workers import run_batches

#: θ for every simulation is drawn in memory up front: (N, D) float32.
MAX_SIMULATIONS = 10**9
MAX_SEED = 2**63 - 1
MAX_WORKERS = 1024
MAX_RETRIES = 100
#: Rows per call of a simulator that names none (``default_batch_size``).
DEFAULT_BATCH_SIZE = 1000

__all__ = ["simulate", "run_simulator", "read_bank", "Simulations"]


def check_count(value: object, name: str, low: int, high: int, why: str = "") -> int:
    """``value`` as an int in ``[low, high]``, else a :class:`~simgen.errors.ConfigError`."""
    number: int | None = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            if isinstance(value, float) and value.is_integer():
                number = int(value)
    if number is None:
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {low} and {high}{why}, got {number}.")
    return number


def _check_theta(theta: object) -> Tensor:
    try:
        theta = torch.as_tensor(theta)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(
            f"theta must be a numeric (N, D) array; got {type(theta).__name__}."
        ) from exc
    if theta.dtype == torch.bool or theta.is_complex():
        raise ShapeError(f"theta must hold real numbers, got dtype {theta.dtype}.")
    theta = theta.detach().to(torch.float32)
    if theta.ndim != 2 or theta.shape[0] == 0:
        raise ShapeError(f"theta must have shape (N, D) with N >= 1; got {tuple(theta.shape)}.")
    if not torch.isfinite(theta).all():
        raise ShapeError("theta holds NaN or inf; every parameter must be finite.")
    return theta


def _check_bank(bank: object) -> Path | None:
    if bank is None:
        return None
    if not isinstance(bank, (str, Path)) or not str(bank):
        raise ConfigError(f"bank must be a path (str or pathlib.Path), got {bank!r}.")
    return Path(bank).expanduser()


def check_runner(
    executor: Any, workers: object, timeout: object, retries: object
) -> dict[str, Any]:
    """The checked ``executor``, ``workers``, ``timeout`` and ``retries`` of a run."""
    own_dask = isinstance(executor, str) and executor == "dask"
    if executor is not None and not own_dask and not callable(getattr(executor, "submit", None)):
        raise ConfigError(
            f"executor must have submit(fn, *args) (a concurrent.futures pool or a "
            f"dask.distributed.Client) or be 'dask', got {executor!r}."
        )
    if workers is not None:
        workers = check_count(workers, "workers", 1, MAX_WORKERS)
        if executor is not None and not own_dask:
            raise ConfigError(
                "Pass workers= (simgen makes its own process pool) or executor= (your pool or "
                "Dask client), not both."
            )
    if timeout is not None:
        number = timeout if isinstance(timeout, (int, float)) else None
        if isinstance(timeout, bool) or number is None or not 0 < number < math.inf:
            raise ConfigError(
                f"timeout must be a positive number of seconds per batch, got {timeout!r}."
            )
        timeout = float(number)
        if executor is None and workers is None:
            workers = 1  # a hanging call can only be stopped in another process
    retries = check_count(retries, "retries", 0, MAX_RETRIES)
    return {"executor": executor, "workers": workers, "timeout": timeout, "retries": retries}


def run_simulator(
    simulator: Callable | Simulator,
    theta: Tensor,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    bank: str | Path | None = None,
    executor: Any = None,
    joint: bool = False,
    prior: Distribution | None = None,
    timeout: float | None = None,
    retries: int = 0,
    workers: int | None = None,
    retry_failed: bool = False,
    theta_1: Any = None,
) -> Simulations:
    """Simulate for given parameters ``theta`` (``(N, D)``); see :func:`simulate`.

    ``prior`` is recorded in a bank's fingerprint (θ itself is checked), ``theta_1="prior"``
    draws from it; ``theta_1`` may also be ``(N, D)`` or ``(N, M, D)`` rows."""
    sim = as_simulator(simulator)
    if joint and not callable(getattr(sim, "trace", None)):
        raise SimulationError(
            f"joint=True needs a simulator with trace(theta, generator=) returning a Trace "
            f"with joint_log_prob and joint_score; {sim!r} has none. Wrap a pyro program "
            "with simgen.from_pyro, or implement trace on your Simulator subclass."
        )
    theta = _check_theta(theta)
    seed = check_count(seed, "seed", 0, MAX_SEED)
    if batch_size is None:
        batch_size = getattr(sim, "default_batch_size", DEFAULT_BATCH_SIZE)
    batch_size = check_count(batch_size, "batch_size", 1, MAX_SIMULATIONS)
    runner = check_runner(executor, workers, timeout, retries)
    packed = None
    if theta_1 is not None:
        if not joint:
            raise ConfigError("theta_1= re-scores the joint log-density: pass joint=True too.")
        check_ratio_simulator(sim)
        rows = reference_rows(theta_1, theta, seed, prior)
        sim, packed = RatioRun.packing(sim, theta, rows)
    path = _check_bank(bank)
    if path is None:
        return _run(sim, theta, seed, batch_size, progress, None, bool(joint), runner, packed)
    fingerprint = {
        "seed": seed,
        "joint": bool(joint),
        "theta_1": reference_label(theta_1),
        "simulator": simulator_identity(sim.sim if packed is not None else sim),
        "prior": None if prior is None else repr(prior)[:500],
        "simgen": _version(),
    }
    store = Bank.open(path, theta, fingerprint, batch_size)
    try:
        if retry_failed:
            store.forget_failures((TIMEOUT, CRASHED))
        return _run(sim, theta, seed, batch_size, progress, store, bool(joint), runner, packed)
    finally:
        store.close()


def _version() -> str:
    from . import __version__

    return __version__


def _run(
    sim: Simulator,
    theta: Tensor,
    seed: int,
    batch_size: int,
    progress: bool,
    store: Bank | None,
    joint: bool,
    runner: dict[str, Any],
    packed: Tensor | None = None,
) -> Simulations:
    """Run the batches not in ``store``; a ``RatioRun`` gets the ``packed`` [θ, θ₁] rows."""
    n = theta.shape[0]
    if store is not None:
        store.repair()
    done = store.done_batches() if store is not None else set()
    todo = [b for b in range(-(-n // batch_size)) if b not in done]
    kept: dict[int, Piece] = {}
    found: dict[int, list[str]] = {}
    expected = {}
    rows = theta if packed is None else packed
    batches = run_batches(sim, rows, seed, batch_size, todo, joint=joint, **runner)
    left = sum(min(batch_size, n - b * batch_size) for b in todo)
    line = Progress(n, n - left, progress)
    try:
        for b, (outputs, status, batch_errors, attempts) in batches:
            line.update(len(status), int((status != OK).sum()))
            found[b] = batch_errors
            if store is not None:
                store.write(b, outputs, status, _first_errors(found), attempts)
                continue
            if outputs is not None:
                if expected:
                    check_like(expected, outputs, b)
                else:
                    expected = layout(outputs)
            kept[b] = (outputs, status, attempts)
    except KeyboardInterrupt as exc:
        raise _interrupted(theta, batch_size, store, kept, _first_errors(found)) from exc
    except Exception as exc:  # noqa: BLE001 - finished work is kept, then the error is raised
        stopped = _stopped(exc, theta, batch_size, store, kept, _first_errors(found))
        if stopped is None:
            raise
        raise stopped from exc
    finally:
        batches.close()  # ends simgen's own worker processes
        line.close()
    if store is None:
        merged, status, attempts = assemble(n, batch_size, kept)
        return collect(theta, merged, status, _first_errors(found), attempts)
    _, merged, status, errors = store.read()
    store.mark_complete()
    return collect(theta, merged, status, errors, store.attempts())


def _first_errors(found: dict[int, list[str]]) -> list[str]:
    """The first five distinct messages in batch order, whichever batch finished first."""
    ordered = dict.fromkeys(e for b in sorted(found) for e in found[b])
    return list(ordered)[:5]


def _partial(
    theta: Tensor, batch_size: int, kept: dict[int, Piece], errors: list[str]
) -> Simulations | None:
    merged, status, attempts = assemble(len(theta), batch_size, kept)
    try:
        return collect(theta, merged, status, errors, attempts, warn=False)
    except SimulationError:
        return None


def _stopped(
    exc: Exception,
    theta: Tensor,
    batch_size: int,
    store: Bank | None,
    kept: dict[int, Piece],
    errors: list[str],
) -> SimulationStopped | None:
    """The error to raise when a run stops early with finished batches to keep (None: no
    batch had finished, so the original error is raised as it is)."""
    reason = str(exc) if isinstance(exc, SimgenError) else f"{type(exc).__name__}: {exc}"
    if store is not None:
        done, total = len(store.done_batches()), -(-len(theta) // batch_size)
        if not done:
            return None
        return SimulationStopped(
            f"The run stopped: {reason} The {done} of {total} batches saved in {store.path} "
            "are kept; fix the cause and call simulate again with the same arguments to "
            "resume."
        )
    partial = _partial(theta, batch_size, kept, errors)
    if partial is None:
        return None
    return SimulationStopped(
        f"The run stopped: {reason} The {len(partial.theta)} simulations finished before it "
        "are in exc.partial (theta, x = exc.partial); pass bank='run.zarr' to keep every "
        "batch on disk.",
        partial=partial,
    )


def _interrupted(
    theta: Tensor,
    batch_size: int,
    store: Bank | None,
    kept: dict[int, Piece],
    errors: list[str],
) -> SimulationInterrupted:
    if store is not None:
        done = len(store.done_batches())
        total = -(-len(theta) // batch_size)
        return SimulationInterrupted(
            f"Interrupted: {done} of {total} batches are saved in {store.path}. Call simulate "
            "again with the same arguments and bank= to resume where it stopped.",
            partial=None,
        )
    partial = _partial(theta, batch_size, kept, errors)
    kept_rows = 0 if partial is None else len(partial.theta)
    return SimulationInterrupted(
        f"Interrupted after {len(kept)} batches; the {kept_rows} finished simulations are in "
        "exc.partial (theta, x = exc.partial). Pass bank='run.zarr' to save every batch to "
        "disk and resume after an interruption.",
        partial=partial,
    )


def read_bank(path: str | Path) -> Simulations:
    """The simulations saved so far in the bank at ``path`` (see :mod:`simgen.bank`).

    Raises:
        BankError: No bank at ``path``, or a batch marked done has lost its data (resume the
            run with :func:`simulate` to simulate it again).
    """
    bank = Bank.reader(path)
    theta, outputs, status, errors = bank.read()
    return collect(theta, outputs, status, errors, bank.attempts())


def sample_prior(prior: Distribution, num_samples: int, seed: int) -> Tensor:
    """``num_samples`` draws from ``prior`` under ``seed``, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return prior.sample((num_samples,)).float()


def simulate(
    simulator: Callable | Simulator,
    prior: Distribution,
    num_simulations: int,
    seed: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    bank: str | Path | None = None,
    executor: Any = None,
    joint: bool = False,
    timeout: float | None = None,
    retries: int = 0,
    workers: int | None = None,
    retry_failed: bool = False,
    trials: int | tuple[int, int] | None = None,
    theta_1: Any = None,
) -> Simulations:
    """Draw ``num_simulations`` pairs :math:`(\\theta_i, x_i)` from :math:`p(\\theta) p(x|\\theta)`.

    Args:
        simulator: Batched callable ``theta (N, D) -> x (N, ...)``; may take ``generator=``.
            It gets a copy of each batch of θ, so editing it in place changes nothing.
        prior: Any distribution with ``sample`` and ``log_prob`` and event shape ``(D,)``.
        num_simulations: How many to draw, 1 to 10⁹ (θ for all of them is drawn in memory
            first; failures are excluded, so a few less may return).
        seed: Makes the result reproducible, 0 to 2⁶³ - 1. ``None`` draws a fresh seed
            (from the operating system, leaving torch's global generator untouched), or,
            when ``bank`` already holds a bank, takes that bank's seed, so that repeating a
            banked call resumes it.
        batch_size: Rows per simulator call. None takes the simulator's
            ``default_batch_size``: 1 for one θ per call (``FunctionSimulator(fn,
            vectorized=False)``, :class:`~simgen.external.ExternalSimulator`), so that each θ
            goes to a worker alone; 1000 otherwise.
        progress: Show simulations/s and the ETA: a live line on a terminal, one summary
            line on stderr otherwise (:mod:`simgen.progress`).
        bank: Path of a zarr store (:mod:`simgen.bank`, ``~`` expanded) that receives every
            finished batch. Calling again with the same arguments resumes an interrupted run
            (and, once it is complete, just reads it back); the result is identical to an
            uninterrupted run. One run writes to a bank at a time; another is refused.
        executor: Run batches in parallel: a ``concurrent.futures`` pool (e.g.
            ``ProcessPoolExecutor`` for local processes), a ``dask.distributed.Client`` for
            a cluster, or ``"dask"``: a local Dask cluster of ``workers`` processes (default:
            one per CPU) that simgen starts, owns and closes, so that a θ that kills its
            worker is recorded as ``"crash"`` as on ``workers=N``. Batches are seeded by
            their index, so the result is the same as a serial run; the simulator must be
            picklable for other processes. In a thread pool, pyro programs (and functions
            without ``generator=``) run one batch at a time, since pyro's handler stack and
            torch's global RNG are process-wide: use processes or dask to run them in
            parallel.
        joint: Also keep each simulation's joint log-density and joint score from the
            simulator's ``trace`` (a :class:`~simgen.simulator.PyroSimulator`, or any
            simulator with ``trace(theta, generator=)``), as ``.joint_log_prob`` ``(N,)`` and
            ``.joint_score`` ``(N, D)``, banked with ``x``. ``x`` is the same as without it.
        theta_1: With ``joint``, also bank ``.joint_log_ratio`` (log p(x,z|θ) - log p(x,z|θ₁))
            and ``.theta_1``: ``"prior"`` (a θ₁ per row from the prior), a row ``(D,)``, or
            ``PriorReferences(M)``, M per row in one pass (:mod:`simgen.joint_ratio`).
        timeout: Seconds one simulator call (a batch, or a part of one being bisected) may
            run on a worker. Per call rather than per simulation because a batched simulator
            runs its rows together. A call past it is stopped and bisected like one that
            raises: its rows end as ``"timeout"`` in ``result.failed_reason`` and the run goes
            on (a θ that hangs costs about ``log2(batch_size)`` timeouts). Needs workers simgen
            can stop: ``workers=``, a Dask client whose workers have nannies (simgen ends
            the worker process running the late call; the clock starts when the worker
            starts the call), or, when neither is given, one worker process. On a
            ``concurrent.futures`` pool you passed, or Dask workers that are threads, a call
            past it stops the run (:class:`~simgen.errors.SimulationStopped` naming the rows).
        retries: How many more times a call that raises, runs past ``timeout`` or crashes
            its worker is tried before it is bisected and its rows recorded as failed. A
            retry reuses the call's generator, so a call that succeeds on a retry gives what
            it would have given the first time. 0 by default: a deterministic simulator
            fails again on the same θ, and every retry of a bad θ costs a call at each level
            of the bisection; use it for transient failures (a flaky file system, a licence
            server).
        workers: Run batches on a process pool of this many workers that simgen makes and
            owns: a worker that dies (``os.abort()``, a segfault) is replaced, the rows that
            killed it are found by bisection and recorded as ``"crash"``, and the run goes
            on. The simulator must be picklable. Not together with an executor you pass;
            with ``executor="dask"``, the number of Dask worker processes.
        retry_failed: With ``bank``, simulate again the batches whose rows ran past the
            timeout or crashed (by default a resume keeps them as failed and does not try
            them again, so a θ that hangs cannot stall the resume).
        trials: ``(low, high)``: each of the ``num_simulations`` rows is a set of n i.i.d.
            trials of its θ, n drawn uniformly from ``low..high`` (seeded), for NPE on sets;
            x is ``(N, high, *x_shape)`` padded with NaN rows and ``result.counts`` holds
            each n (:func:`simgen.iid.simulate_trials`; a bank holds one row per trial).

    Raises:
        ConfigError: A count, seed or option is out of range or of the wrong type.
        BankError: ``bank`` is being written by another run, or was made by another run.
        SimulationInterrupted: On Ctrl-C. Nothing finished is lost: it is in the bank, or,
            without one, in the exception's ``partial`` result.
        SimulationStopped: A later batch failed in a way that stops the run (a different
            output shape, a full disk, a call past ``timeout`` or a dead worker on an
            executor you passed, which the message names by rows); what had finished is in
            the bank or in ``partial``.

    Returns:
        A :class:`Simulations` ``(theta, x)``, unpackable as ``theta, x = simulate(...)``.

    Example:
        >>> from simulators import two_moons
        >>> theta, x = simulate(two_moons.simulator, two_moons.prior, 1000, seed=0)
    """
    num_simulations = check_count(
        num_simulations, "num_simulations", 1, MAX_SIMULATIONS, " (θ is drawn in memory first)"
    )
    with torch.random.fork_rng(devices=[]):  # the check draws from the prior
        check_prior(prior)
    path = _check_bank(bank)
    if seed is None:
        stored = None if path is None else Bank.stored_seed(path)
        seed = secrets.randbelow(2**31 - 1) if stored is None else stored
    seed = check_count(seed, "seed", 0, MAX_SEED)
    if trials is not None:
        from .iid import simulate_trials

        return simulate_trials(
            simulator,
            prior,
            num_simulations,
            trials,
            seed,
            batch_size=batch_size,
            progress=progress,
            bank=path,
            executor=executor,
            joint=joint,
            timeout=timeout,
            retries=retries,
            workers=workers,
            retry_failed=retry_failed,
            **({} if theta_1 is None else {"theta_1": theta_1}),
        )
    theta = sample_prior(prior, num_simulations, seed)
    return run_simulator(
        simulator,
        theta,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        bank=path,
        executor=executor,
        joint=joint,
        prior=prior,
        timeout=timeout,
        retries=retries,
        workers=workers,
        retry_failed=retry_failed,
        theta_1=theta_1,
    )
