"""From files to tensors: open any image safely, transform it, batch it.

Every image goes through `open_image` (so a broken file names itself) and one of two transforms:
`eval_transform` (resize + normalise) for validation, features and Grad-CAM, and
`train_transform`, which adds the augmentation that training may ask for.

Bulk passes (feature extraction, predict, evaluate) split the same steps in two: worker processes
do the per-image part on PIL images and hand over uint8 pixels (`uint8_transform`), the main
process converts and normalises whole batches at once (`normalize_batch`). The numbers are the
same as `eval_transform`'s, bit for bit; the uint8 batch is 4x smaller to pass between processes
and to copy to a GPU, and it arrives already in the channels-last layout the model runs in.

Two choices shape the pixels, and both are recorded where they matter:

* decode (`DECODE_MODES`): "draft" decodes a large JPEG at reduced size first (images.py; far
  less work for a photo), "full" decodes every pixel. A run records its mode and every later use
  of it (evaluate, predict, Grad-CAM, the app) decodes the same way; the feature cache keys on it.
* resize (`RESIZE_MODES`): "pil" resizes each image in the workers, as above; "device" hands the
  images over at their decoded size and resizes whole batches where the model runs
  (`resize_batch`, PIL's bilinear filter and rounding reproduced: within `DEVICE_RESIZE_TOLERANCE`
  of PIL's pixels). A GPU is far faster at it than a worker process; on the CPU PIL's per-image
  resize measured faster (benchmarks/README.md), so "auto" picks "pil" there.
"""
from __future__ import annotations

import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from torchvision import transforms

# What --augment means: stated once, with the settings.
from .config import DEFAULT_AUGMENTATION
from .distributed import changed_since_listed
from .images import ImageLoadError, decode_image, open_rgb  # noqa: F401 (ImageLoadError: re-exported)
# The normalisation and the checks of the decode and resize modes belong to Preprocessing, the
# one object for how an image becomes a tensor; re-exported here, where the steps run.
from .preprocessing import (IMAGENET_MEAN, IMAGENET_STD, check_decode,  # noqa: F401
                            check_resize)

# The largest difference between a device resize and PIL's, in uint8 levels (0-255), and the
# largest mean difference. The device resize runs in float32 against PIL's fixed-point weights,
# so a sum on a rounding boundary can go either way, and Pillow 13 runs some resizes height-first
# (by a rule it does not document), where the device always goes width-first: measured over a
# grid of sizes from 20 to 1280 px to 64 and 224, at most 2 levels (1 but for 64 -> 224 px
# upscales), on a median 0.6% of the pixels and at most 27%, mean under 0.3 levels. Whole-factor
# upscales (CIFAKE's 32 -> 224) match exactly. tests/test_data_path.py holds it. The feature
# cache keeps the two apart all the same (features.cache_key).
DEVICE_RESIZE_TOLERANCE = 2
DEVICE_RESIZE_MEAN_TOLERANCE = 0.3
# Beyond this many decoded pixels a worker resizes the image itself even in "device" mode: a
# batch of 64 full-size 24 MP photos (PNG, WebP: no reduced decode) would be 4.6 GB of uint8.
DEVICE_RESIZE_MAX_PIXELS = 4_000_000


def decode_size(decode: str, img_size: int) -> int | None:
    """The target_size the decoder gets: img_size in "draft" mode, None (full decode) else."""
    return img_size if check_decode(decode) == "draft" else None


def resolve_resize(resize: str, device: torch.device | str, augmentation=None) -> str:
    """"pil" or "device" for a pass on `device`. "auto": the device on a GPU (CUDA, MPS), PIL's
    per-image resize on the CPU, where it measured faster (benchmarks/README.md). Augmentation
    acts on PIL images after the resize, so it always resizes with PIL."""
    check_resize(resize)
    if augmentation:
        return "pil"
    if resize == "auto":
        return "device" if torch.device(device).type in ("cuda", "mps") else "pil"
    return resize


