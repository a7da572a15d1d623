"""What the `frames` command wrote, and how: the file names, the settings (FrameSettings) and
the manifest's columns as constants, and the readers, so that predict, gradcam and the app sample
a clip as a run's training frames were sampled.

    OUT/frames.json   {"written_by": ..., "settings": FrameSettings as a dict, ...}
    OUT/frames.csv    one row per sampled frame (a frame without a face too: path empty)

No torch here; nothing is written (frames.py writes).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .faces import DEFAULT_DETECT_WIDTH, DEFAULT_SCALE, FACE_MODES
from .files import read_json_object
from .video import DEFAULT_PER_VIDEO

FRAMES_CSV = "frames.csv"
FRAMES_JSON = "frames.json"
WRITTEN_BY = "deepfake_detector frames"
FRAME_FORMATS = ("png", "jpg")
DEFAULT_QUALITY = 95  # JPEG quality, with --format jpg only

# One row per sampled frame. label: real/fake; video: the video's path relative to --videos
# (POSIX); video_id: its folder under OUT/<label>/; frame_index (0-based) and timestamp_s in the
# video; path: the written image relative to OUT ("" when no face was found); x0 y0 x1 y1: the
# crop box in the frame's pixels (x1, y1 exclusive; the whole frame with --faces none, "" when no
# face); score: dlib's detector score ("" when none); frame_width/frame_height: the upright
# frame's size; then the settings every row was made with.
SETTING_COLUMNS = ("per_video", "faces", "scale", "detect_width", "format", "quality")
FRAMES_COLUMNS = ("label", "video", "video_id", "frame_index", "timestamp_s", "path",
                  "x0", "y0", "x1", "y1", "score", "frame_width", "frame_height") + SETTING_COLUMNS


@dataclass(frozen=True)
class FrameSettings:
    """How frames are sampled and cropped: `per_video` frames evenly spaced; `faces` "dlib" (the
    largest face's square box of `scale` x its size, detected on a copy `detect_width` wide) or
    "none" (whole frames); written as `format` (png, or jpg at `quality`)."""
    per_video: int = DEFAULT_PER_VIDEO
    faces: str = "dlib"
    scale: float = DEFAULT_SCALE
    detect_width: int = DEFAULT_DETECT_WIDTH
    format: str = "png"
    quality: int = DEFAULT_QUALITY

    def __post_init__(self):
        if self.per_video < 1:
            raise ValueError(f"--per-video {self.per_video}: give at least 1 frame per video")
        if self.faces not in FACE_MODES:
            raise ValueError(f"--faces {self.faces!r}: choose one of {', '.join(FACE_MODES)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"--scale {self.scale}: give a positive number (1.3: FaceForensics++)")
        if self.format not in FRAME_FORMATS:
            raise ValueError(f"--format {self.format!r}: choose one of {', '.join(FRAME_FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality {self.quality}: give a JPEG quality from 1 to 100")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FrameSettings":
        """From frames.json's "settings" or a frames.csv row (strings converted)."""
        kinds = {f.name: f.type for f in fields(cls)}
        convert = {"int": int, "float": float, "str": str}
        return cls(**{name: convert[kind](values[name]) for name, kind in kinds.items()
                      if name in values and values[name] not in ("", None)})

    @property
    def suffix(self) -> str:
        return "." + self.format


def frame_name(index: int, settings: FrameSettings) -> str:
    """The file name of frame `index` of a video: 000123.png (six digits, more when needed)."""
    return f"{index:06d}{settings.suffix}"


def read_frames_json(folder: str | os.PathLike) -> dict | None:
    """frames.json of `folder` when the `frames` command wrote it there, else None."""
    record = read_json_object(Path(folder) / FRAMES_JSON)
    return record if record is not None and record.get("written_by") == WRITTEN_BY else None


def frame_settings_of(folder: str | os.PathLike) -> FrameSettings | None:
    """The FrameSettings a `frames` output folder was made with, or None when `folder` is not one
    (no frames.json, or not the frames command's)."""
    record = read_frames_json(folder)
    return FrameSettings.from_dict(record["settings"]) if record else None


def read_frames_manifest(folder: str | os.PathLike) -> tuple[FrameSettings, list[dict]]:
    """(the settings, frames.csv's rows as dicts of strings) of a `frames` output folder; a
    ValueError in one line naming the folder when it has none."""
    folder = Path(folder)
    settings = frame_settings_of(folder)
    path = folder / FRAMES_CSV
    if settings is None or not path.is_file():
        raise ValueError(f"{folder} has no {FRAMES_JSON} and {FRAMES_CSV} written by the frames "
                         "command: run `deepfake-detector frames --videos DIR --out "
                         f"{folder}` first")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return settings, rows
