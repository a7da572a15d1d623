"""Grad-CAM for a clip: the sampled frames as an MP4, each with its face crop's Grad-CAM overlay
beside it and P(fake) in the corner, and a contact sheet of the frames that look most fake.

    cams = clip_cams(model, checkpoint, clip)      P(fake) and both targets' maps, per face crop
    write_clip_video(clip, cams, path, target)     the MP4 (OpenCV's VideoWriter, mp4v)
    plot_top_frames(clip, cams, target, k)         the contact sheet's figure
    explain_clip_to(model, checkpoint, path, out)  all of it into out/ for one video

The clip is sampled and cropped as the run's training frames were (video_predict.read_clip).
The maps are computed in fp32 (as the app's), one forward and one backward pass per batch.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .gradcam import overlay, scale_cams
from .video_predict import Clip, ClipResult, Sampling, clip_result, read_clip

# The files explain_clip_to writes into a video's folder; a folder holding anything else is not
# written into (the project never overwrites what it did not write).
CLIP_FILES = ("gradcam.mp4", "contact_sheet.png", "frames.csv")
# The MP4's height: the frames' own, shrunk to at most 480 px, enlarged (sharp pixels) to at
# least 240 px so that the corner's text fits on a tiny video; even sides, as codecs need.
PANEL_HEIGHT_MIN, PANEL_HEIGHT_MAX = 240, 480
TOP_FRAMES = 6           # frames on the contact sheet


@dataclass
class ClipCams:
    """The pass over a clip's face crops: its result (P(fake) per crop, the verdict) and the raw
    layer4 maps for both targets, in clip.with_face order."""
    result: ClipResult
    raw: dict[str, np.ndarray]   # "fake"/"real" -> (N, h, w)

    def target_of(self, target: str) -> str:
        """"predicted": the video's verdict (fake when there is none); else the target itself."""
        return (self.result.verdict or "fake") if target == "predicted" else target


def clip_cams(model, checkpoint: dict, clip: Clip, batch_size: int = 16) -> ClipCams:
    """P(fake) and both targets' Grad-CAM maps of every face crop of `clip`, in fp32."""
    from .data import normalize_batch, uint8_transform
    from .gradcam import raw_grad_cam_both
    from .preprocessing import Preprocessing
    prep = Preprocessing.from_checkpoint(checkpoint)
    to_pixels = uint8_transform(prep.img_size)
    device = next(model.parameters()).device
    images = [f.image for f in clip.with_face]
    logits, maps = [], {"fake": [], "real": []}
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([to_pixels(image) for image in images[start:start + batch_size]])
        batch_maps, batch_logits = raw_grad_cam_both(
            model, normalize_batch(pixels, prep.mean, prep.std, device))
        logits.append(batch_logits.float().cpu())
        for target in maps:
            maps[target].append(batch_maps[target].float().cpu().numpy())
    probabilities = torch.sigmoid(torch.cat(logits)).numpy() if logits else np.zeros(0)
    raw = {t: np.concatenate(m) if m else np.zeros((0, 1, 1)) for t, m in maps.items()}
    return ClipCams(clip_result(clip, probabilities, checkpoint), raw)


def crop_overlay(cams: ClipCams, target: str, k: int, opacity: float = 0.5) -> np.ndarray:
    """The k-th face crop (as the model saw it; clip.with_face order) with its map for `target`
    blended in at `opacity`, uint8 RGB."""
    image = np.asarray(cams.result.clip.with_face[k].image)
    cam = scale_cams(cams.raw[cams.target_of(target)][k][None], image.shape[:2])[0]
    return overlay(image, cam, image_weight=1 - opacity)


def crop_overlays(cams: ClipCams, target: str, opacity: float = 0.5) -> list[np.ndarray]:
    """Every face crop's overlay (crop_overlay), in clip.with_face order."""
    return [crop_overlay(cams, target, k, opacity) for k in range(len(cams.result.clip.with_face))]


