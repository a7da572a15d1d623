"""A synthetic, seeded real/fake image set: the demo's data when the user has brought none.

It is a small model of a real manipulation, not of real photographs:

* a "real" image has natural-image statistics: a 1/f^alpha colour texture (the power spectrum
  of photographs falls off roughly like that) laid over a few soft shapes and an illumination
  gradient, plus a little sensor noise;
* a "fake" is made exactly the same way, then one region (a random ellipse) is re-synthesised
  the way a generator up-samples: down-sample by 2, then up-sample like a stride-2 transposed
  convolution whose 3-tap kernel is uneven, which leaves the periodic checkerboard that
  generated images are known for (Odena et al., "Deconvolution and Checkerboard Artifacts",
  2016). The region is blended back with a feathered mask, and the mask is saved beside the
  image so that Grad-CAM can be scored against where the manipulation really is.

Outside the mask a fake is byte-for-byte its base image; real and fake share one distribution of
base images, sizes and file format (lossless PNG), so the only thing to learn is the artefact.

Layout written by `generate_demo_data(out_dir)`:
    out_dir/real/real_0000.png ...    out_dir/fake/fake_0000.png ...
    out_dir/masks/fake_0000.png ...   (uint8, 255 inside the re-synthesised region)
    out_dir/README.md                 (says SYNTHETIC, how, with which parameters)
    out_dir/generation.json           (the parameters; the same file means the same images)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import CLASS_NAMES, __version__

# Chosen for the 5-minute CPU demo: 160 px gives Grad-CAM a 5x5 layer4 map to localise with,
# and 2 x 200 images are enough for >= 0.95 validation accuracy even with random init.
DEMO_IMAGE_SIZE = 160
DEMO_N_PER_CLASS = 200

# Bump when the images a given set of parameters produces change: it is part of "same generation".
GENERATOR_VERSION = 1

MASKS_DIRNAME = "masks"
GENERATION_FILE = "generation.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# The knobs of the manipulation, measured to be about as faint as the demo can afford (see
# `make_fake`). `checkerboard_strength` is the uneven kernel's phase imbalance: 0.04 moves a
# mid-grey pixel by about +-5 of 255 in a 2-pixel period.
FAKE_DEFAULTS = {
    "checkerboard_strength": 0.04,
    "region_area": (0.15, 0.30),  # fraction of the image the ellipse covers
    "feather": 0.25,              # width of the blend ramp, as a fraction of the ellipse radius
}


# ----------------------------------------------------------------------------------------------
# Real images: natural statistics


def power_law_noise(rng: np.random.Generator, size: int, alpha: float) -> np.ndarray:
    """A (size, size) field with power spectrum 1/f^alpha, zero mean and unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    frequency = np.hypot(fx, fy)
    frequency[0, 0] = np.inf  # no DC: the mean is set by the caller
    amplitude = frequency ** (-alpha / 2)  # power = amplitude^2
    spectrum = amplitude * (rng.standard_normal(amplitude.shape)
                            + 1j * rng.standard_normal(amplitude.shape))
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field - field.mean()) / field.std()


def soft_ellipse(size: int, centre, radii, angle: float) -> np.ndarray:
    """Normalised elliptic radius at each pixel: < 1 inside the ellipse, 1 on its edge."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.hypot(u / radii[0], v / radii[1])


def random_ellipse(rng: np.random.Generator, size: int, area: float) -> tuple:
    """Centre, radii and angle of an ellipse covering `area` of the image, fully inside it."""
    aspect = rng.uniform(0.6, 1.0)
    ry = np.sqrt(area * size * size / (np.pi * aspect))
    radii = (ry * aspect, ry)
    angle = rng.uniform(0, np.pi)
    margin = max(radii) + 1
    centre = rng.uniform(margin, size - margin, size=2)
    return centre, radii, angle


def make_real(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 image with natural statistics: scene layout + 1/f texture."""
    # Layout: a background with an illumination gradient and a few soft-edged objects.
    base_colour = rng.uniform(60, 190, size=3)
    y, x = np.mgrid[0:size, 0:size] / size
    direction = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.4) * ((x - 0.5) * np.cos(direction) + (y - 0.5) * np.sin(direction))
    image = np.broadcast_to(base_colour, (size, size, 3)) * light[..., None]
    for _ in range(rng.integers(2, 6)):
        area = rng.uniform(0.02, 0.2)
        radius = soft_ellipse(size, *random_ellipse_anywhere(rng, size, area))
        opacity = 1 / (1 + np.exp((radius - 1) * rng.uniform(8, 30)))  # soft edge
        colour = rng.uniform(30, 225, size=3)
        image = image * (1 - opacity[..., None]) + colour * opacity[..., None]

    # Texture: 1/f^alpha noise, mostly luminance with some colour, as in photographs.
    alpha = rng.uniform(1.6, 2.4)
    luminance = power_law_noise(rng, size, alpha)
    chroma = np.stack([power_law_noise(rng, size, alpha) for _ in range(3)], axis=-1)
    texture = luminance[..., None] + 0.3 * chroma
    image = image + rng.uniform(12, 30) * texture

    image = image + rng.normal(0, 2.0, size=image.shape)  # sensor noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def random_ellipse_anywhere(rng: np.random.Generator, size: int, area: float) -> tuple:
    """Like `random_ellipse`, but objects in a scene may be cut by the frame."""
    aspect = rng.uniform(0.4, 1.0)
    ry = np.sqrt(area * size * size / (np.pi * aspect))
    return rng.uniform(0, size, size=2), (ry * aspect, ry), rng.uniform(0, np.pi)


