"""One clip through a trained run: its frames sampled as the run's data were sampled (the `frames`
command's record, in the run's config.json), the face cropped the same way, P(fake) per frame,
and the video's verdict on the mean, at the threshold chosen on the validation videos.

    sampling = run_sampling(run_dir)             how the run's frames were made (Sampling)
    clip = read_clip(path, sampling)             the sampled frames and their face crops (Clip)
    result = predict_clip(model, checkpoint, clip)  P(fake) per frame, the verdict (ClipResult)
    predict_videos(run_dir, paths, ...)          predict's rows for video files, one per video
    plot_timeline(result, path)                  P(fake) against time, with the threshold

Decoding and face cropping are video.py's and faces.py's (the `frames` command's own), so a clip
is sampled, cropped and stored (PNG, or JPEG at the recorded quality) exactly as training frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .faces import crop, face_box, load_detector
from .frames_manifest import FrameSettings
from .video import VideoError, is_video_name, probe_video, quiet_decoder, sample_frames

KEEP_FRAME_SIDE = 640  # the whole frame is kept this small at most, for the pictures


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from a clip (`settings`: the frames command's FrameSettings) and
    where that came from (`source`, for people)."""
    settings: FrameSettings = FrameSettings(faces="none")
    source: str = "the defaults, whole frames (the run was not trained on frames of videos)"

    @classmethod
    def from_record(cls, record: dict | None) -> "Sampling":
        """The sampling a run records (config.json's video_frames: {"frames_dir", "settings"},
        the frames command's settings); the defaults, whole frames, for a run trained on other
        images."""
        if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
            return cls()
        return cls(FrameSettings.from_dict(record["settings"]),
                   f"the frames command's record of the run's data, {record.get('frames_dir')}")

    def describe(self) -> str:
        s = self.settings
        faces = "whole frames" if s.faces == "none" else \
            f"the largest face ({s.faces}), a {s.scale:g}x square box"
        stored = "PNG" if s.format == "png" else f"JPEG quality {s.quality}"
        return f"{s.per_video} frames per video, {faces}, as {stored} (from {self.source})"


def run_sampling(run_dir) -> Sampling:
    """How `run_dir`'s training frames were made (run_dir.run_record's video_frames)."""
    from .run_dir import read_run_config
    config = read_run_config(run_dir, required=False) or {}
    return Sampling.from_record(config.get("video_frames"))


@dataclass
class ClipFrame:
    """One sampled frame: where it is, the box of its face (the whole frame with faces "none")
    and the crop the model sees (stored as the run's frames were), or no face."""
    index: int
    timestamp_s: float
    box: tuple[int, int, int, int] | None
    image: Image.Image | None    # the crop, as the model sees it; None: no face found
    frame: Image.Image           # the whole frame, at most KEEP_FRAME_SIDE on a side
    frame_scale: float           # frame's size / the video's size (to draw the box on it)


@dataclass
class Clip:
    """A video's sampled frames: all of them (with or without a face), and the video's facts."""
    path: Path
    name: str
    frames: list[ClipFrame] = field(default_factory=list)
    duration_s: float = 0.0
    fps: float = 0.0
    frame_count: int = 0
    sampling: Sampling = Sampling()
    notes: list[str] = field(default_factory=list)  # e.g. cut short: the frames before the cut

    @property
    def with_face(self) -> list[ClipFrame]:
        return [f for f in self.frames if f.image is not None]


def as_stored(rgb: np.ndarray, settings: FrameSettings) -> Image.Image:
    """The crop as the frames command stores it, read back as training reads its files: PNG is
    lossless (the pixels themselves); JPEG is encoded as frames encodes it (OpenCV, at the
    recorded quality) and decoded by the project's opener, artefacts and all."""
    if settings.format == "png":
        return Image.fromarray(rgb)
    import cv2
    from .data import try_decode_image
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(settings.quality)])
    image, reason = try_decode_image(encoded.tobytes()) if ok else (None, "not encoded")
    if image is None:
        raise VideoError(f"a frame could not be stored as JPEG ({reason})")
    return image


def read_clip(path, sampling: Sampling = Sampling(), name: str | None = None) -> Clip:
    """The frames of the video at `path` that `sampling` picks, each with its face crop (or
    None when no face is found), one decoded frame in memory at a time. A VideoError (one line
    naming the file) for what is not a readable video; a video cut short keeps the frames read
    before the cut, and says so in its notes."""
    path = Path(path)
    quiet_decoder()  # a bad file gets its one line, not FFmpeg's own messages
    info = probe_video(path)
    settings = sampling.settings
    detector = load_detector(settings.faces)
    clip = Clip(path, name or path.name, duration_s=info.duration_s, fps=info.fps,
                frame_count=info.frame_count, sampling=sampling)
    try:
        for sampled in sample_frames(path, settings.per_video):
            clip.frames.append(clip_frame(sampled, detector, settings))
    except VideoError as error:  # truncated: raised after the frames it could give
        if not clip.frames:
            raise
        clip.notes.append(f"{error}; its first {len(clip.frames)} sampled frames are used")
    return clip


