"""Audit a data set before training: could a model tell real from fake without looking at content?

If all fakes are PNG and all reals JPEG, a detector learns "JPEG artefacts = real" and scores
perfectly on its own validation split, and a paper reports a compression detector. This module
compares real and fake on what the files are rather than what they show:

    file format, JPEG quality, image size (width x height), colour mode   (categories per class)
    file size                                                             (median and IQR)
    all of these at once: can a simple classifier on metadata alone separate the classes?
    exact duplicates (same SHA-256) across splits and across classes

The model never sees a file size or a format name; it sees pixels. But those properties leave
traces in the pixels (compression artefacts, resampling, three identical channels of a greyscale
image), so a class difference in them is a shortcut the model can take. File size also follows
content (detail compresses worse), so a file-size flag says "look closer", not "broken".

It warns (warnings.warn, one message listing every flag) and writes audit.json, audit.md and
tables; it never refuses to go on. Exact duplicates only: near-duplicates (re-encoded, resized
copies) are not searched for.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from . import CLASS_NAMES, CLASS_TO_IDX
from .plots import FAKE_COLOUR, REAL_COLOUR
from .tables import markdown_table, write_table
from .figures import paper_style, plt, save_figure
from .images import open_supported, regular_file_problem
from .folder_lock import folder_lock, locks_folders
from .manifest import recording
from .discovery import inspect_image
from .files import printable
from .run_flags import flag_note, flags_of_path
from .split_read import SPLITS, list_labelled_folder, read_split_manifest

# When a difference becomes a flag.
DOMINANT_SHARE, RARE_SHARE = 0.8, 0.2  # a value on >= 80% of one class and < 20% of the other
EXCLUSIVE_MIN_SHARE = 0.01             # a value only one class has, on >= 1% of it (not one odd file)
FILE_SIZE_RATIO = 2.0                  # median file sizes more than 2x apart
SEPARABLE_BALANCED_ACCURACY = 0.8      # metadata alone separates the classes this well
CATEGORICAL = ("format", "jpeg_quality", "size", "mode")
SHOW_VALUES = 8                        # per property in the tables; the JSON has all of them

# The IJG (libjpeg) standard luminance quantisation table, natural (row-major) order: Annex K of
# the JPEG standard. Encoders that use it (libjpeg, Pillow, OpenCV, most cameras' software) scale
# it by the quality setting, so the table stored in a file gives the quality back.
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


class AuditWarning(UserWarning):
    """A real/fake difference a model could learn instead of the content, or a duplicate."""


# ----------------------------------------------------------------------------- JPEG quality

def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at `quality` (1-100): its own scaling rule."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((IJG_LUMINANCE * scale + 50) // 100, 1, 255)


IJG_TABLES = np.stack([ijg_table(q) for q in range(1, 101)])


def estimate_jpeg_quality(quantization: dict) -> int | None:
    """The IJG quality whose scaled standard table is closest (mean absolute difference) to the
    file's luminance table (PIL's `image.quantization[0]`, natural order since Pillow 8.3).

    Exact for files written by libjpeg-based encoders; for custom tables (some cameras,
    Photoshop) it is the nearest IJG equivalent, which is what a comparison between classes needs."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(quantization[0], dtype=np.float64)
    if table.size != 64:
        return None
    return int(np.argmin(np.abs(IJG_TABLES - table).mean(axis=1))) + 1


def jpeg_quality_of(path) -> int | None:
    """Reads only the header: opening does not decode pixels."""
    if regular_file_problem(path):
        return None
    try:
        with open_supported(path) as image:  # supported formats only (images.py)
            return estimate_jpeg_quality(getattr(image, "quantization", None)) \
                if image.format == "JPEG" else None
    except OSError:
        return None


# ----------------------------------------------------------------------------- the records

