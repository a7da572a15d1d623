"""The synthetic, seeded real/fake image set that the demo uses when the user has brought no images.

It is a small model of a real manipulation, not of real photographs:

* a "real" image has natural-image statistics: a colour texture whose power spectrum falls off as
  1/f^alpha (as photographs' do, alpha near 2), over a few soft objects and an illumination
  gradient, plus a little sensor noise;
* a "fake" is made exactly the same way, then one region (a random ellipse) is re-synthesised the
  way a generator up-samples: down-sample by 2, then up-sample like a stride-2 transposed
  convolution with a 3-tap kernel, which leaves the periodic "checkerboard" that generated images
  are known for (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016). The region
  is blended back with a feathered mask, and the mask is saved beside the image, so that Grad-CAM
  can be scored against where the manipulation really is.

Outside its mask a fake is its base image, byte for byte. Real and fake share one distribution of
base images, one size and one lossless format (PNG), so the artefact is the only thing to learn.

The artefact is strong enough to be seen when zoomed in: a frozen *random-init* ResNet-18 (all that
CI has) averages a faint artefact away, and the demo must reach >= 0.9 validation accuracy with it.

Layout written by `generate_demo_data(out_dir)`:
    out_dir/real/real_0000.png ...   out_dir/fake/fake_0000.png ...
    out_dir/masks/fake_0000.png ...  (one per fake, same file name; uint8, 255 = re-synthesised)
    out_dir/README.md                (says SYNTHETIC: how it was made, with which parameters)
    out_dir/generation.json          (the parameters; the same file means the same images)
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import CLASS_NAMES, CLASS_TO_IDX, __version__
from .folder_lock import folder_lock

# The demo's defaults, chosen for the 5-minute CPU budget: at 160 px the frozen ResNet-18 gives
# Grad-CAM a 5x5 layer4 map to localise with and extracts ~50 images/s on two cores; 2 x 300
# images (480 to train the head, 120 to validate) keep the validation accuracy >= 0.95 even with
# random init, where fewer images make the head's few Adam steps the bottleneck.
DEMO_IMAGE_SIZE = 160
DEMO_N_PER_CLASS = 300

# Part of "the same generation": bump it whenever the images for given parameters change.
GENERATOR_VERSION = 1

MASKS_DIRNAME = "masks"
GENERATION_FILE = "generation.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# Ranges are drawn per image. Brightness and contrast vary less than in photographs on purpose: a
# random-init ResNet-18's features are dominated by them, and the artefact must stand out.
REAL_DEFAULTS = {
    "spectrum_alpha": (1.6, 2.4),      # power ~ 1/f^alpha
    "texture_contrast": (12.0, 22.0),  # std of the 1/f texture, in grey levels
    "background_level": (80.0, 170.0), # per channel
    "objects": (2, 5),                 # soft ellipses of other colours
    "sensor_noise": 2.0,               # std in grey levels, white
}
# The manipulation. checkerboard_strength is the kernel's imbalance: pixels that copy a
# low-resolution sample get gain 1+s, those between two samples 1-s (per axis), so 0.3 moves a
# mid-grey pixel by about +-38 in a 2-pixel period. Measured as about the faintest that still gives a
# random-init ResNet-18 >= 0.95 validation accuracy at the defaults above.
FAKE_DEFAULTS = {
    "checkerboard_strength": 0.3,
    "region_area": (0.2, 0.4),  # fraction of the image the ellipse covers
    "feather": 0.25,            # the blend ramps up over this fraction of the ellipse's radius
}


class DemoDataError(FileExistsError):
    """The folder holds images, or other files the generation would overwrite."""


# ----------------------------------------------------------------------------------------------
# Real images: natural statistics


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of the pixel centres, computed once per size."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return y, x


def power_law_noise(rng: np.random.Generator, size: int, alpha: float, n: int = 1) -> np.ndarray:
    """n fields of (size, size) with power spectrum 1/f^alpha, each with zero mean and unit std."""
    frequency = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    frequency[0, 0] = np.inf  # no DC: the caller sets the mean
    amplitude = frequency ** (-alpha / 2)  # power is amplitude squared
    shape = (n, *amplitude.shape)
    spectrum = amplitude * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    fields = np.fft.irfft2(spectrum, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    return fields / fields.std(axis=(1, 2), keepdims=True)


def elliptic_radius(size: int, centre, radii, angle: float) -> np.ndarray:
    """At each pixel, the distance from the centre in units of the ellipse: < 1 inside it."""
    y, x = pixel_grid(size)
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.hypot((cos * dx + sin * dy) / radii[0], (cos * dy - sin * dx) / radii[1])


def random_ellipse(rng: np.random.Generator, size: int, area: float, inside: bool = True):
    """(centre, radii, angle) of an ellipse covering `area` of the image; wholly inside the image
    if `inside`, else anywhere (objects in a scene may be cut by the frame)."""
    aspect = rng.uniform(0.6, 1.0) if inside else rng.uniform(0.4, 1.0)
    long_radius = np.sqrt(area * size * size / (np.pi * aspect))
    radii = (long_radius * aspect, long_radius)
    angle = rng.uniform(0, np.pi)
    margin = long_radius + 1 if inside else 0.0
    centre = rng.uniform(margin, size - margin, size=2)
    return centre, radii, angle


def make_real(rng: np.random.Generator, size: int, options: dict = REAL_DEFAULTS) -> np.ndarray:
    """A (size, size, 3) uint8 image with natural statistics: a scene layout under a 1/f texture."""
    # Layout: a background lit from one side, and a few soft-edged objects in front of it.
    y, x = pixel_grid(size)
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.4) * ((x / size - 0.5) * np.cos(direction)
                                         + (y / size - 0.5) * np.sin(direction))
    image = rng.uniform(*options["background_level"], size=3) * light[..., None]
    for _ in range(rng.integers(options["objects"][0], options["objects"][1] + 1)):
        radius = elliptic_radius(size, *random_ellipse(rng, size, rng.uniform(0.02, 0.2), inside=False))
        opacity = 1 / (1 + np.exp((radius - 1) * rng.uniform(8, 30)))[..., None]  # a soft edge
        image = image * (1 - opacity) + rng.uniform(40, 210, size=3) * opacity

    # Texture: mostly luminance, some colour, as in photographs, with one spectral slope.
    luminance, *chroma = power_law_noise(rng, size, rng.uniform(*options["spectrum_alpha"]), n=4)
    texture = luminance[..., None] + 0.3 * np.stack(chroma, axis=-1)
    image = image + rng.uniform(*options["texture_contrast"]) * texture
    image = image + rng.normal(0, options["sensor_noise"], size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Fake images: one region re-synthesised through an up-sampling step


def downsample_2x(image: np.ndarray) -> np.ndarray:
    """Average each 2x2 block: what a stride-2 encoder keeps of the image."""
    h, w = image.shape[:2]
    return image.reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))


def transposed_upsample_2x(image: np.ndarray, strength: float) -> np.ndarray:
    """Up-sample by 2 as a stride-2 transposed convolution does: put each sample on every second
    pixel (zeros between), then convolve with the kernel [(1-s)/2, 1+s, (1-s)/2] along each axis.

    With s = 0 this is bilinear interpolation. With s > 0 a pixel that copies a sample gets gain
    1+s and a pixel between two samples gets 1-s: the kernel's size (3) is not a multiple of the
    stride (2), so its taps do not overlap evenly. The result is a pattern with a 2-pixel period
    whose amplitude follows the content: the checkerboard of generated images.
    """
    kernel = ((1 - strength) / 2, 1 + strength, (1 - strength) / 2)
    for axis in (0, 1):
        n = image.shape[axis]
        zero_filled = np.zeros_like(np.repeat(image, 2, axis=axis))
        every_second = [slice(None)] * image.ndim
        every_second[axis] = slice(0, 2 * n, 2)
        zero_filled[tuple(every_second)] = image
        padding = [(0, 0)] * image.ndim
        padding[axis] = (1, 1)
        padded = np.pad(zero_filled, padding)
        image = sum(weight * np.take(padded, range(k, k + 2 * n), axis=axis)
                    for k, weight in enumerate(kernel))
    return image


def make_fake(base_rgb: np.ndarray, rng: np.random.Generator,
              checkerboard_strength: float = FAKE_DEFAULTS["checkerboard_strength"],
              region_area: tuple[float, float] = FAKE_DEFAULTS["region_area"],
              feather: float = FAKE_DEFAULTS["feather"]) -> tuple[np.ndarray, np.ndarray]:
    """Re-synthesise one elliptic region of `base_rgb` (uint8, even size) through a generator-like
    up-sampling step. Returns (fake uint8 image, bool mask of the region).

    The blend weight is 0 on the ellipse's edge and grows to 1 inside it, so nothing changes
    outside the mask (which is the whole ellipse, ramp included).
    """
    size = base_rgb.shape[0]
    radius = elliptic_radius(size, *random_ellipse(rng, size, rng.uniform(*region_area)))
    mask = radius < 1
    weight = np.clip((1 - radius) / feather, 0, 1)[..., None]

    base = base_rgb.astype(np.float64)
    resynthesised = transposed_upsample_2x(downsample_2x(base), checkerboard_strength)
    fake = np.clip(np.round(base + weight * (resynthesised - base)), 0, 255).astype(np.uint8)
    return fake, mask


def example_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The random stream of one image: images depend on (seed, class, index) only, not on order."""
    return np.random.default_rng([seed, CLASS_TO_IDX[label], index])


