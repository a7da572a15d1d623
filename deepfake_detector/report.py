"""The run report: report.md, written from the files a run directory already holds.

Run-directory layout that `write_report` reads (the training code writes it):
    config.json, history.json, data_counts.json, metrics_val.json, metrics_test.json,
    figures/learning_curves.png                     `plots.plot_history`
    figures/{split}_{name}.png for name in EVALUATION_FIGURES (`plots.save_evaluation_figures`
        with name_prefix=f"{split}_"); any other figures/*.png is shown under "Other figures"
    tables/*.md (+ .csv, .tex siblings)             `tables.write_table`
    robustness.json, cross_dataset.json             lists of row dicts
    gradcam/contact_sheet.png, gradcam/faithfulness.json
    audit/audit.json                                the data audit before training (`audit.audit_split`)

Every command that adds to a run rewrites its report (train, finetune, evaluate on the run's own
test split, robustness, cross-eval, gradcam into RUN/gradcam); `report --run RUN` rebuilds it
(`rebuild_report`). `write_report` puts the sections one after another: each is a function of
what the run directory holds that returns its Markdown lines, or none (add one the same way).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import CLASS_NAMES
from .folder_lock import folder_lock
from .manifest import recording
from .run_dir import (CONFIG_JSON, CROSS_DATASET_JSON, DATA_COUNTS_JSON, HISTORY_JSON,
                      METRICS_TEST_JSON, METRICS_VAL_JSON, PROBE_JSON, REPORT_MD, ROBUSTNESS_JSON,
                      RunFileError, read_run_config)
from .run_flags import synthetic_record_of, weights_record_of
from .plots import (EVALUATION_FIGURES, LEARNING_CURVES_FIGURE, epoch_of,
                                     best_epoch_by_val_loss)
from .tables import markdown_table, metrics_table_rows
from .video_metrics import report_lines as video_report_lines

RANDOM_INIT_WARNING = "**RANDOM INIT — NOT IMAGENET-PRETRAINED**"
SYNTHETIC_DATA_WARNING = "**SYNTHETIC DATA — NOT REAL IMAGES**"
AUDIT_JSON = "audit/audit.json"  # train's data audit (train.audit_data), beside audit/audit.md


# ----------------------------------------------------------------------------- run report

def load_json(path: Path):
    """The parsed file, None when absent; an unreadable file becomes a message, not a crash."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path.name}: {error}"}


def _image(run_dir: Path, relative: str, caption: str) -> list[str]:
    return [f"![{caption}]({relative})", ""] if (run_dir / relative).is_file() else []


def _report_warning(config: dict | None) -> list[str]:
    """The banners at the very top: RANDOM INIT (the weights record says pretrained false) and
    SYNTHETIC DATA (config.json's synthetic_data record), each with what it means."""
    if not isinstance(config, dict):
        return []
    lines = []
    record = weights_record_of(config)
    if record is not None and record.get("pretrained") is False:
        lines += [RANDOM_INIT_WARNING, "", f"Weights note: {record.get('note', 'none given')}", "",
                  "The backbone was not trained on ImageNet, so these numbers say nothing about a "
                  "pretrained ResNet-18 detector.", ""]
    synthetic = synthetic_record_of(config)
    if synthetic:
        lines += [SYNTHETIC_DATA_WARNING, "",
                  f"This run was trained and validated on the project's generated demo set "
                  f"({synthetic.get('raw_dir')}: {synthetic.get('n_per_class')} images per class, "
                  f"{synthetic.get('image_size')} px, seed {synthetic.get('seed')}, "
                  f"{synthetic.get('generator')} version {synthetic.get('generator_version')}), "
                  "not on photographs or real deepfakes. Its numbers show that the pipeline works; "
                  "they say nothing about detecting real deepfakes.", ""]
    return lines


def _report_audit(run_dir: Path) -> list[str]:
    """The data audit's finding (audit/audit.json, written before training), in a few lines."""
    findings = load_json(run_dir / AUDIT_JSON)
    if not isinstance(findings, dict) or not isinstance(findings.get("flags"), list):
        return []
    flags = findings["flags"]
    lines = ["## Data audit", ""]
    if flags:
        lines += [f"Before training, the audit of {findings.get('data_dir', 'the data')} found "
                  f"{len(flags)} difference(s) between real and fake that a model could learn "
                  "instead of the content (a shortcut):", ""]
        lines += [f"- {flag}" for flag in flags] + [""]
    else:
        lines += ["Before training, the audit found no shortcut in format, JPEG quality, size, "
                  "colour mode or file size, and no exact duplicates across splits or classes.", ""]
    if (run_dir / "audit" / "audit.md").is_file():
        lines += ["Details, tables and the file-size figure: [audit/audit.md](audit/audit.md).", ""]
    return lines


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


