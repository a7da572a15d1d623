"""Turn labels and P(fake) into honest numbers, figures, tables and a run report.

This module knows nothing about the model or how it was trained: everything here works on two
arrays, `y_true` (0 = real, 1 = fake) and `p_fake` (a probability in [0, 1] per image). Fake is
the positive class, so "precision", "recall", "ROC" and "AP" are all about finding fakes.

Reading order: metrics (threshold, ranking, calibration, bootstrap, groups) -> `compute_metrics`
-> `choose_threshold` -> figures -> tables -> prediction files -> `write_report`.

Conventions, stated once:
- An image is predicted fake when p_fake >= threshold (the same side sklearn's `roc_curve` uses).
- The decision threshold defaults to 0.5. A threshold chosen on the validation split
  (`choose_threshold`) is reported *beside* 0.5, never instead of it, and is never chosen on the
  data being evaluated unless that data is the validation split (the caller decides).
- `compute_metrics` returns plain JSON: no NumPy types, no NaN. A number that is undefined (AUC on
  one class, say) is None, and `notes` says why.

Run-directory layout that `write_report` reads (the training code writes it):
    config.json, history.json, data_counts.json, metrics_val.json, metrics_test.json,
    figures/learning_curves.png                     `plot_history`
    figures/{split}_{name}.png for name in EVALUATION_FIGURES (`save_evaluation_figures` with
        name_prefix=f"{split}_"); any other figures/*.png is shown under "Other figures"
    tables/*.md (+ .csv, .tex siblings)             `write_table`
    robustness.json, cross_dataset.json             lists of row dicts
    gradcam/contact_sheet.png, gradcam/faithfulness.json
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy.stats import rankdata
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             brier_score_loss, classification_report, confusion_matrix, log_loss,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score,
                             roc_curve)

from deepfake_detector import CLASS_NAMES, CLASS_TO_IDX
from deepfake_detector.figures import paper_style, plt, save_figure
from deepfake_detector.manifest import recording

ECE_BINS = 15
CI_LEVEL = 0.95
EVALUATION_FIGURES = ("confusion_matrix", "roc_curve", "pr_curve", "reliability",
                      "probability_histogram")
LEARNING_CURVES_FIGURE = "learning_curves"
RANDOM_INIT_WARNING = "**RANDOM INIT — NOT IMAGENET-PRETRAINED**"

# Okabe-Ito colours: distinguishable by colour-blind readers and in greyscale print.
REAL_COLOUR, FAKE_COLOUR = "#0072B2", "#D55E00"
TRAIN_COLOUR, VAL_COLOUR, AUC_COLOUR = "#0072B2", "#D55E00", "#009E73"
MUTED = "0.45"


# ----------------------------------------------------------------------------- inputs

def _check_inputs(y_true, p_fake) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints (the strings "real"/"fake" are accepted too), P(fake) as floats."""
    y = np.asarray(y_true).ravel()
    p = np.asarray(p_fake, dtype=float).ravel()
    if y.dtype.kind in "UO":
        unknown = set(map(str, y)) - set(CLASS_TO_IDX)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}; use 0/1 or {list(CLASS_TO_IDX)}")
        y = np.array([CLASS_TO_IDX[str(label)] for label in y])
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if y.size == 0:
        raise ValueError("no images to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("p_fake must be probabilities in [0, 1] (logits? apply a sigmoid first)")
    return y.astype(int), p


def _has_both_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < y.size


def predict_fake(p_fake, threshold: float = 0.5) -> np.ndarray:
    """Hard predictions: 1 (fake) where p_fake >= threshold, else 0 (real)."""
    return (np.asarray(p_fake, dtype=float) >= threshold).astype(int)


def _number_or_none(value, name: str, notes: list[str]):
    """Plain float for JSON; a non-finite value becomes None and a note (NaN never leaks out)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        notes.append(f"{name} is undefined on this data (non-finite); reported as None")
        return None
    return value


# ----------------------------------------------------------------------------- threshold metrics

def _per_class(y: np.ndarray, y_pred: np.ndarray, notes: list[str]) -> dict:
    """Precision / recall / F1 / support per class; undefined ones (no image predicted or truly of
    that class) are None with a note, rather than sklearn's silent 0."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=[0, 1], zero_division=np.nan)
    per_class = {}
    for idx, name in enumerate(CLASS_NAMES):
        if math.isnan(precision[idx]):
            notes.append(f"precision for '{name}' is undefined: no image was predicted {name}")
        if math.isnan(recall[idx]):
            notes.append(f"recall for '{name}' is undefined: no image is truly {name}")
        per_class[name] = {
            "precision": None if math.isnan(precision[idx]) else float(precision[idx]),
            "recall": None if math.isnan(recall[idx]) else float(recall[idx]),
            "f1": None if math.isnan(f1[idx]) else float(f1[idx]),
            "support": int(support[idx]),
        }
    return per_class


def _threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float, notes: list[str]) -> dict:
    y_pred = predict_fake(p, threshold)
    if not _has_both_classes(y):
        notes.append("only one class present: balanced accuracy is just that class's recall")
    with warnings.catch_warnings():
        # One class only: sklearn warns, then averages the recall of the class that is there.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, y_pred)
    return {
        "balanced_accuracy": float(balanced),
        "per_class": _per_class(y, y_pred, notes),
        "confusion_matrix": confusion_matrix(y, y_pred, labels=[0, 1]).tolist(),
        "classification_report": classification_report(
            y, y_pred, labels=[0, 1], target_names=list(CLASS_NAMES), digits=4, zero_division=0),
    }


# ----------------------------------------------------------------------------- ranking metrics

def equal_error_rate(y_true, p_fake) -> tuple[float, float]:
    """(EER, threshold): where the false-positive rate (reals called fake) equals the
    false-negative rate (fakes called real) along the ROC curve.

    The crossing usually falls between two ROC points; both rates are linearly interpolated
    between the two points that bracket it (so EER is where the interpolated curves meet), and
    the threshold is interpolated with the same weight. sklearn's first ROC point has threshold
    +inf; it is read as 1.0, the largest possible probability. Needs both classes."""
    y, p = _check_inputs(y_true, p_fake)
    if not _has_both_classes(y):
        raise ValueError("EER needs both real and fake images")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    gap = (1 - tpr) - fpr  # FNR - FPR: +1 above every score, -1 below every score
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(fpr[i]), float(min(thresholds[i], 1.0))
    weight = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = fpr[i - 1] + weight * (fpr[i] - fpr[i - 1])
    upper = min(thresholds[i - 1], 1.0)
    return float(eer), float(upper + weight * (thresholds[i] - upper))


