"""Robustness and cross-dataset evaluation: perturbations do what they say, the clean row is
evaluate_run's result, and the cross-dataset table grows by test set without duplicates."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_raw_dataset, smooth_noise
from deepfake_detector.cli import main
from deepfake_detector.inference import evaluate_run
from deepfake_detector.robustness import (PERTURBATIONS, cross_dataset_row, jpeg_bytes,
                                          robustness_table)


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory):
    """The shared trained run, copied: these tests write tables into it."""
    return shutil.copytree(trained_run, tmp_path_factory.mktemp("robust") / "run")


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    array = smooth_noise(rng, 64) + rng.normal(0, 20, (64, 64, 3))  # texture for JPEG to lose
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def high_frequency_energy(image: Image.Image) -> float:
    """Mean squared Laplacian: what blur removes."""
    a = np.asarray(image, dtype=np.float64)
    laplacian = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float((laplacian ** 2).mean())


def test_perturbations_are_ordered_and_deterministic(photo):
    assert list(PERTURBATIONS) == ["clean", "jpeg_q95", "jpeg_q75", "jpeg_q50", "downscale_0.5",
                                   "blur_sigma1"]
    for name, perturb in PERTURBATIONS.items():
        once, twice = perturb(photo.copy()), perturb(photo.copy())
        assert once.mode == "RGB", name
        assert np.array_equal(np.asarray(once), np.asarray(twice)), name
    assert np.array_equal(np.asarray(PERTURBATIONS["clean"](photo)), np.asarray(photo))


def test_jpeg_quality_lowers_size_and_fidelity(photo):
    assert len(jpeg_bytes(photo, 50)) < len(jpeg_bytes(photo, 75)) < len(jpeg_bytes(photo, 95))
    original = np.asarray(photo, dtype=np.float64)
    error = {q: ((np.asarray(PERTURBATIONS[f"jpeg_q{q}"](photo), dtype=np.float64) - original) ** 2).mean()
             for q in (95, 75, 50)}
    assert 0 < error[95] < error[75] < error[50]
    assert PERTURBATIONS["jpeg_q50"](photo).size == photo.size


def test_downscale_halves_and_blur_removes_high_frequencies(photo):
    assert PERTURBATIONS["downscale_0.5"](photo).size == (32, 32)
    blurred = PERTURBATIONS["blur_sigma1"](photo)
    assert blurred.size == photo.size
    assert high_frequency_energy(blurred) < 0.3 * high_frequency_energy(photo)


def test_robustness_table_clean_row_is_evaluate_run(run_copy, split_data, tmp_path):
    rows = robustness_table(run_copy, split_data, "val", n_bootstrap=20, batch_size=16,
                            num_workers=0, log=lambda m: None)
    assert [r["perturbation"] for r in rows] == list(PERTURBATIONS)
    assert all(r["n_images"] == 16 for r in rows)
    reference = evaluate_run(run_copy, split_data, "val", tmp_path / "eval", batch_size=16,
                             num_workers=0, n_bootstrap=20, log=lambda m: None)
    clean = rows[0]
    for key in ("accuracy", "accuracy_at_val_threshold", "roc_auc", "average_precision", "eer",
                "balanced_accuracy", "ece"):
        assert clean[key] == pytest.approx(reference[key], abs=1e-9), key
    assert json.loads((run_copy / "robustness.json").read_text()) == rows
    for path in ("tables/robustness.md", "tables/robustness.csv", "tables/robustness.tex",
                 "figures/robustness.png", "figures/robustness.pdf"):
        assert (run_copy / path).is_file(), path
    assert "## Robustness" in (run_copy / "report.md").read_text()


def test_cross_dataset_rows_append_then_replace(run_copy, tmp_path, capsys):
    other = make_raw_dataset(tmp_path / "other", n_real=6, n_fake=6, seed=7)
    with pytest.warns(match="byte-identical"):  # the split's own val images were not trained on,
        own = cross_dataset_row(run_copy, json.loads((run_copy / "config.json").read_text())["data_dir"],
                                split="train", name="own-train", n_bootstrap=10, num_workers=0,
                                log=lambda m: None)  # but its train images were: warned
    assert own["n_seen_in_training"] == own["n_images"]

    first = cross_dataset_row(run_copy, other, name="other", n_bootstrap=10, num_workers=0,
                              log=lambda m: None)
    assert first["n_images"] == 12 and first["test set"] == "other"
    assert first["n_seen_in_training"] == 0
    assert {"train set", "roc_auc", "average_precision", "accuracy", "eer"} <= set(first)
    assert main(["cross-eval", "--run", str(run_copy), "--data", str(other), "--name", "other",
                 "--n-bootstrap", "10", "--num-workers", "0"]) == 0  # the same, typed
    again = json.loads(capsys.readouterr().out)
    rows = json.loads((run_copy / "cross_dataset.json").read_text())
    assert [r["test set"] for r in rows] == ["own-train", "other"]  # replaced, not duplicated
    assert rows[-1] == again
    assert not (run_copy / "metrics_test.json").exists()  # never filed as the run's own test
    for ext in ("md", "csv", "tex"):
        assert (run_copy / "tables" / f"cross_dataset.{ext}").is_file()