def _report_training(run_dir: Path, history, config) -> list[str]:
    lines = ["## Training", ""]
    if isinstance(history, list) and history:
        lines += [training_summary(history, config if isinstance(config, dict) else {}), ""]
    lines += _image(run_dir, f"figures/{LEARNING_CURVES_FIGURE}.png", "Learning curves")
    return lines if len(lines) > 2 else []


def restored_epoch(history: list, config: dict) -> int | None:
    """The epoch whose head the run restored: config.json's best_epoch, as training recorded it;
    for a run without it, early stopping's own rule over history.json (an epoch counts as better
    only by more than min_delta, loop.fit)."""
    if isinstance(config.get("best_epoch"), int):
        return config["best_epoch"]
    return best_epoch_by_val_loss(history, min_delta=float(config.get("min_delta") or 0.0))


def training_summary(history: list, config: dict) -> str:
    """Epochs run, the restored epoch with its val loss, and the training time, as config.json
    and train.log give them ("best epoch 60: ...", "training took 31.6 s")."""
    summary = f"{config.get('epochs_run') or len(history)} epoch(s) run"
    seconds = config.get("train_seconds")
    summary += (f"; training took {seconds:.1f} s (`train_seconds` in config.json, as train.log "
                "says)." if isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                else "; the training time was not recorded.")
    best = restored_epoch(history, config)
    entry = next((h for i, h in enumerate(history) if epoch_of(h, i) == best), None)
    if entry is not None and entry.get("val_loss") is not None:
        summary += (f" Best epoch {best} (val loss {entry['val_loss']:.4f}): its head was "
                    "restored. Early stopping counts an epoch as better only when it lowers the "
                    f"val loss by more than min_delta ({config.get('min_delta', 0)}).")
    return summary


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
    lines += video_report_lines(metrics)  # frames of videos: the videos lead (video_metrics.py)
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


def undefined_marked(value):
    """NaN (a rate over no images: the faithfulness of a run with no masked fake among its
    Grad-CAM images) as words a reader understands, not "nan"."""
    if isinstance(value, float) and value != value:
        return "undefined (no images to count)"
    return value


def _report_rows(title: str, data) -> list[str]:
    """A list of row dicts as a table; any other JSON as a code block."""
    if data is None:
        return []
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        body = markdown_table(data)
    elif isinstance(data, dict) and data and all(not isinstance(v, (dict, list)) for v in data.values()):
        body = markdown_table([{"key": k, "value": undefined_marked(v)} for k, v in data.items()])
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
    try:
        config = read_run_config(run_dir, required=False)
    except RunFileError as error:  # the report shows what it can, and says what is wrong
        config = {"unreadable": str(error)}
    metrics = {"test": load_json(run_dir / METRICS_TEST_JSON),
               "val": load_json(run_dir / METRICS_VAL_JSON)}
    lines = _report_warning(config)
    lines += [f"# Run report: {run_dir.resolve().name}", ""]
    preamble = len(lines)
    lines += _report_convergence(config)
    lines += _report_data(load_json(run_dir / DATA_COUNTS_JSON))
    lines += _report_audit(run_dir)
    evaluated = {split: m for split, m in metrics.items() if isinstance(m, dict)}
    lines += _report_probe(load_json(run_dir / PROBE_JSON), evaluated)
    if evaluated:
        lines += ["## Results", ""]
        for split, split_metrics in evaluated.items():
            lines += _report_split(run_dir, split, split_metrics, has_test="test" in evaluated)
    lines += _report_training(run_dir, load_json(run_dir / HISTORY_JSON), config)
    lines += _report_tables(run_dir)
    robustness = _report_rows("## Robustness", load_json(run_dir / ROBUSTNESS_JSON))
    lines += robustness + (_image(run_dir, "figures/robustness.png", "robustness") if robustness else [])
    lines += _report_rows("## Cross-dataset", load_json(run_dir / CROSS_DATASET_JSON))
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
    report = run_dir / REPORT_MD
    with recording(run_dir):  # a rewritten report stays one of the run's own files
        report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


def rebuild_report(run_dir) -> Path:
    """`report --run RUN`: report.md of a run rebuilt from the files it holds now, under the run's
    lock (folder_lock.py). A folder that is not a run: one line saying what to pass."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_JSON).is_file():
        raise FileNotFoundError(
            f"--run {run_dir}: not a run directory (no {CONFIG_JSON} in it); pass the folder "
            "that `train` wrote (its --out), e.g. outputs/runs/r1.")
    with folder_lock(run_dir):
        return write_report(run_dir)