def make_fake_example(seed: int, index: int, image_size: int = DEMO_IMAGE_SIZE,
                      fake_options: dict = FAKE_DEFAULTS):
    """(base, fake, mask) of fake number `index`: the base is regenerated, so tests can compare."""
    rng = example_rng(seed, "fake", index)
    base = make_real(rng, image_size)
    fake, mask = make_fake(base, rng, **fake_options)
    return base, fake, mask


def make_real_example(seed: int, index: int, image_size: int = DEMO_IMAGE_SIZE) -> np.ndarray:
    return make_real(example_rng(seed, "real", index), image_size)


# ----------------------------------------------------------------------------------------------
# Writing the set: never over anything


def image_name(label: str, index: int) -> str:
    return f"{label}_{index:04d}.png"


def generation_parameters(n_per_class: int, image_size: int, seed: int) -> dict:
    """Everything the images depend on, as it is saved in generation.json."""
    parameters = {
        "synthetic": True,
        "generator": "deepfake_detector.demo_data",
        "generator_version": GENERATOR_VERSION,
        "seed": seed, "n_per_class": n_per_class, "image_size": image_size,
        "real": REAL_DEFAULTS, "fake": FAKE_DEFAULTS,
        "layout": {"real": "real/real_NNNN.png", "fake": "fake/fake_NNNN.png",
                   "masks": f"{MASKS_DIRNAME}/fake_NNNN.png (255 = re-synthesised region)"},
        "package_version": __version__,
    }
    return json.loads(json.dumps(parameters))  # tuples as lists, exactly as read back


