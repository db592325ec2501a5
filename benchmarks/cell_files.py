"""Where benchmark result cells live, and how one is read and written.

A *cell* is the small JSON result of one benchmark run (task × budget × method × seed, or a
benchmark's own key). Every benchmark keeps its cells in ``harness.CELLS / <kind>``, that is
``benchmarks/cells/<kind>/`` (tracked: the cells are committed with the tables they produce,
so a fresh checkout rebuilds a table from its cells), each kind under its own key scheme:

- ``evaluation``: :mod:`benchmarks.evaluation` (``bench_report``, ``bench_defaults``);
- ``iid``: :mod:`benchmarks.bench_iid`;
- ``joint``: :mod:`benchmarks.bench_joint`;
- ``joint_ratio``: :mod:`benchmarks.bench_joint_ratio`, ``joint_ratio_study`` and
  ``joint_ratio_checks``;
- ``sequential``: :mod:`benchmarks.bench_sequential`.

Reference posteriors (large tensors, recomputable) stay in the gitignored ``harness.CACHE``.
:func:`cells` moves any cell of its kind found in the cache's folder for that kind
(:data:`CACHED`) into the tracked one, once a process; a file already at the target is kept
and so is the cached copy (nothing is deleted). :func:`write_cell` writes atomically (a
temporary file in the same folder, then ``os.replace``), so an interrupted run leaves no
truncated cell, and :func:`read_cell` treats a cell that does not parse as missing (with a
warning), so it is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from benchmarks import harness
from simgen.errors import ConfigError

__all__ = ["CACHED", "cells", "move_cells", "read_cell", "write_cell"]

#: Each kind of cell -> its folder under the gitignored ``harness.CACHE``.
CACHED = {
    "evaluation": "cells",
    "iid": "iid",
    "joint": "joint",
    "joint_ratio": "joint_ratio/cells",
    "sequential": "sequential",
}
_moved: set[tuple[Path, Path]] = set()


def move_cells(source: Path, target: Path) -> int:
    """Move every file under ``source`` to its relative path under ``target``; a file whose
    target exists stays where it is (neither copy is deleted). Returns the number moved."""
    if not source.is_dir() or target.resolve().is_relative_to(source.resolve()):
        return 0
    moved = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix != ".tmp"):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)  # fails if dest exists: never overwrites
        except FileExistsError:
            continue
        except OSError:  # another file system: copy, unless dest appeared meanwhile
            if dest.exists():
                continue
            shutil.copy2(path, dest)
        path.unlink()
        moved += 1
    return moved


def cells(kind: str) -> Path:
    """``harness.CELLS / kind``, after moving in the kind's cells from the cache (once)."""
    if kind not in CACHED:
        raise ConfigError(f"Unknown kind of benchmark cell {kind!r}; choose from {list(CACHED)}.")
    source, target = harness.CACHE / CACHED[kind], harness.CELLS / kind
    if (source, target) not in _moved:
        _moved.add((source, target))
        if moved := move_cells(source, target):
            print(f"moved {moved} {kind} cells from {source} to {target}", flush=True)
    return target


def read_cell(path: Path) -> dict | None:
    """The cell at ``path``, or ``None`` when there is none or it is not valid JSON (then a
    warning names the file: the caller recomputes it and :func:`write_cell` replaces it)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        warnings.warn(f"Cell {path} is not valid JSON ({exc}); recomputing it.", stacklevel=2)
        return None


def write_cell(path: Path, cell: dict, indent: int | None = None) -> None:
    """Write ``cell`` as JSON at ``path`` atomically: a temporary file, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cell, indent=indent))
        os.replace(tmp, path)
    except BaseException:  # an interrupted write leaves neither a truncated cell nor its temp
        tmp.unlink(missing_ok=True)
        raise
