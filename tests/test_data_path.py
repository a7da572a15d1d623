"""The data path of issue 12: large JPEGs decoded at reduced size (PIL's draft), the decode mode
in the feature-cache key and in the run, the device-side resize against PIL's, and every path
(extraction, predict, the plain loop, Grad-CAM, the app's uploads) feeding the model the same
tensors for a large JPEG."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detector.data import (DEVICE_RESIZE_MEAN_TOLERANCE, DEVICE_RESIZE_TOLERANCE,
                                    IMAGENET_MEAN, IMAGENET_STD,
                                    collate, eval_transform, normalize_batch, open_image,
                                    resize_batch, resolve_resize, uint8_transform)
from deepfake_detector.features import cache_key, extract_features
from deepfake_detector.explain import explain_images
from deepfake_detector.preprocessing import Preprocessing
from deepfake_detector.images import ImageLoadError, decode_image
from deepfake_detector.inference import iter_probabilities, load_run, predict_paths
from deepfake_detector.model import build_model
from deepfake_detector.image_path import image_batches
from deepfake_detector.train import TrainConfig, train
from deepfake_detector.uploads import explain_uploads


SIZE = 64  # px: the model's input here, so that a 512 px JPEG is decoded at 1/4 (128 px)


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour fields with fine grain: what JPEG's scaled decode and a resize act on."""
    coarse = rng.uniform(30, 225, (height // 16 + 1, width // 16 + 1, 3))
    field = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    return np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)


def save(path, pixels: np.ndarray, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.fixture(scope="module")
def model():
    return build_model("none", seed=0)[0].eval()


@pytest.fixture
def large_jpegs(tmp_path):
    rng = np.random.default_rng(0)
    return [save(tmp_path / "photos" / f"photo{i}.jpg", photo(rng, 448, 512), quality=90)
            for i in range(3)]


# --- reduced-size decoding ---------------------------------------------------------------------

@pytest.mark.parametrize("width, height, target, decoded, scale", [
    (1280, 1024, 224, (320, 256), 4),   # the photo: 1/4 is the smallest >= 224
    (1280, 1024, 100, (160, 128), 8),
    (900, 700, 224, (450, 350), 2),
    (600, 400, 224, (600, 400), 1),     # 400 < 2 x 224: no smaller scale keeps 224 px
    (32, 32, 224, (32, 32), 1),         # CIFAKE: untouched
])
def test_draft_decodes_a_jpeg_at_the_smallest_scale_still_at_or_above_the_target(
        tmp_path, width, height, target, decoded, scale):
    path = save(tmp_path / "a.jpg", photo(np.random.default_rng(1), height, width), quality=90)
    image, facts = decode_image(path, target_size=target)
    assert image.size == decoded and image.mode == "RGB"
    assert min(image.size) >= target or (width, height) == decoded
    assert facts["draft_scale"] == scale
    assert (facts["width"], facts["height"]) == (width, height)  # the file's own size
    full, full_facts = decode_image(path)
    assert full.size == (width, height) and full_facts["draft_scale"] == 1


def test_png_and_webp_decode_in_full_whatever_the_target(tmp_path):
    pixels = photo(np.random.default_rng(2), 512, 640)
    for name in ("a.png", "a.webp"):
        path = save(tmp_path / name, pixels)
        image, facts = decode_image(path, target_size=64)
        assert image.size == (640, 512) and facts["draft_scale"] == 1
        assert np.array_equal(np.asarray(image), np.asarray(decode_image(path)[0]))


def test_a_reduced_decode_is_close_to_the_full_decode_after_the_resize(large_jpegs):
    """What the model sees moves by a few levels, not more: libjpeg's scaled IDCT is a low-pass
    filter much like the resize's own."""
    for path in large_jpegs:
        draft = np.asarray(uint8_transform(SIZE)(open_image(path, SIZE)), dtype=float)
        full = np.asarray(uint8_transform(SIZE)(open_image(path)), dtype=float)
        assert 0 < np.abs(draft - full).mean() < 2.0  # levels of 0-255
        assert np.abs(draft - full).max() <= 24


def test_a_truncated_large_jpeg_fails_with_reduced_decoding_too(tmp_path, large_jpegs):
    data = large_jpegs[0].read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[:len(data) // 2])
    for target in (None, SIZE):
        with pytest.raises(ImageLoadError, match="truncated"):
            decode_image(broken, target_size=target)
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        open_image(broken, SIZE)


def test_exif_rotation_applies_to_the_reduced_decode(tmp_path):
    pixels = photo(np.random.default_rng(3), 512, 768)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, quality=90, exif=exif)
    image, facts = decode_image(path, target_size=SIZE)
    assert facts["draft_scale"] == 8 and image.size == (64, 96)  # 768 x 512 / 8, turned


# --- the cache key and the run's record ----------------------------------------------------------

def test_cache_key_tells_decode_modes_and_resize_places_apart(model, large_jpegs):
    items = [(path, 0) for path in large_jpegs]
    keys = {cache_key(model, items, Preprocessing(img_size=SIZE, decode=decode, resize=resize))
            for decode in ("draft", "full") for resize in ("pil", "device")}
    assert len(keys) == 4
    assert resolve_resize("auto", "cpu") == "pil"          # measured fastest on the CPU
    assert resolve_resize("auto", "cuda") == "device"
    assert resolve_resize("auto", "mps") == "device"
    assert resolve_resize("device", "cuda", augmentation={"hflip": True}) == "pil"
    with pytest.raises(ValueError, match="resize must be one of"):
        resolve_resize("gpu", "cpu")


def test_a_run_records_its_decode_and_predict_decodes_the_same_way(tmp_path):
    rng = np.random.default_rng(4)
    for split, n in (("train", 6), ("val", 3)):
        for label in ("real", "fake"):
            for i in range(n):
                pixels = photo(rng, 448, 512)
                if label == "fake":  # a checkerboard the random backbone picks up
                    pixels = np.clip(pixels.astype(int) + (np.indices((448, 512)).sum(0) % 2
                                                           * 60 - 30)[..., None], 0, 255)
                save(tmp_path / "data" / split / label / f"{label}{i}.jpg",
                     pixels.astype(np.uint8), quality=95)
    config = TrainConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"),
                         weights="none", img_size=SIZE, epochs=2, lr=1e-2, cache_dir="",
                         num_workers=0, probe=False)
    assert config.decode == "draft"  # new runs decode large JPEGs at reduced size
    run = train(config, log_to_console=False)
    model, checkpoint = load_run(run, "cpu")
    assert checkpoint["decode"] == "draft"
    assert json.loads((run / "config.json").read_text())["decode"] == "draft"

    files = sorted((tmp_path / "data" / "val").rglob("*.jpg"))
    items = [(f, -1) for f in files]

    def probabilities(decode):
        out = np.empty(len(items))
        prep = Preprocessing(img_size=SIZE, mean=checkpoint["mean"], std=checkpoint["std"],
                             decode=decode)
        for indices, p in iter_probabilities(model, items, prep, num_workers=0):
            out[indices] = p
        return out

    predicted = np.array([row["prediction"] for row in predict_paths(run, files, device="cpu",
                                                                     num_workers=0)])
    assert np.array_equal(predicted, probabilities("draft"))
    assert not np.array_equal(predicted, probabilities("full"))
    np.testing.assert_allclose(run.val_probabilities, probabilities("draft")[
        [files.index(p) for p in run.val_paths]], atol=1e-6)

    # A run from before the record: today's full decode, as it was trained.
    stored = torch.load(run / "checkpoint.pt", weights_only=True)
    del stored["decode"]
    torch.save(stored, run / "checkpoint.pt")
    old = np.array([row["prediction"] for row in predict_paths(run, files, device="cpu",
                                                               num_workers=0)])
    assert np.array_equal(old, probabilities("full"))


# --- the device resize against PIL's -------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(32, 32), (256, 320), (300, 400), (100, 50),
                                           (225, 700), (1024, 1280), (64, 64), (448, 320)])