def same_generation(saved: dict, wanted: dict) -> bool:
    """The package version is recorded for the reader but not compared: the images depend on the
    generator version and the parameters only."""
    ignore = {"package_version"}
    return ({k: v for k, v in saved.items() if k not in ignore}
            == {k: v for k, v in wanted.items() if k not in ignore})


def first_image_in(folder: Path) -> Path | None:
    """Any image file under folder (hidden folders skipped), or None."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                return Path(root, name)
    return None


def read_generation(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / GENERATION_FILE).read_text())
    except (OSError, ValueError):
        return None


def synthetic_origin(data_dir: str | os.PathLike) -> dict | None:
    """What a run trained on `data_dir` needs to know to say SYNTHETIC DATA: the generation's
    record ({raw_dir, generator, generator_version, seed, n_per_class, image_size}) when data_dir
    is this synthetic set or a split made from it (its split.json names the raw folder), else None.
    Training records it in config.json, so the run keeps knowing after the data are gone."""
    data_dir = Path(data_dir)
    folders = [data_dir]
    try:
        folders.append(Path(json.loads((data_dir / "split.json").read_text())["settings"]["raw_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not a split (or not one made by split_dataset): only the folder itself counts
    for folder in folders:
        generation = read_generation(folder)
        if isinstance(generation, dict) and generation.get("synthetic"):
            keys = ("generator", "generator_version", "seed", "n_per_class", "image_size")
            return {"raw_dir": str(folder), **{key: generation.get(key) for key in keys}}
    return None


def check_can_write(out_dir: Path) -> None:
    """Raise DemoDataError unless out_dir is missing, empty, or holds no images and none of the
    names the generation writes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoDataError(f"{out_dir} is a file, not a folder; demo data not written.")
    if not out_dir.is_dir():
        return
    image = first_image_in(out_dir)
    if image is not None:
        whose = ("it holds your own images, and the demo never writes next to them"
                 if out_dir.name == "dataset_raw" else "it already holds images")
        raise DemoDataError(
            f"Refusing to write synthetic demo data into {out_dir}/: {whose} (e.g. "
            f"{image.relative_to(out_dir)}). Choose another folder, e.g. data/synthetic/raw.")
    taken = [name for name in (*CLASS_NAMES, MASKS_DIRNAME, "README.md", GENERATION_FILE)
             if (out_dir / name).exists()]
    if taken:
        raise DemoDataError(f"Refusing to write synthetic demo data into {out_dir}/: it already "
                            f"holds {', '.join(taken)}, which the generation would overwrite.")


