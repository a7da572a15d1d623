"""An uploaded clip, explained: bytes -> the video's verdict, P(fake) over time, and the frames that
look most fake with their Grad-CAM. What the web app shows for a video (app_video.py), as plain
functions a test or a script can call:

    result = explain_video_upload(model, checkpoint, name, data, sampling)
    result.error                       a sentence naming the file and what to do, or None
    result.cams.result.verdict, .probability, .probabilities   (video_gradcam.ClipCams)

The limits are checked before any frame is decoded: the size from the upload's length, the
duration from the container's header. OpenCV decodes from a path only, so the bytes go into a
private temporary folder (mode 0700, the file 0600) for as long as the frames are read, and the
file and folder are deleted right after (PRIVATE_COPY_NOTE says so on the page).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .faces import MissingFacesExtra
from .uploads import MAX_VIDEO_BYTES, MAX_VIDEO_MB, MAX_VIDEO_SECONDS
from .video import VIDEO_SUFFIXES, VideoError, probe_video, quiet_decoder
from .video_gradcam import ClipCams, clip_cams
from .video_predict import Sampling, read_clip

VIDEO_TYPES = tuple(suffix.lstrip(".") for suffix in VIDEO_SUFFIXES)
PRIVATE_COPY_NOTE = ("To read its frames, the video is written to a private temporary folder "
                     "(readable by this server's user only) and deleted as soon as they are read; "
                     "only the sampled frames stay in memory.")


@dataclass
class ExplainedVideo:
    """One uploaded clip after the pass, or why it could not be read."""
    name: str
    error: str | None = None
    cams: ClipCams | None = None         # the verdict, P(fake) per frame, the maps
    notes: list[str] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def private_copy(name: str, data: bytes):
    """The bytes as a file in a new private folder (0700; the file 0600), for OpenCV, which
    reads from paths only; file and folder are deleted when the block ends, however it ends."""
    folder = Path(tempfile.mkdtemp(prefix="deepfake-detector-video-"))  # mode 0700
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in VIDEO_SUFFIXES else ".mp4"
    path = folder / f"upload{suffix}"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def reason_of(error: Exception) -> str:
    """The reason in a VideoError's line, without the temporary copy's path before it and the
    command line's ": skipped" after it."""
    return str(error).split(": ", 1)[-1].removesuffix(": skipped").rstrip(".")


def too_long(name: str, path: Path, max_seconds: float) -> str | None:
    """Why the clip is refused by its header (not a video, over the length limit), or None."""
    quiet_decoder()  # the one line below, not FFmpeg's own messages
    try:
        info = probe_video(path)
    except VideoError as error:
        return f"{name}: {reason_of(error)}. Upload an MP4, AVI, MOV, MKV or WebM video."
    if info.duration_s > max_seconds:
        return (f"{name}: {info.duration_s:.0f} s long, over this app's limit of "
                f"{max_seconds / 60:g} minutes. Cut a shorter clip first (the model samples a "
                "few dozen frames anyway), or use `predict` on the command line.")
    return None


def explain_video_upload(model, checkpoint: dict, name: str, data: bytes,
                         sampling: Sampling = Sampling(), max_bytes: int = MAX_VIDEO_BYTES,
                         max_seconds: float = MAX_VIDEO_SECONDS) -> ExplainedVideo:
    """The clip's verdict (mean P(fake) over its sampled frames with a face, at the run's video
    threshold), P(fake) per frame and the Grad-CAM maps of each face crop; or the error, one
    sentence naming the file. Size and length are checked before any frame is decoded."""
    result = ExplainedVideo(name=name, size_bytes=len(data))
    if len(data) > max_bytes:
        result.error = (f"{name}: {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB "
                        "video limit. Cut or re-compress it first.")
        return result
    if not data:
        result.error = f"{name}: empty file (0 bytes). Upload the video again."
        return result
    try:
        with private_copy(name, data) as path:
            result.error = too_long(name, path, max_seconds)
            if result.error:
                return result
            clip = read_clip(path, sampling, name=name)  # the file is deleted right after
    except (VideoError, MissingFacesExtra) as error:
        result.error = f"{name}: {reason_of(error)}."
        return result
    if not clip.with_face:
        result.error = (f"{name}: no face found in any of its {len(clip.frames)} sampled frames, "
                        "so there is no verdict. Upload a clip that shows a face.")
        return result
    result.cams = clip_cams(model, checkpoint, clip)
    result.notes += [note.replace(str(clip.path), name) for note in clip.notes]
    missing = len(clip.frames) - len(clip.with_face)
    if missing:
        result.notes.append(f"{missing} of the {len(clip.frames)} sampled frames show no face "
                            "and were left out of the verdict.")
    return result


def top_frames(cams: ClipCams, k: int = 4) -> list[int]:
    """The indices (clip.with_face order) of the k frames with the highest P(fake), highest
    first."""
    order = sorted(range(len(cams.result.probabilities)),
                   key=lambda i: -cams.result.probabilities[i])
    return order[:k]


def max_video_words() -> str:
    return f"up to {MAX_VIDEO_MB} MB and {MAX_VIDEO_SECONDS / 60:g} minutes"
