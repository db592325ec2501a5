"""Command line: ``simgen init | run | simulate | train | sample | diagnose | report | demo``.

``simgen init`` writes an example project (a simulator module and ``simgen.toml``, see
:mod:`simgen.project`); ``simgen run simgen.toml`` runs every stage of :mod:`simgen.pipeline`,
and each stage is also its own command taking ``--config simgen.toml``. Without ``--config``
the commands work on the built-in tasks (``simulators.list()``) or a simulator module
importable from the current folder (one with ``prior`` and ``simulator``). Data files
hold plain tensors (``torch.save({"theta": ..., "x": ...})``), read with ``weights_only=True``;
models are ``.simgen`` files (see :mod:`simgen.serialization`).
"""

from __future__ import annotations

import functools
import os
import sys
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


#: Set by the global ``--verbose`` / ``--quiet`` options.
VERBOSITY = {"verbose": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"simgen {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show library warnings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and the results."),
) -> None:
    """simgen: simulation-based inference with calibrated posteriors.

    Start a project with `simgen init`, then `simgen run simgen.toml`.
    """
    import logging

    VERBOSITY.update(verbose=verbose, quiet=quiet)
    # corner logs "Too few points to create valid contours" on small sample sets
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR)


def _echo(line: str) -> None:
    if not VERBOSITY["quiet"]:
        typer.echo(line)


def _bars() -> bool:
    """Progress bars only on a terminal, and not with --quiet."""
    return not VERBOSITY["quiet"] and sys.stderr.isatty()


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a :class:`SimgenError` as one line (it says how to fix it) and exit with 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                try:
                    return command(*args, **kwargs)
                finally:
                    from .pipeline import show_warnings

                    show_warnings(caught, VERBOSITY["verbose"], lambda t: typer.echo(t, err=True))
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
    from .pipeline import find_task

    return find_task(name)


def _project(config: Path):
    from .project import load_project

    return load_project(config)


def _stage(config: Path, stage: str) -> None:
    from .pipeline import run_stage

    run_stage(_project(config), stage, _echo, VERBOSITY["quiet"])


def _need(**given: Any) -> None:
    from .errors import ConfigError

    missing = [k.upper() for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"Missing {', '.join(missing)}; give them, or --config simgen.toml.")


