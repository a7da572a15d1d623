"""Does the detector still work off its own validation split? Robustness and cross-dataset tables.

A detector can look perfect on images from the generator and pipeline it was trained on and
collapse under one JPEG re-save, or on another generator. Two questions, two tables:

    robustness_table   the same images, perturbed the way images are on their way through the web
                       (JPEG re-compression, down-scaling, blur): run_dir/robustness.json,
                       tables/robustness.{md,csv,tex}, figures/robustness.{png,pdf}
    cross_dataset_row  another folder of real/ and fake/ images, one row per test set:
                       run_dir/cross_dataset.json, tables/cross_dataset.{md,csv,tex}

Perturbations act on the decoded image at its own resolution, before the model's resize to
img_size, as they would on the file in the wild. All of them are deterministic.
"""
from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms
from .progress import tqdm

from .data import make_loader, normalize_batch, uint8_transform
from .metrics import compute_metrics
from .plots import AUC_COLOUR, FAKE_COLOUR, MUTED
from .report import write_report
from .tables import write_table
from .features import head_in_fp32, inference_pass
from .figures import paper_style, plt, save_figure
from .inference import evaluate_run
from .images import regular_file_problem
from .files import sha256_of_file
from .folder_lock import locks_folders
from .preprocessing import Preprocessing
from .manifest import recording
from .run_dir import CROSS_DATASET_JSON, load_run, read_run_config
from .split_read import list_labelled_folder, list_split, read_split_manifest
from .terminal import rounded

# ----------------------------------------------------------------------------- perturbations


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """The image as a JPEG file at `quality`, with Pillow's defaults otherwise (the IJG tables
    scaled by quality, 4:2:0 chroma subsampling): how most web pipelines re-save an image."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode in memory and decode again: the compression artefacts are what remains."""
    with Image.open(io.BytesIO(jpeg_bytes(image, quality)), formats=("JPEG",)) as decoded:
        return decoded.convert("RGB")


