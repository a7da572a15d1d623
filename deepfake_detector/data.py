"""From files to tensors: open any image safely, transform it, batch it.

Every image goes through `open_image` (so a broken file names itself) and one of two transforms:
`eval_transform` (resize + normalise) for validation, features and Grad-CAM, and
`train_transform`, which adds the augmentation that training may ask for.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

# The statistics ImageNet-pretrained backbones were trained with; inputs must match them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What augmentation means here, when it is switched on. Small on purpose: a flip or a slight
# colour change does not turn a fake into a real, but a heavy blur might erase the evidence.
DEFAULT_AUGMENTATION = {"hflip": True, "color_jitter": 0.1, "rotation_degrees": 10}


class ImageLoadError(OSError):
    """An image file that cannot be decoded; the message names the file."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode one file into an RGB PIL image (greyscale, palette, CMYK and alpha all become RGB)."""
    try:
        with Image.open(path) as image:
            # Phone photos carry their rotation in EXIF; convert() decodes fully, so a truncated
            # file fails here, by name, rather than later inside a DataLoader worker.
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageLoadError(f"Cannot read image {path}: {error}. Remove or replace the file "
                             "(the split step lists such files and leaves them out).") from error


def eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> transforms.Compose:
    """Resize to a square (the backbone needs a fixed size), to tensor, ImageNet-normalise."""
    return transforms.Compose([
        transforms.Resize((img_size, img_size), antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def train_transform(img_size: int, augmentation: dict | bool | None = None,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> transforms.Compose:
    """The eval transform, with augmentation in front when asked for (True = the defaults)."""
    if augmentation is True:
        augmentation = DEFAULT_AUGMENTATION
    if not augmentation:
        return eval_transform(img_size, mean, std)
    steps = [transforms.Resize((img_size, img_size), antialias=True)]
    if augmentation.get("hflip"):
        steps.append(transforms.RandomHorizontalFlip())
    if augmentation.get("color_jitter"):
        jitter = augmentation["color_jitter"]
        steps.append(transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if augmentation.get("rotation_degrees"):
        steps.append(transforms.RandomRotation(augmentation["rotation_degrees"]))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised (3, H, W) tensor back to a displayable uint8 (H, W, 3) RGB array."""
    image = image.detach().float().cpu() * torch.tensor(std)[:, None, None] \
        + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class ImageDataset(Dataset):
    """(path, label) pairs -> (image tensor, label, index). label may be -1 when unknown."""

    def __init__(self, items: list[tuple[Path, int]], transform):
        self.items = [(Path(path), int(label)) for path, label in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        return self.transform(open_image(path)), label, index


def default_num_workers() -> int:
    """Decoding in worker processes only pays when there are cores to spare for it."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def make_loader(items, transform, batch_size: int = 32, sampler=None,
                generator: torch.Generator | None = None, num_workers: int | None = None,
                device: torch.device | str = "cpu") -> DataLoader:
    """Batches of (images, labels, indices) in `sampler` order (default: as listed)."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    return DataLoader(
        ImageDataset(items, transform), batch_size=batch_size, sampler=sampler,
        generator=generator, num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",  # faster host-to-GPU copies
    )
