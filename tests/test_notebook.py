"""examples/quickstart.ipynb runs top to bottom from a folder outside the checkout (so it cannot rot, and it
needs only the installed package), and is committed without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("sklearn")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The working folder is outside the checkout, with no studies/ folder: the notebook must run
    # against the installed package (shipped studies read through importlib.resources).
    assert not tmp_path.resolve().is_relative_to(NOTEBOOK.parents[1]) and not (tmp_path / "studies").exists()
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    outputs = {i: c["outputs"] for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = json.dumps(outputs)
    assert "chosen k: 2" in text  # BIC picks the true number of experts
    assert "'gaussianmoe__n_experts': 2" in text  # so does the grid search through the pipeline
    assert '"ename"' not in text
    stderr = [o["text"] for cell in outputs.values() for o in cell if o.get("name") == "stderr"]
    assert not stderr, stderr  # no warnings printed in a user's notebook
