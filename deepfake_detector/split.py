"""Check raw real/fake image folders and split them into train/val(/test), with a manifest.

    dataset_raw/                     data/
      real/  *.jpg *.png ...    ->     train/{real,fake}/   copies (or hard links) of raw images
      fake/  *.jpg *.png ...           val/{real,fake}/
                                       test/{real,fake}/    only when test_fraction > 0
                                       split.csv            one row per image: origin, hash, size, ...
                                       split.json           settings, counts, left-out files, warnings

Every image is decoded once here, so unreadable files are found now and not in the middle of
training. The split is stratified (each class on its own), seeded, and independent of the order
the filesystem lists files in. Images that belong together -- byte-identical copies and, when asked,
the frames of one video -- land in one split, so validation never scores a copy of a training image.
Raw files are only ever read: never moved, edited or deleted. No torch here; the training and
predict code read what this module writes.

This module is the table of contents: split_dataset and its arguments. The work is done by
discovery (finding and checking the images), grouping (group_by, byte-identical copies),
split_plan (the split itself, a pure function of the file list and the settings), split_files
(writing, and the split already in out_dir) and split_read (reading a split back).
"""
from __future__ import annotations

import hashlib
import operator
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import CLASS_NAMES, __version__
from .discovery import find_class_folders, images_of_class, inspect_candidates
from .files import write_json
from .folder_lock import folder_lock
from .grouping import is_group_csv, normalize_group_by, read_group_csv
from .split_errors import SplitError, SplitExistsError, SplitWarning, list_message, warn_notes
from .split_files import (LINK_MODES, PENDING_JSON, exists_message, holds_a_split, is_pending,
                          locate, place_files, raw_changes, raw_fingerprint, read_previous_split,
                          refuse_other_settings, remove_previous_split, split_rows, write_manifest)
from .split_plan import check_enough_images, plan_split
from .split_read import MANIFEST_CSV, PENDING_CSV, SETTINGS_JSON, SPLITS
__all__ = ["SplitError", "SplitExistsError", "SplitWarning", "SplitSummary", "split_dataset"]


@dataclass
class SplitSummary:
    status: str                             # "created", "unchanged" or "replaced"
    counts: dict[str, dict[str, int]]       # {split: {class: number of images}}
    excluded: list[tuple[str, str]]         # (path relative to raw_dir, why it was left out)
    manifest_path: Path                     # out_dir/split.csv
    n_groups: int                           # groups of images that were kept together
    warnings: list[str] = field(default_factory=list)
    restored: int = 0                       # split files deleted by hand and copied again

    def __str__(self) -> str:
        row = "{:<7}" + "{:>8}" * (len(CLASS_NAMES) + 1)
        lines = [row.format("split", *CLASS_NAMES, "total")]
        for split, per_class in self.counts.items():
            numbers = [per_class[c] for c in CLASS_NAMES]
            lines.append(row.format(split, *numbers, sum(numbers)))
        totals = [sum(per_class[c] for per_class in self.counts.values()) for c in CLASS_NAMES]
        lines.append(row.format("total", *totals, sum(totals)))
        lines.append(f"{self.status}: {self.manifest_path} ({self.n_groups} groups, "
                     f"{len(self.excluded)} files left out, {len(self.warnings)} warnings)")
        if self.restored:
            lines.append(f"restored {self.restored} split files that had been deleted")
        return "\n".join(lines)


