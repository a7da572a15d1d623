"""Hostile but real inputs (issue 13): nothing that is not ours is deleted, nothing hangs, memory
stays bounded, every image mode is the right picture, and each problem gets one clear message."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detector import images as images_module
from deepfake_detector.cli import main
from deepfake_detector.data import ImageLoadError, open_image
from deepfake_detector.manifest import RUN_MANIFEST, read_run_manifest, record_written
from deepfake_detector.split import SplitWarning, split_dataset
from deepfake_detector.split_read import read_split_manifest
from deepfake_detector.run_dir import RunExistsError, prepare_run_dir
from deepfake_detector.train import TrainConfig, train

from conftest import make_raw_dataset


@pytest.fixture(autouse=True)
def never_hang():
    """A test that blocks (a FIFO opened for reading) fails after 120 s instead of hanging CI."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def timeout(*_):
        raise TimeoutError("blocked for 120 s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def quick_config(data, out, **changes) -> TrainConfig:
    settings = dict(data_dir=str(data), out_dir=str(out), weights="none", img_size=32, epochs=2,
                    lr=1e-2, cache_dir="", num_workers=0)
    return TrainConfig(**{**settings, **changes})


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def rgb_pixels(seed: int, size=(12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


# --- 1. deleting is safe: the run manifest ------------------------------------------------------


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(split_data, tmp_path):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "src" / "thesis.tex").write_text("three years of work")
    before = tree(project)
    with pytest.raises(RunExistsError, match="not a run directory"):
        train(quick_config(split_data, project, overwrite=True), log_to_console=False)
    assert tree(project) == before


def test_overwrite_replaces_what_the_project_wrote_and_refuses_anything_else(
        split_data, run_to_change, capsys):
    from deepfake_detector.explain import explain_run
    from deepfake_detector.inference import evaluate_run
    run = run_to_change  # a complete run, as train() leaves it
    manifest = read_run_manifest(run)
    assert manifest["complete"] is True
    on_disk = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {RUN_MANIFEST}
    # Later additions: evaluate, gradcam, and a figure the notebook records itself.
    evaluate_run(run, split_data, "val", n_bootstrap=10, log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explain_run(run, [split_data / "val"], run / "gradcam", max_images=3)
    (run / "notebook").mkdir()
    (run / "notebook" / "batch.png").write_bytes(b"a figure the notebook saved")
    record_written(run, [run / "notebook"])
    assert {"eval/data-val/metrics.json", "gradcam/index.csv", "notebook/batch.png"} \
        <= set(read_run_manifest(run)["files"])

    # Something that is not ours: refused, named, and nothing is deleted.
    (run / "gradcam" / "my notes.txt").write_text("mine")
    (run / "report.md").write_text("edited by hand")
    before = tree(run)
    with pytest.raises(RunExistsError, match=r"(?s)2 file\(s\).*gradcam/my notes.txt.*report.md "
                                             r"\(edited since"):
        train(quick_config(split_data, run, overwrite=True), log_to_console=False)
    assert tree(run) == before
    # The CLI says the same in one line of error, exit code 2.
    assert main(["train", "--data", str(split_data), "--out", str(run), "--weights", "none",
                 "--img-size", "32", "--epochs", "2", "--cache-dir", "", "--overwrite"]) == 2
    assert "gradcam/my notes.txt" in capsys.readouterr().err

    (run / "gradcam" / "my notes.txt").unlink()
    (run / "report.md").unlink()
    (run / ".DS_Store").write_bytes(b"clutter")  # an OS's clutter is not worth a refusal
    fresh = prepare_run_dir(str(run), overwrite=True)  # what train --overwrite does first
    assert fresh == run and [p.name for p in run.rglob("*")] == [RUN_MANIFEST]
    assert read_run_manifest(run) == {**read_run_manifest(run), "complete": False, "files": {}}


def test_recording_claims_only_what_changed_inside_the_block(tmp_path):
    from deepfake_detector.manifest import foreign_files, recording
    run = prepare_run_dir(str(tmp_path / "run"), overwrite=False)
    (run / "before.txt").write_text("the user's")
    with recording(run / "figures"):
        (run / "figures").mkdir()
        (run / "figures" / "plot.png").write_bytes(b"ours")
    assert set(read_run_manifest(run)["files"]) == {"figures/plot.png"}
    assert foreign_files(run) == ["before.txt"]
    with recording(tmp_path / "elsewhere"):  # outside any run: nothing to record, no error
        (tmp_path / "elsewhere").mkdir()


def test_prepare_run_dir_refuses_a_symlink_inside_a_run(tmp_path):
    run = prepare_run_dir(str(tmp_path / "run"), overwrite=False)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep")
    os.symlink(tmp_path / "precious", run / "link")
    with pytest.raises(RunExistsError, match="link"):
        prepare_run_dir(str(run), overwrite=True)
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep"


# --- 2. special files: no hang, no unbounded read -----------------------------------------------


def special_files(folder: Path) -> list[str]:
    """A FIFO and a link to /dev/zero named like images, where the OS has them."""
    made = []
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.jpg")
        made.append("pipe.jpg")
    if Path("/dev/zero").exists():
        os.symlink("/dev/zero", folder / "zeros.jpg")
        made.append("zeros.jpg")
    if not made:
        pytest.skip("this OS has neither FIFOs nor /dev/zero")
    return made


def test_split_audit_predict_skip_fifos_and_devices(tmp_path, trained_run):
    from deepfake_detector.audit import audit_split
    from deepfake_detector.inference import predict_paths
    raw = make_raw_dataset(tmp_path / "raw", n_real=6, n_fake=6, size=16)
    names = special_files(raw / "real")
    with pytest.warns(SplitWarning) as caught:
        summary = split_dataset(raw, tmp_path / "data")
    excluded = dict(summary.excluded)
    for name in names:
        assert "not a regular file" in excluded[f"real/{name}"]
    assert any(f"Left out {len(names)} files" in str(w.message) for w in caught)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        findings = audit_split(raw, out_dir=tmp_path / "audit")
    assert {Path(u["path"]).name for u in findings["unreadable"]} == set(names)

    with pytest.warns(UserWarning, match=f"{len(names)} file\\(s\\) could not be read") as caught:
        rows = predict_paths(trained_run, [raw / "real"], num_workers=0)
    assert len(rows) == 6
    assert all(name in str(caught[0].message) for name in names)
    # Named on the command line: the same reason, one line, no hang.
    named = [str(raw / "real" / name) for name in names]
    with pytest.raises(ValueError, match="No readable images"), \
            pytest.warns(UserWarning, match="not a regular file"):
        predict_paths(trained_run, named, num_workers=0)


# --- 3. Grad-CAM of big images: downscaled before any float work --------------------------------


def test_gradcam_overlays_are_capped_on_the_long_side(tmp_path):
    from deepfake_detector.explain import (OVERLAY_MAX_SIDE, ExplainOptions, display_image,
                                           explain_images)
    from deepfake_detector.preprocessing import Preprocessing
    from deepfake_detector.model import build_model
    assert OVERLAY_MAX_SIDE == 4096
    wide = Image.new("RGB", (5000, 20), (10, 20, 30))
    assert display_image(wide).size == (4096, 16)
    assert display_image(Image.new("RGB", (300, 200))).size == (300, 200)  # small: untouched

    model = build_model("none", seed=0)[0]
    paths = [png(tmp_path / "big.png", rgb_pixels(1, (100, 200))),
             png(tmp_path / "small.png", rgb_pixels(2, (30, 40)))]
    summary = explain_images(model, paths, tmp_path / "cam", Preprocessing(32, decode="full"),
                             options=ExplainOptions(max_side=64))
    sizes = {Path(row).name.split("__")[0]: Image.open(row).size
             for row in (tmp_path / "cam" / "overlays").rglob("*.png")}
    assert sizes == {"big": (64, 32), "small": (40, 30)}
    assert summary["complete"] is True


# --- 4. beyond the pixel limit: one clear message, PIL's global untouched ------------------------


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that claims to be width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_images_beyond_the_pixel_limit_get_one_clear_message(tmp_path, monkeypatch):
    global_limit = Image.MAX_IMAGE_PIXELS
    bomb = png_with_header_size(tmp_path / "bomb.png", 20_000, 10_000)  # 200 MP
    with pytest.raises(ImageLoadError, match=r"bomb.png: .*200,000,000 pixels, "
                                             r"above the limit of 178,956,970"):
        open_image(bomb)
    assert Image.MAX_IMAGE_PIXELS == global_limit  # the project never changes PIL's global
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone else switched PIL's check off
    with pytest.raises(ImageLoadError, match=r"200,000,000 pixels \(20000 x 10000\), above the limit"):
        open_image(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # or set it lower: still one message
    fine = png(tmp_path / "fine.png", rgb_pixels(3))  # 192 pixels
    with pytest.raises(ImageLoadError, match="192 pixels, above the limit of 100 "):
        open_image(fine)


def test_gradcam_and_evaluate_skip_unreadable_files_and_list_them(tmp_path, trained_run):
    from deepfake_detector.explain import explain_run
    from deepfake_detector.inference import evaluate_run
    folder = make_raw_dataset(tmp_path / "plain", n_real=4, n_fake=4, size=16)
    png_with_header_size(folder / "fake" / "bomb.png", 20_000, 10_000)
    (folder / "real" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"2 of 10 image\(s\) could not be read") as caught:
        summary = explain_run(trained_run, [folder], tmp_path / "cam")
    message = "\n".join(str(w.message) for w in caught)
    assert "bomb.png: 200,000,000 pixels" in message and "limit of 178,956,970" in message
    assert "broken.png: not an image" in message
    assert summary["n_images"] == 8 and len(summary["skipped"]) == 2
    with pytest.warns(UserWarning, match=r"(?s)2 file\(s\) could not be read.*bomb.png"):
        metrics = evaluate_run(trained_run, folder, out_dir=tmp_path / "eval", n_bootstrap=10,
                               log=lambda m: None)
    assert metrics["n_images"] == 8


# --- 5. every image mode is the right picture ----------------------------------------------------


def grey_twin(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (10, 14), dtype=np.uint8)


def test_sixteen_bit_and_float_images_match_their_8_bit_twin(tmp_path):
    grey = grey_twin(0)
    expected = np.repeat(grey[..., None], 3, axis=2)
    sixteen = png(tmp_path / "g16.png", grey.astype(np.uint16) * 257)  # PIL opens it as I;16
    assert Image.open(sixteen).mode == "I;16"
    np.testing.assert_array_equal(np.asarray(open_image(sixteen)), expected)
    wide = tmp_path / "g32.tif"
    Image.fromarray(grey.astype(np.int32) * 257, "I").save(wide)
    np.testing.assert_array_equal(np.asarray(open_image(wide)), expected)
    unit_float = tmp_path / "f01.tif"
    Image.fromarray(grey.astype(np.float32) / 255, "F").save(unit_float)
    np.testing.assert_array_equal(np.asarray(open_image(unit_float)), expected)
    byte_float = tmp_path / "f255.tif"
    Image.fromarray(grey.astype(np.float32), "F").save(byte_float)
    np.testing.assert_array_equal(np.asarray(open_image(byte_float)), expected)
    # The bug: PIL's own conversion clips 16-bit values at 255, a nearly white picture.
    assert np.asarray(Image.open(sixteen).convert("RGB")).mean() > 250 > np.asarray(
        open_image(sixteen)).mean() + 100


def test_transparency_is_composited_over_white(tmp_path):
    rgb = rgb_pixels(1)
    alpha = np.random.default_rng(2).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    a = alpha[..., None] / 255.0
    expected = np.rint(rgb * a + 255 * (1 - a))
    rgba = png(tmp_path / "rgba.png", np.dstack([rgb, alpha]))
    np.testing.assert_allclose(np.asarray(open_image(rgba), dtype=float), expected, atol=1)
    grey = np.random.default_rng(3).integers(0, 256, alpha.shape, dtype=np.uint8)
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(la)
    expected_grey = np.rint(grey[..., None] * a + 255 * (1 - a)).repeat(3, axis=2)
    np.testing.assert_allclose(np.asarray(open_image(la), dtype=float), expected_grey, atol=1)
    # A palette image with one transparent colour: that colour turns white, the rest stays.
    palette = Image.fromarray(rgb).quantize(8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    index = np.asarray(Image.open(tmp_path / "p.png"))
    expected = np.asarray(palette.convert("RGB")).copy()
    expected[index == 0] = 255
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "p.png")), expected)


def test_cmyk_greyscale_and_palette_match_their_rgb_twin(tmp_path):
    rgb = rgb_pixels(4)
    cmyk = tmp_path / "cmyk.tif"
    Image.fromarray(rgb).convert("CMYK").save(cmyk)
    np.testing.assert_array_equal(np.asarray(open_image(cmyk)), rgb)
    grey = grey_twin(5)
    np.testing.assert_array_equal(np.asarray(open_image(png(tmp_path / "l.png", grey))),
                                  np.repeat(grey[..., None], 3, axis=2))
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "p.png")),
                                  np.asarray(palette.convert("RGB")))


