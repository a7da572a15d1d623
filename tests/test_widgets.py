"""The notebook's widgets, driven from code: set the slider, pick an image, feed an upload, and
check what each one shows against numbers computed independently."""
from __future__ import annotations

import io
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

widgets = pytest.importorskip("ipywidgets")

from deepfake_detector import gradcam  # noqa: E402
from deepfake_detector.data import eval_transform, open_image  # noqa: E402
from deepfake_detector.predictions import read_predictions  # noqa: E402
from deepfake_detector.inference import load_run  # noqa: E402
from deepfake_detector.preprocessing import Preprocessing  # noqa: E402
from deepfake_detector.widgets import ImageBrowser, ThresholdExplorer, UploadBox  # noqa: E402


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_threshold_slider_redraws_confusion_matrix_and_precision_recall():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.6, 0.8, 0.3, 0.55, 0.7, 0.9, 0.95, 0.4])
    explorer = ThresholdExplorer(labels, probabilities, split="val", threshold=0.5,
                                 val_threshold=0.5)
    assert explorer.shown == pytest.approx(
        {"threshold": 0.5, "split": "val", "tp": 4, "fp": 2, "fn": 2, "tn": 2,
         "accuracy": 0.6, "precision_fake": 4 / 6, "recall_fake": 4 / 6,
         "precision_real": 2 / 4, "recall_real": 2 / 4})
    first_picture = explorer.figure.value
    assert png_size(first_picture)[0] > 100

    explorer.slider.value = 0.65  # as a user dragging the slider
    shown = explorer.shown
    assert (shown["tp"], shown["fp"], shown["fn"], shown["tn"]) == (3, 1, 3, 3)
    assert shown["precision_fake"] == pytest.approx(3 / 4)
    assert shown["recall_fake"] == pytest.approx(3 / 6)
    assert "0.750" in explorer.numbers.value and "0.65" in explorer.numbers.value
    assert explorer.figure.value != first_picture  # the matrix was redrawn
    assert "optimistic" in explorer.note.value and "val split" in explorer.note.value


def test_threshold_explorer_names_the_test_split_it_shows():
    explorer = ThresholdExplorer([0, 1], [0.2, 0.9], split="test", threshold=0.5)
    assert "test split" in explorer.note.value and explorer.shown["accuracy"] == 1.0


@pytest.fixture(scope="module")
def run_model(trained_run):
    model, checkpoint = load_run(trained_run, device="cpu")
    return model, checkpoint


def test_image_browser_filters_by_outcome_and_shows_the_package_grad_cam(trained_run, run_model):
    model, checkpoint = run_model
    rows = read_predictions(trained_run / "predictions_val.csv")
    paths = [row["path"] for row in rows]
    labels = [int(row["label"]) for row in rows]
    probabilities = [float(row["prediction"]) for row in rows]
    browser = ImageBrowser(model, paths, labels, probabilities,
                           Preprocessing.from_checkpoint(checkpoint), threshold=0.5)
    expected = [gradcam.outcome_of(y, p >= 0.5) for y, p in zip(labels, probabilities)]
    for outcome in gradcam.OUTCOMES:
        browser.outcome.value = outcome
        indices = [value for _, value in browser.image.options]
        assert sorted(indices) == [i for i, o in enumerate(expected) if o == outcome]
        if not indices:  # a line of text in the picture's place, never an empty image
            assert browser.shown is None and browser.view.showing == "text"
            assert "No validation image" in browser.view.text.value
            continue
        assert browser.shown["outcome"] == outcome
    browser.outcome.value = next(o for o in gradcam.OUTCOMES if o in expected)
    index = browser.image.options[-1][1]
    browser.image.value = index  # pick an image
    for target in ("real", "fake"):
        browser.target.value = target
        shown = browser.shown
        assert str(shown["path"]) == str(paths[index]) and shown["target"] == target
        assert shown["probability"] == pytest.approx(probabilities[index], abs=1e-5)
        image = eval_transform(checkpoint["img_size"])(open_image(paths[index]))[None]
        reference = gradcam.grad_cam(model, image, target=target)[0]
        np.testing.assert_allclose(shown["cam"], reference, atol=1e-6)
        assert f"{probabilities[index]:.3f}" in browser.caption.value
    assert len(browser.picture.value) > 0


def test_upload_box_gives_probability_verdict_and_cam(run_model, tmp_path):
    model, checkpoint = run_model
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    box = UploadBox(model, Preprocessing.from_checkpoint(checkpoint), threshold=0.5)
    assert box.shown is None and "Upload an image" in box.caption.value  # the first state
    assert box.view.showing == "text" and "No image yet" in box.view.text.value
    box.upload.value = ({"name": "mine.png", "type": "image/png", "size": len(buffer.getvalue()),
                         "content": memoryview(buffer.getvalue()),
                         "last_modified": datetime.now(timezone.utc)},)
    shown = box.shown
    tensor = eval_transform(checkpoint["img_size"])(image)[None]
    result = gradcam.grad_cam_with_logits(model, tensor, target="predicted")
    assert shown["probability"] == pytest.approx(float(result.probabilities[0]), abs=1e-5)
    assert shown["verdict"] == ("fake" if result.probabilities[0] >= 0.5 else "real")
    np.testing.assert_allclose(shown["cam"], result.cams[0], atol=1e-6)
    assert "mine.png" in box.caption.value and shown["verdict"] in box.caption.value
    width, height = png_size(box.picture.value)
    assert width > height  # the image and its overlay side by side

    assert box.show_bytes(b"not an image", "notes.txt") is None
    assert "could not be read" in box.caption.value and "notes.txt" in box.caption.value
    assert box.view.showing == "text" and "notes.txt" in box.view.text.value  # no broken image


