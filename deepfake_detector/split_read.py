"""Reading a split: the manifest's format (split.csv), the items of one split, hand-made split
folders, and the groups a split was made with. What training, prediction and the audit read.

No torch here; reading only (drop_unreadable decodes files to check them)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from . import CLASS_TO_IDX
from .discovery import find_class_folders, find_images, inspect_image
from .split_errors import SplitError, list_message, warn_notes

SPLITS = ("train", "val", "test")
MANIFEST_CSV = "split.csv"
SETTINGS_JSON = "split.json"
MANIFEST_COLUMNS = ("split", "label", "path", "source", "sha256", "group",
                    "bytes", "format", "width", "height", "mode")


def read_split_manifest(out_dir: str | os.PathLike) -> list[dict]:
    """The rows of out_dir/split.csv, with bytes, width and height as ints."""
    path = Path(out_dir) / MANIFEST_CSV
    if not path.is_file():
        raise SplitError(f"No split manifest {path}. "
                         f"Make one with split_dataset(raw_dir, '{out_dir}').")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("bytes", "width", "height"):
            row[key] = int(row[key])
    return rows


def list_split(data_dir: str | os.PathLike, split: str) -> list[tuple[Path, int]]:
    """[(image path, label 0 real / 1 fake)] of one split, from data_dir/split.csv when there is one,
    else by scanning data_dir/<split>/{real,fake} (folders made by hand; names as for raw data)."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise SplitError(f"split must be one of {SPLITS}; got {split!r}.")
    manifest = data_dir / MANIFEST_CSV
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
        (skipped.append(f"{path}: {reason}") if reason else good.append((path, label)))
        if facts and facts["frames"] > 1:
            several_frames.append(f"{path}: {facts['frames']} frames")
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
