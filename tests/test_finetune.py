"""Phase 2: only layer4 and the head move, BatchNorm statistics never do, the new run is a run,
both phases are tabled, and nothing is ever overwritten."""
from __future__ import annotations

import csv
import json
from functools import partial

import pytest
import torch

from deepfake_detector import train as train_module
from deepfake_detector.cli import main
from deepfake_detector.metrics import compute_metrics
from deepfake_detector.features import extract_features
from deepfake_detector.finetune import Phase2Recipe, finetune_layer4
from deepfake_detector.inference import predict_probabilities
from deepfake_detector.preprocessing import Preprocessing
from deepfake_detector.split_read import list_split
from deepfake_detector.run_dir import RunExistsError, load_run


def quick_phase2(parent, out, **options):
    """finetune_layer4 with 20 bootstrap replicates instead of 1000 for the val CIs: the CIs are
    not under test here, and on two CPU cores they cost more than the training."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "compute_metrics", partial(compute_metrics, n_bootstrap=20))
        return finetune_layer4(parent, out, Phase2Recipe(**options), num_workers=0,
                               log_to_console=False)


SETTINGS = dict(lr=1e-4, epochs=3, patience=2)


@pytest.fixture(scope="module")
def phase2(trained_run, tmp_path_factory):
    return quick_phase2(trained_run, tmp_path_factory.mktemp("finetune") / "phase2", **SETTINGS)


def state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model_state"]


def test_only_layer4_and_the_head_change(trained_run, phase2):
    before, after = state(trained_run), state(phase2)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        is_bn_statistic = name.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if is_bn_statistic or not name.startswith(("layer4.", "fc.")):
            assert torch.equal(tensor, after[name]), name  # frozen stages, ALL BatchNorm stats
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_the_new_run_is_a_complete_run(trained_run, phase2):
    model, checkpoint = load_run(phase2, device="cpu")
    items = list_split(json.loads((phase2 / "config.json").read_text())["data_dir"], "val")
    p = predict_probabilities(model, items, Preprocessing.from_checkpoint(checkpoint),
                              num_workers=0)
    assert p.shape == (len(items),) and ((0 <= p) & (p <= 1)).all()
    config = json.loads((phase2 / "config.json").read_text())
    assert config["parent_run"] == str(trained_run) and config["head_lr"] == pytest.approx(1e-3)
    assert config["layer3_cached"] is True
    assert config["trainable_parameters"] == sum(
        v.numel() for k, v in state(phase2).items()
        if k.startswith(("layer4.", "fc.")) and not k.endswith(("running_mean", "running_var",
                                                                 "num_batches_tracked")))
    for path in ("history.json", "metrics_val.json", "report.md", "figures/learning_curves.png",
                 "figures/val_roc_curve.pdf", "tables/metrics_val.tex"):
        assert (phase2 / path).is_file(), path
    assert "val_threshold" in checkpoint


def test_phases_table_compares_both_phases(trained_run, phase2):
    for ext in ("md", "csv", "tex"):
        assert (phase2 / "tables" / f"phases.{ext}").is_file()
    with open(phase2 / "tables" / "phases.csv", newline="") as f:  # '#': the run's flags
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert [row["phase"] for row in rows] == ["1: head, frozen backbone",
                                              "1: linear probe, frozen backbone", "2: layer4 + head"]
    assert int(rows[0]["trainable parameters"]) == 513 == int(rows[1]["trainable parameters"])
    assert int(rows[2]["trainable parameters"]) > 8_000_000
    phase1_metrics = json.loads((trained_run / "metrics_val.json").read_text())
    assert float(rows[0]["val ROC-AUC"]) == pytest.approx(phase1_metrics["roc_auc"])
    # Phase 1's probe, beside phase 2's result: in the table and in phase 2's report.
    assert float(rows[1]["val ROC-AUC"]) == pytest.approx(phase1_metrics["probe"]["roc_auc"])
    report = (phase2 / "report.md").read_text()
    assert "phases" in report and "Head against a linear probe" in report
    assert str(trained_run) in report  # the probe is named as phase 1's


def test_never_overwrites(trained_run, phase2):
    before = (phase2 / "checkpoint.pt").read_bytes()
    with pytest.raises(RunExistsError, match="never overwrites"):
        finetune_layer4(trained_run, phase2, Phase2Recipe(epochs=1), num_workers=0,
                        log_to_console=False)
    with pytest.raises(RunExistsError):  # nor its parent
        finetune_layer4(trained_run, trained_run, Phase2Recipe(epochs=1), num_workers=0,
                        log_to_console=False)
    assert main(["finetune", "--run", str(trained_run), "--out", str(phase2)]) == 2  # one message
    assert (phase2 / "checkpoint.pt").read_bytes() == before
    assert (phase2 / "checkpoint.pt").read_bytes() == before


def val_logits(run) -> torch.Tensor:
    """The run's val logits, recomputed from its checkpoint in fp32 (the head in float64): P(fake)
    in predictions_val.csv saturates at 0 and 1, logits do not."""
    model, checkpoint = load_run(run, device="cpu")
    items = list_split(json.loads((run / "config.json").read_text())["data_dir"], "val")
    features = extract_features(model, items, Preprocessing(checkpoint["img_size"], decode="full"),
                                num_workers=0).double()
    with torch.no_grad():
        return (features @ model.fc.weight.double().T + model.fc.bias.double()).squeeze(1)


def test_cached_layer3_and_plain_loop_agree(trained_run, phase2, tmp_path):
    """The layer3 cache is an optimisation only: full forward passes give the same run."""
    plain = quick_phase2(trained_run, tmp_path / "plain", cache_layer3=False, **SETTINGS)
    assert json.loads((plain / "config.json").read_text())["layer3_cached"] is False
    history = [json.loads((run / "history.json").read_text()) for run in (phase2, plain)]
    assert [h["val_loss"] for h in history[0]] == pytest.approx([h["val_loss"] for h in history[1]],
                                                                rel=1e-4)
    for name in ("layer4.1.conv2.weight", "fc.weight", "fc.bias"):
        torch.testing.assert_close(state(phase2)[name], state(plain)[name], rtol=1e-4, atol=1e-5)
    # Issue 12's measure, on every device: val losses within 1e-4, val logits within 1e-3 (both
    # paths compute in the same precision; fp32 by default, TF32 off on CUDA).
    for cached_epoch, plain_epoch in zip(*history, strict=True):
        assert abs(cached_epoch["val_loss"] - plain_epoch["val_loss"]) <= 1e-4
    logits = [val_logits(run) for run in (phase2, plain)]
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-3
