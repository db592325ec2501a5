"""Command line: ``simgen demo | simulate | train | sample | diagnose``.

Data files hold plain tensors (``torch.save({"theta": ..., "x": ...})``) and are read with
``weights_only=True``; models are ``.simgen`` files (see :mod:`simgen.serialization`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .errors import SimgenError, SimulationInterrupted

#: References slower than this (a task's ``REFERENCE_SECONDS``) need ``--reference``.
REFERENCE_BUDGET_S = 30.0

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="simgen: simulation-based inference with calibrated posteriors.",
)


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a :class:`SimgenError` as one line (it says how to fix it) and exit with 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SimgenError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except SimulationInterrupted as exc:  # a KeyboardInterrupt: say how to resume
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(130) from exc

    return wrapper


def _out_path(path: Path, what: str = "--out") -> Path:
    """``path`` with ``~`` expanded, checked writable before any work starts."""
    from .errors import ConfigError

    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name.")
    if not path.parent.is_dir():
        raise ConfigError(f"The folder of {what} {path} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"Cannot write {what} {path}; choose a writable place.")
    return path


def _save(obj: object, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (a killed write leaves the old file or none)."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _count(value: int, name: str, low: int = 1) -> int:
    from .simulate import MAX_SEED, MAX_SIMULATIONS, check_count

    return check_count(value, name, low, MAX_SEED if name == "--seed" else MAX_SIMULATIONS)


def _task(name: str):
    import simulators

    return simulators.get(name)


def _read_data(path: Path) -> dict:
    """The data file's tensors: ``theta``, ``x`` and, if simulated with --joint, the rest."""
    import torch

    from .errors import ModelFileError

    if not path.exists():
        raise ModelFileError(f"{path} does not exist; write one with `simgen simulate`.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        data["theta"], data["x"]  # noqa: B018 - both must be there
        return data
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(
            f"{path} is not a simgen data file with 'theta' and 'x' "
            f"({type(exc).__name__}); write one with `simgen simulate`."
        ) from exc


@app.command()
@_friendly
def demo(
    task: str = typer.Option("two_moons", help="Built-in simulator (simulators.list())."),
    num_simulations: int = typer.Option(5000, help="Training simulations."),
    estimator: str = typer.Option("nsf", help="NPE estimator family."),
    out: Path = typer.Option(Path("demo_output"), help="Folder for plots and the model."),
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Simulate, train NPE, print a calibrated posterior and write a corner plot."""
    from .demo import run_demo

    run_demo(task, num_simulations, estimator, out, seed, progress, REFERENCE_BUDGET_S)


@app.command()
@_friendly
def simulate(
    task: str,
    num_simulations: int,
    out: Path,
    seed: int = 0,
    batch_size: int = 1000,
    bank: Path | None = typer.Option(
        None, help="zarr bank that keeps every finished batch; rerun to resume after Ctrl-C."
    ),
    joint: bool = typer.Option(
        False,
        help="also save each simulation's joint log-density and joint score (simulators "
        "with a trace: langevin, particle_shower).",
    ),
) -> None:
    """Simulate a built-in task and save {'theta', 'x'} (with --joint also 'joint_log_prob'
    and 'joint_score') to OUT. On Ctrl-C without --bank, the finished simulations are saved
    to OUT with '.partial' before its suffix."""
    from .errors import SimulationStopped
    from .simulate import simulate as run

    out = _out_path(out)
    _count(num_simulations, "num_simulations")
    _count(seed, "--seed", low=0)
    _count(batch_size, "--batch-size")
    t = _task(task)
    try:
        result = run(
            t.simulator,
            t.prior,
            num_simulations,
            seed=seed,
            batch_size=batch_size,
            progress=True,
            bank=None if bank is None else bank.expanduser(),
            joint=joint,
        )
    except (SimulationInterrupted, SimulationStopped) as exc:
        if exc.partial is not None:
            partial = out.with_name(f"{out.stem}.partial{out.suffix}")
            _save(_data(exc.partial, joint), partial)
            typer.echo(f"saved the {len(exc.partial.theta)} finished simulations to {partial}")
        if isinstance(exc, SimulationInterrupted):
            typer.echo(f"interrupted: {exc}", err=True)
            raise typer.Exit(130) from exc
        raise
    _save(_data(result, joint), out)
    typer.echo(f"wrote {len(result.theta)} simulations to {out}")


def _data(result: Any, joint: bool) -> dict:
    saved = {"theta": result.theta, "x": result.x}
    if joint:
        saved.update(joint_log_prob=result.joint_log_prob, joint_score=result.joint_score)
    return saved


def _method(name: str, prior: Any, estimator: str) -> Any:
    from .errors import ConfigError
    from .inference import NLE, NPE, NRE

    if name == "npe":
        return NPE(prior, estimator=estimator)
    if name == "nle":
        return NLE(prior, estimator=estimator)
    if name in ("nre", "bnre"):
        return NRE(prior, balanced=name == "bnre")
    raise ConfigError(f"Unknown method {name!r}; use one of npe, nle, nre, bnre.")


@app.command()
@_friendly
def train(
    task: str,
    data: Path,
    out: Path,
    method: str = typer.Option("npe", help="npe, nle, nre or bnre (balanced NRE)."),
    estimator: str = typer.Option("nsf", help="Estimator family for npe/nle."),
    seed: int = 0,
    max_epochs: int = 1000,
    batch_size: int = 256,
    device: str = "cpu",
    joint_score: bool = typer.Option(
        False, help="npe/nle: also fit the joint score saved by `simulate --joint` (SCANDAL)."
    ),
) -> None:
    """Train on a data file written by `simgen simulate` and save the posterior to OUT."""
    from .errors import ConfigError

    out = _out_path(out)
    _count(seed, "--seed", low=0)
    _count(max_epochs, "--max-epochs")
    _count(batch_size, "--batch-size")
    stored = _read_data(data.expanduser())
    extra = {}
    if joint_score:
        if method not in ("npe", "nle"):
            raise ConfigError(f"--joint-score trains NPE or NLE only; got --method {method}.")
        if "joint_score" not in stored:
            raise ConfigError(f"{data} has no joint score; write it with `simulate --joint`.")
        extra["joint_score"] = stored["joint_score"]
    posterior = _method(method, _task(task).prior, estimator).fit(
        stored["theta"],
        stored["x"],
        seed=seed,
        max_epochs=max_epochs,
        batch_size=batch_size,
        device=device,
        **extra,
    )
    posterior.save(out)
    h = posterior.history
    typer.echo(f"trained {h.epochs} epochs in {h.seconds:.1f} s; saved {out}")


@app.command()
@_friendly
def sample(
    model: Path, task: str, num_samples: int = 10_000, out: Path | None = None, seed: int = 0
) -> None:
    """Sample MODEL at the task's example observation x_o; print mean/std, save if OUT."""

    from .serialization import load

    out = None if out is None else _out_path(out)
    _count(num_samples, "--num-samples")
    _count(seed, "--seed", low=0)
    t = _task(task)
    posterior = load(model)
    samples = posterior.sample((num_samples,), x=t.x_o, seed=seed)
    for i, (m, s) in enumerate(zip(samples.mean(0).tolist(), samples.std(0).tolist())):
        typer.echo(f"theta_{i}: mean {m:.4f} std {s:.4f} (true {float(t.theta_o[i]):.4f})")
    if out is not None:
        _save({"samples": samples}, out)


@app.command()
@_friendly
def diagnose(
    model: Path,
    task: str,
    report: Path = Path("report.md"),
    num_simulations: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    reference: bool = typer.Option(
        None,
        help="C2ST against the task's reference posterior; by default only when it takes "
        f"under {REFERENCE_BUDGET_S:.0f} s (the task's REFERENCE_SECONDS).",
    ),
) -> None:
    """Run SBC, TARP, coverage, z-scores and a predictive check; write a report."""
    from .diagnostics import diagnose as run
    from .serialization import load

    report = _out_path(report, "--report")
    _count(num_simulations, "--num-simulations")
    _count(num_samples, "--num-samples")
    _count(seed, "--seed", low=0)
    t = _task(task)
    if reference is None:
        reference = getattr(t, "REFERENCE_SECONDS", 0.0) <= REFERENCE_BUDGET_S
        if not reference and hasattr(t, "reference_posterior"):
            typer.echo(
                f"skipping the reference posterior of {task!r} (about "
                f"{t.REFERENCE_SECONDS:.0f} s); pass --reference to compute it"
            )
    reference_samples = None
    if reference and hasattr(t, "reference_posterior"):
        reference_samples = t.reference_posterior(t.x_o, 2000, seed=seed)
    result = run(
        load(model),
        t.prior,
        t.simulator,
        x_o=t.x_o,
        theta_o=t.theta_o,
        reference_samples=reference_samples,
        num_simulations=num_simulations,
        num_samples=num_samples,
        seed=seed,
        path=report,
    )
    typer.echo(f"passed: {result.passed}; report written to {report}")


def main() -> None:
    app()