def _ranking_metrics(y: np.ndarray, p: np.ndarray, notes: list[str]) -> dict:
    if not _has_both_classes(y):
        present = CLASS_NAMES[int(y[0])]
        notes.append(f"only one class present ({present}): ROC-AUC, average precision and EER "
                     "are undefined and reported as None")
        return {"roc_auc": None, "average_precision": None, "eer": None, "eer_threshold": None}
    eer, eer_threshold = equal_error_rate(y, p)
    return {"roc_auc": float(roc_auc_score(y, p)),
            "average_precision": float(average_precision_score(y, p)),
            "eer": eer, "eer_threshold": eer_threshold}


# ----------------------------------------------------------------------------- calibration

def reliability_curve(y_true, p_fake, n_bins: int = ECE_BINS) -> dict:
    """Bin P(fake) into `n_bins` equal-width bins on [0, 1] ([lo, hi), the last bin includes 1.0).

    Returns NumPy arrays: bin_edges, bin_centres, counts, `confidence` (mean P(fake) in the bin)
    and `accuracy` (the fraction of images in the bin that are truly fake: what P(fake) should
    match if it is calibrated). Empty bins hold NaN in accuracy and confidence."""
    y, p = _check_inputs(y_true, p_fake)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.digitize(p, edges[1:-1])  # interior edges only, so 1.0 lands in the last bin
    counts = np.bincount(bin_of, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bin_of, weights=y, minlength=n_bins) / counts
        confidence = np.bincount(bin_of, weights=p, minlength=n_bins) / counts
    return {"bin_edges": edges, "bin_centres": (edges[:-1] + edges[1:]) / 2, "counts": counts,
            "accuracy": accuracy, "confidence": confidence}


