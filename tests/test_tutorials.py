"""Every tutorial is a jupytext percent-format notebook, executed cell by cell in a Jupyter
kernel in its fast mode (``SIMGEN_FAST=1``).

Each ``tutorials/*.py`` is picked up automatically. The notebook is built from the ``.py``
with jupytext and run with nbclient in a fresh ``python3`` kernel (ipykernel, the test's own
interpreter), in a temporary folder, so a tutorial that raises, relies on state outside its
own cells, or writes nothing fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.py"))
CELL_TIMEOUT_S = 600  # a hung cell fails the test instead of stalling the suite


def _notebook(path: Path):  # noqa: ANN202
    jupytext = pytest.importorskip("jupytext", reason="jupytext is in simgen[dev]")
    notebook = jupytext.read(path)
    formats = notebook.metadata.get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, (
        f"{path.name} is not a paired percent-format notebook: start it with the jupytext "
        "header (`jupytext --set-formats ipynb,py:percent " + path.name + "`)."
    )
    return notebook


def test_every_tutorial_is_found() -> None:
    numbers = [p.name[:2] for p in TUTORIALS]
    assert {"01", "02", "03", "04", "05"} <= set(numbers), numbers
    assert len(set(numbers)) == len(numbers), f"two tutorials share a number: {numbers}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_executes_as_notebook(path: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("ipykernel", reason="ipykernel is in simgen[dev]")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in simgen[dev]")
    notebook = _notebook(path)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code_cells) >= 2, f"{path.name} has no cells: separate them with `# %%`"
    # the kernel inherits the environment: fast mode, one thread per process
    monkeypatch.setenv("SIMGEN_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
    assert any(c.get("outputs") for c in code_cells), f"{path.name} printed nothing"
    assert any(tmp_path.iterdir()), f"{path.name} wrote no output files"
