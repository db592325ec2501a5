"""What every ``simgen`` command shares: the typer ``app``, the global options and the helpers
that check arguments, print, and turn a :class:`~simgen.errors.SimgenError` into one line.

The commands are in :mod:`simgen.cli` (``init``, ``run``, ``demo``, ``simulate``, ``report``)
and :mod:`simgen.cli_train` (``train``, ``sample``, ``diagnose``).
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