def image_records(data_dir) -> tuple[list[dict], str, list[dict]]:
    """(one record per image, where they came from, unreadable files).

    From split.csv when data_dir is a split made by split_dataset (hashes, sizes and formats are
    already there); otherwise by reading every file: a hand-made split (train/, val/, test/ each
    with real/ and fake/) or one folder with real/ and fake/ (split "all")."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Data folder {data_dir} does not exist.")
    if (data_dir / "split.csv").is_file():
        records = [{**row, "path": str(data_dir / row["path"])} for row in read_split_manifest(data_dir)]
        missing = []
        for record in records:
            problem = regular_file_problem(record["path"])
            if problem:  # an interrupted split, or files deleted by hand: say so, loudly
                missing.append({"path": record["path"], "reason": "listed in split.csv but " + (
                    "missing" if not Path(record["path"]).exists() else problem), "missing": True})
            record["jpeg_quality"] = jpeg_quality_of(record["path"]) \
                if record["format"] == "JPEG" and not problem else None
        return records, "manifest", missing
    splits = [s for s in SPLITS if (data_dir / s).is_dir()] or ["all"]
    records, unreadable = [], []
    for split in splits:
        folder = data_dir if split == "all" else data_dir / split
        for path, label in list_labelled_folder(folder):
            facts, reason = inspect_image(path)
            if reason:
                unreadable.append({"path": printable(path), "reason": reason})
                continue
            records.append({"split": split, "label": CLASS_NAMES[label], "path": str(path), **facts,
                            "jpeg_quality": jpeg_quality_of(path) if facts["format"] == "JPEG" else None})
    return records, "scan", unreadable


def property_of(record: dict, name: str):
    if name == "size":
        return f"{record['width']}x{record['height']}"
    return record[name]


# ----------------------------------------------------------------------------- the checks

def distributions(records: list[dict]) -> dict:
    """{property: {class: {value: count}}}. JPEG quality counts JPEG files only: that real and
    fake differ in format is the format check's finding, not a second one."""
    result = {}
    for name in CATEGORICAL:
        per_class = {c: Counter() for c in CLASS_NAMES}
        for record in records:
            if name != "jpeg_quality" or record["jpeg_quality"] is not None:
                per_class[record["label"]][str(property_of(record, name))] += 1
        result[name] = {c: dict(counts.most_common()) for c, counts in per_class.items()}
    return result


def categorical_flags(dists: dict) -> list[str]:
    """A value only one class has (on >= 1% of it), or one that dominates one class only."""
    flags = []
    for name, per_class in dists.items():
        totals = {c: sum(per_class[c].values()) for c in CLASS_NAMES}
        if min(totals.values()) == 0:
            continue  # e.g. JPEG quality when one class has no JPEGs at all
        for value in sorted(set(per_class["real"]) | set(per_class["fake"])):
            share = {c: per_class[c].get(value, 0) / totals[c] for c in CLASS_NAMES}
            for this, other in (("real", "fake"), ("fake", "real")):
                if share[this] >= DOMINANT_SHARE and share[other] < RARE_SHARE:
                    flags.append(f"{name} {value}: {share[this]:.0%} of {this} images but "
                                 f"{share[other]:.0%} of {other} images")
                elif share[other] == 0 and share[this] >= EXCLUSIVE_MIN_SHARE:
                    flags.append(f"{name} {value}: only {this} images have it "
                                 f"({share[this]:.1%} of them)")
    return flags


def summary_stats(values) -> dict | None:
    if not len(values):
        return None
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "median": float(median), "q1": float(q1), "q3": float(q3),
            "iqr": float(q3 - q1), "min": float(np.min(values)), "max": float(np.max(values))}


def file_size_check(records: list[dict]) -> tuple[dict, list[str]]:
    stats = {c: summary_stats([r["bytes"] for r in records if r["label"] == c]) for c in CLASS_NAMES}
    flags = []
    if all(stats.values()):
        real, fake = stats["real"]["median"], stats["fake"]["median"]
        ratio = max(real, fake) / max(min(real, fake), 1)
        stats["median_ratio"] = ratio
        if ratio > FILE_SIZE_RATIO:
            flags.append(f"file size: median {real:,.0f} bytes (real) vs {fake:,.0f} bytes (fake), "
                         f"{ratio:.1f}x apart")
    return stats, flags


def metadata_features(records: list[dict]) -> dict[str, np.ndarray]:
    """Per property, a feature matrix: numbers as they are, categories one-hot."""
    def one_hot(values):
        levels = sorted(set(values))
        return np.array([[v == level for level in levels] for v in values], dtype=np.float64)

    pixels = np.array([r["width"] * r["height"] for r in records], dtype=np.float64)
    file_bytes = np.array([r["bytes"] for r in records], dtype=np.float64)
    return {
        "format": one_hot([r["format"] for r in records]),
        "mode": one_hot([r["mode"] for r in records]),
        "size": np.column_stack([[r["width"] for r in records], [r["height"] for r in records]]),
        "jpeg_quality": np.column_stack([  # 0 and a flag for a file that is not a JPEG
            [r["jpeg_quality"] or 0 for r in records], [r["jpeg_quality"] is None for r in records]]),
        "file_size": np.log2(file_bytes)[:, None],
        "bytes_per_pixel": (file_bytes / pixels)[:, None],
    }


