"""Uploaded images, explained: bytes in memory -> verdict, P(fake), confidence band, Grad-CAM.

Everything the web app (`app.py`, `python -m deepfake_detector app`) shows comes from the plain
functions here, so a notebook's upload widget, a test or a script can call them just the same:

    model, checkpoint = inference.load_run(run_dir)
    results = explain_uploads(model, checkpoint, [(file_name, data_bytes), ...])
    for r in results:
        r.error                               # a sentence naming the file and what to do, or None
        r.verdict, r.probability, r.band      # at the run's val-chosen threshold
        r.unlike_training, r.trust_note       # is the image like the training data? (ood.py)
        overlay_image(r, "fake", opacity=0.5) # any target or opacity, without another pass
        overlay_png(r, ...), prediction_row_json(r)   # what the download buttons give
    model_card(run_dir, checkpoint)           # what the sidebar shows

Uploads never touch the disk: each is decoded from its bytes by the project's own opener
(`data.try_decode_image`: predict's rules and words, first frame of a multi-frame file), after a
look at the header alone refuses files too large to decode. Prediction and Grad-CAM share one
forward pass per batch of uploads, and that pass gives the maps for both targets (fake and
real), so switching target or opacity later costs a resize and a blend, never the model.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .data import normalize_batch, try_decode_image, uint8_transform
from .images import open_supported
# At import, not at the first download: the report pulls in scikit-learn and matplotlib (2.4 s the
# first time on 2 busy cores), which the app's first user would otherwise wait for.
from .predictions import write_prediction_rows
from .report import load_json
from .run_dir import (CHECKPOINT, CROSS_DATASET_JSON, DATA_COUNTS_JSON, METRICS_VAL_JSON,
                      read_run_config)
from .gradcam import overlay, raw_grad_cam_both, scale_cams
from .inference import decision_threshold
from .ood import NO_STATISTICS, Assessment, CapturedFeatures, assess
from .preprocessing import Preprocessing

# A photo from a phone is 2-12 MB as JPEG, a 50 MP one 15-20 MB. A PNG screenshot of 4K is about
# 10 MB. More than 20 MB per file is rarely a photograph and costs memory on a shared machine.
MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024  # Streamlit's megabyte (server.maxUploadSize)
# A short clip (video_uploads.py): a minute of phone video is 50-100 MB; the model samples a few
# dozen frames of it anyway. The server's limit is the larger of the two (serve.py).
MAX_VIDEO_MB, MAX_VIDEO_SECONDS = 100, 120
MAX_VIDEO_BYTES = MAX_VIDEO_MB * 1024 * 1024
# 50 MP covers the largest common camera sensors (48-50 MP). A file can claim far more in a few
# bytes (a PNG of one colour compresses 1000x): decoded, 50 MP is 150 MB of RGB, so the header is
# checked before any pixel is decoded.
MAX_PIXELS = 50_000_000
# What is kept of each image for the overlays. The model sees img_size x img_size pixels and the
# map has layer4's resolution (7 x 7 at 224 px): a larger overlay adds no information.
KEEP_MAX_SIDE = 2048
PREVIEW_MAX_SIDE = 640  # what the page shows beside the overlay
# The confidence band's edges on P(fake): "confident" only beyond them, and only on the side of
# the verdict; everything between is "uncertain".
CONFIDENT_BELOW, CONFIDENT_ABOVE = 0.2, 0.8
# The band of an image flagged as unlike the training data (ood.py: its OOD score beyond the
# 99th percentile of the validation images, or its native size far from the training images'):
# never "confident", whatever P(fake) is.
NOT_LIKE_TRAINING = "not like the training data"
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
TARGETS = ("fake", "real")

# What to do, per kind of failure (the first words of try_decode_image's reasons).
ADVICE = {
    "empty file": "Upload the file again: this copy holds no data.",
    "not an image": "Upload a JPEG, PNG, WebP, BMP, TIFF or GIF image.",
    "cannot be decoded": "The file is damaged or cut short (truncated): export or download it "
                         "again.",
}


@dataclass
class ExplainedUpload:
    """One upload after the pass: what the page shows, or why it could not be read."""
    name: str                        # the file name as uploaded
    image_id: str                    # the name in prediction rows (unique within one call)
    error: str | None = None         # a sentence naming the file and saying what to do
    notes: list[str] = field(default_factory=list)  # e.g. "animated GIF: first frame used"
    original_size: tuple[int, int] | None = None    # (width, height) of the file
    n_frames: int = 1
    image: Image.Image | None = None     # RGB (first frame), at most KEEP_MAX_SIDE on a side
    preview: Image.Image | None = None   # the same, at most PREVIEW_MAX_SIDE on a side
    preview_png: bytes | None = None     # the preview as PNG, encoded once for the page
    probability: float | None = None     # P(fake)
    logit: float | None = None
    threshold: float | None = None       # the verdict's threshold (the run's, chosen on val)
    verdict: str | None = None           # "fake" or "real"
    band: str | None = None              # "confident", "uncertain" or NOT_LIKE_TRAINING
    # How far the image is from the training data (ood.py), from the features of the same pass:
    ood_score: float | None = None       # None: the run has no OOD statistics (an older run)
    ood_percentile: float | None = None  # the score's percentile among the val images' scores
    unlike_training: bool = False        # flagged: OOD score beyond the 99th percentile, or size
    size_note: str | None = None         # "much larger than the training images (3000 px vs ...)"
    trust_note: str = ""                 # one line, complete: the flag(s) and why, or the
    #                                      percentile when not flagged, or that there is no score
    raw_cams: dict[str, np.ndarray] = field(default_factory=dict)  # target -> layer4-grid map

    @property
    def ok(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------------------------
# Verdict and confidence

def verdict_of(probability: float, threshold: float) -> str:
    """"fake" when P(fake) >= threshold (the project's one convention), else "real"."""
    return "fake" if probability >= threshold else "real"


def confidence_band(probability: float, threshold: float, below: float = CONFIDENT_BELOW,
                    above: float = CONFIDENT_ABOVE) -> str:
    """"confident" when P(fake) < below and the verdict is real, or P(fake) >= above and the
    verdict is fake; "uncertain" otherwise (a threshold outside [below, above] can make a verdict
    whose P(fake) lies beyond an edge on the other side: that is uncertain too)."""
    verdict = verdict_of(probability, threshold)
    if (verdict == "real" and probability < below) or (verdict == "fake" and probability >= above):
        return "confident"
    return "uncertain"


def band_edges_text(below: float = CONFIDENT_BELOW, above: float = CONFIDENT_ABOVE) -> str:
    return (f"confident: P(fake) under {below:g} with verdict real, or at least {above:g} with "
            f"verdict fake; uncertain otherwise")


# ----------------------------------------------------------------------------------------------
# Decoding, in memory

def image_header(data: bytes) -> tuple[str | None, tuple[int, int], int]:
    """(format, (width, height), number of frames) from the header alone: no pixel is decoded.
    Raises what PIL raises for a file it cannot identify (or one far beyond its own bomb limit),
    and ImageLoadError for a format the project does not decode (EPS, PSD, ...): only the
    supported formats' plugins ever see the bytes (images.open_supported)."""
    with open_supported(io.BytesIO(data)) as image:
        return image.format, image.size, int(getattr(image, "n_frames", 1) or 1)


def megapixels(size: tuple[int, int]) -> str:
    return f"{size[0] * size[1] / 1e6:.0f}" if size[0] * size[1] >= 1e7 else \
        f"{size[0] * size[1] / 1e6:.1f}"


def decode_upload(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_PIXELS) -> ExplainedUpload:
    """An ExplainedUpload holding the decoded RGB image (first frame) and notes, or the error."""
    result = ExplainedUpload(name=name, image_id=name)
    if len(data) > max_bytes:
        result.error = (f"{name}: {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB "
                        "upload limit. Downscale or re-compress it first.")
        return result
    if data:
        try:
            fmt, size, result.n_frames = image_header(data)
        except Image.DecompressionBombError as error:
            result.error = (f"{name}: huge dimensions ({error}). This app takes images up to "
                            f"{max_pixels / 1e6:g} megapixels: downscale it first (the model sees "
                            "a few hundred pixels a side anyway).")
            return result
        except Exception:  # not an image, or a broken one: the decoder below says which, in words
            fmt, size = None, None
        if size is not None:
            result.original_size = size
            if size[0] * size[1] > max_pixels:
                result.error = (f"{name}: {size[0]} x {size[1]} pixels ({megapixels(size)} "
                                f"megapixels), over this app's limit of {max_pixels / 1e6:g} "
                                "megapixels. Downscale it first (the model sees a few hundred "
                                "pixels a side anyway).")
                return result
    image, reason = try_decode_image(data)
    if image is None:
        advice = next((text for start, text in ADVICE.items() if reason.startswith(start)), "")
        result.error = f"{name}: {reason}. {advice}".strip()
        return result
    result.image = image
    result.original_size = image.size
    if result.n_frames > 1:
        result.notes.append(f"{name} holds {result.n_frames} frames ({fmt or 'multi-frame'}): "
                            "the first frame was used, as predict, training and the notebook do.")
    return result


def shrunk(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def unique_ids(names: Sequence[str]) -> list[str]:
    """File names as image ids; a name uploaded twice gets " (2)", " (3)" ... after its stem."""
    seen, ids = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            ids.append(name)
        else:
            stem, suffix = os.path.splitext(name)
            ids.append(f"{stem} ({seen[name]}){suffix}")
    return ids


# ----------------------------------------------------------------------------------------------
# The pass

def explain_uploads(model: torch.nn.Module, checkpoint: dict, uploads: Sequence[tuple[str, bytes]],
                    batch_size: int = 16, max_bytes: int = MAX_UPLOAD_BYTES,
                    max_pixels: int = MAX_PIXELS) -> list[ExplainedUpload]:
    """Verdict, P(fake), confidence band and Grad-CAM maps (both targets) for each
    (file name, bytes), in order. Bad files get `error` and the rest still go through.

    The model input is made exactly as predict makes it (the run's Preprocessing: decoded as the
    run was trained, a large JPEG at reduced size for a "draft" run; resized with PIL to its
    img_size, the same uint8 -> normalised steps), so P(fake) is predict's P(fake) for the same
    file in fp32 (the maps are computed in fp32, whatever the run trained in). One forward and
    one backward pass per batch of `batch_size` images; only a batch is decoded at a time. The
    same pass's backbone features give each image's OOD score (checkpoint["ood"], as load_run
    reads it; ood.py), and its header's size the size check: see with_trust.
    """
    prep = Preprocessing.from_checkpoint(checkpoint)
    threshold = decision_threshold(checkpoint)
    to_pixels = uint8_transform(prep.img_size)
    target_size = prep.decode_size
    device = next(model.parameters()).device
    ids = unique_ids([name for name, _ in uploads])
    results = []
    for start in range(0, len(uploads), batch_size):
        batch, pixels = [], []
        for k, (name, data) in enumerate(uploads[start:start + batch_size]):
            result = decode_upload(name, data, max_bytes, max_pixels)
            result.image_id = ids[start + k]
            if result.ok:  # the model's input as predict decodes it, then only a bounded copy kept
                pixels.append(to_pixels(model_image(result.image, data, target_size)))
                result.image = shrunk(result.image, KEEP_MAX_SIDE)
                result.preview = shrunk(result.image, PREVIEW_MAX_SIDE)
                result.preview_png = png_bytes(result.preview)
            batch.append(result)
        good = [r for r in batch if r.ok]
        if good:
            with CapturedFeatures(model) as captured:  # the OOD score's features, same pass
                maps, logits = raw_grad_cam_both(
                    model, normalize_batch(torch.stack(pixels), prep.mean, prep.std, device))
            trust = assess(checkpoint.get("ood"), captured.pop(),
                           [r.original_size for r in good])
            maps = {t: m.float().cpu().numpy() for t, m in maps.items()}
            logits = logits.float().cpu()
            probabilities = torch.sigmoid(logits).numpy()
            for k, result in enumerate(good):
                result.logit, result.probability = float(logits[k]), float(probabilities[k])
                result.threshold = threshold
                result.verdict = verdict_of(result.probability, threshold)
                result.band = confidence_band(result.probability, threshold)
                result.raw_cams = {t: maps[t][k] for t in TARGETS}
                with_trust(result, trust[k])
        results += batch
    return results


def with_trust(result: ExplainedUpload, trust: Assessment) -> ExplainedUpload:
    """The result with how far its image is from the training data; a flagged one's band is
    NOT_LIKE_TRAINING, never "confident"."""
    result.ood_score, result.ood_percentile = trust.score, trust.percentile
    result.unlike_training, result.size_note = trust.unlike_training, trust.size_note
    result.trust_note = trust.note
    if trust.unlike_training:
        result.band = NOT_LIKE_TRAINING
    return result


def model_image(image: Image.Image, data: bytes, target_size: int | None) -> Image.Image:
    """The picture the model sees: `image` (the full decode, kept for display) itself, or, for a
    run that decodes large JPEGs at reduced size, that reduced decode of the same bytes (the
    first decode already vetted them: size, pixel limit, format)."""
    if target_size is None or min(image.size) < 2 * target_size:
        return image  # no reduced decode below twice the target: the image is that decode
    reduced, _ = try_decode_image(data, target_size)
    return reduced if reduced is not None else image


# ----------------------------------------------------------------------------------------------
# Pictures and downloads

def overlay_image(result: ExplainedUpload, target: str | None = None, opacity: float = 0.5,
                  preview: bool = False) -> np.ndarray:
    """The Grad-CAM overlay (uint8 RGB) for `target` ("fake" or "real"; default the verdict),
    the heat map blended in at `opacity` (0: the image alone, 1: the map alone), at the kept
    image's size or, with preview, at the preview's."""
    target = target or result.verdict
    if target not in TARGETS:
        raise ValueError(f"Grad-CAM target must be one of {TARGETS}, not {target!r}.")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must lie in [0, 1], not {opacity}.")
    image = result.preview if preview else result.image
    cam = scale_cams(result.raw_cams[target][None], (image.height, image.width))[0]
    return overlay(image, cam, image_weight=1 - opacity)


def png_bytes(array_or_image) -> bytes:
    """Lossless, and quick: zlib level 1 writes a 1 MP overlay several times faster than PIL's
    default level 6, for a file about a fifth larger."""
    image = array_or_image if isinstance(array_or_image, Image.Image) \
        else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def interactive_cpu_threads() -> int:
    """Threads for the model in an interactive server on the CPU: half the cores, at least one.

    One image at a time gains little from many threads, and the server shares the machine with
    the browser and whatever else runs: an OpenMP thread that waits for a busy core stalls the
    whole pass. Measured on this project's 2-core machine while other processes kept it busy:
    one forward pass of one 224 px image took 1.6-2.0 s with 2 threads, 0.17 s with 1
    (benchmarks/README.md, app). OMP_NUM_THREADS, when set, wins (the caller checks)."""
    return max(1, (os.cpu_count() or 1) // 2)


def overlay_png(result: ExplainedUpload, target: str | None = None, opacity: float = 0.5) -> bytes:
    """The overlay as a PNG file's bytes (at most KEEP_MAX_SIDE pixels a side)."""
    return png_bytes(overlay_image(result, target, opacity))


def overlay_file_name(result: ExplainedUpload, target: str | None = None) -> str:
    return f"{Path(result.image_id).stem}__gradcam_{target or result.verdict}.png"


def prediction_row(result: ExplainedUpload) -> dict:
    """The {image_id, prediction} row predict writes for this image."""
    return {"image_id": result.image_id, "prediction": result.probability}


def prediction_row_json(result: ExplainedUpload) -> str:
    """The JSON predict prints for this one image: `[{"image_id": ..., "prediction": ...}]`."""
    buffer = io.StringIO()
    write_prediction_rows([prediction_row(result)], buffer, "json")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# The model card

def metric_rows(metrics: dict | None) -> list[dict]:
    """(metric, value, 95% CI) rows of the val metrics the card shows."""
    if not isinstance(metrics, dict) or "unreadable" in metrics:
        return []
    ci = metrics.get("ci") or {}
    rows = [("Images", metrics.get("n_images"), None),
            (f"Accuracy at {metrics.get('threshold', 0.5):g}", metrics.get("accuracy"),
             ci.get("accuracy"))]
    if metrics.get("val_threshold") is not None:
        rows.append((f"Accuracy at the val threshold {metrics['val_threshold']:.3f}",
                     metrics.get("accuracy_at_val_threshold"), None))
    rows += [("ROC-AUC", metrics.get("roc_auc"), ci.get("roc_auc")),
             ("Average precision", metrics.get("average_precision"),
              ci.get("average_precision")),
             ("Balanced accuracy", metrics.get("balanced_accuracy"), None)]
    return [{"metric": m, "value": v, "95% CI": c} for m, v, c in rows if v is not None]


def model_card(run_dir: str | os.PathLike, checkpoint: dict) -> dict:
    """What the run says about itself, for the sidebar: weights (and whether random init), the
    synthetic-data record, training data counts, val metrics with 95% CIs, the verdict's
    threshold, image size, date, cross-dataset rows."""
    from .demo_data import synthetic_origin
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, required=False) or {}  # checked: a bad field is named
    weights = checkpoint.get("weights") or config.get("weights_record") or {}
    synthetic = config.get("synthetic_data")
    if "synthetic_data" not in config and config.get("data_dir"):  # runs from before the record
        synthetic = synthetic_origin(config["data_dir"])
    trained_at = config.get("trained_at")
    if not trained_at and (run_dir / CHECKPOINT).is_file():
        trained_at = datetime.fromtimestamp((run_dir / CHECKPOINT).stat().st_mtime,
                                            timezone.utc).isoformat(timespec="seconds")
    has_val_threshold = checkpoint.get("val_threshold") is not None
    cross = load_json(run_dir / CROSS_DATASET_JSON)
    return {
        "run_dir": str(run_dir),
        "weights": weights,
        "random_init": weights.get("pretrained") is False,
        "synthetic": synthetic,
        "data_dir": config.get("data_dir"),
        "data_counts": load_json(run_dir / DATA_COUNTS_JSON),
        "val_metrics": metric_rows(load_json(run_dir / METRICS_VAL_JSON)),
        "threshold": decision_threshold(checkpoint),
        "threshold_source": ("chosen on the validation split (maximum balanced accuracy)"
                             if has_val_threshold else
                             "0.5: this run has no threshold chosen on val"),
        "img_size": checkpoint.get("img_size"),
        # a video's verdict (mean P(fake) over its frames): chosen on the validation videos, None
        # for a run whose split was not made of videos (video_metrics.py)
        "video_threshold": checkpoint.get("video_threshold"),
        "trained_at": trained_at,
        "best_epoch": checkpoint.get("best_epoch"),
        "cross_dataset": cross if isinstance(cross, list) else [],
        # how an image's distance from the training data is judged, in one line (ood.py)
        "ood": checkpoint["ood"].describe() if checkpoint.get("ood") is not None else
        f"No OOD score: {NO_STATISTICS}.",
    }
