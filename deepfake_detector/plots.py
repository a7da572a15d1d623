"""The evaluation figures of a run: confusion matrix, ROC and PR curves, reliability diagram,
P(fake) histogram and learning curves, in the paper style of figures.py.

Each plot_* function takes the same two arrays as metrics.py (`y_true`, `p_fake`) and returns a
matplotlib Figure; `save_evaluation_figures` writes the five of a split as PNG and PDF. The colours
live here, beside the figures that use them; other modules' figures import them from here.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_curve,
                             roc_auc_score, roc_curve)

from . import CLASS_NAMES

from .figures import paper_style, plt, save_figures, stamp_flags
from .metrics import (ECE_BINS, check_inputs, has_both_classes,
                                       equal_error_rate, expected_calibration_error, predict_fake,
                                       reliability_curve)

EVALUATION_FIGURES = ("confusion_matrix", "roc_curve", "pr_curve", "reliability",
                      "probability_histogram")
LEARNING_CURVES_FIGURE = "learning_curves"

# Okabe-Ito colours: distinguishable by colour-blind readers and in greyscale print.
REAL_COLOUR, FAKE_COLOUR = "#0072B2", "#D55E00"
TRAIN_COLOUR, VAL_COLOUR, AUC_COLOUR = "#0072B2", "#D55E00", "#009E73"
MUTED = "0.45"
MIN_BIN_IMAGES = 5     # a reliability bin with fewer images is drawn grey
MIN_SCORE_SPAN = 0.05  # the accuracy and AUC axes of the learning curves span at least this


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
    y, p = check_inputs(y_true, p_fake)
    counts = confusion_matrix(y, predict_fake(p, threshold), labels=[0, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        row_pct = np.nan_to_num(100 * counts / counts.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(3.8, 3.0))
    image = ax.imshow(row_pct, cmap="Blues", vmin=0, vmax=100)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("% of the true class")
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
    y, p = check_inputs(y_true, p_fake)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.set_title(_title(title, "ROC curve"))
    if not has_both_classes(y):
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
    y, p = check_inputs(y_true, p_fake)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.set_title(_title(title, "Precision-recall curve"))
    if not has_both_classes(y):
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
    counts, centres = curve["counts"], curve["bin_centres"]
    # A bin of one or two images is all or nothing: its bar says little, so it is drawn grey.
    solid, thin = counts >= MIN_BIN_IMAGES, (counts > 0) & (counts < MIN_BIN_IMAGES)
    fig, (ax, ax_counts) = plt.subplots(2, 1, figsize=(3.4, 4.4), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="perfect calibration")
    ax.bar(centres[solid], curve["accuracy"][solid], width=width, color=FAKE_COLOUR,
           alpha=0.75, edgecolor="white", label="observed")
    if thin.any():
        ax.bar(centres[thin], curve["accuracy"][thin], width=width, color="0.85",
               edgecolor="0.6", hatch="///", lw=0.5,
               label=f"fewer than {MIN_BIN_IMAGES} images")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel("Fraction truly fake")
    ax.set_title(_title(title, f"Reliability (ECE = {ece:.3f})"))
    ax.legend(loc="upper left", frameon=False)
    ax_counts.bar(centres, counts, width=width, color=MUTED, edgecolor="white")
    for centre, count in zip(centres, counts):
        if count:  # the number on every filled bin: a bar of 1 next to one of 60 is invisible
            ax_counts.text(centre, count, str(int(count)), ha="center", va="bottom", fontsize=6)
    ax_counts.set_ylim(0, max(counts.max(), 1) * 1.3)
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
    y, p = check_inputs(y_true, p_fake)
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


def best_epoch_by_val_loss(history: list[dict], min_delta: float = 0.0) -> int | None:
    """The early-stopping epoch by loop.fit's rule: an epoch is better only when it lowers the
    best val_loss so far by more than min_delta (so with 0, the earliest smallest); None without
    val_loss. A run records the epoch it restored (config.json's best_epoch): prefer that."""
    best_loss, best = float("inf"), None
    for i, entry in enumerate(history):
        loss = entry.get("val_loss")
        if loss is not None and loss < best_loss - min_delta:
            best_loss, best = loss, epoch_of(entry, i)
    return best


def epoch_of(entry: dict, index: int) -> int:
    return entry.get("epoch", index + 1)


def _plot_series(ax, history: list[dict], key: str, label: str, colour: str) -> None:
    points = [(epoch_of(h, i), h[key]) for i, h in enumerate(history) if h.get(key) is not None]
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
        if name != "Loss":
            at_least_span(ax, MIN_SCORE_SPAN, top=1.0)
        _clean_axes(ax)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(frameon=False, loc="best")  # same colours on every panel: one legend
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def at_least_span(ax, span: float, top: float) -> None:
    """A y axis that spans at least `span` and ends just above `top` (a score's best value): an
    AUC moving between 0.9992 and 1.0000 is noise, and should look like it."""
    low, high = ax.get_ylim()
    if high - low >= span:
        return
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    if high > top:
        low, high = top - span, top
    ax.set_ylim(low, high + span * 0.02)


def evaluation_drawings(y_true, p_fake, metrics: dict, out_dir, title_prefix: str = "",
                        name_prefix: str = "") -> dict:
    """The five evaluation figures of a split, not yet drawn: {out_dir/{name_prefix}{name}:
    function drawing it} for figures.save_figures (names in EVALUATION_FIGURES); thresholds come
    from `metrics`, and so do the run's flags (metrics["flags"]: RANDOM INIT, SYNTHETIC DATA), in
    each figure's footer wherever it is saved."""
    y, p = check_inputs(y_true, p_fake)
    threshold = metrics.get("threshold", 0.5)
    drawings = {  # the costliest to draw first: figures.save_figures deals them out in order
        "reliability": partial(plot_reliability_diagram, y, p,
                               metrics.get("ece_bins", ECE_BINS), title_prefix),
        "probability_histogram": partial(plot_probability_histogram, y, p, threshold,
                                         metrics.get("val_threshold"), title_prefix),
        "roc_curve": partial(plot_roc_curve, y, p, threshold, title_prefix),
        "pr_curve": partial(plot_pr_curve, y, p, title_prefix),
        "confusion_matrix": partial(plot_confusion_matrix, y, p, threshold, title_prefix),
    }
    flags = metrics.get("flags") or []
    return {Path(out_dir) / f"{name_prefix}{name}": partial(flagged, draw, flags)
            for name, draw in drawings.items()}


def flagged(draw, flags: list[str]):
    """draw(), its figure stamped with `flags` (figures.stamp_flags)."""
    fig = draw()
    stamp_flags(fig, flags)
    return fig


def save_evaluation_figures(y_true, p_fake, metrics: dict, out_dir, title_prefix: str = "",
                            name_prefix: str = "") -> list[Path]:
    """Save the five evaluation figures as out_dir/{name_prefix}{name}.png and .pdf (names in
    EVALUATION_FIGURES; figures.save_figures, on several cores where it can). Figures are closed
    after saving, so a notebook cell shows none twice; call the plot_* functions to display one."""
    return save_figures(evaluation_drawings(y_true, p_fake, metrics, out_dir, title_prefix,
                                            name_prefix))
