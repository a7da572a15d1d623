"""Result tables for a paper: one list of row dicts written as Markdown, CSV and LaTeX side by side
(`write_table`), and the rows of the main results table from a `compute_metrics` dict.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .run_flags import flag_note, flags_of_path

# ----------------------------------------------------------------------------- tables

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def table_columns(rows: list[dict]) -> list[str]:
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
    columns = table_columns(rows)
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
    columns = table_columns(rows)
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
        return json.dumps(plain_value(value))
    return plain_value(value)


def write_table(rows: list[dict], path_stem, caption: str = "",
                float_format: str = "{:.4f}", flags: list[str] | None = None) -> list[Path]:
    """Write path_stem.md (GitHub Markdown), .csv (full precision) and .tex (booktabs; the label
    is tab:<file name>). Columns are every key of every row in order of first appearance.
    `flags` (default: those of the run the table is written into, run_flags.flags_of_path) are
    named in each file: a note under the Markdown table, a first CSV line starting with '#', a
    '%' comment line and the caption in LaTeX."""
    if not rows:
        raise ValueError("no rows to write")
    stem = Path(path_stem)
    note = flag_note(flags_of_path(stem) if flags is None else flags)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path, tex_path = (Path(f"{stem}.{ext}") for ext in ("md", "csv", "tex"))
    markdown = markdown_table(rows, float_format) + (f"\n\n_Note: **{note}**._" if note else "")
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + markdown + "\n", encoding="utf-8")
    columns = table_columns(rows)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        if note:  # pandas: read_csv(path, comment="#")
            f.write(f"# {note}\n")
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({col: _csv_cell(row.get(col)) for col in columns} for row in rows)
    label = "tab:" + "".join(c if c.isalnum() else "-" for c in stem.name)
    if note and caption:
        caption = f"{caption}. {note}"
    tex_path.write_text((f"% {note}\n" if note else "") + latex_table(rows, caption, label, float_format),
                        encoding="utf-8")
    return [md_path, csv_path, tex_path]


def metrics_table_rows(metrics: dict) -> list[dict]:
    """Rows (metric, value, 95% CI) for the main results table, from a `compute_metrics` dict."""
    # Imported here: predict writes its files with this module, and metrics.py pulls in
    # scikit-learn, ~3 s of import that a predict never needs.
    from .metrics import ECE_BINS
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


def plain_value(value):
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
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value
