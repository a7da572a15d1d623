"""From files to tensors: open any image safely, transform it, batch it.

Every image goes through `open_image` (so a broken file names itself) and one of two transforms:
`eval_transform` (resize + normalise) for validation, features and Grad-CAM, and
`train_transform`, which adds the augmentation that training may ask for.

Bulk passes (feature extraction, predict, evaluate) split the same steps in two: worker processes
do the per-image part on PIL images and hand over uint8 pixels (`uint8_transform`), the main
process converts and normalises whole batches at once (`normalize_batch`). The numbers are the
same as `eval_transform`'s, bit for bit; the uint8 batch is 4x smaller to pass between processes
and to copy to a GPU, and it arrives already in the channels-last layout the model runs in.
"""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from torchvision import transforms

from .config import DEFAULT_AUGMENTATION  # what --augment means: stated once, with the settings
from .images import ImageLoadError, decode_image, open_rgb  # noqa: F401 (ImageLoadError: re-exported)

# The statistics ImageNet-pretrained backbones were trained with; inputs must match them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_image(source) -> Image.Image:
    """Decode one image into an 8-bit RGB PIL image: `source` is a path or a binary file-like
    object (an upload). Every mode becomes the right picture (16-bit and float scaled,
    transparency over white, first frame of an animation): the rules are in images.py, the one
    opener of the project, which also reads regular files only, under a pixel limit.
    Raises ImageLoadError naming the file."""
    return open_rgb(source)


def try_open_image(path: str | os.PathLike) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), or (None, why not) in split.check_image's words and by its rules:
    the file is checked and decoded in the one read, so unreadable files are skipped on the way."""
    try:
        return decode_image(path)[0], None
    except ImageLoadError as error:
        return None, str(error)


def try_decode_image(data: bytes) -> tuple[Image.Image | None, str | None]:
    """`try_open_image` for bytes already in memory (an upload in the app): same rules, same words.
    A multi-frame file (animated GIF/WebP/PNG, multi-page TIFF) gives its first frame."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        return decode_image(io.BytesIO(data))[0], None
    except ImageLoadError as error:
        return None, str(error)