def clip_frame(sampled, detector, settings: FrameSettings) -> ClipFrame:
    """A sampled frame with its face crop (as stored), and a copy of the frame kept small."""
    box, _ = face_box(sampled.rgb, detector, settings.scale, settings.detect_width)
    image = as_stored(crop(sampled.rgb, box), settings) if box is not None else None
    frame = Image.fromarray(sampled.rgb)
    scale = min(1.0, KEEP_FRAME_SIDE / max(frame.size))
    if scale < 1.0:
        frame = frame.resize((max(1, round(frame.width * scale)),
                              max(1, round(frame.height * scale))), Image.BILINEAR)
    return ClipFrame(sampled.index, sampled.timestamp_s, box, image, frame, scale)


@dataclass
class ClipResult:
    """A clip's answer: P(fake) per frame with a face, the mean, the verdict at `threshold`."""
    clip: Clip
    probabilities: np.ndarray        # per frame with a face, in clip.with_face order
    probability: float | None        # the mean: the video's P(fake); None without faces
    threshold: float
    threshold_source: str            # "validation videos" or "validation frames"
    verdict: str | None              # "fake", "real", or None (no frame with a face)

    def row(self) -> dict:
        """predict's row for the video."""
        return {"video_id": self.clip.name, "verdict": self.verdict,
                "prediction": self.probability, "threshold": self.threshold,
                "frames_used": len(self.probabilities), "frames_sampled": len(self.clip.frames),
                "frames_with_face": len(self.clip.with_face), "path": str(self.clip.path)}

    def frame_rows(self) -> list[dict]:
        """--frames-out's rows: one per sampled frame (P(fake) empty where no face was found)."""
        p = iter(self.probabilities.tolist())
        return [{"video_id": self.clip.name, "frame_index": f.index,
                 "timestamp_s": round(f.timestamp_s, 6), "face": f.image is not None,
                 "prediction": next(p) if f.image is not None else None,
                 "box": None if f.box is None else " ".join(map(str, f.box))}
                for f in self.clip.frames]


