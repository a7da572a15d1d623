"""What a Grad-CAM call over many images writes, apart from computing the maps (gradcam.py):

    overlays/{tp,tn,fp,fn}/NAME__p0.973.png   one per image, names made unique, at its own size
    overlays_upscaled/{tp,...}/NAME__p0.973.png  images under 128 px only: the same overlay
                                               enlarged with nearest-neighbour, for viewing
    raw_cams.npy, index.csv                    the maps before scaling, and one row per image
    contact_sheet.png/.pdf                     the most confident examples per outcome (a heap)
    summary.json, faithfulness.json            counts, paths, skipped files, localisation scores

`CamFiles` keeps that state for one call, resumes an interrupted call with the same images and
settings, and writes whole batches only; explain.py runs the loop that fills it.
"""
from __future__ import annotations

import csv
import heapq
import json
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from . import CLASS_NAMES
from .data import open_image
from .figures import paper_style
from .files import atomic_write, write_json
from .gradcam import (OUTCOMES, OVERLAY_MAX_SIDE, UNLABELLED_OUTCOMES, heatmap, load_mask,
                      localisation_scores, outcome_of, overlay, scale_cams)

UPSCALED_DIR = "overlays_upscaled"  # the overlays of small images, enlarged for viewing
SMALL_SIDE, UPSCALED_SIDE = 128, 256  # under SMALL_SIDE px on the long side: enlarged to ~256


