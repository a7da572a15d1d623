"""Reading a split: the manifest's format (split.csv), the items of one split, hand-made split
folders, and the groups a split was made with. What training, prediction and the audit read.

No torch here; reading only (drop_unreadable decodes files to check them)."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from . import CLASS_TO_IDX
from .discovery import find_class_folders, find_images, inspect_image
from .files import inside, printable
from .split_errors import SplitError, list_message, warn_notes

SPLITS = ("train", "val", "test")
MANIFEST_CSV = "split.csv"
SETTINGS_JSON = "split.json"
MANIFEST_COLUMNS = ("split", "label", "path", "source", "sha256", "group",
                    "bytes", "format", "width", "height", "mode")
PENDING_CSV = "split.pending.csv"  # the rows of a split whose files are still being placed
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def read_split_manifest(out_dir: str | os.PathLike, name: str = MANIFEST_CSV) -> list[dict]:
    """The rows of out_dir/split.csv (or `name`), with bytes, width and height as ints. Every row
    is checked: all columns there, a known split and label, numbers, a SHA-256, a `path` inside
    out_dir/<split> and a relative `source` that does not climb out (split_files checks it is
    inside raw_dir too). A row that is not so is a SplitError naming the file, row and value."""
    path = Path(out_dir) / name
    if not path.is_file():
        raise SplitError(f"No split manifest {path}. "
                         f"Make one with split_dataset(raw_dir, '{out_dir}').")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SplitError(f"{path} lacks the column(s) {', '.join(missing)}: it is not a "
                                 "split manifest split_dataset wrote. Split again into a new folder.")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise SplitError(f"{path} is not a readable split manifest ({error}). Split again "
                         "into a new folder.") from None
    resolved: dict = {}  # each folder resolved once, not once a row
    for number, row in enumerate(rows, start=1):
        problem = _row_problem(Path(out_dir), row, resolved)
        if problem:
            raise SplitError(f"{path}, row {number} (line {number + 1}): {problem}. The manifest "
                             "was edited or damaged; nothing was changed. Put back the one "
                             "split_dataset wrote, or split again into a new folder.")
    return rows


def _row_problem(out_dir: Path, row: dict, resolved: dict) -> str | None:
    """What is wrong with one row of a split manifest (converting its numbers), or None."""
    empty = [c for c in MANIFEST_COLUMNS if row.get(c) is None]
    if empty:
        return f"no value for {', '.join(empty)}"
    if None in row:
        return "more values than columns"
    if row["split"] not in SPLITS:
        return f"split {row['split']!r} is not one of {', '.join(SPLITS)}"
    if row["label"] not in CLASS_TO_IDX:
        return f"label {row['label']!r} is not one of {', '.join(CLASS_TO_IDX)}"
    for key in ("bytes", "width", "height"):
        try:
            row[key] = int(row[key])
        except ValueError:
            return f"{key} {row[key]!r} is not a whole number"
    if not SHA256_HEX.fullmatch(row["sha256"]):
        return f"sha256 {row['sha256']!r} is not a SHA-256"
    try:
        placed = inside(out_dir, row["path"], resolved=resolved)
    except ValueError as error:
        return f"path {error}"
    split_folder = os.fspath(inside(out_dir, row["split"], resolved=resolved))
    if not os.fspath(placed).startswith(split_folder + os.sep):
        return f"path {row['path']!r} is not inside {out_dir / row['split']}"
    source = os.path.normpath(row["source"])
    if os.path.isabs(source) or source.split(os.sep)[0] in ("..", ".", "") or "\0" in source:
        return f"source {row['source']!r} is not a path inside the raw data folder"
    return None


def list_split(data_dir: str | os.PathLike, split: str) -> list[tuple[Path, int]]:
    """[(image path, label 0 real / 1 fake)] of one split, from data_dir/split.csv when there is one,
    else by scanning data_dir/<split>/{real,fake} (folders made by hand; names as for raw data)."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise SplitError(f"split must be one of {SPLITS}; got {split!r}.")
    manifest = data_dir / MANIFEST_CSV
    if not manifest.is_file() and (data_dir / PENDING_CSV).is_file():
        raise SplitError(f"The split in {data_dir} was interrupted before all its files were "
                         f"placed (there is {PENDING_CSV}, no {MANIFEST_CSV}). Run the same split "
                         "command again to complete it.")
    if manifest.is_file():
        items = [(data_dir / row["path"], CLASS_TO_IDX[row["label"]])
                 for row in read_split_manifest(data_dir) if row["split"] == split]
        if not items:
            hint = " Split again with test_fraction > 0 to have one." if split == "test" else ""
            raise SplitError(f"{manifest} lists no '{split}' images.{hint}")
        missing = [path for path, _ in items if not path.is_file()]
        if missing:
            raise SplitError(f"{len(missing)} of the {len(items)} '{split}' images in {manifest} are "
                             f"missing, e.g. {missing[0]}. Run split_dataset again with the same "
                             "settings to restore them.")
        return items
    folder = data_dir / split
    if not folder.is_dir():
        hint = _raw_data_hint(data_dir)
        if hint:
            raise SplitError(f"No '{split}' split in {data_dir}.{hint}")
        raise SplitError(f"No '{split}' split in {data_dir}: neither {manifest} nor the folder "
                         f"{folder} exists. Make it with split_dataset(raw_dir, '{data_dir}'), or put "
                         f"images into {folder}/real/ and {folder}/fake/ yourself.")
    return list_labelled_folder(folder)


