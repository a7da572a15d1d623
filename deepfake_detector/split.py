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
"""
from __future__ import annotations

import csv
import hashlib
import json
import operator
import os
import random
import re
import shutil
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from .progress import tqdm

from deepfake_detector import CLASS_NAMES, CLASS_TO_IDX, __version__
from deepfake_detector.files import sha256_of_file, write_json
from deepfake_detector.images import ImageLoadError, decode_image, regular_file_problem

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LINK_MODES = ("copy", "hardlink")
MANIFEST_CSV = "split.csv"
SETTINGS_JSON = "split.json"
MANIFEST_COLUMNS = ("split", "label", "path", "source", "sha256", "group",
                    "bytes", "format", "width", "height", "mode")

# Folder names are reduced to their words; 'Real', 'real_data', '0_real', 'FAKE-images' all match.
CLASS_WORDS = {"real": "real", "reals": "real", "fake": "fake", "fakes": "fake"}
FILLER_WORDS = {"data", "image", "images", "img", "imgs", "photo", "photos", "face", "faces",
                "frame", "frames", "set"}
# What an OS drops into folders a person browses: the only files we delete without having written them.
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}
SHOW_AT_MOST = 20  # file names listed in one message; split.json always has them all


class SplitError(ValueError):
    """The data or the arguments cannot be split as asked; the message says what to do."""


class SplitExistsError(SplitError):
    """out_dir already holds a different split (or folders we did not make); nothing was changed."""


class SplitWarning(UserWarning):
    """Something in the data a person should know; the split went ahead."""


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


# ---------------------------------------------------------------------------------------------
# Finding class folders and images


def expected_layout(raw_dir: str | os.PathLike) -> str:
    name = Path(raw_dir).name or "dataset_raw"
    return (f"Expected layout:\n  {name}/\n"
            "    real/   *.jpg *.png ...   (sub-folders are fine, e.g. one per video)\n"
            "    fake/   *.jpg *.png ...\n"
            "Class folder names are matched ignoring case: real, Real, REAL, real_data, 0_real, "
            "real_images (and the same for fake).")


def class_of_folder(name: str) -> str | None:
    """'Real', 'real_data', '0_real', 'FAKE-images' -> 'real' or 'fake'; any other name -> None."""
    words = [w for w in re.split(r"[^a-z]+", name.lower()) if w and w not in FILLER_WORDS]
    return CLASS_WORDS.get(words[0]) if len(words) == 1 else None


def find_class_folders(raw_dir: str | os.PathLike) -> dict[str, Path]:
    """{"real": raw_dir/<its real folder>, "fake": raw_dir/<its fake folder>}, or a SplitError
    that names the folder and shows the layout expected."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        what = "is a file, not a folder" if raw_dir.exists() else "does not exist"
        raise SplitError(f"Data folder {raw_dir} {what}.\n{expected_layout(raw_dir)}")
    subfolders = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {label: [p for p in subfolders if class_of_folder(p.name) == label]
             for label in CLASS_NAMES}
    for label, folders in found.items():
        if len(folders) > 1:
            names = " and ".join(f"'{p.name}'" for p in folders)
            raise SplitError(f"{raw_dir} has {len(folders)} folders for class '{label}': {names}. "
                             "Merge them into one, or move all but one out of this folder.")
    missing = [label for label, folders in found.items() if not folders]
    if missing:
        seen = ", ".join(p.name for p in subfolders) or "none"
        raise SplitError(f"No {' or '.join(repr(m) for m in missing)} class folder in {raw_dir} "
                         f"(its sub-folders: {seen}).{_nested_hint(subfolders)}\n"
                         f"{expected_layout(raw_dir)}")
    return {label: folders[0] for label, folders in found.items()}


def _nested_hint(subfolders: list[Path]) -> str:
    # A common slip: pointing at the folder above the real data (an unzipped archive's wrapper).
    for folder in subfolders:
        labels = {class_of_folder(p.name) for p in folder.iterdir() if p.is_dir()}
        if set(CLASS_NAMES) <= labels:
            return f" Did you mean {folder}?"
    return ""


