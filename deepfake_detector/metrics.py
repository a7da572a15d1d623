"""Turn labels and P(fake) into honest numbers: threshold, ranking and calibration metrics,
bootstrap confidence intervals, group-level metrics and the validation-chosen threshold.

This module knows nothing about the model or how it was trained: everything here works on two
arrays, `y_true` (0 = real, 1 = fake) and `p_fake` (a probability in [0, 1] per image). Fake is
the positive class, so "precision", "recall", "ROC" and "AP" are all about finding fakes.

Reading order: threshold, ranking, calibration, bootstrap, groups -> `compute_metrics` ->
`choose_threshold`. Figures are in plots.py, tables in tables.py, the run report in report.py.

Conventions, stated once:
- An image is predicted fake when p_fake >= threshold (the same side sklearn's `roc_curve` uses).
- The decision threshold defaults to 0.5. A threshold chosen on the validation split
  (`choose_threshold`) is reported *beside* 0.5, never instead of it, and is never chosen on the
  data being evaluated unless that data is the validation split (the caller decides).
- `compute_metrics` returns plain JSON: no NumPy types, no NaN. A number that is undefined (AUC on
  one class, say) is None, and `notes` says why.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             brier_score_loss, classification_report, confusion_matrix, log_loss,
                             precision_recall_fscore_support, roc_auc_score,
                             roc_curve)

from . import CLASS_NAMES, CLASS_TO_IDX

ECE_BINS = 15
CI_LEVEL = 0.95


# ----------------------------------------------------------------------------- inputs

def check_inputs(y_true, p_fake) -> tuple[np.ndarray, np.ndarray]:
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


def has_both_classes(y: np.ndarray) -> bool:
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
    if not has_both_classes(y):
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
    y, p = check_inputs(y_true, p_fake)
    if not has_both_classes(y):
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
    if not has_both_classes(y):
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
    y, p = check_inputs(y_true, p_fake)
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
    y, p = check_inputs(y_true, p_fake)
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1")
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(y == label) for label in (0, 1)]
    class_indices = [idx for idx in class_indices if idx.size]
    both = has_both_classes(y)
    names = ("accuracy", "roc_auc", "average_precision") if both else ("accuracy",)
    # The replicates are drawn one by one, exactly as before (the same seed gives the same
    # intervals, bit for bit), then scored a chunk at a time: a Python loop per replicate cost
    # 0.6 s per call at 4,000 images (benchmarks/fixed_cost.py). Drawn per chunk too, so memory
    # stays bounded however many images there are.
    samples = {name: np.empty(n_bootstrap) for name in names}
    chunk = max(1, BOOTSTRAP_CHUNK_VALUES // max(y.size, 1))
    for start in range(0, n_bootstrap, chunk):
        rows = slice(start, min(start + chunk, n_bootstrap))
        # = rng.choice(idx, size=idx.size), the same draws (tested), without choice's overhead
        picks = np.stack([np.concatenate([idx[rng.integers(0, idx.size, size=idx.size)]
                                          for idx in class_indices])
                          for _ in range(rows.start, rows.stop)])
        y_b, p_b = y[picks], p[picks]
        samples["accuracy"][rows] = np.mean(predict_fake(p_b, threshold) == y_b, axis=1)
        if both:  # sklearn's own functions re-check their inputs each call: 100x slower here
            samples["roc_auc"][rows], samples["average_precision"][rows] = \
                ranking_metrics_rows(y_b, p_b)
    return percentile_intervals(samples, level)


def percentile_intervals(samples: dict, level: float = CI_LEVEL) -> dict:
    """{accuracy, roc_auc, average_precision: [lo, hi]}: the central `level` of each metric's
    bootstrap replicates in `samples` (None for a metric without replicates)."""
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
    y, p = check_inputs(y_true, p_fake)
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
    y, p = check_inputs(y_true, p_fake)
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
    y, p = check_inputs(y_true, p_fake)
    if not has_both_classes(y):
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