# ----------------------------------------------------------------------------------------------
# Fake images: one region re-synthesised through an up-sampling step


def downsample_2x(image: np.ndarray) -> np.ndarray:
    """Average each 2x2 block: what a stride-2 encoder keeps of the region."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].reshape(h // 2, 2, w // 2, 2, -1)
    return blocks.mean(axis=(1, 3))


def transposed_upsample_2x(image: np.ndarray, strength: float) -> np.ndarray:
    """Up-sample by 2 the way a stride-2 transposed convolution does: insert zeros, then
    convolve with the 3-tap kernel [(1-s)/2, 1+s, (1-s)/2] along each axis.

    With s = 0 that kernel is bilinear interpolation; with s > 0 the pixels that copy an input
    sample get gain 1+s and those between two samples get 1-s, because the kernel size (3) is not
    a multiple of the stride (2). The result is a period-2 pattern that scales with the
    brightness of the content: the checkerboard of generated images.
    """
    kernel = np.array([(1 - strength) / 2, 1 + strength, (1 - strength) / 2])
    for axis in (0, 1):
        n = image.shape[axis]
        zeros_inserted = np.zeros_like(np.repeat(image, 2, axis=axis))
        index = [slice(None)] * image.ndim
        index[axis] = slice(0, 2 * n, 2)
        zeros_inserted[tuple(index)] = image
        pad = [(0, 0)] * image.ndim
        pad[axis] = (1, 1)
        padded = np.pad(zeros_inserted, pad)
        left, centre, right = (np.take(padded, range(k, k + 2 * n), axis=axis) for k in range(3))
        image = kernel[0] * left + kernel[1] * centre + kernel[2] * right
    return image


def make_fake(base_rgb: np.ndarray, rng: np.random.Generator,
              checkerboard_strength: float = FAKE_DEFAULTS["checkerboard_strength"],
              region_area: tuple[float, float] = FAKE_DEFAULTS["region_area"],
              feather: float = FAKE_DEFAULTS["feather"],
              upsampling_steps: int = 1, additive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-synthesise one elliptic region of `base_rgb` through a generator-like up-sampling step.

    Returns (fake uint8 image, bool mask). Outside the mask the fake equals the base exactly: the
    blend weight falls to zero at the ellipse's edge, never beyond it.
    """
    size = base_rgb.shape[0]
    centre, radii, angle = random_ellipse(rng, size, rng.uniform(*region_area))
    radius = soft_ellipse(size, centre, radii, angle)
    mask = radius < 1
    weight = np.clip((1 - radius) / feather, 0, 1)  # 0 on the edge, 1 deeper than `feather`

    base = base_rgb.astype(np.float64)
    resynthesised = base
    for _ in range(upsampling_steps):
        resynthesised = downsample_2x(resynthesised)
    if additive:
        grey = np.full_like(resynthesised, 128.0)
        for _ in range(upsampling_steps):
            resynthesised = transposed_upsample_2x(resynthesised, 0.0)
            grey = transposed_upsample_2x(grey, checkerboard_strength)
        resynthesised = resynthesised + grey - 128.0
    else:
      for _ in range(upsampling_steps):
        resynthesised = transposed_upsample_2x(resynthesised, checkerboard_strength)
    blended = base + weight[..., None] * (resynthesised - base)
    fake = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    fake[~mask] = base_rgb[~mask]  # rounding cannot leak out of the region either
    return fake, mask