def split_dataset(raw_dir, out_dir, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0, group_by: str | os.PathLike | None = None,
                  link_mode: str = "copy", replace: bool = False) -> SplitSummary:
    """Check every image under raw_dir/{real,fake}, split them, write out_dir/{train,val[,test]}/
    {real,fake} and the manifest out_dir/split.csv + split.json.

    val_fraction, test_fraction: per class, e.g. 0.1 + 0.1 gives 80/10/10.
    group_by: None; "folder" (the sub-folder inside the class folder, e.g. one per video);
        "regex:PATTERN" (over the file name: the first capture group, or the whole match, names the
        group; a name that does not match is its own group); or a CSV file with columns path,group
        (path relative to raw_dir, e.g. real/vid1/0001.jpg; every image must be listed, listed
        files that are not on disk are only warned about). Groups are formed within a class folder.
        Byte-identical images always share a group, whatever group_by says.
    link_mode: "copy", or "hardlink" to save disk space (then the split files ARE the raw files:
        edit neither). Where hard links are impossible (another filesystem), files are copied.
    replace: split again over an existing, different split; only what split_dataset wrote is
        deleted. If the split folders hold anything else, nothing is deleted and the error names
        those files (the policy of `train --overwrite` too).

    Re-running with the same settings over the same raw files changes nothing (status "unchanged")
    except to restore split files deleted by hand. Different settings or raw files: SplitExistsError.
    """
    raw_dir, out_dir = Path(raw_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    _check_arguments(val_fraction, test_fraction, seed, link_mode)
    group_by = normalize_group_by(group_by)
    class_folders = find_class_folders(raw_dir)
    _refuse_dangerous_layout(raw_dir, out_dir)
    # One writer: a second split into out_dir refuses at once while this one runs (folder_lock.py).
    with folder_lock(out_dir):
        candidates = {label: images_of_class(folder, raw_dir)
                      for label, folder in class_folders.items()}
        settings = _split_settings(raw_dir, val_fraction, test_fraction, seed, group_by, link_mode)
        fingerprint = raw_fingerprint(raw_dir, candidates)

        previous = read_previous_split(out_dir, replace)
        if previous is not None and not replace:
            refuse_other_settings(out_dir, previous["settings"], settings)
            if previous.get("raw_fingerprint") == fingerprint:  # same names, sizes and times
                return _keep_previous_split(raw_dir, out_dir, previous)
        plan = _inspect_and_plan(raw_dir, class_folders, candidates, settings)
        if previous is not None and not replace:
            return _keep_touched_split(raw_dir, out_dir, previous, plan, fingerprint)
        return _write_split(raw_dir, out_dir, plan, settings, fingerprint, replace)


def _split_settings(raw_dir: Path, val_fraction, test_fraction, seed, group_by,
                    link_mode: str) -> dict:
    """What makes a split this split: another value of any of these is another split."""
    settings = {"raw_dir": str(raw_dir), "val_fraction": float(val_fraction),
                "test_fraction": float(test_fraction), "seed": int(seed), "group_by": group_by,
                "link_mode": link_mode}
    if is_group_csv(group_by):  # a changed group file is a changed setting
        settings["group_csv_sha256"] = hashlib.sha256(Path(group_by).read_bytes()).hexdigest()
    return settings


def _inspect_and_plan(raw_dir: Path, class_folders: dict[str, Path],
                      candidates: dict[str, list[Path]], settings: dict) -> dict:
    """Read what the plan needs (every image once, the group file), then plan: split_plan's
    plan_split itself touches no disk."""
    records, excluded = inspect_candidates(raw_dir, class_folders, candidates)
    check_enough_images(records, excluded, raw_dir, class_folders)  # before the group file is read
    group_by = settings["group_by"]
    group_of = read_group_csv(Path(group_by)) if is_group_csv(group_by) else None
    return plan_split(records, excluded, settings, class_folders, group_of)


def _keep_previous_split(raw_dir: Path, out_dir: Path, previous: dict) -> SplitSummary:
    """Same settings, same raw files: touch nothing, except to restore split files deleted by
    hand, and to complete an interrupted split (its manifest written last, once all is there).
    Every row is checked first: places inside out_dir, raw files inside raw_dir, and each file
    copied is checked against its SHA-256 before it is put in place."""
    pending = is_pending(out_dir)
    rows = split_rows(out_dir)
    located = locate(raw_dir, out_dir, rows, out_dir / (PENDING_CSV if pending else MANIFEST_CSV))
    missing = [entry for entry in located if not entry[2].is_file()]
    notes = list(previous.get("warnings", []))
    if missing:
        notes += place_files(missing, previous["settings"]["link_mode"])
        notes.append(list_message(f"Restored {len(missing)} split files that were missing from "
                                  f"{out_dir} (deleted by hand, or a run was interrupted):",
                                  [row["path"] for row, *_ in missing]))
    if pending:
        write_manifest(out_dir, rows, previous)
    warn_notes(notes, stacklevel=4)
    excluded = [(e["source"], e["reason"]) for e in previous.get("excluded", [])]
    return SplitSummary("unchanged", previous["counts"], excluded, out_dir / MANIFEST_CSV,
                        previous["n_groups"], notes, restored=len(missing))


def _keep_touched_split(raw_dir: Path, out_dir: Path, previous: dict, plan: dict,
                        fingerprint: str) -> SplitSummary:
    """Same settings, raw files touched since (times or sizes moved): "unchanged" when they hold
    the same images, which the fingerprint then remembers; other raw files: SplitExistsError."""
    changes = raw_changes(previous, split_rows(out_dir), plan)
    if changes:
        raise SplitExistsError(exists_message(out_dir, "from other raw files", changes))
    previous["raw_fingerprint"] = fingerprint  # the same bytes, only touched: remember that
    write_json(out_dir / (PENDING_JSON if is_pending(out_dir) else SETTINGS_JSON), previous)
    return _keep_previous_split(raw_dir, out_dir, previous)


def _write_split(raw_dir: Path, out_dir: Path, plan: dict, settings: dict, fingerprint: str,
                 replace: bool) -> SplitSummary:
    """A new split ("created"), or one over a previous split ("replaced": only what
    split_dataset wrote is deleted): the files, then the manifest."""
    status, notes = "created", plan["notes"]
    if replace and holds_a_split(out_dir):
        status, notes = "replaced", remove_previous_split(out_dir) + notes
    counts = plan["counts"]
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "package_version": __version__, "settings": settings, "counts": counts,
              "n_images": len(plan["rows"]), "n_groups": plan["n_groups"],
              "excluded": [{"source": s, "reason": r} for s, r in plan["excluded"]],
              "warnings": notes, "raw_fingerprint": fingerprint}
    located = locate(raw_dir, out_dir, plan["rows"], out_dir / PENDING_CSV)
    # The plan goes first under pending names: if copying is interrupted, a re-run sees the same
    # settings and completes the split instead of refusing a folder it cannot account for. The
    # manifest (split.csv, split.json) goes last: it never lists files that are not there.
    write_manifest(out_dir, plan["rows"], record, pending=True)
    link_notes = place_files(located, link_mode=settings["link_mode"])
    if link_notes:
        record["warnings"] = notes = notes + link_notes
    write_manifest(out_dir, plan["rows"], record)
    warn_notes(notes)
    return SplitSummary(status, counts, plan["excluded"], out_dir / MANIFEST_CSV,
                        plan["n_groups"], notes)