def expected_calibration_error(y_true, p_fake, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (images in bin / all images) * |fraction fake - mean P(fake)|,
    with `n_bins` equal-width bins of P(fake) (see `reliability_curve`). This is the binary
    definition of torchmetrics' BinaryCalibrationError(n_bins=15, norm="l1"): it bins P(fake),
    not the top-label confidence max(p, 1 - p)."""
    curve = reliability_curve(y_true, p_fake, n_bins)
    filled = curve["counts"] > 0
    gaps = np.abs(curve["accuracy"][filled] - curve["confidence"][filled])
    return float(np.sum(curve["counts"][filled] / curve["counts"].sum() * gaps))


def _nan_to_none(values) -> list:
    return [None if math.isnan(v) else float(v) for v in values]


def _calibration_metrics(y: np.ndarray, p: np.ndarray, notes: list[str]) -> dict:
    curve = reliability_curve(y, p, ECE_BINS)
    return {
        "ece": expected_calibration_error(y, p, ECE_BINS),
        "ece_bins": ECE_BINS,
        # sklearn clips P(fake) away from 0 and 1, so one confident mistake costs a lot, not inf.
        "log_loss": _number_or_none(log_loss(y, p, labels=[0, 1]), "log_loss", notes),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "reliability": {"bin_centres": _nan_to_none(curve["bin_centres"]),
                        "accuracy": _nan_to_none(curve["accuracy"]),
                        "confidence": _nan_to_none(curve["confidence"]),
                        "counts": [int(c) for c in curve["counts"]]},
    }


# ----------------------------------------------------------------------------- bootstrap

def rank_roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the chance that a random fake scores above a random
    real, ties counting half. Equal to sklearn's roc_auc_score (tested), without its overhead."""
    ranks = rankdata(p)
    n_fake = int(y.sum())
    n_real = y.size - n_fake
    return float((ranks[y == 1].sum() - n_fake * (n_fake + 1) / 2) / (n_fake * n_real))


def stepwise_average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision as sklearn defines it: the sum over distinct thresholds, from the
    highest score down, of the recall gained there times the precision there (tested equal)."""
    order = np.argsort(-p, kind="mergesort")
    scores, labels = p[order], y[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(labels)[last_of_each_score]
    precision = true_positives / (last_of_each_score + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


BOOTSTRAP_CHUNK_VALUES = 2_000_000  # replicates x images scored at once (~16 MB per array)


def ranking_metrics_rows(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank_roc_auc, stepwise_average_precision) of each row of (B, n) labels and scores, bit
    for bit, from one sort per row. Only tie groups matter to both (not the order inside one), so
    any sort will do. AUC: the fakes' average ranks are halves and integers, whose sum is exact in
    float64 in any order. AP: every term is computed by the same operations, and each row's terms
    are summed by the same np.sum over the same array (its order of summation decides the last
    bit), so that sum stays a loop over rows."""
    n = p.shape[1]
    order = np.argsort(-p, axis=1)
    scores, labels = np.take_along_axis(p, order, 1), np.take_along_axis(y, order, 1)
    same_as_next = np.diff(scores, axis=1) == 0
    is_last = np.ones(scores.shape, dtype=bool)  # the last position of each distinct score
    is_last[:, :-1] = ~same_as_next
    is_first = np.ones(scores.shape, dtype=bool)
    is_first[:, 1:] = ~same_as_next
    positions = np.arange(n)
    first = np.maximum.accumulate(np.where(is_first, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(is_last, positions, n)[:, ::-1], axis=1)[:, ::-1]
    # Position i from the top has ascending rank n - i; a tie group shares its mean rank.
    fake_rank_sum = np.where(labels == 1, n - (first + last) / 2, 0).sum(axis=1)
    n_fake = labels.sum(axis=1)
    n_real = n - n_fake
    auc = (fake_rank_sum - n_fake * (n_fake + 1) / 2) / (n_fake * n_real)

    true_positives = np.cumsum(labels, axis=1)
    precision = true_positives / (positions + 1)
    recall = true_positives / true_positives[:, -1:]
    ap = np.empty(len(p))
    for row in range(len(p)):  # rows keep different numbers of terms: summed one by one
        keep = is_last[row]
        ap[row] = np.sum(np.diff(np.r_[0.0, recall[row, keep]]) * precision[row, keep])
    return auc, ap


def bootstrap_ci(y_true, p_fake, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> dict:
    """Percentile bootstrap CIs {accuracy, roc_auc, average_precision: [lo, hi]}.

    Resampling is stratified by class: each replicate draws n_real images from the reals and
    n_fake from the fakes, with replacement. That keeps the class balance of the evaluated set
    fixed and both classes in every replicate (so AUC is always defined). Seeded, hence
    deterministic. Images are treated as independent: with many frames per video, use the
    group-level CI instead. On one class only accuracy gets a CI; the others are None."""
    y, p = _check_inputs(y_true, p_fake)
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1")
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(y == label) for label in (0, 1)]
    class_indices = [idx for idx in class_indices if idx.size]
    both = _has_both_classes(y)
    names = ("accuracy", "roc_auc", "average_precision") if both else ("accuracy",)
    # The replicates are drawn one by one, exactly as before (the same seed gives the same
    # intervals, bit for bit), then scored many at a time: a Python loop per replicate cost
    # 0.6 s per call at 4,000 images (benchmarks/fixed_cost.py).
    picks = np.empty((n_bootstrap, y.size), dtype=np.intp)
    for b in range(n_bootstrap):
        # = rng.choice(idx, size=idx.size), the same draws (tested), without choice's overhead
        picks[b] = np.concatenate([idx[rng.integers(0, idx.size, size=idx.size)]
                                   for idx in class_indices])
    samples = {name: np.empty(n_bootstrap) for name in names}
    chunk = max(1, BOOTSTRAP_CHUNK_VALUES // max(y.size, 1))  # bounded memory at any size
    for start in range(0, n_bootstrap, chunk):
        rows = slice(start, start + chunk)
        y_b, p_b = y[picks[rows]], p[picks[rows]]
        samples["accuracy"][rows] = np.mean(predict_fake(p_b, threshold) == y_b, axis=1)
        if both:  # sklearn's own functions re-check their inputs each call: 100x slower here
            samples["roc_auc"][rows], samples["average_precision"][rows] = \
                ranking_metrics_rows(y_b, p_b)
    tail = 100 * (1 - level) / 2
    ci = {"accuracy": None, "roc_auc": None, "average_precision": None}
    for name, values in samples.items():
        lo, hi = np.percentile(values, [tail, 100 - tail])
        ci[name] = [float(lo), float(hi)]
    return ci


# ----------------------------------------------------------------------------- groups (videos, identities)

def group_level_metrics(y_true, p_fake, groups, threshold: float = 0.5,
                        val_threshold: float | None = None, n_bootstrap: int = 1000,
                        seed: int = 0) -> dict:
    """Metrics on the MEAN P(fake) of each group (a video, an identity), one vote per group.

    Frames of one video are not independent samples, so these are the numbers (and the CIs) to
    trust when groups exist. A group's label is its images' label; a group whose images carry
    both labels is excluded from everything here and counted in n_mixed_label_groups_excluded."""
    y, p = _check_inputs(y_true, p_fake)
    group_ids = np.asarray(groups).astype(str).ravel()
    if group_ids.size != y.size:
        raise ValueError(f"{group_ids.size} group ids for {y.size} images")
    _, group_of = np.unique(group_ids, return_inverse=True)
    images = np.bincount(group_of)
    fakes = np.bincount(group_of, weights=y)
    mean_p = np.bincount(group_of, weights=p) / images
    mixed = (fakes > 0) & (fakes < images)
    group_y, group_p = (fakes[~mixed] == images[~mixed]).astype(int), mean_p[~mixed]
    notes: list[str] = []
    if mixed.any():
        notes.append(f"{int(mixed.sum())} group(s) hold both real and fake images and were excluded")
    result = {"n_groups": int(group_y.size), "n_real_groups": int((group_y == 0).sum()),
              "n_fake_groups": int(group_y.sum()),
              "n_mixed_label_groups_excluded": int(mixed.sum()), "aggregation": "mean P(fake)"}
    if group_y.size == 0:
        notes.append("no group with a single label: group-level metrics undefined")
        return {**result, "accuracy": None, "accuracy_at_val_threshold": None, "roc_auc": None,
                "average_precision": None, "ci": None, "notes": notes}
    ranking = _ranking_metrics(group_y, group_p, notes)
    result.update({
        "accuracy": float(accuracy_score(group_y, predict_fake(group_p, threshold))),
        "accuracy_at_val_threshold": None if val_threshold is None else
        float(accuracy_score(group_y, predict_fake(group_p, val_threshold))),
        "roc_auc": ranking["roc_auc"], "average_precision": ranking["average_precision"],
        "ci": bootstrap_ci(group_y, group_p, threshold, n_bootstrap, seed) if n_bootstrap else None,
        "notes": notes,
    })
    return result


# ----------------------------------------------------------------------------- everything at once

def compute_metrics(y_true, p_fake, threshold: float = 0.5, val_threshold: float | None = None,
                    groups=None, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Every number for one split, as a JSON-ready dict (plain floats/ints/lists/None, no NaN).

    Threshold-dependent numbers (accuracy, balanced accuracy, per_class, confusion_matrix
    [[tn, fp], [fn, tp]], classification_report) use `threshold`; `accuracy_at_val_threshold`
    repeats accuracy at `val_threshold` when one (chosen on the validation split) is given. For
    everything at the validation threshold, call again with threshold=val_threshold.
    Threshold-free: roc_auc, average_precision, eer (+ eer_threshold), ece (15 bins of P(fake)),
    log_loss, brier. `ci` holds 95% stratified percentile-bootstrap intervals (`bootstrap_ci`).
    With `groups`, `group_level` scores the mean P(fake) per group (`group_level_metrics`)."""
    y, p = _check_inputs(y_true, p_fake)
    if not 0 <= threshold <= 1 or (val_threshold is not None and not 0 <= val_threshold <= 1):
        raise ValueError("thresholds are probabilities and must lie in [0, 1]")
    notes: list[str] = []
    metrics = {
        "n_images": int(y.size), "n_real": int((y == 0).sum()), "n_fake": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, predict_fake(p, threshold))),
        "val_threshold": None if val_threshold is None else float(val_threshold),
        "accuracy_at_val_threshold": None if val_threshold is None else
        float(accuracy_score(y, predict_fake(p, val_threshold))),
    }
    metrics.update(_threshold_metrics(y, p, threshold, notes))
    metrics.update(_ranking_metrics(y, p, notes))
    metrics.update(_calibration_metrics(y, p, notes))
    if n_bootstrap > 0:
        metrics["ci"] = bootstrap_ci(y, p, threshold, n_bootstrap, seed)
    else:
        metrics["ci"] = {"accuracy": None, "roc_auc": None, "average_precision": None}
        notes.append("n_bootstrap=0: no confidence intervals")
    metrics.update({"ci_level": CI_LEVEL, "ci_method": "percentile bootstrap, stratified by class",
                    "n_bootstrap": int(n_bootstrap), "bootstrap_seed": int(seed)})
    metrics["group_level"] = None
    if groups is not None:
        metrics["group_level"] = group_level_metrics(y, p, groups, threshold, val_threshold,
                                                     n_bootstrap, seed)
        notes.append("images of one group are correlated: image-level CIs are too narrow; "
                     "prefer group_level")
    metrics["notes"] = notes
    return metrics


def choose_threshold(y_true, p_fake) -> float:
    """The decision threshold to choose ON THE VALIDATION SPLIT: the one maximising balanced
    accuracy (TPR + TNR) / 2, which is the same as maximising Youden's J = TPR - FPR.

    Candidates are 0.5 and the midpoints between consecutive distinct scores (a midpoint sits in
    the gap rather than on a validation image, so it does not hinge on one score). Ties go to the
    candidate closest to 0.5, so 0.5 stays whenever it is as good as anything else. With only one
    class there is nothing to balance: warns and returns 0.5."""
    y, p = _check_inputs(y_true, p_fake)
    if not _has_both_classes(y):
        warnings.warn("choose_threshold needs both classes; keeping 0.5", stacklevel=2)
        return 0.5
    scores = np.unique(p)
    candidates = np.concatenate([[0.5], (scores[:-1] + scores[1:]) / 2])
    real_sorted, fake_sorted = np.sort(p[y == 0]), np.sort(p[y == 1])
    # Fraction of each class scored >= t, for every candidate at once.
    tpr = 1 - np.searchsorted(fake_sorted, candidates, side="left") / fake_sorted.size
    fpr = 1 - np.searchsorted(real_sorted, candidates, side="left") / real_sorted.size
    balanced = (tpr + 1 - fpr) / 2
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


# ----------------------------------------------------------------------------- figures

def _title(title: str, name: str) -> str:
    return f"{title}: {name}" if title else name


def _clean_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)


def _placeholder(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=MUTED)
    ax.set_xticks([]), ax.set_yticks([])


@paper_style
def plot_confusion_matrix(y_true, p_fake, threshold: float = 0.5, title: str = ""):
    """Counts and row-normalised % (the share of each true class), predicted fake at p >= threshold."""
    y, p = _check_inputs(y_true, p_fake)
    counts = confusion_matrix(y, predict_fake(p, threshold), labels=[0, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        row_pct = np.nan_to_num(100 * counts / counts.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(3.4, 3.0))
    ax.imshow(row_pct, cmap="Blues", vmin=0, vmax=100)
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if row_pct[i, j] > 60 else "black"
        ax.text(j, i, f"{count}\n({row_pct[i, j]:.1f}%)", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], CLASS_NAMES), ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("Predicted"), ax.set_ylabel("True")
    ax.set_title(_title(title, f"Confusion matrix (threshold {threshold:.2f})"))
    fig.tight_layout()
    return fig


@paper_style
def plot_roc_curve(y_true, p_fake, threshold: float = 0.5, title: str = ""):
    """ROC with AUC in the legend, the EER point, and the operating point at `threshold`."""
    y, p = _check_inputs(y_true, p_fake)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.set_title(_title(title, "ROC curve"))
    if not _has_both_classes(y):
        _placeholder(ax, "ROC undefined:\nonly one class present")
        return fig
    fpr, tpr, _ = roc_curve(y, p)
    eer, eer_threshold = equal_error_rate(y, p)
    tn, fp, fn, tp = confusion_matrix(y, predict_fake(p, threshold), labels=[0, 1]).ravel()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="chance")
    ax.plot(fpr, tpr, lw=1.8, color=FAKE_COLOUR, label=f"ROC (AUC = {roc_auc_score(y, p):.3f})")
    ax.plot(eer, 1 - eer, "o", ms=6, mfc="white", mec="black",
            label=f"EER = {eer:.3f} (t = {eer_threshold:.2f})")
    ax.plot(fp / (fp + tn), tp / (tp + fn), "x", ms=7, mew=1.5, color="black",
            label=f"threshold {threshold:.2f}")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01), ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (real called fake)")
    ax.set_ylabel("True positive rate (fake caught)")
    ax.legend(loc="lower right", frameon=False)
    _clean_axes(ax)
    fig.tight_layout()
    return fig


@paper_style
def plot_pr_curve(y_true, p_fake, title: str = ""):
    """Precision-recall for the fake class, AP in the legend, the fake-rate (chance) baseline."""
    y, p = _check_inputs(y_true, p_fake)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.set_title(_title(title, "Precision-recall curve"))
    if not _has_both_classes(y):
        _placeholder(ax, "PR curve undefined:\nonly one class present")
        return fig
    precision, recall, _ = precision_recall_curve(y, p)
    fake_rate = y.mean()
    ax.axhline(fake_rate, ls="--", lw=0.8, color=MUTED, label=f"chance (fake rate {fake_rate:.2f})")
    ax.plot(recall, precision, lw=1.8, color=FAKE_COLOUR, drawstyle="steps-post",
            label=f"AP = {average_precision_score(y, p):.3f}")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.01), ax.set_aspect("equal")
    ax.set_xlabel("Recall (fake)"), ax.set_ylabel("Precision (fake)")
    ax.legend(loc="lower left", frameon=False)
    _clean_axes(ax)
    fig.tight_layout()
    return fig


@paper_style
def plot_reliability_diagram(y_true, p_fake, n_bins: int = ECE_BINS, title: str = ""):
    """Fraction truly fake per bin of P(fake) against the diagonal, ECE in the title, and how
    many images each bin holds (a well-fit detector leaves the middle bins nearly empty)."""
    curve = reliability_curve(y_true, p_fake, n_bins)
    ece = expected_calibration_error(y_true, p_fake, n_bins)
    width = 1.0 / n_bins
    filled = curve["counts"] > 0
    fig, (ax, ax_counts) = plt.subplots(2, 1, figsize=(3.4, 4.2), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="perfect calibration")
    ax.bar(curve["bin_centres"][filled], curve["accuracy"][filled], width=width, color=FAKE_COLOUR,
           alpha=0.75, edgecolor="white", label="observed")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel("Fraction truly fake")
    ax.set_title(_title(title, f"Reliability (ECE = {ece:.3f})"))
    ax.legend(loc="upper left", frameon=False)
    ax_counts.bar(curve["bin_centres"], curve["counts"], width=width, color=MUTED,
                  edgecolor="white")
    ax_counts.set_xlabel("Predicted P(fake)"), ax_counts.set_ylabel("Images")
    for axis in (ax, ax_counts):
        _clean_axes(axis)
    fig.tight_layout()
    return fig


@paper_style
def plot_probability_histogram(y_true, p_fake, threshold: float = 0.5,
                               val_threshold: float | None = None, title: str = "",
                               log_scale: bool = False):
    """P(fake) per true class, with the decision threshold (and a validation threshold) marked."""
    y, p = _check_inputs(y_true, p_fake)
    bins = np.linspace(0, 1, 31)
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    for label, name, colour in ((0, "real", REAL_COLOUR), (1, "fake", FAKE_COLOUR)):
        values = p[y == label]
        if values.size:
            ax.hist(values, bins=bins, color=colour, alpha=0.3, histtype="stepfilled")
            ax.hist(values, bins=bins, color=colour, lw=1.5, histtype="step",
                    label=f"true {name} (n={values.size})")
    ax.axvline(threshold, color="black", lw=1.0, ls="--", label=f"threshold {threshold:.2f}")
    if val_threshold is not None:
        ax.axvline(val_threshold, color="black", lw=1.0, ls=":",
                   label=f"val-chosen threshold {val_threshold:.3f}")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Predicted P(fake)"), ax.set_ylabel("Images")
    ax.set_title(_title(title, "Predicted P(fake) by true class"))
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    _clean_axes(ax)
    fig.tight_layout()
    return fig


def best_epoch_by_val_loss(history: list[dict]) -> int | None:
    """The early-stopping epoch: the smallest val_loss (earliest on ties); None without val_loss."""
    scored = [(h["val_loss"], _epoch_of(h, i)) for i, h in enumerate(history)
              if h.get("val_loss") is not None]
    return min(scored)[1] if scored else None


def _epoch_of(entry: dict, index: int) -> int:
    return entry.get("epoch", index + 1)


def _plot_series(ax, history: list[dict], key: str, label: str, colour: str) -> None:
    points = [(_epoch_of(h, i), h[key]) for i, h in enumerate(history) if h.get(key) is not None]
    if points:
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker="o", ms=3, lw=1.5, color=colour, label=label)


@paper_style
def plot_history(history: list[dict], best_epoch: int | None = None, title: str = ""):
    """Learning curves per epoch: loss (train, val), accuracy (train, val) and, when present,
    val ROC-AUC; the best epoch (min val_loss unless given) is marked on every panel."""
    best = best_epoch_by_val_loss(history) if best_epoch is None else best_epoch
    has_auc = any(h.get("val_auc") is not None for h in history)
    panels = [("Loss", [("train_loss", "train"), ("val_loss", "val")]),
              ("Accuracy", [("train_acc", "train"), ("val_acc", "val")])]
    if has_auc:
        panels.append(("Val ROC-AUC", [("val_auc", "val")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
    for ax, (name, series) in zip(axes, panels):
        for key, label in series:
            colour = AUC_COLOUR if key == "val_auc" else VAL_COLOUR if label == "val" else TRAIN_COLOUR
            _plot_series(ax, history, key, label, colour)
        if best is not None:
            ax.axvline(best, color=MUTED, lw=1.0, ls=":", label=f"best epoch ({best})")
        ax.set_xlabel("Epoch"), ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _clean_axes(ax)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(frameon=False, loc="best")  # same colours on every panel: one legend
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_evaluation_figures(y_true, p_fake, metrics: dict, out_dir, title_prefix: str = "",
                            name_prefix: str = "") -> list[Path]:
    """Save the five evaluation figures as out_dir/{name_prefix}{name}.png and .pdf (names in
    EVALUATION_FIGURES); thresholds come from `metrics`. Figures are closed after saving, so a
    notebook cell shows none twice; call the plot_* functions to display one."""
    y, p = _check_inputs(y_true, p_fake)
    threshold = metrics.get("threshold", 0.5)
    figures = {
        "confusion_matrix": plot_confusion_matrix(y, p, threshold, title_prefix),
        "roc_curve": plot_roc_curve(y, p, threshold, title_prefix),
        "pr_curve": plot_pr_curve(y, p, title_prefix),
        "reliability": plot_reliability_diagram(y, p, metrics.get("ece_bins", ECE_BINS), title_prefix),
        "probability_histogram": plot_probability_histogram(
            y, p, threshold, metrics.get("val_threshold"), title_prefix),
    }
    written = []
    for name, fig in figures.items():
        written += save_figure(fig, Path(out_dir) / f"{name_prefix}{name}")
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- tables

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def _columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _format_cell(value, float_format: str, missing: str = "–") -> str:
    """Display text of one cell; None (no CI, undefined metric) shows as a dash."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return float_format.format(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_cell(v, float_format, missing) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _is_numeric(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_numeric(v) for v in value)
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _numeric_columns(rows: list[dict], columns: list[str]) -> set[str]:
    """Columns whose every present value is a number (or a list of numbers): right-aligned."""
    return {col for col in columns
            if all(_is_numeric(row[col]) for row in rows if row.get(col) is not None)
            and any(row.get(col) is not None for row in rows)}


def markdown_table(rows: list[dict], float_format: str = "{:.4f}") -> str:
    """A GitHub-Markdown table: header row, alignment row (numbers right), one line per row."""
    columns = _columns(rows)
    numeric = _numeric_columns(rows, columns)

    def cell(value) -> str:
        return _format_cell(value, float_format).replace("|", r"\|")

    lines = ["| " + " | ".join(cell(col) for col in columns) + " |",
             "|" + "|".join("---:" if col in numeric else ":---" for col in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(col)) for col in columns) + " |" for row in rows]
    return "\n".join(lines)


def latex_table(rows: list[dict], caption: str = "", label: str = "",
                float_format: str = "{:.4f}") -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}), in a table float when captioned."""
    columns = _columns(rows)
    numeric = _numeric_columns(rows, columns)

    def cell(value) -> str:
        return latex_escape(_format_cell(value, float_format, missing="--"))

    body = [r"\begin{tabular}{" + "".join("r" if col in numeric else "l" for col in columns) + "}",
            r"\toprule",
            " & ".join(cell(col) for col in columns) + r" \\",
            r"\midrule"]
    body += [" & ".join(cell(row.get(col)) for col in columns) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    if not caption:
        return "% requires \\usepackage{booktabs}\n" + "\n".join(body) + "\n"
    head = ["% requires \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
            r"\caption{" + latex_escape(caption) + "}"]
    if label:
        head.append(r"\label{" + label + "}")
    return "\n".join(head + body + [r"\end{table}"]) + "\n"


def _csv_cell(value):
    """CSV keeps full precision (it is for machines); lists go in as JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value))
    return _plain(value)


