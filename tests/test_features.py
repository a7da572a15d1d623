"""Feature cache and the bulk image pipeline: keys that cannot serve stale features, exact cache hits,
float16 storage, augmented views, the uint8 hand-over, predict skipping unreadable files, and predict
streaming its rows to a file batch by batch."""
from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_detector import features
from deepfake_detector.data import (IMAGENET_MEAN, IMAGENET_STD, collate, eval_transform, make_loader,
                                    normalize_batch, open_image, try_open_image, uint8_transform)
from deepfake_detector.features import Views, cache_key, cached_features, extract_features
from deepfake_detector.predictions import read_predictions
from deepfake_detector.inference import (iter_predictions, predict_paths, predict_probabilities,
                                          predict_to_file)
from deepfake_detector.model import build_model
from deepfake_detector.preprocessing import Preprocessing
from deepfake_detector.discovery import check_image

from conftest import checkerboard_fake, smooth_noise, write_images

SIZE = 32  # px: every test here runs the backbone on a handful of tiny images
PREP = Preprocessing(img_size=SIZE, decode="full")


@pytest.fixture(scope="module")
def model():
    return build_model("none", seed=0)[0]


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    real = write_images(tmp_path / "real", [smooth_noise(rng, 24) for _ in range(3)], "real")
    fake = write_images(tmp_path / "fake", [checkerboard_fake(rng, 40) for _ in range(3)], "fake")
    return [(path, 0) for path in real] + [(path, 1) for path in fake]


def key(model, items, img_size=SIZE, augmentation=None, n_views=1, seed=0, precision="fp32"):
    prep = dataclasses.replace(PREP, img_size=img_size, precision=precision)
    return cache_key(model, items, prep, Views(augmentation, n_views, seed))


def test_cache_key_changes_with_everything_the_features_depend_on(model, items):
    model = copy.deepcopy(model)  # its weights are changed below
    base = key(model, items)
    assert key(model, items) == base
    assert key(model, items, img_size=SIZE + 1) != base
    assert key(model, items[::-1]) != base  # order
    assert key(model, [(p, 1 - y) for p, y in items]) != base  # labels
    assert key(model, items, augmentation={"hflip": True}, n_views=2) != base
    assert key(model, items, precision="bf16") != base  # AMP on a GPU: other features

    path = items[0][0]
    original = path.read_bytes()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(path)  # same name, other bytes
    assert key(model, items) != base
    path.write_bytes(original)
    assert key(model, items) == base

    with torch.no_grad():
        model.fc.weight += 1  # the head is not part of the features
    assert key(model, items) == base
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] += 1e-3
    assert key(model, items) != base


def test_a_cache_hit_returns_exactly_the_same_features(model, items, tmp_path):
    messages = []
    first = cached_features(model, items, PREP, cache_dir=tmp_path / "cache", num_workers=0,
                            log=messages.append)
    second = cached_features(model, items, PREP, cache_dir=tmp_path / "cache", num_workers=0,
                             log=messages.append)
    assert first.shape == (len(items), 512) and first.dtype == torch.float32
    assert "from the feature cache" in messages[-1]
    assert torch.equal(first, second)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary file left behind


def test_large_feature_sets_are_stored_as_float16(model, items, tmp_path, monkeypatch):
    exact = extract_features(model, items, PREP, num_workers=0)
    monkeypatch.setattr(features, "FLOAT16_ABOVE_N_IMAGES", 2)
    first = cached_features(model, items, PREP, cache_dir=tmp_path, num_workers=0, log=print)
    stored = torch.load(next(tmp_path.glob("features-*.pt")), weights_only=True)["features"]
    assert stored.dtype == torch.float16
    torch.testing.assert_close(first, exact, rtol=1e-3, atol=1e-6)
    # The run that extracted trains on what later runs read back: the same numbers either way.
    assert torch.equal(cached_features(model, items, PREP, cache_dir=tmp_path, num_workers=0,
                                       log=print), first)