def separability(records: list[dict], seed: int = 0) -> dict:
    """Cross-validated balanced accuracy of classifiers that see only metadata: one decision stump
    per property, and a logistic regression on all of them. 0.5 is chance; near 1 means the
    classes can be told apart without looking at a single pixel."""
    y = np.array([CLASS_TO_IDX[r["label"]] for r in records])
    folds = min(5, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        return {"note": "too few images of one class to cross-validate", "stumps": {},
                "logistic_regression": None, "best": None}
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    features = metadata_features(records)

    def score(model, x) -> float:
        return float(balanced_accuracy_score(y, cross_val_predict(model, x, y, cv=cv)))

    stumps = {name: score(DecisionTreeClassifier(max_depth=1, class_weight="balanced",
                                                 random_state=seed), x)
              for name, x in features.items()}
    everything = np.column_stack(list(features.values()))
    logistic = score(make_pipeline(StandardScaler(), LogisticRegression(
        class_weight="balanced", max_iter=1000)), everything)
    best = max(stumps, key=stumps.get)
    return {"folds": folds, "stumps": stumps, "logistic_regression": logistic,
            "best": max(logistic, stumps[best]), "best_single_property": best}


def duplicates(records: list[dict]) -> dict:
    """Byte-identical files: across splits (a validation image that is a training image), across
    classes (one image labelled both real and fake), and plain copies within a split and class."""
    by_hash = defaultdict(list)
    for record in records:
        by_hash[record["sha256"]].append(record)
    across_splits, across_classes, within = [], [], 0
    for digest, copies in by_hash.items():
        if len(copies) < 2:
            continue
        paths = sorted(r["path"] for r in copies)
        if len({r["split"] for r in copies}) > 1:
            across_splits.append({"sha256": digest, "paths": paths})
        if len({r["label"] for r in copies}) > 1:
            across_classes.append({"sha256": digest, "paths": paths})
        if len({(r["split"], r["label"]) for r in copies}) == 1:
            within += len(copies) - 1
    return {"n_across_splits": len(across_splits), "n_across_classes": len(across_classes),
            "n_redundant_copies_within": within,
            "across_splits": across_splits, "across_classes": across_classes}


def duplicate_flags(dups: dict) -> list[str]:
    flags = []
    for key, what in (("across_splits", "across splits (the same image in training and "
                                        "evaluation)"),
                      ("across_classes", "across classes (one image labelled both real and fake)")):
        if dups[key]:
            example = " = ".join(dups[key][0]["paths"][:2])
            flags.append(f"{len(dups[key])} exact duplicate(s) {what}, e.g. {example}")
    return flags


# ----------------------------------------------------------------------------- the audit

@locks_folders(lambda a: (a["out_dir"],))  # a given out_dir: refused before the work
def audit_split(data_dir, out_dir=None, seed: int = 0, run_flags: list[str] | None = None) -> dict:
    """Audit data_dir (a split, a hand-made split, or one folder with real/ and fake/).

    Returns the findings (JSON-ready); `flags` lists every problem found, and they are also
    issued as one AuditWarning. Writes audit.json, audit.md, tables/audit_*.{md,csv,tex} and
    figures/audit_file_size.{png,pdf} to out_dir: by default data_dir/audit/ when data_dir is a
    split made by split_dataset, otherwise outputs/audit/<folder name> (raw data are only read).
    `run_flags` (RANDOM INIT, SYNTHETIC DATA) go on its figure, tables and audit.md: train passes
    its run's, whose config.json is not written yet; default: those of the run out_dir lies in
    (run_flags.flags_of_path), none outside a run."""
    data_dir = Path(data_dir)
    records, source, unreadable = image_records(data_dir)
    if not records:
        raise ValueError(f"No readable images in {data_dir}.")
    counts = Counter((r["split"], r["label"]) for r in records)
    dists = distributions(records)
    file_size, size_flags = file_size_check(records)
    separable = separability(records, seed)
    dups = duplicates(records)

    flags = categorical_flags(dists) + size_flags
    if separable["best"] is not None and separable["best"] > SEPARABLE_BALANCED_ACCURACY:
        best = separable["best_single_property"]
        flags.append(
            f"metadata alone separates real from fake with balanced accuracy "
            f"{separable['best']:.2f} (cross-validated; logistic regression on all properties "
            f"{separable['logistic_regression']:.2f}, best single property {best} "
            f"{separable['stumps'][best]:.2f})")
    flags += duplicate_flags(dups)
    missing = [u for u in unreadable if u.get("missing")]
    if missing:
        flags.append(f"{len(missing)} of the {len(records)} files listed in {data_dir / 'split.csv'} "
                     f"are missing or not regular files, e.g. {missing[0]['path']}: the split was "
                     "interrupted or files were deleted. Run split again with the same settings "
                     "to restore them.")
    unreadable_files = [u for u in unreadable if not u.get("missing")]
    if unreadable_files:
        flags.append(f"{len(unreadable_files)} file(s) could not be read, e.g. "
                     f"{unreadable_files[0]['path']}: {unreadable_files[0]['reason']}")

    findings = {
        "data_dir": str(data_dir), "source": source, "n_images": len(records),
        "counts": {split: {c: counts[(split, c)] for c in CLASS_NAMES}
                   for split in dict.fromkeys(r["split"] for r in records)},
        "properties": dists, "file_size_bytes": file_size,
        "jpeg_quality": {c: summary_stats([r["jpeg_quality"] for r in records
                                           if r["label"] == c and r["jpeg_quality"] is not None])
                         for c in CLASS_NAMES},
        "separability": separable, "duplicates": dups, "unreadable": unreadable,
        "thresholds": {"dominant_share": DOMINANT_SHARE, "rare_share": RARE_SHARE,
                       "exclusive_min_share": EXCLUSIVE_MIN_SHARE,
                       "file_size_ratio": FILE_SIZE_RATIO,
                       "separable_balanced_accuracy": SEPARABLE_BALANCED_ACCURACY},
        "flags": flags,
    }
    if out_dir is None:
        out_dir = data_dir / "audit" if source == "manifest" else \
            Path("outputs") / "audit" / data_dir.resolve().name
    out = Path(out_dir)
    # One writer (folder_lock.py); into a run's manifest when written into a run (train's audit/)
    with folder_lock(out), recording(out):
        write_audit(findings, records, out, run_flags)
    findings["out_dir"] = str(out)
    if flags:
        warnings.warn(f"Data audit of {data_dir} found {len(flags)} possible shortcut(s) or "
                      "leak(s); a detector may learn these instead of the content:\n"
                      + "\n".join(f"  - {flag}" for flag in flags)
                      + f"\nDetails: {out / 'audit.md'}", AuditWarning, stacklevel=2)
    return findings


# ----------------------------------------------------------------------------- writing it down

def property_rows(dists: dict) -> list[dict]:
    """One row per (property, value): count and share in each class; the most common values."""
    rows = []
    for name, per_class in dists.items():
        totals = {c: sum(per_class[c].values()) for c in CLASS_NAMES}
        values = Counter({v: per_class["real"].get(v, 0) + per_class["fake"].get(v, 0)
                          for v in set(per_class["real"]) | set(per_class["fake"])})
        shown = [v for v, _ in values.most_common(SHOW_VALUES)]
        for value in shown:
            rows.append({"property": name, "value": value, **{
                f"{c} share": per_class[c].get(value, 0) / totals[c] if totals[c] else None
                for c in CLASS_NAMES}, **{f"{c} n": per_class[c].get(value, 0) for c in CLASS_NAMES}})
        if len(values) > len(shown):
            rest = {c: sum(n for v, n in per_class[c].items() if v not in shown) for c in CLASS_NAMES}
            rows.append({"property": name, "value": f"other ({len(values) - len(shown)} values)",
                         **{f"{c} share": rest[c] / totals[c] if totals[c] else None
                            for c in CLASS_NAMES}, **{f"{c} n": rest[c] for c in CLASS_NAMES}})
    return rows


def summary_rows(findings: dict) -> list[dict]:
    rows = []
    for what, stats in (("file size (bytes)", findings["file_size_bytes"]),
                        ("JPEG quality (JPEGs only)", findings["jpeg_quality"])):
        for c in CLASS_NAMES:
            s = stats.get(c)
            rows.append({"quantity": what, "class": c, "n": s["n"] if s else 0,
                         "median": s["median"] if s else None, "q1": s["q1"] if s else None,
                         "q3": s["q3"] if s else None, "IQR": s["iqr"] if s else None})
    return rows


def separability_rows(separable: dict) -> list[dict]:
    rows = [{"classifier": f"decision stump on {name}", "balanced accuracy (CV)": score}
            for name, score in separable["stumps"].items()]
    rows.append({"classifier": "logistic regression on all properties",
                 "balanced accuracy (CV)": separable["logistic_regression"]})
    return rows


@paper_style
def plot_file_sizes(records: list[dict]):
    """File-size histograms per class on a log axis: a shift between them is visible at a glance."""
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    sizes = {c: np.array([r["bytes"] for r in records if r["label"] == c]) for c in CLASS_NAMES}
    low = max(1, min(s.min() for s in sizes.values() if s.size))
    high = max(s.max() for s in sizes.values() if s.size)
    bins = np.geomspace(low, max(high, low + 1), 40)
    for c, colour in zip(CLASS_NAMES, (REAL_COLOUR, FAKE_COLOUR)):
        if sizes[c].size:
            ax.hist(sizes[c], bins=bins, color=colour, histtype="step", lw=1.5,
                    label=f"{c} (median {np.median(sizes[c]):,.0f} B)")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")  # "900", not "9 x 10^2"
    ax.xaxis.set_major_formatter(plain)
    if high / low < 20:  # less than ~a decade: label the in-between ticks too, else they crowd
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="both", length=3.5)  # all labels on one line
    ax.set_xlabel("File size (bytes)"), ax.set_ylabel("Images")
    ax.set_title("File size by class")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def write_audit(findings: dict, records: list[dict], out: Path,
                run_flags: list[str] | None = None) -> None:
    """audit.json, the tables, the figure and audit.md; `run_flags` as audit_split says."""
    figure = out / "figures" / "audit_file_size"
    run_flags = flags_of_path(figure) if run_flags is None else run_flags  # as save_figure would
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(findings, indent=2) + "\n", encoding="utf-8")
    tables = {
        "audit_properties": (property_rows(findings["properties"]),
                             "Share of each class per file property (JPEG quality: JPEG files only)"),
        "audit_summary": (summary_rows(findings), "File size and JPEG quality per class"),
        "audit_separability": (separability_rows(findings["separability"]),
                               "How well metadata alone tells real from fake (balanced accuracy, "
                               "cross-validated; 0.5 = chance)"),
    }
    for stem, (rows, caption) in tables.items():
        if rows:
            write_table(rows, out / "tables" / stem, caption=caption, float_format="{:.3f}",
                        flags=run_flags)
    fig = plot_file_sizes(records)
    save_figure(fig, figure, flags=run_flags)
    plt.close(fig)
    (out / "audit.md").write_text(audit_markdown(findings, tables, run_flags), encoding="utf-8")


