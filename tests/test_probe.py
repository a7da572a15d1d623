"""The linear probe, the lr finder and the converging default recipe: folded weights equal to the
unfolded ones, folds that respect groups, a probe equal to scikit-learn's own pipeline, a head
that reaches the probe, and runs that say when they did not converge."""
from __future__ import annotations

import json
import shutil
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from deepfake_detector import train as train_module
from deepfake_detector.cli import main
from deepfake_detector.metrics import compute_metrics
from deepfake_detector.lr_find import lr_find, steepest_lr
from deepfake_detector.probe import HEAD_TO_PROBE_AUC_TARGET, cv_folds, fit_probe
from deepfake_detector.head import StandardizedHead, feature_statistics
from deepfake_detector.train import TrainConfig, train

from conftest import CIFAKE_DIR
from test_report_agrees import has_footer


@pytest.fixture
def few_bootstraps(monkeypatch):
    """20 bootstrap replicates instead of 1000 for the CIs of head and probe: the CIs are not
    under test here, and on two CPU cores they cost more than the training."""
    monkeypatch.setattr(train_module, "compute_metrics", partial(compute_metrics, n_bootstrap=20))


def gaussian_features(n=400, d=512, seed=0, shift=0.4, scale=5.0):
    """Two overlapping Gaussian classes, features on an arbitrary scale and offset (as a
    backbone's are): a problem where C matters and a perfect score is impossible."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, d)) + shift * y[:, None] * (np.arange(d) < 8)
    return (x * scale + 3.0).astype(np.float32), y


@pytest.mark.parametrize("d", [1, 7, 512])
def test_folding_the_standardisation_keeps_every_logit(d):
    torch.manual_seed(d)
    features = torch.randn(50, d) * 4 + 2
    head = StandardizedHead(nn.Linear(d, 1), *feature_statistics(features))
    expected = head(features)
    linear = head.fold()
    assert isinstance(linear, nn.Linear) and linear is head.linear
    torch.testing.assert_close(linear(features), expected, rtol=1e-5, atol=1e-5)


def test_a_near_constant_feature_is_not_blown_up_by_the_standardisation():
    torch.manual_seed(0)
    features = torch.randn(200, 5)
    features[:, 0] *= 1e-4  # a unit that barely moves on the train split
    _, std = feature_statistics(features)
    assert std[0] == pytest.approx(0.1 * float(std.median()))
    torch.testing.assert_close(std[1:], features[:, 1:].double().std(0, unbiased=False))
    probe = fit_probe(features.numpy(), (features[:, 1] > 0).numpy(), Cs=(1.0,))
    np.testing.assert_allclose(probe.scale, std.numpy(), rtol=1e-5)  # the probe floors alike


def test_probe_equals_scikit_learns_pipeline_and_folds_into_a_linear_layer():
    x, y = gaussian_features()
    probe = fit_probe(x, y, Cs=(0.01, 0.1, 1.0))
    reference = make_pipeline(StandardScaler(), LogisticRegression(
        C=probe.C, class_weight="balanced", max_iter=2000)).fit(x, y)
    np.testing.assert_allclose(probe.predict_proba(x), reference.predict_proba(x)[:, 1], atol=2e-3)
    linear = probe.as_linear()
    with torch.no_grad():
        p = torch.sigmoid(linear(torch.as_tensor(x))).squeeze(1).numpy()
    np.testing.assert_allclose(p, probe.predict_proba(x), atol=1e-5)
    # C was chosen by cross-validated log loss: the chosen one has the lowest mean.
    losses = probe.cv["mean_log_loss"]
    assert probe.cv["folds"] == 5 and probe.C == probe.cv["Cs"][int(np.argmin(losses))]


def test_cross_validation_folds_follow_the_groups():
    labels = np.repeat([0, 1], 30)
    groups = np.array([f"video{i // 3}" for i in range(60)])  # 3 frames per video
    folds = cv_folds(labels, groups, n_folds=5)
    assert len(folds) == 5
    for train_index, test_index in folds:
        assert not set(groups[train_index]) & set(groups[test_index])
        assert set(labels[test_index]) == {0, 1}
    assert cv_folds(np.array([0, 0, 1]), None) == []  # one fake: nothing to cross-validate


def test_lr_finder_sweeps_without_touching_the_head_and_suggests_a_rate_that_learns():
    x, y = gaussian_features(n=800, shift=1.0)
    features, labels = torch.as_tensor(x), torch.as_tensor(y)
    torch.manual_seed(0)  # the head's initial weights: the same whatever ran before
    head = StandardizedHead(nn.Linear(512, 1), *feature_statistics(features))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    result = lr_find(head, features, labels, n_steps=150)
    torch.testing.assert_close(head.state_dict(), before)
    assert result.lrs == sorted(result.lrs) and len(result.lrs) == len(result.losses) <= 150
    assert 1e-5 < result.suggestion < result.min_loss_lr <= 10
    assert min(result.losses) < 0.8 * result.losses[0]
    # The steepest-descent rule on a curve of known shape: loss = -tanh(log10(lr) + 3)
    lrs = np.logspace(-6, 0, 61)
    assert steepest_lr(lrs, -np.tanh(np.log10(lrs) + 3)) == pytest.approx(1e-3)


def test_run_converges_and_reports_head_beside_probe(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 500 and config["converged"] is True
    assert config["epochs_run"] < config["epochs"]  # early stopping ended it, not the budget
    assert config["epochs_run"] - config["best_epoch"] >= config["patience"]
    metrics = json.loads((trained_run / "metrics_val.json").read_text())
    assert metrics["converged"] is True
    probe = json.loads((trained_run / "probe.json").read_text())
    assert metrics["probe"]["roc_auc"] == probe["metrics"]["val"]["roc_auc"]
    assert metrics["roc_auc"] >= HEAD_TO_PROBE_AUC_TARGET * metrics["probe"]["roc_auc"]
    assert metrics["head_vs_probe"]["reached_probe"] is True
    report = (trained_run / "report.md").read_text()
    assert "## Head against a linear probe" in report and "NOT CONVERGED" not in report
    for row in ("ROC-AUC", "Accuracy (threshold 0.50)", "Log loss"):
        assert f"| {row} |" in report
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_state"]["fc.weight"].shape == (1, 512)  # folded: a plain Linear


def test_two_epochs_do_not_converge_and_every_record_says_so(split_data, tmp_path, few_bootstraps):
    run = tmp_path / "two"
    with pytest.warns(UserWarning, match="NOT CONVERGED"):
        assert main(["train", "--data", str(split_data), "--out", str(run), "--weights", "none",
                     "--img-size", "32", "--epochs", "2", "--cache-dir", "", "--no-probe"]) == 0
    assert json.loads((run / "config.json").read_text())["converged"] is False
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["converged"] is False and "--epochs" in metrics["message"]
    assert "NOT CONVERGED" in (run / "train.log").read_text()
    report = (run / "report.md").read_text()
    assert report.index("**NOT CONVERGED**") < report.index("## Results")
    assert "lr-find" in report


def test_lr_find_on_the_command_line_and_in_train(split_data, tmp_path, few_bootstraps):
    out = tmp_path / "finder"
    assert main(["lr-find", "--data", str(split_data), "--weights", "none", "--img-size", "32",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").is_file() and (out / "lr_find.pdf").is_file()
    assert has_footer(out / "lr_find.png")  # --weights none: RANDOM INIT, though no run holds it
    assert 1e-6 < record["suggestion"] < 10
    run = train(TrainConfig(data_dir=str(split_data), out_dir=str(tmp_path / "run"),
                            weights="none", img_size=32, lr="find", probe=False, epochs=20,
                            cache_dir=str(tmp_path / "cache")), log_to_console=False)
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == pytest.approx(record["suggestion"])  # same features, same sweep
    assert (run / "figures" / "lr_find.png").is_file()
    assert "from the feature cache" in (run / "train.log").read_text()


def default_head_against_probe(data_dir, out, img_size):
    run = train(TrainConfig(data_dir=str(data_dir), out_dir=str(out), weights="none",
                            img_size=img_size, cache_dir=""), log_to_console=False)
    return json.loads((run / "metrics_val.json").read_text()), json.loads(
        (run / "config.json").read_text())


def test_default_head_reaches_the_probe_on_the_synthetic_set(tmp_path, few_bootstraps):
    from deepfake_detector.demo_data import generate_demo_data
    from deepfake_detector.split import split_dataset
    raw = generate_demo_data(tmp_path / "raw", n_per_class=80, image_size=64, seed=0)
    split_dataset(raw, tmp_path / "split", seed=0)
    metrics, config = default_head_against_probe(tmp_path / "split", tmp_path / "run", 64)
    assert config["converged"] is True
    assert metrics["roc_auc"] >= HEAD_TO_PROBE_AUC_TARGET * metrics["probe"]["roc_auc"]


@pytest.mark.skipif(not CIFAKE_DIR.is_dir(), reason=f"CIFAKE dev set not found at {CIFAKE_DIR}: set DEEPFAKE_DETECTOR_CIFAKE_DIR to a folder with its real/ and fake/")
def test_default_head_reaches_the_probe_on_cifake(tmp_path, few_bootstraps):
    """2,000 CIFAKE images at their native 32 px: random-init features the head has to work for
    (the probe's val AUC is far from 1), at a cost of seconds. (On 800 images the val AUC's
    95% CI is about +-0.03 wide, more than the 1% under test.)"""
    from deepfake_detector.split import split_dataset
    raw = tmp_path / "raw"
    for label in ("real", "fake"):
        (raw / label).mkdir(parents=True)
        for path in sorted((CIFAKE_DIR / label).iterdir())[:1000]:
            shutil.copyfile(path, raw / label / path.name)
    split_dataset(raw, tmp_path / "split", seed=0)
    metrics, config = default_head_against_probe(tmp_path / "split", tmp_path / "run", 32)
    assert config["converged"] is True and config["epochs_run"] < config["epochs"]
    assert 0.6 < metrics["probe"]["roc_auc"] < 0.99
    assert metrics["roc_auc"] >= HEAD_TO_PROBE_AUC_TARGET * metrics["probe"]["roc_auc"]


def test_probe_folds_follow_the_groups_and_score_the_test_split(tmp_path, few_bootstraps):
    """Frames of one "video" (ten files sharing a name prefix) stay on one side of every fold;
    with a test split the probe is scored there too, and the report shows it beside the head."""
    from conftest import make_raw_dataset
    from deepfake_detector.inference import evaluate_run
    from deepfake_detector.split import split_dataset
    raw = make_raw_dataset(tmp_path / "raw", n_real=40, n_fake=40)
    split_dataset(raw, tmp_path / "split", val_fraction=0.25, test_fraction=0.25, seed=0,
                  group_by=r"regex:^(\w+ \(\d*)\d\)")
    run = train(TrainConfig(data_dir=str(tmp_path / "split"), out_dir=str(tmp_path / "run"),
                            weights="none", img_size=32, lr=1e-2, cache_dir=""),
                log_to_console=False)
    probe = json.loads((run / "probe.json").read_text())
    assert probe["cv"]["grouped"] is True and probe["cv"]["folds"] == 2  # 2 train videos a class
    assert set(probe["metrics"]) == {"val", "test"}
    evaluate_run(run, tmp_path / "split", "test", n_bootstrap=20, log=lambda m: None)
    report = (run / "report.md").read_text()
    section = report[report.index("## Head against a linear probe"):report.index("## Results")]
    assert "folds following the groups" in section
    assert "### Val split" in section and "### Test split" in section
