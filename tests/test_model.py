"""The model: a frozen torchvision ResNet-18 with one logit, and weights that never fall back silently."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deepfake_detector.model import (IMAGENET_FILE, WeightsUnavailableError, backbone_features,
                                     backbone_fingerprint, build_model, freeze_backbone,
                                     load_weights_file, resolve_weights)


def test_only_the_single_logit_head_trains():
    model, record = build_model("none", seed=0)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight": 512, "fc.bias": 1}
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 1
    assert not model.training and record == {"weights": "none", "pretrained": False,
                                              "sha256": None, "note": "random init, chosen explicitly"}


@pytest.mark.parametrize("size", [32, 64, 96])
def test_backbone_features_are_what_the_head_sees(size):
    model, _ = build_model("none", seed=0)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        features = backbone_features(model, images)
        assert features.shape == (3, 512)
        torch.testing.assert_close(model.fc(features), model(images))


def test_seed_makes_random_init_reproducible():
    a, _ = build_model("none", seed=3)
    b, _ = build_model("none", seed=3)
    c, _ = build_model("none", seed=4)
    assert backbone_fingerprint(a) == backbone_fingerprint(b) != backbone_fingerprint(c)
    torch.testing.assert_close(a.fc.weight, b.fc.weight)


def test_imagenet_unavailable_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty cache, no network
    with pytest.raises(WeightsUnavailableError) as error:
        build_model("imagenet")
    message = str(error.value)
    assert IMAGENET_FILE in message and "checkpoints" in message and "--weights none" in message


def test_demo_choice_falls_back_loudly_never_silently(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    state, record = resolve_weights("imagenet-or-none")
    assert state is None and record["pretrained"] is False
    assert "unavailable" in record["note"]


def test_weights_file_round_trip_and_corrupt_download(tmp_path):
    model, _ = build_model("none", seed=1)
    good = tmp_path / "my-resnet18.pth"
    torch.save(model.state_dict(), good)
    with pytest.warns(UserWarning, match="not torchvision's ImageNet file"):
        loaded, _ = build_model(str(good), seed=0)
    assert backbone_fingerprint(loaded) == backbone_fingerprint(model)

    broken = tmp_path / IMAGENET_FILE  # torchvision's name, wrong bytes: an interrupted download
    broken.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(WeightsUnavailableError, match="incomplete or corrupt"):
        load_weights_file(broken)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_weights_file(tmp_path / "missing.pth")


def test_freeze_backbone_refreezes_everything_but_fc():
    model, _ = build_model("none")
    for p in model.parameters():
        p.requires_grad = True
    freeze_backbone(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
