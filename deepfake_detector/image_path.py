"""The plain path: whole images through the network every epoch (augmented on the fly when
asked), in the run's precision, decoded and resized as the cached path's extraction does, so both
paths see the same pixels in the same batches. Phase 2's uncached path runs it too."""
from __future__ import annotations

import torch
from torch import nn

from .data import (IMAGENET_MEAN, IMAGENET_STD, decode_size, eval_transform, make_loader,
                   normalize_batch, own_size_transform, resolve_resize, train_transform)
from .features import autocast_for, channels_last, exact_fp32, head_in_fp32
from .loop import fit, run_epoch


class BackboneInPrecision(nn.Module):
    """The plain loop's network: the backbone in `precision`, as extraction computes the cached
    features (features.autocast_for), then the head in float32 on float32 features, as the cached
    path's head sees them. In fp32 it computes what model(images) does."""

    def __init__(self, model: nn.Module, device, precision: str = "fp32"):
        super().__init__()
        self.model, self.device, self.precision = model, torch.device(device), precision

    def forward(self, images):
        with autocast_for(self.device, self.precision):
            return head_in_fp32(self.model, images)


def image_batches(items, transform, config, order, device, augmentation=None):
    """The plain loop's batches: decode and push images each time (augmenting on the fly).
    Decoded and resized as the cached path's extraction does (config.decode, config.resize),
    in `order`, so both paths see the same pixels in the same batches."""
    sampler = None if order is None else order.tolist()
    size = decode_size(config.decode, config.img_size)
    if resolve_resize(config.resize, device, augmentation) == "device":
        loader = make_loader(items, own_size_transform(config.img_size), config.batch_size,
                             sampler=sampler, num_workers=config.num_workers, device=device,
                             decode_size=size)
        for images, labels, _ in loader:
            yield normalize_batch(images, IMAGENET_MEAN, IMAGENET_STD, device,
                                  config.img_size), labels
        return
    loader = make_loader(items, transform, config.batch_size, sampler=sampler,
                         num_workers=config.num_workers, device=device, decode_size=size)
    for images, labels, _ in loader:
        yield images.to(device).contiguous(memory_format=torch.channels_last), labels


def fit_on_images(model, trained, train_items, val_items, config, augmentation, order_per_epoch,
                  pos_weight: float, device, log) -> tuple[list, int]:
    """`fit` on whole images, pushed through the network every epoch (augmented on the fly when
    asked): the plain loop of phase 1 and the uncached path of phase 2. `trained` is the part
    that learns (the head, or layer4 + head). The network runs in config.precision, as the
    cached path's extraction does (BackboneInPrecision)."""
    train_tf = train_transform(config.img_size, augmentation)
    val_tf = eval_transform(config.img_size)
    network = BackboneInPrecision(model, device, config.precision)
    with channels_last(model), exact_fp32(device, config.precision):  # backward too
        return fit(network, trained,
                   lambda epoch: image_batches(train_items, train_tf, config,
                                               order_per_epoch[epoch - 1], device, augmentation),
                   lambda: image_batches(val_items, val_tf, config, None, device),
                   config, pos_weight, device, log)


def logits_on_images(model, items, config, device) -> torch.Tensor:
    """The model's logits for `items`, in order (one pass, no gradients kept), in
    config.precision as training computed them."""
    with channels_last(model), exact_fp32(device, config.precision):
        _, _, logits, _ = run_epoch(BackboneInPrecision(model, device, config.precision),
                                    image_batches(items, eval_transform(config.img_size),
                                                  config, None, device),
                                    nn.BCEWithLogitsLoss(), None, device)
    return logits
