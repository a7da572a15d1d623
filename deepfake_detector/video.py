"""Reading videos: what a file holds (`probe_video`) and the frames evenly spaced over it
(`sample_frames`), decoded with OpenCV one at a time. Every consumer of a video (the `frames`
command, predict, gradcam, the app) samples through here, so a clip is sampled as a run's data were.

- Which frames: `frame_indices(frame_count, per_video)`, evenly spaced over the whole video, the
  first frame included; a video shorter than `per_video` gives each of its frames once.
- Seeking: each frame is reached by seeking (CAP_PROP_POS_FRAMES), so the work depends on
  `per_video`, not on the video's length; where the container's seeking lands elsewhere than asked
  (OpenCV's own position says so), the rest is read in order instead.
- Rotation metadata (a phone's portrait video) is applied: the frames come upright, and VideoInfo's
  width and height are the upright ones.
- A file that is not a decodable video (zero bytes, truncated, text named .mp4, audio only) gets a
  VideoError of one line that names the file.

No torch here; nothing is written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # numpy is imported where frames are decoded, not by the command line's --help
    import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_PER_VIDEO = 32  # frames per video, as DeepfakeBench samples
MAX_FRAME_PIXELS = 178_956_970  # PIL's decompression-bomb limit (images.py), per decoded frame


class VideoError(ValueError):
    """A file that cannot be read as a video: the message is one line naming the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frames, frames per second, the upright frame size in pixels,
    the duration in seconds and the rotation (degrees clockwise) applied to its frames."""
    frame_count: int
    fps: float
    width: int
    height: int
    duration_s: float
    rotation: int


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its index in the video (0-based), its time in seconds and its pixels
    (H x W x 3, uint8, RGB, upright)."""
    index: int
    timestamp_s: float
    rgb: np.ndarray


def is_video_name(name: str | os.PathLike) -> bool:
    """Whether a file name ends in one of VIDEO_SUFFIXES (any case)."""
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def frame_indices(frame_count: int, per_video: int = DEFAULT_PER_VIDEO) -> list[int]:
    """`per_video` frame indices evenly spaced over [0, frame_count), the first one 0: the centres
    would miss the first frame, so the spacing is frame_count / per_video from 0. Fewer frames than
    asked: every frame once."""
    if frame_count <= 0 or per_video <= 0:
        return []
    if frame_count <= per_video:
        return list(range(frame_count))
    return sorted({int(i * frame_count / per_video) for i in range(per_video)})


