"""Benchmark cells: moved from the cache into the tracked folder, written atomically, and a
corrupt one read as missing."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import cell_files, harness
from simgen.errors import SimgenError


def test_move_cells_moves_each_file_once_and_never_overwrites(tmp_path):
    source, target = tmp_path / "cache" / "cells", tmp_path / "cells" / "evaluation"
    (source / "two_moons").mkdir(parents=True)
    (source / "two_moons" / "a.json").write_text('{"c2st": [0.5]}')
    (source / "two_moons" / "b.json").write_text('{"c2st": [0.9]}')
    (source / "two_moons" / ".c.json.7.tmp").write_text("{")  # a write in flight stays
    (target / "two_moons").mkdir(parents=True)
    (target / "two_moons" / "b.json").write_text('{"c2st": [0.6]}')

    assert cell_files.move_cells(source, target) == 1
    assert json.loads((target / "two_moons" / "a.json").read_text()) == {"c2st": [0.5]}
    assert not (source / "two_moons" / "a.json").exists()
    # the tracked b.json is kept, and so is the cached one: nothing is deleted
    assert json.loads((target / "two_moons" / "b.json").read_text()) == {"c2st": [0.6]}
    assert (source / "two_moons" / "b.json").read_text() == '{"c2st": [0.9]}'
    assert (source / "two_moons" / ".c.json.7.tmp").exists()
    assert cell_files.move_cells(source, target) == 0  # a second pass has nothing to move
    assert cell_files.move_cells(tmp_path / "absent", target) == 0


def test_cells_moves_a_kind_in_from_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(harness, "CELLS", tmp_path / "cells")
    monkeypatch.setattr(cell_files, "_moved", set())
    old = tmp_path / "cache" / "joint_ratio" / "cells"
    old.mkdir(parents=True)
    (old / "nre-n1000-s0-abc.json").write_text("{}")
    assert cell_files.cells("joint_ratio") == tmp_path / "cells" / "joint_ratio"
    assert (tmp_path / "cells" / "joint_ratio" / "nre-n1000-s0-abc.json").exists()
    assert not (old / "nre-n1000-s0-abc.json").exists()
    (old / "late.json").write_text("{}")  # written after this process moved the kind in
    cell_files.cells("joint_ratio")
    assert (old / "late.json").exists()  # once a process: the next run moves it
    with pytest.raises(SimgenError, match="Unknown kind of benchmark cell 'jiont'"):
        cell_files.cells("jiont")


def test_a_cell_is_written_atomically_and_a_corrupt_one_reads_as_missing(tmp_path, monkeypatch):
    path = tmp_path / "kind" / "task" / "cell.json"
    assert cell_files.read_cell(path) is None
    cell_files.write_cell(path, {"c2st": [0.52, 0.61]}, indent=1)
    assert cell_files.read_cell(path) == {"c2st": [0.52, 0.61]}
    assert [p.name for p in path.parent.iterdir()] == ["cell.json"]  # no temporary left

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)  # stopped between write and rename
    with pytest.raises(KeyboardInterrupt):
        cell_files.write_cell(path, {"c2st": [0.99]})
    monkeypatch.undo()
    assert cell_files.read_cell(path) == {"c2st": [0.52, 0.61]}  # the old cell is whole
    assert [p.name for p in path.parent.iterdir()] == ["cell.json"]

    path.write_text('{"c2st": [0.5')  # what a plain write_text leaves when interrupted
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert cell_files.read_cell(path) is None