def test_browser_upload_box_and_slider_use_the_runs_threshold(trained_run):
    """One threshold everywhere: the run's (chosen on val) by default, in the browser's outcomes,
    the upload box's verdict and the slider's start, and said where it is shown; another one is
    labelled as not the run's. The pictures are at most 480 px wide, shown unscaled."""
    probabilities = trained_run.val_probabilities
    # A run threshold at which some validation image changes side against 0.5: the test would
    # pass with 0.5 otherwise.
    threshold = next(t for t in (0.05, 0.25, 0.75, 0.95, 0.01, 0.99)
                     if ((probabilities >= t) != (probabilities >= 0.5)).any())
    run = replace(trained_run, metrics={**trained_run.metrics, "val_threshold": threshold})
    assert run.val_threshold == threshold

    browser = ImageBrowser.from_run(run)
    assert browser.threshold == threshold
    assert browser.outcomes == [gradcam.outcome_of(y, p >= threshold)
                                for y, p in zip(run.val_labels, probabilities)]
    said = f"the run's threshold {threshold:.3f}"
    assert said in browser.note.value
    if browser.shown is not None:
        assert said in browser.caption.value and browser.shown["threshold"] == threshold
        width, _ = png_size(browser.picture.value)
        assert width <= 480 and browser.picture.layout.width == f"{width}px"  # not stretched

    box = UploadBox.from_run(run)
    assert box.threshold == threshold and said in box.caption.value
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    p = box.show_bytes(buffer.getvalue(), "mine.png")["probability"]
    # now a run threshold on the other side of this image's P(fake) from 0.5
    other = (p + 1) / 2 if p >= 0.5 else p / 2
    box = UploadBox.from_run(replace(run, metrics={**run.metrics, "val_threshold": other}))
    shown = box.show_bytes(buffer.getvalue(), "mine.png")
    assert shown["verdict"] == ("fake" if p >= other else "real") != ("fake" if p >= 0.5 else "real")
    assert f"the run's threshold {other:.3f}" in box.caption.value and box.view.showing == "picture"
    width, height = png_size(box.picture.value)
    assert width <= 480 and width > height

    explorer = ThresholdExplorer(run.val_labels, probabilities, val_threshold=threshold)
    assert explorer.slider.value == threshold and said in explorer.numbers.value

    at_half = ImageBrowser.from_run(run, threshold=0.0)  # another threshold: labelled as such
    assert f"not the run's threshold, {threshold:.3f}" in at_half.note.value
    at_half.outcome.value = "tn"  # at 0.0 every image is called fake: an empty tab
    assert at_half.shown is None and at_half.view.showing == "text"
    assert "No validation image is tn" in at_half.view.text.value


def test_undefined_precision_is_marked_and_explained_not_nan():
    explorer = ThresholdExplorer([0, 0, 1, 1], [0.2, 0.4, 0.6, 0.9], val_threshold=0.5)
    explorer.slider.value = 0.0  # every image called fake: nothing is called real
    assert explorer.shown["precision_real"] is None and explorer.shown["recall_real"] == 0.0
    assert "nan" not in explorer.numbers.value.lower()
    assert "undefined*" in explorer.numbers.value and "no image is called real" in explorer.numbers.value
    assert "not the run's threshold, 0.500" in explorer.numbers.value


def test_an_early_stop_closes_the_progress_bar_as_finished(monkeypatch, capsys):
    """Early stopping is a success: the widget bar is not painted red (tqdm reads a bar closed
    short of its total as a failure), and the one-line bar says why it stopped."""
    from tqdm.notebook import tqdm as widget_bar

    from deepfake_detector import progress

    def stop_at(bar, epoch):
        for step in bar:
            if step == epoch:
                progress.finish_early(bar, "early stopping: no better val loss for 10 epochs", step)
                break
        return bar

    bar = stop_at(widget_bar(range(1, 501), desc="epochs", leave=False), 69)
    del bar.iterable  # as when the loop's frame ends: the abandoned iteration is closed
    import gc
    gc.collect()
    assert bar.container.children[1].bar_style != "danger"
    assert bar.container.children[1].max == bar.container.children[1].value == 69

    monkeypatch.setenv(progress.ENV, "log")
    stop_at(progress.tqdm(range(1, 501), desc="epochs", unit="epoch"), 69)
    line = capsys.readouterr().err
    assert "69/69" in line and "early stopping: no better val loss for 10 epochs" in line
    assert "stopped after 69 of at most 500" in line
