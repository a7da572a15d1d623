"""report.md agrees with the run (issue 22, section 2): the best epoch is the restored one and
the training time is the run's own, as config.json and train.log say; a random-init run and a
synthetic run carry their flags in the metrics, in every table and on every figure; the data
audit's finding is in the report; gradcam into the run and `report --run` rebuild it; and the
figures read right (colour scales, thin reliability bins, the AUC axis, small overlays, the
contact sheet's captions)."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import main
from deepfake_detector.plots import (MIN_BIN_IMAGES, MIN_SCORE_SPAN, best_epoch_by_val_loss,
                                     plot_confusion_matrix, plot_history,
                                     plot_reliability_diagram)
from deepfake_detector.report import (RANDOM_INIT_WARNING, SYNTHETIC_DATA_WARNING, write_report)
from deepfake_detector.run_flags import RANDOM_INIT, SYNTHETIC_DATA

FOOTER_RGB = (160, 0, 0)  # figures.FLAG_COLOUR, #A00000


def has_footer(png: Path) -> bool:
    """The flags' footer: dark-red text in the lowest eighth of the picture."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    bottom = pixels[-max(1, pixels.shape[0] // 8):]
    return bool((np.abs(bottom - FOOTER_RGB).sum(axis=-1) < 60).sum() >= 20)


def log_says(run: Path) -> tuple[int, float]:
    """(restored epoch, training seconds) as train.log says them."""
    log = (run / "train.log").read_text(encoding="utf-8")
    best = re.search(r"best epoch (\d+): val loss .* \(its head weights restored\)", log)
    seconds = re.search(r"training took ([\d.]+) s", log)
    return int(best.group(1)), float(seconds.group(1))


@pytest.fixture(scope="module")
def demo_copy(demo_run, tmp_path_factory):
    """The shared synthetic demo run (random init, 32 px), copied: gradcam writes into it."""
    return shutil.copytree(demo_run, tmp_path_factory.mktemp("report") / "run")


def test_report_config_and_log_agree_on_best_epoch_and_time(demo_run):
    config = json.loads((demo_run / "config.json").read_text())
    best, seconds = log_says(demo_run)
    assert best == config["best_epoch"] and seconds == round(config["train_seconds"], 1)
    report = (demo_run / "report.md").read_text()
    assert f"Best epoch {best} (val loss" in report and "its head was restored" in report
    assert f"training took {seconds:.1f} s" in report
    assert f"{config['epochs_run']} epoch(s) run" in report


def test_report_takes_the_recorded_epoch_and_time_not_the_history(tmp_path):
    """The issue's run: 70 epochs whose raw minimum is epoch 70, restored epoch 60, 1 s of head
    time per history but 24.3 s of training; and a run from before best_epoch was recorded,
    where early stopping's min_delta decides."""
    history = [{"epoch": e, "val_loss": 0.1 - 1e-3 * min(e, 60) - 1e-6 * max(0, e - 60),
                "seconds": 0.014} for e in range(1, 71)]
    (tmp_path / "history.json").write_text(json.dumps(history))
    config = {"weights_record": {"pretrained": True}, "min_delta": 1e-4, "epochs_run": 70}
    (tmp_path / "config.json").write_text(json.dumps({**config, "best_epoch": 60,
                                                      "train_seconds": 24.3}))
    text = write_report(tmp_path).read_text()
    assert "Best epoch 60 (val loss 0.0400)" in text and "training took 24.3 s" in text
    assert "Best epoch 70" not in text and " 1 s" not in text
    (tmp_path / "config.json").write_text(json.dumps(config))  # an older run: no record
    text = write_report(tmp_path).read_text()
    assert "Best epoch 60 (val loss" in text and "training time was not recorded" in text
    assert best_epoch_by_val_loss(history) == 70 and best_epoch_by_val_loss(history, 1e-4) == 60


def check_flags_in_files(run: Path, flags: list[str], absent: list[str]) -> None:
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["flags"] == flags
    assert metrics["random_init"] is (RANDOM_INIT in flags)
    assert metrics["synthetic_data"] is (SYNTHETIC_DATA in flags)
    tables = sorted((run / "tables").glob("*.md"))
    assert tables
    for md in tables:
        csv_line = md.with_suffix(".csv").read_text().splitlines()[0]
        tex = md.with_suffix(".tex").read_text()
        caption = re.search(r"\\caption\{(.*)\}", tex)
        for text in (md.read_text(), csv_line, tex.splitlines()[0], caption.group(1)):
            assert all(flag in text for flag in flags), (md, text)
            assert not any(flag in text for flag in absent), (md, text)
        assert csv_line.startswith("# ") and tex.startswith("% ")
        with open(md.with_suffix(".csv"), newline="") as f:  # readers that skip '#' lines
            assert list(csv.DictReader(line for line in f if not line.startswith("#")))
    for png in sorted((run / "figures").glob("*.png")):
        assert has_footer(png), png


