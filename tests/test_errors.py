"""The error classes: which handlers catch them."""

from __future__ import annotations

import pytest
import typer

from simgen import errors
from simgen.cli import _friendly


def test_every_error_is_a_simgen_value_error_and_warnings_are_warnings():
    for name in errors.__all__:
        cls = getattr(errors, name)
        if name == "SimulationInterrupted":
            continue
        if name.endswith("Warning"):
            assert issubclass(cls, UserWarning), name
        else:
            assert issubclass(cls, errors.SimgenError) and issubclass(cls, ValueError), name


def test_simulation_interrupted_is_a_keyboard_interrupt_only():
    """``except ValueError`` / ``except Exception`` must not swallow a Ctrl-C."""
    exc = errors.SimulationInterrupted("stopped", partial=(1, 2))
    assert isinstance(exc, KeyboardInterrupt) and exc.partial == (1, 2)
    assert not isinstance(exc, (Exception, errors.SimgenError))


def test_cli_reports_an_interrupted_simulation_with_its_message():
    @_friendly
    def command():
        raise errors.SimulationInterrupted("Interrupted: 3 of 5 batches are saved in run.zarr.")

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == 130
