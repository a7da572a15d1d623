"""The command line, end to end: split -> train -> evaluate -> predict -> gradcam, as a user types it."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector.cli import main


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_whole_pipeline_from_the_command_line(raw_dataset, tmp_path, capsys):
    raw_before = tree_hashes(raw_dataset)
    data, run = tmp_path / "data", tmp_path / "run"

    assert main(["split", "--raw", str(raw_dataset), "--out", str(data), "--seed", "1"]) == 0
    assert (data / "split.csv").is_file() and len(list((data / "val" / "fake").iterdir())) == 6

    assert main(["train", "--data", str(data), "--out", str(run), "--weights", "none",
                 "--img-size", "32", "--epochs", "60", "--lr", "1e-2", "--cache-dir", "",
                 "--num-workers", "0"]) == 0
    assert (run / "checkpoint.pt").is_file()
    capsys.readouterr()

    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_images"] == 12 and metrics["accuracy"] >= 0.9 and metrics["roc_auc"] >= 0.9
    assert (run / "eval" / "data-val" / "metrics.json").is_file()
    # fp32 (the run's precision, recorded in config.json) and deterministic kernels by default
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"
    assert metrics["precision"] == "fp32" and metrics["deterministic"] is True
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "e2"),
                 "--precision", "bf16", "--no-deterministic", "--json"]) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert mixed["precision"] == "bf16" and mixed["deterministic"] is False
    assert mixed["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=0.05)

    predictions = tmp_path / "predictions.json"
    assert main(["predict", "--run", str(run), str(data / "val"), "--out", str(predictions)]) == 0
    rows = json.loads(predictions.read_text())
    assert len(rows) == 12 and list(rows[0])[:2] == ["image_id", "prediction"]
    assert all(0.0 <= row["prediction"] <= 1.0 for row in rows)
    # The same probabilities as the evaluation, image for image.
    with open(run / "eval" / "data-val" / "predictions.csv") as f:
        evaluated = {row["image_id"]: float(row["prediction"]) for row in csv.DictReader(f)}
    for row in rows:
        assert row["prediction"] == pytest.approx(evaluated[row["image_id"]], abs=1e-6)

    assert main(["predict", "--run", str(run), str(next((data / "val" / "real").iterdir()))]) == 0
    single = json.loads(capsys.readouterr().out)
    assert len(single) == 1 and set(single[0]) == {"image_id", "prediction"}

    assert main(["gradcam", "--run", str(run), "--images", str(data / "val"),
                 "--out", str(tmp_path / "cams"), "--deterministic"]) == 0
    assert json.loads((tmp_path / "cams" / "summary.json").read_text())["precision"] == "fp32"
    overlays = list((tmp_path / "cams").rglob("*.png"))
    assert any(p.parent.name in ("tp", "tn", "fp", "fn") for p in overlays)

    assert tree_hashes(raw_dataset) == raw_before  # dataset_raw/ was only ever read


def test_clear_errors_not_tracebacks(tmp_path, capsys):
    assert main(["split", "--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path), str(tmp_path)]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err


def test_an_unknown_precision_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--weights", "none", "--precision", "half"])
    assert "--precision" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_train_requires_an_explicit_weights_choice(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path)])
    assert "--weights" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "deepfake_detector", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("split", "train", "evaluate", "predict", "gradcam", "notebook"):
        assert command in result.stdout
