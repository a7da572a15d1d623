"""Execute the notebook headless, papermill-style: override its parameters cell, keep the result.

The notebook's first code cell is tagged `parameters`. Overrides go into a new cell right after
it (tagged `injected-parameters`, as papermill does), so the executed copy shows exactly what was
changed. The executed copy is saved in the output folder even when a cell fails.
"""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def inject_parameters(notebook, parameters: dict) -> None:
    """Insert `NAME = value` lines after the cell tagged `parameters`."""
    index = next((i for i, cell in enumerate(notebook.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("The notebook has no cell tagged 'parameters' to override.")
    lines = ["# Parameters injected by `python -m deepfake_detector notebook`"]
    lines += [f"{name} = {value}" for name, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, cell)


def execute_notebook(notebook_path="notebooks/deepfake_detector.ipynb", out_dir=None,
                     parameters: dict | None = None, timeout: int = 1800,
                     cwd: str | Path | None = None) -> Path:
    """Run every cell with `parameters` (name -> Python source of the value, e.g. '"none"' or
    '64'); returns the output folder, which holds the executed notebook and every artefact."""
    notebook_path = Path(notebook_path)
    out_dir = Path(out_dir or f"outputs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose another --out.")
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(notebook_path, as_version=4)
    inject_parameters(notebook, {"OUTPUT_DIR": repr(str(out_dir.resolve())), **(parameters or {})})
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or PROJECT_ROOT)}})
    executed = out_dir / notebook_path.with_suffix(".executed.ipynb").name
    try:
        client.execute()
    except CellExecutionError:
        nbformat.write(notebook, executed)
        print(f"A cell failed; the executed notebook up to that cell is {executed}")
        raise
    nbformat.write(notebook, executed)
    return out_dir
