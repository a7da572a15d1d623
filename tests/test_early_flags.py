"""What a run writes before its config.json carries the run's flags too (RANDOM INIT, SYNTHETIC
DATA; run_flags.flags_of_training): the data audit's figure, tables and audit.md, written before
training, and `train --lr find`'s plot, as `lr-find`'s own; a run without flags has none there."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from deepfake_detector import train as train_module
from deepfake_detector.lr_find import lr_find
from deepfake_detector.model import build_model
from deepfake_detector.run_flags import RANDOM_INIT, SYNTHETIC_DATA, flags_of_run, flags_of_training
from deepfake_detector.train import TrainConfig, train
from conftest import make_split
from test_report_agrees import has_footer

BOTH = [RANDOM_INIT, SYNTHETIC_DATA]


def check_audit(audit: Path, flags: list[str]) -> None:
    """audit/: every table (.md, the CSV's first line, the .tex's first line and caption), the
    figure and audit.md name exactly `flags`."""
    absent = [flag for flag in BOTH if flag not in flags]
    tables = sorted((audit / "tables").glob("*.md"))
    assert len(tables) == 3
    texts = [(audit / "audit.md").read_text()]
    for md in tables:
        tex = md.with_suffix(".tex").read_text()
        texts += [md.read_text(), md.with_suffix(".csv").read_text().splitlines()[0],
                  tex.splitlines()[0], re.search(r"\\caption\{(.*)\}", tex).group(1)]
    for text in texts:
        assert all(flag in text for flag in flags), text
        assert not any(flag in text for flag in absent), text
    assert has_footer(audit / "figures" / "audit_file_size.png") == bool(flags)


def test_the_audit_before_training_carries_the_flags_config_json_says(demo_run, trained_run):
    assert flags_of_run(demo_run) == BOTH and flags_of_run(trained_run) == [RANDOM_INIT]
    check_audit(demo_run / "audit", BOTH)
    check_audit(trained_run / "audit", [RANDOM_INIT])


@pytest.fixture
def weights_file(tmp_path) -> Path:
    """A ResNet-18 state dict on disk: `--weights FILE` is a pretrained backbone, no RANDOM INIT."""
    model, _ = build_model("none", seed=0)
    torch.save(model.state_dict(), tmp_path / "resnet18.pt")
    return tmp_path / "resnet18.pt"


class StopAfterLrFind(Exception):
    """Raised where the head would train: what is under test is written before it."""


def test_lr_find_plot_and_audit_of_a_run_carry_its_flags_and_a_plain_run_none(
        demo_run, weights_file, tmp_path, monkeypatch):
    """Two runs with `--lr find`, stopped once the plot is written (config.json, written at the
    end, is not needed: the flags are known from the start): the synthetic demo split with
    `--weights none` (both flags), a small real-looking split with a weights file (neither). A
    short sweep: its numbers are not under test."""
    def stop(*_):
        raise StopAfterLrFind
    monkeypatch.setattr(train_module, "fit_on_features", stop)
    monkeypatch.setattr(train_module, "lr_find", lambda *a, **k: lr_find(*a, **k, n_steps=30))
    demo_split = json.loads((demo_run / "config.json").read_text())["data_dir"]
    plain_split = make_split(tmp_path / "split", 10)
    for data, weights, flags in ((demo_split, "none", BOTH), (plain_split, weights_file, [])):
        out = tmp_path / ("flagged" if flags else "plain")
        assert flags_of_training(build_model(str(weights))[1], data) == flags
        with pytest.raises(StopAfterLrFind), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the audit's shortcut, the weights file's origin
            train(TrainConfig(data_dir=str(data), out_dir=str(out), weights=str(weights),
                              img_size=32, lr="find", probe=False, cache_dir=""),
                  log_to_console=False)
        assert not (out / "config.json").exists()
        assert has_footer(out / "figures" / "lr_find.png") == bool(flags)
        check_audit(out / "audit", flags)