def is_image_name(name: str) -> bool:
    """By extension, any case; hidden files (.DS_Store, macOS's ._photo.jpg) are not images."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files in folder (and its sub-folders), sorted by path, so any listing order gives
    the same list. Hidden folders (.ipynb_checkpoints) are skipped; linked folders are not followed."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise SplitError(f"Image folder {folder} {what}.")
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        images += [Path(root, name) for name in files if is_image_name(name)]
    return sorted(images, key=lambda path: path.relative_to(folder).parts)


def raw_has_images(raw_dir: str | os.PathLike) -> bool:
    """True if raw_dir holds any image file, in any layout. The demo generates synthetic data only
    into a raw folder without images: a folder laid out wrongly gets split_dataset's error instead
    of made-up images next to the user's own."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return False
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image_name(name) for name in files):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Checking one image


def check_image(path: str | os.PathLike) -> str | None:
    """None if PIL decodes the whole file, else why not: empty, not an image, truncated, unreadable."""
    return inspect_image(Path(path))[1]


def inspect_image(path: Path) -> tuple[dict | None, str | None]:
    """({sha256, bytes, format, width, height, mode, frames}, None) for a good image, (None, reason)
    else. Only regular files are read (a FIFO or /dev/zero behind an image name is refused, not
    read); the bytes are hashed in blocks and decoded by images.decode_image, the project's one
    opener, under its pixel limit."""
    problem = regular_file_problem(path)
    if problem:
        return None, problem
    try:
        size = os.path.getsize(path)
        if not size:
            return None, "empty file (0 bytes)"
        digest = sha256_of_file(Path(path))
    except OSError as error:
        return None, f"unreadable ({type(error).__name__}: {error.strerror or error})"
    try:
        image, facts = decode_image(path)
    except ImageLoadError as error:
        return None, str(error)
    image.close()
    return {"sha256": digest, "bytes": size, **facts}, None


# ---------------------------------------------------------------------------------------------
# The split


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
    group_by = _normalize_group_by(group_by)
    class_folders = find_class_folders(raw_dir)
    _refuse_dangerous_layout(raw_dir, out_dir)
    candidates = {label: _images_of_class(folder, raw_dir) for label, folder in class_folders.items()}
    settings = _split_settings(raw_dir, val_fraction, test_fraction, seed, group_by, link_mode)
    fingerprint = _raw_fingerprint(raw_dir, candidates)

    previous = _read_previous_split(out_dir, replace)
    if previous is not None and not replace:
        _refuse_other_settings(out_dir, previous["settings"], settings)
        if previous.get("raw_fingerprint") == fingerprint:  # same names, sizes and times
            return _keep_previous_split(raw_dir, out_dir, previous)
    plan = _plan_split(raw_dir, class_folders, candidates, settings)
    if previous is not None and not replace:
        return _keep_touched_split(raw_dir, out_dir, previous, plan, fingerprint)
    return _write_split(raw_dir, out_dir, plan, settings, fingerprint, replace)


def _split_settings(raw_dir: Path, val_fraction, test_fraction, seed, group_by,
                    link_mode: str) -> dict:
    """What makes a split this split: another value of any of these is another split."""
    settings = {"raw_dir": str(raw_dir), "val_fraction": float(val_fraction),
                "test_fraction": float(test_fraction), "seed": int(seed), "group_by": group_by,
                "link_mode": link_mode}
    if _is_group_csv(group_by):  # a changed group file is a changed setting
        settings["group_csv_sha256"] = hashlib.sha256(Path(group_by).read_bytes()).hexdigest()
    return settings


def _refuse_other_settings(out_dir: Path, previous: dict, settings: dict) -> None:
    """The split in out_dir was made with other settings: refuse, naming each difference."""
    differences = [f"{key}: {previous.get(key)!r} then, {settings.get(key)!r} now"
                   for key in sorted(set(previous) | set(settings))
                   if previous.get(key) != settings.get(key)]
    if differences:
        raise SplitExistsError(_exists_message(out_dir, "with other settings", differences))


def _keep_touched_split(raw_dir: Path, out_dir: Path, previous: dict, plan: dict,
                        fingerprint: str) -> SplitSummary:
    """Same settings, raw files touched since (times or sizes moved): "unchanged" when they hold
    the same images, which the fingerprint then remembers; other raw files: SplitExistsError."""
    changes = _raw_changes(previous, read_manifest(out_dir), plan)
    if changes:
        raise SplitExistsError(_exists_message(out_dir, "from other raw files", changes))
    previous["raw_fingerprint"] = fingerprint  # the same bytes, only touched: remember that
    write_json(out_dir / SETTINGS_JSON, previous)
    return _keep_previous_split(raw_dir, out_dir, previous)