def write_table(rows: list[dict], path_stem, caption: str = "",
                float_format: str = "{:.4f}") -> list[Path]:
    """Write path_stem.md (GitHub Markdown), .csv (full precision) and .tex (booktabs; the label
    is tab:<file name>). Columns are every key of every row in order of first appearance."""
    if not rows:
        raise ValueError("no rows to write")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path, tex_path = (Path(f"{stem}.{ext}") for ext in ("md", "csv", "tex"))
    markdown = markdown_table(rows, float_format)
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + markdown + "\n", encoding="utf-8")
    columns = _columns(rows)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({col: _csv_cell(row.get(col)) for col in columns} for row in rows)
    label = "tab:" + "".join(c if c.isalnum() else "-" for c in stem.name)
    tex_path.write_text(latex_table(rows, caption, label, float_format), encoding="utf-8")
    return [md_path, csv_path, tex_path]


def metrics_table_rows(metrics: dict) -> list[dict]:
    """Rows (metric, value, 95% CI) for the main results table, from a `compute_metrics` dict."""
    ci = metrics.get("ci") or {}
    threshold = metrics.get("threshold", 0.5)
    rows = [{"metric": "Images", "value": metrics.get("n_images"), "95% CI": None},
            {"metric": f"Accuracy (threshold {threshold:.2f})", "value": metrics.get("accuracy"),
             "95% CI": ci.get("accuracy")}]
    if metrics.get("val_threshold") is not None:
        rows.append({"metric": f"Accuracy (val-chosen threshold {metrics['val_threshold']:.3f})",
                     "value": metrics.get("accuracy_at_val_threshold"), "95% CI": None})
    rows += [
        {"metric": "Balanced accuracy", "value": metrics.get("balanced_accuracy"), "95% CI": None},
        {"metric": "ROC-AUC", "value": metrics.get("roc_auc"), "95% CI": ci.get("roc_auc")},
        {"metric": "Average precision", "value": metrics.get("average_precision"),
         "95% CI": ci.get("average_precision")},
        {"metric": "EER", "value": metrics.get("eer"), "95% CI": None},
        {"metric": f"ECE ({metrics.get('ece_bins', ECE_BINS)} bins)", "value": metrics.get("ece"),
         "95% CI": None},
        {"metric": "Log loss", "value": metrics.get("log_loss"), "95% CI": None},
        {"metric": "Brier score", "value": metrics.get("brier"), "95% CI": None},
    ]
    group = metrics.get("group_level")
    if group:
        group_ci = group.get("ci") or {}
        rows += [
            {"metric": "Groups", "value": group.get("n_groups"), "95% CI": None},
            {"metric": "Group accuracy (mean P(fake))", "value": group.get("accuracy"),
             "95% CI": group_ci.get("accuracy")},
            {"metric": "Group ROC-AUC (mean P(fake))", "value": group.get("roc_auc"),
             "95% CI": group_ci.get("roc_auc")},
        ]
    return rows