def frame_probabilities(model, prep, images: list[Image.Image], batch_size: int = 32
                        ) -> np.ndarray:
    """P(fake) of each PIL image as predict computes it for the same picture stored as a file
    (the run's Preprocessing: PIL resize to img_size, normalised per batch, in its precision)."""
    from .data import normalize_batch, uint8_transform
    from .features import head_in_fp32, inference_pass
    device = next(model.parameters()).device
    to_pixels = uint8_transform(prep.img_size)
    out = []
    with inference_pass(model, device, prep.precision):
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([to_pixels(image) for image in images[start:start + batch_size]])
            x = normalize_batch(pixels, prep.mean, prep.std, device)
            logits = model(x).float() if prep.precision == "fp32" else head_in_fp32(model, x)
            out.append(torch.sigmoid(logits).squeeze(1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def clip_threshold(checkpoint: dict) -> tuple[float, str]:
    """(threshold, where it was chosen) for a video's verdict: the run's video threshold, chosen
    on its validation videos; for a run trained on other images, its frame threshold."""
    from .inference import decision_threshold
    from .video_metrics import video_threshold
    value = video_threshold(checkpoint)
    if value is not None:
        return value, "validation videos"
    return decision_threshold(checkpoint), "validation frames"


def clip_result(clip: Clip, probabilities: np.ndarray, checkpoint: dict) -> ClipResult:
    """The verdict of a clip from its frames' P(fake): the mean, against clip_threshold."""
    threshold, source = clip_threshold(checkpoint)
    probability = float(np.mean(probabilities)) if len(probabilities) else None
    verdict = None if probability is None else ("fake" if probability >= threshold else "real")
    return ClipResult(clip, np.asarray(probabilities, dtype=float), probability, threshold,
                      source, verdict)


def predict_clip(model, checkpoint: dict, clip: Clip, precision: str | None = None,
                 batch_size: int = 32) -> ClipResult:
    """P(fake) of each frame of `clip` with a face, and the video's verdict on their mean."""
    return predict_clips(model, checkpoint, [clip], precision, batch_size)[0]


def predict_clips(model, checkpoint: dict, clips: list[Clip], precision: str | None = None,
                  batch_size: int = 32) -> list[ClipResult]:
    """predict_clip for several clips, their frames in shared batches (fewer, fuller passes)."""
    from .preprocessing import Preprocessing
    prep = Preprocessing.from_checkpoint(checkpoint)
    if precision:
        from dataclasses import replace
        prep = replace(prep, precision=precision)
    images = [f.image for clip in clips for f in clip.with_face]
    probabilities = frame_probabilities(model, prep, images, batch_size)
    ends = np.cumsum([len(clip.with_face) for clip in clips])
    return [clip_result(clip, p, checkpoint)
            for clip, p in zip(clips, np.split(probabilities, ends[:-1]))]


def list_videos(paths) -> tuple[list[Path], list[Path]]:
    """(video files, other paths) among `paths`: a file with a video suffix is a video; a folder
    holding videos gives its videos, sorted (any images beside them are left out, with a
    warning: the demo videos' masks, say); the rest is left to predict."""
    import warnings
    from .discovery import find_images
    videos, others = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_video_name(p))
            if found:
                videos += found
                if images := find_images(path):
                    warnings.warn(f"{path} holds {len(found)} videos and {len(images)} images: "
                                  "the videos are used; give the images in a separate call.",
                                  stacklevel=2)
                continue
        (videos if is_video_name(path) else others).append(path)
    return videos, others


def predict_videos(run_dir, paths, device: str = "auto", precision: str | None = None,
                   batch_size: int = 32, on_clip=None, log=None, roots=()) -> list[dict]:
    """predict's rows for video files: one per video (verdict, P(fake) = the mean over the frames
    with a face, frames used, frames with a face). A video that cannot be read is skipped with
    one line to `log`; `on_clip(result)` is called with each ClipResult (timeline, frame rows).
    Videos are named as predict names images (inference.image_ids): the file name, or the path
    inside the folder given (`roots`) when two share a name."""
    from .inference import image_ids, load_run
    model, checkpoint = load_run(run_dir, device)
    sampling = run_sampling(run_dir)
    paths = [Path(p) for p in paths]
    rows = []
    for path, name in zip(paths, image_ids(paths, [Path(r) for r in roots])):
        try:
            clip = read_clip(path, sampling, name=name)
        except VideoError as error:
            (log or print)(f"warning: {error}")
            continue
        result = predict_clip(model, checkpoint, clip, precision, batch_size)
        for note in clip.notes:
            (log or print)(f"warning: {note}")
        if not clip.with_face:
            (log or print)(f"warning: {clip.path}: no face in any of its {len(clip.frames)} "
                           "sampled frames: no verdict")
        if on_clip:
            on_clip(result)
        rows.append(result.row())
    if not rows:
        raise ValueError(f"No readable videos among {', '.join(map(str, paths))}: see the "
                         "warnings above.")
    return rows


# ----------------------------------------------------------------------------- the timeline

def plot_timeline(result: ClipResult, path=None):
    """P(fake) of each frame against its time in the video, the threshold as a dashed line and
    the video's mean as a dotted one; frames without a face marked along the bottom. Saved as
    PNG at `path` when given; returns the figure."""
    from .figures import plt
    faced = result.clip.with_face
    times = [f.timestamp_s for f in faced]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.plot(times, result.probabilities, "o-", color="#c62828", markersize=3.5,
            label="P(fake) per frame")
    ax.axhline(result.threshold, color="black", linestyle="--", linewidth=1,
               label=f"threshold {result.threshold:.3f} ({result.threshold_source})")
    if result.probability is not None:
        ax.axhline(result.probability, color="#1565c0", linestyle=":", linewidth=1.5,
                   label=f"video P(fake) {result.probability:.3f} (mean)")
    missing = [f.timestamp_s for f in result.clip.frames if f.image is None]
    if missing:
        ax.plot(missing, [0.01] * len(missing), "x", color="grey", label="no face found")
    ax.set(xlabel="time in the video (s)", ylabel="P(fake)", ylim=(-0.02, 1.02),
           title=f"{result.clip.name}: {str(result.verdict or 'no verdict').upper()}")
    end = max([result.clip.duration_s] + [f.timestamp_s for f in result.clip.frames])
    ax.set_xlim(-0.02 * max(end, 1e-3), end * 1.02 + 1e-3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def timeline_name(result: ClipResult, used: set) -> str:
    """A file name for the clip's timeline, unique within one call."""
    stem = Path(result.clip.name).stem or "video"
    name, n = f"{stem}.timeline.png", 1
    while name in used:
        n += 1
        name = f"{stem} ({n}).timeline.png"
    used.add(name)
    return name
