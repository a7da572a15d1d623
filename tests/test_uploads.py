"""The app's logic without the app: uploads decoded in memory, one pass, verdicts, overlays, card."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import watch_file_writes
import torch
from PIL import Image

from deepfake_detector import uploads
from deepfake_detector.cli import main
from deepfake_detector.demo_data import make_fake_example, synthetic_origin
from deepfake_detector.gradcam import raw_grad_cam, raw_grad_cam_both
from deepfake_detector.inference import decision_threshold, iter_predictions, load_run
from deepfake_detector.model import build_model


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height in its header and holds no pixels: what a decompression
    bomb looks like before it is decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_run(trained_run, device="cpu")


@pytest.fixture(scope="module")
def fake_png() -> bytes:
    return png_bytes(make_fake_example(seed=0, index=3, image_size=64)[1])


@pytest.mark.parametrize("size", [64, 97, 128])  # layer4 grids of 2x2, 4x4, 4x4
def test_both_targets_from_one_pass_equal_grad_cam_per_target(size):
    model, _ = build_model("none", seed=0)
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    maps, logits = raw_grad_cam_both(model, images)
    for target in ("fake", "real"):
        reference, reference_logits, _ = raw_grad_cam(model, images, target)
        assert torch.allclose(maps[target], reference, rtol=1e-5, atol=1e-7)
        assert torch.equal(logits, reference_logits)
    # Complementary by construction: where one map has evidence the other has none.
    assert not torch.any((maps["fake"] > 0) & (maps["real"] > 0))
    assert maps["fake"].sum() > 0 and maps["real"].sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert not model.layer4[-1]._forward_hooks  # the hook removed itself


def test_decision_threshold_is_the_val_threshold_when_the_run_has_one():
    assert decision_threshold({"threshold": 0.5, "val_threshold": 0.31}) == 0.31
    assert decision_threshold({"threshold": 0.5, "val_threshold": None}) == 0.5
    assert decision_threshold({}) == 0.5


@pytest.mark.parametrize("probability, threshold, band", [
    (0.05, 0.5, "confident"), (0.1999, 0.5, "confident"), (0.2, 0.5, "uncertain"),
    (0.5, 0.5, "uncertain"), (0.7999, 0.5, "uncertain"), (0.8, 0.5, "confident"),
    (0.99, 0.5, "confident"),
    (0.85, 0.9, "uncertain"),   # beyond 0.8 but the verdict is real: not confidently anything
    (0.1, 0.05, "uncertain"),   # under 0.2 but the verdict is fake
])
def test_confidence_band_edges(probability, threshold, band):
    assert uploads.confidence_band(probability, threshold) == band
    assert "0.2" in uploads.band_edges_text() and "0.8" in uploads.band_edges_text()


def test_p_fake_and_verdict_are_predicts(loaded, trained_run, split_data):
    model, checkpoint = loaded
    files = sorted((split_data / "val" / "fake").iterdir())[:3] + \
        sorted((split_data / "val" / "real").iterdir())[:3]
    results = uploads.explain_uploads(model, checkpoint, [(f.name, f.read_bytes()) for f in files])
    predicted = {row["image_id"]: row for row in iter_predictions(trained_run, files, device="cpu")}
    assert [r.name for r in results] == [f.name for f in files]
    for result in results:
        row = predicted[result.name]
        assert result.probability == pytest.approx(row["prediction"], abs=1e-5)
        assert result.threshold == checkpoint["val_threshold"]
        assert result.verdict == row["predicted_label"]
        assert result.probability == pytest.approx(1 / (1 + np.exp(-result.logit)), abs=1e-6)
        assert set(result.raw_cams) == {"fake", "real"}


def test_prediction_row_is_the_one_predict_prints(loaded, trained_run, split_data, capsys):
    model, checkpoint = loaded
    path = sorted((split_data / "val" / "fake").iterdir())[0]
    [result] = uploads.explain_uploads(model, checkpoint, [(path.name, path.read_bytes())])
    assert main(["predict", "--run", str(trained_run), "--device", "cpu", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    ours = json.loads(uploads.prediction_row_json(result))
    assert [list(row) for row in ours] == [list(row) for row in printed] == [["image_id", "prediction"]]
    assert ours[0]["image_id"] == printed[0]["image_id"] == path.name
    assert ours[0]["prediction"] == pytest.approx(printed[0]["prediction"], abs=1e-5)


def test_bad_uploads_get_a_message_naming_them_and_the_rest_go_through(loaded, fake_png):
    model, checkpoint = loaded
    batch = [
        ("good.png", fake_png),
        ("empty.png", b""),
        ("notes.png", b"these are my notes, not a picture\n"),
        ("cut.png", fake_png[: len(fake_png) // 2]),
        ("bomb.png", png_header_only(20_000, 20_000)),   # past PIL's own limit
        ("large.png", png_header_only(9_000, 6_000)),    # 54 MP: past the app's
        ("heavy.jpg", b"\xff" * (uploads.MAX_UPLOAD_BYTES + 1)),
        ("good again.png", fake_png),
    ]
    results = uploads.explain_uploads(model, checkpoint, batch)
    errors = {r.name: r.error for r in results}
    assert errors["good.png"] is None and errors["good again.png"] is None
    assert "empty" in errors["empty.png"] and "0 bytes" in errors["empty.png"]
    assert "not an image" in errors["notes.png"] and "JPEG, PNG" in errors["notes.png"]
    assert "cannot be decoded" in errors["cut.png"] and "truncated" in errors["cut.png"]
    assert "huge dimensions" in errors["bomb.png"]
    assert "9000 x 6000" in errors["large.png"] and "54 megapixels" in errors["large.png"]
    assert "over the 20 MB upload limit" in errors["heavy.jpg"]
    for name, error in errors.items():
        assert error is None or error.startswith(name + ": ")
    alone = uploads.explain_uploads(model, checkpoint, [("good.png", fake_png)])[0]
    good = [r for r in results if r.ok]
    assert [r.probability for r in good] == pytest.approx([alone.probability] * 2, abs=1e-6)


def test_a_multi_frame_file_uses_its_first_frame_and_says_so(loaded):
    model, checkpoint = loaded
    frames = [Image.fromarray(make_fake_example(0, i, 64)[1]) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    first = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")  # frame 0 as GIF keeps it
    [animated, still] = uploads.explain_uploads(
        model, checkpoint, [("clip.gif", buffer.getvalue()), ("frame0.png", png_bytes(first))])
    assert animated.n_frames == 3 and still.n_frames == 1 and not still.notes
    assert any("3 frames" in note and "first frame" in note for note in animated.notes)
    assert animated.probability == pytest.approx(still.probability, abs=1e-6)


def test_overlays_switch_target_and_opacity_without_a_second_pass(loaded, fake_png, monkeypatch):
    model, checkpoint = loaded
    checkpoint = dict(checkpoint, img_size=96)  # a 3x3 layer4 grid: maps with a shape to them
    [result] = uploads.explain_uploads(model, checkpoint, [("fake.png", fake_png)])
    monkeypatch.setattr(uploads, "raw_grad_cam_both", None)  # any further pass would fail
    image = np.asarray(result.image)
    assert np.array_equal(uploads.overlay_image(result, "fake", opacity=0.0), image)
    fake, real = (uploads.overlay_image(result, t, opacity=1.0) for t in ("fake", "real"))
    assert fake.shape == real.shape == image.shape and not np.array_equal(fake, real)
    assert np.array_equal(uploads.overlay_image(result, None, 0.6),
                          uploads.overlay_image(result, result.verdict, 0.6))
    png = uploads.overlay_png(result, "real", 0.4)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))),
                          uploads.overlay_image(result, "real", 0.4))
    assert uploads.overlay_file_name(result, "real") == "fake__gradcam_real.png"
    with pytest.raises(ValueError, match="target"):
        uploads.overlay_image(result, "predicted")


def test_large_images_are_kept_bounded_and_predicted_from_every_pixel(loaded):
    model, checkpoint = loaded
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (1000, 3000, 3), dtype=np.uint8)
    [result] = uploads.explain_uploads(model, checkpoint, [("wide.png", png_bytes(big))])
    assert result.original_size == (3000, 1000)
    assert max(result.image.size) == uploads.KEEP_MAX_SIDE
    assert max(result.preview.size) == uploads.PREVIEW_MAX_SIDE
    assert uploads.overlay_image(result, preview=True).shape == (*result.preview.size[::-1], 3)
    # The model's input came from the full image, as predict's does, not from the kept copy.
    from deepfake_detector.data import normalize_batch, uint8_transform
    pixels = uint8_transform(checkpoint["img_size"])(Image.fromarray(big))[None]
    with torch.no_grad():
        logit = model(normalize_batch(pixels, checkpoint["mean"], checkpoint["std"])).item()
    assert result.logit == pytest.approx(logit, abs=1e-5)


def test_same_name_twice_gets_two_image_ids(loaded, fake_png):
    model, checkpoint = loaded
    results = uploads.explain_uploads(model, checkpoint, [("a.png", fake_png), ("a.png", fake_png)])
    assert [r.image_id for r in results] == ["a.png", "a (2).png"]


def test_uploads_are_never_written_anywhere(loaded, fake_png, monkeypatch):
    model, checkpoint = loaded
    writes = watch_file_writes(monkeypatch)
    [result] = uploads.explain_uploads(model, checkpoint, [("fake.png", fake_png)])
    uploads.overlay_png(result)
    uploads.prediction_row_json(result)
    assert result.ok and writes == []


def test_model_card_reads_the_run(loaded, trained_run):
    _, checkpoint = loaded
    card = uploads.model_card(trained_run, checkpoint)
    assert card["random_init"] and card["weights"]["weights"] == "none"
    assert card["synthetic"] is None  # conftest's data are not the demo set
    assert card["threshold"] == checkpoint["val_threshold"] and "validation" in card["threshold_source"]
    assert card["img_size"] == 32 and card["trained_at"].startswith("20")
    assert card["data_counts"] == {"train": {"real": 32, "fake": 32}, "val": {"real": 8, "fake": 8}}
    rows = {row["metric"]: row for row in card["val_metrics"]}
    metrics = json.loads((trained_run / "metrics_val.json").read_text())
    assert rows["ROC-AUC"]["value"] == metrics["roc_auc"]
    assert rows["ROC-AUC"]["95% CI"] == metrics["ci"]["roc_auc"] and len(metrics["ci"]["roc_auc"]) == 2
    assert card["cross_dataset"] == []


def test_model_card_of_a_synthetic_run_with_cross_dataset_rows(tmp_path):
    record = {"raw_dir": "data/synthetic/raw", "generator": "deepfake_detector.demo_data"}
    (tmp_path / "config.json").write_text(json.dumps({"synthetic_data": record,
                                                      "trained_at": "2026-11-23T12:00:00+00:00"}))
    rows = [{"test set": "cifake/val", "n_images": 200, "roc_auc": 0.61, "accuracy": 0.55}]
    (tmp_path / "cross_dataset.json").write_text(json.dumps(rows))
    (tmp_path / "metrics_val.json").write_text("{not json")
    checkpoint = {"weights": {"weights": "imagenet", "pretrained": True}, "img_size": 224,
                  "threshold": 0.5}
    card = uploads.model_card(tmp_path, checkpoint)
    assert card["synthetic"] == record and not card["random_init"]
    assert card["cross_dataset"] == rows and card["val_metrics"] == []
    assert card["threshold"] == 0.5 and "no threshold chosen on val" in card["threshold_source"]


def test_training_on_the_demo_set_is_recorded_in_the_run(demo_run, split_data):
    config = json.loads((demo_run / "config.json").read_text())
    assert config["synthetic_data"]["generator"] == "deepfake_detector.demo_data"
    assert Path(config["synthetic_data"]["raw_dir"]).name == "raw"
    assert synthetic_origin(split_data) is None