def generate_demo_data(out_dir: str | os.PathLike, n_per_class: int = DEMO_N_PER_CLASS,
                       image_size: int = DEMO_IMAGE_SIZE, seed: int = 0) -> Path:
    """Write the synthetic set into out_dir (layout in the module docstring); returns out_dir.

    The same arguments give byte-identical files. A folder that already holds this very generation
    (same generation.json) is returned as it is, without rewriting anything; any other folder
    with images in it (dataset_raw/ with the user's own, above all) is refused with DemoDataError.
    Files are written to a hidden sibling folder first and moved in at the end, generation.json
    last, so an interrupted run leaves no half-written set behind.
    """
    out_dir = Path(out_dir)
    if image_size % 2 or image_size < 16:
        raise ValueError(f"image_size must be even and >= 16 (the fakes are down-sampled by 2), "
                         f"not {image_size}.")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, not {n_per_class}.")
    parameters = generation_parameters(n_per_class, image_size, seed)
    saved = read_generation(out_dir)
    if saved is not None and same_generation(saved, parameters):
        check_complete(out_dir, n_per_class)
        return out_dir
    check_can_write(out_dir)  # before the lock: never a lock file among someone's images
    with folder_lock(out_dir):  # one writer (folder_lock.py)
        check_can_write(out_dir)  # again: another generation may have just finished there
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
        try:
            write_images(staging, n_per_class, image_size, seed)
            (staging / "README.md").write_text(readme_text(parameters))
            (staging / GENERATION_FILE).write_text(json.dumps(parameters, indent=2) + "\n")
            out_dir.mkdir(exist_ok=True)
            for name in (*CLASS_NAMES, MASKS_DIRNAME, "README.md", GENERATION_FILE):
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def write_images(folder: Path, n_per_class: int, image_size: int, seed: int) -> None:
    for name in (*CLASS_NAMES, MASKS_DIRNAME):
        (folder / name).mkdir()
    for index in range(n_per_class):
        save_png(make_real_example(seed, index, image_size), folder / "real" / image_name("real", index))
        _, fake, mask = make_fake_example(seed, index, image_size)
        save_png(fake, folder / "fake" / image_name("fake", index))
        save_png(np.uint8(mask) * 255, folder / MASKS_DIRNAME / image_name("fake", index))