# ----------------------------------------------------------------------------- prediction files

_FIRST_COLUMNS = ("image_id", "prediction")
_TEXT_COLUMNS = {"image_id", "path", "split", "group", "source"}  # never parsed as numbers


def _plain(value):
    """A JSON/CSV-ready Python value. NumPy floats keep their own precision: float32 0.00025 is
    written as 0.00025 (its shortest round-trip repr), not as 0.0002500000118743628."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.floating):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _clean_prediction_row(row: dict, columns: list[str]) -> dict:
    """The row checked (P(fake) in [0, 1]) and made JSON/CSV-ready, its keys in `columns` order."""
    missing = [key for key in _FIRST_COLUMNS if key not in row]
    if missing:
        raise ValueError(f"prediction row {row!r} lacks {missing}")
    extra = [key for key in row if key not in columns]
    if extra:
        raise ValueError(f"prediction row {row!r} has keys {extra} that the rows before it lack; "
                         "every streamed row needs the keys of the first")
    clean = {col: _plain(row[col]) for col in columns if col in row}
    if not isinstance(clean["prediction"], (int, float)) or not 0 <= clean["prediction"] <= 1:
        raise ValueError(f"prediction must be P(fake) in [0, 1], got {clean['prediction']!r} "
                         f"for {clean['image_id']!r}")
    clean["image_id"] = str(clean["image_id"])
    return clean


def write_prediction_rows(rows, file, fmt: str) -> int:
    """Write prediction rows to an open text file (or sys.stdout) as "json" or "csv"; returns how
    many. Formats as `write_predictions` says. A list is written with every key of every row as
    columns; any other iterable is written as it comes, one row at a time, with the keys of its
    first row as columns, so memory does not grow with the number of rows."""
    fmt = fmt.lstrip(".")
    if fmt not in ("json", "csv"):
        raise ValueError(f"predictions go to .json or .csv, not {fmt!r}")
    if isinstance(rows, list):
        body, keys = rows, _columns(rows)
    else:  # a stream: its first row names the columns
        rows = iter(rows)
        first = next(rows, None)
        body = [] if first is None else itertools.chain([first], rows)
        keys = [] if first is None else list(first)
    columns = list(_FIRST_COLUMNS) + [c for c in keys if c not in _FIRST_COLUMNS]
    n = 0
    if fmt == "json":
        for n, row in enumerate(body, start=1):
            file.write(("[\n" if n == 1 else ",\n") + json.dumps(
                _clean_prediction_row(row, columns), ensure_ascii=False, allow_nan=False))
        file.write("\n]\n" if n else "[]\n")
    else:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for n, row in enumerate(body, start=1):
            row = _clean_prediction_row(row, columns)
            writer.writerow({col: "" if row.get(col) is None else row[col] for col in columns})
    return n


@contextlib.contextmanager
def atomic_text_file(path):
    """Open `path` for writing under a temporary name beside it, and rename it into place only
    when the block succeeds: the file appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            yield f
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_predictions(rows, path) -> Path:
    """Write per-image predictions; the format follows the suffix.

    .json: [{"image_id": "1.png", "prediction": 0.00025}, ...] (one object per line), image_id
           and prediction first, then any extra keys (label, path, split, ...) as given.
    .csv:  a header with the same columns; an absent value is an empty cell.
    Floats are written at full precision (repr), never rounded.

    `rows` may be a list or a stream (e.g. `inference.iter_predictions`), see
    `write_prediction_rows`. The file appears complete or not at all."""
    path = Path(path)
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"predictions go to .json or .csv, not {path.suffix!r}")
    with atomic_text_file(path) as f:
        write_prediction_rows(rows, f, path.suffix)
    return path