def _write_split(raw_dir: Path, out_dir: Path, plan: dict, settings: dict, fingerprint: str,
                 replace: bool) -> SplitSummary:
    """A new split ("created"), or one over a previous split ("replaced": only what
    split_dataset wrote is deleted): the manifest, then the files."""
    status, notes = "created", plan["notes"]
    if replace and _holds_a_split(out_dir):
        status, notes = "replaced", _remove_previous_split(out_dir) + notes
    counts = _count(plan["rows"], settings)
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "package_version": __version__, "settings": settings, "counts": counts,
              "n_images": len(plan["rows"]), "n_groups": plan["n_groups"],
              "excluded": [{"source": s, "reason": r} for s, r in plan["excluded"]],
              "warnings": notes, "raw_fingerprint": fingerprint}
    # The manifest goes first: if copying is interrupted, a re-run sees the same settings and
    # completes the split instead of refusing a folder it cannot account for.
    _write_manifest(out_dir, plan["rows"], record)
    link_notes = _place_files(raw_dir, out_dir, plan["rows"], link_mode=settings["link_mode"])
    if link_notes:
        record["warnings"] = notes = notes + link_notes
        write_json(out_dir / SETTINGS_JSON, record)
    _warn(notes)
    return SplitSummary(status, counts, plan["excluded"], out_dir / MANIFEST_CSV,
                        plan["n_groups"], notes)


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


def _normalize_group_by(group_by) -> str | None:
    """None, "folder", "regex:PATTERN" (checked), or the resolved path of a group CSV, as a string."""
    if group_by is None or str(group_by).strip().lower() in ("", "none"):
        return None
    text = str(group_by)
    if text == "folder":
        return text
    if text.startswith("regex:"):
        try:
            re.compile(text[len("regex:"):])
        except re.error as error:
            raise SplitError(f"group_by={text!r}: not a valid regular expression ({error}).") from None
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise SplitError(f"group_by={text!r} is none of None, 'folder', 'regex:PATTERN', or an "
                         "existing CSV file with columns path,group.")
    return str(path.resolve())


def _is_group_csv(group_by: str | None) -> bool:
    return group_by is not None and group_by != "folder" and not group_by.startswith("regex:")


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


def _images_of_class(folder: Path, raw_dir: Path) -> list[Path]:
    images = find_images(folder)
    if not images:
        raise SplitError(f"Class folder {folder} has no images (looked for "
                         f"{' '.join(IMAGE_EXTENSIONS)} in any case, sub-folders included).\n"
                         f"{expected_layout(raw_dir)}")
    return images


def _raw_fingerprint(raw_dir: Path, candidates: dict[str, list[Path]]) -> str:
    """A cheap digest of every raw image's path, size and modification time: when it matches the
    last run's, the files are the same and need not be read again (as make and rsync assume)."""
    digest = hashlib.sha256()
    for paths in candidates.values():
        for path in paths:
            try:
                stat = path.stat()
                size_and_time = f"{stat.st_size}\0{stat.st_mtime_ns}"
            except OSError:  # a broken link; it will be left out as unreadable
                size_and_time = "unreadable"
            digest.update(f"{path.relative_to(raw_dir).as_posix()}\0{size_and_time}\n".encode())
    return digest.hexdigest()


