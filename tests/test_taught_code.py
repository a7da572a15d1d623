"""What the notebook teaches is what runs: the cells a student edits (tagged `taught-*` in the
.ipynb) are taken from the notebook file itself and compared with the package's implementations."""
from __future__ import annotations

import copy

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from deepfake_detector import gradcam
from deepfake_detector.model import build_model
from deepfake_detector.notebook import PROJECT_ROOT
from deepfake_detector.loop import feature_batches, run_epoch

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"


def taught_cell(tag: str) -> str:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c.source for c in notebook.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"exactly one cell tagged {tag!r}"
    return cells[0]


def run_cell(tag: str, **namespace) -> dict:
    namespace = {"torch": torch, "nn": nn, "np": np, "copy": copy, **namespace}
    exec(compile(taught_cell(tag), f"<notebook cell {tag}>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def model():
    return build_model("none", seed=0)[0]


def test_the_head_cell_freezes_what_build_model_freezes(model):
    student = copy.deepcopy(model)
    for parameter in student.parameters():  # undo the freezing, to see the cell redo it
        parameter.requires_grad = True
    student.train()
    run_cell("taught-head", model=student, SEED=0)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad} \
        == {"fc.weight", "fc.bias"}
    assert not student.training and not any(m.training for m in student.modules())
    assert isinstance(student.fc, nn.Linear) and student.fc.out_features == 1


def test_the_loss_cell_weighs_fakes_by_real_over_fake():
    items = [("r", 0)] * 6 + [("f", 1)] * 2
    namespace = run_cell("taught-loss", train_items=items)
    assert namespace["pos_weight"] == 3.0
    logits, labels = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    expected = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(logits, labels)
    assert torch.allclose(namespace["loss_fn"](logits, labels), expected)


@pytest.mark.parametrize("n, batch_size, pos_weight", [(50, 16, 1.0), (37, 8, 2.5), (10, 32, 0.5)])
def test_the_notebooks_epoch_gives_the_packages_loss_and_head(n, batch_size, pos_weight):
    train_one_epoch = run_cell("taught-epoch")["train_one_epoch"]
    generator = torch.Generator().manual_seed(n)
    features = torch.randn(n, 512, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    order = torch.randperm(n, generator=generator)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    torch.manual_seed(0)
    head = nn.Linear(512, 1)
    ours, theirs = copy.deepcopy(head), copy.deepcopy(head)
    our_loss = train_one_epoch(ours, features, labels, loss_fn,
                               torch.optim.Adam(ours.parameters(), lr=1e-2), order, batch_size)
    package_loss, *_ = run_epoch(theirs, feature_batches(features, labels, batch_size, order),
                                 loss_fn, torch.optim.Adam(theirs.parameters(), lr=1e-2))
    assert our_loss == pytest.approx(package_loss, rel=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("layer_name", ["layer4", "layer3"])
@pytest.mark.parametrize("target", ["fake", "real"])
def test_the_notebooks_hook_gives_the_packages_cam(model, size, layer_name, target):
    namespace = run_cell("taught-hook")
    my_grad_cam, hook = namespace["my_grad_cam"], namespace["Hook"]
    layer = getattr(model, layer_name)[-1]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    ours = my_grad_cam(model, images, layer, target=target)
    raw, _, _ = gradcam.raw_grad_cam(model, images, target, layer)
    torch.testing.assert_close(ours, raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradcam.scale_cams(ours.numpy(), (size, size)),
                               gradcam.grad_cam(model, images, target, layer=layer), atol=1e-5)
    assert not layer._forward_hooks  # the context manager removed its hook
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated on the model
    with pytest.raises(RuntimeError), hook(layer):  # removed on the way out of an error, too
        raise RuntimeError("boom")
    assert not layer._forward_hooks
