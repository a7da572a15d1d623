"""Videos to build and test on, offline: the synthetic demo videos, and face videos composed from
a real portrait whose face box is known.

Demo videos (`generate_demo_videos`, the `demo-videos` command) extend demo_data's images to time:
- a "real" video pans a window over a larger 1/f-noise scene (demo_data.make_real), smoothly;
- a "fake" is made the same way, then, over a span of its frames, one elliptic region that moves
  with the scene is re-synthesised through demo_data's checkerboard up-sampling (down-sample by 2,
  stride-2 transposed up-sampling), blended with a feathered mask; the masks are saved as PNGs.
They are written lossless (FFV1 in .mkv) by default, so that the artefact reaches the frames as
made; `codec="mp4v"` writes .mp4 (lossy MPEG-4) instead. With `frames --faces none` they run the
video path end to end with no download.

    OUT/real/real_0000.mkv ...   OUT/fake/fake_0000.mkv ...
    OUT/masks/fake_0000/000012.png ...   (each manipulated frame of a fake; 255 = re-synthesised)
    OUT/generation.json                  (synthetic: true, the parameters, each fake's span)

Face videos (`compose_face_video`, for tests and benchmarks): a portrait (the tests use
skimage.data.astronaut(); scikit-image is a test dependency only, so the caller passes the array)
moves and zooms over a 1/f-noise background; the face box in every frame is returned.

No torch here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

from . import CLASS_NAMES, __version__
from .files import atomic_write, read_json_object
from .folder_lock import folder_lock

if TYPE_CHECKING:  # numpy and demo_data are imported where frames are made, not by --help
    import numpy as np

DEMO_VIDEO_SIZE = 128     # side of the square frames, px (even)
DEMO_VIDEO_FRAMES = 48    # frames per video
DEMO_VIDEO_FPS = 12.0
DEMO_VIDEOS_PER_CLASS = 12
VIDEO_GENERATOR_VERSION = 1
CODECS = {"ffv1": ("FFV1", ".mkv"), "mp4v": ("mp4v", ".mp4")}
GENERATION_FILE = "generation.json"
MASKS_DIRNAME = "masks"
PAN = 0.25  # the scene is (1 + PAN) times the frame's side: room for the window to move


class DemoVideosError(FileExistsError):
    """The output folder holds files this generation did not write."""


def write_video(path: str | os.PathLike, frames, fps: float, codec: str = "ffv1") -> int:
    """Write RGB uint8 frames (an iterable of H x W x 3, one size) to `path` with OpenCV's
    VideoWriter; the number of frames written. A ValueError when OpenCV cannot write the codec."""
    import cv2
    import numpy as np
    fourcc, _ = CODECS[codec]
    writer, count = None, 0
    try:
        for frame in frames:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps,
                                         (width, height))
                if not writer.isOpened():
                    raise ValueError(f"{path}: OpenCV cannot write {codec} video here")
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


# --------------------------------------------------------------------------- demo videos

def pan_offsets(rng: np.random.Generator, n_frames: int, room: int) -> np.ndarray:
    """(n_frames, 2) integer (x, y) window offsets, moving linearly between two random points."""
    import numpy as np
    start, end = rng.uniform(0, room, size=2), rng.uniform(0, room, size=2)
    t = np.linspace(0.0, 1.0, n_frames)[:, None]
    return np.round(start + t * (end - start)).astype(int)


def demo_video_frames(seed: int, label: str, index: int, size: int = DEMO_VIDEO_SIZE,
                      n_frames: int = DEMO_VIDEO_FRAMES):
    """Yield (frame, mask or None) of demo video `index` of `label`: frames (size, size, 3) uint8
    panning over one scene; a fake's frames in its span have the region re-synthesised (mask: bool,
    the ellipse in that frame). Depends on (seed, label, index) only."""
    import numpy as np
    from .demo_data import (FAKE_DEFAULTS, downsample_2x, elliptic_radius, example_rng,
                            make_real, random_ellipse, transposed_upsample_2x)
    rng = example_rng(seed, label, index)
    room = int(size * PAN) // 2 * 2
    scene = make_real(rng, size + room)
    offsets = pan_offsets(rng, n_frames, room)
    span = fake_span(rng, n_frames) if label == "fake" else (0, 0)
    centre, radii, angle = random_ellipse(rng, size, rng.uniform(*FAKE_DEFAULTS["region_area"]))
    centre = centre + offsets[0]  # fixed in the scene: it moves with the pan
    strength = FAKE_DEFAULTS["checkerboard_strength"]
    for k, (x, y) in enumerate(offsets):
        noise = rng.normal(0, 2.0, size=(size, size, 3))  # a camera's noise: fresh in each frame
        frame = np.clip(np.round(scene[y:y + size, x:x + size] + noise), 0, 255).astype(np.uint8)
        if not span[0] <= k < span[1]:
            yield frame, None
            continue
        radius = elliptic_radius(size, centre - (x, y), radii, angle)
        weight = np.clip((1 - radius) / FAKE_DEFAULTS["feather"], 0, 1)[..., None]
        base = frame.astype(np.float64)
        resynthesised = transposed_upsample_2x(downsample_2x(base), strength)
        fake = np.clip(np.round(base + weight * (resynthesised - base)), 0, 255).astype(np.uint8)
        yield fake, radius < 1


def fake_span(rng: np.random.Generator, n_frames: int) -> tuple[int, int]:
    """[first, last) frames a fake's region is re-synthesised in: 50% to 90% of the video."""
    length = max(1, int(round(n_frames * rng.uniform(0.5, 0.9))))
    first = int(rng.integers(0, n_frames - length + 1))
    return first, first + length