def _plan_split(raw_dir: Path, class_folders: dict[str, Path], candidates: dict[str, list[Path]],
                settings: dict) -> dict:
    """Check, group and assign every image; returns rows for the manifest, left-out files, notes."""
    notes: list[str] = []
    records, excluded = [], []
    for label, paths in candidates.items():
        for path in tqdm(paths, desc=f"checking {label}", unit="img", leave=False,
                         disable=len(paths) < 500):
            facts, reason = inspect_image(path)
            source = path.relative_to(raw_dir).as_posix()
            if reason:
                excluded.append((source, reason))
            else:
                records.append({"label": label, "source": source, **facts,
                                "in_class": path.relative_to(class_folders[label]).as_posix()})
    multi_frame = [f"{r['source']}: {r['frames']} frames" for r in records if r["frames"] > 1]
    if multi_frame:
        notes.append(_list_message(f"{len(multi_frame)} files hold several frames (animation or "
                                   "pages); only the first frame of each is used:", multi_frame))
    if excluded:
        notes.append(_list_message(f"Left out {len(excluded)} files under {raw_dir} that are not "
                                   "readable images (listed in split.json too):",
                                   [f"{source}: {reason}" for source, reason in excluded]))
    for label, folder in class_folders.items():
        n_good = sum(r["label"] == label for r in records)
        if n_good < 2:
            prefix = f"{folder.relative_to(raw_dir).as_posix()}/"
            raise SplitError(_list_message(
                f"Class folder {folder} has {n_good} readable image(s); a split needs at least 2 per "
                "class, one to train on and one to validate. Left out there:",
                [f"{s}: {r}" for s, r in excluded if s.startswith(prefix)]))

    user_keys = _user_group_keys(records, settings["group_by"], raw_dir,
                                 {s for s, _ in excluded}, notes)
    groups = _group(records, user_keys, notes)
    _assign_splits(records, groups, settings, notes)
    names = _destination_names(records)
    rows = [{"split": r["split"], "label": r["label"], "path": f"{r['split']}/{r['label']}/{name}",
             **{key: r[key] for key in MANIFEST_COLUMNS[3:]}} for r, name in zip(records, names)]
    rows.sort(key=lambda row: (SPLITS.index(row["split"]), CLASS_TO_IDX[row["label"]], row["path"]))
    return {"rows": rows, "excluded": excluded, "n_groups": len(groups), "notes": notes}


def _user_group_keys(records: list[dict], group_by: str | None, raw_dir: Path,
                     excluded_sources: set[str], notes: list[str]) -> list[str | None]:
    """The group each image belongs to by the user's rule, or None for "on its own"."""
    if group_by is None:
        return [None] * len(records)
    if group_by == "folder":
        keys = [r["in_class"].rpartition("/")[0] or None for r in records]
        if loose := keys.count(None):
            notes.append(f"group_by='folder': {loose} images sit directly in a class folder, not "
                         "in a sub-folder; each of them is a group of its own.")
        return keys
    if group_by.startswith("regex:"):
        pattern = re.compile(group_by[len("regex:"):])
        keys = []
        for r in records:
            match = pattern.search(PurePosixPath(r["source"]).name)
            key = match and (match.group(1) if pattern.groups else match.group(0))
            keys.append(key or None)  # an empty match groups nothing
        unmatched = [r["source"] for r, key in zip(records, keys) if key is None]
        if unmatched:
            notes.append(_list_message(f"group_by {group_by!r} found no group in {len(unmatched)} of "
                                       f"{len(records)} file names; each of those is a group of "
                                       "its own:", unmatched))
        return keys
    groups = _read_group_csv(Path(group_by))
    unlisted = [r["source"] for r in records if r["source"] not in groups]
    if unlisted:
        raise SplitError(_list_message(
            f"{len(unlisted)} images are not listed in the group file {group_by} (its paths must be "
            f"relative to {raw_dir}, e.g. '{unlisted[0]}'); add them, or none of them is grouped:",
            unlisted))
    on_disk = {r["source"] for r in records} | excluded_sources
    absent = sorted(set(groups) - on_disk)
    if absent:
        notes.append(_list_message(f"{len(absent)} files listed in {group_by} are not images under "
                                   f"{raw_dir}; ignored:", absent))
    return [groups[r["source"]] for r in records]


def _read_group_csv(path: Path) -> dict[str, str | None]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "group"} <= set(reader.fieldnames):
            raise SplitError(f"Group file {path} needs the columns path,group; "
                             f"it has {reader.fieldnames}.")
        groups: dict[str, str | None] = {}
        for line, row in enumerate(reader, start=2):
            source = PurePosixPath((row["path"] or "").strip().replace("\\", "/")).as_posix()
            group = (row["group"] or "").strip() or None
            if groups.get(source, group) != group:
                raise SplitError(f"Group file {path}, line {line}: {source} is listed twice, in "
                                 f"groups {groups[source]!r} and {group!r}.")
            groups[source] = group
    return groups