def even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def corner_text(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """`lines` in white on a dark box at the top-left corner of `image` (a copy)."""
    image = image.copy()
    scale = max(0.4, image.shape[0] / 480)
    thickness = max(1, round(scale))
    y = 0
    for line in lines:
        (width, height), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(image, (0, y), (width + 8, y + height + base + 8), (20, 20, 20), -1)
        cv2.putText(image, line, (4, y + height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
        y += height + base + 8
    return image


def video_frames(cams: ClipCams, target: str, opacity: float = 0.5):
    """The MP4's frames (uint8 RGB, all one even size): the whole frame with the face box drawn,
    and beside it the crop's overlay with P(fake) and the time in its corner."""
    clip, result = cams.result.clip, cams.result
    overlays = iter(crop_overlays(cams, target, opacity))
    probabilities = iter(result.probabilities.tolist())
    height = even(min(PANEL_HEIGHT_MAX, max(PANEL_HEIGHT_MIN,
                                            max(f.frame.height for f in clip.frames))))
    for frame in clip.frames:
        whole = np.asarray(frame.frame).copy()
        cropped = clip.sampling.settings.faces != "none"  # a face box, not the whole frame
        if cropped and frame.box is not None and frame.image is not None:
            x0, y0, x1, y1 = (round(v * frame.frame_scale) for v in frame.box)
            cv2.rectangle(whole, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 214, 0),
                          max(1, whole.shape[0] // 160))
        factor = height / whole.shape[0]
        whole = cv2.resize(whole, (even(whole.shape[1] * factor), height), interpolation=(
            cv2.INTER_AREA if factor < 1 else cv2.INTER_NEAREST if factor >= 2 else
            cv2.INTER_LINEAR))
        if frame.image is not None:
            picture = next(overlays)
            side = cv2.resize(picture, (height, height), interpolation=cv2.INTER_NEAREST
                              if height >= 2 * picture.shape[0] else cv2.INTER_LINEAR)
            text = [f"P(fake) {next(probabilities):.3f}", f"t = {frame.timestamp_s:.2f} s"]
        else:
            side = np.full((height, height, 3), 96, np.uint8)
            text = ["no face found", f"t = {frame.timestamp_s:.2f} s"]
        yield np.concatenate([whole, corner_text(side, text)], axis=1)


def write_clip_video(cams: ClipCams, path, target: str = "predicted",
                     opacity: float = 0.5) -> int:
    """The MP4 of the clip's sampled frames (video_frames), at the pace they were sampled (1 to
    10 frames a second), written under a temporary name and moved into place when whole.
    Returns the number of frames written."""
    path = Path(path)
    clip = cams.result.clip
    pace = len(clip.frames) / clip.duration_s if clip.duration_s > 0 else 2.0
    fps = float(min(10.0, max(1.0, pace)))
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.mp4")
    writer, n = None, 0
    try:
        for picture in video_frames(cams, target, opacity):
            if writer is None:
                size = (picture.shape[1], picture.shape[0])
                writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         size)
                if not writer.isOpened():
                    raise OSError(f"{path}: OpenCV cannot write MP4 (mp4v) files here; "
                                  "choose another --out, or check OpenCV's FFmpeg support")
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            n += 1
        if writer is not None:
            writer.release()
            writer = None
            os.replace(temporary, path)
    finally:
        if writer is not None:
            writer.release()
        temporary.unlink(missing_ok=True)
    return n


def plot_top_frames(cams: ClipCams, target: str = "predicted", k: int = TOP_FRAMES,
                    opacity: float = 0.5):
    """The contact sheet: the `k` face crops with the highest P(fake), most fake first, each as
    the crop and its Grad-CAM overlay, with its time and P(fake)."""
    from .figures import paper_style, plt
    result = cams.result
    faced = result.clip.with_face
    order = np.argsort(-result.probabilities, kind="stable")[:k]
    overlays = crop_overlays(cams, target, opacity)
    with paper_style():
        fig, axes = plt.subplots(2, max(1, len(order)), squeeze=False,
                                 figsize=(1.9 * max(1, len(order)), 4.1))
        for ax in axes.flat:
            ax.axis("off")
        for column, k_frame in enumerate(order):
            frame = faced[k_frame]
            axes[0, column].imshow(frame.image)
            axes[0, column].set_title(f"t = {frame.timestamp_s:.2f} s\n"
                                      f"P(fake) = {result.probabilities[k_frame]:.3f}", fontsize=8)
            axes[1, column].imshow(overlays[k_frame])
            axes[1, column].set_title(f"Grad-CAM ({cams.target_of(target)})", fontsize=8)
        verdict = str(result.verdict or "no verdict").upper()
        mean = "" if result.probability is None else f", P(fake) {result.probability:.3f}"
        fig.suptitle(f"{result.clip.name}: {verdict}{mean}; the {len(order)} most fake-looking "
                     "frames", fontsize=9)
        fig.tight_layout()
    return fig


def check_clip_folder(folder: Path) -> None:
    """Refuse (one line) a video's output folder that holds files this module did not write."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder: choose another --out.")
    other = sorted(p.name for p in folder.iterdir() if p.name not in CLIP_FILES) \
        if folder.is_dir() else []
    if other:
        raise FileExistsError(f"{folder} holds files gradcam did not write ({', '.join(other[:3])}"
                              f"{', ...' if len(other) > 3 else ''}): nothing written. Choose "
                              "another --out.")


def explain_clip_to(model, checkpoint: dict, path, out_dir, sampling: Sampling = Sampling(),
                    target: str = "predicted", batch_size: int = 16) -> dict:
    """Grad-CAM for the video at `path` into out_dir/<video stem>/: gradcam.mp4, contact_sheet.png
    and frames.csv (per frame: time, face, P(fake)). Returns a summary (the video's row, the
    files, the MP4's frame count)."""
    from .figures import plt
    from .video_metrics import write_rows
    path = Path(path)
    folder = Path(out_dir) / (path.stem or "video")
    check_clip_folder(folder)
    clip = read_clip(path, sampling)
    cams = clip_cams(model, checkpoint, clip, batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    n_frames = write_clip_video(cams, folder / "gradcam.mp4", target)
    files = [folder / "gradcam.mp4"]
    if clip.with_face:
        fig = plot_top_frames(cams, target)
        fig.savefig(folder / "contact_sheet.png", dpi=150, bbox_inches="tight")
        plt.close(fig)
        files.append(folder / "contact_sheet.png")
    write_rows(cams.result.frame_rows(), folder / "frames.csv")
    files.append(folder / "frames.csv")
    return {**cams.result.row(), "target": cams.target_of(target), "mp4_frames": n_frames,
            "sampling": sampling.describe(), "files": [str(f) for f in files]}