def _parse_csv_cell(column: str, text: str):
    if column in _TEXT_COLUMNS:
        return text
    if text == "":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def read_predictions(path) -> list[dict]:
    """Read a file written by `write_predictions` back into a list of dicts (CSV numbers are
    parsed back to int/float; image_id, path, split, group and source stay text)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [{col: _parse_csv_cell(col, text) for col, text in row.items()}
                    for row in csv.DictReader(f)]
    raise ValueError(f"predictions come from .json or .csv, not {path.suffix!r}")


# ----------------------------------------------------------------------------- run report

def load_json(path: Path):
    """The parsed file, None when absent; an unreadable file becomes a message, not a crash."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path.name}: {error}"}


def _weights_record(config: dict) -> dict | None:
    """config["weights"] when it is the record; else any top-level dict carrying "pretrained"."""
    if isinstance(config.get("weights"), dict):
        return config["weights"]
    return next((v for v in config.values() if isinstance(v, dict) and "pretrained" in v), None)


def _image(run_dir: Path, relative: str, caption: str) -> list[str]:
    return [f"![{caption}]({relative})", ""] if (run_dir / relative).is_file() else []


def _report_warning(config: dict | None) -> list[str]:
    record = _weights_record(config) if isinstance(config, dict) else None
    if record is None or record.get("pretrained") is not False:
        return []
    return [RANDOM_INIT_WARNING, "", f"Weights note: {record.get('note', 'none given')}", "",
            "The backbone was not trained on ImageNet, so these numbers say nothing about a "
            "pretrained ResNet-18 detector.", ""]