class CamFiles:
    """The files of one explain_images call in out_dir, and the rows, maps and examples behind
    them. A new call with the same `fingerprint` after an interrupted one carries on from it."""

    def __init__(self, out_dir: Path, fingerprint: str, img_size: int, target_name: str,
                 sheet_paths: Sequence | None, per_outcome: int, precision: str = "fp32"):
        self.out_dir, self.fingerprint, self.precision = out_dir, fingerprint, precision
        self.img_size, self.target_name, self.per_outcome = img_size, target_name, per_outcome
        self.sheet_paths = {Path(p) for p in sheet_paths} if sheet_paths else None
        self.rows, self.raw_cams, self.skipped, self.n_done = resume(out_dir, fingerprint)
        self.used_names = {(r["outcome"], Path(r["overlay"]).stem) for r in self.rows}
        self.best = {}  # outcome -> heap of the most confident examples (min-heap on confidence)
        for row, raw_cam in zip(self.rows, self.raw_cams):
            add_to_sheet(self.best, row, raw_cam, self.sheet_paths, per_outcome)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.commit()

    def commit(self) -> None:
        """What a re-run may take as done: whole batches only."""
        self.committed = (self.n_done, len(self.skipped), len(self.rows))

    def roll_back(self) -> None:
        """Back to the last committed batch (an interrupted call); a re-run carries on there."""
        n_done, n_skipped, n_rows = self.committed
        self.n_done, self.skipped = n_done, self.skipped[:n_skipped]
        self.rows[:], self.raw_cams[:] = self.rows[:n_rows], self.raw_cams[:n_rows]

    def add(self, path: Path, label, probability: float, logit: float, target: str,
            raw_cam: np.ndarray, shown: Image.Image, colormap: int, image_weight: float) -> None:
        """One explained image: its overlay on `shown`, its index row, its map, maybe the sheet."""
        outcome = outcome_of(label, predicted_fake=bool(logit > 0))
        # The map straight from layer4's grid to the picture's size: one resize.
        cam = scale_cams(raw_cam[None], (shown.height, shown.width))[0]
        name = unique_name(f"{path.stem}__p{probability:.3f}", self.used_names, outcome)
        overlay_path = self.out_dir / "overlays" / outcome / f"{name}.png"
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        # PIL, not cv2.imwrite: the array is RGB, and PIL writes RGB as it is.
        picture = Image.fromarray(overlay(shown, cam, colormap, image_weight))
        atomic_write(overlay_path, lambda f: picture.save(f, format="PNG"), binary=True)
        upscaled = save_upscaled(picture, self.out_dir / UPSCALED_DIR / outcome / f"{name}.png")
        row = {"index": len(self.rows), "path": str(path), "label": label_name(label),
               "probability": probability, "logit": logit, "target": target, "outcome": outcome,
               "overlay": str(overlay_path), "overlay_upscaled": str(upscaled or "")}
        self.rows.append(row)
        self.raw_cams.append(raw_cam)
        add_to_sheet(self.best, row, raw_cam, self.sheet_paths, self.per_outcome)

    def save(self, complete: bool, extra: dict | None = None) -> dict:
        """index.csv, raw_cams.npy and summary.json, each written whole; returns the summary."""
        out_dir, rows = self.out_dir, self.rows
        summary = {"n_images": len(rows), "img_size": self.img_size, "target": self.target_name,
                   "counts": {o: n for o in OUTCOMES + UNLABELLED_OUTCOMES
                              if (n := sum(r["outcome"] == o for r in rows))},
                   "out_dir": str(out_dir), "overlays": str(out_dir / "overlays"),
                   "raw_cams": str(out_dir / "raw_cams.npy"), "index": str(out_dir / "index.csv"),
                   "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
                   "complete": complete, "n_done": self.n_done, "fingerprint": self.fingerprint,
                   "precision": self.precision, "localisation": None, **(extra or {})}
        if rows:
            atomic_write(out_dir / "raw_cams.npy",
                         lambda f: np.save(f, np.stack(self.raw_cams).astype(np.float32)),
                         binary=True)
            atomic_write(out_dir / "index.csv", lambda f: write_csv_rows(f, rows))
        atomic_write(out_dir / "summary.json",
                     lambda f: f.write(json.dumps(summary, indent=2) + "\n"))
        if complete:
            refresh_run_report(out_dir)
        return summary

    def contact_sheet(self, colormap: int, image_weight: float, mask_of: dict | None = None,
                      flags: Sequence[str] | None = None) -> list[str]:
        """contact_sheet.png/.pdf of the kept examples, most confident first per outcome;
        `mask_of` ({image path: mask path or None}): the masks outlined on their images; `flags`:
        the run's, in the footer (default: figures.save_figure finds them)."""
        from .figures import plt, save_figure
        examples = [e for o in OUTCOMES + UNLABELLED_OUTCOMES
                    for _, _, e in sorted(self.best.get(o, []), reverse=True)]
        masks = {str(p): m for p, m in (mask_of or {}).items()}
        examples = [{**e, "mask": masks.get(str(e["path"]))} for e in examples]
        fig = plot_contact_sheet(examples, colormap, image_weight,
                                 title=f"Grad-CAM (target: {self.target_name})")
        sheet = save_figure(fig, self.out_dir / "contact_sheet",
                            flags=None if flags is None else list(flags))
        plt.close(fig)
        return [str(p) for p in sheet]

    def localisation(self, paths: Sequence[Path], mask_paths: Sequence) -> dict | None:
        """Localisation scores of the maps that explain "fake", on images with a mask (with
        target="predicted": the fakes the model caught), at the model's input size; also written
        to faithfulness.json for the run report. None without masks."""
        mask_of = {str(p): m for p, m in zip(paths, mask_paths)}
        with_mask = [r for r in self.rows if mask_of.get(r["path"]) is not None]
        if not with_mask:
            return None
        size = (self.img_size, self.img_size)
        scored = [r for r in with_mask if r["target"] == "fake"]
        cams = (scale_cams(self.raw_cams[r["index"]][None], size)[0] for r in scored)
        masks = (load_mask(mask_of[r["path"]], size) for r in scored)
        scores = {**localisation_scores(cams, masks), "images_with_mask": len(with_mask)}
        write_json(self.out_dir / "faithfulness.json", scores)
        return scores


