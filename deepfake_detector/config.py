"""What a training run depends on: one flat dataclass, each setting's default and help text stated
once, here.

The command line's `train` options are generated from these fields (cli.py), the notebook's
parameters cell mirrors them (tests/test_cli_parser.py holds the two equal), and every run saves
them as config.json. This module imports nothing heavy, so the command line builds its parser,
and answers --help, without torch, scikit-learn or matplotlib.

A field's metadata says how it appears on the command line:
    flag      the option's name; "--no-x" for a setting that is on by default (store_false)
    help      the one help text of the setting
    parse     the argparse type: checks the value before anything runs or is written
    required  the command line insists on an explicit value (weights: never a silent default)
A field without a flag (augmentation) is set from Python or the notebook only.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

# What augmentation means here, when it is switched on. Small on purpose: a flip or a slight
# colour change does not turn a fake into a real, but a heavy blur might erase the evidence.
DEFAULT_AUGMENTATION = {"hflip": True, "color_jitter": 0.1, "rotation_degrees": 10}

# "draft": large JPEGs decoded at reduced size before the resize (new runs); "full": every pixel
# decoded (runs made before the mode was recorded, and any caller that asks for it).
DECODE_MODES = ("draft", "full")
# "pil": per image, in the workers; "device": per batch, where the model runs; "auto": per device.
RESIZE_MODES = ("auto", "pil", "device")
# What the backbone may compute in (features.autocast_dtype says what each means on each device).
PRECISIONS = ("fp32", "bf16", "fp16", "amp")

# The largest input side (--img-size, a checkpoint's img_size), checked by
# preprocessing.check_img_size and by the command line's type below. Activations grow with the
# square of the side: summed over ResNet-18's layers, one 224 px image needs 30 MB of fp32
# activations and one 4096 px image already 10 GB (its first convolution's output alone is
# 1.1 GB), which Grad-CAM and fine-tuning keep for their backward pass; at 30000 px it would be
# 540 GB. A detail smaller than 1/4096 of the picture is no use to a 7x7-grid model anyway.
MAX_IMG_SIZE = 4096
IMG_SIZE_WHY = (f"a {MAX_IMG_SIZE} px image already needs about 10 GB of ResNet-18 activations "
                "(224, its native size, needs 30 MB)")
# numpy's and torch's seeds: 32 bits (numpy's legacy seeding refuses more, and negatives).
MAX_SEED = 2**32 - 1


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, checked before anything runs or is written."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text!r}")
    return value


def image_size(text: str) -> int:
    """argparse type for --img-size: a whole number from 1 to MAX_IMG_SIZE (IMG_SIZE_WHY)."""
    value = positive_int(text)
    if value > MAX_IMG_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_IMG_SIZE}; got {text!r}: "
                                         f"{IMG_SIZE_WHY}.")
    return value


def whole_number_in(text: str, low: int, high: int, what: str) -> int:
    """`text` as a whole number from `low` to `high`, or argparse's error saying `what` it is."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {what} from {low} to {high}; got {text!r}")
    return value


def seed_number(text: str) -> int:
    """argparse type for every --seed: a whole number from 0 to 2**32 - 1."""
    return whole_number_in(text, 0, MAX_SEED, "a whole number")


def port_number(text: str) -> int:
    """argparse type for --port: a TCP port, 1 to 65535."""
    return whole_number_in(text, 1, 65535, "a port number")


def positive_float_or_find(text: str) -> float | str:
    """argparse type for --lr: a positive number, or "find" (the learning-rate finder)."""
    if text == "find":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a positive number or "find"; got {text!r}') \
            from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive number or "find"; got {text!r}')
    return value