@pytest.mark.parametrize("target", [224, 64])
def test_device_resize_gives_pils_pixels_within_the_stated_tolerance(height, width, target):
    rng = np.random.default_rng(height * width + target)
    for pixels in (rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                   photo(rng, height, width)):
        pil = uint8_transform(target)(Image.fromarray(pixels)).permute(2, 0, 1).float()
        device = resize_batch(torch.from_numpy(pixels)[None], target)[0]
        difference = (pil - device).abs()
        assert difference.max() <= DEVICE_RESIZE_TOLERANCE
        assert difference.mean() < DEVICE_RESIZE_MEAN_TOLERANCE  # a rounding boundary here and there
        if target % height == 0 and target % width == 0:  # a whole-factor upscale: exact
            assert difference.max() == 0


def test_device_resize_of_a_mixed_size_batch_keeps_its_order():
    rng = np.random.default_rng(5)
    sizes = [(40, 48), (32, 32), (40, 48), (96, 80), (32, 32)]
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    batch, _, indices = collate([(image, 0, i) for i, image in enumerate(images)])
    assert isinstance(batch, list) and indices.tolist() == list(range(5))
    resized = normalize_batch(batch, device="cpu", img_size=SIZE)
    assert resized.shape == (5, 3, SIZE, SIZE)
    assert resized.is_contiguous(memory_format=torch.channels_last)
    for image, row in zip(images, resized):
        alone = normalize_batch(image[None], device="cpu", img_size=SIZE)[0]
        assert torch.equal(row, alone)
    # images already at the size: the device resize changes nothing
    same = torch.from_numpy(rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    assert torch.equal(normalize_batch(same, img_size=SIZE), normalize_batch(same))


def test_device_resize_features_stay_within_tolerance_of_pil_resize_features(model, large_jpegs):
    """One uint8 level (0.0175 after normalisation) on a few pixels moves a random-init
    ResNet-18's 512 features by a small fraction of their spread."""
    items = [(path, 0) for path in large_jpegs]
    pil = extract_features(model, items, Preprocessing(SIZE, resize="pil"), num_workers=0)
    device = extract_features(model, items, Preprocessing(SIZE, resize="device"), num_workers=0)
    spread = pil.std().item()
    assert 0 < (pil - device).abs().max().item() < 0.05 * spread
    full = extract_features(model, items, Preprocessing(SIZE, decode="full", resize="pil"),
                            num_workers=0)
    assert (pil - full).abs().max() > (pil - device).abs().max()  # the decode mode matters more


# --- one picture for every path ------------------------------------------------------------------

class ModelInputs:
    """Records what reaches the backbone's first layer, one row per image."""

    def __init__(self, model):
        self.rows = []
        self.handle = model.conv1.register_forward_pre_hook(
            lambda module, args: self.rows.extend(args[0].detach().float().cpu()))

    def take(self) -> torch.Tensor:
        rows, self.rows = torch.stack(self.rows), []
        return rows


def test_extraction_predict_plain_loop_gradcam_uploads_and_widgets_see_the_same_tensors(
        model, large_jpegs, tmp_path):
    items = [(path, 0) for path in large_jpegs]
    reference = torch.stack([eval_transform(SIZE)(open_image(path, SIZE)) for path in large_jpegs])
    full = torch.stack([eval_transform(SIZE)(open_image(path)) for path in large_jpegs])
    assert not torch.equal(reference, full)  # the reduced decode is what is being checked
    inputs = ModelInputs(model)
    try:
        draft = Preprocessing(img_size=SIZE, decode="draft")
        extract_features(model, items, draft, num_workers=0)
        extraction = inputs.take()
        list(iter_probabilities(model, items, draft, num_workers=0))
        predict = inputs.take()
        config = TrainConfig(img_size=SIZE, batch_size=2, num_workers=0, decode="draft")
        plain = torch.cat([images.cpu() for images, _ in
                           image_batches(items, eval_transform(SIZE), config, None, "cpu")])
        explain_images(model, large_jpegs, tmp_path / "cams", draft, batch_size=2)
        gradcam = inputs.take()
        checkpoint = {"img_size": SIZE, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                      "decode": "draft"}
        explain_uploads(model, checkpoint, [(p.name, p.read_bytes()) for p in large_jpegs])
        uploads = inputs.take()
        from deepfake_detector.widgets import UploadBox
        box = UploadBox(model, draft, threshold=0.5)
        for path in large_jpegs:
            box.show_bytes(path.read_bytes(), path.name)
        upload_box = inputs.take()[::2]  # each upload: P(fake), then the map of its verdict
        device_resized = torch.cat([images for images, _ in image_batches(
            items, None, TrainConfig(img_size=SIZE, num_workers=0, decode="draft",
                                     resize="device"), None, "cpu")])
    finally:
        inputs.handle.remove()
    for name, seen in (("extraction", extraction), ("predict", predict), ("plain loop", plain),
                       ("Grad-CAM", gradcam), ("uploads", uploads),
                       ("the notebook's upload box", upload_box)):
        assert torch.equal(seen, reference), name
    tolerance = DEVICE_RESIZE_TOLERANCE / 255 / min(IMAGENET_STD) + 1e-6
    assert (device_resized - reference).abs().max() <= tolerance
    # the overlay is still drawn on the full picture, not on the reduced decode
    overlay = next((tmp_path / "cams" / "overlays").rglob("*.png"))
    assert Image.open(overlay).size == (512, 448)


# --- decoding the next batch while the model runs (data.decoded_ahead) --------------------------

def test_batches_decoded_ahead_are_the_loaders_and_its_errors_come_at_their_batch(tmp_path):
    import threading
    from deepfake_detector.data import decoded_ahead, make_loader, pixel_transform
    rng = np.random.default_rng(0)
    files = []
    for i in range(7):
        files.append(tmp_path / f"{i}.jpg")
        save(files[-1], photo(rng, 48 + 8 * i, 64), quality=90)
    items = [(f, i % 2) for i, f in enumerate(files)]
    loader = lambda items: make_loader(items, pixel_transform(32, "pil"), batch_size=3,  # noqa: E731
                                       num_workers=0, decode_size=32)
    before = threading.active_count()
    plain, ahead = list(loader(items)), list(decoded_ahead(loader(items)))
    assert len(ahead) == len(plain) == 3
    for (x, y, i), (x2, y2, i2) in zip(plain, ahead):
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(i, i2)

    (tmp_path / "broken.jpg").write_bytes(files[0].read_bytes()[:200])  # truncated
    seen = []
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        for batch in decoded_ahead(loader(items[:3] + [(tmp_path / "broken.jpg", 0)])):
            seen.append(batch)
    assert len(seen) == 1  # the first batch, then the error at the second
    assert threading.active_count() == before  # the decoding thread is gone
    with_workers = make_loader(items, pixel_transform(32, "pil"), batch_size=3, num_workers=1)
    assert [b[2].tolist() for b in decoded_ahead(with_workers)] == [[0, 1, 2], [3, 4, 5], [6]]


HUGE_PAGE_PROBE = """
import os, sys
before = os.environ.get("THP_MEM_ALLOC_ENABLE")
import deepfake_detector, torch
after_import = os.environ.get("THP_MEM_ALLOC_ENABLE")
if sys.argv[1] == "program":  # what the command line and the notebook's setup cell do
    from deepfake_detector.huge_pages import prefer_huge_pages
    prefer_huge_pages()
def huge_kb():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
start = huge_kb()
activations = torch.ones(64, 64, 112, 112)  # 205 MB: ResNet-18's first activation at batch 64
print(before, after_import, os.environ.get("THP_MEM_ALLOC_ENABLE"), huge_kb() - start)
"""


@pytest.mark.parametrize("preset, caller, on_huge_pages", [
    (None, "program", True),     # the command line / the notebook's setup cell: huge pages
    ("0", "program", False),     # the user said no: that wins
    (None, "import only", False),  # importing the package changes nothing in the process
])
def test_large_cpu_tensors_sit_on_huge_pages_when_the_program_asks(preset, caller, on_huge_pages):
    """prefer_huge_pages() (called by the command line and the notebook's setup cell, never by an
    import) asks PyTorch for transparent huge pages (THP_MEM_ALLOC_ENABLE): a 205 MB tensor then
    mostly sits on 2 MB pages; a value already in the environment wins."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[madvise]" not in thp.read_text():
        pytest.skip("needs Linux with transparent huge pages in madvise mode (as PyTorch asks)")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    done = subprocess.run([sys.executable, "-c", HUGE_PAGE_PROBE, caller], env=env,
                          capture_output=True, text=True, check=True)
    before, after_import, after, huge_kb = done.stdout.split()
    assert before == after_import == str(preset)  # the import alone leaves the environment be
    assert after == (preset or ("1" if caller == "program" else "None"))
    if on_huge_pages:
        # How many 2 MB pages the kernel can hand out depends on how fragmented the machine's free
        # memory is (144 of 205 MB on one CI run, 200 on a quiet one): the behaviour is "some, in
        # whole huge pages" here against exactly none below.
        assert int(huge_kb) >= 2048 and int(huge_kb) % 2048 == 0, f"{huge_kb} kB on huge pages"
    else:
        assert int(huge_kb) == 0


def test_the_command_line_turns_huge_pages_on(monkeypatch):
    """The program's start, not the import, sets the switch: main() does it before any command."""
    from deepfake_detector import cli
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert cli.main(["--", "audit", "--data", "/nonexistent-folder"]) == 2
    import os
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