def confidence(probability: float) -> float:
    """How sure the model is of the side it chose: P(fake) for "fake", 1 - P(fake) for "real"."""
    return max(probability, 1.0 - probability)


def label_name(label) -> str:
    if label is None or label == -1:
        return "unlabelled"
    return label if isinstance(label, str) else CLASS_NAMES[int(label)]


@paper_style
def plot_contact_sheet(examples: Sequence[dict], colormap: int = cv2.COLORMAP_JET,
                       image_weight: float = 0.5, title: str | None = None):
    """A grid for a paper: one row per outcome, and for each example image | heatmap | overlay,
    with one colour scale for every heat map.

    `examples`: dicts with path, label, probability, outcome, target (the side the map explains),
    either cam (any size) or raw_cam, and optionally mask (a mask file: outlined in white).
    Rows follow OUTCOMES order; within a row, examples as given (pass them most confident first).
    """
    from .figures import plt
    rows = [o for o in OUTCOMES + UNLABELLED_OUTCOMES if any(e["outcome"] == o for e in examples)]
    per_row = max((sum(e["outcome"] == o for e in examples) for o in rows), default=1)
    # constrained layout: each panel's two-line caption gets its own room above its row
    fig, axes = plt.subplots(max(len(rows), 1), 3 * per_row, squeeze=False, layout="constrained",
                             figsize=(3 * per_row * 1.45 + 0.8, max(len(rows), 1) * 1.9 + 0.4))
    for ax in axes.flat:
        ax.axis("off")
    for r, outcome in enumerate(rows):
        for c, example in enumerate(e for e in examples if e["outcome"] == outcome):
            draw_example(axes[r, 3 * c:3 * c + 3], example, colormap, image_weight)
    colorbar = fig.colorbar(colour_scale(colormap), ax=axes, shrink=0.8, aspect=30, pad=0.01)
    colorbar.set_label("Grad-CAM (0 = no evidence, 1 = strongest)", fontsize=7)
    colorbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    return fig


def draw_example(axes, example: dict, colormap: int, image_weight: float) -> None:
    """One example on three axes: the image, its heat map, the overlay (a mask outlined on the
    image and the overlay). Pixels are shown as they are (nearest), never smoothed."""
    image = thumbnail(open_image(example["path"]))
    cam = example["cam"] if "cam" in example else scale_cams(example["raw_cam"][None],
                                                             image.shape[:2])[0]
    cam = cv2.resize(np.float32(cam), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    panels = (image, heatmap(cam, colormap), overlay(image, cam, colormap, image_weight))
    captions = (f"{example['outcome'].upper()}: {label_name(example['label'])}\n"
                f"P(fake) = {example['probability']:.3f}",
                f"Grad-CAM\n({example.get('target', '?')})", Path(example["path"]).name[:22])
    mask = load_mask(example["mask"], image.shape[:2]) if example.get("mask") else None
    for k, (ax, panel, caption) in enumerate(zip(axes, panels, captions)):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
        if mask is not None and mask.any() and k != 1:
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)