# ---------------------------------------------------------------------------------------------
# Checking the arguments


def _check_arguments(val_fraction, test_fraction, seed, link_mode) -> None:
    if not 0 < val_fraction < 1:
        raise SplitError(f"val_fraction must be between 0 and 1, e.g. 0.2; got {val_fraction}.")
    if not 0 <= test_fraction < 1:
        raise SplitError(f"test_fraction must be 0 (no test split) or below 1; got {test_fraction}.")
    if val_fraction + test_fraction >= 1:
        raise SplitError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves "
                         "nothing to train on; keep the sum below 1, e.g. 0.1 + 0.1.")
    if isinstance(seed, bool):
        raise SplitError(f"seed must be an integer; got {seed!r}.")
    try:
        operator.index(seed)
    except TypeError:
        raise SplitError(f"seed must be an integer; got {seed!r}.") from None
    if link_mode not in LINK_MODES:
        raise SplitError(f"link_mode must be one of {LINK_MODES}; got {link_mode!r}.")


def _refuse_dangerous_layout(raw_dir: Path, out_dir: Path) -> None:
    if out_dir == raw_dir or raw_dir in out_dir.parents:
        where = "is the raw data folder" if out_dir == raw_dir else "is inside the raw data folder"
        raise SplitError(f"out_dir {out_dir} {where} {raw_dir}: split copies would mix with your "
                         f"raw images. Choose an out_dir outside it, e.g. {raw_dir.parent / 'data'}.")
    for split in SPLITS:
        split_folder = out_dir / split
        if raw_dir == split_folder or split_folder in raw_dir.parents:
            raise SplitError(f"raw_dir {raw_dir} is inside {split_folder}, a folder that the split "
                             "writes (and replace=True empties). Move the raw data elsewhere, or "
                             "choose another out_dir.")
