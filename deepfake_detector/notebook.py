"""Execute the notebook headless, as papermill does; and what the notebook needs to be re-runnable.

Headless runs (`python -m deepfake_detector notebook`):

* The notebook's first code cell is tagged `parameters`. Overrides go into a new cell right after
  it (tagged `injected-parameters`, as papermill does), so the executed copy shows exactly what was
  changed. Each value given on the command line is read with `ast.literal_eval`, and taken as a
  plain string when it is not a Python literal: `-p WEIGHTS imagenet`, `-p WEIGHTS '"imagenet"'`,
  `-p EPOCHS 30` and `-p CROSS_DATASETS '["a", "b"]'` all do what they say.
* The executed copy is written after every cell, so a failing cell, a cell timeout or a dead
  kernel leaves the partial notebook, with the error in it, beside the run's artefacts.
* The kernel's working directory is `cwd` (CLI: `--cwd`; default: the project root). Relative
  paths in the parameters (`dataset_raw`, `data`, `outputs/...`) are read from there.

Re-running cells in JupyterLab: the notebook replaces only the splits and runs that it made itself.
It marks each with a small `made_by_notebook.json`; `claim_for_notebook` decides, and stops with one
clear line that names the parameter allowing it (`REPLACE_SPLIT`, `REPLACE_RUN`) for anything else.
"""
from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from .manifest import RUN_MANIFEST, record_written

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER = "made_by_notebook.json"


# --- parameters -----------------------------------------------------------------------------

def parse_value(text):
    """A command-line value as papermill reads it: a Python literal when it is one, else the string."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def inject_parameters(notebook, parameters: dict) -> None:
    """Insert `NAME = value` lines after the cell tagged `parameters` (values are Python objects,
    written with repr; strings from a command line go through `parse_value` first)."""
    index = next((i for i, cell in enumerate(notebook.cells)
                  if "parameters" in cell.get("metadata", {}).get("tags", [])), None)
    if index is None:
        raise ValueError("The notebook has no cell tagged 'parameters' to override.")
    for name in parameters:
        if not str(name).isidentifier():
            raise ValueError(f"Parameter name {name!r} is not a Python name.")
    lines = ["# Parameters injected by `python -m deepfake_detector notebook`"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, cell)


# --- headless execution ---------------------------------------------------------------------

def _write(notebook, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    nbformat.write(notebook, partial)
    partial.replace(path)  # never a half-written notebook, even if killed while writing


def execute_notebook(notebook_path="notebooks/deepfake_detector.ipynb", out_dir=None,
                     parameters: dict | None = None, timeout: int = 1800,
                     cwd: str | Path | None = None, rerun: bool = False) -> Path:
    """Run every cell with `parameters` (name -> value: a Python object, or command-line text read
    by `parse_value`); returns the output folder, which holds the executed notebook (saved after
    every cell) and every artefact. rerun=True runs every code cell a second time in the same
    kernel afterwards, as a user re-running cells would (the executed copy keeps the second run)."""
    notebook_path = Path(notebook_path)
    out_dir = Path(out_dir or f"outputs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose another --out.")
    cwd = Path(cwd or PROJECT_ROOT)
    if not cwd.is_dir():
        raise FileNotFoundError(f"Working directory {cwd} does not exist; pass an existing --cwd.")
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(notebook_path, as_version=4)
    values = {name: parse_value(value) for name, value in (parameters or {}).items()}
    inject_parameters(notebook, {"OUTPUT_DIR": str(out_dir.resolve()), **values})
    executed = out_dir / notebook_path.with_suffix(".executed.ipynb").name
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    passes = 2 if rerun else 1
    client.reset_execution_trackers()
    try:
        # One line per progress bar in the executed copy (progress.py), not a widget per bar.
        kernel_env = headless_kernel_environment()
        with client.setup_kernel(env=kernel_env):  # as NotebookClient.execute, saving per cell
            info = client.wait_for_reply(client.kc.kernel_info())
            notebook.metadata["language_info"] = info["content"]["language_info"]
            for _ in range(passes):
                for index, cell in enumerate(notebook.cells):
                    try:
                        client.execute_cell(cell, index,
                                            execution_count=client.code_cells_executed + 1)
                    finally:
                        _write(notebook, executed)
            client.set_widgets_metadata()  # the widgets' last state, so viewers can draw them
            _write(notebook, executed)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        _write(notebook, executed)
        print(f"{type(error).__name__}: the executed notebook up to that cell is {executed}")
        raise
    return out_dir


# --- what the notebook made itself ---------------------------------------------------------

class NotebookStop(Exception):
    """Stops a notebook cell with one line (IPython shows `_render_traceback_` instead of a
    traceback), for a decision the user has to make, such as replacing someone else's folder."""

    def _render_traceback_(self):
        return [f"STOPPED: {self}"]


def made_by_notebook(folder) -> bool:
    return (Path(folder) / MARKER).is_file()


def headless_kernel_environment() -> dict:
    """The environment of a headless run's kernel: progress bars as one line each, and no
    MPLBACKEND (Streamlit sets it to Agg on import, so do some shells), which would stop figures
    from showing inline in the executed copy: the kernel picks Jupyter's own backend."""
    return {**{k: v for k, v in os.environ.items() if k != "MPLBACKEND"},
            "DEEPFAKE_DETECTOR_PROGRESS": "log"}


def mark_as_notebooks(folder, what: str, **details) -> Path:
    """Record that the notebook made `folder` (a split or a run), so a re-run may replace it."""
    marker = Path(folder) / MARKER
    marker.write_text(json.dumps({"made_by": "notebooks/deepfake_detector.ipynb", "what": what,
                                  "time": time.strftime("%Y-%m-%d %H:%M:%S"), **details},
                                 indent=2, default=str) + "\n", encoding="utf-8")
    if (Path(folder) / RUN_MANIFEST).is_file():  # a run: the marker is one of the files it wrote
        record_written(folder, [marker])
    return marker


def claim_for_notebook(folder, parameter: str, allowed: bool = False) -> bool:
    """May the notebook write over `folder`? Returns whether something is there to replace.

    Empty or missing: nothing to replace (False). Made by the notebook (marked), or the user set
    `parameter` to True: replace it (True). Anything else: NotebookStop naming `parameter`."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return False
    if made_by_notebook(folder) or allowed:
        return True
    raise NotebookStop(f"{folder} exists and was not made by this notebook; nothing was changed. "
                       f"Set {parameter} = True in the parameters cell to replace it, or choose "
                       "another folder.")