def audit_markdown(findings: dict, tables: dict, run_flags: list[str] = ()) -> str:
    dups = findings["duplicates"]
    note = flag_note(list(run_flags))  # the run's flags, as write_table notes them
    lines = [f"# Data audit: {findings['data_dir']}", "",
             *([f"_Note: **{note}**._", ""] if note else []),
             f"{findings['n_images']} images (from the {findings['source']}). Counts per split:", "",
             markdown_table([{"split": s, **c} for s, c in findings["counts"].items()]), "",
             "## Flags", ""]
    lines += [f"- {flag}" for flag in findings["flags"]] or \
        ["No shortcut found in format, JPEG quality, size, colour mode or file size, and no exact "
         "duplicates across splits or classes. (Near-duplicates were not searched for.)"]
    lines += ["", f"Exact duplicates: {dups['n_across_splits']} across splits, "
              f"{dups['n_across_classes']} across classes, {dups['n_redundant_copies_within']} "
              "redundant copies within a split and class.", ""]
    for stem, (rows, caption) in tables.items():
        if rows:
            lines += [f"## {caption}", "", markdown_table(rows, "{:.3f}"), ""]
    lines += ["![File size by class](figures/audit_file_size.png)", "",
              "Thresholds: " + ", ".join(f"{k} {v}" for k, v in findings["thresholds"].items()), ""]
    return "\n".join(lines)
