"""The `compare` command's files: each run's (or seed group's) P(fake) on the same images, the
guards (different sizes, different splits, the split that chose a threshold), and what it writes:
compare.json, compare.md, predictions.csv, the Markdown/CSV/LaTeX tables and one figure with the
ROC curves overlaid, each with its 95 % bootstrap band. The numbers are compare.py's.

Predictions come from each run's checkpoint on the compared files, through the run's own
preprocessing (so runs trained at different image sizes compare on the same files), and from its
feature cache when it has these features already (config.json's cache_dir): a frozen backbone's
features serve every head on it, so the heads of a seed group cost one extraction.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .compare import Entry, compare_entries, pair_rows, run_rows
from .delong import bootstrap_counts
from .files import check_output_folder, sha256_of_file, write_json
from .folder_lock import LOCK_FILE, folder_lock
from .run_dir import CONFIG_JSON, read_run_config
from .runs_table import settings_that_differ
from .seeds import SEEDS_JSON
from .split_read import MANIFEST_CSV, drop_unreadable, list_labelled_folder, list_split

# config.json keys that say how a run went or where it lives, not how it was made
NOT_SETTINGS = ("out_dir", "overwrite", "trained_at", "versions", "train_seconds", "best_epoch",
                "epochs_run", "converged", "cache_dir", "device", "num_workers", "weights_record",
                "synthetic_data", "video_frames", "deterministic", "parent_run", "layer3_cached",
                "trainable_parameters")
PREPROCESSING = ("img_size", "decode", "resize", "precision")
ROC_GRID = np.linspace(0, 1, 201)
PAIR_FORMAT = "{:.4g}"  # 4 significant digits: a p-value of 3e-12 is not printed as 0.0000


def compared_items(data_dir, split: str | None) -> tuple[list, str]:
    """(items, split) to compare on: a split folder's `split` (default test when it has one, else
    val), or every image of a folder holding real/ and fake/ ("all")."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data {data_dir} is not a folder: give a split folder (with "
                                "split.csv) or a folder holding real/ and fake/.")
    if (data_dir / MANIFEST_CSV).is_file() or any((data_dir / s).is_dir()
                                                  for s in ("train", "val", "test")):
        split = split or ("test" if (data_dir / "test").is_dir() else "val")
        items = list_split(data_dir, split)
        if not (data_dir / MANIFEST_CSV).is_file():
            items = drop_unreadable(items, f"{data_dir}/{split}")
        return items, split
    return drop_unreadable(list_labelled_folder(data_dir), data_dir), "all"