def drop_unreadable(items: list[tuple[Path, int]], where) -> list[tuple[Path, int]]:
    """The items whose files decode; the others are listed in one SplitWarning (how many, which,
    why). For folders split_dataset never checked (hand-made splits, other data sets)."""
    good, skipped, several_frames = [], [], []
    for path, label in items:
        facts, reason = inspect_image(Path(path))
        (skipped.append(f"{printable(path)}: {reason}") if reason else good.append((path, label)))
        if facts and facts["frames"] > 1:
            several_frames.append(f"{printable(path)}: {facts['frames']} frames")
    if several_frames:
        warn_notes([list_message(f"{len(several_frames)} files in {where} hold several frames "
                                 "(animation or pages); only the first frame of each is used:",
                                 several_frames)], stacklevel=3)
    if skipped:
        warn_notes([list_message(f"Left out {len(skipped)} of the {len(items)} files in {where} "
                                 "that are not readable images:", skipped)], stacklevel=3)
    if not good:
        raise SplitError(f"No readable images in {where}; see the files listed above.")
    return good


def _raw_data_hint(data_dir: Path) -> str:
    """A raw folder given where a split is expected: say how to split it (into another folder)."""
    try:
        find_class_folders(data_dir)
    except SplitError:
        return ""
    return (f" {data_dir} looks like raw data (real/ and fake/ folders): split it first, into "
            f"another folder: python -m deepfake_detector split --raw {data_dir} --out "
            f"{data_dir.parent / 'data' if data_dir.name != 'data' else data_dir.parent / 'data_split'}.")


def list_labelled_folder(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """[(image path, label)] of any folder holding real/ and fake/ (same spellings as raw data):
    a split folder made by hand, or another data set to test a trained model on."""
    items = []
    for label, class_folder in find_class_folders(folder).items():
        images = find_images(class_folder)
        if not images:
            raise SplitError(f"Class folder {class_folder} has no images.")
        items += [(path, CLASS_TO_IDX[label]) for path in images]
    return items


def split_groups(data_dir: str | os.PathLike, items) -> list[str] | None:
    """The group (video, identity) of each item when the split was made with `group_by`, so that
    results can be reported per group as well as per frame; None otherwise."""
    data_dir = Path(data_dir)
    settings_file = data_dir / "split.json"
    if not settings_file.is_file() or not json.loads(settings_file.read_text()).get(
            "settings", {}).get("group_by"):
        return None
    group_of = {(data_dir / row["path"]).resolve(): row["group"]
                for row in read_split_manifest(data_dir)}
    groups = [group_of.get(Path(path).resolve()) for path, _ in items]
    return groups if all(g is not None for g in groups) else None
