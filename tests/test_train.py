"""Training: early stopping, a backbone that does not move, the two paths agreeing, the run directory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepfake_detector.features import extract_features
from deepfake_detector.inference import evaluate_run
from deepfake_detector.split_read import list_split
from deepfake_detector.model import build_model
from deepfake_detector.loop import feature_batches, fit
from deepfake_detector.preprocessing import Preprocessing
from deepfake_detector.run_dir import RunExistsError, load_run
from deepfake_detector.train import TrainConfig, train


def test_early_stopping_stops_and_restores_the_best_epoch():
    """Validation labels are the opposite of training labels, so the val loss is best after the
    first epoch and worsens after: training must stop `patience` epochs later and hand back the
    head of that first epoch."""
    torch.manual_seed(0)
    features = torch.randn(64, 512)
    labels = (features[:, 0] > 0).long()
    head = nn.Linear(512, 1)
    config = TrainConfig(epochs=50, lr=1e-2, patience=3, min_delta=0.0, batch_size=16)
    heads_after_epoch = []

    def train_batches(epoch):
        return feature_batches(features, labels, config.batch_size)

    def val_batches():  # called once per epoch, right after that epoch's training
        heads_after_epoch.append({k: v.clone() for k, v in head.state_dict().items()})
        return feature_batches(features, 1 - labels, config.batch_size)

    history, best_epoch = fit(head, head, train_batches, val_batches, config, 1.0, "cpu",
                              log=lambda m: None)
    val_losses = [h["val_loss"] for h in history]
    assert best_epoch == 1 == val_losses.index(min(val_losses)) + 1
    assert len(history) == best_epoch + config.patience  # stopped, did not run 50 epochs
    torch.testing.assert_close(head.state_dict(), heads_after_epoch[best_epoch - 1])


def test_backbone_batchnorm_statistics_do_not_move(split_data, tmp_path):
    """The plain loop pushes images through BatchNorm every step; in eval mode its running
    statistics must stay exactly as loaded."""
    before, _ = build_model("none", seed=0)
    config = TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / "run"), weights="none",
                         img_size=32, epochs=2, patience=5, cache_features=False, num_workers=0,
                         augment=True)
    model, _ = load_run(train(config, log_to_console=False), device="cpu")
    after = model.state_dict()
    for name, tensor in before.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, after[name]), name
    assert not torch.equal(before.fc.weight, after["fc.weight"])  # while the head did learn


def val_logits(run) -> np.ndarray:
    """The run's head applied (in float64) to the val split's features, extracted once more in
    fp32: logits, whose differences are not squashed the way P(fake) near 0 or 1 is."""
    model, checkpoint = load_run(run, device="cpu")
    features = extract_features(model, list_split(run.config.data_dir, "val"),
                                Preprocessing(checkpoint["img_size"], decode="full"),
                                num_workers=0).double()
    with torch.no_grad():
        return (features @ model.fc.weight.double().T + model.fc.bias.double()).squeeze(1).numpy()


def test_cached_features_and_plain_loop_give_the_same_head(split_data, tmp_path):
    # Stays slow (three trainings, the plain loop's a forward pass over every image per epoch):
    # what it compares are runs trained with these settings; no shared run has them.
    common = dict(data_dir=str(split_data), weights="none", img_size=32, epochs=6, lr=1e-3,
                  patience=10, seed=0, num_workers=0)
    cached = train(TrainConfig(out_dir=str(tmp_path / "cached"), cache_dir=str(tmp_path / "cache"),
                               **common), log_to_console=False)
    plain = train(TrainConfig(out_dir=str(tmp_path / "plain"), cache_features=False, **common),
                  log_to_console=False)
    hist_c = json.loads((cached / "history.json").read_text())
    hist_p = json.loads((plain / "history.json").read_text())
    for c, p in zip(hist_c, hist_p, strict=True):
        for key in ("train_loss", "val_loss", "val_acc", "val_auc"):
            assert c[key] == pytest.approx(p[key], abs=1e-3), key
    metrics_c = json.loads((cached / "metrics_val.json").read_text())
    metrics_p = json.loads((plain / "metrics_val.json").read_text())
    for key in ("accuracy", "roc_auc", "average_precision"):
        assert metrics_c[key] == pytest.approx(metrics_p[key], abs=1e-3)
    # Issue 12's measure (AUC and accuracy on a tiny val set move by 0.03 for one swapped pair):
    # val losses within 1e-4 and val logits within 1e-3, on every device. Both paths compute in
    # the same precision (fp32 by default; TF32 off on CUDA).
    assert max(abs(c["val_loss"] - p["val_loss"]) for c, p in zip(hist_c, hist_p)) <= 1e-4
    assert np.abs(val_logits(cached) - val_logits(plain)).max() <= 1e-3
    # A second run with the same settings reads the features from the cache, bit for bit.
    again = train(TrainConfig(out_dir=str(tmp_path / "again"), cache_dir=str(tmp_path / "cache"),
                              **common), log_to_console=False)
    assert "from the feature cache" in (again / "train.log").read_text()
    assert json.loads((again / "history.json").read_text())[-1]["val_loss"] == hist_c[-1]["val_loss"]


def test_run_directory_holds_what_inference_needs(trained_run):
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert checkpoint["class_to_idx"] == {"real": 0, "fake": 1}
    assert checkpoint["img_size"] == 32 and checkpoint["threshold"] == 0.5
    assert len(checkpoint["mean"]) == 3 and "torch" in checkpoint["versions"]
    assert checkpoint["weights"]["pretrained"] is False
    assert 0 <= checkpoint["val_threshold"] <= 1 and "accuracy" in checkpoint["metrics"]
    for name in ("config.json", "history.json", "data_counts.json", "metrics_val.json",
                 "predictions_val.csv", "train.log", "report.md", "figures/learning_curves.png"):
        assert (trained_run / name).is_file(), name
    assert "RANDOM INIT" in (trained_run / "train.log").read_text()


def test_checkpoint_round_trip_reproduces_the_predictions(trained_run):
    model, checkpoint = load_run(trained_run, device="cpu")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    metrics = json.loads((trained_run / "metrics_val.json").read_text())
    assert metrics["accuracy"] >= 0.9  # the fixture data is easy even for random features
    assert checkpoint["metrics"]["accuracy"] == metrics["accuracy"]


def test_a_run_is_never_silently_overwritten(trained_run, split_data, tmp_path):
    config = TrainConfig(data_dir=str(split_data), out_dir=str(trained_run), weights="none")
    with pytest.raises(RunExistsError, match="--overwrite"):
        train(config, log_to_console=False)
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    config = TrainConfig(data_dir=str(split_data), out_dir=str(other), weights="none", overwrite=True)
    with pytest.raises(RunExistsError, match="not a run directory"):
        train(config, log_to_console=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_train_returns_live_objects_that_are_also_the_run_directory(trained_run):
    import os
    from deepfake_detector.predictions import read_predictions
    from deepfake_detector.train import TrainedRun
    run = trained_run
    assert isinstance(run, TrainedRun) and isinstance(run, os.PathLike)
    assert Path(run) == run.run_dir and os.fspath(run) == str(run.run_dir) == str(run)
    assert (run / "history.json").is_file() and json.loads((run / "history.json").read_text()) \
        == json.loads(json.dumps(run.history))
    assert run.metrics["accuracy"] == json.loads((run / "metrics_val.json").read_text())["accuracy"]
    assert json.loads((run / "config.json").read_text())["best_epoch"] == run.best_epoch
    rows = read_predictions(run / "predictions_val.csv")
    assert [row["path"] for row in rows] == [str(p) for p in run.val_paths]
    np.testing.assert_allclose([row["prediction"] for row in rows], run.val_probabilities, atol=1e-6)
    assert list(run.val_labels) == [row["label"] for row in rows]
    # the live model is the trained one, on its device, in eval mode, equal to the checkpoint
    assert not run.model.training and next(run.model.parameters()).device.type == run.device.type
    model, _ = load_run(run, device="cpu")
    for (name, a), b in zip(run.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, msg=name)
    assert run.val_threshold == run.metrics["val_threshold"]


def test_a_notebook_head_trains_and_its_run_refuses_to_load_with_a_clear_message(split_data, tmp_path):
    from torch import nn
    from deepfake_detector.model import build_model
    model, record = build_model("none", seed=0)
    model.fc = nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="weights_record"):
        train(TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / "x")), model=model)
    run = train(TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / "run"), weights="none",
                            img_size=32, epochs=5, cache_dir="", num_workers=0),
                log_to_console=False, model=model, weights_record=record)
    assert run.model is model and run.model.fc[0].out_features == 8
    with pytest.raises(ValueError, match="non-standard head .*Sequential"):
        load_run(run)


def test_mixed_precision_runs_end_to_end_and_both_paths_agree_under_it(split_data, tmp_path):
    """precision="bf16" (CPU autocast has bf16): the plain loop computes its features in bf16 as
    extraction does, so the two paths still give the same head, within bf16's rounding: val
    losses within 2e-3 and val logits within 2e-2 (fp32's bounds are 1e-4 and 1e-3; measured
    on the CPU: no difference at all, both paths run the same bf16 kernels on the same images).
    Evaluation defaults to the run's precision."""
    common = dict(data_dir=str(split_data), weights="none", img_size=32, epochs=6, lr=1e-3,
                  patience=10, seed=0, num_workers=0, precision="bf16", probe=False)
    cached = train(TrainConfig(out_dir=str(tmp_path / "cached"), cache_dir=str(tmp_path / "cache"),
                               **common), log_to_console=False)
    plain = train(TrainConfig(out_dir=str(tmp_path / "plain"), cache_features=False, **common),
                  log_to_console=False)
    losses = [[h["val_loss"] for h in run.history] for run in (cached, plain)]
    logit_gap = np.abs(val_logits(cached) - val_logits(plain)).max()
    print(f"bf16: val loss gap {np.abs(np.subtract(*losses)).max():.2e}, logit gap {logit_gap:.2e}")
    assert np.abs(np.subtract(*losses)).max() <= 2e-3
    assert logit_gap <= 2e-2
    assert torch.load(cached / "checkpoint.pt", weights_only=True)["precision"] == "bf16"
    assert json.loads((cached / "config.json").read_text())["precision"] == "bf16"
    evaluated = evaluate_run(cached, split_data, "val", log=lambda m: None, n_bootstrap=0)
    assert evaluated["precision"] == "bf16"
    # The head saw bf16 features in training and sees them again here: the same probabilities.
    assert evaluated["roc_auc"] == pytest.approx(cached.metrics["roc_auc"], abs=1e-6)


def test_evaluating_a_run_twice_gives_identical_metrics(trained_run, split_data, tmp_path):
    """Deterministic kernels by default: the same numbers, byte for byte (issue 12; on a GPU
    without them two evaluations differed in the 4th digit of the ROC-AUC)."""
    files = []
    for name in ("first", "second"):
        metrics = evaluate_run(trained_run, split_data, "val", out_dir=tmp_path / name,
                               log=lambda m: None, n_bootstrap=200)
        files.append((tmp_path / name / "metrics.json").read_bytes())
        assert metrics["deterministic"] is True and metrics["precision"] == "fp32"
    assert files[0] == files[1]
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards


def test_an_unknown_precision_is_refused_before_anything_is_written(split_data, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        train(TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / "bad"), weights="none",
                          precision="half"), log_to_console=False)
    assert not (tmp_path / "bad").exists()