def group_members(path: Path) -> tuple[list[Path], list[int]] | None:
    """A seed group's member runs and seeds (from its seeds.json), or None for a single run."""
    record_path = path / SEEDS_JSON
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        members = [(path / run["run"], int(run["seed"])) for run in record["runs"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{record_path} is not a seed group's summary ({error}); train the group "
                         "again with train --seeds, or pass its runs one by one.") from None
    return [run for run, _ in members], [seed for _, seed in members]


class Predictor:
    """P(fake) of runs on one list of images. Features are shared by runs on the same backbone and
    preprocessing (a seed group's heads), and read from a run's feature cache when it has them."""

    def __init__(self, items, device: str = "auto", num_workers=None, log=print):
        self.items, self.device, self.num_workers, self.log = items, device, num_workers, log
        self.features = {}

    def __call__(self, run_dir: Path) -> tuple[np.ndarray, dict]:
        """(P(fake) per item, checkpoint without its weights) of one run."""
        import torch
        from .features import cached_features
        from .inference import decision_threshold
        from .model import backbone_fingerprint
        from .preprocessing import Preprocessing
        from .run_dir import load_run
        model, checkpoint = load_run(run_dir, self.device)
        prep = Preprocessing.from_checkpoint(checkpoint)
        key = (backbone_fingerprint(model), json.dumps(prep.record(), sort_keys=True))
        if key not in self.features:
            cache = (read_run_config(run_dir, required=False) or {}).get("cache_dir")
            self.features = {key: cached_features(  # a cache folder gone (a scratch one): none
                model, self.items, prep, cache_dir=cache if cache and Path(cache).is_dir() else None,
                num_workers=self.num_workers, desc=f"{Path(run_dir).name} features",
                log=self.log)}  # one backbone's features at a time: memory stays one set
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model.fc(self.features[key].to(device).float()).squeeze(1)
        checkpoint["decision_threshold"] = decision_threshold(checkpoint)
        return torch.sigmoid(logits).cpu().numpy().astype(float), checkpoint


def load_entry(path, predict: Predictor, name: str) -> tuple[Entry, dict]:
    """An Entry for a run or a seed group folder, and the settings it was trained with."""
    path = Path(path)
    members = group_members(path)
    runs, seeds = members if members else ([path], None)
    scores, thresholds = [], []
    for run in runs:
        p, checkpoint = predict(run)
        scores.append(p)
        thresholds.append(checkpoint["decision_threshold"])
    settings = read_run_config(runs[0])
    if seeds is not None:
        settings = {**settings, "seed": "seeds " + ",".join(map(str, seeds))}
    return Entry(name, np.vstack(scores), float(np.mean(thresholds)), settings, seeds), settings


def check_runs(paths) -> None:
    """Every path a run directory or a seed group folder, checked before any image is read."""
    for path in map(Path, paths):
        members = group_members(path)
        for run in members[0] if members else [path]:
            if not (run / CONFIG_JSON).is_file():
                raise FileNotFoundError(f"{run} is not a run directory (no {CONFIG_JSON}): pass "
                                        "folders that train (or train --seeds) wrote.")


def entry_names(paths) -> list[str]:
    """Each run's name in the tables: its folder's name, or more of its path when two share one."""
    paths = [Path(p) for p in paths]
    for depth in range(1, 6):
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def split_identity(data_dir) -> str | None:
    """What tells two training splits apart: the SHA-256 of their split.csv, else the folder."""
    if not data_dir:
        return None
    manifest = Path(data_dir) / MANIFEST_CSV
    return sha256_of_file(manifest) if manifest.is_file() else str(Path(data_dir).resolve())


def guard_notes(names, settings: list[dict], data_dir, split: str) -> list[str]:
    """The warnings a comparison carries: different preprocessing (still the same files),
    different training splits, and the split that chose a run's threshold and best epoch."""
    notes = []
    for key in PREPROCESSING:
        values = [s.get(key) for s in settings]
        if len({repr(v) for v in values}) > 1:
            notes.append(f"the runs differ in {key} ({', '.join(f'{n}: {v}' for n, v in zip(names, values))}): "
                         "they are compared on the same files, each through its own preprocessing")
    trained_on = [split_identity(s.get("data_dir")) for s in settings]
    if len(set(trained_on)) > 1:
        notes.append("WARNING: the runs were trained on different splits (" + ", ".join(
            f"{n}: {s.get('data_dir')}" for n, s in zip(names, settings)) + "): an image compared "
            "here may have been a training image of one of them")
    here = split_identity(data_dir)
    own = [n for n, identity in zip(names, trained_on) if identity == here]
    if own and split == "val":
        notes.append(f"compared on val, the split that chose the threshold and the best epoch of "
                     f"{', '.join(own)}: their accuracy and AUC here are optimistic; compare on a "
                     "test split for the claim you report")
    elif own and split == "train":
        notes.append(f"compared on train, the images {', '.join(own)} learned from: these numbers "
                     "say nothing about new images")
    return notes


def roc_band(y: np.ndarray, score: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(lo, hi) of the true-positive rate at each false-positive rate of ROC_GRID: the central 95 %
    of the ROC curves of the paired stratified bootstrap resamples (vertical averaging)."""
    order = np.argsort(-score, kind="mergesort")
    is_fake = y[order] == 1
    ends = np.r_[np.diff(score[order]) != 0, True]  # the last image of each distinct score
    curves = np.empty((n_bootstrap, ROC_GRID.size))
    for rows, counts in bootstrap_counts(y, n_bootstrap, seed):
        weights = counts[:, order]
        tpr = np.cumsum(np.where(is_fake, weights, 0), axis=1)[:, ends] / is_fake.sum()
        fpr = np.cumsum(np.where(is_fake, 0, weights), axis=1)[:, ends] / (~is_fake).sum()
        for r, (x, t) in enumerate(zip(fpr, tpr)):
            curves[rows.start + r] = np.interp(ROC_GRID, np.r_[0.0, x], np.r_[0.0, t])
    return np.percentile(curves, [2.5, 97.5], axis=0)


def plot_roc_overlay(y, entries: list[Entry], result: dict, n_bootstrap: int, seed: int):
    """One figure: every entry's ROC curve with its 95 % bootstrap band, AUC [CI] in the legend."""
    from sklearn.metrics import roc_curve
    from .figures import paper_style, plt
    colours = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
    with paper_style():
        fig, ax = plt.subplots(figsize=(4.6, 4.6))
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.45", label="chance")
        for k, (entry, run) in enumerate(zip(entries, result["runs"])):
            colour = colours[k % len(colours)]
            lo, hi = roc_band(y, entry.scores, n_bootstrap, seed)
            ax.fill_between(ROC_GRID, lo, hi, color=colour, alpha=0.18, lw=0)
            fpr, tpr, _ = roc_curve(y, entry.scores)
            ci = run["roc_auc_ci"]
            name = entry.name + (f" (mean of {len(entry.seeds)} seeds)" if entry.is_group else "")
            ax.plot(fpr, tpr, lw=1.6, color=colour,
                    label=f"{name}: AUC {run['roc_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01), ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (real called fake)")
        ax.set_ylabel("True positive rate (fake caught)")
        ax.set_title("ROC curves, 95% bootstrap bands (paired)")
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
    return fig


def check_compare_out(out) -> Path:
    """--out: a new or empty folder (a comparison never overwrites another)."""
    out = check_output_folder(out, "--out")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files: choose a new folder for this "
                              "comparison (nothing was overwritten).")
    return out


def default_out() -> Path:
    return Path("outputs") / "compare" / time.strftime("%Y%m%d-%H%M%S")


def compare_runs(paths, data_dir, split: str | None = None, out=None, n_bootstrap: int = 1000,
                 seed: int = 0, device: str = "auto", num_workers=None, log=print) -> dict:
    """Compare runs (or seed groups) on the same images of `data_dir` (its `split`); write the
    tables, the figure and compare.json into `out` (default outputs/compare/<time>). Returns the
    result: compare.py's numbers, plus the guards' notes and where the files are."""
    if len(paths) < 2:
        raise ValueError("compare needs at least two runs (or seed group folders)")
    out = check_compare_out(out or default_out())
    check_runs(paths)
    items, split = compared_items(data_dir, split)
    names = entry_names(paths)
    predict = Predictor(items, device, num_workers, log)
    loaded = [load_entry(path, predict, name) for path, name in zip(paths, names)]
    entries, settings = [entry for entry, _ in loaded], [s for _, s in loaded]
    y = np.array([label for _, label in items])
    result = compare_entries(y, entries, n_bootstrap, seed)
    result.update({"data": str(data_dir), "split": split, "paths": [str(p) for p in paths],
                   "notes": guard_notes(names, settings, data_dir, split),
                   "settings_that_differ": settings_that_differ(
                       dict(zip(names, settings)), NOT_SETTINGS)})
    with folder_lock(out):
        write_comparison(out, items, entries, result, n_bootstrap, seed)
    result["out"] = str(out)
    return result


def comparison_flags(entries: list[Entry]) -> list[str]:
    """RANDOM INIT, SYNTHETIC DATA: a flag of any compared run flags the comparison's tables and
    figure, which leave the runs' folders and go into papers on their own."""
    from .run_flags import flags_of_config
    return list(dict.fromkeys(flag for entry in entries for flag in flags_of_config(entry.settings)))


def write_comparison(out: Path, items, entries: list[Entry], result: dict, n_bootstrap: int,
                     seed: int) -> None:
    """compare.json, compare.md, predictions.csv, tables/{runs,pairs}.{md,csv,tex},
    figures/roc_overlay.{png,pdf}."""
    from .figures import plt, save_figure
    from .tables import markdown_table, write_table
    y = np.array([label for _, label in items])
    runs = run_rows(result, result["settings_that_differ"])
    pairs = pair_rows(result)
    level = f"{round(100 * result['ci_level'])}%"
    flags = comparison_flags(entries)
    write_table(runs, out / "tables" / "runs", caption=f"Runs on the same {len(y)} images "
                f"({result['split']} of {result['data']}), ROC-AUC with {level} CI", flags=flags)
    write_table(pairs, out / "tables" / "pairs", caption="Paired tests, AUC difference A - B"
                + (", Holm-corrected across the pairs" if result["holm"] else ""),
                float_format=PAIR_FORMAT, flags=flags)
    save_figure(plot_roc_overlay(y, entries, result, n_bootstrap, seed),
                out / "figures" / "roc_overlay", flags=flags)
    plt.close("all")
    columns = {entry.name: entry.scores for entry in entries}
    lines = ["path,label," + ",".join(json.dumps(name) for name in columns)]
    lines += [f"{json.dumps(str(path))},{label}," + ",".join(repr(float(p[i])) for p in
                                                               columns.values())
              for i, (path, label) in enumerate(items)]
    (out / "predictions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "compare.json", result)
    (out / "compare.md").write_text(comparison_markdown(result, runs, pairs, markdown_table),
                                    encoding="utf-8")


def monte_carlo_note(result: dict) -> str:
    """How precisely the resamples fix the ΔAUC intervals' ends, largest over the pairs."""
    error = max((max(hi - lo for lo, hi in pair["delta_auc_ci_bootstrap_mc_bounds"]) / 2
                 for pair in result["pairs"]), default=0.0)
    return (f" (at this many resamples the ΔAUC intervals' ends are known to ±{error:.4f}, their "
            "Monte Carlo error; a larger --n-bootstrap shrinks it)")


def comparison_markdown(result: dict, runs, pairs, markdown_table) -> str:
    """compare.md: the two tables, the guards' notes and how to read a p-value here."""
    notes = result["notes"] + [f"{pair['a']} against {pair['b']}: {pair['dominant_noise']}"
                               for pair in result["pairs"] if "dominant_noise" in pair]
    text = [f"# Comparison on {result['split']} of {result['data']}", "",
            markdown_table(runs), "", markdown_table(pairs, PAIR_FORMAT), "",
            f"Intervals: {result['ci_method']}, {result['n_bootstrap']} resamples{monte_carlo_note(result)}. "
            "Tests: " + "; ".join(f"{k}: {v}" for k, v in result["tests"].items() if v) + ".", ""]
    text += [f"- {note}" for note in notes] + ([""] if notes else [])
    text += ["A p-value here answers one question: if the two runs ranked images equally well "
             "*on images like these*, how often would a test set of this size show a difference at "
             "least this large? It does not say how large the difference is (read ΔAUC and its "
             "interval), nor that it would survive another seed, another split or another data "
             "set.", ""]
    return "\n".join(text)

