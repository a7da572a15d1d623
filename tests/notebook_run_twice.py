"""The notebook, executed once per test session, in a process of its own.

    python tests/notebook_run_twice.py ROOT

Executing the notebook is the slowest thing in the suite: its kernel computes on about one core
for a minute. So conftest.py starts this script in the background as soon as the tests are
collected (if a selected test needs it), the tests before test_notebook.py run beside it, and the
session fixture `notebook_run_twice` waits for it and hands its results to the tests, which only
read them.

execute_notebook(rerun=True), the headless runner of `make demo`, runs every cell (exercises on,
in an empty dataset_raw/: the notebook makes synthetic data), then every code cell a second time
in the same kernel. After the first pass this script keeps what a one-pass headless run leaves
(the executed copy, with the widgets' state, and a copy of every file: ROOT/one-pass/project) and
asks the live kernel about its objects; after the second pass it sets VAL_FRACTION = 0.5 and
re-runs the cells from the split to the training, as a JupyterLab user would. It writes the
notebook after each step (ROOT/first.ipynb, second.ipynb, changed.ipynb) and what the kernel said
(ROOT/seen.json); ROOT/project is the project as the last step left it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from deepfake_detector import notebook as notebook_module
from deepfake_detector.notebook import PROJECT_ROOT, execute_notebook

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"
# Small settings, since every cell runs twice: 2 x 30 synthetic images at 32 px (12 of them val
# at VAL_FRACTION 0.2, 30 at 0.5), 8 Grad-CAM overlays. Command-line text, as execute_notebook
# reads it (parse_value); exercises on, so that they run too.
# WEIGHTS stays at its default, "imagenet-or-none", on a machine without internet (below): Run All
# on the defaults must fall back to random init, loudly, and go on.
TINY = {"SYNTHETIC_N_PER_CLASS": "30", "IMG_SIZE": "32", "EPOCHS": "10", "LR": "1e-3",
        "GRADCAM_IMAGES": "8", "BATCH_SIZE": "16", "EXERCISES": "True"}
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # port 9: refused


def kernel_json(client, code: str):
    """Run `code` in the live kernel; what it prints last is read back as JSON."""
    cell = nbformat.v4.new_code_cell(code)
    client.nb.cells.append(cell)  # a scratch cell, taken out again: the notebook stays as it was
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
    finally:
        client.nb.cells.pop()
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                   and o.name == "stdout")
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs
    return json.loads(text.strip().splitlines()[-1])


def run_twice(root: Path) -> None:
    project = root / "project"
    (project / "dataset_raw").mkdir(parents=True)
    seen = {}

    def keep(client, name: str) -> Path:
        path = root / f"{name}.ipynb"
        nbformat.write(nbformat.from_dict(json.loads(json.dumps(client.nb))), path)
        return path

    def after_first_pass(client):
        NotebookClient.set_widgets_metadata(client)  # as a one-pass run stores them at its end
        first = keep(client, "first")
        one_pass = root / "one-pass" / "project"
        shutil.copytree(project, one_pass, symlinks=True)
        shutil.copyfile(first, one_pass / "outputs" / "nb" / "deepfake_detector.executed.ipynb")
        seen["first_run"] = kernel_json(client, "print(json.dumps({'n_val': run.metrics['n_images'], "
                                                "'model_is_run_model': run.model is model, "
                                                "'device': str(next(model.parameters()).device)}))")

    def after_second_pass(client):
        keep(client, "second")
        kernel_json(client, "VAL_FRACTION = 0.5\nprint('{}')")
        code_cells = [(i, c) for i, c in enumerate(client.nb.cells) if c.cell_type == "code"]
        start = next(i for i, c in code_cells if "synthetic = SYNTHETIC_IF_EMPTY" in c.source)
        stop = next(i for i, c in code_cells if "plot_history(run.history" in c.source)
        for index, cell in code_cells:
            if start <= index <= stop:
                client.execute_cell(cell, index)
        keep(client, "changed")
        seen["n_images_after_change"] = kernel_json(client, "print(json.dumps(run.metrics['n_images']))")

    class WatchedClient(NotebookClient):
        """execute_notebook's own client; once the last cell of a pass has run, this script looks
        into the live kernel (its scratch cells start no pass of their own)."""
        passes_done = 0
        looking = False

        def execute_cell(self, cell, cell_index, *args, **kwargs):
            executed = super().execute_cell(cell, cell_index, *args, **kwargs)
            if cell_index == len(self.nb.cells) - 1 and not self.looking:
                self.passes_done += 1
                self.looking = True
                try:
                    (after_first_pass if self.passes_done == 1 else after_second_pass)(self)
                finally:
                    self.looking = False
            return executed

    notebook_module.NotebookClient = WatchedClient  # this process runs nothing else
    execute_notebook(NOTEBOOK, project / "outputs" / "nb", TINY, timeout=600, cwd=project,
                     rerun=True)
    if "n_images_after_change" not in seen:
        raise RuntimeError("execute_notebook(rerun=True) did not run every cell twice")
    (root / "seen.json").write_text(json.dumps(seen), encoding="utf-8")


if __name__ == "__main__":
    # Beside the test session, not against it: one thread (the kernel, a child, inherits it; at
    # 32 px a second thread saves nothing) and a lower priority, so the tests keep their two cores
    # and this takes what they leave idle.
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # No internet, and no ImageNet file in torch's cache (the kernel inherits both): the default
    # WEIGHTS falls back to random init, as on a machine offline.
    os.environ.update(OFFLINE, TORCH_HOME=str(Path(sys.argv[1]) / "torch-home"))
    os.nice(10)
    run_twice(Path(sys.argv[1]))