def test_augmented_views_are_cached_per_image_and_differ(model, items, tmp_path):
    views = cached_features(model, items, PREP, cache_dir=tmp_path, num_workers=0,
                            views=Views({"hflip": True, "color_jitter": 0.3}, n=3), log=print)
    assert views.shape == (3, len(items), 512)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    plain = cached_features(model, items, PREP, cache_dir=tmp_path, num_workers=0, log=print)
    assert plain.shape == (len(items), 512)  # its own cache entry, not one of the views


def test_the_uint8_pipeline_gives_the_eval_transform_bit_for_bit(items):
    for size in (SIZE, 45):
        reference = torch.stack([eval_transform(size)(open_image(p)) for p, _ in items])
        batch = collate([(uint8_transform(size)(open_image(p)), y, i)
                         for i, (p, y) in enumerate(items)])[0]
        fast = normalize_batch(batch)
        assert torch.equal(fast, reference)
        assert fast.is_contiguous(memory_format=torch.channels_last)


def test_a_worker_process_gives_the_same_features(model, items):
    torch.testing.assert_close(extract_features(model, items, PREP, num_workers=1),
                               extract_features(model, items, PREP, num_workers=0))


def test_predict_streams_one_batch_at_a_time(model, items, monkeypatch):
    """Memory stays flat by design: the backbone only ever sees one batch, and the loader hands
    them over one by one (no list of every image is built)."""
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda images: seen.append(len(images)) or forward(images))
    probabilities = predict_probabilities(model, items * 2, PREP, batch_size=5, num_workers=0)
    assert seen == [5, 5, 2]
    assert probabilities.shape == (12,) and np.isfinite(probabilities).all()
    loader = make_loader(items * 2, uint8_transform(SIZE), batch_size=5, num_workers=0)
    assert not isinstance(loader.dataset, list) and len(next(iter(loader))[0]) == 5