def quiet_decoder() -> None:
    """Silence FFmpeg's and OpenCV's own messages about damaged files ("moov atom not found"):
    a bad video gets the one line of its VideoError instead. Call before the first decode of a
    process; FFmpeg reads its level when OpenCV first opens a video."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    import cv2
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def open_capture(path: str | os.PathLike, threads: int | None = None):
    """An opened cv2.VideoCapture on `path` (FFmpeg, rotation applied), or a VideoError.
    `threads`: the decoder's threads (1 in a pool of one worker per core; None: OpenCV's choice)."""
    import cv2
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise VideoError(f"{path}: {problem}")
    params = [cv2.CAP_PROP_N_THREADS, int(threads)] if threads else []
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    if capture.isOpened():
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # OpenCV's default: said, not assumed
    else:
        capture.release()
        raise VideoError(f"{path}: not a video OpenCV can decode (truncated, damaged, audio only, "
                         "or not a video at all)")
    return capture


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be a video before opening it: missing, not a regular file, empty."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def info_of(capture, path: Path) -> VideoInfo:
    """VideoInfo from an opened capture, or a VideoError when it holds no frames to sample."""
    import cv2
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    rotation = int(capture.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: no video frames (audio only, or an empty stream)")
    if count <= 0:  # a header without a frame count (a live recording's .webm): count them
        count = count_frames(path)
        if count <= 0:
            raise VideoError(f"{path}: no video frames could be decoded")
    if width * height > MAX_FRAME_PIXELS:
        raise VideoError(f"{path}: frames of {width}x{height} pixels, above the limit of "
                         f"{MAX_FRAME_PIXELS:,} per frame")
    duration = count / fps if fps > 0 else 0.0
    return VideoInfo(count, fps, width, height, duration, rotation)


def count_frames(path: Path) -> int:
    """The frames of a video counted by reading it through (grab: no colour conversion): only for
    the rare header that does not say."""
    capture = open_capture(path)
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """What the video at `path` holds (header only, nothing decoded), or a VideoError in one line
    naming the file: missing, empty, not decodable (truncated, text named .mp4), audio only, or
    frames above MAX_FRAME_PIXELS."""
    capture = open_capture(path)
    try:
        return info_of(capture, Path(path))
    finally:
        capture.release()


def sample_frames(path: str | os.PathLike, per_video: int = DEFAULT_PER_VIDEO,
                  threads: int | None = None, stats: dict | None = None) -> Iterator[SampledFrame]:
    """The frames at frame_indices(frame_count, per_video), in order, one decoded frame in memory
    at a time (a generator: keep only what you need of each). Seeks to each; where a seek lands
    elsewhere, reads on in order. A frame the header announces but the file cannot give
    (truncated) ends it with a VideoError naming the file, after the frames already given.
    `stats`, when given, gets 'seeks' and 'reads' (frames decoded in order) counted into it."""
    path = Path(path)
    capture = open_capture(path, threads)
    stats = {} if stats is None else stats
    stats.setdefault("seeks", 0)
    stats.setdefault("reads", 0)
    try:
        info = info_of(capture, path)
        wanted = frame_indices(info.frame_count, per_video)
        yield from _seek_each(capture, path, info, wanted, stats)
    finally:
        capture.release()


def _seek_each(capture, path: Path, info: VideoInfo, wanted: list[int], stats: dict):
    """Seek to each wanted index; on the first inexact or failed seek, read in order from there."""
    import cv2
    position = 0  # the index of the next frame a plain read would give
    for k, index in enumerate(wanted):
        if index != position:  # a seek (the next frame in order needs none)
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            stats["seeks"] += 1
        ok, bgr = capture.read()
        landed = int(round(capture.get(cv2.CAP_PROP_POS_FRAMES))) - 1
        if not ok or landed != index:
            threads = capture_threads(capture)
            capture.release()  # one decoder at a time
            yield from _read_in_order(path, info, wanted[k:], stats, threads)
            return
        stats["reads"] += 1
        position = index + 1
        frame, bgr = to_sampled(bgr, index, info), None  # the frame's only owner: the consumer
        yield frame
        frame = None


def capture_threads(capture) -> int | None:
    import cv2
    threads = int(capture.get(cv2.CAP_PROP_N_THREADS) or 0)
    return threads if threads > 0 else None


def _read_in_order(path: Path, info: VideoInfo, wanted: list[int], stats: dict,
                   threads: int | None):
    """The wanted frames by reading every frame from the start (grab, and decode the wanted)."""
    capture = open_capture(path, threads)
    try:
        index, remaining = 0, list(wanted)
        while remaining:
            if not capture.grab():
                raise VideoError(f"{path}: truncated or damaged: frame {remaining[0]} of the "
                                 f"{info.frame_count} its header announces cannot be decoded")
            stats["reads"] += 1
            if index == remaining[0]:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise VideoError(f"{path}: truncated or damaged: frame {index} cannot be "
                                     "decoded")
                remaining.pop(0)
                frame, bgr = to_sampled(bgr, index, info), None
                yield frame
                frame = None
            index += 1
    finally:
        capture.release()


def to_sampled(bgr: np.ndarray, index: int, info: VideoInfo) -> SampledFrame:
    """OpenCV's BGR frame as a SampledFrame (RGB, contiguous)."""
    import cv2
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one frame in memory, not two
    timestamp = index / info.fps if info.fps > 0 else 0.0
    return SampledFrame(index, timestamp, rgb)
