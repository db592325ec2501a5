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

from pathlib import Path
from typing import Any

import typer

from . import cli_train
from .cli_common import (
    CONFIG_HELP,
    REFERENCE_BUDGET_S,
    VERBOSITY,
    _bars,
    _count,
    _echo,
    _friendly,
    _need,
    _out_path,
    _project,
    _save,
    _stage,
    _task,
    app,
)
from .errors import SimulationInterrupted

__all__ = ["REFERENCE_BUDGET_S", "app", "main"]


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


for _command in (cli_train.train, cli_train.sample, cli_train.diagnose):
    app.command()(_command)


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