def test_random_init_and_synthetic_flags_everywhere(demo_run, trained_run):
    from deepfake_detector import run_dir, run_flags
    assert run_flags.CONFIG_JSON == run_dir.CONFIG_JSON
    check_flags_in_files(demo_run, [RANDOM_INIT, SYNTHETIC_DATA], [])
    check_flags_in_files(trained_run, [RANDOM_INIT], [SYNTHETIC_DATA])
    demo_report = (demo_run / "report.md").read_text()
    assert demo_report.splitlines()[0] == RANDOM_INIT_WARNING
    assert SYNTHETIC_DATA_WARNING in demo_report and "generated demo set" in demo_report
    assert SYNTHETIC_DATA_WARNING not in (trained_run / "report.md").read_text()
    # The data audit's finding (audit/audit.json, before training) is summarised in the report.
    audit = json.loads((demo_run / "audit" / "audit.json").read_text())
    assert "## Data audit" in demo_report and "(audit/audit.md)" in demo_report
    assert all(flag in demo_report for flag in audit["flags"])


def test_gradcam_into_the_run_refreshes_its_report_and_report_rebuilds_it(demo_copy, capsys):
    config = json.loads((demo_copy / "config.json").read_text())
    raw = Path(config["synthetic_data"]["raw_dir"])
    assert "## Grad-CAM" not in (demo_copy / "report.md").read_text()
    out = demo_copy / "gradcam"
    assert main(["gradcam", "--run", str(demo_copy), "--images", f"{config['data_dir']}/val",
                 "--out", str(out), "--masks", str(raw / "masks"), "--device", "cpu"]) == 0
    report = (demo_copy / "report.md").read_text()
    assert "![Grad-CAM contact sheet](gradcam/contact_sheet.png)" in report
    assert has_footer(out / "contact_sheet.png")
    # 32 px overlays stay at their size; a copy for viewing is enlarged 8x, each pixel a block.
    rows = list(csv.DictReader(open(out / "index.csv", newline="")))
    small = np.asarray(Image.open(rows[0]["overlay"]))
    big = np.asarray(Image.open(rows[0]["overlay_upscaled"]))
    assert small.shape == (32, 32, 3) and big.shape == (256, 256, 3)
    np.testing.assert_array_equal(big[::8, ::8], small)
    np.testing.assert_array_equal(big, small.repeat(8, 0).repeat(8, 1))
    assert np.load(out / "raw_cams.npy").shape[1:] == (1, 1)  # 32 px in: layer4's 1x1 grid

    (demo_copy / "report.md").write_text("edited")
    capsys.readouterr()
    assert main(["report", "--run", str(demo_copy)]) == 0
    assert "report rebuilt" in capsys.readouterr().out
    assert (demo_copy / "report.md").read_text() == report
    assert main(["report", "--run", str(demo_copy / "gradcam")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "not a run directory" in error and "--run" in error


def test_contact_sheet_captions_clear_of_images_with_colour_scale_and_mask(tmp_path):
    from deepfake_detector.gradcam_files import plot_contact_sheet
    rng = np.random.default_rng(0)
    examples = []
    for i, outcome in enumerate(["tp", "tp", "tn", "fp"]):
        path = tmp_path / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        examples.append({"path": path, "label": "fake" if outcome == "tp" else "real",
                         "probability": 0.9, "outcome": outcome, "target": "fake",
                         "cam": rng.uniform(size=(4, 4)), "mask": None})
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    examples[0]["mask"] = tmp_path / "mask.png"
    fig = plot_contact_sheet(examples, title="Grad-CAM")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [ax for ax in fig.axes if ax.images]
    for ax in images:  # no caption reaches into another panel's picture
        title = ax.title.get_window_extent(renderer)
        assert not any(title.overlaps(other.get_window_extent(renderer))
                       for other in images if other is not ax)
    scales = [ax for ax in fig.axes if "Grad-CAM" in ax.get_ylabel()]
    assert len(scales) == 1  # one colour bar for every heat map
    assert len(images[0].collections) == 1 and not images[3].collections  # the mask, outlined
    # The notebook's grids of heat maps can have the same colour bar.
    from deepfake_detector.figures import image_grid
    from deepfake_detector.gradcam_files import colour_scale
    grid = image_grid([np.zeros((8, 8, 3), np.uint8)] * 2, colour_scale=colour_scale(),
                      scale_label="Grad-CAM")
    assert sum(ax.get_ylabel() == "Grad-CAM" for ax in grid.axes) == 1
    # The confusion matrix is a heat map too: its colour bar says what the shade means.
    matrix = plot_confusion_matrix([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    assert any("true class" in ax.get_ylabel() for ax in matrix.axes)


def test_reliability_greys_thin_bins_and_learning_curves_keep_a_span():
    y = np.r_[np.zeros(40), np.ones(40), [0, 1]]
    p = np.r_[np.full(40, 0.02), np.full(40, 0.98), [0.5, 0.55]]  # two bins of one image
    fig = plot_reliability_diagram(y, p)
    ax, counts_ax = fig.axes
    grey = [bar for bar in ax.patches if bar.get_facecolor()[:3] == pytest.approx((0.85,) * 3)]
    assert len(grey) == 2 and all(bar.get_hatch() for bar in grey)
    assert sorted(t.get_text() for t in counts_ax.texts) == ["1", "1", "40", "40"]
    assert MIN_BIN_IMAGES == 5
    history = [{"epoch": e, "train_loss": 0.1 / e, "val_loss": 0.1 / e, "train_acc": 0.99,
                "val_acc": 1.0, "val_auc": 0.9992 + 0.0002 * (e % 3)} for e in range(1, 9)]
    fig = plot_history(history, best_epoch=6)
    for axis in fig.axes[1:]:  # accuracy and ROC-AUC
        low, high = axis.get_ylim()
        assert high - low >= MIN_SCORE_SPAN and low < 0.96 and 1.0 <= high < 1.01
