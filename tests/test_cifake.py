"""Real images: a small CIFAKE sample through the whole pipeline (skipped where the data is absent).

CIFAKE: J. J. Bird and A. Lotfi, IEEE Access, 2024 (MIT); real images from CIFAR-10 (Krizhevsky, 2009).
The sample is read from ../shared/data/cifake-dev, or from the folder (with real/ and fake/) that the
environment variable DEEPFAKE_DETECTOR_CIFAKE_DIR names, and copied only into a temporary folder.
"""
from __future__ import annotations

import json
import shutil

import pytest

from deepfake_detector.discovery import find_images
from deepfake_detector.inference import evaluate_run
from deepfake_detector.split import split_dataset
from deepfake_detector.train import TrainConfig, train

from conftest import CIFAKE_DIR

pytestmark = pytest.mark.skipif(
    not CIFAKE_DIR.is_dir(), reason=f"CIFAKE sample not found at {CIFAKE_DIR}: set "
                                    "DEEPFAKE_DETECTOR_CIFAKE_DIR to a folder with its real/ and fake/")
N_PER_CLASS = 300


@pytest.fixture(scope="module")
def cifake_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifake")
    for name in ("real", "fake"):
        (root / "raw" / name).mkdir(parents=True)
        for path in find_images(CIFAKE_DIR / name)[:N_PER_CLASS]:
            shutil.copy2(path, root / "raw" / name / path.name)  # names with spaces and brackets
    summary = split_dataset(root / "raw", root / "data", seed=0)
    assert summary.counts["val"] == {"real": 60, "fake": 60}
    return root / "data"


def test_random_features_already_separate_cifake_better_than_chance(cifake_split, tmp_path):
    """Random-init features at 64 px: far from the pretrained result, but clearly above chance;
    a broken pipeline (labels shuffled, features misaligned) would sit at 0.5."""
    run = train(TrainConfig(data_dir=str(cifake_split), out_dir=str(tmp_path / "run"), weights="none",
                            img_size=64, epochs=60, lr=1e-3, patience=5, cache_dir="",
                            num_workers=0), log_to_console=False)
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["n_images"] == 120
    assert metrics["roc_auc"] > 0.7, metrics["roc_auc"]
    again = evaluate_run(run, cifake_split, "val", log=lambda m: None, n_bootstrap=0)
    assert again["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-6)
    # The same evaluation twice: the same numbers, byte for byte (a GPU without deterministic
    # kernels gave ROC-AUC 0.75903, then 0.75861; evaluate is deterministic by default).
    first_file = (run / "eval" / "data-val" / "metrics.json").read_bytes()
    twice = evaluate_run(run, cifake_split, "val", log=lambda m: None, n_bootstrap=0)
    assert twice == again
    assert (run / "eval" / "data-val" / "metrics.json").read_bytes() == first_file