def video_name(label: str, index: int, codec: str = "ffv1") -> str:
    return f"{label}_{index:04d}{CODECS[codec][1]}"


def generate_demo_videos(out_dir: str | os.PathLike, n_per_class: int = DEMO_VIDEOS_PER_CLASS,
                         size: int = DEMO_VIDEO_SIZE, n_frames: int = DEMO_VIDEO_FRAMES,
                         seed: int = 0, codec: str = "ffv1", fps: float = DEMO_VIDEO_FPS) -> Path:
    """Write the demo videos into `out_dir` (layout in the module docstring); returns out_dir.
    The same arguments give the same videos; a folder holding this very generation is returned
    untouched; a folder with anything else in it is refused (DemoVideosError)."""
    from .demo_data import FAKE_DEFAULTS
    out_dir = Path(out_dir)
    if size % 2 or size < 16:
        raise ValueError(f"--img-size {size}: the frames' side must be even and at least 16 (the "
                         "fakes are down-sampled by 2)")
    if n_frames < 1 or n_per_class < 1 or codec not in CODECS:
        raise ValueError(f"demo videos: --frames ({n_frames}) and --n-per-class ({n_per_class}) "
                         f"must be at least 1, --codec ({codec!r}) one of {', '.join(CODECS)}")
    parameters = {"synthetic": True, "generator": "deepfake_detector.demo_videos",
                  "generator_version": VIDEO_GENERATOR_VERSION, "seed": seed,
                  "n_per_class": n_per_class, "image_size": size, "n_frames": n_frames,
                  "fps": fps, "codec": codec, "fake": FAKE_DEFAULTS}
    parameters = json.loads(json.dumps(parameters))
    saved = read_json_object(out_dir / GENERATION_FILE)
    if saved and {k: v for k, v in saved.items() if k not in ("package_version", "spans")} \
            == parameters:
        return out_dir
    with folder_lock(out_dir):
        if [p for p in out_dir.iterdir() if not p.name.startswith(".")]:
            raise DemoVideosError(f"Refusing to write demo videos into {out_dir}/: it already "
                                  "holds files. Choose a new or empty folder.")
        spans = {}
        for label in CLASS_NAMES:
            (out_dir / label).mkdir()
            for index in range(n_per_class):
                spans.update(write_demo_video(out_dir, seed, label, index, size, n_frames,
                                              codec, fps))
        record = {**parameters, "package_version": __version__, "spans": spans}
        atomic_write(out_dir / GENERATION_FILE, lambda f: json.dump(record, f, indent=2))
    return out_dir


