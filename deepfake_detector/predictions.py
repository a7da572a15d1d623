"""Per-image prediction files (.json or .csv): written row by row as a stream, so memory does not
grow with the number of images, and atomically (the file appears whole or not at all); read back
with numbers parsed.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from .files import printable, temporary_path
from .tables import table_columns, plain_value

# ----------------------------------------------------------------------------- prediction files

_FIRST_COLUMNS = ("image_id", "prediction")
_TEXT_COLUMNS = {"image_id", "path", "split", "group", "source"}  # never parsed as numbers


def _clean_prediction_row(row: dict, columns: list[str]) -> dict:
    """The row checked (P(fake) in [0, 1]) and made JSON/CSV-ready, its keys in `columns` order."""
    missing = [key for key in _FIRST_COLUMNS if key not in row]
    if missing:
        raise ValueError(f"prediction row {row!r} lacks {missing}")
    extra = [key for key in row if key not in columns]
    if extra:
        raise ValueError(f"prediction row {row!r} has keys {extra} that the rows before it lack; "
                         "every streamed row needs the keys of the first")
    # A file name that is not UTF-8 is written escaped (caf\xe9.png), as in every other output.
    clean = {col: printable(value) if isinstance(value, str) else value
             for col, value in ((col, plain_value(row[col])) for col in columns if col in row)}
    if not isinstance(clean["prediction"], (int, float)) or not 0 <= clean["prediction"] <= 1:
        raise ValueError(f"prediction must be P(fake) in [0, 1], got {clean['prediction']!r} "
                         f"for {clean['image_id']!r}")
    clean["image_id"] = printable(str(clean["image_id"]))
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
        body, keys = rows, table_columns(rows)
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
    temporary = temporary_path(path, f"{os.getpid()}.tmp")
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


# ----------------------------------------------------------------------------- skipped files

SKIPPED_SHOWN = 10  # names one warning shows; the full list goes to a file


def reason_kind(reason: str) -> str:
    """What a skip reason says, without the details of one file, for counting: its first clause,
    numbers as N ("empty file", "not an image", "cannot be decoded", "EPS images are not
    supported", "N pixels")."""
    first = re.split(r" \(|; |: |, ", str(reason), maxsplit=1)[0].strip()
    return re.sub(r"\d[\d,]*", "N", first) or str(reason)


def skipped_message(headline: str, skipped, list_file=None) -> str:
    """One warning for any number of skipped files: the headline, the count per kind of reason,
    the first SKIPPED_SHOWN as "path: reason", and, when there are more, where the full list is
    (`list_file`)."""
    skipped = list(skipped)
    kinds = Counter(reason_kind(why) for _, why in skipped)
    lines = [f"{headline}; by reason: "
             + ", ".join(f"{kind} ({n})" for kind, n in kinds.most_common())]
    lines += [f"  {printable(path)}: {printable(why)}" for path, why in skipped[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        where = f": the full list is in {list_file}" if list_file else ""
        lines.append(f"  ... and {len(skipped) - SKIPPED_SHOWN} more{where}")
    return "\n".join(lines)


def default_skipped_list(command: str = "predict") -> Path:
    """Where the full list of skipped files goes when the results went to the screen:
    outputs/<command>-skipped-<time>-<pid>.csv, under the working directory."""
    return Path("outputs") / f"{command}-skipped-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.csv"


def skipped_list_beside(out_file) -> Path:
    """The full list of skipped files of a predictions file: preds.csv -> preds.skipped.csv."""
    out_file = Path(out_file)
    return out_file.with_name(f"{out_file.stem}.skipped.csv")


def write_skipped_list(skipped, path) -> Path:
    """Every skipped file as CSV (path, reason), written atomically."""
    path = Path(path)
    with atomic_text_file(path) as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows((printable(p), printable(why)) for p, why in skipped)
    return path