def open_image(source, target_size: int | None = None) -> Image.Image:
    """Decode one image into an 8-bit RGB PIL image: `source` is a path or a binary file-like
    object (an upload). Every mode becomes the right picture (16-bit and float scaled,
    transparency over white, first frame of an animation): the rules are in images.py, the one
    opener of the project, which also reads regular files only, under a pixel limit.
    `target_size`: decode a large JPEG at reduced size for a resize to that side (images.py).
    Raises ImageLoadError naming the file."""
    return open_rgb(source, target_size)


def try_open_image(path: str | os.PathLike, target_size: int | None = None,
                   with_size: bool = False) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), or (None, why not) in split.check_image's words and by its rules:
    the file is checked and decoded in the one read, so unreadable files are skipped on the way.
    `with_size`: a third item, the file's native (width, height) from the decode (None when
    unreadable): what its header says, even where a JPEG was decoded at reduced size."""
    try:
        image, facts = decode_image(path, target_size=target_size)
    except ImageLoadError as error:
        return (None, str(error), None) if with_size else (None, str(error))
    return (image, None, (facts["width"], facts["height"])) if with_size else (image, None)


def try_decode_image(data: bytes,
                     target_size: int | None = None) -> tuple[Image.Image | None, str | None]:
    """`try_open_image` for bytes already in memory (an upload in the app): same rules, same words.
    A multi-frame file (animated GIF/WebP/PNG, multi-page TIFF) gives its first frame."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        return decode_image(io.BytesIO(data), target_size=target_size)[0], None
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


def own_size_transform(img_size: int) -> transforms.Compose:
    """The workers' half of the "device" resize: uint8 pixels at the decoded size (a reduced
    JPEG decode already brought a photo near `img_size`). An image still above
    DEVICE_RESIZE_MAX_PIXELS is resized here with PIL, which the device resize matches."""
    def bounded(image: Image.Image) -> Image.Image:
        if image.width * image.height <= DEVICE_RESIZE_MAX_PIXELS:
            return image
        return transforms.Resize((img_size, img_size), antialias=True)(image)
    return transforms.Compose([bounded, to_uint8_hwc])


def pixel_transform(img_size: int, resize: str, augmentation: dict | bool | None = None):
    """What the workers do to each decoded image for a batch pass: resize it ("pil": the
    uint8_transform) or hand it over at its own size ("device": resized by normalize_batch)."""
    if resize == "device" and not augmentation:
        return own_size_transform(img_size)
    return uint8_transform(img_size, augmentation)