def write_demo_video(out_dir: Path, seed: int, label: str, index: int, size: int, n_frames: int,
                     codec: str, fps: float) -> dict:
    """One demo video and its masks; {video name: [first, last) span} for a fake, else {}."""
    import numpy as np
    from PIL import Image
    name = video_name(label, index, codec)
    masked = []

    def frames():
        for k, (frame, mask) in enumerate(demo_video_frames(seed, label, index, size, n_frames)):
            if mask is not None:
                folder = out_dir / MASKS_DIRNAME / Path(name).stem
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.uint8(mask) * 255).save(folder / f"{k:06d}.png")
                masked.append(k)
            yield frame
    write_video(out_dir / label / name, frames(), fps, codec)
    return {name: [masked[0], masked[-1] + 1]} if masked else {}


# --------------------------------------------------------------------------- composed faces

def compose_face_video(path: str | os.PathLike, portrait: np.ndarray,
                       face: tuple[float, float, float, float], size: tuple[int, int] = (160, 160),
                       n_frames: int = 8, zoom: tuple[float, float] = (1.0, 1.3), seed: int = 0,
                       fps: float = 8.0, codec: str = "mp4v") -> list[tuple[float, ...]]:
    """Write a video of `portrait` (H x W x 3 uint8) moving and zooming over a 1/f-noise
    background of `size` (width, height); the portrait's face box `face` (x0, y0, x1, y1 in the
    portrait's pixels) in each frame, as floats, is returned. The face is shown `zoom` (first,
    last frame) times 80 px wide, with 30% of its size around it, the whole square inside the
    frame where it fits. Frames are written as they are made: an 8K video costs a frame's memory."""
    import cv2
    import numpy as np
    width, height = size
    rng = np.random.default_rng(seed)
    background = scene_background(rng, width, height)
    x0, y0, x1, y1 = face
    side = 1.6 * max(x1 - x0, y1 - y0)  # the square of the portrait shown: the face and around it
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    patch_x0, patch_y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
    patch = np.ascontiguousarray(portrait[patch_y0:int(cy + side / 2),
                                          patch_x0:int(cx + side / 2)])
    start, end = rng.uniform(0, 1, size=2), rng.uniform(0, 1, size=2)
    boxes = []

    def frames():
        for t in np.linspace(0.0, 1.0, n_frames):
            shown = int(round(80 * 1.6 * (zoom[0] + t * (zoom[1] - zoom[0]))))  # square's side
            factor = shown / side
            where = (start + t * (end - start)) * (max(width - shown, 0), max(height - shown, 0))
            left, top = int(round(where[0])), int(round(where[1]))
            matrix = np.float32([[factor, 0, left], [0, factor, top]])  # the patch into the frame
            boxes.append(tuple(float(v) for v in (left + (x0 - patch_x0) * factor,
                                                  top + (y0 - patch_y0) * factor,
                                                  left + (x1 - patch_x0) * factor,
                                                  top + (y1 - patch_y0) * factor)))
            yield cv2.warpAffine(patch, matrix, (width, height), dst=background.copy(),
                                 flags=cv2.INTER_AREA, borderMode=cv2.BORDER_TRANSPARENT)
    write_video(path, frames(), fps, codec)
    return boxes


def scene_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A 1/f-noise scene of (height, width, 3): made at 256 px at most and scaled up, so that an
    8K background costs no more than a small one."""
    import cv2

    from .demo_data import make_real
    side = max(width, height)
    background = make_real(rng, min(side, 256))
    if side > 256:
        background = cv2.resize(background, (side, side), interpolation=cv2.INTER_CUBIC)
    return background[:height, :width].copy()