def _report_data(counts) -> list[str]:
    if not isinstance(counts, dict) or "unreadable" in counts:
        return []
    rows = []
    for split, by_class in counts.items():
        if not isinstance(by_class, dict):
            continue
        real, fake = int(by_class.get("real", 0)), int(by_class.get("fake", 0))
        rows.append({"split": split, "real": real, "fake": fake, "total": real + fake,
                     "fake share": fake / (real + fake) if real + fake else None})
    return ["## Data", "", markdown_table(rows, "{:.3f}"), ""] if rows else []


def _report_training(run_dir: Path, history) -> list[str]:
    lines = ["## Training", ""]
    if isinstance(history, list) and history:
        best = best_epoch_by_val_loss(history)
        seconds = sum(h.get("seconds") or 0 for h in history)
        summary = f"{len(history)} epoch(s), {seconds:.0f} s in total."
        if best is not None:
            best_entry = next(h for i, h in enumerate(history) if _epoch_of(h, i) == best)
            summary += f" Best epoch (min val loss {best_entry['val_loss']:.4f}): {best}."
        lines += [summary, ""]
    lines += _image(run_dir, f"figures/{LEARNING_CURVES_FIGURE}.png", "Learning curves")
    return lines if len(lines) > 2 else []


def _report_split(run_dir: Path, split: str, metrics: dict, has_test: bool) -> list[str]:
    lines = [f"### {split.capitalize()} split", ""]
    if "unreadable" in metrics:
        return lines + [f"Could not read {metrics['unreadable']}", ""]
    if split == "val":
        lines += ["The validation split chose the early-stopping epoch"
                  + (" and the threshold" if metrics.get("val_threshold") is not None else "")
                  + ", so its numbers are optimistic."
                  + ("" if has_test else " No test split was used: there is no unbiased estimate "
                     "in this run."), ""]
    method = metrics.get("ci_method", "percentile bootstrap")
    lines += [markdown_table(metrics_table_rows(metrics)), "",
              f"95% CIs: {method}, {metrics.get('n_bootstrap', '?')} replicates "
              f"(seed {metrics.get('bootstrap_seed', '?')}). "
              f"Images: {metrics.get('n_real', '?')} real, {metrics.get('n_fake', '?')} fake.", ""]
    matrix = metrics.get("confusion_matrix")
    if matrix:
        lines += [f"Confusion matrix at threshold {metrics.get('threshold', 0.5):.2f} "
                  "(rows: true class, columns: predicted):", "",
                  markdown_table([{"true \\ predicted": name, "real": row[0], "fake": row[1]}
                                  for name, row in zip(CLASS_NAMES, matrix)]), ""]
    notes = list(metrics.get("notes") or []) + list((metrics.get("group_level") or {}).get("notes") or [])
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    for name in EVALUATION_FIGURES:
        lines += _image(run_dir, f"figures/{split}_{name}.png", f"{split} {name.replace('_', ' ')}")
    return lines