def _group(records: list[dict], user_keys: list[str | None], notes: list[str]) -> list[list[int]]:
    """Union-find over the images: one group for each set linked by identical bytes or by a user
    group within a class. Sets each record's "group" (a readable name) and returns the groups."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple, int] = {}
    for i, (record, key) in enumerate(zip(records, user_keys)):
        links = [("bytes", record["sha256"])] + ([("user", record["label"], key)] if key else [])
        for link in links:
            parent[root(i)] = root(first_with.setdefault(link, i))

    members = defaultdict(list)
    for i in range(len(records)):
        members[root(i)].append(i)
    groups = []
    for group in members.values():
        # The group's name: its user group ("real:vid7") if it has one, else its first file.
        name = min(f"{records[i]['label']}:{user_keys[i]}" if user_keys[i] else records[i]["source"]
                   for i in group)
        for i in group:
            records[i]["group"] = name
        groups.append(sorted(group, key=lambda i: records[i]["source"]))
    groups.sort(key=lambda group: records[group[0]]["group"])

    copies = Counter(r["sha256"] for r in records)
    if n_copies := sum(n - 1 for n in copies.values() if n > 1):
        notes.append(f"{n_copies} images are byte-identical copies of another image; each set of "
                     "copies was kept in one split.")
    return groups


def split_targets(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of a class's n images go to val and test: the fraction, rounded half up; at least
    one per wanted split while n allows, and never so many that train is left without one."""
    fractions = {"val": val_fraction, "test": test_fraction}
    wanted = [split for split in ("val", "test") if fractions[split] > 0]
    targets = {"val": 0, "test": 0}
    spare = n - 1  # train keeps one
    for i, split in enumerate(wanted):
        keep_for_later = min(len(wanted) - i - 1, max(spare - 1, 0))
        targets[split] = min(max(1, int(n * fractions[split] + 0.5)), spare - keep_for_later)
        spare -= targets[split]
    return targets


def _assign_splits(records: list[dict], groups: list[list[int]], settings: dict,
                   notes: list[str]) -> None:
    """Set each record's "split". Per class, whole groups in seeded random order fill test, then
    val, up to their targets; the rest is train. With single-image groups the counts are exact."""
    labels_of = [{records[i]["label"] for i in group} for group in groups]
    mixed = [group for group, labels in zip(groups, labels_of) if len(labels) > 1]
    for group in mixed:
        for i in group:
            records[i]["split"] = "train"
    if mixed:
        notes.append(_list_message(
            f"{sum(map(len, mixed))} images in {len(mixed)} groups are byte for byte in both the "
            "real and the fake folder: their label contradicts itself. They were all put in train, "
            "so validation is not scored on them; better remove them from one class:",
            [" = ".join(records[i]["source"] for i in g) for g in mixed]))

    for label in CLASS_NAMES:
        n = sum(r["label"] == label for r in records)
        targets = split_targets(n, settings["val_fraction"], settings["test_fraction"])
        pure = [group for group, labels in zip(groups, labels_of) if labels == {label}]
        # A string seed is hashed the same way in every Python process (not so for str hash()).
        random.Random(f"{settings['seed']}:{label}").shuffle(pure)
        split_of = {}
        room = dict(targets)
        for k, group in enumerate(pure):
            split_of[k] = next((s for s in ("test", "val") if len(group) <= room[s]), "train")
            if split_of[k] != "train":
                room[split_of[k]] -= len(group)
        for split in ("test", "val"):  # groups too big to fit: rather one too many than none
            train_groups = [k for k in split_of if split_of[k] == "train"]
            if targets[split] and room[split] == targets[split] and len(train_groups) > 1:
                smallest = min(train_groups, key=lambda k: len(pure[k]))
                split_of[smallest] = split
                room[split] -= len(pure[smallest])
        for k, group in enumerate(pure):
            for i in group:
                records[i]["split"] = split_of[k]

        if settings["test_fraction"] > 0 and targets["test"] == 0:
            notes.append(f"Only {n} '{label}' images: too few to put one in test as well.")
        off = [f"{split} {targets[split] - room[split]} instead of {targets[split]}"
               for split in ("val", "test") if targets[split] and room[split] != 0]
        if off:
            why = "groups are kept whole" + (", contradictory images stay in train" if mixed else "")
            notes.append(f"The '{label}' counts differ from the fractions asked for ({why}): "
                         f"{', '.join(off)}.")