def setting(default=None, help: str = "", *, flag: str | None = None, parse=None,
            required: bool = False, factory=None, choices: tuple | None = None):
    """A TrainConfig field with its command-line spelling and help text as metadata."""
    metadata = {"flag": flag, "help": help, "parse": parse, "required": required,
                "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json in the run directory."""
    data_dir: str = setting("data", "folder with train/ and val/", flag="--data")
    out_dir: str = setting("", "run directory (default outputs/runs/<time>)", flag="--out")
    weights: str = setting(
        "imagenet", "imagenet (torchvision's pretrained weights: downloaded once, needs "
                    "internet the first time), none (random init, on purpose) or a path to a "
                    ".pth file", flag="--weights", required=True)
    img_size: int = setting(224, "input size; ResNet-18's native 224, smaller is faster with "
                                 f"coarser CAMs; at most {MAX_IMG_SIZE}", flag="--img-size",
                            parse=image_size)
    decode: str = setting(
        "draft", "draft (default): large JPEGs decoded at reduced size (the nearest 1/2, 1/4, 1/8 "
                 "at or above --img-size), much faster on photos; full: every pixel. Recorded in "
                 "the run: predict decodes the same way", flag="--decode", choices=DECODE_MODES)
    resize: str = setting(
        "auto", "where images are resized: per image with PIL, or per batch on the device "
                "(auto: PIL on the CPU, the device on a GPU)", flag="--resize",
        choices=RESIZE_MODES)
    # The default recipe, chosen by measurement (README, "The default recipe"). The seed recipe
    # was epochs 50, lr 1e-4, patience 5, standardize False, lr_plateau_patience 0: it stopped at
    # its epoch budget, 0.1 ROC-AUC short of what the features allow on CIFAKE.
    # epochs None: 500 on cached features (early stopping ends training, an epoch costs ms), 50
    # on the plain loop.
    epochs: int | None = setting(
        None, "epoch budget (default 500 on cached features, 50 with --no-feature-cache)",
        flag="--epochs", parse=positive_int)
    batch_size: int = setting(32, "images per batch", flag="--batch-size", parse=positive_int)
    lr: float | str = setting(
        3e-3, 'Adam\'s rate (default %(default)s), or "find": the lr finder\'s suggestion',
        flag="--lr", parse=positive_float_or_find)
    weight_decay: float = setting(0.0, "Adam's weight decay", flag="--weight-decay", parse=float)
    patience: int = setting(10, "epochs without val-loss improvement before stopping",
                            flag="--patience", parse=positive_int)
    min_delta: float = setting(1e-4, "what counts as an improvement of the val loss",
                               flag="--min-delta", parse=float)
    lr_plateau_patience: int = setting(3, "stalled epochs before the rate is cut (0: constant rate)",
                                       flag="--lr-plateau-patience", parse=int)
    lr_plateau_factor: float = setting(0.1, "what the rate is multiplied by when it is cut",
                                       flag="--lr-plateau-factor", parse=float)
    standardize: bool = setting(
        True, "train on raw features (the seed recipe: --lr 1e-4 --epochs 50 --patience 5 "
              "--lr-plateau-patience 0 --no-standardize)", flag="--no-standardize")
    probe: bool = setting(True, "skip the logistic-regression probe", flag="--no-probe")
    seed: int = setting(0, "seed of the head's init, the batch order and augmentation",
                        flag="--seed", parse=seed_number)
    augment: bool = setting(False, "flip, colour jitter, small rotation (off by default: see the "
                                   "notebook on why)", flag="--augment")
    augmentation: dict = setting(help="what --augment does", factory=lambda: dict(DEFAULT_AUGMENTATION))
    augment_views: int = setting(4, "augmented views cached per image when --augment (cached path)",
                                 flag="--augment-views", parse=positive_int)
    cache_features: bool = setting(True, "plain loop: a full forward pass per image per epoch",
                                   flag="--no-feature-cache")
    cache_dir: str = setting("outputs/cache", 'feature cache ("" for none)', flag="--cache-dir")
    device: str = setting("auto", "auto (cuda, mps or cpu, in that order), or one of them",
                          flag="--device")
    num_workers: int | None = setting(
        None, "image-decoding processes (default: measured, 0 on 2 cores)", flag="--num-workers",
        parse=int)
    overwrite: bool = setting(False, "replace an existing run directory", flag="--overwrite")
    precision: str = setting(
        "fp32", "what the backbone computes in: fp32 (the same numbers on every device and path), "
                "or opt-in mixed precision bf16, fp16, amp (bf16/fp16 on CUDA, fp32 elsewhere): "
                "faster on GPUs, numbers differ slightly; evaluate, predict and Grad-CAM default "
                "to the run's", flag="--precision", choices=PRECISIONS)
    deterministic: bool = setting(
        False, "torch's and cuDNN's deterministic kernels: the same numbers on "
               "every run of a GPU, a little slower", flag="--deterministic")