def _report_convergence(config) -> list[str]:
    """A warning at the top when the epoch budget, not early stopping, ended training."""
    if not isinstance(config, dict) or config.get("converged") is not False:
        return []
    return ["**NOT CONVERGED**", "",
            f"The epoch budget ({config.get('epochs')}) ran out while the val loss was still "
            f"improving (best epoch {config.get('best_epoch')}): this head is short of what its "
            "features allow, and every number below understates them. Train again with a larger "
            "`--epochs`, with the default recipe (no `--lr`/`--epochs`/`--patience` overrides), or "
            "at the rate `lr-find` suggests.", ""]


def _report_probe(probe, evaluated: dict) -> list[str]:
    """Head and linear probe side by side for each split both were scored on."""
    if not isinstance(probe, dict) or "metrics" not in probe:
        return []
    from .probe import comparison_rows, head_vs_probe
    lines = ["## Head against a linear probe", "",
             "The probe is a logistic regression on the same frozen features (standardised, C = "
             f"{probe.get('C', float('nan')):g} chosen by {probe.get('cv', {}).get('folds', '?')}-fold "
             "cross-validation on the train split"
             + (", folds following the groups" if probe.get("cv", {}).get("grouped") else "")
             + "): the ceiling a linear head reaches on these features. A head far below it is not "
             "done training; a probe far below published results means the features, not the "
             "head, are the limit.", ""]
    if probe.get("from_run"):
        lines += [f"This probe was fitted in phase 1 ({probe['from_run']}) on the frozen "
                  "backbone's features; fine-tuning is worth it only where it beats it.", ""]
    for split, head_metrics in evaluated.items():
        probe_metrics = probe["metrics"].get(split)
        if not isinstance(probe_metrics, dict) or "unreadable" in head_metrics:
            continue
        comparison = head_vs_probe(head_metrics.get("roc_auc"), probe_metrics.get("roc_auc"))
        lines += [f"### {split.capitalize()} split", "",
                  markdown_table(comparison_rows(head_metrics, probe_metrics)), ""]
        if not probe.get("from_run"):
            lines += [comparison["verdict"], ""]
    return lines if any(line.startswith("### ") for line in lines) else []


def _report_rows(title: str, data) -> list[str]:
    """A list of row dicts as a table; any other JSON as a code block."""
    if data is None:
        return []
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        body = markdown_table(data)
    elif isinstance(data, dict) and data and all(not isinstance(v, (dict, list)) for v in data.values()):
        body = markdown_table([{"key": k, "value": v} for k, v in data.items()])
    else:
        body = "```json\n" + json.dumps(data, indent=2) + "\n```"
    return [title, "", body, ""]


def _report_unlisted_figures(run_dir: Path, shown: set[str]) -> list[str]:
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    lines = []
    for path in figures:
        relative = f"figures/{path.name}"
        if relative not in shown:
            lines += [f"![{path.stem.replace('_', ' ')}]({relative})", ""]
    return (["## Other figures", ""] + lines) if lines else []


# Tables that write_report shows in a section of their own rather than under "Tables".
OWN_SECTION_TABLES = {"robustness", "cross_dataset", "head_vs_probe"}


def _report_tables(run_dir: Path) -> list[str]:
    tables = sorted((run_dir / "tables").glob("*.md")) if (run_dir / "tables").is_dir() else []
    lines = []
    for path in tables:
        if path.stem in OWN_SECTION_TABLES:
            continue  # shown in their own section, from their JSON
        siblings = [f"[{ext.upper()}](tables/{path.stem}.{ext})" for ext in ("csv", "tex")
                    if path.with_suffix(f".{ext}").is_file()]
        lines += [f"### {path.stem}", "", path.read_text(encoding="utf-8").strip(), ""]
        if siblings:
            lines += ["Also as " + ", ".join(siblings) + ".", ""]
    return (["## Tables", ""] + lines) if lines else []


def write_report(run_dir) -> Path:
    """Write run_dir/report.md from whatever the run directory holds (layout in the module
    docstring); each section appears only when its files exist. A random-init backbone
    (weights record with pretrained false) opens the report with RANDOM_INIT_WARNING."""
    run_dir = Path(run_dir)
    config = load_json(run_dir / "config.json")
    metrics = {split: load_json(run_dir / f"metrics_{split}.json") for split in ("test", "val")}
    lines = _report_warning(config)
    lines += [f"# Run report: {run_dir.resolve().name}", ""]
    preamble = len(lines)
    lines += _report_convergence(config)
    lines += _report_data(load_json(run_dir / "data_counts.json"))
    evaluated = {split: m for split, m in metrics.items() if isinstance(m, dict)}
    lines += _report_probe(load_json(run_dir / "probe.json"), evaluated)
    if evaluated:
        lines += ["## Results", ""]
        for split, split_metrics in evaluated.items():
            lines += _report_split(run_dir, split, split_metrics, has_test="test" in evaluated)
    lines += _report_training(run_dir, load_json(run_dir / "history.json"))
    lines += _report_tables(run_dir)
    robustness = _report_rows("## Robustness", load_json(run_dir / "robustness.json"))
    lines += robustness + (_image(run_dir, "figures/robustness.png", "robustness") if robustness else [])
    lines += _report_rows("## Cross-dataset", load_json(run_dir / "cross_dataset.json"))
    gradcam = _image(run_dir, "gradcam/contact_sheet.png", "Grad-CAM contact sheet")
    gradcam += _report_rows("### Faithfulness", load_json(run_dir / "gradcam" / "faithfulness.json"))
    if gradcam:
        lines += ["## Grad-CAM", ""] + gradcam
    shown = {line.split("](", 1)[1].rstrip(")") for line in lines if line.startswith("![")}
    lines += _report_unlisted_figures(run_dir, shown)
    if isinstance(config, dict):
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
        if config.get("data_citation"):
            lines += ["## How to cite the data", "", str(config["data_citation"]), "",
                      "_Placeholder: replace with the dataset's own citation (BibTeX) and licence "
                      "before publishing._", ""]
    if len(lines) == preamble:
        lines += ["Nothing to report yet: the run directory holds none of the expected files.", ""]
    report = run_dir / "report.md"
    with recording(run_dir):  # a rewritten report stays one of the run's own files
        report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