def _destination_names(records: list[dict]) -> list[str]:
    """'vid 1/0001.jpg' -> 'vid 1__0001.jpg': flat, unique within a class, still readable. In the
    rare case two paths flatten alike ('a/b.jpg' and 'a__b.jpg'), both get a hash of their path."""
    flat = [r["in_class"].replace("/", "__") for r in records]
    # Lower case: on macOS and Windows 'A.jpg' and 'a.jpg' are one file.
    taken = Counter((r["label"], name.lower()) for r, name in zip(records, flat))
    for i, (record, name) in enumerate(zip(records, flat)):
        if taken[(record["label"], name.lower())] > 1:
            stem, suffix = os.path.splitext(name)
            flat[i] = f"{stem}~{hashlib.sha256(record['in_class'].encode()).hexdigest()[:8]}{suffix}"
    return flat


def _count(rows: list[dict], settings: dict) -> dict[str, dict[str, int]]:
    splits = SPLITS if settings["test_fraction"] > 0 else SPLITS[:2]
    counts = {split: {label: 0 for label in CLASS_NAMES} for split in splits}
    for row in rows:
        counts[row["split"]][row["label"]] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# What is already in out_dir


def _holds_a_split(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in (*SPLITS, MANIFEST_CSV, SETTINGS_JSON))


def _read_previous_split(out_dir: Path, replace: bool) -> dict | None:
    """The last run's split.json, None if there is none; refuses split folders it cannot vouch for."""
    json_path = out_dir / SETTINGS_JSON
    how_to_go_on = ("Nothing was changed. Choose another out_dir, or move the files split_dataset "
                    "did not write out of the split folders and pass replace=True (CLI: --replace).")
    if json_path.is_file():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
            if isinstance(previous.get("settings"), dict) and (out_dir / MANIFEST_CSV).is_file():
                return previous
            problem = f"{json_path} has no settings, or {MANIFEST_CSV} is missing"
        except (ValueError, AttributeError) as error:
            problem = f"{json_path} is unreadable ({error})"
    elif _holds_a_split(out_dir):
        found = ", ".join(n for n in (*SPLITS, MANIFEST_CSV) if (out_dir / n).exists())
        problem = f"{out_dir} already has {found} but no {SETTINGS_JSON}: not made by split_dataset"
    else:
        return None
    if replace:
        return None
    raise SplitExistsError(f"{problem}. {how_to_go_on}")


def _exists_message(out_dir: Path, how: str, details: list[str]) -> str:
    return (_list_message(f"{out_dir} already holds a split made {how}:", details) +
            "\nNothing was changed. To split again, pass replace=True (CLI: --replace); it deletes "
            "only the split folders and manifest that split_dataset wrote. Or choose another out_dir.")


def _raw_changes(previous: dict, previous_rows: list[dict], plan: dict) -> list[str]:
    """What differs between the raw files the last split saw and those there now."""
    def contents(rows, excluded):
        return ({row["source"]: row["sha256"] for row in rows} |
                {source: "left out" for source in excluded})
    before = contents(previous_rows, [e["source"] for e in previous.get("excluded", [])])
    now = contents(plan["rows"], [source for source, _ in plan["excluded"]])
    changes = []
    for what, sources in (("added", now.keys() - before.keys()),
                          ("removed", before.keys() - now.keys()),
                          ("changed", {s for s in now.keys() & before.keys() if now[s] != before[s]})):
        if sources:
            changes.append(f"{len(sources)} raw files {what}, e.g. {min(sources)}")
    return changes


def _keep_previous_split(raw_dir: Path, out_dir: Path, previous: dict) -> SplitSummary:
    """Same settings, same raw files: touch nothing, except to restore split files deleted by hand."""
    rows = read_manifest(out_dir)
    missing = [row for row in rows if not (out_dir / row["path"]).is_file()]
    notes = list(previous.get("warnings", []))
    if missing:
        notes += _place_files(raw_dir, out_dir, missing, previous["settings"]["link_mode"])
        notes.append(_list_message(f"Restored {len(missing)} split files that were missing from "
                                   f"{out_dir} (deleted by hand, or a run was interrupted):",
                                   [row["path"] for row in missing]))
    _warn(notes, stacklevel=4)
    excluded = [(e["source"], e["reason"]) for e in previous.get("excluded", [])]
    return SplitSummary("unchanged", previous["counts"], excluded, out_dir / MANIFEST_CSV,
                        previous["n_groups"], notes, restored=len(missing))


