"""The one way this project opens an image file: safely, within a pixel limit, as the right picture.

Every decode (split's check, the audit, training, predict, evaluate, Grad-CAM) goes through
`decode_image`, so every command sees the same pixels and fails on a file in the same words.

Safety, before a byte of pixels is decoded:

* Formats are allowed by name: PIL is asked to open JPEG, PNG, WebP, BMP, TIFF and GIF only
  (`open_supported`, every PIL open in the project), so no other decoder ever runs. An EPS
  file, whose PIL plugin would start Ghostscript, or a Photoshop PSD is refused by name
  ("EPS images are not supported; supported: ...") from its first bytes, as PIL's own format
  check reads them, before any plugin sees the file.
* Only regular files are read. A symlink counts as the file it points to; a FIFO, a device
  (`/dev/zero`), a socket or a folder is refused by name, so nothing can hang or fill memory.
* The pixel limit is `MAX_IMAGE_PIXELS` (178,956,970: PIL's own decompression-bomb limit),
  checked on the header by this module for its own calls. PIL's global `Image.MAX_IMAGE_PIXELS`
  is left as it is for everyone else who imports PIL.

What an image mode becomes (the model sees 8-bit RGB):

* 16-bit greyscale (`I;16`, `I;16B`, ...) and 32-bit integer `I` (how PIL opens 16-bit PNG and
  TIFF files): 0-65535 mapped linearly to 0-255 (value / 257, rounded; values outside 0-65535
  clipped). PIL's own convert() clips at 255 instead, which turns most 16-bit pictures white.
* 32-bit float `F`: values in [0, 1] are scaled by 255 when the image's maximum is at most 1
  (the usual convention for float images); otherwise they are taken as 0-255; then clipped.
* Transparency (`RGBA`, `LA`, `PA`, `RGBa`, palette or RGB/L images with a transparent colour):
  composited over a white background, as a browser or an image viewer on white shows it.
* `CMYK`, `YCbCr`, palette, 1-bit and 8-bit greyscale: PIL's conversion to RGB.
* Multi-frame files (animated GIF, WebP or PNG, multi-page TIFF): the first frame; `facts`
  records how many frames there were, so callers can say so.
* EXIF orientation (phone photos) is applied.

Reduced-size decoding (`target_size`): a JPEG stores 8x8 blocks of frequencies, and libjpeg can
decode them at 1/2, 1/4 or 1/8 scale directly, for a fraction of the full decode's work (PIL's
`draft`). Given the size the model will resize to, a large JPEG is decoded at the smallest of
those scales that still leaves at least `target_size` pixels in both dimensions (1280 x 1024 for
224: 1/4, 320 x 256), and the usual resize follows. The pixels differ slightly from a full decode
followed by the same resize (libjpeg's scaled IDCT is its own low-pass filter), so a run records
whether it decoded this way and every later use of the run decodes as it did. Only JPEG has this:
PNG, WebP and the other formats always decode in full (PIL's `reduce` works on the decoded image,
so it would save no decoding), and a JPEG already within twice the target is left as it is.
The header checks (pixel limit, `facts`) use the file's own size, before any reduction.
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# PIL's decompression-bomb limit (twice its warning level): about 13,400 x 13,400 pixels.
MAX_IMAGE_PIXELS = 178_956_970
# White shows through where an image is transparent.
TRANSPARENT_BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# The formats the project decodes, as PIL names them, and as people do.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
SUPPORTED_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF"


class ImageLoadError(OSError):
    """An image file that cannot be used; the message names the file and says why."""


def open_supported(source) -> Image.Image:
    """PIL's Image.open (header only, lazy) for the supported formats alone: no other format's
    plugin is ever called. Raises ImageLoadError "EPS images are not supported; ..." for a file
    of another format PIL knows (named from its first bytes, by PIL's format checks alone), and
    PIL's UnidentifiedImageError for anything else."""
    start = None if isinstance(source, (str, os.PathLike)) else source.tell()
    try:
        return Image.open(source, formats=SUPPORTED_FORMATS)
    except Image.UnidentifiedImageError:
        if start is not None:
            source.seek(start)  # PIL leaves the file after the bytes it looked at
        other = unsupported_format(source)
        if other:
            raise ImageLoadError(f"{other} images are not supported; supported: "
                                 f"{SUPPORTED_NAMES}") from None
        raise


def unsupported_format(source) -> str | None:
    """The name of the format PIL would take `source` (a path or a seekable binary file) for,
    when that is not a supported one; None otherwise. Reads 16 bytes and asks each format's
    prefix check (`accept`, a comparison of bytes), never its plugin."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                prefix = f.read(16)
        else:
            start = source.tell()
            prefix = source.read(16)
            source.seek(start)
    except (OSError, ValueError, AttributeError):
        return None
    Image.init()  # every plugin registered, so every format PIL knows can be named
    matches = []
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix):
                matches.append(name)
        except Exception:  # noqa: BLE001 - a prefix too short for that format's check
            continue
    if not matches or any(name in SUPPORTED_FORMATS for name in matches):
        return None  # unknown, or a damaged file of a supported format: not an image, then
    return matches[0]


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a symlink to one), else why it must not be read."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: the target is what would be read
    except OSError as error:
        if os.path.islink(path):
            return "a broken symbolic link"
        return f"unreadable ({type(error).__name__}: {error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file: not read"


def decode_image(source, verify: bool = True,
                 target_size: int | None = None) -> tuple[Image.Image, dict]:
    """(8-bit RGB PIL image, facts of the file: format, width, height, mode, frames, and
    draft_scale: 1, 2, 4 or 8, the reduction the decode applied).

    `source`: a path, or a binary file-like object (an upload). Raises ImageLoadError, whose
    message is the reason alone (callers add the file's name). With `verify`, PIL's structural
    check runs first (PNG checksums; for JPEG PIL has none, so it checks nothing there); the
    decode then catches a truncated file, even where another library told PIL to tolerate those:
    a reduced-size JPEG decode still reads every byte of the file, so it fails on the same files.
    `target_size`: the side the image will be resized to; a large JPEG is decoded at reduced size
    (the module's docstring). None: the full decode.
    """
    if isinstance(source, (str, os.PathLike)):
        problem = regular_file_problem(source)
        if problem:
            raise ImageLoadError(problem)
        if os.path.getsize(source) == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with open(source, "rb") as f:  # not read whole: PIL reads what the decode needs
            return _decode(f, verify, target_size)
    return _decode(source, verify, target_size)


def draft_scale(image: Image.Image, target_size: int | None) -> int:
    """Ask PIL for a reduced-size decode of a JPEG (before its pixels are read) at the smallest
    of 1/2, 1/4, 1/8 that keeps both sides >= target_size; returns the factor (1: none)."""
    if not target_size or image.format != "JPEG":
        return 1  # PNG, WebP, ...: no reduced decode exists, they decode in full
    full_width = image.width
    image.draft(image.mode, (target_size, target_size))  # JPEG only: a no-op elsewhere anyway
    return max(1, round(full_width / image.width))


def _decode(f, verify: bool, target_size: int | None = None) -> tuple[Image.Image, dict]:
    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        start = f.tell() if f.seekable() else None
        if start is None:  # a stream: keep what it gives, so it can be read twice
            f, start = io.BytesIO(f.read()), 0
        with warnings.catch_warnings():
            # This module applies its own limit below; PIL's warning zone (89-179 MP) is quiet.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if verify:
                with open_supported(f) as image:
                    check_pixels(image.width, image.height)
                    image.verify()
                f.seek(start)
            # Not `with Image.open`: closing would free the pixels, and a copy of a huge image
            # would double the memory. The file itself is closed by the caller.
            image = open_supported(f)
            check_pixels(image.width, image.height)
            facts = {"format": image.format, "width": image.width, "height": image.height,
                     "mode": image.mode, "frames": getattr(image, "n_frames", 1)}
            image.seek(0)
            facts["draft_scale"] = draft_scale(image, target_size)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # phone photos: rotation from EXIF
            return to_rgb(image), facts
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own check came first: same message
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else MAX_IMAGE_PIXELS
        raise ImageLoadError(f"{pixels}, {LIMIT_ADVICE.format(limit=min(limit, MAX_IMAGE_PIXELS))}") \
            from None
    except Image.UnidentifiedImageError as error:
        raise ImageLoadError("not an image (PIL cannot identify its format)") from error
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, TypeError, KeyError,
            IndexError, struct.error) as error:  # truncated, broken chunks, odd headers
        raise ImageLoadError(f"cannot be decoded ({type(error).__name__}: {error})") from error
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


LIMIT_ADVICE = ("above the limit of {limit:,} (PIL's decompression-bomb limit): not decoded; "
                "downscale it first, e.g. to 4,096 px on the long side")


def check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(f"{width * height:,} pixels ({width} x {height}), "
                             + LIMIT_ADVICE.format(limit=MAX_IMAGE_PIXELS))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB by the rules in this module's docstring (16-bit and float scaled, transparency
    over white)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        grey = ((2 * values + 257) // 514).astype(np.uint8)  # value / 257, rounded half up
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        if values.size and values.max() <= 1.0:
            values *= 255
        np.rint(values, out=values)
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def open_rgb(source, target_size: int | None = None) -> Image.Image:
    """The RGB picture of `source` (a path or a binary file-like object); ImageLoadError names
    the file and says what to do. `target_size`: decode a large JPEG at reduced size for a
    resize to that side (decode_image)."""
    try:
        return decode_image(source, target_size=target_size)[0]
    except ImageLoadError as error:
        raise ImageLoadError(f"Cannot read image {describe(source)}: {error}. Remove or replace "
                             "the file (split and predict list such files and leave them out).") \
            from error


def describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return getattr(source, "name", None) or "(uploaded bytes)"


# Formats that can hold several frames; JPEG, BMP and the rest are never looked at twice.
MULTI_FRAME_SUFFIXES = (".gif", ".png", ".apng", ".webp", ".tif", ".tiff")


def frame_count(path: str | os.PathLike) -> int:
    """How many frames (or pages) a file holds, from its header where the format allows; 1 for
    single-frame formats and for anything that cannot be read (its decode reports that)."""
    if not str(path).lower().endswith(MULTI_FRAME_SUFFIXES) or regular_file_problem(path):
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_supported(path) as image:
                return int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - a note only: the decode gives the real reason
        return 1


def warn_multi_frame(paths, stacklevel: int = 3) -> None:
    """One warning listing the files whose first frame alone is used (and how many they hold)."""
    notes = [f"{path}: {n} frames" for path in paths if (n := frame_count(path)) > 1]
    if notes:
        warnings.warn(f"{len(notes)} file(s) hold several frames (animation or pages); only the "
                      "first frame of each is used:\n" + "\n".join(f"  {n}" for n in notes[:20])
                      + (f"\n  ... and {len(notes) - 20} more" if len(notes) > 20 else ""),
                      stacklevel=stacklevel)

