"""Extract the frozen backbone's 512-d features once, and keep them.

With the backbone frozen, an image's features never change while the head trains, so pushing every
image through ResNet-18 again each epoch only repeats work. One pass here, then every epoch of
training costs milliseconds. The cache key covers everything the features depend on (the files'
bytes, their order and labels, image size, how they are decoded and resized, normalisation,
augmentation, the backbone's exact weights, library versions), so a change can never serve stale
features. The same un-augmented pass takes what the OOD score's layers are fitted on (ood.py), for
an evenly spaced sample of the images, and the cache file keeps it beside the features
(cached_extraction): training makes no second pass for it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from .progress import tqdm

from . import distributed
from .data import decoded_ahead, make_loader, normalize_batch, pixel_transform, resolve_resize
from .model import backbone_features, backbone_fingerprint
# The check of a precision's name is Preprocessing's (torch-free, for the command line); what
# each precision means on each device is here (autocast_dtype).
from .preprocessing import Preprocessing, check_precision

# 2: images.py decodes 16-bit, float and transparent images differently; 3: the key holds the
# decode mode (reduced-size JPEG decoding) and where the resize ran (PIL or the device). The
# OOD layers' statistics an entry may hold beside the features (cached_extraction) did not change
# the features: an entry written before them keeps its key and is read (stored_layers).
CACHE_FORMAT = 3
# Feature sets larger than this are stored as float16 on disk (half the size; ~1e-3 relative error).
FLOAT16_ABOVE_N_IMAGES = 100_000


@contextlib.contextmanager
def channels_last(model: torch.nn.Module):
    """Run convolutions in NHWC layout (faster on CPU and tensor cores), then put the model back."""
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def autocast_dtype(device: torch.device, precision: str = "fp32") -> torch.dtype:
    """What the backbone computes in. fp32 by default everywhere, so extraction, the plain loop,
    evaluation and Grad-CAM agree on every device; mixed precision is opt-in: "bf16", "fp16", or
    "amp" = bf16 where the GPU supports it, else fp16, on CUDA (full fp32 elsewhere: the CPU's
    bf16 kernels are slower than its fp32 ones)."""
    device = torch.device(device)
    check_precision(precision)
    if precision == "amp":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def autocast_for(device: torch.device, precision: str = "fp32"):
    """Mixed precision as `precision` asks; in fp32, true fp32 (exact_fp32)."""
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    if dtype != torch.float32:
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    with exact_fp32(device):
        yield


@contextlib.contextmanager
def exact_fp32(device: torch.device, precision: str = "fp32"):
    """When `precision` means fp32 on CUDA: TF32 off for the block, forward and backward. TF32
    rounds to 10 mantissa bits, and cuDNN picks other kernels for other batch sizes, so the cached
    and the plain loop would drift apart by ~1e-3. Elsewhere (and under bf16/fp16) a no-op."""
    device = torch.device(device)
    if device.type != "cuda" or autocast_dtype(device, precision) != torch.float32:
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def cudnn_autotune(device: torch.device):
    """Let cuDNN pick the fastest kernels: every batch of a pass has the same shape. Not in
    deterministic mode (determinism.py): the fastest kernel can differ from run to run."""
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled() \
            or torch.backends.cudnn.deterministic:
        yield
        return
    before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def inference_pass(model: torch.nn.Module, device: torch.device, precision: str = "fp32"):
    """Everything a forward-only pass over many images wants: no autograd bookkeeping,
    channels-last, cuDNN autotuning on CUDA, and `precision` (autocast_for); the model is put back
    afterwards."""
    model.eval()
    # channels_last outside inference_mode: converting the weights inside it would turn them into
    # inference tensors, and autograd through the model (Grad-CAM on layer3, fine-tuning the same
    # model afterwards) would fail.
    with channels_last(model), torch.inference_mode(), autocast_for(device, precision), \
            cudnn_autotune(device):
        yield model


def head_in_fp32(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """model(images), with the backbone in whatever precision the caller's autocast_for set and
    the head in float32 on float32 features: what the head saw in training, where it learns on
    the float32 features extraction returns. In fp32 the same as model(images)."""
    features = backbone_features(model, images).float()
    with torch.autocast(images.device.type, enabled=False):
        return model.fc(features)


def lagged(outputs, device: torch.device):
    """Yield each item one step late on a GPU: reading batch i's result back (a sync) only after
    batch i+1 is queued keeps the GPU busy. On the CPU there is no queue to keep full, so the
    items pass as they come (and only the batch being decoded ahead waits behind them)."""
    if torch.device(device).type == "cpu":
        yield from outputs
        return
    previous = None
    for item in outputs:
        if previous is not None:
            yield previous
        previous = item
    if previous is not None:
        yield previous


@dataclass(frozen=True)
class Views:
    """Which views of each image cached_features extracts, one backbone pass each: the image as
    it is (no `augmentation`: one view), or `n` augmented views (data.pil_steps), view v drawn with
    seed `seed + v`. The cache key holds all three, the seed only where it draws augmentation."""
    augmentation: dict | None = None
    n: int = 1
    seed: int = 0

    @property
    def count(self) -> int:
        """The number of views extracted: n with augmentation, else 1."""
        return self.n if self.augmentation else 1


def extract_features(model, items, prep: Preprocessing, augmentation=None, batch_size: int = 64,
                     num_workers: int | None = None, desc: str = "features",
                     seed: int = 0, layers: dict | None = None) -> torch.Tensor:
    """(N, 512) float32 features of `items` [(path, label)], in order, on the CPU (under torchrun:
    on rank 0, from every rank's share; None on the other ranks), computed where the model is.

    `prep` (preprocessing.py) says how each image becomes the model's input. With
    `augmentation`, each call draws one augmented view per image (seeded). Workers decode (a
    large JPEG at reduced size with prep.decode "draft") and, with the "pil" resize, resize to
    uint8; this process resizes ("device"), normalises each batch and runs the backbone on it, in
    prep.precision (autocast_for); the features come back as float32 whatever it computed in.

    `layers` (a dict; un-augmented passes only): filled on rank 0, from this same pass, with what
    the OOD score's layers are fitted on (ood.fit_for_run) for the rows ood.evenly_spaced(N) alone
    (memory bounded however many images): sample_layers' dict, as layer_statistics takes them.
    """
    from .ood import PENULTIMATE, CapturedFeatures, evenly_spaced
    device = next(model.parameters()).device
    resize = resolve_resize(prep.resize, device, augmentation)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the augmentation draws from the global generator in each worker
    # Under torchrun, this rank's whole batches only (distributed.py); rank 0 gathers them all.
    loader = make_loader(items, pixel_transform(prep.img_size, resize, augmentation), batch_size,
                         sampler=distributed.my_share(len(items), batch_size),
                         generator=generator, num_workers=num_workers, device=device,
                         decode_size=prep.decode_size)
    on_device = prep.img_size if resize == "device" else None
    sample = None if layers is None or augmentation else torch.from_numpy(evenly_spaced(len(items)))
    features, parts = None, []  # sized by the backbone's output, whatever head sits on top

    def batches(captured):
        for images, _, indices in tqdm(decoded_ahead(loader), total=len(loader), desc=desc,
                                       unit="batch", leave=False):
            if sample is not None:  # the hooks take this batch's sample rows alone (all: None)
                rows = torch.isin(indices, sample).nonzero().flatten()
                captured.rows = None if len(rows) == len(indices) else rows
            output = backbone_features(model, normalize_batch(images, prep.mean, prep.std,
                                                              device, on_device))
            yield indices, output, {name: value for name, value in captured.pop().items()
                                    if name != PENULTIMATE}  # that one is `output` itself

    with inference_pass(model, device, prep.precision), \
            CapturedFeatures(model, enabled=sample is not None) as captured:
        on_cpu = ((indices, (output.float().cpu(), {k: v.cpu() for k, v in part.items()}))
                  for indices, output, part in lagged(batches(captured), device))
        for indices, (output, part) in distributed.in_input_order(on_cpu):
            if features is None:
                features = torch.empty(len(items), output.shape[1])
            features[indices] = output
            parts.append(part)
    if not distributed.is_main():
        return None  # its share went to rank 0
    if sample is not None:
        layers.update(sample_layers(parts, sample))
    return features if features is not None else torch.empty(0, 512)


def sample_layers(parts: list[dict], sample: torch.Tensor) -> dict:
    """{"indices": the sample's rows (N,), and each of ood.LAYERS' modules: its statistics of
    those rows (N, d) float32}, from the batches' captured parts in input order."""
    from .ood import LAYERS
    layers = {"indices": sample}
    for name in LAYERS:
        pieces = [part[name] for part in parts if name in part]
        if pieces:
            layers[name] = torch.cat(pieces)
    return layers


def layer_statistics(model, paths, prep: Preprocessing, batch_size: int = 64,
                     num_workers: int | None = None) -> dict:
    """The OOD score's features of each of `paths` ({module: (N, d) array}, ood.CapturedFeatures),
    in order, from one forward pass made as extract_features (and predict) make theirs: what
    training fits the OOD score's layers on (ood.fit_for_run). In this process alone."""
    from .ood import CapturedFeatures
    device = next(model.parameters()).device
    resize = resolve_resize(prep.resize, device)
    loader = make_loader([(path, -1) for path in paths], pixel_transform(prep.img_size, resize),
                         batch_size, num_workers=num_workers, device=device,
                         decode_size=prep.decode_size)
    on_device = prep.img_size if resize == "device" else None
    parts = []
    with inference_pass(model, device, prep.precision), CapturedFeatures(model) as captured:
        for images, _, _ in tqdm(decoded_ahead(loader), total=len(loader), desc="OOD layers",
                                 unit="batch", leave=False):
            backbone_features(model, normalize_batch(images, prep.mean, prep.std, device,
                                                     on_device))
            parts.append({name: value.cpu() for name, value in captured.pop().items()})
    return {name: torch.cat([part[name] for part in parts]).numpy() for name in parts[0]}


def files_digest(items) -> str:
    """SHA-256 over every file's bytes, its label and its position: the data half of the key."""
    digest = hashlib.sha256()
    for path, label in items:
        digest.update(f"{label}:".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def cache_key(model, items, prep: Preprocessing, views: Views = Views()) -> str:
    """The key of `items`' features with this model, prep and views. The backbone's precision
    enters as what it computes in on the model's device (bf16 features on a GPU are not fp32 ones;
    "amp" on the CPU is fp32), the resize as where it runs there ("pil" or "device", never
    "auto"), and the decode mode as it is: the pixels differ slightly between them, so their
    features are kept apart."""
    device = next(model.parameters()).device
    augmentation = views.augmentation
    material = {
        "format": CACHE_FORMAT, "files": files_digest(items), "n": len(items),
        "img_size": prep.img_size, "decode": prep.decode,
        "resize": resolve_resize(prep.resize, device, augmentation),
        "mean": list(prep.mean), "std": list(prep.std),
        "augmentation": augmentation or None, "n_views": views.count,
        "seed": views.seed if augmentation else None,
        "backbone": backbone_fingerprint(model),
        "precision": str(autocast_dtype(device, prep.precision)),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def cache_file(model, items, prep: Preprocessing, cache_dir: str | Path,
               views: Views = Views()) -> Path:
    """Where cached_features keeps (or finds) these features: named by their cache key."""
    return Path(cache_dir) / f"features-{cache_key(model, items, prep, views)[:24]}.pt"


class FeatureCacheWarning(UserWarning):
    """A damaged feature-cache entry was moved aside and its features are extracted again."""


class Extraction(NamedTuple):
    """What cached_extraction returns: the features, and (None when it has none, e.g. a cache
    entry of an earlier version, or augmented views) what the OOD score's layers are fitted on,
    taken in the same pass (extract_features' `layers`)."""
    features: torch.Tensor | None
    layers: dict | None = None
    from_cache: bool = False


def read_cache_entry(path: Path, leading_shape: tuple) -> Extraction | None:
    """The float32 features stored at `path` (a cache file of cached_features), with its layers'
    statistics when it holds valid ones (stored_layers), or None when there are none. A damaged
    entry (truncated, overwritten, of the wrong shape) is named in one warning
    and moved aside to `<name>.damaged-<time>`, never deleted, so the features are extracted
    again and every retry does not fail on it."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        features = stored["features"]
        if not isinstance(features, torch.Tensor) or features.ndim != len(leading_shape) + 1 \
                or tuple(features.shape[:-1]) != leading_shape:
            raise ValueError(f"features of shape {tuple(getattr(features, 'shape', ()))}, not "
                             f"{leading_shape} x N")
        return Extraction(features.float(), stored_layers(stored.get("layers"), leading_shape),
                          from_cache=True)
    except PermissionError:  # not damaged: not ours to read (the error names the file)
        raise
    except (RuntimeError, EOFError, ValueError, KeyError, TypeError, IndexError, OSError,
            pickle.UnpicklingError) as error:  # OSError: torch's reader of a truncated zip
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{os.getpid()}")
        path.rename(aside)
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        warnings.warn(f"feature cache entry {path} is damaged ({type(error).__name__}: {reason}): "
                      f"moved aside to {aside.name}; extracting its features again.",
                      FeatureCacheWarning, stacklevel=4)
        return None


def stored_layers(layers, leading_shape: tuple) -> dict | None:
    """A cache entry's layers' statistics if they are this version's: the rows
    ood.evenly_spaced(N) and every one of ood.LAYERS, a float32 row each. None otherwise (an entry
    written before they were kept, or augmented views): the features are used all the same, and
    training takes the layers' statistics in one more pass (ood.fit_for_run)."""
    from .ood import LAYERS, evenly_spaced
    if not isinstance(layers, dict) or len(leading_shape) != 1:
        return None
    indices = layers.get("indices")
    sample = torch.from_numpy(evenly_spaced(leading_shape[0]))
    if not isinstance(indices, torch.Tensor) or not torch.equal(indices.long(), sample):
        return None
    statistics = {name: layers.get(name) for name in LAYERS}
    if not all(isinstance(value, torch.Tensor) and value.ndim == 2 and len(value) == len(sample)
               for value in statistics.values()):
        return None
    return {"indices": sample, **{name: value.float() for name, value in statistics.items()}}


def write_cache_entry(path: Path, features: torch.Tensor, layers: dict | None,
                      dtype: torch.dtype) -> None:
    """The cache file at `path`, written whole or not at all: the features as `dtype`, and the
    layers' statistics (float32: a sample of at most ood.LAYER_SAMPLE rows) when there are any."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs never share one
    entry = {"features": features.to(dtype)}
    if layers is not None:
        entry["layers"] = layers
    torch.save(entry, temporary)
    temporary.replace(path)  # atomic: an interrupted run never leaves half a cache file


def cached_features(model, items, prep: Preprocessing, cache_dir: str | Path | None = None,
                    views: Views = Views(), batch_size: int = 64, num_workers=None,
                    desc: str = "features", log=print,
                    cache_path: Path | None = None) -> torch.Tensor:
    """Features of `items`, from the cache when the exact same ones were extracted before.

    Returns (N, 512), or (views.n, N, 512) with augmentation: K augmented views per image, so
    augmentation costs K backbone passes in all instead of one per epoch. `prep`: as
    extract_features, all of it part of the cache key. The pass runs on the model's device.
    Under torchrun every rank extracts its share; rank 0 returns (and caches) all of them, the
    other ranks None. `cache_path`: the cache file, when the caller has already computed it with
    cache_file (the key hashes every file's bytes: once is enough). cached_extraction's features.
    """
    return cached_extraction(model, items, prep, cache_dir, views, batch_size, num_workers, desc,
                             log, cache_path).features


def cached_extraction(model, items, prep: Preprocessing, cache_dir: str | Path | None = None,
                      views: Views = Views(), batch_size: int = 64, num_workers=None,
                      desc: str = "features", log=print,
                      cache_path: Path | None = None) -> Extraction:
    """cached_features, with what the OOD score's layers are fitted on: an un-augmented
    extraction takes them in its own pass (extract_features' `layers`) and the cache entry keeps
    them beside the features (an entry without them, from an earlier version, still serves its
    features: Extraction.layers is then None). Under torchrun, rank 0's; the others' are empty."""
    path, stored = None, None
    if cache_dir is not None and distributed.is_main():  # under torchrun, the cache is rank 0's
        path = cache_path or cache_file(model, items, prep, cache_dir, views)
        stored = read_cache_entry(path, (views.count, len(items)) if views.augmentation
                                  else (len(items),))
    if distributed.decided_by_main(stored is not None):
        if not distributed.is_main():
            return Extraction(None)
        log(f"{desc}: {len(items)} images from the feature cache ({path.name})")
        return stored
    if views.augmentation and distributed.is_active():
        raise ValueError("Augmented views are drawn from one random stream, image after image, so "
                         "they cannot be split across torchrun's processes and stay the same: "
                         "extract them in one process (train --augment without torchrun).")
    start, layers = time.perf_counter(), None
    if views.augmentation:  # augmented views never feed the OOD statistics
        features = torch.stack([
            extract_features(model, items, prep, views.augmentation, batch_size, num_workers,
                             f"{desc} view {v + 1}/{views.count}", seed=views.seed + v)
            for v in range(views.count)])
    else:
        layers = {}
        features = extract_features(model, items, prep, None, batch_size, num_workers, desc,
                                    seed=views.seed, layers=layers)
    if not distributed.is_main():
        return Extraction(None)  # under torchrun, rank 0 holds (and stores) everyone's features
    seconds = time.perf_counter() - start
    log(f"{desc}: extracted {len(items) * views.count} images in {seconds:.1f} s "
        f"({len(items) * views.count / max(seconds, 1e-9):.1f} images/s)")
    store_half = len(items) > FLOAT16_ABOVE_N_IMAGES and float(features.abs().max()) < 6e4
    if store_half:
        features = features.half().float()  # train on what a later run will read back from disk
    if path is not None:
        write_cache_entry(path, features, layers, torch.float16 if store_half else torch.float32)
    return Extraction(features, layers)
