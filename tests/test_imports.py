"""Every module imports on its own (catches import cycles and import-time work)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import simgen
import simulators


def _modules(package) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


@pytest.mark.parametrize("name", _modules(simgen) + _modules(simulators))
def test_module_imports(name):
    importlib.import_module(name)


def test_public_api():
    for name in ["simulate", "NPE", "BoxUniform", "TrainConfig", "load", "SimgenError"]:
        assert hasattr(simgen, name), name