def test_open_image_takes_a_file_object_too(tmp_path):
    import io
    path = png(tmp_path / "x.png", rgb_pixels(6))
    np.testing.assert_array_equal(np.asarray(open_image(io.BytesIO(path.read_bytes()))),
                                  rgb_pixels(6))
    with pytest.raises(ImageLoadError, match="uploaded bytes"):
        open_image(io.BytesIO(b"junk"))


def test_feature_cache_key_version_was_bumped():
    from deepfake_detector.features import CACHE_FORMAT
    assert CACHE_FORMAT >= 2  # pixels of 16-bit, float and transparent images changed


# --- multi-frame files: the first frame, with a note; .gif listed like any image ------------------


def test_animated_gif_first_frame_everywhere_with_a_note(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", n_real=3, n_fake=3, size=16)
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(raw / "fake" / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(np.asarray(open_image(raw / "fake" / "anim.gif"))[0, 0],
                                  [255, 0, 0])
    with pytest.warns(SplitWarning, match=r"(?s)only the first frame.*fake/anim.gif: 2 frames"):
        summary = split_dataset(raw, tmp_path / "data")
    assert sum(summary.counts[s]["fake"] for s in summary.counts) == 4  # the GIF is in the split


def test_predict_of_an_animated_gif_says_first_frame(tmp_path, trained_run):
    from deepfake_detector.inference import predict_paths
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    png(tmp_path / "still.png", rgb_pixels(8, (16, 16)))
    with pytest.warns(UserWarning, match=r"(?s)1 file\(s\) hold several frames.*anim.gif: 2 frames"):
        rows = predict_paths(trained_run, [tmp_path], num_workers=0)
    assert [row["image_id"] for row in rows] == ["anim.gif", "still.png"]  # listed like any image


# --- 6. hard links to the resolved target --------------------------------------------------------


def test_hardlink_mode_links_the_target_of_a_relative_symlink(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", n_real=3, n_fake=3, size=16)
    outside = png(tmp_path / "outside" / "x.png", rgb_pixels(7))
    os.symlink("../../outside/x.png", raw / "real" / "rel.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        split_dataset(raw, tmp_path / "data", link_mode="hardlink")
    row = next(r for r in read_split_manifest(tmp_path / "data") if r["source"] == "real/rel.png")
    placed = tmp_path / "data" / row["path"]
    assert not placed.is_symlink() and placed.read_bytes() == outside.read_bytes()
    assert placed.stat().st_ino == outside.stat().st_ino  # a hard link to the file itself
    again = split_dataset(raw, tmp_path / "data", link_mode="hardlink")
    assert again.status == "unchanged" and again.restored == 0


# --- 7 and 8. arguments checked first; a failed train never blocks its retry -----------------------


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "epochs must be a whole number >= 1"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"img_size": 0}, "img_size must be a whole number >= 1"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"weights": "missing.pth"}, "Weights file not found"),
])
def test_bad_arguments_fail_before_anything_is_written(split_data, tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises((ValueError, OSError), match=message):
        train(quick_config(split_data, out, **change), log_to_console=False)
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--weights", "none", "--epochs", "0"], "--epochs: must be a whole number >= 1"),
    (["train", "--weights", "none", "--batch-size", "0"], "--batch-size"),
    (["train", "--weights", "none", "--img-size", "0"], "--img-size"),
    (["train", "--weights", "none", "--lr", "-3"], '--lr: must be a positive number or "find"'),
    (["gradcam", "--run", "r", "--images", "x", "--out", "o", "--max-images", "-1"],
     "--max-images"),
])
def test_cli_rejects_bad_numbers_before_running(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_accepts_lr_find():
    from deepfake_detector.config import positive_float_or_find
    assert positive_float_or_find("find") == "find" and positive_float_or_find("3e-4") == 3e-4


def test_an_interrupted_train_is_replaced_by_its_retry(split_data, tmp_path, monkeypatch):
    from deepfake_detector import train as train_module
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(quick_config(split_data, out), log_to_console=False)
    assert read_run_manifest(out)["complete"] is False and (out / "audit").is_dir()
    assert "train.log" in read_run_manifest(out)["files"]
    with pytest.raises(RunExistsError, match="--overwrite"):  # a complete run is another matter
        prepare_run_dir(str(trained_run_copy(tmp_path)), overwrite=False)
    # The retry (train calls prepare_run_dir first) replaces the unfinished run without --overwrite.
    assert prepare_run_dir(str(out), overwrite=False) == out
    assert [p.name for p in out.rglob("*")] == [RUN_MANIFEST]


def trained_run_copy(tmp_path: Path) -> Path:
    """A complete run, as far as prepare_run_dir can tell."""
    run = prepare_run_dir(str(tmp_path / "complete"), overwrite=False)
    (run / "checkpoint.pt").write_bytes(b"weights")
    record_written(run, [run / "checkpoint.pt"])
    from deepfake_detector.manifest import mark_complete
    mark_complete(run)
    return run


def test_gradcam_max_images_must_be_positive(tmp_path):
    from deepfake_detector.explain import explain_images
    from deepfake_detector.model import build_model
    from deepfake_detector.preprocessing import Preprocessing
    with pytest.raises(ValueError, match="max_images must be a whole number >= 1"):
        explain_images(build_model("none")[0], [tmp_path / "x.png"], tmp_path,
                       Preprocessing(32, decode="full"), max_images=-1)


# --- 9. broken, foreign and malicious checkpoints --------------------------------------------------


class Payload:
    """Unpickling this would create a file: proof that a checkpoint's code never runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind, message", [
    ("truncated", "is damaged or not a PyTorch checkpoint"),
    ("foreign", "is not a checkpoint of this project"),
    ("malicious", "so it is not loaded"),
    ("wrong_shapes", "does not hold this project's single-logit ResNet-18"),
])
def test_broken_checkpoints_get_one_clear_line(trained_run, tmp_path, capsys, kind, message):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = run / "checkpoint.pt"
    marker = tmp_path / "pickle-ran"
    if kind == "truncated":
        data = (trained_run / "checkpoint.pt").read_bytes()
        checkpoint.write_bytes(data[:len(data) // 2])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, checkpoint)
    elif kind == "malicious":
        torch.save({"model_state": Payload(marker)}, checkpoint)
    else:
        stored = torch.load(trained_run / "checkpoint.pt", weights_only=True)
        stored["model_state"]["fc.weight"] = torch.zeros(2, 512)
        torch.save(stored, checkpoint)
    assert main(["predict", "--run", str(run), str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "weights_only" not in err and "Train the run again" in err
    assert not marker.exists()


def test_malicious_weights_file_is_refused_without_weights_only_advice(tmp_path):
    from deepfake_detector.model import WeightsUnavailableError, load_weights_file
    marker = tmp_path / "pickle-ran"
    torch.save({"layer4.1.conv2.weight": Payload(marker)}, tmp_path / "w.pth")
    with pytest.raises(WeightsUnavailableError) as error:
        load_weights_file(tmp_path / "w.pth")
    assert "not loaded" in str(error.value) and "weights_only" not in str(error.value)
    assert not marker.exists()


# --- 10. one policy for bad files; interrupted Grad-CAM carries on -----------------------------------


def test_train_on_a_hand_made_split_skips_and_lists_bad_files(split_data, tmp_path):
    data = tmp_path / "hand"
    for split in ("train", "val"):
        shutil.copytree(split_data / split, data / split)
    (data / "train" / "real" / "broken.png").write_bytes(b"junk")
    (data / "val" / "fake" / "empty.png").write_bytes(b"")
    from deepfake_detector.train import usable_split
    with pytest.warns(SplitWarning) as caught:  # what train() reads its items with
        train_items, val_items = usable_split(data, "train"), usable_split(data, "val")
    messages = "\n".join(str(w.message) for w in caught)
    assert "train/real/broken.png: not an image" in messages
    assert "val/fake/empty.png: empty file" in messages
    assert len(train_items) == 64 and len(val_items) == 16
    assert usable_split(split_data, "train") == usable_split(split_data, "train")  # split.csv: as is


def test_an_interrupted_gradcam_leaves_a_consistent_index_and_carries_on(tmp_path, monkeypatch):
    from deepfake_detector import explain as gradcam  # the loop, and the map function it calls
    from deepfake_detector.model import build_model
    from deepfake_detector.preprocessing import Preprocessing
    prep = Preprocessing(img_size=32, decode="full")
    model = build_model("none", seed=0)[0]
    paths = [png(tmp_path / f"im{i}.png", rgb_pixels(i, (20, 20))) for i in range(5)]
    out = tmp_path / "cam"
    real_pass, calls = gradcam.grad_cam_with_logits, []

    def interrupted_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_pass(*args, **kwargs)
    monkeypatch.setattr(gradcam, "grad_cam_with_logits", interrupted_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        gradcam.explain_images(model, paths, out, prep, batch_size=2)
    summary = json.loads((out / "summary.json").read_text())
    index = (out / "index.csv").read_text().splitlines()
    assert summary["complete"] is False and summary["n_images"] == 2 and len(index) == 3
    assert len(list((out / "overlays").rglob("*.png"))) == 2
    assert not list(out.rglob(".*.tmp"))  # nothing half written

    calls.clear()
    monkeypatch.setattr(gradcam, "grad_cam_with_logits", lambda *a, **k: (calls.append(1),
                                                                          real_pass(*a, **k))[1])
    summary = gradcam.explain_images(model, paths, out, prep, batch_size=2)
    assert summary["complete"] is True and summary["n_images"] == 5
    assert len(calls) == 2  # images 3-5 only: the first two were not explained again
    assert len(list((out / "overlays").rglob("*.png"))) == 5
    assert np.load(out / "raw_cams.npy").shape[0] == 5


# --- also -------------------------------------------------------------------------------------------


def test_audit_of_an_interrupted_split_flags_the_missing_files(tmp_path):
    from deepfake_detector.audit import audit_split
    raw = make_raw_dataset(tmp_path / "raw", n_real=10, n_fake=10, size=16)
    split_dataset(raw, tmp_path / "data")
    rows = read_split_manifest(tmp_path / "data")
    for row in rows[:15]:
        (tmp_path / "data" / row["path"]).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        findings = audit_split(tmp_path / "data", out_dir=tmp_path / "audit")
    assert any(flag.startswith("15 of the 20 files listed") and "split again" in flag
               for flag in findings["flags"])


def test_ctrl_c_ends_with_one_line_and_exit_code_130(monkeypatch, capsys):
    from deepfake_detector import cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run", interrupted)
    assert main(["split", "--raw", "r", "--out", "o"]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("interrupted:") and "re-running the same command" in err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32",
                    reason="POSIX signals")
def test_sigterm_ends_a_command_like_ctrl_c(monkeypatch, capsys):
    import time
    from deepfake_detector import cli

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "run", killed)
    assert main(["train", "--weights", "none"]) == 130
    assert capsys.readouterr().err.startswith("interrupted: the run folder is kept")
    assert signal.getsignal(signal.SIGTERM) == before  # put back for whoever called main()


def test_train_on_raw_data_suggests_a_split_into_another_folder(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "dataset_raw", n_real=3, n_fake=3, size=16)
    assert main(["train", "--data", str(raw), "--out", str(tmp_path / "run"),
                 "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert f"split --raw {raw} --out {tmp_path / 'data'}" in err
    assert f"'{raw}'" not in err and not (tmp_path / "run").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_only_regular_files_are_opened(tmp_path):
    assert images_module.regular_file_problem(tmp_path) == "a folder, not a regular file: not read"
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    assert images_module.regular_file_problem(tmp_path / "dangling.png") == "a broken symbolic link"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(ImageLoadError, match="named pipe"):
            open_image(tmp_path / "pipe.png")
