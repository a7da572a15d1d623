"""What a user scrolls through after a day of experiments: `runs [ROOT]` lists every run under a
folder (default outputs/), the notebook's and the command line's alike, one line each: when, which
weights (RANDOM INIT flagged), which data, the settings that differ between the listed runs, val
AUC [95% CI], test AUC when there is one, converged or not. Printed rounded; written as CSV with
every digit. No torch: it reads the runs' JSON files only.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .files import read_json_object
from .run_dir import (CONFIG_JSON, METRICS_TEST_JSON, METRICS_VAL_JSON, RunFileError,
                      read_run_config)
from .seeds import SEEDS_JSON

RUNS_CSV = "runs.csv"
# notebook.MARKER, the notebook's mark on the runs it made (not imported: notebook.py needs the
# [notebook] extra, and listing runs needs nothing but the standard library)
NOTEBOOK_MARKER = "made_by_notebook.json"
# config.json keys that are not settings (how the run went, where it lives), left out of "settings"
NOT_SETTINGS = ("out_dir", "overwrite", "trained_at", "versions", "train_seconds", "best_epoch",
                "epochs_run", "converged", "cache_dir", "device", "num_workers", "weights_record",
                "synthetic_data", "video_frames", "data_dir", "weights", "epochs", "parent_run",
                "layer3_cached", "trainable_parameters")
SKIPPED_FOLDERS = {"cache", "eval", "gradcam", "figures", "tables", "audit", ".ipynb_checkpoints"}
COLUMNS = ("run", "made by", "date", "weights", "data", "settings", "val AUC", "val AUC 95% CI",
           "test AUC", "converged")


def find_runs(root) -> list[Path]:
    """Every run directory under `root` (a folder holding config.json and metrics_val.json),
    sorted by path; cache and evaluation folders are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the folder your runs are in "
                                "(default outputs/).")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if d not in SKIPPED_FOLDERS and not d.startswith("."))
        if CONFIG_JSON in files and METRICS_VAL_JSON in files:
            found.append(Path(folder))
    return sorted(found)


def made_by(run: Path) -> str:
    """Who made the run: the notebook (its marker), train --seeds (a seed group), or train."""
    if (run / NOTEBOOK_MARKER).is_file():
        return "notebook"
    if (run.parent / SEEDS_JSON).is_file():
        return f"train --seeds ({run.parent.name})"
    if "parent_run" in (read_json_object(run / CONFIG_JSON) or {}):
        return "finetune"
    return "train"


def weights_text(config: dict) -> str:
    record = config.get("weights_record") or {}
    if record.get("pretrained") is False:
        return "RANDOM INIT"
    return str(record.get("weights") or config.get("weights"))


def run_row(run: Path, root: Path) -> tuple[dict, dict]:
    """(the run's row, its settings) for the table."""
    name = str(run.relative_to(root)) if run != root else run.name
    try:
        config = read_run_config(run)
    except (RunFileError, OSError) as error:
        return {"run": name, "made by": made_by(run), "date": f"unreadable: {error}"}, {}
    val = read_json_object(run / METRICS_VAL_JSON) or {}
    test = read_json_object(run / METRICS_TEST_JSON) or {}
    row = {"run": name, "made by": made_by(run), "date": config.get("trained_at"),
           "weights": weights_text(config), "data": config.get("data_dir"),
           "val AUC": val.get("roc_auc"), "val AUC 95% CI": (val.get("ci") or {}).get("roc_auc"),
           "test AUC": test.get("roc_auc"), "converged": config.get("converged")}
    return row, {k: v for k, v in config.items() if k not in NOT_SETTINGS}


def settings_that_differ(settings: dict[str, dict], ignore=()) -> dict[str, dict]:
    """{run: {setting: value}} with only the settings whose values are not all the same."""
    keys = sorted({key for values in settings.values() for key in values} - set(ignore))
    differing = [key for key in keys
                 if len({repr(values.get(key)) for values in settings.values()}) > 1]
    return {name: {key: values.get(key) for key in differing} for name, values in settings.items()}


def runs_table(root="outputs") -> list[dict]:
    """One row per run under `root`, with the settings that differ between them (only those)."""
    root = Path(root)
    runs = find_runs(root)
    rows, settings = [], {}
    for run in runs:
        row, values = run_row(run, root)
        rows.append(row)
        settings[row["run"]] = values
    differ = settings_that_differ(settings) if len(rows) > 1 else {}
    for row in rows:
        row["settings"] = "; ".join(f"{k}={v}" for k, v in differ.get(row["run"], {}).items())
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def cell_text(value) -> str:
    """A cell for people: numbers rounded to 3 digits, intervals as [lo, hi], None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(cell_text(v) for v in value) + "]"
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        return value[:16].replace("T", " ")  # 2026-12-05T09:12:00+00:00 -> 2026-12-05 09:12
    return str(value)


def format_runs(rows: list[dict], width: int = 48) -> str:
    """The table as fixed-width text; long cells are cut to `width` characters with an ellipsis."""
    if not rows:
        return "no runs found"
    cells = [[cell_text(row[c]) for c in COLUMNS] for row in rows]
    cells = [[text if len(text) <= width else text[:width - 1] + "…" for text in line]
             for line in cells]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(t.ljust(w) for t, w in zip(line, widths)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_runs_csv(rows: list[dict], path) -> Path:
    """The rows as CSV, every digit (intervals as JSON lists). An existing file is replaced only
    when it is a runs table this command wrote (its header), never another file."""
    path = Path(path)
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as f:
            if f.readline().strip() != ",".join(COLUMNS):
                raise FileExistsError(f"--csv {path} exists and is not a runs table: choose "
                                      "another --csv (nothing was overwritten).")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v)
                          for k, v in row.items()} for row in rows)
    return path