def pil_steps(img_size: int, augmentation: dict | bool | None = None) -> list:
    """The per-image steps on PIL images: resize to a square (the backbone needs a fixed size),
    then the augmentation when asked for (True = the defaults)."""
    if augmentation is True:
        augmentation = DEFAULT_AUGMENTATION
    steps = [transforms.Resize((img_size, img_size), antialias=True)]
    if not augmentation:
        return steps
    if augmentation.get("hflip"):
        steps.append(transforms.RandomHorizontalFlip())
    if augmentation.get("color_jitter"):
        jitter = augmentation["color_jitter"]
        steps.append(transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if augmentation.get("rotation_degrees"):
        steps.append(transforms.RandomRotation(augmentation["rotation_degrees"]))
    return steps


def eval_transform(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> transforms.Compose:
    """Resize to a square, to tensor, ImageNet-normalise: one (3, H, W) float image."""
    return transforms.Compose(pil_steps(img_size) + [transforms.ToTensor(),
                                                     transforms.Normalize(mean, std)])


def train_transform(img_size: int, augmentation: dict | bool | None = None,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> transforms.Compose:
    """The eval transform, with augmentation in front when asked for (True = the defaults)."""
    return transforms.Compose(pil_steps(img_size, augmentation) + [transforms.ToTensor(),
                                                                   transforms.Normalize(mean, std)])


def to_uint8_hwc(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 pixels; stacked, (N, H, W, 3) is the channels-last layout as it stands."""
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def uint8_transform(img_size: int, augmentation: dict | bool | None = None) -> transforms.Compose:
    """The per-image half of eval/train_transform; `normalize_batch` does the rest per batch."""
    return transforms.Compose(pil_steps(img_size, augmentation) + [to_uint8_hwc])


def normalize_batch(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ImageNet-normalised, channels-last, on `device`.

    The same operations in the same order as ToTensor + Normalize, so the same floats; only the
    copy to the device moves uint8 (4x less), and the float work runs once per batch, threaded.
    """
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2)  # a view: NHWC in memory
    mean, std = channel_stats(tuple(mean), tuple(std), images.device)
    return images.float().div_(255).sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as (1, 3, 1, 1) tensors on `device`, made once: a fresh copy to a GPU for every
    batch would wait for the GPU to finish its queue, and the next batch could not be queued."""
    return tuple(torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                 for values in (mean, std))


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """A normalised (3, H, W) tensor back to a displayable uint8 (H, W, 3) RGB array."""
    image = image.detach().float().cpu() * torch.tensor(std)[:, None, None] \
        + torch.tensor(mean)[:, None, None]
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class ImageDataset(Dataset):
    """(path, label) pairs -> (image tensor, label, index). label may be -1 when unknown.

    With skip_unreadable, a file that cannot be decoded gives (None, reason, index) instead of
    raising, and `collate_skipping` batches it apart: a folder is checked while it is predicted.
    """

    def __init__(self, items: list[tuple[Path, int]], transform, skip_unreadable: bool = False):
        self.items = [(Path(path), int(label)) for path, label in items]
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        if not self.skip_unreadable:
            return self.transform(open_image(path)), label, index
        image, reason = try_open_image(path)
        if image is None:
            return None, reason, index
        return self.transform(image), label, index


def collate(samples):
    """(images, labels, indices) as default_collate makes them, but in the main process the images
    are stacked by NumPy, on one thread: torch.stack starts OpenMP threads, which for a few MB of
    pixels cost more than they save, and far more while another process holds a core (a stall of
    up to a second per batch, measured on 2 busy cores). In a worker (one thread) default_collate
    stacks straight into shared memory, which saves a copy on the way to the main process."""
    if get_worker_info() is not None:
        return default_collate(samples)
    images, labels, indices = zip(*samples)
    return (torch.from_numpy(np.stack([image.numpy() for image in images])),
            torch.tensor(labels), torch.tensor(indices))


def collate_skipping(samples):
    """(images, labels, indices, [(index, reason) of the files that could not be read])."""
    failed = [(index, reason) for image, reason, index in samples if image is None]
    good = [sample for sample in samples if sample[0] is not None]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty, empty, failed
    return (*collate(good), failed)


def default_num_workers(device: torch.device | str = "cpu") -> int:
    """Decoding processes for a loader feeding `device`.

    On the CPU the model's threads already use every core, so a worker only pays when cores are
    left over. Measured on 2 cores (AMD EPYC, 32 px JPEGs resized to 224 px, batch 64): one pass
    costs 72-78 CPU-ms per image with 0 workers, 78-84 with 1 and 81-88 with 2; the per-image work
    is ~1 ms against ~70 CPU-ms of ResNet-18, and a worker on a core the model's OpenMP threads
    are using makes them wait for each other. Hence none on 2 cores; one per spare core, at most 4,
    above that (unmeasured: the previous default). A GPU leaves the cores to decoding: up to 8.
    """
    cores = os.cpu_count() or 1
    if torch.device(device).type in ("cuda", "mps"):
        return min(8, max(0, cores - 1))
    return 0 if cores <= 2 else min(4, cores - 1)


def make_loader(items, transform, batch_size: int = 32, sampler=None,
                generator: torch.Generator | None = None, num_workers: int | None = None,
                device: torch.device | str = "cpu", skip_unreadable: bool = False) -> DataLoader:
    """Batches of (images, labels, indices) in `sampler` order (default: as listed); with
    skip_unreadable, (images, labels, indices, failures) as `collate_skipping` makes them."""
    num_workers = default_num_workers(device) if num_workers is None else num_workers
    return DataLoader(
        ImageDataset(items, transform, skip_unreadable), batch_size=batch_size, sampler=sampler,
        generator=generator, num_workers=num_workers,
        collate_fn=collate_skipping if skip_unreadable else collate,
        pin_memory=torch.device(device).type == "cuda",  # faster host-to-GPU copies
    )
