"""Video-level results: when a split's groups are videos (the `frames` command's output, split
with `--group-by folder`), a video's score is the mean P(fake) over its frames, as DeepfakeBench
reports, and the metrics and the report lead with these numbers; the frame-level ones follow.

    video_ids(data_dir, items)       the video of each item, or None when the groups are no videos
    video_scores(labels, p, videos)  one (label, mean P(fake), frames) per video
    video_level(...)                 the "video" block of a metrics JSON (compute_metrics on videos)
    with_video_level(metrics, ...)   a metrics dict with that block first
    video_threshold(checkpoint)      the threshold for video verdicts, chosen on validation videos
    write_video_predictions(...)     one row per video: predictions_videos[_val].csv
    report_lines / summary_lines     the block for report.md and for the terminal

No torch here; metrics.py (scikit-learn) is imported only where numbers are computed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .frames_manifest import read_frames_json

AGGREGATION = "mean P(fake) over a video's frames (as DeepfakeBench)"
COUNTS_NOTE = ("each video counts once (its frames' mean P(fake)); n_images, n_real and n_fake "
               "count videos here")


# ----------------------------------------------------------------------------- which splits



def frames_record(folder) -> dict | None:
    """{"frames_dir", "settings"}: how the `frames` command made the frames in `folder` (the
    settings of its frames.json, as frames_manifest.FrameSettings.as_dict() wrote them), or None
    when `folder` was not made by `frames`."""
    record = read_frames_json(folder)
    if record is None or not isinstance(record.get("settings"), dict):
        return None
    return {"frames_dir": str(folder), "settings": record["settings"]}


def split_raw_dir(data_dir) -> Path | None:
    """The raw folder a split was made from (split.json's settings), None for a hand-made one."""
    try:
        settings = json.loads((Path(data_dir) / "split.json").read_text(encoding="utf-8"))
        return Path(settings["settings"]["raw_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def split_frames_record(data_dir) -> dict | None:
    """How the frames of a split made from the `frames` command's output were made (frames_record
    of its raw folder); None for any other split or folder."""
    raw = split_raw_dir(data_dir)
    return frames_record(raw) if raw is not None else frames_record(data_dir)


def video_ids(data_dir, items) -> list[str] | None:
    """The video each (path, label) item's frame comes from, when the split's groups are videos:
    made by `split --group-by folder` from a folder the `frames` command wrote (OUT/{real,fake}/
    <video id>/<frame>.png). None otherwise (the group-level metrics then stay as they are)."""
    from .split_read import split_groups
    data_dir = Path(data_dir)
    try:
        settings = json.loads((data_dir / "split.json").read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(settings, dict) or settings.get("group_by") != "folder" \
            or split_frames_record(data_dir) is None:
        return None
    return split_groups(data_dir, items)


# ----------------------------------------------------------------------------- the numbers

def video_scores(labels, p_fake, videos) -> dict:
    """{"video": ids, "label": 0/1, "p_fake": mean P(fake), "frames": count} per video, in sorted
    order of the ids; a video whose frames carry both labels is left out (counted in "mixed")."""
    labels, p_fake = np.asarray(labels).astype(int), np.asarray(p_fake, dtype=float)
    ids = np.asarray(videos).astype(str)
    if not labels.size == p_fake.size == ids.size:
        raise ValueError(f"{labels.size} labels, {p_fake.size} scores and {ids.size} video ids: "
                         "each frame needs all three")
    names, video_of = np.unique(ids, return_inverse=True)
    frames = np.bincount(video_of, minlength=names.size)
    fakes = np.bincount(video_of, weights=labels, minlength=names.size)
    mean_p = np.bincount(video_of, weights=p_fake, minlength=names.size) / frames
    mixed = (fakes > 0) & (fakes < frames)
    return {"video": names[~mixed].tolist(), "label": (fakes[~mixed] > 0).astype(int),
            "p_fake": mean_p[~mixed], "frames": frames[~mixed], "mixed": int(mixed.sum())}


def video_level(labels, p_fake, videos, val_threshold: float | None = None,
                choose: bool = False, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The "video" block: compute_metrics on one score per video (mean P(fake)), at 0.5 and at
    the video threshold (its val_threshold). On the validation split (`choose`) that threshold is
    chosen here, on the validation videos; elsewhere pass the run's (video_threshold(checkpoint)),
    None for a run that has none (then only 0.5)."""
    from .metrics import choose_threshold, compute_metrics, has_both_classes
    scores = video_scores(labels, p_fake, videos)
    if not scores["video"]:
        return {"n_videos": 0, "aggregation": AGGREGATION,
                "notes": ["no video with a single label: video-level metrics undefined"]}
    if choose:
        val_threshold = choose_threshold(scores["label"], scores["p_fake"]) \
            if has_both_classes(scores["label"]) else 0.5
    block = compute_metrics(scores["label"], scores["p_fake"], threshold=0.5,
                            val_threshold=val_threshold, n_bootstrap=n_bootstrap, seed=seed)
    frames = scores["frames"]
    block = {"n_videos": len(scores["video"]), "aggregation": AGGREGATION,
             "frames_per_video": {"min": int(frames.min()), "median": float(np.median(frames)),
                                  "max": int(frames.max())}, **block}
    if val_threshold is None:
        block["notes"].append("the run has no video threshold (its validation split was not "
                              "made of videos): accuracy at 0.5 only")
    if scores["mixed"]:
        block["notes"].append(f"{scores['mixed']} video(s) hold frames of both labels and were "
                              "left out")
    block["notes"].append(COUNTS_NOTE)
    return block


def with_video_level(metrics: dict, data_dir, items, labels, p_fake,
                     val_threshold: float | None = None, choose: bool = False,
                     n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """`metrics` with the "video" block first, when the split's groups are videos (video_ids);
    else `metrics` unchanged. The frame-level numbers stay where they were, after it. `choose`:
    this is the validation split, where the video threshold is chosen (video_level)."""
    videos = video_ids(data_dir, items)
    if videos is None:
        return metrics
    return {"video": video_level(labels, p_fake, videos, val_threshold, choose, n_bootstrap,
                                 seed), **metrics}


def video_rows(labels, p_fake, videos, threshold: float = 0.5) -> list[dict]:
    """One row per video for a predictions file: video, label, P(fake) (the mean), frames,
    predicted_label at `threshold`."""
    scores = video_scores(labels, p_fake, videos)
    return [{"video": v, "label": int(y), "prediction": float(p), "frames": int(n),
             "predicted_label": "fake" if p >= threshold else "real"}
            for v, y, p, n in zip(scores["video"], scores["label"], scores["p_fake"],
                                  scores["frames"])]


def write_rows(rows: list[dict], path) -> None:
    """Video or frame rows as `path`'s suffix says (.csv or .json), written whole or not at all;
    an empty value (no face, no verdict) is an empty CSV cell, null in JSON."""
    import csv
    import json
    from .predictions import atomic_text_file
    from .tables import plain_value, table_columns
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{path}: rows go to a .csv or .json file; choose another name")
    with atomic_text_file(path) as f:
        if path.suffix.lower() == ".json":
            f.write(json.dumps([plain_value(row) for row in rows], indent=2, allow_nan=False)
                    + "\n")
            return
        writer = csv.DictWriter(f, fieldnames=table_columns(rows) or ["video_id"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


# One row per video, beside the frames' predictions: evaluate's, and a run's validation videos'
VIDEO_PREDICTIONS_CSV = "predictions_videos.csv"
VIDEO_PREDICTIONS_VAL_CSV = "predictions_videos_val.csv"


def write_video_predictions(path, data_dir, items, labels, p_fake, metrics: dict) -> bool:
    """One row per video into `path` (video_rows: video, label, mean P(fake), frames, verdict
    at the video threshold) when `metrics` has a video block; whether it wrote."""
    video = metrics.get("video") or {}
    videos = video_ids(data_dir, items) if video.get("n_videos") else None
    if videos is None:
        return False
    threshold = video.get("val_threshold")
    write_rows(video_rows(labels, p_fake, videos, 0.5 if threshold is None else threshold), path)
    return True


def video_threshold(checkpoint: dict) -> float | None:
    """The threshold for video verdicts (mean P(fake) >= it is fake): the one chosen on the
    run's validation videos, or None for a run trained on frames that were not videos."""
    value = checkpoint.get("video_threshold")
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- for people

def report_lines(metrics: dict) -> list[str]:
    """The video-level part of a split's section of report.md (empty without a "video" block):
    a short table of video ROC-AUC and accuracy, then the frame level is announced."""
    from .tables import markdown_table, metrics_table_rows
    video = metrics.get("video")
    if not isinstance(video, dict) or not video.get("n_videos"):
        return []
    rows = [dict(row, metric=row["metric"].replace("Images", "Videos"))
            for row in metrics_table_rows(video)]
    spread = video.get("frames_per_video") or {}
    frames = f"{spread.get('min')}" if spread.get("min") == spread.get("max") else \
        f"{spread.get('min')}-{spread.get('max')}"
    notes = [f"- {note}" for note in video.get("notes") or [] if note != COUNTS_NOTE]
    return ["#### Video level", "",
            f"{video['n_videos']} videos ({video.get('n_real')} real, {video.get('n_fake')} fake), "
            f"{frames} frames each; a video's score is the "
            f"{AGGREGATION}. The video threshold was chosen on the validation videos.", "",
            markdown_table(rows), ""] + (["Notes:", ""] + notes + [""] if notes else []) + \
        ["#### Frame level", ""]


def summary_lines(metrics: dict) -> list[str]:
    """Two lines for the terminal that lead a split's summary: video ROC-AUC and accuracy."""
    video = metrics.get("video")
    if not isinstance(video, dict) or not video.get("n_videos"):
        return []
    line = (f"  videos     {video['n_videos']} ({video.get('n_real')} real, {video.get('n_fake')} "
            f"fake): ROC-AUC {rounded(video.get('roc_auc'))}, accuracy "
            f"{rounded(video.get('accuracy'))} at 0.5")
    if video.get("val_threshold") is not None:
        line += (f", {rounded(video.get('accuracy_at_val_threshold'))} at the video threshold "
                 f"{video['val_threshold']:.3f}")
    return [line, "  frames (each frame counted, below):"]


def rounded(value, digits: int = 3) -> str:
    """As terminal.rounded (which imports this module): "undefined" for None."""
    return "undefined" if value is None else f"{value:.{digits}f}"