def save_png(array: np.ndarray, path: Path) -> None:
    # PNG is lossless (no JPEG shortcut to learn) and PIL writes no timestamp into it.
    Image.fromarray(array).save(path, format="PNG")


def check_complete(out_dir: Path, n_per_class: int) -> None:
    """A folder whose generation.json matches must hold every file it promises."""
    missing = [f"{sub}/{image_name(label, i)}" for label, sub in
               (("real", "real"), ("fake", "fake"), ("fake", MASKS_DIRNAME))
               for i in range(n_per_class) if not (out_dir / sub / image_name(label, i)).is_file()]
    if missing:
        raise DemoDataError(f"{out_dir}/ says it holds this synthetic set but lacks {len(missing)} "
                            f"files (e.g. {missing[0]}); delete the folder to generate it again.")


def readme_text(parameters: dict) -> str:
    p = parameters
    return f"""# SYNTHETIC demo data: not real photographs, not real deepfakes

Generated by `deepfake_detector.demo_data` (generator version {p["generator_version"]}, package
{p["package_version"]}) with seed {p["seed"]}: {p["n_per_class"]} real and {p["n_per_class"]} fake
images of {p["image_size"]}x{p["image_size"]} px, PNG. For the demo and the tests only: a model
trained here says nothing about real generated or manipulated images.

- `real/`: "natural-statistics" images: a colour texture with a 1/f^alpha power spectrum
  (alpha {p["real"]["spectrum_alpha"]}) over soft objects and an illumination gradient, with sensor
  noise.
- `fake/`: made the same way, then one elliptic region ({p["fake"]["region_area"]} of the image)
  was re-synthesised: down-sampled by 2, up-sampled like a stride-2 transposed convolution with the
  uneven 3-tap kernel [(1-s)/2, 1+s, (1-s)/2], s = {p["fake"]["checkerboard_strength"]} (a periodic
  checkerboard artefact), and blended back with a feathered mask. Outside the mask each fake is
  its base image exactly.
- `{MASKS_DIRNAME}/`: the region of each fake, same file name, 255 inside.
- `generation.json`: every parameter. Running the generation again with the same parameters
  leaves this folder untouched; it never writes into a folder that holds other images.

Regenerate: `python -m deepfake_detector demo-data --out <folder> --seed {p["seed"]}`
"""


# ----------------------------------------------------------------------------------------------
# Finding and reading masks


def mask_path_for(image_path: str | os.PathLike, masks_dir: str | os.PathLike | None = None
                  ) -> Path | None:
    """The mask of a synthetic fake, or None (a real image, or any image without one).

    Masks are looked up by file name, which the split keeps, so the copy in data/val/fake/ finds
    the same mask as the original:
      * pass masks_dir, the generated folder's masks/ (what the notebook does:
        `mask_path_for(val_image, RAW_DIR / "masks")`), or
      * pass the original image, e.g. raw_dir / the split manifest's source path
        (raw_dir/fake/fake_0007.png): its masks folder is then raw_dir/masks/.
    """
    image_path = Path(image_path)
    folder = Path(masks_dir) if masks_dir is not None else image_path.parent.parent / MASKS_DIRNAME
    candidate = folder / (image_path.stem + ".png")
    return candidate if candidate.is_file() else None


def load_mask(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as a bool array (True = re-synthesised); resized with nearest neighbour to
    size (an int for a square, or (height, width)) so it stays binary."""
    from .images import open_supported  # JPEG, PNG, ... only: no other decoder runs
    with open_supported(path) as opened:
        mask = opened.convert("L")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        mask = mask.resize((width, height), Image.NEAREST)
    return np.asarray(mask) > 127