def normalize_batch(images: torch.Tensor | list, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    device: torch.device | str = "cpu", img_size: int | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ImageNet-normalised, channels-last, on `device`.

    The same operations in the same order as ToTensor + Normalize, so the same floats; only the
    copy to the device moves uint8 (4x less), and the float work runs once per batch, threaded.
    With `img_size`, images of another size are first resized to it on `device` (resize_batch);
    `images` may then be a list of (H, W, 3) uint8 tensors of different sizes (collate gives one
    when a batch mixes sizes), and the result keeps their order.
    """
    if img_size is not None:
        return normalize_batch(resize_batch(images, img_size, device), mean, std, device)
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2)  # a view: NHWC in memory
    mean, std = channel_stats(tuple(mean), tuple(std), images.device)
    return images.float().div_(255).sub_(mean).div_(std)


def resize_batch(images: torch.Tensor | list, img_size: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) images, or a list of (H, W, 3) of mixed sizes -> (N, 3, S, S) float32
    holding whole numbers 0-255 on `device`, channels-last: PIL's resize to S x S, on the device.

    Each group of same-size images moves as uint8 and is resized in one call (a batch of mixed
    sizes costs a call per size, and keeps its order). PIL's bilinear resize is reproduced step
    by step (pil_bilinear): a triangle filter widened by the scale when shrinking
    (`antialias=True`), pixel centres at half-pixels (`align_corners=False`), two passes, each
    rounded to uint8 as PIL stores it; within DEVICE_RESIZE_TOLERANCE of PIL's pixels.
    """
    device = torch.device(device)
    if isinstance(images, torch.Tensor):  # one size already: a single group, no regrouping
        pixels = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
        if images.shape[1:3] == (img_size, img_size):
            return pixels.float()
        return pil_bilinear(pixels, img_size).contiguous(memory_format=torch.channels_last)
    out = torch.empty(len(images), 3, img_size, img_size, device=device,
                      memory_format=torch.channels_last)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for indices in groups.values():
        group = torch.stack([images[i] for i in indices]) if len(indices) > 1 \
            else images[indices[0]][None]
        out[indices] = pil_bilinear(group.to(device, non_blocking=True).permute(0, 3, 1, 2),
                                    img_size)
    return out


def pil_bilinear(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """PIL's two-pass bilinear resize of (N, 3, H, W) pixels to size x size, as float32 whole
    numbers 0-255: the width first, then the height, each pass rounded half up and clipped as
    PIL's uint8 intermediate image is. The same float32 steps on every device (torch's uint8 CPU
    kernel was no closer to PIL, and CUDA has none). PIL's fixed-point weights against float32,
    and PIL's own choice of which pass comes first (Pillow 13 does some images height-first, by
    a rule it does not document), leave DEVICE_RESIZE_TOLERANCE."""
    height, width = pixels.shape[-2:]
    pixels = pixels.float()
    for shape in ((height, size), (size, size)):
        if tuple(pixels.shape[-2:]) != shape:
            pixels = F.interpolate(pixels, size=shape, mode="bilinear", antialias=True,
                                   align_corners=False).add_(0.5).floor_().clamp_(0, 255)
    return pixels


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
    `items` listed as a distributed.Listing (with each file's size and modification time when it
    was listed): a file that changed or vanished since is not used (checked before and after its
    read), skipped with that reason, or with skip_unreadable off, an ImageLoadError naming it.
    `with_size`: each good sample also carries the file's native (width, height), known from the
    decode (no second read of its header); `collate` batches them as a (N, 2) tensor, last.
    """

    def __init__(self, items: list[tuple[Path, int]], transform, skip_unreadable: bool = False,
                 decode_size: int | None = None, with_size: bool = False):
        self.items = [(Path(path), int(label)) for path, label in items]
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.decode_size = decode_size  # decode a large JPEG at reduced size for this side
        self.stamps = getattr(items, "stamps", None)  # (size, mtime) as listed (Listing)
        self.with_size = with_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        stamp = None if self.stamps is None else self.stamps[index]
        changed = changed_since_listed(path, stamp)
        if changed is None:
            if self.with_size:
                image, reason, size = try_open_image(path, self.decode_size, True)
                if image is None and not self.skip_unreadable:
                    open_image(path, self.decode_size)  # raises, naming the file
                    raise ImageLoadError(f"Cannot read image {path}: {reason}.")
            elif self.skip_unreadable:
                image, reason = try_open_image(path, self.decode_size)
            else:
                image, reason = open_image(path, self.decode_size), None
            changed = changed_since_listed(path, stamp)  # (while it was read)
        if changed is not None:
            if not self.skip_unreadable:
                raise ImageLoadError(f"{path} {changed}.")
            return None, changed, index
        if image is None:
            return None, reason, index
        return (self.transform(image), label, index) + ((size,) if self.with_size else ())


def collate(samples):
    """(images, labels, indices) as default_collate makes them, but in the main process the images
    are stacked by NumPy, on one thread: torch.stack starts OpenMP threads, which for a few MB of
    pixels cost more than they save, and far more while another process holds a core (a stall of
    up to a second per batch, measured on 2 busy cores). In a worker (one thread) default_collate
    stacks straight into shared memory, which saves a copy on the way to the main process.
    Images of different sizes (handed over for a device resize) stay a list, in order.
    Samples that carry native sizes (ImageDataset's with_size) add them, (N, 2), last."""
    images, labels, indices, *sizes = zip(*samples)
    sizes = (torch.tensor(sizes[0]).reshape(-1, 2),) if sizes else ()
    if len({tuple(image.shape) for image in images}) > 1:
        return list(images), torch.tensor(labels), torch.tensor(indices), *sizes
    if get_worker_info() is not None:
        return (*default_collate([sample[:3] for sample in samples]), *sizes)
    return (torch.from_numpy(np.stack([image.numpy() for image in images])),
            torch.tensor(labels), torch.tensor(indices), *sizes)


def collate_skipping(samples):
    """(images, labels, indices, [(index, reason) of the files that could not be read]), and the
    native sizes after them when the samples carry them."""
    failed = [(sample[2], sample[1]) for sample in samples if sample[0] is None]
    good = [sample for sample in samples if sample[0] is not None]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty, empty, failed
    batch = collate(good)
    return (*batch[:3], failed, *batch[3:])


def default_num_workers(device: torch.device | str = "cpu") -> int:
    """Decoding processes for a loader feeding `device`.

    On the CPU the model's threads already use every core, so a worker only pays when cores are
    left over. Measured on 2 cores (AMD EPYC, 32 px JPEGs resized to 224 px, batch 64): one pass
    costs 72-78 CPU-ms per image with 0 workers, 78-84 with 1 and 81-88 with 2; the per-image work
    is ~1 ms against ~70 CPU-ms of ResNet-18, and a worker on a core the model's OpenMP threads
    are using makes them wait for each other. Hence none on 2 cores; one per spare core, at most 4,
    above that (unmeasured: the previous default). A GPU leaves the cores to decoding: up to 8.
    Under torchrun the processes of one machine share its cores (LOCAL_WORLD_SIZE of them).
    """
    cores = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if torch.device(device).type in ("cuda", "mps"):
        return min(8, max(0, cores - 1))
    return 0 if cores <= 2 else min(4, cores - 1)


def make_loader(items, transform, batch_size: int = 32, sampler=None,
                generator: torch.Generator | None = None, num_workers: int | None = None,
                device: torch.device | str = "cpu", skip_unreadable: bool = False,
                decode_size: int | None = None, with_size: bool = False) -> DataLoader:
    """Batches of (images, labels, indices) in `sampler` order (default: as listed); with
    skip_unreadable, (images, labels, indices, failures) as `collate_skipping` makes them;
    `with_size`: then the images' native sizes (N, 2), read in the decode (ImageDataset).
    `decode_size`: large JPEGs are decoded at reduced size for a resize to it (decode_size())."""
    num_workers = default_num_workers(device) if num_workers is None else num_workers
    return DataLoader(
        ImageDataset(items, transform, skip_unreadable, decode_size, with_size),
        batch_size=batch_size,
        sampler=sampler,
        generator=generator, num_workers=num_workers,
        collate_fn=collate_skipping if skip_unreadable else collate,
        pin_memory=torch.device(device).type == "cuda",  # faster host-to-GPU copies
    )


def decoded_ahead(loader: DataLoader):
    """The batches of `loader`, the next one decoded in a background thread while the caller
    runs the model on this one. A loader without worker processes decodes in this process, one
    batch after another between the forward passes; PIL releases the GIL while it decodes and
    resizes, so a thread overlaps the two. On 2 cores, 320 megapixel JPEGs extracted at 0.82x of
    the raw forward one after the other, 0.91x overlapped (medians of 8 alternating rounds,
    benchmarks/README.md). With workers the loader already works ahead: it is iterated as it is.
    The batches, their order and any error (raised here, at its batch) are the loader's own."""
    if loader.num_workers > 0:
        yield from loader
        return
    batches = iter(loader)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        upcoming = pool.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = pool.submit(next, batches, None)
            yield batch
