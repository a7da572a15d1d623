"""How an image becomes the model's input tensor: one object, recorded with the run.

`Preprocessing` holds every setting between a file and the tensor the backbone sees (the side it
is resized to, the normalisation, how a large JPEG is decoded, where the resize runs, what the
backbone computes in), after torchvision's weights, which carry their own transforms. A run is
trained with one (`Preprocessing.from_config`), its checkpoint records it (`record`), and every
later use of the run reads it back (`Preprocessing.from_checkpoint`): extraction, predict,
evaluate, Grad-CAM, the app and the widgets take this one object instead of six loose settings,
and its defaults are stated here once.

This module imports nothing heavy (no torch): the checks of the settings live here, so the
command line and config.py's users can check a value without loading a model.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .config import DECODE_MODES, IMG_SIZE_WHY, MAX_IMG_SIZE, PRECISIONS, RESIZE_MODES

# The statistics ImageNet-pretrained backbones were trained with; inputs must match them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_img_size(img_size) -> int:
    """`img_size` as given, or a ValueError in one line: a whole number from 1 to MAX_IMG_SIZE
    (4096: a larger side costs gigabytes of activations per image, config.IMG_SIZE_WHY)."""
    if not isinstance(img_size, numbers.Integral) or isinstance(img_size, bool) or img_size < 1:
        raise ValueError(f"img_size must be a whole number from 1 to {MAX_IMG_SIZE}; "
                         f"got {img_size!r}.")
    if img_size > MAX_IMG_SIZE:
        raise ValueError(f"img_size must be at most {MAX_IMG_SIZE}; got {img_size!r}: "
                         f"{IMG_SIZE_WHY}.")
    return img_size


def check_decode(decode: str) -> str:
    """`decode` as given, or a ValueError naming the choices (config.DECODE_MODES)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {decode!r}.")
    return decode


def check_resize(resize: str) -> str:
    """`resize` as given, or a ValueError naming the choices (config.RESIZE_MODES)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}.")
    return resize


def check_precision(precision: str) -> str:
    """`precision` as given, or a ValueError in one line naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}. "
                         "fp32 (the default) gives the same numbers on every device and path; "
                         "bf16/fp16/amp (mixed precision) are faster on GPUs.")
    return precision


def check_channel_stats(name: str, values) -> tuple:
    """mean or std as a tuple of finite numbers, one per channel (std: each above 0)."""
    values = tuple(values)
    if len(values) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                    and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be 3 finite numbers, one per RGB channel; got {values!r}.")
    if name == "std" and min(values) <= 0:
        raise ValueError(f"std must be above 0 in every channel; got {values!r}.")
    return values


@dataclass(frozen=True)
class Preprocessing:
    """From a file to the backbone's input, and what the backbone computes in.

    img_size   the square side the image is resized to (ResNet-18's native 224)
    mean, std  the per-channel normalisation (ImageNet's: what the pretrained backbone expects)
    decode     "draft": a large JPEG decoded at reduced size first (the nearest 1/2, 1/4, 1/8 at
               or above img_size); "full": every pixel (config.DECODE_MODES)
    resize     "pil" per image in the workers, "device" per batch where the model runs, "auto":
               per device (data.resolve_resize; config.RESIZE_MODES)
    precision  "fp32", or mixed precision "bf16", "fp16", "amp" (features.autocast_dtype)

    Frozen: a variant is `dataclasses.replace(prep, precision="bf16")`, checked like a new one.
    """
    img_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    decode: str = "draft"
    resize: str = "auto"
    precision: str = "fp32"

    def __post_init__(self):
        check_img_size(self.img_size)
        # lists (a checkpoint's, config.json's) become tuples: hashable, and equal to the defaults
        object.__setattr__(self, "mean", check_channel_stats("mean", self.mean))
        object.__setattr__(self, "std", check_channel_stats("std", self.std))
        check_decode(self.decode)
        check_resize(self.resize)
        check_precision(self.precision)

    @classmethod
    def from_config(cls, config) -> Preprocessing:
        """What a run with this TrainConfig (config.py) trains with: its image size, decode mode,
        resize place and precision, normalised with ImageNet's statistics."""
        return cls(img_size=config.img_size, decode=config.decode, resize=config.resize,
                   precision=config.precision)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> Preprocessing:
        """What a trained run's checkpoint records. A checkpoint from before the decode mode was
        recorded decoded in full ("full"), one from before the precision was recorded computed in
        fp32. Where to resize is not recorded (within data.DEVICE_RESIZE_TOLERANCE the same
        pixels): every use of a run picks it for its own device ("auto")."""
        return cls(img_size=checkpoint["img_size"], mean=checkpoint["mean"], std=checkpoint["std"],
                   decode=checkpoint.get("decode") or "full",
                   precision=checkpoint.get("precision") or "fp32")

    def record(self) -> dict:
        """What the checkpoint stores of it, under its flat keys (plain values, loadable with
        weights_only=True); from_checkpoint reads them back."""
        return {"img_size": self.img_size, "decode": self.decode, "mean": list(self.mean),
                "std": list(self.std), "precision": self.precision}

    @property
    def decode_size(self) -> int | None:
        """The target size the decoder gets: img_size in "draft" mode, None (full decode) else."""
        return self.img_size if self.decode == "draft" else None
