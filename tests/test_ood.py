"""Is an image like the training data? The Mahalanobis OOD score (ood.py) on synthetic Gaussians,
then on the shared tiny run: its own images pass, another domain and noise are flagged, a flagged
image is never "confident", predict's columns, and a run from before the statistics."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector import uploads
from deepfake_detector.cli import main
from deepfake_detector.inference import iter_predictions
from deepfake_detector.manifest import read_run_manifest
from deepfake_detector.ood import Assessment, OodStats, assess, fit_ood, native_long_side
from deepfake_detector.run_dir import OOD_STATS, load_run, read_ood_stats

OOD_COLUMNS = ["ood_score", "ood_percentile", "ood_flag", "size_flag", "unlike_training"]


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def gradient(rng, size: int = 32) -> np.ndarray:
    """A linear colour ramp: nothing like the toy set's blocky noise (another domain)."""
    ramp = np.linspace(0, 255, size)[None, :, None] * rng.uniform(0.2, 1, 3)
    return np.broadcast_to(ramp, (size, size, 3))


def noise(rng, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3))


def gaussians(rng, n: int, shift: float = 0.0, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two classes with a shared, correlated covariance; `shift` moves both far away."""
    mixing = np.random.default_rng(0).normal(size=(d, d)) / np.sqrt(d)
    labels = np.arange(n) % 2
    return rng.normal(size=(n, d)) @ mixing + labels[:, None] * 0.5 + shift, labels


# ----------------------------------------------------------------------------- the math

def test_in_distribution_percentiles_are_uniform_and_far_points_beyond_the_99th():
    rng = np.random.default_rng(1)
    train, labels = gaussians(rng, 400)
    stats = fit_ood(train, labels, gaussians(rng, 2000)[0])
    assert 0 < stats.shrinkage < 1 and len(stats.val_scores) == 2000
    assert np.all(np.diff(stats.val_scores) >= 0)  # kept sorted
    fresh = stats.score(gaussians(rng, 4000)[0])
    counts, _ = np.histogram(stats.percentile(fresh), bins=10, range=(0, 100))
    assert np.all(np.abs(counts / 4000 - 0.1) < 0.03), counts  # ~uniform: like the val images
    assert stats.flagged(fresh).mean() < 0.02                   # ~1 % beyond the 99th
    far = stats.score(gaussians(rng, 50, shift=3.0)[0])
    assert stats.flagged(far).all() and np.all(stats.percentile(far) == 100)
    # The val images themselves: none beyond the threshold, which is one of their scores.
    assert not stats.flagged(stats.val_scores).any() or len(stats.val_scores) >= 100
    assert stats.flagged(stats.val_scores).mean() <= 0.01


def test_size_is_judged_against_the_training_median_both_ways(tmp_path):
    for i, side in enumerate((30, 32, 34)):
        Image.new("RGB", (side, side - 2)).save(tmp_path / f"{i}.png")
    long_side = native_long_side(sorted(tmp_path.glob("*.png")))
    assert long_side == {"median": 32.0, "min": 30, "max": 34, "n": 3}
    stats = OodStats(np.zeros((2, 2)), np.eye(2), np.arange(10.0), 0.1, 10, long_side)
    assert stats.size_note((3000, 2000)) == ("much larger than the training images "
                                             "(3000 px vs 32 px on the long side)")
    assert stats.size_note((6, 4)).startswith("much smaller than the training images (6 px vs 32")
    assert stats.size_note((128, 20)) is None and stats.size_note((8, 8)) is None
    big, = assess(stats, np.zeros((1, 2)), [(3000, 2000)])
    assert big.unlike_training and big.size_flag and not big.ood_flag
    assert "much larger" in big.note and "not seen images like it" in big.note


def test_statistics_round_trip_through_their_file(trained_run, tmp_path):
    stats = read_ood_stats(trained_run)
    stats.save(tmp_path / OOD_STATS)
    again = OodStats.load(tmp_path / OOD_STATS)
    features = np.random.default_rng(0).normal(size=(5, 512))
    assert np.array_equal(again.score(features), stats.score(features))
    assert again.long_side == stats.long_side and again.threshold == stats.threshold
    (tmp_path / OOD_STATS).write_bytes(b"not a zip")  # damaged: no score, no failure
    assert read_ood_stats(tmp_path) is None


# ----------------------------------------------------------------------------- a trained run

def test_training_writes_the_statistics_into_the_run(trained_run, split_data):
    assert OOD_STATS in read_run_manifest(trained_run)["files"]
    stats = read_ood_stats(trained_run)
    assert stats.means.shape == (2, 512) and stats.precision.shape == (512, 512)
    assert len(stats.val_scores) == 16 and stats.n_train == 64
    assert stats.long_side["median"] == 32
    assert "OOD statistics" in (Path(trained_run) / "train.log").read_text()


def test_own_images_pass_and_another_domain_and_noise_are_flagged(trained_run, split_data):
    own = list(iter_predictions(trained_run, [split_data / "val", split_data / "train"],
                                device="cpu"))
    assert np.mean([row["ood_flag"] for row in own]) <= 0.05
    rng = np.random.default_rng(2)
    others = [(f"ramp{i}.png", png(gradient(rng))) for i in range(4)] + \
        [(f"noise{i}.png", png(noise(rng))) for i in range(4)]
    model, checkpoint = load_run(trained_run, device="cpu")
    for result in uploads.explain_uploads(model, checkpoint, others):
        assert result.ood_percentile == 100 and result.unlike_training, result.name
        assert result.band == uploads.NOT_LIKE_TRAINING and result.size_note is None
        assert "not seen images like it" in result.trust_note


def test_a_flagged_image_is_never_called_confident(trained_run):
    model, checkpoint = load_run(trained_run, device="cpu")
    rng = np.random.default_rng(3)
    sizes = {"large.png": np.broadcast_to(rng.integers(0, 256, 3), (400, 600, 3)),
             "tiny.png": noise(rng, 6), "noise.png": noise(rng)}
    results = uploads.explain_uploads(model, checkpoint, [(n, png(a)) for n, a in sizes.items()])
    for result in results:
        assert result.unlike_training and result.band == uploads.NOT_LIKE_TRAINING, result.name
    assert results[0].size_note == ("much larger than the training images (600 px vs 32 px on "
                                    "the long side)")
    assert results[1].size_note.startswith("much smaller")
    # Whatever P(fake) is: the band of a flagged result is never "confident".
    sure = uploads.ExplainedUpload(name="x", image_id="x", probability=0.999, threshold=0.5)
    sure.band = uploads.confidence_band(0.999, 0.5)
    assert sure.band == "confident"
    flagged = uploads.with_trust(sure, Assessment(9.0, 100.0, True, None, True))
    assert flagged.band == uploads.NOT_LIKE_TRAINING and flagged.unlike_training


def test_predict_csv_has_the_columns_and_json_keeps_its_keys(trained_run, split_data, tmp_path,
                                                             capsys):
    folder = split_data / "val" / "real"
    assert main(["predict", "--run", str(trained_run), str(folder), "--out",
                 str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(column in rows[0] for column in OOD_COLUMNS)
    assert {row["ood_flag"] for row in rows} <= {"True", "False"}
    assert all(0 <= float(row["ood_percentile"]) <= 100 for row in rows)

    assert main(["predict", "--run", str(trained_run), str(folder), "--out",
                 str(tmp_path / "p.json"), "--device", "cpu"]) == 0
    assert not set(OOD_COLUMNS) & set(json.loads((tmp_path / "p.json").read_text())[0])
    capsys.readouterr()
    assert main(["predict", "--run", str(trained_run), str(folder), "--device", "cpu"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"image_id", "prediction"}
    assert main(["predict", "--run", str(trained_run), str(folder), "--json-details",
                 "--device", "cpu"]) == 0
    detailed = json.loads(capsys.readouterr().out)[0]
    assert set(OOD_COLUMNS) | {"image_id", "prediction", "predicted_label"} <= set(detailed)
    assert isinstance(detailed["ood_flag"], bool)


def test_a_run_without_statistics_loads_and_says_it_has_no_ood_score(run_to_change, split_data,
                                                                      tmp_path):
    (run_to_change / OOD_STATS).unlink()  # as a run trained before this version
    model, checkpoint = load_run(run_to_change, device="cpu")
    assert checkpoint["ood"] is None
    result, = uploads.explain_uploads(model, checkpoint, [("n.png", png(noise(
        np.random.default_rng(4))))])
    assert result.ood_percentile is None and not result.unlike_training
    assert "no OOD statistics in this run" in result.trust_note
    assert "no OOD statistics" in uploads.model_card(run_to_change, checkpoint)["ood"]
    rows = list(iter_predictions(run_to_change, [split_data / "val" / "fake"], device="cpu"))
    assert all(row[column] is None for row in rows for column in OOD_COLUMNS)
    assert main(["predict", "--run", str(run_to_change), str(split_data / "val" / "fake"),
                 "--out", str(tmp_path / "old.csv"), "--device", "cpu"]) == 0
    with open(tmp_path / "old.csv", newline="") as f:
        assert all(row["ood_percentile"] == "" for row in csv.DictReader(f))


def test_the_upload_widget_and_the_browser_show_the_flag(trained_run, split_data):
    pytest.importorskip("ipywidgets")
    from deepfake_detector.preprocessing import Preprocessing
    from deepfake_detector.widgets import ImageBrowser, UploadBox
    model, checkpoint = load_run(trained_run, device="cpu")
    prep, stats = Preprocessing.from_checkpoint(checkpoint), checkpoint["ood"]
    box = UploadBox(model, prep, threshold=0.5, ood=stats)
    shown = box.show_bytes(png(noise(np.random.default_rng(5))), "noise.png")
    assert shown["unlike_training"] and shown["ood_percentile"] == 100
    assert "NOT LIKE THE TRAINING DATA" in box.caption.value
    paths = sorted((split_data / "val" / "real").iterdir())[:2]
    browser = ImageBrowser(model, paths, [0, 0], [0.1, 0.2], prep, ood=stats)
    assert browser.shown["ood_percentile"] is not None
    assert "OOD score at percentile" in browser.caption.value


def test_a_run_without_plain_features_writes_no_statistics_and_says_so(tmp_path):
    from deepfake_detector.ood import fit_for_run
    lines = []
    assert fit_for_run(tmp_path / OOD_STATS, None, None, None, [], lines.append) is None
    assert not (tmp_path / OOD_STATS).exists() and "no OOD statistics" in lines[0]


# ----------------------------------------------------------------------------- the layers' ensemble

def layered(rng, n: int, far: float = 0.0, close: float = 1.0) -> tuple[dict, np.ndarray]:
    """CapturedFeatures-like dicts, 6 features a layer, all driven by one latent per image (so the
    layers' distances move together, as a network's do); `far` shifts the stem, `close` scales
    the deep layers toward their means (a smooth picture, as a random-init backbone sees it)."""
    from deepfake_detector.ood import LAYERS, PENULTIMATE
    latent, labels = rng.normal(size=(n, 6)), np.arange(n) % 2
    features = {}
    for k, name in enumerate((*LAYERS, PENULTIMATE)):
        mixing = np.random.default_rng(10 + k).normal(size=(6, 6))
        own = (latent @ mixing + 0.5 * rng.normal(size=(n, 6))) * (close if k >= 3 else 1.0)
        features[name] = own + labels[:, None] * 0.3 + (far if k == 0 else 0.0)
    return features, labels


def test_the_ensemble_flags_an_image_far_in_one_layer_and_too_close_in_another(tmp_path):
    from deepfake_detector.ood import PENULTIMATE, REDUCED, fit_ensemble
    rng = np.random.default_rng(6)
    (train, labels), (val, _) = layered(rng, 600), layered(rng, 400)
    stats = fit_ensemble(fit_ood(train[PENULTIMATE], labels, val[PENULTIMATE]), train, labels, val)
    fresh, _ = layered(rng, 2000)
    scores, percentiles, flags, reduced = stats.judge(fresh)
    assert reduced is None and flags.mean() < 0.03  # held-out images of the domain pass
    counts, _ = np.histogram(percentiles, bins=5, range=(0, 100))
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.05), counts
    odd, _ = layered(rng, 100, far=2.0, close=0.4)  # the synthetic set, as CIFAKE's run sees it
    assert stats.judge(odd)[2].mean() > 0.9
    assert stats.flagged(stats.score(odd)).mean() < 0.1  # the 512 features alone miss them
    noise = {name: rng.normal(0, 5, (20, 6)) for name in fresh}
    assert stats.judge(noise)[2].all()
    # On disk and back: the same scores; a file from before the layers loads without them.
    stats.save(tmp_path / OOD_STATS)
    again = OodStats.load(tmp_path / OOD_STATS)
    assert np.array_equal(again.judge(fresh)[0], scores)
    older = OodStats(stats.means, stats.whitening, stats.val_scores, stats.shrinkage,
                     stats.n_train, {})
    older.save(tmp_path / "old.npz")
    old, = assess(OodStats.load(tmp_path / "old.npz"), {k: v[:1] for k, v in odd.items()}, [None])
    assert old.reduced and REDUCED in old.note and "per-layer statistics" in old.note
    whole, = assess(stats, {k: v[:1] for k, v in fresh.items()}, [(32, 32)])
    assert whole.reduced is None and REDUCED not in whole.note


def test_a_run_with_the_layers_scores_predict_from_one_read_of_each_file(run_to_change, split_data,
                                                                        tmp_path, monkeypatch):
    """The ensemble on the shared run (fitted here with a lower val minimum: the run has 16 val
    images), through predict and the app; each file read once, its size from that read."""
    from deepfake_detector import ood
    from deepfake_detector.features import layer_statistics
    from deepfake_detector.preprocessing import Preprocessing
    from deepfake_detector.split_read import list_split
    model, checkpoint = load_run(run_to_change, device="cpu")
    prep = Preprocessing.from_checkpoint(checkpoint)
    (train, labels), val = zip(*list_split(split_data, "train")), \
        [path for path, _ in list_split(split_data, "val")]
    monkeypatch.setattr(ood, "ENSEMBLE_MIN_VAL", 8)
    passes = {}  # one pass per split: fit_for_run asks again for the same images

    def layer_pass(paths):
        key = tuple(paths)
        if key not in passes:
            passes[key] = layer_statistics(model, paths, prep)
        return passes[key]
    lines = []
    ood.fit_for_run(run_to_change / OOD_STATS, layer_pass(list(train))[ood.PENULTIMATE], labels,
                    layer_pass(val)[ood.PENULTIMATE], list(train), lines.append, val, layer_pass)
    assert len(passes) == 2
    assert "OOD statistics of 4 layers" in lines[0]
    model, checkpoint = load_run(run_to_change, device="cpu")
    assert checkpoint["ood"].ensemble is not None
    rng = np.random.default_rng(8)
    results = uploads.explain_uploads(model, checkpoint, [("noise.png", png(noise(rng)))])
    assert results[0].unlike_training and results[0].band == uploads.NOT_LIKE_TRAINING
    assert ood.REDUCED not in results[0].trust_note
    folder = tmp_path / "predict"
    folder.mkdir()
    Image.fromarray(noise(rng, 32).astype(np.uint8)).save(folder / "noise.png")
    Image.new("RGB", (600, 400), (90, 120, 150)).save(folder / "big.jpg")
    for path in val[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(ood, "header_size", None)  # predict reads no header a second time
    rows = {row["image_id"]: row for row in iter_predictions(run_to_change, [folder],
                                                             device="cpu")}
    assert rows["noise.png"]["ood_flag"] and rows["big.jpg"]["size_flag"]
    assert not any(rows[path.name]["ood_flag"] or rows[path.name]["size_flag"]
                   for path in val[:6])  # the val images: the reference itself


def test_the_decode_gives_the_native_size_even_of_a_reduced_jpeg(tmp_path):
    from deepfake_detector.data import make_loader, try_open_image, uint8_transform
    Image.new("RGB", (640, 480), (10, 200, 30)).save(tmp_path / "big.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    image, reason, size = try_open_image(tmp_path / "big.jpg", 32, True)
    assert reason is None and size == (640, 480) and image.size == (80, 60)  # decoded at 1/8
    assert try_open_image(tmp_path / "empty.png", None, True)[0::2] == (None, None)
    items = [(tmp_path / name, -1) for name in ("big.jpg", "empty.png", "small.png")]
    images, _, indices, failures, sizes = next(iter(make_loader(
        items, uint8_transform(32), 8, skip_unreadable=True, decode_size=32, with_size=True)))
    assert indices.tolist() == [0, 2] and [i for i, _ in failures] == [1]
    assert sizes.tolist() == [[640, 480], [30, 20]] and images.shape == (2, 32, 32, 3)
