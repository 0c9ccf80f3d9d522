"""Every notebook in notebooks/ runs top to bottom (quick settings) without an error."""

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 180  # each notebook must run within 3 minutes on the 2-core CPU


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCNN_QUICK", os.environ.get("KERASCNN_QUICK", "1"))
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=TIME_LIMIT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.perf_counter() - start < TIME_LIMIT_S
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
