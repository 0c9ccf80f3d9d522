"""Every notebook in notebooks/ runs top to bottom (quick settings), its assert cells hold, and it stays
within its CPU budget."""

import os
import resource
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# 3 minutes of both cores per notebook. CPU time of the kernel, unlike wall time, does not grow when other
# jobs share the machine; a cell that hangs still fails on the generous per-cell wall-clock timeout.
CPU_BUDGET_S = 2 * 180
CELL_TIMEOUT_S = 900


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished and waited-for children: the kernel
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCNN_QUICK", os.environ.get("KERASCNN_QUICK", "1"))
    notebook = nbformat.read(path, as_version=4)
    before = children_cpu_seconds()
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    cpu = children_cpu_seconds() - before
    assert 1 < cpu < CPU_BUDGET_S, f"{path.name} took {cpu:.0f} CPU seconds"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert any(line.startswith("assert ") for cell in code for line in cell.source.splitlines()), \
        f"{path.name} checks nothing it teaches"
    outputs = [o for cell in code for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no plot"
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "dataset: " in printed, f"{path.name} does not say which dataset ran"
