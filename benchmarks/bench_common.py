"""What the benchmark scripts share: the machine's description, the data they are measured on
(the CIFAKE sample beside the checkout, photo-sized copies of it, splits and predict folders of
links), and the raw forward pass every speed is compared with.

Each script imports it by name (`from bench_common import ...`): Python puts a script's own
folder first on its path, so nothing is inserted there. Importing it also makes the checkout's
package importable without an install, and turns PyTorch's huge pages on as the command line does
(deepfake_detector.huge_pages: the program decides, not the package's import), so a benchmark
measures what a user's command runs.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import random
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from deepfake_detector.huge_pages import prefer_huge_pages  # noqa: E402

prefer_huge_pages()

# The CIFAKE sample that every checkout has beside it (../shared), never copied into the repository;
# elsewhere, the folder (with real/ and fake/) that DEEPFAKE_DETECTOR_CIFAKE_DIR names.
CIFAKE_ENV = "DEEPFAKE_DETECTOR_CIFAKE_DIR"
CIFAKE_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake-dev"
CIFAKE_DEV = Path(os.environ.get(CIFAKE_ENV) or CIFAKE_BESIDE).expanduser()
PHOTO_SIZE = (1280, 1024)  # width, height: the photos of --data photos


# --- the machine ------------------------------------------------------------------------------

def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    record = {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    record["huge_pages"] = huge_pages()
    return record


def huge_pages() -> str:
    """Whether PyTorch puts large CPU tensors on transparent huge pages (this module turns it on,
    as the command line does), and whether this kernel lets it."""
    asked = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")
    return f"{'on' if asked else 'off'} (kernel: {kernel_huge_pages()})"


def kernel_huge_pages() -> str:
    """The kernel's transparent-huge-page mode: always, madvise (PyTorch's switch asks by
    madvise), never; "unknown" off Linux."""
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        return text[text.index("[") + 1:text.index("]")]
    return "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the images -------------------------------------------------------------------------------

def link(source: Path, destination: Path) -> None:
    """A hard link (no copy, no disk); a symbolic link where the filesystem refuses one."""
    try:
        os.link(source, destination)
    except OSError:
        destination.symlink_to(source)


def class_files(data: Path) -> dict[str, list[Path]]:
    from deepfake_detector.discovery import find_images
    return {label: find_images(data / label) for label in ("real", "fake")}


def make_split(data: Path, n_images: int, work: Path, seed: int) -> Path:
    """n_images // 2 per class, drawn with `seed`, linked into work/raw, split 80/20 into work/data."""
    from deepfake_detector.split import split_dataset
    rng = random.Random(seed)
    for label, files in class_files(data).items():
        if len(files) < n_images // 2:
            raise SystemExit(f"{data}/{label} holds {len(files)} images; --n-images {n_images} "
                             f"needs {n_images // 2} per class.")
        (work / "raw" / label).mkdir(parents=True)
        for source in rng.sample(files, n_images // 2):
            link(source, work / "raw" / label / source.name)
    with warnings.catch_warnings():  # CIFAKE has byte-identical images; split groups them
        warnings.simplefilter("ignore")
        split_dataset(work / "raw", work / "data", val_fraction=0.2, seed=seed, link_mode="hardlink")
    return work / "data"


def photo_from(image, rng, size=PHOTO_SIZE):
    """A megapixel photo-like picture from a small one: bicubic upscale, film grain (sigma 6),
    a soft vignette. Grain and vignette make the JPEG encoder and decoder work as on a photo."""
    import numpy as np
    from PIL import Image
    big = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
    y, x = np.mgrid[-1:1:size[1] * 1j, -1:1:size[0] * 1j]
    vignette = 1 - 0.25 * (x ** 2 + y ** 2)[..., None]
    grain = rng.normal(0, 6, big.shape).astype(np.float32)
    return Image.fromarray(np.clip(big * vignette + grain, 0, 255).astype(np.uint8))


def make_photo_set(source: Path, n_images: int, folder: Path, seed: int,
                   size=PHOTO_SIZE, quality: int = 90) -> Path:
    """n_images // 2 per class of `source` (real/, fake/) saved as `size` JPEG photos (photo_from)
    in folder/{real,fake}: the class's own content, at a camera's size."""
    import numpy as np
    from PIL import Image
    rng, draw = np.random.default_rng(seed), random.Random(seed)
    for label, files in class_files(source).items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for path in draw.sample(files, min(len(files), n_images // 2)):
            with Image.open(path) as image:
                photo_from(image, rng, size).save(folder / label / f"{path.stem}.jpg",
                                                  quality=quality)
    return folder


def make_predict_folder(data: Path, n_images: int, folder: Path) -> Path:
    """n_images links to the CIFAKE files, the whole set repeated as often as needed. Each name
    carries its round and class: real/ and fake/ hold files of the same name."""
    files = [(label, f) for label, fs in class_files(data).items() for f in fs]
    folder.mkdir(parents=True)
    for i in range(n_images):
        label, source = files[i % len(files)]
        link(source, folder / f"{i // len(files):02d} {label} {source.name}")
    return folder


# --- the speed limit --------------------------------------------------------------------------

def raw_forward(model, n_images: int, batch_size: int, img_size: int, device) -> float:
    """Images/s of the backbone alone on ready-made input: what extraction can at best reach."""
    from deepfake_detector.features import inference_pass
    from deepfake_detector.model import backbone_features
    images = torch.randn(batch_size, 3, img_size, img_size, device=device) \
        .contiguous(memory_format=torch.channels_last)
    n_batches = max(1, n_images // batch_size)
    with inference_pass(model, device):
        backbone_features(model, images)  # warm-up: oneDNN primitives, cuDNN autotuning
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n_batches):
            backbone_features(model, images)
        synchronize(device)
    return n_batches * batch_size / (time.perf_counter() - start)
