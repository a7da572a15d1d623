"""The OOD score's per-layer statistics come from the un-augmented feature extraction's own pass
(features.extract_features' `layers`), are kept in the feature cache beside the features, and
training makes no second backbone pass for them; an old cache entry without them still serves
its features, and the run then takes the layers in one more pass, as before (ood.fit_for_run)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from deepfake_detector import ood
from deepfake_detector.features import (Views, cached_extraction, extract_features,
                                        layer_statistics)
from deepfake_detector.model import build_model
from deepfake_detector.preprocessing import Preprocessing
from deepfake_detector.split_read import list_split

PREP = Preprocessing(32)


@pytest.fixture
def few_sampled(monkeypatch):
    """ood.evenly_spaced with at most 7 rows: a sample smaller than the split, some of every
    batch's rows taken and others not, as on a split larger than ood.LAYER_SAMPLE."""
    every = ood.evenly_spaced
    monkeypatch.setattr(ood, "evenly_spaced", lambda n, at_most=7: every(n, at_most))
    monkeypatch.setattr(ood, "ENSEMBLE_MIN_VAL", 8)  # split_data has 16 val images


def ensemble_arrays(stats: ood.OodStats) -> dict:
    return {key: value for key, value in stats.ensemble.arrays().items()
            if key != "ensemble_layers"}


def test_the_extraction_takes_the_layers_the_second_pass_takes(split_data, few_sampled, tmp_path):
    """Same rows, same numbers: the statistics captured in the extraction (batches of 16, some
    rows of each taken) equal layer_statistics' (a pass over the sampled images alone, in one
    other batch). Augmented views take none, and their cache entry keeps none."""
    model = build_model("none", seed=0)[0].eval()
    items = list_split(split_data, "train")
    layers = {}
    extract_features(model, items, PREP, batch_size=16, num_workers=0, layers=layers)
    at = ood.evenly_spaced(len(items))
    assert torch.equal(layers["indices"], torch.from_numpy(at)) and len(at) == 7
    assert set(layers) == {"indices", *ood.LAYERS}
    second = layer_statistics(model, [items[i][0] for i in at], PREP, num_workers=0)
    every = {}  # 7 images: all of them sampled, the hooks take whole batches
    extract_features(model, items[:7], PREP, batch_size=4, num_workers=0, layers=every)
    every_second = layer_statistics(model, [path for path, _ in items[:7]], PREP, num_workers=0)
    for name in ood.LAYERS:
        assert layers[name].dtype == torch.float32 and layers[name].shape == second[name].shape
        np.testing.assert_allclose(layers[name].numpy(), second[name], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(every[name].numpy(), every_second[name], rtol=1e-6, atol=1e-7)

    augmented = cached_extraction(model, items[:4], PREP, tmp_path / "cache", num_workers=0,
                                  views=Views({"hflip": True}, 1), log=lambda _: None)
    assert augmented.layers is None
    [entry] = (tmp_path / "cache").glob("features-*.pt")
    assert "layers" not in torch.load(entry, weights_only=True)


def test_no_second_pass_cold_or_warm_and_an_old_cache_entry_still_serves(split_data, few_sampled,
                                                                         tmp_path, monkeypatch):
    """A cold run (extracting) and a warm re-run (from the cache) make no second pass; with the
    layers taken out of the cache entries (as an earlier version wrote them) the features are
    still read from the cache and the run takes the layers in one more pass, saying so; all three
    fit the same OOD statistics (the ensemble's arrays: from the extraction's layers, from the
    cache's, from the second pass). The audit and the figures, seconds a run and nothing to do
    with the OOD statistics, are left out."""
    import deepfake_detector.train as train_module
    from deepfake_detector.train import TrainConfig, train
    monkeypatch.setattr(train_module, "audit_data", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "finish_run", lambda *args, **kwargs: None)
    passes = []

    def counted(model, paths, *args, **kwargs):
        passes.append(len(paths))
        return layer_statistics(model, paths, *args, **kwargs)
    monkeypatch.setattr(train_module, "layer_statistics", counted)
    cache = tmp_path / "cache"

    def run(name):
        config = TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / name),
                             weights="none", img_size=32, lr=1e-2, epochs=1, probe=False,
                             cache_dir=str(cache), num_workers=0)
        with threadpool_limits(1):  # OpenBLAS's 2 threads beside other work: 5x slower fits
            run_dir = train(config, log_to_console=False).run_dir
        return (run_dir / "train.log").read_text(), ood.OodStats.load(run_dir / "ood.npz")

    cold_log, cold = run("cold")
    assert "train features: extracted" in cold_log and passes == []
    assert "taken in the pass that extracted the features (7 train and 7 val" in cold_log
    warm_log, warm = run("warm")
    assert "train features: 64 images from the feature cache" in warm_log and passes == []
    assert "no second pass" in warm_log and "one more pass" not in warm_log
    for entry in cache.glob("features-*.pt"):  # as the cache of an earlier version holds them
        stored = torch.load(entry, weights_only=True)
        assert set(stored) == {"features", "layers"}
        torch.save({"features": stored["features"]}, entry)
    old_log, old = run("old")
    assert "extracted" not in old_log and old_log.count("images from the feature cache") == 2
    assert passes == [7, 7]
    assert ("OOD statistics of 4 layers: one more pass over 7 train and 7 val images (their "
            "features came without them: a feature cache entry written before") in old_log
    for stats in (warm, old):
        for key, value in ensemble_arrays(cold).items():
            np.testing.assert_allclose(ensemble_arrays(stats)[key], value, rtol=1e-6, atol=1e-9)