@pytest.fixture
def run_dir(model, tmp_path):
    """The least a run directory needs for predict: a checkpoint."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model_state": model.state_dict(), "img_size": SIZE, "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD), "threshold": 0.5}, run / "checkpoint.pt")
    return run


def test_predict_skips_unreadable_files_with_one_warning(run_dir, items, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = []
    for i, (path, _) in enumerate(items[:3]):
        good.append(folder / f"good {i}.png")
        good[-1].write_bytes(path.read_bytes())
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    jpeg = folder / "truncated.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:300])

    broken = ["empty.png", "text.jpg", "truncated.jpg"]
    for name in broken:  # the same verdicts as the split step's check
        assert try_open_image(folder / name)[1] == check_image(folder / name) is not None
    assert try_open_image(good[0])[1] is None

    with pytest.warns(UserWarning, match="3 file\\(s\\) could not be read") as caught:
        rows = predict_paths(run_dir, [folder], batch_size=4, device="cpu", num_workers=0)
    assert all(name in str(caught[0].message) for name in broken)
    assert [row["image_id"] for row in rows] == [p.name for p in good]
    alone = predict_paths(run_dir, good, batch_size=4, device="cpu", num_workers=0)
    assert [r["prediction"] for r in rows] == pytest.approx([r["prediction"] for r in alone], abs=1e-6)


def test_predict_rows_arrive_batch_by_batch(run_dir, items, tmp_path, monkeypatch):
    """iter_predictions is lazy: the first row is out after one batch has been decoded, not after
    the whole folder, so a writer fed from it holds one batch at a time."""
    from deepfake_detector import data
    decoded = []
    real_open = data.try_open_image
    monkeypatch.setattr(data, "try_open_image", lambda path, *rest: decoded.append(path) or real_open(path, *rest))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4):
        for path, _ in items:
            (folder / f"{i} {path.name}").write_bytes(path.read_bytes())
    rows = iter_predictions(run_dir, [folder], batch_size=4, device="cpu", num_workers=0)
    first = next(rows)
    assert first["image_id"] == sorted(p.name for p in folder.iterdir())[0]
    assert len(decoded) <= 2 * 4  # this batch and the one queued behind it (read back one late)
    assert 1 + sum(1 for _ in rows) == 24 and len(decoded) == 24


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_to_file_writes_what_predict_paths_returns(run_dir, items, tmp_path, suffix):
    folder = items[0][0].parent.parent
    listed = predict_paths(run_dir, [folder], tmp_path / f"listed{suffix}", batch_size=4,
                           device="cpu", num_workers=0)
    n = predict_to_file(run_dir, [folder], tmp_path / f"streamed{suffix}", batch_size=4,
                        device="cpu", num_workers=0)
    assert n == len(listed) == 6
    assert (tmp_path / f"streamed{suffix}").read_bytes() == (tmp_path / f"listed{suffix}").read_bytes()
    assert read_predictions(tmp_path / f"streamed{suffix}") == listed


def test_a_folder_with_no_readable_image_leaves_no_file(run_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="could not be read"), \
            pytest.raises(ValueError, match="No readable images"):
        predict_to_file(run_dir, [folder], tmp_path / "out.csv", device="cpu", num_workers=0)
    assert list(tmp_path.glob("*out.csv*")) == []  # neither the file nor a temporary


def test_extraction_leaves_the_model_usable_by_autograd(items):
    """After a feature pass, no weight may be an inference tensor: Grad-CAM on layer3 (whose
    backward runs through layer4's convolutions) and fine-tuning the same model need autograd."""
    from deepfake_detector.gradcam import grad_cam
    model = build_model("none", seed=0)[0]
    extract_features(model, items, PREP, num_workers=0)
    assert not any(p.is_inference() for p in model.parameters())
    assert not any(b.is_inference() for b in model.buffers())
    images = torch.stack([eval_transform(SIZE)(open_image(path)) for path, _ in items[:2]])
    cams = grad_cam(model, images, "fake", layer=model.layer3[-1])
    assert cams.shape == (2, SIZE, SIZE)


# --- precision and determinism (issue 12) ------------------------------------------------------

def test_fp32_is_the_default_on_every_device_and_mixed_precision_is_opt_in():
    for device in ("cpu", "cuda", "mps"):
        assert features.autocast_dtype(torch.device(device)) == torch.float32
        assert features.autocast_dtype(torch.device(device), "bf16") == torch.bfloat16
        assert features.autocast_dtype(torch.device(device), "fp16") == torch.float16
    assert features.autocast_dtype(torch.device("cpu"), "amp") == torch.float32  # CPU bf16 is slow
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, amp"):
        features.autocast_dtype(torch.device("cpu"), "float32")


def test_the_cache_key_holds_the_chosen_precision(model, items, tmp_path):
    """fp32 features and bf16 ones are cached apart; fp32 keeps the key it always had on the CPU."""
    fp32 = cached_features(model, items, PREP, cache_dir=tmp_path, num_workers=0, log=lambda m: None)
    bf16 = cached_features(model, items, dataclasses.replace(PREP, precision="bf16"),
                           cache_dir=tmp_path, num_workers=0, log=lambda m: None)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    assert (tmp_path / f"features-{key(model, items)[:24]}.pt").is_file()
    assert (tmp_path / f"features-{key(model, items, precision='bf16')[:24]}.pt").is_file()
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    # bf16 keeps 8 bits of mantissa: features agree to a few percent of their scale, no better.
    assert (fp32 - bf16).abs().max() <= 0.05 * fp32.abs().max()


def test_deterministic_sets_the_flags_and_restores_them(monkeypatch):
    from deepfake_detector.determinism import deterministic
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        # cuDNN autotuning yields: it would pick the fastest kernel, not the same one each time
        with features.cudnn_autotune(torch.device("cuda")):
            assert not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_fp32_on_cuda_turns_tf32_off_for_the_block_only(monkeypatch):
    """exact_fp32 touches only flags, so it can be checked without a GPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with features.exact_fp32(torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is True
    with features.exact_fp32(torch.device("cuda"), "bf16"):
        assert torch.backends.cudnn.allow_tf32 is True  # mixed precision: nothing to keep exact


def test_the_head_in_fp32_is_the_whole_model_in_fp32(model):
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(features.head_in_fp32(model.eval(), images), model(images))
        with features.autocast_for(torch.device("cpu"), "bf16"):
            mixed = features.head_in_fp32(model, images)
    assert mixed.dtype == torch.float32  # the head ran in fp32 on the bf16 backbone's features
