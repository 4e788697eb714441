"""The tutorial notebooks (docs/tutorials) run from top to bottom in a real Jupyter kernel, and
are stored without outputs (the site renders them executed: `make docs`)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.ipynb"))
CELL_TIMEOUT_S = 120


def test_there_are_four_tutorials():
    assert [p.stem for p in TUTORIALS] == ["cross-view", "faces", "own-model", "region-search"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: outputs are stored; strip them (the site renders them)")


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_runs_in_a_kernel(path, tmp_path):
    from nbclient import NotebookClient
    notebook = nbformat.read(path, as_version=4)
    # run in a scratch folder: the tutorials write their galleries and items where they run
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                     # raises CellExecutionError naming the failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # every result cell (a bare expression) displayed something richer than its repr
    rich = [o for o in outputs if o.output_type == "execute_result"
            and ({"text/html", "image/png"} & set(o.data))]
    bare = [cell for cell in notebook.cells if cell.cell_type == "code"
            and "\n" not in cell.source.strip() and "=" not in cell.source]
    assert len(rich) >= len(bare), f"{path.name}: a result cell shows only text"
