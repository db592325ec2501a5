"""Every module imports on its own, the import graph has no cycle, and importing simgen does
no work beyond defining it.

pytest has imported simgen by the time a test runs, so an in-process ``import_module`` proves
nothing. Two checks that do:

* **Dynamic** (:func:`import_failures`): in fresh interpreters (two, run side by side), each
  module is imported as the entry point after every module of its package is dropped from
  ``sys.modules``, so the package's code runs from scratch each time (third-party modules
  stay loaded: they are not under test, and re-importing torch 79 times would take minutes).
  A cycle whose names are used at import time fails here ("partially initialized module").
* **Static** (:func:`import_cycles`): the graph of module-level imports (not those inside
  functions or under ``if TYPE_CHECKING``), with the implicit import of each target's parent
  packages, must have no cycle, including the ones Python tolerates until an import order
  changes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import simgen
import simulators

ROOT = Path(simgen.__file__).resolve().parent.parent
PACKAGES = ("simgen", "simulators")

#: Imported by ``import simgen`` never: optional or heavy modules that only the functions
#: needing them import (sbi is a benchmark dependency; dask.distributed and zarr run
#: ``simulate(..., client=...)`` / ``bank=``; matplotlib, corner and arviz draw and export;
#: pyro runs NUTS and pyro models; sklearn is the C2ST classifier; typer is the CLI).
NOT_ON_IMPORT = (
    "sbi",
    "dask",
    "distributed",
    "zarr",
    "matplotlib",
    "corner",
    "arviz",
    "pyro",
    "sklearn",
    "typer",
    "simgen.cli",
    "simulators",
)

_IMPORT_EACH = """
import importlib, json, sys, traceback
packages, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
failures = {}
for name in names:
    for key in [k for k in sys.modules if k.split(".")[0] in packages]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported by name
        failures[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
print(json.dumps(failures))
"""


def modules_of(root: Path, package: str) -> list[str]:
    """``package`` and every module under it, from the files in ``root`` (nothing imported)."""
    names = []
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if not all(
            (root.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))
        ):
            continue  # not inside a package (e.g. a data or scratch folder)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_failures(root: Path, packages: tuple[str, ...], workers: int = 2) -> dict[str, str]:
    """``{module: error}`` for each module of ``packages`` that fails to import first."""
    names = [name for package in packages for name in modules_of(root, package)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _IMPORT_EACH,
                json.dumps(packages),
                json.dumps(names[i::workers]),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    failures: dict[str, str] = {}
    for run in runs:
        out, err = run.communicate()
        assert run.returncode == 0, err
        failures.update(json.loads(out.strip().splitlines()[-1]))
    return failures


def _module_imports(tree: ast.Module, name: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for each import at module level (``names`` for ``from`` imports)."""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    found: list[tuple[str, list[str]]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = parts[: len(parts) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found.append((target, [alias.name for alias in node.names]))
            elif isinstance(node, ast.If):
                test = node.test
                guarded = isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                guarded |= isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                if not guarded:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: modules of the packages it imports at module level}``."""
    names = {name for package in packages for name in modules_of(root, package)}
    files = {}
    for name in names:
        base = root.joinpath(*name.split("."))
        files[name] = (
            (base / "__init__.py", True) if base.is_dir() else (base.with_suffix(".py"), False)
        )
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges: set[str] = set()
        for target, imported in _module_imports(ast.parse(path.read_text()), name, is_package):
            targets = [f"{target}.{n}" for n in imported if f"{target}.{n}" in names]
            if len(targets) < len(imported) or not imported:
                targets.append(target)  # names taken from the module itself
            for t in targets:
                chain = t.split(".")
                edges |= {".".join(chain[:i]) for i in range(1, len(chain) + 1)}
        graph[name] = {t for t in edges if t in names and t not in own and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def _write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_every_module_imports_first_in_a_fresh_interpreter():
    assert import_failures(ROOT, PACKAGES) == {}


def test_the_import_graph_has_no_cycle():
    graph = import_graph(ROOT, PACKAGES)
    assert "simgen.posterior" in graph["simgen.mcmc_posterior"]  # the graph sees imports
    assert import_cycles(graph) == []


def test_the_checkers_catch_a_cycle(tmp_path):
    """A cycle used at import time fails the dynamic check for the modules in it; one that
    Python tolerates (names looked up later) is still a cycle to the static check."""
    _write_package(
        tmp_path,
        {
            "cyc/__init__.py": "",
            "cyc/a.py": "from .b import g\n\ndef f():\n    return g()\n",
            "cyc/b.py": "from .a import f\n\ndef g():\n    return 1\n",
            "cyc/ok.py": "from . import lazy\n",
            "cyc/lazy/__init__.py": "",
            "cyc/lazy/x.py": "from . import y\n\ndef f():\n    return y.g()\n",
            "cyc/lazy/y.py": "from cyc.lazy import x\n\ndef g():\n    return x\n",
            "cyc/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from .typed2 import T\n",
            "cyc/typed2.py": "from . import typed\nT = int\n",
        },
    )
    failures = import_failures(tmp_path, ("cyc",))
    assert set(failures) == {"cyc.a", "cyc.b"}
    assert all("circular import" in message for message in failures.values())
    cycles = import_cycles(import_graph(tmp_path, ("cyc",)))
    assert cycles == [["cyc.a", "cyc.b"], ["cyc.lazy.x", "cyc.lazy.y"]]


def test_importing_simgen_does_no_work(tmp_path):
    """``import simgen`` loads no optional heavy module, starts no thread, writes no file and
    leaves torch's random state alone."""
    probe = (
        "import json, sys, threading, torch\n"
        "state, threads = torch.random.get_rng_state(), threading.active_count()\n"
        "import simgen\n"
        f"heavy = [m for m in {list(NOT_ON_IMPORT)!r} if m in sys.modules]\n"
        "print(json.dumps([heavy, threading.active_count() - threads,"
        " bool(torch.equal(state, torch.random.get_rng_state()))]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    heavy, new_threads, same_rng = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [] and new_threads == 0 and same_rng
    assert list(tmp_path.iterdir()) == []


def test_no_module_imports_nflows():
    """nflows is no dependency: no module of simgen or the simulators imports it, anywhere."""
    importers = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                if any(n.split(".")[0] == "nflows" for n in names):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []


def test_public_api():
    for name in ["simulate", "NPE", "BoxUniform", "TrainConfig", "load", "SimgenError"]:
        assert hasattr(simgen, name), name
    assert simulators.list()  # the collection lists its modules without importing them