CONFIG_HELP = "Project file (simgen.toml): run this stage of `simgen run` on it."


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
    task: str = typer.Argument(None, help="Built-in task or simulator module."),
    num_simulations: int = typer.Argument(None),
    out: Path = typer.Argument(None),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
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
    to OUT with '.partial' before its suffix.

    Examples: `simgen simulate two_moons 1000 data.pt --bank run.zarr`;
    `simgen simulate --config simgen.toml` (the project's bank).
    """
    from .errors import SimulationStopped
    from .simulate import simulate as run

    if config is not None:
        return _stage(config, "simulate")
    _need(task=task, num_simulations=num_simulations, out=out)
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
            progress=_bars(),
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
    task: str = typer.Argument(None, help="Built-in task or simulator module."),
    data: Path = typer.Argument(None, help="Data file (with --sequential: OUT)."),
    out: Path = typer.Argument(None),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
    sequential: bool = typer.Option(False, help="Rounds focused on --x-obs (simulates)."),
    x_obs: Path | None = typer.Option(None, help="--sequential: x_o (.npy, .pt or .csv)."),
    num_simulations: int = typer.Option(1000, help="--sequential: total over all rounds."),
    num_rounds: int = typer.Option(4, help="--sequential: rounds."),
    bank: Path | None = typer.Option(
        None, help="--sequential: folder of per-round banks (default: OUT.rounds, until done)."
    ),
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
    """Train on a data file written by `simgen simulate` and save the posterior to OUT.

    Examples: `simgen train two_moons data.pt model.simgen --max-epochs 200`;
    `simgen train two_moons model.simgen --sequential --x-obs x_o.npy --num-rounds 4`;
    `simgen train --config simgen.toml`.
    """
    from .errors import ConfigError

    if config is not None:
        return _stage(config, "train")
    if sequential and out is None:
        data, out = None, data
    _need(task=task, out=out) if sequential else _need(task=task, data=data, out=out)
    out = _out_path(out)
    _count(seed, "--seed", low=0)
    _count(max_epochs, "--max-epochs")
    _count(batch_size, "--batch-size")
    if sequential:
        from .project import read_observation
        from .sequential import sequential as rounds

        if x_obs is None:
            raise ConfigError("--sequential needs --x-obs FILE (.npy, .pt or .csv): the x_o.")
        _count(num_simulations, "--num-simulations", low=2)
        _count(num_rounds, "--num-rounds")
        t = _task(task)
        # Without --bank the rounds are kept beside OUT until the run has finished, so that a
        # late error or Ctrl-C loses no finished round: the same command resumes.
        folder = out.with_name(f"{out.stem}.rounds") if bank is None else bank.expanduser()
        try:
            posterior = rounds(
                _method(method, t.prior, estimator),
                t.simulator,
                read_observation(x_obs.expanduser()),
                num_simulations=num_simulations,
                num_rounds=num_rounds,
                seed=seed,
                bank=folder,
                progress=_bars(),
                max_epochs=max_epochs,
                batch_size=batch_size,
                device=device,
            )
        except (SimgenError, SimulationInterrupted):
            if any(folder.glob("round_*")):
                typer.echo(f"the finished rounds are kept in {folder}; rerun to resume", err=True)
            raise
        posterior.save(out)
        if bank is None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        typer.echo(posterior.rounds.table())
        return _echo(f"saved {out}")
    from .pipeline import read_data

    stored = read_data(data.expanduser())
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
    model: Path = typer.Argument(None, help="Model file (.simgen)."),
    task: str = typer.Argument(None, help="Built-in task: sample at its x_o."),
    x_obs: Path | None = typer.Option(None, help="Observation file (.npy, .pt or .csv)."),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
    num_samples: int = 10_000,
    out: Path | None = None,
    seed: int = 0,
) -> None:
    """Sample MODEL at an observation; print each parameter's mean and std, save if OUT.

    Examples: `simgen sample model.simgen --x-obs x_o.npy` (a model trained by `simgen run`
    names its parameters); `simgen sample model.simgen two_moons`;
    `simgen sample --config simgen.toml`.
    """
    from .errors import ConfigError
    from .pipeline import task_of
    from .project import read_observation
    from .serialization import load

    if config is not None:
        return _stage(config, "sample")
    _need(model=model)
    out = None if out is None else _out_path(out)
    _count(num_samples, "--num-samples")
    _count(seed, "--seed", low=0)
    if (task is None) == (x_obs is None):
        raise ConfigError("Give either TASK (sample at its x_o) or --x-obs FILE, not both.")
    remembered = task_of(model.expanduser()) or {}
    t = None if task is None else _task(task)
    x_o = t.x_o if t is not None else read_observation(x_obs.expanduser())
    posterior = load(model.expanduser())
    samples = posterior.sample((num_samples,), x=x_o, seed=seed)
    dim = samples.shape[-1]
    names = remembered.get("parameter_names") or [f"theta_{i}" for i in range(dim)]
    units = remembered.get("parameter_units") or [""] * dim
    for i, (m, s) in enumerate(zip(samples.mean(0).tolist(), samples.std(0).tolist())):
        unit = f" {units[i]}" if units[i] else ""
        true = "" if t is None else f" (true {float(t.theta_o[i]):.4f})"
        typer.echo(f"{names[i]}: mean {m:.4f} std {s:.4f}{unit}{true}")
    if out is not None:
        _save({"samples": samples}, out)


@app.command()
@_friendly
def diagnose(
    model: Path = typer.Argument(None, help="Model file (.simgen)."),
    task: str = typer.Argument(None, help="Built-in task or simulator module."),
    config: Path | None = typer.Option(None, help=CONFIG_HELP),
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
    """Run SBC, TARP, coverage, z-scores and a predictive check; write a report.

    Examples: `simgen diagnose model.simgen two_moons --report report.html`;
    `simgen diagnose --config simgen.toml`.
    """
    from .diagnostics import diagnose as run
    from .serialization import load

    if config is not None:
        return _stage(config, "diagnose")
    _need(model=model, task=task)
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


@app.command()
@_friendly
def report(config: Path = typer.Option(Path("simgen.toml"), help="Project file.")) -> None:
    """Write the project's summary.md (posterior table and calibration verdict).

    Example: `simgen report --config simgen.toml`.
    """
    _stage(config, "report")


@app.command()
@_friendly
def init(folder: Path = typer.Argument(Path("."), help="Where to write the project.")) -> None:
    """Write an example project: my_simulator.py, x_o.npy and a commented simgen.toml.

    Example: `mkdir myproject && cd myproject && simgen init && simgen run simgen.toml`.
    """
    from .templates import write_example

    written = write_example(folder.expanduser())
    _echo(f"wrote {', '.join(str(p) for p in written)}; next: simgen run {written[0]}")


@app.command()
@_friendly
def run(
    config: Path = typer.Argument(Path("simgen.toml"), help="Project file."),
    stage: str | None = typer.Option(None, help="Run this stage only."),
) -> None:
    """Simulate, train, sample, diagnose and report; finished stages are reused.

    A stage reruns only if its files are missing; a changed setting it depends on is
    refused (the message names the files to delete). Examples: `simgen run simgen.toml`;
    `simgen run simgen.toml --stage train`; `simgen -q run` (results only).
    """
    from .pipeline import run_all, run_stage

    project = _project(config)
    if stage is not None:
        return run_stage(project, stage, _echo, VERBOSITY["quiet"])
    summary = run_all(project, _echo, VERBOSITY["quiet"])
    typer.echo(f"done: {summary}")


def main() -> None:
    app()
