"""The notebook itself, executed end to end, headless, on a small synthetic set; and the demo's promise."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from deepfake_detector.notebook import PROJECT_ROOT, execute_notebook

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"


def test_notebook_is_committed_clean_with_a_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code_cells)


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path):
    project = tmp_path / "project"  # an empty dataset_raw/: the notebook makes synthetic data
    (project / "dataset_raw").mkdir(parents=True)
    out = project / "outputs" / "nb"
    parameters = {"SYNTHETIC_N_PER_CLASS": "60", "IMG_SIZE": "64", "EPOCHS": "30", "LR": "1e-3",
                  "WEIGHTS": repr("none"), "GRADCAM_IMAGES": "16", "BATCH_SIZE": "16"}
    execute_notebook(NOTEBOOK, out, parameters, timeout=600, cwd=project)

    executed = nbformat.read(out / "deepfake_detector.executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "SYNTHETIC DATA" in text and "RANDOM INIT" in text  # said in large letters
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 8  # figures shown inline

    run = out / "run"
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["n_images"] == 24 and 0.0 <= metrics["accuracy"] <= 1.0
    assert (run / "checkpoint.pt").is_file() and (run / "report.md").is_file()
    robustness = json.loads((run / "robustness.json").read_text())
    assert [row["perturbation"] for row in robustness][0] == "clean" and len(robustness) == 6
    assert (run / "audit" / "audit.md").is_file() and "Robustness" in (run / "report.md").read_text()
    assert (out / "figures" / "training_batch.png").is_file()
    assert (out / "figures" / "validation_predictions.pdf").is_file()
    overlays = list((run / "gradcam" / "overlays").rglob("*.png"))
    assert len(overlays) == 16
    assert json.loads((run / "gradcam" / "summary.json").read_text())["localisation"] is not None
    assert (project / "data" / "synthetic" / "split" / "split.csv").is_file()
    assert not any((project / "dataset_raw").iterdir())  # never written into


@pytest.mark.slow
def test_demo_data_is_learnable_with_random_init(tmp_path):
    """The demo's promise, at the demo's own settings (those `make demo` passes): a frozen
    random-init ResNet-18 with a linear head reaches at least 0.9 validation accuracy."""
    from deepfake_detector.demo_data import DEMO_IMAGE_SIZE, generate_demo_data
    from deepfake_detector.split import split_dataset
    from deepfake_detector.train import TrainConfig, train
    raw = generate_demo_data(tmp_path / "raw", seed=0)
    split_dataset(raw, tmp_path / "split", seed=0)
    run = train(TrainConfig(data_dir=str(tmp_path / "split"), out_dir=str(tmp_path / "run"),
                            weights="none", img_size=DEMO_IMAGE_SIZE, lr=3e-3, epochs=200,
                            cache_dir=""), log_to_console=False)
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["accuracy"] >= 0.9 and metrics["roc_auc"] >= 0.95, metrics["accuracy"]