def colour_scale(colormap: int = cv2.COLORMAP_JET):
    """A matplotlib ScalarMappable with OpenCV's colour map (its 256 colours, RGB) over [0, 1]:
    the colour bar of the heat maps that gradcam.heatmap draws."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    colours = heatmap(np.linspace(0, 1, 256)[None], colormap)[0] / 255.0
    return ScalarMappable(Normalize(0, 1), ListedColormap(colours))


def save_upscaled(picture: Image.Image, path: Path) -> Path | None:
    """A picture under SMALL_SIDE px also saved enlarged by a whole factor with nearest-neighbour
    (each pixel a block: nothing invented, nothing smoothed), to about UPSCALED_SIDE px, for
    viewing; larger pictures: nothing written, None. The raw maps (raw_cams.npy) are not touched."""
    longest = max(picture.size)
    if longest >= SMALL_SIDE:
        return None
    factor = -(-UPSCALED_SIDE // longest)
    big = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: big.save(f, format="PNG"), binary=True)
    return path


def refresh_run_report(out_dir: Path) -> None:
    """Maps written into a run's gradcam/ folder belong in its report.md (report.py shows
    gradcam/contact_sheet.png and faithfulness.json): rewritten here, under the run's lock. A run
    busy with another command: a warning saying how to rebuild the report later."""
    import warnings
    from .folder_lock import FolderBusyError, folder_lock
    from .report import write_report
    from .run_flags import run_dir_of
    run_dir = run_dir_of(out_dir / "summary.json")
    if out_dir.name != "gradcam" or run_dir is None or run_dir != out_dir.absolute().parent:
        return
    try:
        with folder_lock(run_dir):
            write_report(run_dir)
    except FolderBusyError as error:
        warnings.warn(f"{run_dir / 'report.md'} not refreshed ({error}); once that command is "
                      f"done, rebuild it: report --run {run_dir}", stacklevel=2)


def thumbnail(image, longest_side: int = 320) -> np.ndarray:
    """A paper figure does not need 4000-pixel panels (and its PDF should stay small)."""
    image = image.copy()
    image.thumbnail((longest_side, longest_side))
    return np.asarray(image)


def display_image(image: Image.Image, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """The picture an overlay is drawn on: the image itself, or, when its long side is above
    `max_side`, a copy downscaled to that (on uint8 pixels, before any float work: a 12000 px
    square would otherwise need gigabytes of float overlays)."""
    longest = max(image.size)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR, reducing_gap=3.0)


def resume(out_dir: Path, fingerprint: str) -> tuple[list, list, list, int]:
    """(rows, raw cams, skipped files, number of images done) of an interrupted call with the same
    images and settings into out_dir; nothing to resume: empty lists and 0."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        if summary.get("complete") is not False or summary.get("fingerprint") != fingerprint:
            return [], [], [], 0
        rows = []
        if summary["n_images"]:
            with open(out_dir / "index.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            raw_cams = list(np.load(out_dir / "raw_cams.npy"))
        else:
            raw_cams = []
        for row in rows:
            row.update(index=int(row["index"]), probability=float(row["probability"]),
                       logit=float(row["logit"]))
            row.setdefault("overlay_upscaled", "")  # an index.csv from before that column
        if len(rows) != len(raw_cams) or len(rows) != summary["n_images"] \
                or not all(Path(r["overlay"]).is_file() for r in rows):
            return [], [], [], 0
        skipped = [(s["path"], s["reason"]) for s in summary.get("skipped", [])]
        return rows, raw_cams, skipped, int(summary["n_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], [], [], 0


def add_to_sheet(best: dict, row: dict, raw_cam: np.ndarray, sheet_paths, per_outcome: int) -> None:
    path = Path(row["path"])
    if sheet_paths is None or path in sheet_paths:
        example = {"path": path, "label": None if row["label"] == "unlabelled" else row["label"],
                   "probability": row["probability"], "outcome": row["outcome"],
                   "target": row["target"], "raw_cam": raw_cam}
        keep_most_confident(best.setdefault(row["outcome"], []), example, row["index"],
                            per_outcome if sheet_paths is None else len(sheet_paths))


def unique_name(name: str, used: set, folder: str) -> str:
    """Two files called 'img.png' in different folders must not overwrite each other's overlay."""
    candidate, n = name, 1
    while (folder, candidate) in used:
        n += 1
        candidate = f"{name}__{n}"
    used.add((folder, candidate))
    return candidate


def keep_most_confident(heap: list, example: dict, index: int, k: int) -> None:
    """Keep the k most confident examples seen so far (bounded memory, whatever N is)."""
    item = (confidence(example["probability"]), -index, example)  # earlier image wins a tie
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def write_csv_rows(f, rows: list[dict]) -> None:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