def downscale(image: Image.Image, factor: float) -> Image.Image:
    """Resize by `factor`. Pillow's resize widens its kernel when shrinking, so this low-passes
    before subsampling (antialiased) rather than dropping pixels. The model's own Resize brings
    the image back to img_size afterwards: what is lost is the detail, which is the point."""
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation `sigma` pixels. Pillow's GaussianBlur `radius` IS the
    standard deviation (its docs say so, and a step edge blurred with radius 1 measures
    sigma = 0.99 px); it is computed with extended box filters, a close approximation."""
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def identity(image: Image.Image) -> Image.Image:
    return image


# Ordered: the table and the figure show them in this order, "clean" first as the reference.
# functools.partial of module-level functions, so DataLoader workers can pickle them.
PERTURBATIONS = {
    "clean": identity,
    "jpeg_q95": partial(jpeg, quality=95),
    "jpeg_q75": partial(jpeg, quality=75),
    "jpeg_q50": partial(jpeg, quality=50),
    "downscale_0.5": partial(downscale, factor=0.5),
    "blur_sigma1": partial(gaussian_blur, sigma=1.0),
}

LABELS = {"clean": "clean", "jpeg_q95": "JPEG q95", "jpeg_q75": "JPEG q75", "jpeg_q50": "JPEG q50",
          "downscale_0.5": "down-scale ×0.5", "blur_sigma1": "blur σ=1"}


# ----------------------------------------------------------------------------- prediction


def labelled_items(data_dir, split: str = "val") -> tuple[list[tuple[Path, int]], str]:
    """(items, split used) of a split folder (data_dir/split), or of any folder holding real/ and
    fake/ (split "all"): the same rule as inference.evaluate_run, so both score the same images."""
    data_dir = Path(data_dir)
    if (data_dir / "split.csv").is_file() or (data_dir / split).is_dir():
        return list_split(data_dir, split), split
    return list_labelled_folder(data_dir), "all"


def predict_perturbed(model, items, perturbation, prep: Preprocessing, batch_size: int = 64,
                      num_workers: int | None = None, desc: str = "predict") -> np.ndarray:
    """P(fake) per (path, label), each image perturbed before the model's resize.

    The pass of inference.stream_probabilities with the perturbation in front: workers decode
    (as prep.decode says), perturb and resize to uint8 with PIL (prep.resize does not apply: the
    perturbation needs the picture), this process normalises each batch; the model computes in
    prep.precision. The test suite checks that "clean" reproduces evaluate_run's numbers
    exactly."""
    device = next(model.parameters()).device
    transform = transforms.Compose([perturbation, uint8_transform(prep.img_size)])
    loader = make_loader(items, transform, batch_size, num_workers=num_workers, device=device,
                         decode_size=prep.decode_size)
    probabilities = np.empty(len(items), dtype=np.float64)
    with inference_pass(model, device, prep.precision):
        for images, _, indices in tqdm(loader, desc=desc, unit="batch", leave=False):
            x = normalize_batch(images, prep.mean, prep.std, device)
            logits = model(x).float() if prep.precision == "fp32" else head_in_fp32(model, x)
            probabilities[indices.numpy()] = torch.sigmoid(logits).squeeze(1).cpu().numpy()
    return probabilities


# ----------------------------------------------------------------------------- robustness


def robustness_row(name: str, labels, probabilities, checkpoint: dict, n_bootstrap: int) -> dict:
    metrics = compute_metrics(labels, probabilities, threshold=checkpoint.get("threshold", 0.5),
                              val_threshold=checkpoint.get("val_threshold"), n_bootstrap=n_bootstrap)
    ci = metrics["ci"]
    return {"perturbation": name, "n_images": metrics["n_images"],
            "accuracy": metrics["accuracy"], "accuracy 95% CI": ci["accuracy"],
            "accuracy_at_val_threshold": metrics["accuracy_at_val_threshold"],
            "roc_auc": metrics["roc_auc"], "roc_auc 95% CI": ci["roc_auc"],
            "average_precision": metrics["average_precision"], "eer": metrics["eer"],
            "balanced_accuracy": metrics["balanced_accuracy"], "ece": metrics["ece"]}


@locks_folders(lambda a: (a["run_dir"],))  # one writer per run (folder_lock.py)
def robustness_table(run_dir, data_dir, split: str = "val", perturbations: dict | None = None,
                     n_bootstrap: int = 200, batch_size: int = 64, device: str = "auto",
                     num_workers: int | None = None, log=print) -> list[dict]:
    """Metrics of a run on data_dir/split under each perturbation; one row each, "clean" first.

    Accuracy is at the checkpoint's threshold (0.5) and, beside it, at the threshold chosen on
    the validation split. Writes robustness.json, tables/robustness.* and figures/robustness.*
    into run_dir and refreshes its report."""
    run_dir = Path(run_dir)
    perturbations = PERTURBATIONS if perturbations is None else perturbations
    model, checkpoint = load_run(run_dir, device)
    # As this table has always been made: perturbations act on the file at its own resolution
    # (every pixel decoded), and the model computes in fp32, whatever the run trained with. For a
    # "draft" or mixed-precision run the clean row can therefore differ from evaluate_run's.
    prep = replace(Preprocessing.from_checkpoint(checkpoint), decode="full", precision="fp32")
    items, split = labelled_items(data_dir, split)
    labels = np.array([y for _, y in items])
    test_set = data_name(data_dir) if split == "all" else f"{data_name(data_dir)}/{split}"
    rows = []
    for name, perturbation in perturbations.items():
        probabilities = predict_perturbed(model, items, perturbation, prep, batch_size, num_workers,
                                          desc=name)
        rows.append({"test set": test_set,
                     **robustness_row(name, labels, probabilities, checkpoint, n_bootstrap)})
        log(f"{name:>14}: accuracy {rounded(rows[-1]['accuracy'])}, "
            f"ROC-AUC {rounded(rows[-1]['roc_auc'])}")
    caveat = (" The validation split also chose the early-stopping epoch and the threshold: "
              "prefer a test split for a paper." if split == "val" else "")
    with recording(run_dir):  # into the run's manifest: replacing the run may delete these
        write_rows(run_dir, "robustness", rows,
                   f"Robustness on {test_set} ({len(items)} images): the same images perturbed "
                   "before the model's resize. Accuracy at threshold 0.5 and at the "
                   "validation-chosen threshold; 95% stratified bootstrap CIs "
                   f"({n_bootstrap} replicates).{caveat}")
        fig = plot_robustness(rows, title=f"Robustness on {test_set}")
        save_figure(fig, run_dir / "figures" / "robustness")
        plt.close(fig)
        write_report(run_dir)
    return rows


@paper_style
def plot_robustness(rows: list[dict], title: str = ""):
    """Grouped bars of ROC-AUC and accuracy per perturbation, 95% CIs as error bars, chance at 0.5."""
    names = [LABELS.get(row["perturbation"], row["perturbation"]) for row in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(rows) + 1.5), 3.2))
    for offset, key, label, colour in ((-width / 2, "roc_auc", "ROC-AUC", AUC_COLOUR),
                                       (width / 2, "accuracy", "accuracy (t = 0.5)", FAKE_COLOUR)):
        values = np.array([row[key] if row[key] is not None else np.nan for row in rows])
        cis = [row.get(f"{key} 95% CI") for row in rows]
        errors = np.array([[v - ci[0], ci[1] - v] if ci else [0, 0] for v, ci in zip(values, cis)]).T
        ax.bar(x + offset, values, width, yerr=errors, capsize=2, color=colour, label=label,
               error_kw={"lw": 0.8})
        for xi, value, error in zip(x + offset, values, errors[1]):
            if np.isfinite(value):  # the number above its whisker: readable without the table
                ax.text(xi, value + error + 0.01, f"{value:.2f}", ha="center", va="bottom",
                        fontsize=7)
    ax.axhline(0.5, color=MUTED, lw=0.8, ls="--", label="chance")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("Score")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- cross-dataset


def file_hashes(paths) -> set[str]:
    """SHA-256 of each regular file, read in blocks (special files are skipped, never read)."""
    return {sha256_of_file(path) for path in paths if regular_file_problem(path) is None}


def seen_in_training(run_dir: Path, items) -> tuple[str | None, int | None]:
    """(the run's training data folder, how many of `items` are byte-identical to one of its
    training images); the count is None when the training data are gone and cannot be checked."""
    train_dir = (read_run_config(run_dir, required=False) or {}).get("data_dir")
    if not train_dir:
        return None, None
    try:
        if (Path(train_dir) / "split.csv").is_file():  # the split recorded every file's hash
            seen = {row["sha256"] for row in read_split_manifest(train_dir) if row["split"] == "train"}
        else:
            seen = file_hashes(path for path, _ in list_split(train_dir, "train"))
    except (OSError, ValueError):
        return train_dir, None
    return train_dir, len(file_hashes(path for path, _ in items) & seen)


@locks_folders(lambda a: (a["run_dir"],))  # one writer per run (folder_lock.py)
def cross_dataset_row(run_dir, data_dir, name: str | None = None, split: str | None = None,
                      train_name: str | None = None, batch_size: int = 64, device: str = "auto",
                      num_workers: int | None = None, n_bootstrap: int = 1000, log=print) -> dict:
    """Evaluate a run on another data set and put it in the run's cross-dataset table.

    data_dir is any folder with real/ and fake/ (all its images are used), or a split folder
    (then `split`, default "test" when it has one, else "val"). The row is stored under `name`
    (default: the folder's name, plus the split): evaluating the same test set again replaces
    its row; `train_name` labels the training set (default: its folder). n_seen_in_training
    counts test images byte-identical to a training image: anything but 0 means the test set
    is not independent of the training data."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    if split is None:  # another data set's test split if it has one: it was held out of everything
        split = "test" if _has_split(data_dir, "test") else "val"
    items, split = labelled_items(data_dir, split)
    name = name or (data_name(data_dir) if split == "all" else f"{data_name(data_dir)}/{split}")
    # Always our own folder: evaluate_run would file a "test" split as the run's own test result.
    out = run_dir / "eval" / ("cross-" + re.sub(r"[^\w.-]", "-", name))
    metrics = evaluate_run(run_dir, data_dir, "val" if split == "all" else split, out, batch_size,
                           device, num_workers, n_bootstrap, log=log)
    train_dir, n_seen = seen_in_training(run_dir, items)
    if n_seen:
        warnings.warn(f"{n_seen} of the {len(items)} images in {data_dir} are byte-identical to "
                      f"training images of {run_dir}: this is not an independent test set.",
                      stacklevel=2)
    row = {"train set": train_name or data_name(train_dir), "test set": name,
           "n_images": metrics["n_images"], "roc_auc": metrics["roc_auc"],
           "roc_auc 95% CI": metrics["ci"]["roc_auc"],
           "average_precision": metrics["average_precision"], "accuracy": metrics["accuracy"],
           "accuracy_at_val_threshold": metrics["accuracy_at_val_threshold"],
           "eer": metrics["eer"], "n_seen_in_training": n_seen}
    path = run_dir / CROSS_DATASET_JSON
    rows = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in rows if r.get("test set") != name] + [row]
    with recording(run_dir):
        write_rows(run_dir, "cross_dataset", rows,
                   "Cross-dataset evaluation: the run tested on data sets it was not trained on. "
                   "Accuracy at threshold 0.5 and at the validation-chosen threshold; ROC-AUC with "
                   "95% stratified bootstrap CI; n_seen_in_training: test images byte-identical "
                   "to a training image (0 for an independent test set).")
        write_report(run_dir)
    return row


def data_name(path) -> str | None:
    """A short, telling name for a data folder: "cifake/data" rather than just "data"."""
    if not path:
        return None
    parts = Path(path).resolve().parts
    return "/".join(parts[-2:]) if Path(path).name in ("data", "dataset", "val", "test") else parts[-1]


def _has_split(data_dir: Path, split: str) -> bool:
    if (data_dir / "split.csv").is_file():
        return any(row["split"] == split for row in read_split_manifest(data_dir))
    return (data_dir / split).is_dir()


def write_rows(run_dir: Path, stem: str, rows: list[dict], caption: str) -> None:
    """run_dir/<stem>.json (what write_report renders) and tables/<stem>.{md,csv,tex}."""
    (run_dir / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    write_table(rows, run_dir / "tables" / stem, caption=caption)