def _remove_previous_split(out_dir: Path) -> list[str]:
    """Delete what split_dataset wrote: split files whose bytes are still the ones in the manifest
    (and the half-written copies of an interrupted run), and the manifest. The same policy as
    `train --overwrite` (manifest.py): if the split folders hold anything else, nothing is
    deleted and SplitExistsError names those files."""
    try:
        written = {out_dir / row["path"]: row["sha256"] for row in read_manifest(out_dir)}
    except (SplitError, KeyError, ValueError):  # no manifest, or not one of ours
        written = {}
    ours, foreign = [], []
    for split in SPLITS:
        for root, dirs, files in os.walk(out_dir / split):
            names = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
            for name in names:
                path = Path(root, name)
                whole = path.with_name(name[:-len(".partial")]) if name.endswith(".partial") else None
                if name in OS_CLUTTER or (whole is not None and whole in written):
                    ours.append(path)
                elif path in written and not path.is_symlink() and path.is_file() \
                        and sha256_of_file(path) == written[path]:
                    ours.append(path)
                else:
                    foreign.append(path.relative_to(out_dir).as_posix())
    if foreign:
        raise SplitExistsError(_list_message(
            f"{out_dir} holds {len(foreign)} file(s) in its split folders that split_dataset did "
            "not write (or that were edited since); replacing the split would delete them, so "
            "nothing was changed. Move them out of the split folders, or choose another out_dir:",
            foreign))
    for path in ours:
        path.unlink()
    for split in SPLITS:
        for root, _, _ in os.walk(out_dir / split, topdown=False):
            if not any(Path(root).iterdir()):
                Path(root).rmdir()
    for name in (MANIFEST_CSV, SETTINGS_JSON):
        (out_dir / name).unlink(missing_ok=True)
    return []


# ---------------------------------------------------------------------------------------------
# Writing


def _write_manifest(out_dir: Path, rows: list[dict], record: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (MANIFEST_CSV + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, out_dir / MANIFEST_CSV)
    write_json(out_dir / SETTINGS_JSON, record)


def _place_files(raw_dir: Path, out_dir: Path, rows: list[dict], link_mode: str) -> list[str]:
    """Copy or hard-link each row's raw file to its place in out_dir; returns notes."""
    copied_instead = 0
    for row in tqdm(rows, desc=f"{link_mode} files", unit="img", leave=False, disable=len(rows) < 500):
        source, destination = raw_dir / row["source"], out_dir / row["path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name, then renamed: an interrupted run never leaves a half
        # written image under a real name (a re-run only restores files that are missing).
        partial = destination.with_name(destination.name + ".partial")
        partial.unlink(missing_ok=True)
        if link_mode == "hardlink":
            try:
                # To the file itself: a link to a relative symlink would point nowhere from here.
                os.link(os.path.realpath(source), partial)
                if not partial.is_file():
                    raise OSError("not a regular file")
            except OSError:  # another filesystem, or one without hard links
                partial.unlink(missing_ok=True)
                shutil.copyfile(source, partial)
                copied_instead += 1
        else:
            shutil.copyfile(source, partial)
        os.replace(partial, destination)
    if copied_instead:
        return [f"link_mode='hardlink': {copied_instead} files could not be hard-linked (out_dir on "
                "another filesystem?) and were copied instead."]
    return []


def _list_message(headline: str, items: list[str]) -> str:
    shown = [f"  {item}" for item in items[:SHOW_AT_MOST]]
    if len(items) > SHOW_AT_MOST:
        shown.append(f"  ... and {len(items) - SHOW_AT_MOST} more")
    return "\n".join([headline, *shown])


def _warn(notes: list[str], stacklevel: int = 3) -> None:
    for note in notes:  # stacklevel: point at the caller of split_dataset
        warnings.warn(note, SplitWarning, stacklevel=stacklevel)


# ---------------------------------------------------------------------------------------------
# Reading a split


def read_manifest(out_dir: str | os.PathLike) -> list[dict]:
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
                 for row in read_manifest(data_dir) if row["split"] == split]
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
        _warn([_list_message(f"{len(several_frames)} files in {where} hold several frames "
                             "(animation or pages); only the first frame of each is used:",
                             several_frames)], stacklevel=3)
    if skipped:
        _warn([_list_message(f"Left out {len(skipped)} of the {len(items)} files in {where} that "
                             "are not readable images:", skipped)], stacklevel=3)
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
    group_of = {(data_dir / row["path"]).resolve(): row["group"] for row in read_manifest(data_dir)}
    groups = [group_of.get(Path(path).resolve()) for path, _ in items]
    return groups if all(g is not None for g in groups) else None
